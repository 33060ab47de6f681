import { StrataError } from "@strata/core";
import { type AutoassignStore, PostgresAutoassignStore } from "./autoassign.js";
import { PostgresFleetStore } from "./fleet-postgres.js";
import { type LayerStore, PostgresLayerStore } from "./layers.js";
import { openPostgresCatalog, type PostgresCatalog, type PostgresCatalogOptions } from "./postgres.js";
import { PostgresTaskStore, type TaskStore } from "./restores.js";
import type {
  ApiTokenRecord,
  AuditFilter,
  AuditRecord,
  NewAuditRecord,
  RoleRecord,
  ServerStore,
  UserPatch,
  UserRecord,
} from "./server-store.js";
import { PostgresTargetingStore, type TargetingStore } from "./targeting.js";

interface UserRow {
  id: string;
  name: string;
  password_hash: string;
  role: string;
  created_at: Date;
  disabled: boolean;
  must_change_password: boolean;
}
interface RoleRow {
  name: string;
  builtin: boolean;
  permissions: string[];
}
interface TokenRow {
  id: string;
  user_id: string;
  token_hash: string;
  name: string;
  created_at: Date;
  expires_at: Date | null;
  last_used_at: Date | null;
}
interface AuditRow {
  id: number | string;
  at: Date;
  actor: string;
  action: string;
  object: string;
  detail: Record<string, unknown>;
  remote_addr: string;
}

function toUser(r: UserRow): UserRecord {
  return {
    id: r.id,
    name: r.name,
    passwordHash: r.password_hash,
    role: r.role,
    createdAt: r.created_at,
    disabled: r.disabled,
    mustChangePassword: r.must_change_password,
  };
}
const toRole = (r: RoleRow): RoleRecord => ({ name: r.name, builtin: r.builtin, permissions: r.permissions });
function toToken(r: TokenRow): ApiTokenRecord {
  return {
    id: r.id,
    userId: r.user_id,
    tokenHash: r.token_hash,
    name: r.name,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    lastUsedAt: r.last_used_at,
  };
}
function toAudit(r: AuditRow): AuditRecord {
  return {
    id: Number(r.id),
    at: r.at,
    actor: r.actor,
    action: r.action,
    object: r.object,
    detail: r.detail,
    remoteAddr: r.remote_addr,
  };
}

const UNIQUE = "23505";
const FOREIGN_KEY = "23503";
const pgCode = (e: unknown) => (e as { code?: string }).code;

/** ServerStore on PostgreSQL: shares the catalog's pool and schema. */
export class PostgresServerStore extends PostgresFleetStore implements ServerStore {
  readonly kind = "postgres" as const;
  readonly tasks: TaskStore;
  readonly layers: LayerStore;
  readonly targeting: TargetingStore;
  readonly autoassign: AutoassignStore;
  private readonly catalog: PostgresCatalog;

  constructor(catalog: PostgresCatalog) {
    super(catalog.pool);
    this.catalog = catalog;
    this.tasks = new PostgresTaskStore(catalog.pool);
    this.layers = new PostgresLayerStore(catalog.pool);
    this.targeting = new PostgresTargetingStore(catalog.pool);
    this.autoassign = new PostgresAutoassignStore(catalog.pool);
  }

  async upsertBuiltinRoles(
    roles: readonly { name: string; permissions: readonly string[] }[],
  ): Promise<void> {
    await this.q(
      `INSERT INTO roles (name, builtin, permissions)
       SELECT n, true, p::jsonb FROM unnest($1::text[], $2::text[]) AS t (n, p)
       ON CONFLICT (name) DO UPDATE SET builtin = true, permissions = excluded.permissions`,
      [roles.map((r) => r.name), roles.map((r) => JSON.stringify(r.permissions))],
    );
  }

  async createRole(role: RoleRecord): Promise<void> {
    try {
      await this.q("INSERT INTO roles (name, builtin, permissions) VALUES ($1, $2, $3::jsonb)", [
        role.name,
        role.builtin,
        JSON.stringify(role.permissions),
      ]);
    } catch (e) {
      if (pgCode(e) === UNIQUE) throw new StrataError("ALREADY_EXISTS", `role ${role.name} already exists`);
      throw e;
    }
  }

  async getRole(name: string): Promise<RoleRecord | null> {
    const r = await this.q<RoleRow>("SELECT * FROM roles WHERE name = $1", [name]);
    return r.rows[0] ? toRole(r.rows[0]) : null;
  }

  async listRoles(): Promise<RoleRecord[]> {
    // COLLATE "C": the same byte order as SQLite's default.
    return (await this.q<RoleRow>(`SELECT * FROM roles ORDER BY builtin DESC, name COLLATE "C"`)).rows.map(
      toRole,
    );
  }

  async updateRolePermissions(name: string, permissions: readonly string[]): Promise<boolean> {
    const r = await this.q("UPDATE roles SET permissions = $1::jsonb WHERE name = $2", [
      JSON.stringify(permissions),
      name,
    ]);
    return (r.rowCount ?? 0) > 0;
  }

  async deleteRole(name: string): Promise<boolean> {
    try {
      return ((await this.q("DELETE FROM roles WHERE name = $1", [name])).rowCount ?? 0) > 0;
    } catch (e) {
      if (pgCode(e) === FOREIGN_KEY) {
        throw new StrataError("INVALID_ARGUMENT", `role ${name} is still held by users`, {
          subject: name,
          hint: "give those users another role first",
        });
      }
      throw e;
    }
  }

