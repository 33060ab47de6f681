/**
 * The FleetStore contract (policies, enrollment tokens, endpoints, CVDs),
 * run against every ServerStore (server-store.test.ts: SQLite and
 * PostgreSQL).
 */
import { isStrataError } from "@strata/core";
import { describe, expect, it } from "vitest";
import type {
  CvdRecord,
  EnrollmentTokenRecord,
  NewEndpoint,
  PolicyRecord,
  ServerStore,
} from "../src/index.js";

const t0 = new Date("2026-01-01T00:00:00.000Z");
const later = (m: number) => new Date(t0.getTime() + m * 60_000);
let seq = 0;

function policy(name: string, id = `pol_${name.replace(/\W/g, "")}`): PolicyRecord {
  return {
    id,
    name,
    version: 1,
    body: { intervalMinutes: 60, userArea: [{ dir: "/home" }] },
    createdAt: t0,
    updatedAt: t0,
  };
}

function token(id: string, over: Partial<EnrollmentTokenRecord> = {}): EnrollmentTokenRecord {
  return {
    id,
    tokenHash: `hash-${id}`,
    createdBy: "admin",
    createdAt: t0,
    expiresAt: later(60),
    maxUses: 2,
    usesLeft: 2,
    policyId: null,
    autoApprove: false,
    revokedAt: null,
    autoAssign: true,
    ...over,
  };
}

function endpoint(tokenId: string, machineId: string, over: Partial<NewEndpoint> = {}): NewEndpoint {
  const n = seq++;
  return {
    id: `ep_${n}`,
    hostname: `host-${n}`,
    machineId,
    facts: { hostname: `host-${n}`, machineId, disks: [{ name: "sda", sizeBytes: 1 }] },
    credentialHash: `cred-${n}`,
    enrollmentTokenId: tokenId,
    enrollKeyHash: `key-${n}`,
    createdAt: new Date(t0.getTime() + n * 1000),
    ...over,
  };
}

const cvd = (id: string, policyId: string): CvdRecord => ({
  id,
  endpointId: null,
  policyId,
  createdAt: t0,
  snoozedUntil: null,
});

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(isStrataError(e) ? e.code : e).toBe(code);
}

