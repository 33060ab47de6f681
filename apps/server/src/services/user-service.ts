import { randomUUID } from "node:crypto";
import { StrataError } from "@strata/core";
import type { User } from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { checkPasswordPolicy } from "./auth-service.js";
import { type Caller, notFound, requirePermission, type ServiceDeps, userView } from "./context.js";
import { hashPassword } from "./passwords.js";

export interface UserServiceDeps extends ServiceDeps {
  audit: AuditService;
}

export class UserService {
  constructor(private readonly deps: UserServiceDeps) {}

  /** Nobody hands out (or takes over) more than they hold: the role's permissions must be a subset of the caller's. */
  private async checkGrantable(c: Caller, roleName: string): Promise<void> {
    const role = await this.deps.store.getRole(roleName);
    if (!role) throw notFound("role", roleName);
    const extra = role.permissions.filter((p) => !c.permissions.has(p));
    if (extra.length > 0) {
      throw new StrataError(
        "PERMISSION_DENIED",
        `role ${roleName} grants permissions you do not hold: ${extra.join(", ")}`,
        {
          subject: roleName,
        },
      );
    }
  }

  private async byName(name: string) {
    const u = await this.deps.store.getUserByName(name);
    if (!u) throw notFound("user", name);
    return u;
  }

  async list(c: Caller): Promise<User[]> {
    requirePermission(c, "users.read");
    return (await this.deps.store.listUsers()).map(userView);
  }

  async get(c: Caller, name: string): Promise<User> {
    requirePermission(c, "users.read");
    return userView(await this.byName(name));
  }

  async create(
    c: Caller,
    req: { name: string; role: string; password: string; mustChangePassword?: boolean },
  ): Promise<User> {
    requirePermission(c, "users.write");
    await this.checkGrantable(c, req.role);
    checkPasswordPolicy(req.password, req.name);
    const rec = {
      id: randomUUID(),
      name: req.name,
      passwordHash: await hashPassword(req.password),
      role: req.role,
      createdAt: this.deps.clock.now(),
      disabled: false,
      mustChangePassword: req.mustChangePassword ?? true,
    };
    await this.deps.store.createUser(rec);
    await this.deps.audit.by(c, "user.create", `user:${req.name}`, {
      role: req.role,
      mustChangePassword: rec.mustChangePassword,
    });
    return userView(rec);
  }

  async update(c: Caller, name: string, patch: { role?: string; disabled?: boolean }): Promise<User> {
    requirePermission(c, "users.write");
    const u = await this.byName(name);
    if (u.id === c.user.id) {
      throw new StrataError("INVALID_ARGUMENT", "you cannot change your own role or disable yourself", {
        hint: "ask another administrator",
      });
    }
    await this.checkGrantable(c, u.role);
    if (patch.role !== undefined) await this.checkGrantable(c, patch.role);
    await this.deps.store.updateUser(u.id, patch);
    if (patch.disabled) await this.deps.store.deleteUserTokens(u.id);
    await this.deps.audit.by(c, "user.update", `user:${name}`, { ...patch });
    return userView((await this.deps.store.getUser(u.id))!);
  }

  async resetPassword(c: Caller, name: string, password: string, mustChangePassword = true): Promise<User> {
    requirePermission(c, "users.write");
    const u = await this.byName(name);
    await this.checkGrantable(c, u.role);
    checkPasswordPolicy(password, name);
    await this.deps.store.updateUser(u.id, {
      passwordHash: await hashPassword(password),
      mustChangePassword,
    });
    await this.deps.store.deleteUserTokens(u.id);
    await this.deps.audit.by(c, "user.password_reset", `user:${name}`, { mustChangePassword });
    return userView((await this.deps.store.getUser(u.id))!);
  }
}
