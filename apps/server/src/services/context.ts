import type { RoleRecord, ServerStore, UserRecord } from "@strata/catalog";
import { StrataError } from "@strata/core";
import type { Permission, User } from "@strata/protocol";

/** Time comes from here so token expiry and rate limits are testable. */
export interface Clock {
  now(): Date;
}
export const systemClock: Clock = { now: () => new Date() };

/** Who is calling, established by the HTTP layer from a bearer token. */
export interface Caller {
  user: UserRecord;
  permissions: ReadonlySet<string>;
  tokenId: string;
  remoteAddr: string;
}

/**
 * The endpoint behind an `Authorization: Bearer sep_…` credential,
 * established by the HTTP layer on endpoint routes only.
 */
export interface AgentIdentity {
  endpointId: string;
  cvdId: string | null;
  state: "pending" | "active" | "disabled";
}

/** What the services need; the composition root (start.ts or a test) builds it. */
export interface ServiceDeps {
  store: ServerStore;
  clock: Clock;
}

export function hasPermission(c: Caller, p: Permission): boolean {
  return c.permissions.has(p);
}

export function requirePermission(c: Caller, p: Permission): void {
  if (!hasPermission(c, p)) {
    throw new StrataError("PERMISSION_DENIED", `${c.user.name} lacks the permission ${p}`, {
      subject: p,
      hint: "ask an administrator for a role that grants it",
    });
  }
}

export function permissionsOf(role: RoleRecord | null): Set<string> {
  return new Set(role?.permissions ?? []);
}

export function userView(u: UserRecord): User {
  return {
    id: u.id,
    name: u.name,
    role: u.role,
    createdAt: u.createdAt.toISOString(),
    disabled: u.disabled,
    mustChangePassword: u.mustChangePassword,
  };
}

export function notFound(what: string, name: string): StrataError {
  return new StrataError("NOT_FOUND", `${what} ${name} does not exist`, { subject: name });
}
