import { randomUUID } from "node:crypto";
import type { ServerStore } from "@strata/catalog";
import { isStrataError } from "@strata/core";
import { ADMINISTRATOR_ROLE } from "@strata/protocol";
import { AuditService } from "./audit-service.js";
import { AuthService } from "./auth-service.js";
import { AutoassignService } from "./autoassign-service.js";
import { type Clock, systemClock } from "./context.js";
import { EndpointService } from "./endpoint-service.js";
import { EnrollmentService, type SnapshotsOf } from "./enrollment-service.js";
import type { LayerRulesSource, LayerService } from "./layer-service.js";
import { generatePassword, hashPassword } from "./passwords.js";
import { PolicyService } from "./policy-service.js";
import { LoginRateLimiter, type RateLimitOptions } from "./rate-limit.js";
import { pickSnapshot, type RestoreService } from "./restore-service.js";
import { RoleService } from "./role-service.js";
import { FleetTargeting, type LayerTargeting } from "./targeting.js";
import { TargetingService } from "./targeting-service.js";
import { TaskService } from "./task-service.js";
import type { UploadService } from "./upload-service.js";
import { UserService } from "./user-service.js";

export interface Services {
  store: ServerStore;
  clock: Clock;
  audit: AuditService;
  auth: AuthService;
  users: UserService;
  roles: RoleService;
  policies: PolicyService;
  enrollment: EnrollmentService;
  endpoints: EndpointService;
  /** The upload protocol; null when the server runs without a repository (some unit tests). */
  uploads: UploadService | null;
  /** The restore protocol and history; null without a repository. */
  restores: RestoreService | null;
  tasks: TaskService;
  /** Collections, driver profiles, layer rules, CVD tags. */
  targeting: TargetingService;
  /** Auto-assignment rules: which pending endpoints get a CVD, with which policy. */
  autoassign: AutoassignService;
  /** Layers, assignments, images and apply tasks; null without a repository. */
  layers: LayerService | null;
}

export interface CreateServicesOptions {
  store: ServerStore;
  clock?: Clock;
  loginTokenTtlMs?: number;
  rateLimit?: Partial<RateLimitOptions>;
  /**
   * The server certificate's SHA-256 fingerprint ("AB:CD:…"): handed to the
   * administrator with each enrollment token and to agents at enrollment.
   */
  serverFingerprint?: string | null;
  /**
   * The snapshots of a CVD (the repository's snapshots tagged `cvd:<id>`),
   * in any order. The composition root wires the repository in; the default
   * knows none.
   */
  snapshotsOf?: SnapshotsOf;
  /** Built by the composition root around the repository (it needs this audit service: see `uploadsFor`). */
  uploads?: (audit: AuditService) => UploadService;
  /** Built by the composition root around the repository, like `uploads`. */
  restores?: (audit: AuditService) => RestoreService;
  /** Built by the composition root around the repository; needs the task and restore services built here. */
  layers?: (d: {
    audit: AuditService;
    tasks: TaskService;
    restores: RestoreService;
    targeting: LayerTargeting;
    rules: LayerRulesSource;
    collections: Pick<TargetingService, "resolveCollection">;
  }) => LayerService;
}

export function createServices(o: CreateServicesOptions): Services {
  const clock = o.clock ?? systemClock;
  const base = { store: o.store, clock };
  const audit = new AuditService(base);
  const limiter = new LoginRateLimiter(o.rateLimit, () => clock.now().getTime());
  const snapshotsOf: SnapshotsOf = o.snapshotsOf ?? (async () => []);
  const policies = new PolicyService({ ...base, audit });
  const endpoints = new EndpointService({ ...base, audit, policies, snapshotsOf });
  const tasks = new TaskService({
    ...base,
    audit,
    endpoints,
    resolveSnapshot: async (cvdId, ref) => {
      const list = [...(await snapshotsOf(cvdId))].sort((a, b) =>
        a.time !== b.time ? (a.time < b.time ? 1 : -1) : a.id < b.id ? 1 : -1,
      );
      const s = pickSnapshot(list, ref, cvdId);
      return { id: s.id, time: new Date(s.time) };
    },
  });
  const restores = o.restores ? o.restores(audit) : null;
  const targeting = new TargetingService({ ...base, audit });
  const autoassign = new AutoassignService({ ...base, audit, policies });
  return {
    ...base,
    audit,
    policies,
    enrollment: new EnrollmentService({
      ...base,
      audit,
      policies,
      serverFingerprint: o.serverFingerprint ?? null,
      snapshotsOf,
      autoassign,
    }),
    endpoints,
    tasks,
    auth: new AuthService({ ...base, audit, limiter, loginTokenTtlMs: o.loginTokenTtlMs ?? 30 * 86_400_000 }),
    users: new UserService({ ...base, audit }),
    targeting,
    autoassign,
    roles: new RoleService({ ...base, audit }),
    uploads: o.uploads ? o.uploads(audit) : null,
    restores,
    layers:
      o.layers && restores
        ? o.layers({
            audit,
            tasks,
            restores,
            targeting: new FleetTargeting(o.store.layers, targeting),
            rules: () => targeting.layerRules(),
            collections: targeting,
          })
        : null,
  };
}

export const FIRST_ADMIN = "admin";

/**
 * Bring a store to a usable state: built-in roles written, and — only when
 * there is no user at all — the Administrator `admin` created with a random
 * one-time password that must be changed at first login. Returns that
 * password (to print once) or null. The default upload policy is created
 * once. Safe when several nodes start at once.
 */
export async function bootstrap(s: Services): Promise<{ adminPassword: string | null }> {
  await s.roles.ensureBuiltinRoles();
  await s.policies.ensureDefault();
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

export type { AgentIdentity, Caller, Clock } from "./context.js";
export type { SnapshotsOf } from "./enrollment-service.js";
export { DEFAULT_POLICY_ID, DEFAULT_POLICY_NAME } from "./policy-service.js";
export {
  AuditService,
  AuthService,
  AutoassignService,
  EndpointService,
  EnrollmentService,
  LoginRateLimiter,
  PolicyService,
  RoleService,
  TargetingService,
  UserService,
};