export function runFleetStoreContract(name: string, open: () => Promise<ServerStore>): void {
  describe(`FleetStore contract (${name})`, () => {
    it("policies: create, unique names, ensure is idempotent (also concurrently), update bumps the version, delete refuses in use", async () => {
      const s = await open();
      const d = policy("Default");
      await s.createPolicy(d);
      await rejectsWith(s.createPolicy({ ...policy("Default"), id: "pol_other" }), "ALREADY_EXISTS");
      expect(await s.getPolicy(d.id)).toEqual(d);
      expect(await s.getPolicyByName("Default")).toEqual(d);
      expect(await s.getPolicyByName("default")).toBeNull();
      expect(await s.getPolicy("pol_missing")).toBeNull();
      // Two nodes starting at once: one row, both see it.
      const both = await Promise.all([
        s.ensurePolicy(policy("Laptops", "pol_a")),
        s.ensurePolicy(policy("Laptops", "pol_b")),
      ]);
      expect(both[0]).toEqual(both[1]);
      expect(await s.ensurePolicy(policy("Default", "pol_again"))).toEqual(d);
      expect(await s.getPolicy("pol_again")).toBeNull();
      expect((await s.listPolicies()).map((p) => p.name)).toEqual(["Default", "Laptops"]);
      const u = await s.updatePolicy(d.id, { name: "Default", body: { intervalMinutes: 15 } }, later(1));
      expect(u).toMatchObject({
        id: d.id,
        version: 2,
        body: { intervalMinutes: 15 },
        updatedAt: later(1),
        createdAt: t0,
      });
      expect((await s.updatePolicy(d.id, { name: "Renamed", body: {} }, later(2)))?.version).toBe(3);
      await rejectsWith(s.updatePolicy(d.id, { name: "Laptops", body: {} }, later(3)), "ALREADY_EXISTS");
      expect((await s.getPolicy(d.id))?.name).toBe("Renamed");
      // A renamed policy is still found by its id: a restart does not make a second "Default".
      expect((await s.ensurePolicy(policy("Default"))).name).toBe("Renamed");
      expect(await s.getPolicyByName("Default")).toBeNull();
      expect(await s.updatePolicy("pol_missing", { name: "x", body: {} }, later(3))).toBeNull();
      // In use by a token, then by a CVD.
      await s.createEnrollmentToken(token("00000000000000a1", { policyId: d.id }));
      expect(await s.policyUsage(d.id)).toEqual({ cvds: 0, enrollmentTokens: 1, autoassignRules: 0 });
      await rejectsWith(s.deletePolicy(d.id), "INVALID_ARGUMENT");
      expect(await s.getPolicy(d.id)).not.toBeNull();
      expect(await s.deletePolicy(both[0].id)).toBe(true);
      expect(await s.deletePolicy(both[0].id)).toBe(false);
      await s.close();
    });

    it("enrollment tokens: hashed lookup, list newest first, revoke once, unique hash", async () => {
      const s = await open();
      const a = token("00000000000000b1");
      const b = token("00000000000000b2", {
        createdAt: later(5),
        autoApprove: true,
        maxUses: 5,
        usesLeft: 5,
      });
      await s.createEnrollmentToken(a);
      await s.createEnrollmentToken(b);
      await rejectsWith(s.createEnrollmentToken({ ...a, id: "00000000000000b3" }), "ALREADY_EXISTS");
      await rejectsWith(
        s.createEnrollmentToken(token("00000000000000b4", { policyId: "pol_ghost" })),
        "NOT_FOUND",
      );
      expect(await s.getEnrollmentTokenByHash(a.tokenHash)).toEqual(a);
      expect(await s.getEnrollmentToken(b.id)).toEqual(b);
      expect(await s.getEnrollmentTokenByHash("nope")).toBeNull();
      expect((await s.listEnrollmentTokens()).map((t) => t.id)).toEqual([b.id, a.id]);
      expect(await s.revokeEnrollmentToken(a.id, later(1))).toBe(true);
      expect(await s.revokeEnrollmentToken(a.id, later(2))).toBe(false);
      expect((await s.getEnrollmentToken(a.id))?.revokedAt).toEqual(later(1));
      await s.close();
    });

    it("enroll: takes one use atomically; expired, revoked and used-up tokens change nothing", async () => {
      const s = await open();
      await s.createEnrollmentToken(token("00000000000000c1", { maxUses: 3, usesLeft: 3 }));
      // Three uses, five concurrent enrollments: exactly three endpoints.
      const results = await Promise.all(
        [0, 1, 2, 3, 4].map((i) =>
          s.enrollEndpoint(endpoint("00000000000000c1", `m${i}`.padEnd(32, "0")), {
            at: later(1),
            autoApprove: null,
          }),
        ),
      );
      expect(results.filter((r) => r !== null)).toHaveLength(3);
      expect((await s.getEnrollmentToken("00000000000000c1"))?.usesLeft).toBe(0);
      expect(await s.listEndpoints()).toHaveLength(3);
      await s.createEnrollmentToken(token("00000000000000c2"));
      expect(
        await s.enrollEndpoint(endpoint("00000000000000c2", "x"), { at: later(60), autoApprove: null }),
      ).toBeNull();
      await s.revokeEnrollmentToken("00000000000000c2", later(1));
      expect(
        await s.enrollEndpoint(endpoint("00000000000000c2", "x"), { at: later(2), autoApprove: null }),
      ).toBeNull();
      expect(await s.listEndpoints()).toHaveLength(3);
      expect((await s.getEnrollmentToken("00000000000000c2"))?.usesLeft).toBe(2);
      await s.close();
    });

    it("enroll: pending by default, active with a CVD when auto-approved, duplicates flagged and never approved, retries found by key", async () => {
      const s = await open();
      const pol = await s.ensurePolicy(policy("Default"));
      await s.createEnrollmentToken(token("00000000000000d1", { maxUses: 10, usesLeft: 10 }));
      const e1 = endpoint("00000000000000d1", "a".repeat(32));
      const r1 = await s.enrollEndpoint(e1, { at: later(1), autoApprove: null });
      expect(r1).toEqual({
        ...e1,
        state: "pending",
        duplicateMachineId: false,
        cvdId: null,
        lastSeenAt: null,
      });
      const e2 = endpoint("00000000000000d1", "b".repeat(32));
      const r2 = await s.enrollEndpoint(e2, { at: later(1), autoApprove: cvd("cvd_auto", pol.id) });
      expect(r2).toMatchObject({ state: "active", duplicateMachineId: false, cvdId: "cvd_auto" });
      expect(await s.getCvd("cvd_auto")).toMatchObject({
        endpointId: e2.id,
        endpointHostname: e2.hostname,
        policyName: "Default",
      });
      // A clone of e2: flagged, pending, no CVD even though the token auto-approves.
      const clone = endpoint("00000000000000d1", "b".repeat(32));
      const r3 = await s.enrollEndpoint(clone, { at: later(2), autoApprove: cvd("cvd_clone", pol.id) });
      expect(r3).toMatchObject({ state: "pending", duplicateMachineId: true, cvdId: null });
      expect(await s.getCvd("cvd_clone")).toBeNull();
      // Two clones at once: at least one is flagged (the catalog serializes them).
      const [x, y] = await Promise.all(
        [0, 1].map(() =>
          s.enrollEndpoint(endpoint("00000000000000d1", "c".repeat(32)), { at: later(3), autoApprove: null }),
        ),
      );
      expect([x?.duplicateMachineId, y?.duplicateMachineId].sort()).toEqual([false, true]);
      // Same token + key again: refused by the store; findEnrollment finds the first.
      await rejectsWith(
        s.enrollEndpoint(
          { ...endpoint("00000000000000d1", "d".repeat(32)), enrollKeyHash: e1.enrollKeyHash },
          { at: later(4), autoApprove: null },
        ),
        "ALREADY_EXISTS",
      );
      expect((await s.findEnrollment("00000000000000d1", e1.enrollKeyHash!))?.id).toBe(e1.id);
      expect(await s.findEnrollment("00000000000000d1", "other")).toBeNull();
      expect((await s.getEnrollmentToken("00000000000000d1"))?.usesLeft).toBe(5);
      // Lookups and filters.
      expect((await s.getEndpointByCredentialHash(e2.credentialHash))?.id).toBe(e2.id);
      expect(await s.getEndpointByCredentialHash("nope")).toBeNull();
      expect(await s.setEndpointCredential(e1.id, "cred-new")).toBe(true);
      expect(await s.getEndpointByCredentialHash(e1.credentialHash)).toBeNull();
      expect((await s.getEndpointByCredentialHash("cred-new"))?.id).toBe(e1.id);
      expect(await s.setEndpointCredential("ep_missing", "x")).toBe(false);
      expect((await s.listEndpoints({ machineId: "b".repeat(32) })).map((e) => e.id)).toEqual([
        e2.id,
        clone.id,
      ]);
      expect((await s.listEndpoints({ state: "active" })).map((e) => e.id)).toEqual([e2.id]);
      await s.touchEndpoint(e1.id, later(9));
      expect((await s.getEndpoint(e1.id))?.lastSeenAt).toEqual(later(9));
      expect(await s.getEndpoint("ep_missing")).toBeNull();
      // Facts reported again: hostname and facts replaced, the enrollment's machine id kept.
      const facts = { hostname: "renamed", machineId: "c".repeat(32), dmi: { vendor: "LENOVO" } };
      expect(await s.updateEndpointFacts(e1.id, "renamed", facts)).toBe(true);
      expect(await s.getEndpoint(e1.id)).toMatchObject({
        hostname: "renamed",
        machineId: e1.machineId,
        facts,
      });
      expect(await s.updateEndpointFacts("ep_missing", "x", {})).toBe(false);
      await s.close();
    });

    it("approve: new CVD or an existing one (replacement device), never a second CVD, never one of a live endpoint; disable keeps the CVD", async () => {
      const s = await open();
      const pol = await s.ensurePolicy(policy("Default"));
      const other = await s.ensurePolicy(policy("Servers"));
      await s.createEnrollmentToken(token("00000000000000e1", { maxUses: 10, usesLeft: 10 }));
      const enroll = async (m: string) =>
        (await s.enrollEndpoint(endpoint("00000000000000e1", m.repeat(32)), {
          at: later(1),
          autoApprove: null,
        }))!;
      const old = await enroll("1");
      const fresh = await enroll("2");
      const third = await enroll("3");
      await rejectsWith(s.approveEndpoint("ep_missing", { create: cvd("cvd_x", pol.id) }), "NOT_FOUND");
      await rejectsWith(s.approveEndpoint(old.id, { create: cvd("cvd_y", "pol_ghost") }), "NOT_FOUND");
      expect((await s.getEndpoint(old.id))?.state).toBe("pending"); // the failed approval changed nothing
      const a = await s.approveEndpoint(old.id, { create: cvd("cvd_old", pol.id) });
      expect(a).toMatchObject({ state: "active", cvdId: "cvd_old" });
      await rejectsWith(s.approveEndpoint(old.id, { create: cvd("cvd_z", pol.id) }), "INVALID_ARGUMENT");
      // The CVD of a live endpoint cannot be taken.
      await rejectsWith(s.approveEndpoint(fresh.id, { attach: "cvd_old" }), "INVALID_ARGUMENT");
      await rejectsWith(s.approveEndpoint(fresh.id, { attach: "cvd_nope" }), "NOT_FOUND");
      // Replacement: disable the old one, move its CVD to the new one.
      expect(await s.disableEndpoint(old.id)).toBe(true);
      expect(await s.disableEndpoint("ep_missing")).toBe(false);
      expect(await s.getEndpoint(old.id)).toMatchObject({ state: "disabled", cvdId: "cvd_old" });
      const moved = await s.approveEndpoint(fresh.id, { attach: "cvd_old" });
      expect(moved).toMatchObject({ state: "active", cvdId: "cvd_old" });
      expect((await s.getEndpoint(old.id))?.cvdId).toBeNull();
      expect((await s.getCvd("cvd_old"))?.endpointId).toBe(fresh.id);
      // Re-enabling a disabled endpoint with its own CVD; never a second one.
      await s.approveEndpoint(third.id, { create: cvd("cvd_third", pol.id) });
      await s.disableEndpoint(third.id);
      await rejectsWith(s.approveEndpoint(third.id, { create: cvd("cvd_4", pol.id) }), "INVALID_ARGUMENT");
      await rejectsWith(s.approveEndpoint(third.id, { attach: "cvd_old" }), "INVALID_ARGUMENT");
      expect(await s.approveEndpoint(third.id, { attach: "cvd_third" })).toMatchObject({
        state: "active",
        cvdId: "cvd_third",
      });
      // CVDs: list with names in one query, set policy.
      expect(await s.setCvdPolicy("cvd_third", other.id)).toBe(true);
      expect(await s.setCvdPolicy("cvd_missing", other.id)).toBe(false);
      await rejectsWith(s.setCvdPolicy("cvd_third", "pol_ghost"), "NOT_FOUND");
      const list = await s.listCvds();
      expect(
        list.map((c) => [c.id, c.endpointId, c.endpointHostname, c.policyName, c.policyVersion]),
      ).toEqual([
        ["cvd_old", fresh.id, fresh.hostname, "Default", 1],
        ["cvd_third", third.id, third.hostname, "Servers", 1],
      ]);
      expect(await s.getCvd("cvd_missing")).toBeNull();
      await rejectsWith(s.deletePolicy(other.id), "INVALID_ARGUMENT");
      await s.close();
    });
  });
}
