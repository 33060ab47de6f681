/**
 * The fleet through the HTTP stack, on every catalog (server.test.ts):
 * enrollment tokens, enroll, agent/self, approval, replacement devices,
 * clones, isolation, policies, audit, logs.
 */
import type { ServerStore } from "@strata/catalog";
import type { CvdSnapshotSummary } from "@strata/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp, ownCvdOf, type RouteDef, route } from "../src/index.js";
import { enroll, enrollmentToken, FACTS, type Harness, idemKey, makeHarness } from "./suite.js";

const FINGERPRINT = Array.from({ length: 32 }, (_, i) => (i + 16).toString(16).toUpperCase()).join(":");

export function runFleetSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`fleet on ${name}`, () => {
    let h: Harness;
    const snapshots = new Map<string, CvdSnapshotSummary[]>();
    const admin = () => ({ authorization: `Bearer ${h.adminToken}` });
    const as = (credential: string) => ({ authorization: `Bearer ${credential}`, "strata-protocol": "1" });
    const get = (url: string, headers = admin()) => h.app.inject({ method: "GET", url, headers });
    const send = (method: "POST" | "PUT" | "DELETE", url: string, payload?: unknown) =>
      h.app.inject({ method, url, headers: admin(), ...(payload === undefined ? {} : { payload }) });

    beforeAll(async () => {
      h = await makeHarness(open, {
        serverFingerprint: FINGERPRINT,
        snapshotsOf: async (cvdId) => snapshots.get(cvdId) ?? [],
      });
    });
    afterAll(async () => {
      await h?.app.close();
      await h?.store.close();
    });

    it("bootstrap made the Default policy once", async () => {
      const list = (await get("/api/v1/policies")).json();
      expect(list).toMatchObject([{ id: "pol_default", name: "Default", version: 1, isDefault: true }]);
      const { bootstrap } = await import("../src/index.js");
      await Promise.all([bootstrap(h.services), bootstrap(h.services)]);
      expect((await get("/api/v1/policies")).json()).toHaveLength(1);
    });

    it("token → enroll (pending) → approve → agent/self active with its policy; secrets stored hashed, never logged", async () => {
      const t = await enrollmentToken(h, { uses: 1, expiresInMinutes: 60 });
      expect(t.token).toMatch(/^set_[A-Za-z0-9_-]{43}$/);
      expect(t.serverFingerprint).toBe(FINGERPRINT);
      const e = await enroll(h, t.token, FACTS(1));
      expect(e.statusCode, e.body).toBe(201);
      const { endpointId, credential, state } = e.json();
      expect(endpointId).toMatch(/^ep_[A-Za-z0-9_-]+$/);
      expect(credential).toMatch(/^sep_[A-Za-z0-9_-]{43}$/);
      expect(state).toBe("pending");
      expect(e.json()).toMatchObject({ serverFingerprint: FINGERPRINT });
      // The token had one use.
      const again = await enroll(h, t.token, FACTS(2));
      expect(again.statusCode).toBe(401);
      expect((await get("/api/v1/enrollment-tokens")).json()[0]).toMatchObject({
        id: t.id,
        status: "used-up",
        usesLeft: 0,
      });
      // Pending: agent/self answers, without a CVD.
      const self = await get("/api/v1/agent/self", as(credential));
      expect(self.statusCode).toBe(200);
      expect(self.json()).toEqual({
        endpointId,
        state: "pending",
        cvd: null,
        tasks: [],
        serverTime: new Date(h.now.t).toISOString(),
      });
      const listed = (await get("/api/v1/endpoints?state=pending")).json();
      expect(listed.map((x: { id: string }) => x.id)).toContain(endpointId);
      // Approve with a policy.
      const pol = await send("POST", "/api/v1/policies", { name: "Laptops", intervalMinutes: 30 });
      expect(pol.statusCode, pol.body).toBe(201);
      const ap = await send("POST", `/api/v1/endpoints/${endpointId}/approve`, { policy: "Laptops" });
      expect(ap.statusCode, ap.body).toBe(200);
      const cvdId = ap.json().cvdId as string;
      expect(ap.json()).toMatchObject({
        state: "active",
        hostname: "host-1",
        os: "Debian GNU/Linux 12 (bookworm)",
      });
      snapshots.set(cvdId, [
        {
          id: "a".repeat(64),
          time: "2026-03-01T10:00:00.000Z",
          hostname: "host-1",
          kind: "centralize",
          parent: null,
          totalFiles: 1,
          totalBytes: 1,
        },
        {
          id: "b".repeat(64),
          time: "2026-03-01T11:00:00.000Z",
          hostname: "host-1",
          kind: "upload",
          parent: "a".repeat(64),
          totalFiles: 1,
          totalBytes: 1,
        },
      ]);
      const active = (await get("/api/v1/agent/self", as(credential))).json();
      expect(active).toMatchObject({
        endpointId,
        state: "active",
        cvd: {
          id: cvdId,
          latestSnapshot: "b".repeat(64),
          snoozedUntil: null,
          policy: { name: "Laptops", version: 1, intervalMinutes: 30 },
        },
      });
      expect(active.cvd.policy.factoryRules.length).toBeGreaterThan(0);
      expect(
        (await get(`/api/v1/cvds/${cvdId}/snapshots`)).json().map((s: { id: string }) => s.id[0]),
      ).toEqual(["b", "a"]);
      // Last seen is recorded.
      expect((await get(`/api/v1/endpoints/${endpointId}`)).json().lastSeenAt).toBe(
        new Date(h.now.t).toISOString(),
      );
      // Only hashes in the catalog; no secret in the log.
      const stored = JSON.stringify([await h.store.listEnrollmentTokens(), await h.store.listEndpoints()]);
      expect(stored).not.toContain(t.token);
      expect(stored).not.toContain(credential);
      const log = h.logs.join("");
      expect(log).not.toContain(t.token);
      expect(log).not.toContain(credential);
      expect(log).not.toContain(t.token.slice(4));
      expect(log).not.toContain(credential.slice(4));
    });

    it("a retried enrollment (same Idempotency-Key) gets the same endpoint and takes no second use", async () => {
      const t = await enrollmentToken(h, { uses: 2 });
      const key = idemKey();
      const first = (await enroll(h, t.token, FACTS(3), key)).json();
      const second = await enroll(h, t.token, FACTS(3), key);
      expect(second.statusCode).toBe(201);
      expect(second.json().endpointId).toBe(first.endpointId);
      // The lost response's credential is replaced by the new one.
      expect((await get("/api/v1/agent/self", as(first.credential))).statusCode).toBe(401);
      expect((await get("/api/v1/agent/self", as(second.json().credential))).statusCode).toBe(200);
      const tokens = (await get("/api/v1/enrollment-tokens")).json() as { id: string; usesLeft: number }[];
      expect(tokens.find((x) => x.id === t.id)?.usesLeft).toBe(1);
      // After 24 hours the key is spent.
      h.now.t += 25 * 3_600_000;
      try {
        expect((await enroll(h, t.token, FACTS(3), key)).statusCode).toBe(400);
      } finally {
        h.now.t -= 25 * 3_600_000;
      }
      // Bad keys and bad facts are refused before anything is written.
      const bad = [
        await h.app.inject({
          method: "POST",
          url: "/api/v1/enroll",
          headers: { authorization: `Bearer ${t.token}` },
          payload: { facts: FACTS(4) },
        }),
        await enroll(h, t.token, { ...FACTS(4), hostname: "x".repeat(257) }),
        await enroll(h, t.token, {
          ...FACTS(4),
          macs: Array.from({ length: 65 }, () => "00:00:00:00:00:00"),
        }),
        await enroll(h, t.token, { ...FACTS(4), machineId: "not-hex" }),
        await enroll(h, t.token, { ...FACTS(4), surprise: 1 }),
      ];
      expect(bad.map((r) => r.statusCode)).toEqual([400, 400, 400, 400, 400]);
      const disk = { name: "d".repeat(256), sizeBytes: 1, model: "m".repeat(256) };
      const huge = await enroll(h, t.token, { ...FACTS(4), disks: Array.from({ length: 64 }, () => disk) });
      expect(huge.statusCode).toBe(413);
      expect(huge.json().error.code).toBe("TOO_LARGE");
      const unsupported = await h.app.inject({
        method: "POST",
        url: "/api/v1/enroll",
        headers: { authorization: `Bearer ${t.token}`, "idempotency-key": idemKey(), "strata-protocol": "2" },
        payload: { facts: FACTS(4) },
      });
      expect(unsupported.statusCode).toBe(501);
      expect(
        ((await get("/api/v1/enrollment-tokens")).json() as { id: string; usesLeft: number }[]).find(
          (x) => x.id === t.id,
        )?.usesLeft,
      ).toBe(1);
    });

    it("expired and revoked tokens are refused; revocation is audited", async () => {
      const t = await enrollmentToken(h, { uses: 5, expiresInMinutes: 10 });
      h.now.t += 11 * 60_000;
      try {
        expect((await enroll(h, t.token, FACTS(5))).statusCode).toBe(401);
      } finally {
        h.now.t -= 11 * 60_000;
      }
      expect((await send("DELETE", `/api/v1/enrollment-tokens/${t.id}`)).statusCode).toBe(204);
      expect((await enroll(h, t.token, FACTS(5))).statusCode).toBe(401);
      expect((await send("DELETE", "/api/v1/enrollment-tokens/00000000deadbeef")).statusCode).toBe(404);
      const audit = (await get(`/api/v1/audit?object=enrollment-token:${t.id}`)).json();
      expect(audit.map((a: { action: string }) => a.action)).toEqual([
        "enrollment_token.revoke",
        "enrollment_token.create",
      ]);
    });

    it("auto-approve gives a CVD with the token's policy; a clone's machine id is flagged and never auto-attached", async () => {
      await send("POST", "/api/v1/policies", { name: "Servers", intervalMinutes: 15 });
      const t = await enrollmentToken(h, { uses: 3, policy: "Servers", autoApprove: true });
      const a = (await enroll(h, t.token, FACTS(6, "6".repeat(32)))).json();
      expect(a.state).toBe("active");
      const selfA = (await get("/api/v1/agent/self", as(a.credential))).json();
      expect(selfA.cvd.policy.name).toBe("Servers");
      const clone = (await enroll(h, t.token, FACTS(7, "6".repeat(32)))).json();
      expect(clone.state).toBe("pending");
      const shown = (await get(`/api/v1/endpoints/${clone.endpointId}`)).json();
      expect(shown).toMatchObject({ duplicateMachineId: true, cvdId: null, sameMachineId: [a.endpointId] });
      expect((await get("/api/v1/agent/self", as(clone.credential))).json().cvd).toBeNull();
      const audit = (await get(`/api/v1/audit?object=endpoint:${clone.endpointId}`)).json();
      expect(audit[0]).toMatchObject({
        actor: `enrollment-token:${t.id}`,
        action: "endpoint.enroll",
        detail: { duplicateMachineId: true },
      });
    });

    it("agent/facts: an active endpoint reports its facts again (hostname, DMI, modaliases); pending ones may not; oversized refused", async () => {
      const t = await enrollmentToken(h, { uses: 2 });
      const a = (await enroll(h, t.token, FACTS(40))).json();
      const p = (await enroll(h, t.token, FACTS(41))).json();
      await send("POST", `/api/v1/endpoints/${a.endpointId}/approve`, {});
      const put = (cred: string, facts: unknown) =>
        h.app.inject({ method: "PUT", url: "/api/v1/agent/facts", headers: as(cred), payload: { facts } });
      const facts = {
        ...FACTS(40),
        hostname: "laptop-40",
        dmi: { vendor: "LENOVO", model: "20XW0026GE" },
        modaliases: ["pci:v00008086d00009A49sv000017AAsd000022D8bc03sc00i00"],
      };
      const r = await put(a.credential, facts);
      expect(r.statusCode, r.body).toBe(204);
      const shown = (await get(`/api/v1/endpoints/${a.endpointId}`)).json();
      expect(shown).toMatchObject({ hostname: "laptop-40", machineId: FACTS(40).machineId, facts });
      // A different machine id is a claim in the facts, not a new identity.
      expect((await put(a.credential, { ...facts, machineId: "e".repeat(32) })).statusCode).toBe(204);
      expect((await get(`/api/v1/endpoints/${a.endpointId}`)).json().machineId).toBe(FACTS(40).machineId);
      expect((await put(p.credential, facts)).statusCode).toBe(403);
      const bad = await put(a.credential, { ...facts, modaliases: Array(65).fill("pci:x") });
      expect(bad.statusCode).toBe(400);
      const huge = await put(a.credential, {
        ...facts,
        disks: Array.from({ length: 64 }, (_, i) => ({
          name: `${i}`.padEnd(256, "d"),
          sizeBytes: 1,
          model: "m".repeat(256),
        })),
      });
      expect(huge.statusCode).toBe(413);
      expect((await get(`/api/v1/endpoints/${a.endpointId}`)).json().facts.modaliases).toEqual(
        facts.modaliases,
      );
    });

    it("replacement device: the old endpoint is disabled, its CVD moves to the new one; disabled credentials reach only agent/self", async () => {
      const t = await enrollmentToken(h, { uses: 2 });
      const old = (await enroll(h, t.token, FACTS(8))).json();
      const cvdId = (await send("POST", `/api/v1/endpoints/${old.endpointId}/approve`, {})).json().cvdId;
      expect((await get(`/api/v1/cvds/${cvdId}`)).json()).toMatchObject({
        policy: "Default",
        endpointId: old.endpointId,
        hostname: "host-8",
      });
      const neu = (await enroll(h, t.token, FACTS(9))).json();
      const refused = await send("POST", `/api/v1/endpoints/${neu.endpointId}/approve`, { cvd: cvdId });
      expect(refused.statusCode).toBe(400);
      expect(refused.json().error.hint).toContain(`disable endpoint ${old.endpointId}`);
      expect(
        (await send("POST", `/api/v1/endpoints/${neu.endpointId}/approve`, { cvd: cvdId, policy: "Default" }))
          .statusCode,
      ).toBe(400);
      const d = await send("POST", `/api/v1/endpoints/${old.endpointId}/disable`);
      expect(d.json()).toMatchObject({ state: "disabled", cvdId });
      const moved = await send("POST", `/api/v1/endpoints/${neu.endpointId}/approve`, { cvd: cvdId });
      expect(moved.statusCode, moved.body).toBe(200);
      expect(moved.json().cvdId).toBe(cvdId);
      expect((await get("/api/v1/agent/self", as(neu.credential))).json().cvd.id).toBe(cvdId);
      const oldSelf = (await get("/api/v1/agent/self", as(old.credential))).json();
      expect(oldSelf).toMatchObject({ state: "disabled", cvd: null });
      expect((await send("POST", `/api/v1/endpoints/${neu.endpointId}/approve`, {})).statusCode).toBe(400); // already active
      const audit = (
        await get(`/api/v1/audit?object=endpoint:${neu.endpointId}&action=endpoint.approve`)
      ).json();
      expect(audit[0].detail).toMatchObject({ cvdId, newCvd: false, previousEndpoint: old.endpointId });
    });

    it("isolation: endpoint A never sees CVD B (404, like a CVD that does not exist); pending and disabled endpoints get 403", async () => {
      // A probe of the upload routes' shape: /cvds/:cvd/… for active endpoints, guarded by ownCvdOf.
      const probe = route<unknown, { cvd: string }>({
        method: "GET",
        url: "/api/v1/cvds/:cvd/probe",
        access: { endpoint: "active" },
        summary: "test probe",
        tag: "test",
        response: null,
        handler: (ctx) => ({
          raw: JSON.stringify({ cvd: ownCvdOf(ctx, ctx.params.cvd) }),
          type: "application/json",
        }),
      }) as RouteDef;
      const app = buildApp({ services: h.services, logger: false, extraRoutes: [probe] });
      try {
        const t = await enrollmentToken(h, { uses: 3, autoApprove: true });
        const a = (await enroll(h, t.token, FACTS(10))).json();
        const b = (await enroll(h, t.token, FACTS(11))).json();
        const cvdA = (await get("/api/v1/agent/self", as(a.credential))).json().cvd.id;
        const cvdB = (await get("/api/v1/agent/self", as(b.credential))).json().cvd.id;
        const hit = (cred: string, cvd: string) =>
          app.inject({ method: "GET", url: `/api/v1/cvds/${cvd}/probe`, headers: as(cred) });
        expect((await hit(a.credential, cvdA)).json()).toEqual({ cvd: cvdA });
        const other = await hit(a.credential, cvdB);
        const none = await hit(a.credential, "cvd_doesnotexist");
        expect(other.statusCode).toBe(404);
        expect(none.statusCode).toBe(404);
        expect(other.json().error.message.replace(cvdB, "X")).toBe(
          none.json().error.message.replace("cvd_doesnotexist", "X"),
        );
        // Admin routes refuse endpoint credentials outright.
        expect((await get(`/api/v1/cvds/${cvdB}`, as(a.credential))).statusCode).toBe(401);
        expect((await get("/api/v1/cvds", as(a.credential))).statusCode).toBe(401);
        // Disabled: refused at once on active routes.
        await send("POST", `/api/v1/endpoints/${a.endpointId}/disable`);
        expect((await hit(a.credential, cvdA)).statusCode).toBe(403);
        const c = (await enroll(h, (await enrollmentToken(h)).token, FACTS(12))).json();
        expect((await hit(c.credential, cvdA)).statusCode).toBe(403);
      } finally {
        await app.close();
      }
    });

    it("policies: create, show, update bumps the version (stale edits refused), export/import round trip, delete refused in use", async () => {
      const created = await send("POST", "/api/v1/policies", {
        name: "Kiosks",
        unprotected: ["/var/log/*.gz"],
        retention: { hourly: 0, daily: 7, weekly: 0, monthly: 0 },
      });
      expect(created.statusCode, created.body).toBe(201);
      const id = created.json().id as string;
      expect(created.json().policy.unprotected).toEqual([{ dir: "/var/log", pattern: "*.gz" }]);
      const invalid = await send("POST", "/api/v1/policies", {
        name: "Bad",
        intervalMinutes: 0,
        unprotected: ["relative"],
      });
      expect(invalid.statusCode).toBe(400);
      expect(invalid.json().error.message).toMatch(/unprotected\[0\][\s\S]*intervalMinutes/);
      expect((await send("POST", "/api/v1/policies", { name: "Kiosks" })).statusCode).toBe(409);
      expect((await send("POST", "/api/v1/policies", { name: "pol_sneaky" })).statusCode).toBe(400);
      const exported = await get(`/api/v1/policies/${id}/export`);
      expect(exported.headers["content-type"]).toMatch(/^application\/json/);
      const doc = JSON.parse(exported.body);
      expect(doc).toMatchObject({
        format: "strata-upload-policy",
        schemaVersion: 1,
        policy: { id, name: "Kiosks", version: 1 },
      });
      // Edit the export and update: version 2. Updating from the same (now stale) export is refused.
      doc.policy.intervalMinutes = 240;
      const up = await send("PUT", "/api/v1/policies/Kiosks", doc);
      expect(up.statusCode, up.body).toBe(200);
      expect(up.json()).toMatchObject({ version: 2, intervalMinutes: 240 });
      expect((await send("PUT", "/api/v1/policies/Kiosks", doc)).statusCode).toBe(400);
      expect((await send("PUT", `/api/v1/policies/${id}`, { intervalMinutes: 5 })).json()).toMatchObject({
        name: "Kiosks",
        version: 3,
      });
      // Import under another name.
      const imp = await h.app.inject({
        method: "POST",
        url: "/api/v1/policies/import?name=Kiosks%20copy",
        headers: admin(),
        payload: doc,
      });
      expect(imp.statusCode, imp.body).toBe(201);
      expect(imp.json()).toMatchObject({ name: "Kiosks copy", version: 1, intervalMinutes: 240 });
      expect(
        (
          await h.app.inject({
            method: "POST",
            url: "/api/v1/policies/import",
            headers: admin(),
            payload: doc,
          })
        ).statusCode,
      ).toBe(409);
      expect(
        (
          await h.app.inject({
            method: "POST",
            url: "/api/v1/policies/import",
            headers: admin(),
            payload: { name: "x" },
          })
        ).statusCode,
      ).toBe(400);
      // In use by a CVD: refused; moved away: deleted.
      const t = await enrollmentToken(h, { autoApprove: true });
      const ep = (await enroll(h, t.token, FACTS(13))).json();
      const cvd = (await get("/api/v1/agent/self", as(ep.credential))).json().cvd.id;
      const setp = await send("PUT", `/api/v1/cvds/${cvd}/policy`, { policy: "Kiosks" });
      expect(setp.json()).toMatchObject({ policy: "Kiosks", policyVersion: 3 });
      expect((await get("/api/v1/agent/self", as(ep.credential))).json().cvd.policy).toMatchObject({
        name: "Kiosks",
        version: 3,
      });
      expect((await get("/api/v1/policies/Kiosks")).json().usage).toEqual({
        cvds: 1,
        enrollmentTokens: 0,
        autoassignRules: 0,
      });
      const del = await send("DELETE", "/api/v1/policies/Kiosks");
      expect(del.statusCode).toBe(400);
      expect(del.json().error.message).toContain("1 CVD");
      await send("PUT", `/api/v1/cvds/${cvd}/policy`, { policy: "Default" });
      expect((await send("DELETE", "/api/v1/policies/Kiosks")).statusCode).toBe(204);
      expect((await get("/api/v1/policies/Kiosks")).statusCode).toBe(404);
      expect((await send("DELETE", "/api/v1/policies/Default")).statusCode).toBe(400);
      const actions = (await get("/api/v1/audit?actor=admin&limit=200"))
        .json()
        .map((a: { action: string }) => a.action);
      expect(actions).toEqual(
        expect.arrayContaining([
          "policy.create",
          "policy.update",
          "policy.import",
          "policy.delete",
          "cvd.set_policy",
        ]),
      );
    });
  });
}
