/**
 * The management server's tables (accounts, roles, API tokens, audit log),
 * kept apart from RepoCatalog: the repository engine never sees them. Both
 * live in the same database and share one migration sequence.
 *
 * Contract (run by test/server-contract.ts against SQLite and PostgreSQL):
 * - create* MUST throw StrataError ALREADY_EXISTS on a taken unique key
 *   (user name, role name, token hash) and leave the store unchanged;
 *   createUser MUST throw NOT_FOUND when the role does not exist.
 * - get* MUST return null, never throw, for a missing row.
 * - update* MUST return false when the row is missing.
 * - deleteRole MUST throw INVALID_ARGUMENT when users
 *   still hold the role, and return false when it is missing.
 * - appendAudit assigns increasing ids; listAudit returns newest first.
 *
 * The fleet's tables (policies, enrollment tokens, endpoints, CVDs) are
 * FleetStore's (fleet-store.ts), with their own contract.
 */
import type { AutoassignStore } from "./autoassign.js";
import type { FleetStore } from "./fleet-store.js";
import type { LayerStore } from "./layers.js";
import type { TaskStore } from "./restores.js";
import type { TargetingStore } from "./targeting.js";

export interface UserRecord {
  id: string;
  name: string;
  passwordHash: string;
  role: string;
  createdAt: Date;
  disabled: boolean;
  mustChangePassword: boolean;
}

export interface UserPatch {
  passwordHash?: string;
  role?: string;
  disabled?: boolean;
  mustChangePassword?: boolean;
}

export interface RoleRecord {
  name: string;
  builtin: boolean;
  permissions: string[];
}

export interface ApiTokenRecord {
  id: string;
  userId: string;
  /** SHA-256 (hex) of the secret. */
  tokenHash: string;
  name: string;
  createdAt: Date;
  expiresAt: Date | null;
  lastUsedAt: Date | null;
}

export interface AuditRecord {
  id: number;
  at: Date;
  actor: string;
  action: string;
  object: string;
  detail: Record<string, unknown>;
  remoteAddr: string;
}

export type NewAuditRecord = Omit<AuditRecord, "id">;

export interface AuditFilter {
  since?: Date;
  until?: Date;
  actor?: string;
  action?: string;
  object?: string;
  /** Only ids below this. */
  before?: number;
  /** At most this many (newest first). */
  limit: number;
}

export interface ServerStore extends FleetStore {
  readonly kind: "sqlite" | "postgres";
  /** Restore tasks (restores.ts), in the same database. */
  readonly tasks: TaskStore;
  /** Layers, captures, assignments and images (layers.ts), in the same database. */
  readonly layers: LayerStore;
  /** Collections, driver profiles, layer rules and CVD tags (targeting.ts), in the same database. */
  readonly targeting: TargetingStore;
  /** Auto-assignment rules (autoassign.ts), in the same database. */
  readonly autoassign: AutoassignStore;

  /** Writes the built-in roles (insert or overwrite permissions; marks them builtin). */
  upsertBuiltinRoles(roles: readonly { name: string; permissions: readonly string[] }[]): Promise<void>;
  createRole(role: RoleRecord): Promise<void>;
  getRole(name: string): Promise<RoleRecord | null>;
  listRoles(): Promise<RoleRecord[]>;
  updateRolePermissions(name: string, permissions: readonly string[]): Promise<boolean>;
  deleteRole(name: string): Promise<boolean>;

  createUser(user: UserRecord): Promise<void>;
  getUser(id: string): Promise<UserRecord | null>;
  getUserByName(name: string): Promise<UserRecord | null>;
  listUsers(): Promise<UserRecord[]>;
  countUsers(): Promise<number>;
  updateUser(id: string, patch: UserPatch): Promise<boolean>;

  createToken(token: ApiTokenRecord): Promise<void>;
  getTokenByHash(tokenHash: string): Promise<ApiTokenRecord | null>;
  listTokens(userId: string): Promise<ApiTokenRecord[]>;
  touchToken(id: string, at: Date): Promise<void>;
  deleteToken(id: string): Promise<boolean>;
  /** Removes every token of the user (password reset, disable). Returns how many. */
  deleteUserTokens(userId: string): Promise<number>;

  appendAudit(entry: NewAuditRecord): Promise<number>;
  listAudit(filter: AuditFilter): Promise<AuditRecord[]>;

  /** Throws when the database does not answer (health check). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
