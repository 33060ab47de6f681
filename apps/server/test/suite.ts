/**
 * The server integration suite, run on every catalog (server.test.ts runs it
 * on SQLite and PostgreSQL). Requests go through app.inject(): the whole
 * fastify stack (parsing, validation, access checks, error table) without a
 * socket; tls.test.ts covers real HTTPS.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { ServerStore } from "@strata/catalog";
import { BUILTIN_ROLES } from "@strata/protocol";
import type { Repository } from "@strata/repo";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadServerConfig } from "../src/config.js";
import {
  bootstrap,
  buildApp,
  type CreateServicesOptions,
  createServices,
  describeAccess,
  isEndpointAccess,
  isUserOrEndpointAccess,
  type RouteDef,
  routesOf,
  type Services,
} from "../src/index.js";
import { openServerRepository } from "../src/repository.js";
import { cvdImages, LayerService } from "../src/services/layer-service.js";
import { RestoreService } from "../src/services/restore-service.js";
import { UploadService } from "../src/services/upload-service.js";

const PW = "correct horse battery staple";

/** A body that passes each route's validation, so the access check is what decides. */
const SAMPLE_BODIES: Record<string, unknown> = {
  LoginRequest: { user: "nobody", password: "x" },
  ChangePasswordRequest: { currentPassword: "wrong-password-here", newPassword: "another long password" },
  CreateUserRequest: { name: "probe-user", role: "Read-only", password: "a very long password 1" },
  UpdateUserRequest: { disabled: false },
  ResetPasswordRequest: { password: "a very long password 2" },
  CreateRoleRequest: { name: "Probe Role", permissions: ["system.read"] },
  UpdateRoleRequest: { permissions: ["system.read"] },
  CreateTokenRequest: { name: "probe" },
  CreateEnrollmentTokenRequest: { uses: 1 },
  EnrollRequest: { facts: { hostname: "probe", machineId: "f".repeat(32) } },
  AgentFactsRequest: { facts: { hostname: "probe", machineId: "f".repeat(32) } },
  ApproveEndpointRequest: {},
  SetCvdPolicyRequest: { policy: "Default" },
  PolicyInput: { name: "Probe Policy" },
  PolicyDocument: { format: "strata-upload-policy", schemaVersion: 1, policy: { name: "Probe Import" } },
  OpenRestoreRequest: {},
  RestoreTreesRequest: { trees: [{ id: "a".repeat(64), grant: "A".repeat(22) }] },
  ChunkFetchRequest: { requests: [{ tree: "a".repeat(64), grant: "A".repeat(22), ids: ["b".repeat(64)] }] },
  RevertRequest: {},
  RecoverRequest: { endpoint: "ep_nothere" },
  TaskProgressRequest: { progress: { restoredBytes: 1 } },
  TaskFinishRequest: { result: {} },
  CreateCollectionRequest: { name: "Probe Collection" },
  CollectionMembersRequest: { cvds: ["cvd_nothere"] },
  CreateDriverProfileRequest: { name: "Probe Profile", folders: [], rules: [{ vendor: "*" }] },
  UpdateDriverProfileRequest: { rules: [{ vendor: "*" }] },
  LayerRulesInput: { doNotOverride: [], baseCapture: [] },
  CvdTagsRequest: { add: ["probe"] },
  CaptureBaseRequest: { name: "probe-base", cvd: "cvd_nothere" },
  AssignRequest: { target: { cvd: "cvd_nothere" } },
  ApplyRequest: {},
  CaptureStartRequest: { snapshot: "a".repeat(64) },
  CaptureFinishRequest: { snapshot: "a".repeat(64), name: "probe-app" },
  // Matches no endpoint of this suite: approve-by-rules leaves the pending probe endpoint pending.
  CreateAutoassignRuleRequest: { name: "Probe Rule", rule: { hostname: "probe-matches-nothing-*" } },
  UpdateAutoassignRuleRequest: { rule: { hostname: "probe-edited-*", os: null }, before: null },
  AutoassignTestRequest: { facts: { hostname: "probe" } },
  ApproveByRulesRequest: {},
  SnoozeEndpointRequest: { minutes: 5 },
};

