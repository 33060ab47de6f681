/**
 * The AutoassignStore contract (autoassign.ts) and the fleet's parts that
 * serve auto-assignment and remote control (tokens' autoAssign, a new
 * CVD's tags, requestCvdSync, setCvdSnooze), run against every
 * ServerStore by server-store.test.ts (SQLite and PostgreSQL).
 */
import { isStrataError } from "@strata/core";
import { describe, expect, it } from "vitest";
import type { NewAutoassignRule, ServerStore } from "../src/index.js";

const t0 = new Date("2026-06-01T00:00:00.000Z");
const at = (s: number) => new Date(t0.getTime() + s * 1000);

async function code(p: Promise<unknown>): Promise<string | null> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  return isStrataError(e) ? e.code : e === null ? null : String(e);
}

async function withPolicies(s: ServerStore): Promise<void> {
  for (const [id, name] of [
    ["pol_lab", "Lab"],
    ["pol_kiosk", "Kiosk"],
  ] as const)
    await s.createPolicy({ id, name, version: 1, body: {}, createdAt: t0, updatedAt: t0 });
}

const rule = (name: string, over: Partial<NewAutoassignRule> = {}): NewAutoassignRule => ({
  id: `aar_${name}`,
  name,
  rule: { hostname: `${name}-*` },
  policyId: "pol_lab",
  tags: [],
  createdAt: t0,
  createdBy: "user:admin",
  ...over,
});

