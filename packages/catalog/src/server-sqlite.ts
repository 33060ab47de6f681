import { StrataError } from "@strata/core";
import Database from "better-sqlite3";
import { type AutoassignStore, SqliteAutoassignStore } from "./autoassign.js";
import { SqliteFleetStore } from "./fleet-sqlite.js";
import { type LayerStore, SqliteLayerStore } from "./layers.js";
import { SqliteTaskStore, type TaskStore } from "./restores.js";
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
import { openSqliteCatalog } from "./sqlite.js";
import { SqliteTargetingStore, type TargetingStore } from "./targeting.js";

interface UserRow {
  id: string;
  name: string;
  password_hash: string;
  role: string;
  created_at: number;
  disabled: number;
  must_change_password: number;
}
interface RoleRow {
  name: string;
  builtin: number;
  permissions: string;
}
interface TokenRow {
  id: string;
  user_id: string;
  token_hash: string;
  name: string;
  created_at: number;
  expires_at: number | null;
  last_used_at: number | null;
}
interface AuditRow {
  id: number;
  at: number;
  actor: string;
  action: string;
  object: string;
  detail: string;
  remote_addr: string;
}

const ms = (d: Date | null) => (d === null ? null : d.getTime());
const date = (n: number | null) => (n === null ? null : new Date(n));

function toUser(r: UserRow): UserRecord {
  return {
    id: r.id,
    name: r.name,
    passwordHash: r.password_hash,
    role: r.role,
    createdAt: new Date(r.created_at),
    disabled: r.disabled !== 0,
    mustChangePassword: r.must_change_password !== 0,
  };
}
function toRole(r: RoleRow): RoleRecord {
  return { name: r.name, builtin: r.builtin !== 0, permissions: JSON.parse(r.permissions) as string[] };
}
function toToken(r: TokenRow): ApiTokenRecord {
  return {
    id: r.id,
    userId: r.user_id,
    tokenHash: r.token_hash,
    name: r.name,
    createdAt: new Date(r.created_at),
    expiresAt: date(r.expires_at),
    lastUsedAt: date(r.last_used_at),
  };
}
function toAudit(r: AuditRow): AuditRecord {
  return {
    id: r.id,
    at: new Date(r.at),
    actor: r.actor,
    action: r.action,
    object: r.object,
    detail: JSON.parse(r.detail) as Record<string, unknown>,
    remoteAddr: r.remote_addr,
  };
}

/** better-sqlite3's constraint errors as the contract's StrataErrors. */
function mapConstraint(e: unknown, what: string): never {
  const code = (e as { code?: string }).code ?? "";
  if (code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY") {
    throw new StrataError("ALREADY_EXISTS", `${what} already exists`, { subject: what });
  }
  if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
    throw new StrataError("NOT_FOUND", `${what} refers to something that does not exist`, { subject: what });
  }
  throw e;
}

/** ServerStore on the embedded SQLite catalog file (its own connection, same file). */
export class SqliteServerStore extends SqliteFleetStore implements ServerStore {
  readonly kind = "sqlite" as const;
  readonly tasks: TaskStore = new SqliteTaskStore(this.db);
  readonly layers: LayerStore = new SqliteLayerStore(this.db);
  readonly targeting: TargetingStore = new SqliteTargetingStore(this.db);
  readonly autoassign: AutoassignStore = new SqliteAutoassignStore(this.db);

  async upsertBuiltinRoles(
    roles: readonly { name: string; permissions: readonly string[] }[],
  ): Promise<void> {
    const st = this.db.prepare(
      `INSERT INTO roles (name, builtin, permissions) VALUES (?, 1, ?)
       ON CONFLICT (name) DO UPDATE SET builtin = 1, permissions = excluded.permissions`,
    );
    this.db.transaction(() => {
      for (const r of roles) st.run(r.name, JSON.stringify(r.permissions));
    })();
  }

  async createRole(role: RoleRecord): Promise<void> {
    try {
      this.db
        .prepare("INSERT INTO roles (name, builtin, permissions) VALUES (?, ?, ?)")
        .run(role.name, role.builtin ? 1 : 0, JSON.stringify(role.permissions));
    } catch (e) {
      mapConstraint(e, `role ${role.name}`);
    }
  }

  async getRole(name: string): Promise<RoleRecord | null> {
    const r = this.db.prepare("SELECT * FROM roles WHERE name = ?").get(name) as RoleRow | undefined;
    return r ? toRole(r) : null;
  }

  async listRoles(): Promise<RoleRecord[]> {
    return (this.db.prepare("SELECT * FROM roles ORDER BY builtin DESC, name").all() as RoleRow[]).map(
      toRole,
    );
  }

  async updateRolePermissions(name: string, permissions: readonly string[]): Promise<boolean> {
    return (
      this.db
        .prepare("UPDATE roles SET permissions = ? WHERE name = ?")
        .run(JSON.stringify(permissions), name).changes > 0
    );
  }