/** A query that passes validation, by schema: required query parameters are checked before access. */
const SAMPLE_QUERIES: Record<string, string> = {
  RestoreTreeQuery: `?grant=${"A".repeat(22)}`,
  HistoryQuery: "?path=/etc",
};

/** A parameter that passes validation (and names nothing), by parameter and resource. */
function sampleParam(url: string, p: string): string {
  if (p === "policy") return "No Such Policy";
  if (p === "session") return "rs_nothere";
  if (p === "tree") return "c".repeat(64);
  if (p === "cvd") return "cvd_nothere";
  if (url.includes("/tasks/")) return "task_nothere";
  if (url.includes("/captures/")) return "cap_nothere";
  if (p === "name") return "nobody-here";
  if (url.includes("/endpoints/")) return "ep_nothere";
  if (url.includes("/cvds/")) return "cvd_nothere";
  return "0123456789abcdef";
}

export function urlOf(r: RouteDef): string {
  const path = r.url.replace(/:(\w+)/g, (_m, p: string) => encodeURIComponent(sampleParam(r.url, p)));
  return path + (r.query ? (SAMPLE_QUERIES[r.query] ?? "") : "");
}

export const FACTS = (n: number, machineId = n.toString(16).padStart(32, "0")) => ({
  hostname: `host-${n}`,
  machineId,
  os: { id: "debian", versionId: "12", prettyName: "Debian GNU/Linux 12 (bookworm)" },
  kernel: "6.1.0-18-amd64",
  arch: "x86_64",
  cpu: { model: "QEMU Virtual CPU", count: 2 },
  memoryBytes: 2 ** 31,
  disks: [{ name: "vda", sizeBytes: 2 ** 34 }],
  macs: ["52:54:00:12:34:56"],
  agentVersion: "0.1.0",
  agentStateDir: "/var/lib/strata-agent",
});

let keySeq = 0;
/** A fresh Idempotency-Key. */
export const idemKey = () => (keySeq++).toString(16).padStart(32, "a");

export interface Harness {
  app: FastifyInstance;
  services: Services;
  store: ServerStore;
  logs: string[];
  adminToken: string;
  now: { t: number };
  /** The harness's repository (behind the upload and restore routes). */
  repo: Repository;
}

/** Admin helpers over a harness: enrollment tokens and enrolled endpoints. */
export async function enrollmentToken(
  h: Harness,
  body: Record<string, unknown> = {},
): Promise<{ token: string; id: string; serverFingerprint: string | null }> {
  const r = await h.app.inject({
    method: "POST",
    url: "/api/v1/enrollment-tokens",
    headers: { authorization: `Bearer ${h.adminToken}` },
    payload: body,
  });
  expect(r.statusCode, r.body).toBe(201);
  return r.json();
}

export async function enroll(
  h: Harness,
  token: string,
  facts: unknown,
  key = idemKey(),
): Promise<{
  statusCode: number;
  body: string;
  json(): { endpointId: string; credential: string; state: string };
}> {
  return h.app.inject({
    method: "POST",
    url: "/api/v1/enroll",
    headers: { authorization: `Bearer ${token}`, "idempotency-key": key, "strata-protocol": "1" },
    payload: { facts },
  });
}

/** Cleanups of harness resources (the temp repository), run by each suite's afterAll. */
export const closers: (() => Promise<void>)[] = [];

