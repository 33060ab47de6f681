/**
 * API objects (as TypeScript types) and their JSON Schemas. The server
 * validates requests and documents responses with the schemas; the client
 * returns the types. Times travel as ISO 8601 strings.
 */
import { autoassignSchemas } from "./autoassign.js";
import { fleetSchemas } from "./fleet.js";
import { dateTime, nullableDateTime, obj, type Schema, str } from "./json-schema.js";
import { layerSchemas } from "./layers.js";
import { PERMISSION_NAMES } from "./permissions.js";
import { restoreSchemas } from "./restore.js";
import { targetingSchemas } from "./targeting.js";

export const API_PREFIX = "/api/v1";

/** Lowercase login names: no path separators, no dots first, so a name is always a safe URL segment. */
export const USER_NAME_PATTERN = "^[a-z0-9_][a-z0-9_.-]{0,63}$";
/** Role names may hold spaces ("Help Desk"); never '/', '%' or control characters. */
export const ROLE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$";
export const TOKEN_ID_PATTERN = "^[0-9a-f]{16}$";
export const MAX_PASSWORD_BYTES = 1024;
export const MIN_PASSWORD_LENGTH = 12;

export interface User {
  id: string;
  name: string;
  role: string;
  createdAt: string;
  disabled: boolean;
  mustChangePassword: boolean;
}
export interface Role {
  name: string;
  builtin: boolean;
  permissions: string[];
}
export interface PermissionInfo {
  name: string;
  description: string;
}
export interface ApiToken {
  id: string;
  name: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
}
export interface CreatedToken extends ApiToken {
  /** The secret, shown once. */
  token: string;
}
export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  action: string;
  object: string;
  detail: Record<string, unknown>;
  remoteAddr: string;
}
export interface LoginRequest {
  user: string;
  password: string;
  /** Name for the API token the login creates (e.g. "cli on host"). */
  tokenName?: string;
}
export interface LoginResponse {
  token: string;
  tokenId: string;
  expiresAt: string | null;
  user: User;
  permissions: string[];
}
export interface WhoAmI {
  user: User;
  permissions: string[];
  tokenId: string;
}
export interface SystemInfo {
  version: string;
  startedAt: string;
  catalog: "sqlite" | "postgres";
  tlsFingerprint: string | null;
}
export interface AuditQuery {
  since?: string;
  until?: string;
  actor?: string;
  action?: string;
  object?: string;
  /** Only entries with an id below this (paging backwards). */
  before?: number;
  limit?: number;
}

// ---- JSON Schemas ---------------------------------------------------------

const userName = str({ pattern: USER_NAME_PATTERN });
const roleName = str({ pattern: ROLE_NAME_PATTERN });
const password = str({ minLength: 1, maxLength: MAX_PASSWORD_BYTES });
const permission = str({ enum: [...PERMISSION_NAMES] });

const user = obj({
  id: str(),
  name: str(),
  role: str(),
  createdAt: dateTime,
  disabled: { type: "boolean" },
  mustChangePassword: { type: "boolean" },
});

export const schemas = {
  User: user,
  Role: obj({ name: str(), builtin: { type: "boolean" }, permissions: { type: "array", items: str() } }),
  Permission: obj({ name: str(), description: str() }),
  ApiToken: obj({
    id: str(),
    name: str(),
    createdAt: dateTime,
    expiresAt: nullableDateTime,
    lastUsedAt: nullableDateTime,
  }),
  CreatedToken: obj({
    id: str(),
    name: str(),
    createdAt: dateTime,
    expiresAt: nullableDateTime,
    lastUsedAt: nullableDateTime,
    token: str(),
  }),
  AuditEntry: obj({
    id: { type: "integer" },
    at: dateTime,
    actor: str(),
    action: str(),
    object: str(),
    detail: { type: "object", additionalProperties: true },
    remoteAddr: str(),
  }),
  Error: obj(
    {
      error: obj({ code: str(), message: str(), hint: str(), subject: str(), requestId: str() }, [
        "code",
        "message",
      ]),
    },
    ["error"],
  ),
  LoginRequest: obj({ user: userName, password, tokenName: str({ minLength: 1, maxLength: 100 }) }, [
    "user",
    "password",
  ]),
  LoginResponse: obj({
    token: str(),
    tokenId: str(),
    expiresAt: nullableDateTime,
    user,
    permissions: { type: "array", items: str() },
  }),
  WhoAmI: obj({ user, permissions: { type: "array", items: str() }, tokenId: str() }),
  ChangePasswordRequest: obj({ currentPassword: password, newPassword: password }),
  CreateUserRequest: obj(
    { name: userName, role: roleName, password, mustChangePassword: { type: "boolean" } },
    ["name", "role", "password"],
  ),
  UpdateUserRequest: {
    ...obj({ role: roleName, disabled: { type: "boolean" } }, []),
    minProperties: 1,
  },
  ResetPasswordRequest: obj({ password, mustChangePassword: { type: "boolean" } }, ["password"]),
  CreateRoleRequest: obj({
    name: roleName,
    permissions: { type: "array", items: permission, uniqueItems: true, maxItems: 100 },
  }),
  UpdateRoleRequest: obj({
    permissions: { type: "array", items: permission, uniqueItems: true, maxItems: 100 },
  }),
  CreateTokenRequest: obj(
    {
      name: str({ minLength: 1, maxLength: 100 }),
      expiresInDays: { type: "integer", minimum: 1, maximum: 3650 },
    },
    ["name"],
  ),
  SystemInfo: obj({
    version: str(),
    startedAt: dateTime,
    catalog: str({ enum: ["sqlite", "postgres"] }),
    tlsFingerprint: { type: ["string", "null"] },
  }),
  // Parameters and queries
  UserNameParams: obj({ name: userName }),
  RoleNameParams: obj({ name: roleName }),
  TokenIdParams: obj({ id: str({ pattern: TOKEN_ID_PATTERN }) }),
  AuditQuery: obj(
    {
      since: dateTime,
      until: dateTime,
      actor: str({ maxLength: 200 }),
      action: str({ maxLength: 200 }),
      object: str({ maxLength: 500 }),
      before: { type: "integer", minimum: 1 },
      limit: { type: "integer", minimum: 1, maximum: 1000 },
    },
    [],
  ),
  ...fleetSchemas,
  ...restoreSchemas,
  ...layerSchemas,
  ...targetingSchemas,
  ...autoassignSchemas,
} satisfies Record<string, Schema>;

export type SchemaName = keyof typeof schemas;