  async createUser(u: UserRecord): Promise<void> {
    try {
      await this.q(
        `INSERT INTO users (id, name, password_hash, role, created_at, disabled, must_change_password)
         VALUES ($1, $2, $3, $4, $5, $6, $7)`,
        [u.id, u.name, u.passwordHash, u.role, u.createdAt, u.disabled, u.mustChangePassword],
      );
    } catch (e) {
      if (pgCode(e) === UNIQUE) throw new StrataError("ALREADY_EXISTS", `user ${u.name} already exists`);
      if (pgCode(e) === FOREIGN_KEY)
        throw new StrataError("NOT_FOUND", `role ${u.role} does not exist`, { subject: u.role });
      throw e;
    }
  }

  async getUser(id: string): Promise<UserRecord | null> {
    const r = await this.q<UserRow>("SELECT * FROM users WHERE id = $1", [id]);
    return r.rows[0] ? toUser(r.rows[0]) : null;
  }

  async getUserByName(name: string): Promise<UserRecord | null> {
    const r = await this.q<UserRow>("SELECT * FROM users WHERE name = $1", [name]);
    return r.rows[0] ? toUser(r.rows[0]) : null;
  }

  async listUsers(): Promise<UserRecord[]> {
    return (await this.q<UserRow>(`SELECT * FROM users ORDER BY name COLLATE "C"`)).rows.map(toUser);
  }

  async countUsers(): Promise<number> {
    return Number((await this.q<{ n: string }>("SELECT count(*) AS n FROM users")).rows[0]!.n);
  }

  async updateUser(id: string, p: UserPatch): Promise<boolean> {
    const sets: string[] = [];
    const args: unknown[] = [];
    const set = (col: string, v: unknown) => {
      args.push(v);
      sets.push(`${col} = $${args.length}`);
    };
    if (p.passwordHash !== undefined) set("password_hash", p.passwordHash);
    if (p.role !== undefined) set("role", p.role);
    if (p.disabled !== undefined) set("disabled", p.disabled);
    if (p.mustChangePassword !== undefined) set("must_change_password", p.mustChangePassword);
    if (sets.length === 0) return (await this.getUser(id)) !== null;
    args.push(id);
    try {
      const r = await this.q(`UPDATE users SET ${sets.join(", ")} WHERE id = $${args.length}`, args);
      return (r.rowCount ?? 0) > 0;
    } catch (e) {
      if (pgCode(e) === FOREIGN_KEY)
        throw new StrataError("NOT_FOUND", `role ${p.role} does not exist`, { subject: String(p.role) });
      throw e;
    }
  }

  async createToken(t: ApiTokenRecord): Promise<void> {
    try {
      await this.q(
        `INSERT INTO api_tokens (id, user_id, token_hash, name, created_at, expires_at, last_used_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)`,
        [t.id, t.userId, t.tokenHash, t.name, t.createdAt, t.expiresAt, t.lastUsedAt],
      );
    } catch (e) {
      if (pgCode(e) === UNIQUE) throw new StrataError("ALREADY_EXISTS", `token ${t.id} already exists`);
      if (pgCode(e) === FOREIGN_KEY) throw new StrataError("NOT_FOUND", `user ${t.userId} does not exist`);
      throw e;
    }
  }

  async getTokenByHash(tokenHash: string): Promise<ApiTokenRecord | null> {
    const r = await this.q<TokenRow>("SELECT * FROM api_tokens WHERE token_hash = $1", [tokenHash]);
    return r.rows[0] ? toToken(r.rows[0]) : null;
  }

  async listTokens(userId: string): Promise<ApiTokenRecord[]> {
    return (
      await this.q<TokenRow>("SELECT * FROM api_tokens WHERE user_id = $1 ORDER BY created_at, id", [userId])
    ).rows.map(toToken);
  }

  async touchToken(id: string, at: Date): Promise<void> {
    await this.q("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2", [at, id]);
  }

  async deleteToken(id: string): Promise<boolean> {
    return ((await this.q("DELETE FROM api_tokens WHERE id = $1", [id])).rowCount ?? 0) > 0;
  }

  async deleteUserTokens(userId: string): Promise<number> {
    return (await this.q("DELETE FROM api_tokens WHERE user_id = $1", [userId])).rowCount ?? 0;
  }

  async appendAudit(e: NewAuditRecord): Promise<number> {
    const r = await this.q<{ id: string }>(
      `INSERT INTO audit (at, actor, action, object, detail, remote_addr)
       VALUES ($1, $2, $3, $4, $5::jsonb, $6) RETURNING id`,
      [e.at, e.actor, e.action, e.object, JSON.stringify(e.detail), e.remoteAddr],
    );
    return Number(r.rows[0]!.id);
  }

  async listAudit(f: AuditFilter): Promise<AuditRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    const add = (cond: string, v: unknown) => {
      args.push(v);
      where.push(cond.replace("?", `$${args.length}`));
    };
    if (f.since) add("at >= ?", f.since);
    if (f.until) add("at < ?", f.until);
    if (f.actor !== undefined) add("actor = ?", f.actor);
    if (f.action !== undefined) add("action = ?", f.action);
    if (f.object !== undefined) add("object = ?", f.object);
    if (f.before !== undefined) add("id < ?", f.before);
    args.push(f.limit);
    const sql = `SELECT * FROM audit ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY id DESC LIMIT $${args.length}`;
    return (await this.q<AuditRow>(sql, args)).rows.map(toAudit);
  }

  async ping(): Promise<void> {
    await this.q("SELECT 1");
  }

  async close(): Promise<void> {
    await this.catalog.close();
  }
}

/** Connect to PostgreSQL, apply pending migrations, and return the server tables' store. */
export async function openPostgresServerStore(
  url: string,
  opts: PostgresCatalogOptions = {},
): Promise<PostgresServerStore> {
  return new PostgresServerStore(await openPostgresCatalog(url, opts));
}