  async deleteRole(name: string): Promise<boolean> {
    try {
      return this.db.prepare("DELETE FROM roles WHERE name = ?").run(name).changes > 0;
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
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
      this.db
        .prepare(
          `INSERT INTO users (id, name, password_hash, role, created_at, disabled, must_change_password)
           VALUES (?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          u.id,
          u.name,
          u.passwordHash,
          u.role,
          u.createdAt.getTime(),
          u.disabled ? 1 : 0,
          u.mustChangePassword ? 1 : 0,
        );
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
        throw new StrataError("NOT_FOUND", `role ${u.role} does not exist`, { subject: u.role });
      }
      mapConstraint(e, `user ${u.name}`);
    }
  }

  async getUser(id: string): Promise<UserRecord | null> {
    const r = this.db.prepare("SELECT * FROM users WHERE id = ?").get(id) as UserRow | undefined;
    return r ? toUser(r) : null;
  }

  async getUserByName(name: string): Promise<UserRecord | null> {
    const r = this.db.prepare("SELECT * FROM users WHERE name = ?").get(name) as UserRow | undefined;
    return r ? toUser(r) : null;
  }

  async listUsers(): Promise<UserRecord[]> {
    return (this.db.prepare("SELECT * FROM users ORDER BY name").all() as UserRow[]).map(toUser);
  }

  async countUsers(): Promise<number> {
    return this.db.prepare("SELECT count(*) FROM users").pluck().get() as number;
  }

  async updateUser(id: string, p: UserPatch): Promise<boolean> {
    const sets: string[] = [];
    const args: unknown[] = [];
    const set = (col: string, v: unknown) => {
      sets.push(`${col} = ?`);
      args.push(v);
    };
    if (p.passwordHash !== undefined) set("password_hash", p.passwordHash);
    if (p.role !== undefined) set("role", p.role);
    if (p.disabled !== undefined) set("disabled", p.disabled ? 1 : 0);
    if (p.mustChangePassword !== undefined) set("must_change_password", p.mustChangePassword ? 1 : 0);
    if (sets.length === 0) return (await this.getUser(id)) !== null;
    try {
      return this.db.prepare(`UPDATE users SET ${sets.join(", ")} WHERE id = ?`).run(...args, id).changes > 0;
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
        throw new StrataError("NOT_FOUND", `role ${p.role} does not exist`, { subject: String(p.role) });
      }
      throw e;
    }
  }

  async createToken(t: ApiTokenRecord): Promise<void> {
    try {
      this.db
        .prepare(
          `INSERT INTO api_tokens (id, user_id, token_hash, name, created_at, expires_at, last_used_at)
           VALUES (?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(t.id, t.userId, t.tokenHash, t.name, t.createdAt.getTime(), ms(t.expiresAt), ms(t.lastUsedAt));
    } catch (e) {
      mapConstraint(e, `token ${t.id}`);
    }
  }

  async getTokenByHash(tokenHash: string): Promise<ApiTokenRecord | null> {
    const r = this.db.prepare("SELECT * FROM api_tokens WHERE token_hash = ?").get(tokenHash) as
      | TokenRow
      | undefined;
    return r ? toToken(r) : null;
  }

  async listTokens(userId: string): Promise<ApiTokenRecord[]> {
    return (
      this.db
        .prepare("SELECT * FROM api_tokens WHERE user_id = ? ORDER BY created_at, id")
        .all(userId) as TokenRow[]
    ).map(toToken);
  }

  async touchToken(id: string, at: Date): Promise<void> {
    this.db.prepare("UPDATE api_tokens SET last_used_at = ? WHERE id = ?").run(at.getTime(), id);
  }

  async deleteToken(id: string): Promise<boolean> {
    return this.db.prepare("DELETE FROM api_tokens WHERE id = ?").run(id).changes > 0;
  }

  async deleteUserTokens(userId: string): Promise<number> {
    return this.db.prepare("DELETE FROM api_tokens WHERE user_id = ?").run(userId).changes;
  }

  async appendAudit(e: NewAuditRecord): Promise<number> {
    const r = this.db
      .prepare("INSERT INTO audit (at, actor, action, object, detail, remote_addr) VALUES (?, ?, ?, ?, ?, ?)")
      .run(e.at.getTime(), e.actor, e.action, e.object, JSON.stringify(e.detail), e.remoteAddr);
    return Number(r.lastInsertRowid);
  }

  async listAudit(f: AuditFilter): Promise<AuditRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    const add = (cond: string, v: unknown) => {
      where.push(cond);
      args.push(v);
    };
    if (f.since) add("at >= ?", f.since.getTime());
    if (f.until) add("at < ?", f.until.getTime());
    if (f.actor !== undefined) add("actor = ?", f.actor);
    if (f.action !== undefined) add("action = ?", f.action);
    if (f.object !== undefined) add("object = ?", f.object);
    if (f.before !== undefined) add("id < ?", f.before);
    const sql = `SELECT * FROM audit ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY id DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...args, f.limit) as AuditRow[]).map(toAudit);
  }

  async ping(): Promise<void> {
    this.db.prepare("SELECT 1").get();
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/**
 * Open the server tables in a SQLite catalog file, creating it and applying
 * every pending migration (the repository's too: one schema, one sequence).
 */
export async function openSqliteServerStore(path: string): Promise<SqliteServerStore> {
  // The catalog's opener creates the file, sets WAL and migrates.
  await (await openSqliteCatalog(path)).close();
  const db = new Database(path);
  db.pragma("busy_timeout = 10000");
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("foreign_keys = ON");
  return new SqliteServerStore(db);
}