export async function makeHarness(
  open: () => Promise<ServerStore>,
  opts: Omit<CreateServicesOptions, "store" | "clock"> = {},
): Promise<Harness> {
  const store = await open();
  const now = { t: Date.parse("2026-03-01T12:00:00Z") };
  const clock = { now: () => new Date(now.t) };
  // A real repository behind the upload routes (SQLite in a temp dir, whatever the store).
  const dataDir = mkdtempSync(path.join(tmpdir(), "strata-suite-repo-"));
  process.env.STRATA_SCRYPT_LOG_N ??= "10";
  const data = await openServerRepository(loadServerConfig({ flags: { data: dataDir }, env: {} }));
  const services = createServices({
    uploads: (audit) => new UploadService({ repo: data.repo, uploads: data.uploads, clock, audit }),
    restores: (audit) =>
      new RestoreService({
        repo: data.repo,
        sessions: data.restores,
        clock,
        audit,
        imagesOf: cvdImages(store),
      }),
    layers: (d) => new LayerService({ store, clock, repo: data.repo, ...d }),
    ...opts,
    store,
    clock,
  });
  closers.push(async () => {
    await data.close();
    rmSync(dataDir, { recursive: true, force: true });
  });
  const { adminPassword } = await bootstrap(services);
  const logs: string[] = [];
  const app = buildApp({
    services,
    logger: { level: "trace", stream: { write: (s: string) => logs.push(s) } },
    bodyLimit: 64 * 1024,
  });
  await app.ready();
  // First login must change the one-time password.
  const login = await app.inject({
    method: "POST",
    url: "/api/v1/auth/login",
    payload: { user: "admin", password: adminPassword },
  });
  expect(login.statusCode).toBe(200);
  const tmp = login.json().token as string;
  const blocked = await app.inject({
    method: "GET",
    url: "/api/v1/users",
    headers: { authorization: `Bearer ${tmp}` },
  });
  expect(blocked.statusCode).toBe(403);
  const ch = await app.inject({
    method: "POST",
    url: "/api/v1/auth/password",
    headers: { authorization: `Bearer ${tmp}` },
    payload: { currentPassword: adminPassword, newPassword: PW },
  });
  expect(ch.statusCode).toBe(204);
  return { app, services, store, logs, adminToken: tmp, now, repo: data.repo };
}

