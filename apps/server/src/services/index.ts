import { randomUUID } from "node:crypto";
import type { ServerStore } from "@strata/catalog";
import { isStrataError } from "@strata/core";
import { ADMINISTRATOR_ROLE } from "@strata/protocol";
import { AuditService } from "./audit-service.js";
import { AuthService } from "./auth-service.js";
import { type Clock, systemClock } from "./context.js";
import { generatePassword, hashPassword } from "./passwords.js";
import { LoginRateLimiter, type RateLimitOptions } from "./rate-limit.js";
import { RoleService } from "./role-service.js";
import { UserService } from "./user-service.js";

export interface Services {
  store: ServerStore;
  clock: Clock;
  audit: AuditService;
  auth: AuthService;
  users: UserService;
  roles: RoleService;
}

export interface CreateServicesOptions {
  store: ServerStore;
  clock?: Clock;
  loginTokenTtlMs?: number;
  rateLimit?: Partial<RateLimitOptions>;
}

export function createServices(o: CreateServicesOptions): Services {
  const clock = o.clock ?? systemClock;
  const base = { store: o.store, clock };
  const audit = new AuditService(base);
  const limiter = new LoginRateLimiter(o.rateLimit, () => clock.now().getTime());
  return {
    ...base,
    audit,
    auth: new AuthService({ ...base, audit, limiter, loginTokenTtlMs: o.loginTokenTtlMs ?? 30 * 86_400_000 }),
    users: new UserService({ ...base, audit }),
    roles: new RoleService({ ...base, audit }),
  };
}

export const FIRST_ADMIN = "admin";

/**
 * Bring a store to a usable state: built-in roles written, and — only when
 * there is no user at all — the Administrator `admin` created with a random
 * one-time password that must be changed at first login. Returns that
 * password (to print once) or null. Safe when several nodes start at once.
 */
export async function bootstrap(s: Services): Promise<{ adminPassword: string | null }> {
  await s.roles.ensureBuiltinRoles();
  if ((await s.store.countUsers()) > 0) return { adminPassword: null };
  const password = generatePassword();
  try {
    await s.store.createUser({
      id: randomUUID(),
      name: FIRST_ADMIN,
      passwordHash: await hashPassword(password),
      role: ADMINISTRATOR_ROLE,
      createdAt: s.clock.now(),
      disabled: false,
      mustChangePassword: true,
    });
  } catch (e) {
    if (isStrataError(e, "ALREADY_EXISTS")) return { adminPassword: null }; // another node won
    throw e;
  }
  await s.audit.record({
    actor: "system",
    action: "user.create",
    object: `user:${FIRST_ADMIN}`,
    detail: { role: ADMINISTRATOR_ROLE, firstStart: true },
    remoteAddr: "local",
  });
  return { adminPassword: password };
}

export type { Caller, Clock } from "./context.js";
export { AuditService, AuthService, LoginRateLimiter, RoleService, UserService };
