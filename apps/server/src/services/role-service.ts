import type { RoleRecord } from "@strata/catalog";
import { StrataError } from "@strata/core";
import { BUILTIN_ROLES, isPermission, PERMISSIONS, type PermissionInfo, type Role } from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type Caller, notFound, requirePermission, type ServiceDeps } from "./context.js";

export interface RoleServiceDeps extends ServiceDeps {
  audit: AuditService;
}

const roleView = (r: RoleRecord): Role => ({
  name: r.name,
  builtin: r.builtin,
  permissions: [...r.permissions],
});

export class RoleService {
  constructor(private readonly deps: RoleServiceDeps) {}

  /** Built-in roles are rewritten from the table in code at every start. */
  async ensureBuiltinRoles(): Promise<void> {
    await this.deps.store.upsertBuiltinRoles(BUILTIN_ROLES);
  }

  private checkPermissions(c: Caller, perms: readonly string[]): void {
    const unknown = perms.filter((p) => !isPermission(p));
    if (unknown.length)
      throw new StrataError("INVALID_ARGUMENT", `unknown permissions: ${unknown.join(", ")}`, {
        hint: "see `strata roles permissions`",
      });
    const extra = perms.filter((p) => !c.permissions.has(p));
    if (extra.length)
      throw new StrataError(
        "PERMISSION_DENIED",
        `you cannot grant permissions you do not hold: ${extra.join(", ")}`,
      );
  }

  private async custom(name: string): Promise<RoleRecord> {
    const r = await this.deps.store.getRole(name);
    if (!r) throw notFound("role", name);
    if (r.builtin) {
      throw new StrataError("INVALID_ARGUMENT", `${name} is a built-in role and cannot be changed`, {
        hint: "create a custom role with the permissions you want",
      });
    }
    return r;
  }

  async list(c: Caller): Promise<Role[]> {
    requirePermission(c, "roles.read");
    return (await this.deps.store.listRoles()).map(roleView);
  }

  async get(c: Caller, name: string): Promise<Role> {
    requirePermission(c, "roles.read");
    const r = await this.deps.store.getRole(name);
    if (!r) throw notFound("role", name);
    return roleView(r);
  }

  permissions(c: Caller): PermissionInfo[] {
    requirePermission(c, "roles.read");
    return PERMISSIONS.map((p) => ({ name: p.name, description: p.description }));
  }

  async create(c: Caller, name: string, permissions: string[]): Promise<Role> {
    requirePermission(c, "roles.write");
    this.checkPermissions(c, permissions);
    const rec = { name, builtin: false, permissions: [...new Set(permissions)].sort() };
    await this.deps.store.createRole(rec);
    await this.deps.audit.by(c, "role.create", `role:${name}`, { permissions: rec.permissions });
    return roleView(rec);
  }

  async update(c: Caller, name: string, permissions: string[]): Promise<Role> {
    requirePermission(c, "roles.write");
    const before = await this.custom(name);
    this.checkPermissions(c, permissions);
    const perms = [...new Set(permissions)].sort();
    await this.deps.store.updateRolePermissions(name, perms);
    await this.deps.audit.by(c, "role.update", `role:${name}`, { before: before.permissions, after: perms });
    return { name, builtin: false, permissions: perms };
  }

  async delete(c: Caller, name: string): Promise<void> {
    requirePermission(c, "roles.write");
    await this.custom(name);
    await this.deps.store.deleteRole(name);
    await this.deps.audit.by(c, "role.delete", `role:${name}`);
  }
}