export function runAutoassignStoreContract(name: string, open: () => Promise<ServerStore>): void {
  describe(`AutoassignStore contract (${name})`, () => {
    it("rules keep their order: last by default, before another on demand; names unique; policy kept while named", async () => {
      const s = await open();
      await withPolicies(s);
      const a = await s.autoassign.createRule(rule("a", { tags: ["lab", "floor:3"] }), null);
      await s.autoassign.createRule(rule("b", { rule: { os: "debian 12" }, policyId: "pol_kiosk" }), null);
      await s.autoassign.createRule(rule("c"), "aar_a");
      await s.autoassign.createRule(rule("d"), "aar_b");
      expect((await s.autoassign.listRules()).map((r) => r.name)).toEqual(["c", "a", "d", "b"]);
      expect(await s.autoassign.getRule("aar_a")).toEqual({ ...a, position: 2 });
      expect(await s.autoassign.getRuleByName("b")).toMatchObject({
        rule: { os: "debian 12" },
        policyId: "pol_kiosk",
        tags: [],
        createdAt: t0,
      });
      expect(await s.autoassign.getRule("aar_missing")).toBeNull();
      expect(await s.autoassign.getRuleByName("A")).toBeNull();
      // Taken name or id, missing anchor or policy: nothing changes.
      expect(await code(s.autoassign.createRule(rule("a", { id: "aar_other" }), null))).toBe(
        "ALREADY_EXISTS",
      );
      expect(await code(s.autoassign.createRule(rule("e"), "aar_missing"))).toBe("NOT_FOUND");
      expect(await code(s.autoassign.createRule(rule("f", { policyId: "pol_missing" }), "aar_a"))).toBe(
        "NOT_FOUND",
      );
      expect((await s.autoassign.listRules()).map((r) => r.name)).toEqual(["c", "a", "d", "b"]);
      // A policy a rule names stays.
      expect(await s.policyUsage("pol_kiosk")).toEqual({ cvds: 0, enrollmentTokens: 0, autoassignRules: 1 });
      expect(await code(s.deletePolicy("pol_kiosk"))).toBe("INVALID_ARGUMENT");
      expect(await s.autoassign.deleteRule("aar_b")).toBe(true);
      expect(await s.autoassign.deleteRule("aar_b")).toBe(false);
      expect(await s.deletePolicy("pol_kiosk")).toBe(true);
      // Concurrent inserts at the end all land, each once.
      await Promise.all(["p", "q", "r", "t"].map((n) => s.autoassign.createRule(rule(n), null)));
      const names = (await s.autoassign.listRules()).map((r) => r.name);
      expect(names.slice(0, 3)).toEqual(["c", "a", "d"]);
      expect([...names.slice(3)].sort()).toEqual(["p", "q", "r", "t"]);
      await s.close();
    });

    it("updateRule changes what the patch gives and moves the rule in one transaction; positions stay dense and unique", async () => {
      const s = await open();
      await withPolicies(s);
      for (const n of ["a", "b", "c", "d"]) await s.autoassign.createRule(rule(n), null);
      await s.autoassign.deleteRule("aar_b"); // a gap: positions 1, 3, 4
      const order = async () => (await s.autoassign.listRules()).map((r) => `${r.position}:${r.name}`);
      expect(await order()).toEqual(["1:a", "3:c", "4:d"]);
      // Fields only: the rule keeps its place, id and creation.
      const u = await s.autoassign.updateRule("aar_c", {
        name: "c2",
        rule: { os: "debian 12" },
        policyId: "pol_kiosk",
        tags: ["kiosk"],
      });
      expect(u.before).toMatchObject({
        id: "aar_c",
        name: "c",
        rule: { hostname: "c-*" },
        policyId: "pol_lab",
      });
      expect(u.after).toEqual({
        ...u.before,
        name: "c2",
        rule: { os: "debian 12" },
        policyId: "pol_kiosk",
        tags: ["kiosk"],
      });
      expect(await s.autoassign.getRule("aar_c")).toEqual(u.after);
      expect(await s.autoassign.getRuleByName("c")).toBeNull();
      expect(await order()).toEqual(["1:a", "3:c2", "4:d"]);
      expect(await s.policyUsage("pol_kiosk")).toMatchObject({ autoassignRules: 1 });
      // Moves: first, last, before itself; each renumbers 1..n.
      const m = await s.autoassign.updateRule("aar_d", {}, { before: "aar_a" });
      expect(m.after).toEqual({ ...m.before, position: 1 });
      expect(await order()).toEqual(["1:d", "2:a", "3:c2"]);
      expect((await s.autoassign.updateRule("aar_d", { tags: ["x"] }, { before: null })).after).toMatchObject(
        {
          position: 3,
          tags: ["x"],
        },
      );
      expect(await order()).toEqual(["1:a", "2:c2", "3:d"]);
      await s.autoassign.updateRule("aar_c", {}, { before: "aar_c" });
      expect(await order()).toEqual(["1:a", "2:c2", "3:d"]);
      await s.autoassign.updateRule("aar_a", {}, { before: "aar_d" });
      expect(await order()).toEqual(["1:c2", "2:a", "3:d"]);
      // Refused, nothing changes: taken name, missing rule, anchor or policy.
      const all = await s.autoassign.listRules();
      expect(await code(s.autoassign.updateRule("aar_a", { name: "d", tags: ["y"] }))).toBe("ALREADY_EXISTS");
      expect(await code(s.autoassign.updateRule("aar_missing", { name: "z" }))).toBe("NOT_FOUND");
      expect(await code(s.autoassign.updateRule("aar_a", { tags: ["y"] }, { before: "aar_missing" }))).toBe(
        "NOT_FOUND",
      );
      expect(
        await code(s.autoassign.updateRule("aar_a", { policyId: "pol_missing" }, { before: null })),
      ).toBe("NOT_FOUND");
      expect(await s.autoassign.listRules()).toEqual(all);
      // A new rule after moves still goes last; concurrent moves all land, positions unique.
      await s.autoassign.createRule(rule("e"), null);
      await Promise.all([
        s.autoassign.updateRule("aar_e", {}, { before: "aar_c" }),
        s.autoassign.updateRule("aar_d", {}, { before: "aar_c" }),
        s.autoassign.updateRule("aar_a", {}, { before: null }),
      ]);
      const after = await s.autoassign.listRules();
      expect(after.map((r) => r.position)).toEqual([1, 2, 3, 4]);
      expect(after.at(-1)?.name).toBe("a");
      expect(after[2]?.name).toBe("c2");
      await s.close();
    });

    it("tokens keep autoAssign; a new CVD gets its tags with it; sync requests and snoozes are recorded", async () => {
      const s = await open();
      await withPolicies(s);
      const tok = (id: string, autoAssign?: boolean) => ({
        id,
        tokenHash: `h-${id}`,
        createdBy: "admin",
        createdAt: t0,
        expiresAt: at(3600),
        maxUses: 5,
        usesLeft: 5,
        policyId: null,
        autoApprove: false,
        revokedAt: null,
        ...(autoAssign === undefined ? {} : { autoAssign }),
      });
      await s.createEnrollmentToken(tok("00000000000000c1"));
      await s.createEnrollmentToken(tok("00000000000000c2", false));
      expect((await s.getEnrollmentToken("00000000000000c1"))?.autoAssign).toBe(true);
      expect((await s.getEnrollmentToken("00000000000000c2"))?.autoAssign).toBe(false);
      const ep = await s.enrollEndpoint(
        {
          id: "ep_aa1",
          hostname: "lab-1",
          machineId: "a".repeat(32),
          facts: { hostname: "lab-1" },
          credentialHash: "cred-aa1",
          enrollmentTokenId: "00000000000000c1",
          enrollKeyHash: "k-aa1",
          createdAt: at(1),
        },
        {
          at: at(1),
          autoApprove: {
            id: "cvd_aa1",
            endpointId: "ep_aa1",
            policyId: "pol_lab",
            createdAt: at(1),
            snoozedUntil: null,
            tags: ["lab", "floor:3"],
          },
        },
      );
      expect(ep).toMatchObject({ state: "active", cvdId: "cvd_aa1" });
      const cvd = await s.getCvd("cvd_aa1");
      expect(cvd).toMatchObject({
        tags: ["floor:3", "lab"],
        syncRequestedAt: null,
        syncRequestedBy: null,
        snoozedUntil: null,
        snoozedBy: null,
      });
      // Approve with a new CVD and tags.
      await s.enrollEndpoint(
        {
          id: "ep_aa2",
          hostname: "kiosk-1",
          machineId: "b".repeat(32),
          facts: { hostname: "kiosk-1" },
          credentialHash: "cred-aa2",
          enrollmentTokenId: "00000000000000c2",
          enrollKeyHash: "k-aa2",
          createdAt: at(2),
        },
        { at: at(2), autoApprove: null },
      );
      await s.approveEndpoint("ep_aa2", {
        create: {
          id: "cvd_aa2",
          endpointId: "ep_aa2",
          policyId: "pol_kiosk",
          createdAt: at(3),
          snoozedUntil: null,
          tags: ["kiosk"],
        },
      });
      expect((await s.getCvd("cvd_aa2"))?.tags).toEqual(["kiosk"]);

      expect(await s.requestCvdSync("cvd_aa1", at(10), "user:alice")).toBe(true);
      expect(await s.requestCvdSync("cvd_aa1", at(20), "user:bob")).toBe(true);
      expect(await s.requestCvdSync("cvd_missing", at(20), "user:bob")).toBe(false);
      expect(await s.setCvdSnooze("cvd_aa1", at(3600), "user:carol")).toBe(true);
      expect(await s.getCvd("cvd_aa1")).toMatchObject({
        syncRequestedAt: at(20),
        syncRequestedBy: "user:bob",
        snoozedUntil: at(3600),
        snoozedBy: "user:carol",
      });
      expect((await s.listCvds()).find((c) => c.id === "cvd_aa1")).toMatchObject({ snoozedBy: "user:carol" });
      expect(await s.setCvdSnooze("cvd_aa1", null, "user:carol")).toBe(true);
      expect(await s.getCvd("cvd_aa1")).toMatchObject({ snoozedUntil: null, snoozedBy: null });
      expect(await s.setCvdSnooze("cvd_missing", null, null)).toBe(false);
      await s.close();
    });
  });
}