export function runServerSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`server on ${name}`, () => {
    let h: Harness;
    const auth = (token: string) => ({ authorization: `Bearer ${token}` });
    beforeAll(async () => {
      h = await makeHarness(open);
    });
    afterAll(async () => {
      await h?.app.close();
      await h?.store.close();
      for (const c of closers.splice(0)) await c();
    });

    async function userToken(user: string, role: string): Promise<string> {
      const c = await h.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: auth(h.adminToken),
        payload: { name: user, role, password: PW, mustChangePassword: false },
      });
      expect(c.statusCode, c.body).toBe(201);
      const l = await h.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { user, password: PW },
      });
      expect(l.statusCode, l.body).toBe(200);
      return l.json().token;
    }

    it("every route × every built-in role: allowed or 403; unauthenticated 401; each route takes only its kind of secret", async () => {
      const routes = routesOf(h.app);
      expect(routes.length).toBeGreaterThan(15);
      const tokens = new Map<string, string>();
      for (const role of BUILTIN_ROLES) {
        tokens.set(
          role.name,
          await userToken(`r-${role.name.toLowerCase().replace(/[^a-z]/g, "")}`, role.name),
        );
      }
      // Two endpoints: one pending, one approved (active).
      const set = await enrollmentToken(h, { uses: 2 });
      const pending = (await enroll(h, set.token, FACTS(1001))).json();
      const active = (await enroll(h, set.token, FACTS(1002))).json();
      const ok = await h.app.inject({
        method: "POST",
        url: `/api/v1/endpoints/${active.endpointId}/approve`,
        headers: auth(h.adminToken),
        payload: {},
      });
      expect(ok.statusCode, ok.body).toBe(200);
      const spare = await enrollmentToken(h, { uses: 1 });
      const agentRoutes = routes.filter((r) => r.access === "enrollment" || isEndpointAccess(r.access));
      expect(agentRoutes.map((r) => `${r.method} ${r.url}`)).toEqual(
        expect.arrayContaining(["POST /api/v1/enroll", "GET /api/v1/agent/self"]),
      );
      for (const r of routes) {
        const payload = r.body ? SAMPLE_BODIES[r.body] : undefined;
        const call = (token?: string) =>
          h.app.inject({
            method: r.method,
            url: urlOf(r),
            headers: {
              ...(token ? auth(token) : {}),
              "idempotency-key": idemKey(),
              "strata-protocol": "1",
            },
            ...(payload ? { payload } : {}),
          });
        if (r.access === "public") {
          const res = await call();
          expect([401, 403], `${r.method} ${r.url} public`).not.toContain(
            res.statusCode === 401 && r.body === "LoginRequest" ? 0 : res.statusCode,
          );
          continue;
        }
        expect((await call()).statusCode, `${r.method} ${r.url} without a token`).toBe(401);
        for (const forged of ["stk_forged", "sep_forged", "set_forged", `sep_${"A".repeat(43)}`]) {
          expect((await call(forged)).statusCode, `${r.method} ${r.url} forged ${forged}`).toBe(401);
        }
        if (isUserOrEndpointAccess(r.access)) {
          // Either an active endpoint's credential or a user whose role grants the permission.
          expect((await call(set.token)).statusCode, `enrollment token on ${r.url}`).toBe(401);
          const a = await call(active.credential);
          expect([401, 403], `active endpoint ${r.method} ${r.url} ${a.body}`).not.toContain(a.statusCode);
          expect(a.statusCode, `active endpoint ${r.method} ${r.url} ${a.body}`).toBeLessThan(500);
          const p = await call(pending.credential);
          expect(p.statusCode, `pending endpoint ${r.url}`).toBe(403);
          for (const role of BUILTIN_ROLES) {
            const res = await call(tokens.get(role.name)!);
            const what = `${role.name} ${r.method} ${r.url} → ${res.statusCode} ${res.body.slice(0, 200)}`;
            if (role.permissions.includes(r.access.permission)) {
              expect([401, 403], what).not.toContain(res.statusCode);
              expect(res.statusCode, what).toBeLessThan(500);
            } else {
              expect(res.statusCode, what).toBe(403);
              expect(res.json().error.code).toBe("PERMISSION_DENIED");
            }
          }
          continue;
        }
        if (r.access === "enrollment" || isEndpointAccess(r.access)) {
          // Users' API tokens are refused on agent routes, whatever their role.
          for (const role of BUILTIN_ROLES) {
            const res = await call(tokens.get(role.name)!);
            expect(res.statusCode, `${role.name} on ${r.method} ${r.url}`).toBe(401);
            expect(res.json().error.code).toBe("WRONG_PASSWORD");
          }
          if (r.access === "enrollment") {
            expect((await call(active.credential)).statusCode, `credential on ${r.url}`).toBe(401);
            expect((await call(spare.token)).statusCode, `${r.url} with its token`).toBe(201);
            continue;
          }
          expect((await call(set.token)).statusCode, `enrollment token on ${r.url}`).toBe(401);
          const a = await call(active.credential);
          // Authorized: routes naming a CVD or session answer for placeholder
          // ids (404), routes taking a body for a placeholder body (4xx), never 401/403.
          if (r.url.includes(":") || r.body)
            expect([401, 403], `active endpoint ${r.method} ${r.url} ${a.body}`).not.toContain(a.statusCode);
          else expect(a.statusCode, `active endpoint ${r.method} ${r.url} ${a.body}`).toBeLessThan(400);
          const p = await call(pending.credential);
          if (r.access.endpoint === "active") {
            expect(p.statusCode, `pending endpoint ${r.url}`).toBe(403);
            expect(p.json().error.code).toBe("PERMISSION_DENIED");
          } else expect(p.statusCode, `pending endpoint ${r.url}`).toBeLessThan(400);
          continue;
        }
        // Endpoint credentials and enrollment tokens never reach an administrative route.
        for (const secret of [active.credential, pending.credential, set.token]) {
          const res = await call(secret);
          expect(res.statusCode, `${secret.slice(0, 4)} on ${r.method} ${r.url}`).toBe(401);
          expect(res.json().error.code).toBe("WRONG_PASSWORD");
        }
        for (const role of BUILTIN_ROLES) {
          // logout revokes the token: probe it with a throwaway one.
          const token = r.url.endsWith("/auth/logout")
            ? (
                await h.app.inject({
                  method: "POST",
                  url: "/api/v1/tokens",
                  headers: auth(tokens.get(role.name)!),
                  payload: { name: "throwaway" },
                })
              ).json().token
            : tokens.get(role.name)!;
          const res = await call(token);
          const allowed =
            typeof r.access === "string" ||
            ("permission" in r.access && role.permissions.includes(r.access.permission));
          const what = `${role.name} ${r.method} ${r.url} → ${res.statusCode} ${res.body.slice(0, 200)}`;
          if (allowed) {
            expect([401, 403], what).not.toContain(res.statusCode);
            expect(res.statusCode, what).toBeLessThan(500);
          } else {
            expect(res.statusCode, what).toBe(403);
            expect(res.json().error.code).toBe("PERMISSION_DENIED");
          }
        }
      }
    });

    it("a route without a declared permission fails at startup", async () => {
      const bad = {
        method: "GET",
        url: "/api/v1/oops",
        summary: "x",
        tag: "x",
        response: null,
        handler: () => ({}),
      } as unknown as RouteDef;
      // fastify runs onRoute hooks as routes are added: buildApp itself throws.
      expect(() => buildApp({ services: h.services, logger: false, extraRoutes: [bad] })).toThrow(
        /declares no permission/,
      );
    });

    it("token auth: API tokens work, are stored hashed, revocation and expiry end them, disabled users are out", async () => {
      const t = await userToken("tok-user", "Help Desk");
      const created = await h.app.inject({
        method: "POST",
        url: "/api/v1/tokens",
        headers: auth(t),
        payload: { name: "ci", expiresInDays: 1 },
      });
      expect(created.statusCode).toBe(201);
      const { token, id } = created.json();
      expect(token).toMatch(/^stk_[A-Za-z0-9_-]{43}$/);
      const who = await h.app.inject({ method: "GET", url: "/api/v1/auth/whoami", headers: auth(token) });
      expect(who.json().user.name).toBe("tok-user");
      const me = await h.store.getUserByName("tok-user");
      const stored = await h.store.listTokens(me!.id);
      expect(JSON.stringify(stored)).not.toContain(token); // only the hash is kept
      const list = await h.app.inject({ method: "GET", url: "/api/v1/tokens", headers: auth(t) });
      expect(list.body).not.toContain("stk_");
      // Expiry (injected clock).
      h.now.t += 2 * 86_400_000;
      expect(
        (await h.app.inject({ method: "GET", url: "/api/v1/auth/whoami", headers: auth(token) })).statusCode,
      ).toBe(401);
      h.now.t -= 2 * 86_400_000;
      // Revocation of a token one does not own is NOT_FOUND; of one's own, 204.
      const other = await userToken("tok-other", "Read-only");
      expect(
        (await h.app.inject({ method: "DELETE", url: `/api/v1/tokens/${id}`, headers: auth(other) }))
          .statusCode,
      ).toBe(404);
      expect(
        (await h.app.inject({ method: "DELETE", url: `/api/v1/tokens/${id}`, headers: auth(t) })).statusCode,
      ).toBe(204);
      expect(
        (await h.app.inject({ method: "GET", url: "/api/v1/auth/whoami", headers: auth(token) })).statusCode,
      ).toBe(401);
      // Disabling a user ends their tokens.
      const d = await h.app.inject({
        method: "PATCH",
        url: "/api/v1/users/tok-user",
        headers: auth(h.adminToken),
        payload: { disabled: true },
      });
      expect(d.json().disabled).toBe(true);
      expect(
        (await h.app.inject({ method: "GET", url: "/api/v1/auth/whoami", headers: auth(t) })).statusCode,
      ).toBe(401);
      const l = await h.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { user: "tok-user", password: PW },
      });
      expect(l.statusCode).toBe(403);
    });

    it("login is rate limited per user and address, with growing lock times", async () => {
      await userToken("victim", "Read-only");
      const attempt = (password: string, remoteAddress = "10.0.0.1") =>
        h.app.inject({
          method: "POST",
          url: "/api/v1/auth/login",
          remoteAddress,
          payload: { user: "victim", password },
        });
      for (let i = 0; i < 5; i++) expect((await attempt("wrong password!")).statusCode).toBe(401);
      const locked = await attempt(PW);
      expect(locked.statusCode).toBe(429); // even the right password waits
      expect(locked.json().error.code).toBe("LOCKED");
      expect(Number(locked.headers["retry-after"])).toBe(60);
      expect((await attempt(PW, "10.0.0.2")).statusCode).toBe(200); // another address is unaffected
      h.now.t += 61_000;
      expect((await attempt("wrong again!!")).statusCode).toBe(401);
      expect(Number((await attempt(PW)).headers["retry-after"])).toBe(120); // doubled
      h.now.t += 121_000;
      expect((await attempt(PW)).statusCode).toBe(200);
      expect((await attempt("wrong once more")).statusCode).toBe(401); // success reset the count
    });

    it("admin actions are audited with actor, object and address; the log filters", async () => {
      const t = h.adminToken;
      await h.app.inject({
        method: "POST",
        url: "/api/v1/roles",
        headers: auth(t),
        remoteAddress: "192.0.2.7",
        payload: { name: "Auditors", permissions: ["audit.read"] },
      });
      await h.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: auth(t),
        remoteAddress: "192.0.2.7",
        payload: { name: "aud", role: "Auditors", password: PW },
      });
      await h.app.inject({
        method: "PUT",
        url: "/api/v1/roles/Auditors",
        headers: auth(t),
        payload: { permissions: ["audit.read", "users.read"] },
      });
      await h.app.inject({
        method: "POST",
        url: "/api/v1/users/aud/password",
        headers: auth(t),
        payload: { password: "brand new password 9" },
      });
      const res = await h.app.inject({
        method: "GET",
        url: "/api/v1/audit?actor=admin&limit=50",
        headers: auth(t),
      });
      expect(res.statusCode).toBe(200);
      const entries = res.json() as {
        action: string;
        object: string;
        remoteAddr: string;
        actor: string;
        detail: unknown;
      }[];
      const actions = entries.map((e) => `${e.action} ${e.object}`);
      expect(actions).toEqual(
        expect.arrayContaining([
          "role.create role:Auditors",
          "user.create user:aud",
          "role.update role:Auditors",
          "user.password_reset user:aud",
        ]),
      );
      expect(entries.find((e) => e.action === "role.create")!.remoteAddr).toBe("192.0.2.7");
      expect(JSON.stringify(entries)).not.toContain("brand new password");
      const only = await h.app.inject({
        method: "GET",
        url: "/api/v1/audit?action=user.create&object=user:aud",
        headers: auth(t),
      });
      expect(only.json()).toHaveLength(1);
      const failed = await h.app.inject({
        method: "GET",
        url: "/api/v1/audit?action=auth.login_failed",
        headers: auth(t),
      });
      expect(failed.json().length).toBeGreaterThan(0);
      expect(
        (await h.app.inject({ method: "GET", url: "/api/v1/audit?since=yesterday", headers: auth(t) }))
          .statusCode,
      ).toBe(400);
    });

    it("no privilege escalation: users.write cannot hand out permissions the caller lacks", async () => {
      await h.app.inject({
        method: "POST",
        url: "/api/v1/roles",
        headers: auth(h.adminToken),
        payload: { name: "Account Clerk", permissions: ["users.read", "users.write", "roles.read"] },
      });
      const clerk = await userToken("clerk", "Account Clerk");
      const up = await h.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: auth(clerk),
        payload: { name: "evil", role: "Administrator", password: PW },
      });
      expect(up.statusCode).toBe(403);
      const reset = await h.app.inject({
        method: "POST",
        url: "/api/v1/users/admin/password",
        headers: auth(clerk),
        payload: { password: "taken over password" },
      });
      expect(reset.statusCode).toBe(403);
      expect(
        (
          await h.app.inject({
            method: "POST",
            url: "/api/v1/users",
            headers: auth(clerk),
            payload: { name: "fine", role: "Account Clerk", password: PW },
          })
        ).statusCode,
      ).toBe(201);
    });

    it("malformed, oversized and hostile requests get 4xx JSON errors and change nothing", async () => {
      const t = h.adminToken;
      const before = (await h.store.listUsers()).length;
      const auditBefore = (await h.store.listAudit({ limit: 1000 })).length;
      const cases = [
        {
          method: "POST",
          url: "/api/v1/users",
          payload: "{not json",
          headers: { "content-type": "application/json" },
          status: 400,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload: `{"name":"x","pad":"${"a".repeat(70_000)}"}`,
          headers: { "content-type": "application/json" },
          status: 413,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload: "name=x",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          status: 415,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload:
            '{"__proto__":{"admin":true},"name":"p","role":"Read-only","password":"long enough password"}',
          headers: { "content-type": "application/json" },
          status: 400,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload: { name: "../../etc/passwd", role: "Read-only", password: PW },
          status: 400,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload: { name: "ok-name", role: "Read-only", password: PW, extra: 1 },
          status: 400,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload: { name: "short", role: "Read-only", password: "short" },
          status: 400,
        },
        {
          method: "POST",
          url: "/api/v1/users",
          payload: { name: "ghost", role: "No Such Role", password: PW },
          status: 404,
        },
        { method: "GET", url: "/api/v1/users/..%2F..%2Fetc%2Fpasswd", status: 400 },
        { method: "GET", url: "/api/v1/users/%00admin", status: 400 },
        { method: "PATCH", url: "/api/v1/users/a%2Fb", payload: { disabled: true }, status: 400 },
        { method: "GET", url: "/api/v1/roles/..%2Fusers", status: 400 },
        { method: "DELETE", url: "/api/v1/tokens/..%2F..", status: 400 },
        { method: "DELETE", url: "/api/v1/roles/Administrator", status: 400 },
        { method: "GET", url: "/api/v1/audit?limit=100000", status: 400 },
        { method: "GET", url: "/api/v1/nope", status: 404 },
      ] as const;
      for (const c of cases) {
        const res = await h.app.inject({
          method: c.method,
          url: c.url,
          headers: { ...auth(t), ...("headers" in c ? c.headers : {}) },
          ...("payload" in c ? { payload: c.payload } : {}),
        });
        expect(res.statusCode, `${c.method} ${c.url}: ${res.body.slice(0, 200)}`).toBe(c.status);
        const err = res.json().error;
        expect(typeof err.code).toBe("string");
        expect(typeof err.message).toBe("string");
        expect(err.requestId).toBe(res.headers["x-request-id"]);
      }
      expect((await h.store.listUsers()).length).toBe(before);
      expect((await h.store.listAudit({ limit: 1000 })).length).toBe(auditBefore);
      expect((await h.store.getRole("Administrator"))?.builtin).toBe(true);
      expect(({} as Record<string, unknown>).admin).toBeUndefined();
    });

    it("health, metrics and the OpenAPI document", async () => {
      expect((await h.app.inject({ url: "/healthz" })).json()).toEqual({ status: "ok" });
      const m = await h.app.inject({ url: "/metrics" });
      expect(m.headers["content-type"]).toMatch(/^text\/plain/);
      expect(m.body).toMatch(
        /strata_http_requests_total\{method="POST",route="\/api\/v1\/auth\/login",status="200"\} \d+/,
      );
      expect(m.body).toMatch(/strata_logins_total\{outcome="failure"\} \d+/);
      const doc = (await h.app.inject({ url: "/api/openapi.json" })).json();
      expect(doc.openapi).toBe("3.1.0");
      for (const r of routesOf(h.app)) {
        const op = doc.paths[r.url.replace(/:(\w+)/g, "{$1}")][r.method.toLowerCase()];
        expect(op["x-strata-access"]).toBe(describeAccess(r.access));
      }
    });

    it("secrets never reach the log", async () => {
      const secretPw = "S3cret-Passphrase-For-Logs";
      await h.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: auth(h.adminToken),
        payload: { name: "logged", role: "Read-only", password: secretPw, mustChangePassword: false },
      });
      const l = await h.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { user: "logged", password: secretPw },
      });
      const token = l.json().token as string;
      await h.app.inject({ method: "GET", url: "/api/v1/auth/whoami", headers: auth(token) });
      await h.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { user: "logged", password: `${secretPw}-wrong` },
      });
      await h.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: { ...auth(token), "content-type": "application/json" },
        payload: `{"password":"${secretPw}", broken`,
      });
      h.app.log.info(
        { req: { headers: { authorization: `Bearer ${token}` } }, body: { password: secretPw } },
        "a careless log call",
      );
      const out = h.logs.join("");
      expect(out.length).toBeGreaterThan(1000);
      expect(out).toContain('"reqId"');
      expect(out).not.toContain(secretPw);
      expect(out).not.toContain(token);
      expect(out).not.toContain(h.adminToken);
      expect(out).not.toContain(PW);
    });
  });
}
