/**
 * The TargetingStore contract (targeting.ts), run against SQLite and
 * PostgreSQL by targeting.test.ts, on a whole ServerStore (it needs CVDs,
 * endpoints and assignments).
 */
import { isStrataError } from "@strata/core";
import { describe, expect, it } from "vitest";
import type { CollectionRecord, DriverProfileRecord, ServerStore } from "../src/index.js";

const t0 = new Date("2026-05-01T08:00:00.000Z");
const at = (s: number) => new Date(t0.getTime() + s * 1000);
let seq = 0;

async function code(p: Promise<unknown>): Promise<string | null> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  return isStrataError(e) ? e.code : e === null ? null : String(e);
}

/** An enrolled, approved endpoint with `facts`, and its CVD. */
async function machine(s: ServerStore, facts: Record<string, unknown>): Promise<{ ep: string; cvd: string }> {
  const n = seq++;
  await s.ensurePolicy({
    id: "pol_t",
    name: "T",
    version: 1,
    body: {},
    createdAt: t0,
    updatedAt: t0,
  });
  const tok = n.toString(16).padStart(16, "0");
  await s.createEnrollmentToken({
    id: tok,
    tokenHash: `h-${tok}`,
    createdBy: "admin",
    createdAt: t0,
    expiresAt: at(3600),
    maxUses: 1,
    usesLeft: 1,
    policyId: null,
    autoApprove: false,
    revokedAt: null,
  });
  const ep = `ep_${n}`;
  const cvd = `cvd_${n}`;
  await s.enrollEndpoint(
    {
      id: ep,
      hostname: String(facts.hostname ?? `h${n}`),
      machineId: n.toString(16).padStart(32, "0"),
      facts,
      credentialHash: `c-${n}`,
      enrollmentTokenId: tok,
      enrollKeyHash: `k-${n}`,
      createdAt: at(n),
    },
    {
      at: at(n),
      autoApprove: { id: cvd, endpointId: ep, policyId: "pol_t", createdAt: at(n), snoozedUntil: null },
    },
  );
  return { ep, cvd };
}

function collection(name: string, rule: Record<string, unknown> | null = null): CollectionRecord {
  return { id: `col_${seq++}`, name, rule, createdAt: at(seq), createdBy: "user:admin" };
}

function profile(name: string, over: Partial<DriverProfileRecord> = {}): DriverProfileRecord {
  return {
    id: `drv_${seq++}`,
    name,
    folders: ["lay_nvidia"],
    rules: [{ vendor: "LENOVO*" }],
    createdAt: at(seq),
    updatedAt: at(seq),
    ...over,
  };
}

export function runTargetingStoreContract(name: string, open: () => Promise<ServerStore>): void {
  describe(`TargetingStore on ${name}`, () => {
    it("collections: static with members, dynamic with a rule; names unique; members checked; delete takes members and assignments", async () => {
      const s = await open();
      try {
        const t = s.targeting;
        const a = await machine(s, { hostname: "a" });
        const b = await machine(s, { hostname: "b" });
        const stat = collection("Finance");
        await t.createCollection(stat, [b.cvd, a.cvd, a.cvd]);
        expect(await t.getCollection(stat.id)).toEqual(stat);
        expect(await t.getCollectionByName("Finance")).toEqual(stat);
        expect(await t.collectionMembers(stat.id)).toEqual([a.cvd, b.cvd].sort());
        const dyn = collection("Lenovos", { vendor: "LENOVO*", tags: ["lab"] });
        await t.createCollection(dyn);
        expect(await t.getCollection(dyn.id)).toEqual(dyn);
        expect(await t.collectionMembers(dyn.id)).toEqual([]);
        // Taken name or id: refused, nothing changed.
        expect(await code(t.createCollection({ ...collection("Finance") }))).toBe("ALREADY_EXISTS");
        expect(await code(t.createCollection({ ...stat, name: "Other" }))).toBe("ALREADY_EXISTS");
        // A missing CVD among the members: NOT_FOUND naming it, and no collection.
        const bad = collection("Bad");
        const e = await t.createCollection(bad, [a.cvd, "cvd_gone"]).catch((x: unknown) => x);
        expect(isStrataError(e, "NOT_FOUND") && e.message).toContain("cvd_gone");
        expect(await t.getCollectionByName("Bad")).toBeNull();
        expect((await t.listCollections()).map((c) => c.name)).toEqual(["Finance", "Lenovos"]);
        expect(await t.getCollection("col_none")).toBeNull();
        expect(await t.getCollectionByName("none")).toBeNull();

        // Members: added once, missing CVD or collection refused with nothing added.
        const c = await machine(s, { hostname: "c" });
        expect(await t.addCollectionMembers(stat.id, [a.cvd, c.cvd], at(50))).toBe(1);
        expect(await code(t.addCollectionMembers(stat.id, ["cvd_gone"], at(51)))).toBe("NOT_FOUND");
        expect(await code(t.addCollectionMembers("col_none", [a.cvd], at(51)))).toBe("NOT_FOUND");
        const d = await machine(s, { hostname: "d" });
        expect(await code(t.addCollectionMembers(stat.id, [d.cvd, "cvd_gone"], at(52)))).toBe("NOT_FOUND");
        expect(await t.collectionMembers(stat.id)).toEqual([a.cvd, b.cvd, c.cvd].sort());
        expect(await t.staticCollectionsOf(c.cvd)).toEqual([stat.id]);
        expect(await t.staticCollectionsOf(d.cvd)).toEqual([]);
        expect(await t.removeCollectionMember(stat.id, b.cvd)).toBe(true);
        expect(await t.removeCollectionMember(stat.id, b.cvd)).toBe(false);
        expect(await t.collectionMembers(stat.id)).toEqual([a.cvd, c.cvd].sort());

        // Delete: members and the collection's assignments go; others stay.
        const asg = (id: string, kind: "cvd" | "collection", target: string, s2: number) => ({
          id,
          targetKind: kind,
          targetId: target,
          base: { layer: "lay_base", version: null },
          apps: [],
          assignedAt: at(s2),
          assignedBy: "user:admin",
        });
        await s.layers.addAssignment(asg(`asg_${seq++}`, "collection", stat.id, 60));
        await s.layers.addAssignment(asg(`asg_${seq++}`, "collection", stat.id, 61));
        await s.layers.addAssignment(asg(`asg_${seq++}`, "collection", dyn.id, 62));
        const own = asg(`asg_${seq++}`, "cvd", a.cvd, 63);
        await s.layers.addAssignment(own);
        expect(await t.deleteCollection(stat.id)).toEqual({ assignments: 2 });
        expect(await t.deleteCollection(stat.id)).toBeNull();
        expect(await t.getCollection(stat.id)).toBeNull();
        expect(await t.collectionMembers(stat.id)).toEqual([]);
        expect(await t.staticCollectionsOf(a.cvd)).toEqual([]);
        expect(await s.layers.assignmentsFor([{ kind: "collection", id: stat.id }], 10)).toEqual([]);
        expect(await s.layers.assignmentsFor([{ kind: "collection", id: dyn.id }], 10)).toHaveLength(1);
        expect(await s.layers.assignmentsFor([{ kind: "cvd", id: a.cvd }], 10)).toEqual([own]);
      } finally {
        await s.close();
      }
    });

    it("driver profiles: create, get by id and name, list by name, update (name taken refused), delete", async () => {
      const s = await open();
      try {
        const t = s.targeting;
        const p = profile("nvidia-lenovo");
        await t.createDriverProfile(p);
        const q = profile("Intel wifi", {
          folders: [],
          rules: [{ modalias: "pci:v00008086d*" }, { model: "X1*" }],
        });
        await t.createDriverProfile(q);
        expect(await t.getDriverProfile(p.id)).toEqual(p);
        expect(await t.getDriverProfileByName("Intel wifi")).toEqual(q);
        expect(await t.getDriverProfile("drv_none")).toBeNull();
        expect(await t.getDriverProfileByName("none")).toBeNull();
        expect((await t.listDriverProfiles()).map((x) => x.name)).toEqual(["Intel wifi", "nvidia-lenovo"]);
        expect(await code(t.createDriverProfile(profile("Intel wifi")))).toBe("ALREADY_EXISTS");
        expect(await code(t.createDriverProfile({ ...p, name: "new" }))).toBe("ALREADY_EXISTS");

        const edited = await t.updateDriverProfile(
          p.id,
          { rules: [{ vendor: "Dell*", model: "XPS*" }] },
          at(90),
        );
        expect(edited).toEqual({ ...p, rules: [{ vendor: "Dell*", model: "XPS*" }], updatedAt: at(90) });
        const renamed = await t.updateDriverProfile(
          p.id,
          { name: "nvidia", folders: ["lay_a", "lay_b"] },
          at(91),
        );
        expect(renamed).toMatchObject({ name: "nvidia", folders: ["lay_a", "lay_b"], rules: edited!.rules });
        expect(await code(t.updateDriverProfile(p.id, { name: "Intel wifi" }, at(92)))).toBe(
          "ALREADY_EXISTS",
        );
        expect((await t.getDriverProfile(p.id))?.name).toBe("nvidia");
        expect(await t.updateDriverProfile("drv_none", { name: "x" }, at(93))).toBeNull();
        expect(await t.deleteDriverProfile(p.id)).toBe(true);
        expect(await t.deleteDriverProfile(p.id)).toBe(false);
        expect((await t.listDriverProfiles()).map((x) => x.id)).toEqual([q.id]);
      } finally {
        await s.close();
      }
    });

    it("layer rules: absent until set, then replaced as a whole", async () => {
      const s = await open();
      try {
        const t = s.targeting;
        expect(await t.getLayerRules()).toBeNull();
        const r1 = {
          doNotOverride: [{ dir: "/etc/NetworkManager/system-connections" }],
          baseCapture: [{ dir: "/var/log" }, { dir: "/etc", pattern: "machine-id" }],
          updatedAt: at(1),
          updatedBy: "user:admin",
        };
        await t.setLayerRules(r1);
        expect(await t.getLayerRules()).toEqual(r1);
        const r2 = {
          doNotOverride: [],
          baseCapture: [{ dir: "/srv" }],
          updatedAt: at(2),
          updatedBy: "user:bob",
        };
        await t.setLayerRules(r2);
        expect(await t.getLayerRules()).toEqual(r2);
      } finally {
        await s.close();
      }
    });

    it("CVD tags and targets: tags added and removed atomically and bounded; targets carry facts and tags, paged by id", async () => {
      const s = await open();
      try {
        const t = s.targeting;
        const facts = { hostname: "lab-1", dmi: { vendor: "LENOVO", model: "20XW" }, modaliases: ["pci:v1"] };
        const a = await machine(s, facts);
        const b = await machine(s, { hostname: "lab-2" });
        expect(await t.cvdTags(a.cvd)).toEqual([]);
        expect(await t.changeCvdTags(a.cvd, { add: ["lab", "kiosk", "lab"] }, 4)).toEqual(["kiosk", "lab"]);
        expect(await t.changeCvdTags(a.cvd, { add: ["x"], remove: ["kiosk", "absent"] }, 4)).toEqual([
          "lab",
          "x",
        ]);
        expect(await code(t.changeCvdTags(a.cvd, { add: ["p", "q", "r"] }, 4))).toBe("INVALID_ARGUMENT");
        expect(await t.cvdTags(a.cvd)).toEqual(["lab", "x"]); // nothing of the refused change
        // Adding and removing in one change counts the end state.
        expect(await t.changeCvdTags(a.cvd, { add: ["p", "q"], remove: ["x"] }, 3)).toEqual([
          "lab",
          "p",
          "q",
        ]);
        expect(await code(t.changeCvdTags("cvd_gone", { add: ["a"] }, 4))).toBe("NOT_FOUND");
        // CVD listings carry the tags.
        expect((await s.getCvd(a.cvd))?.tags).toEqual(["lab", "p", "q"]);
        expect((await s.listCvds()).find((c) => c.id === b.cvd)?.tags).toEqual([]);

        expect(await t.getTarget(a.cvd)).toEqual({
          cvdId: a.cvd,
          endpointId: a.ep,
          hostname: "lab-1",
          facts,
          tags: ["lab", "p", "q"],
        });
        expect(await t.getTarget("cvd_gone")).toBeNull();
        // Paging: every CVD once, by id.
        const c = await machine(s, { hostname: "lab-3" });
        const all = [a.cvd, b.cvd, c.cvd].sort();
        const seen: string[] = [];
        let after: string | null = null;
        for (;;) {
          const page = await t.listTargets(after, 2);
          if (!page.length) break;
          seen.push(...page.map((x) => x.cvdId));
          after = page[page.length - 1]!.cvdId;
        }
        expect(seen.filter((id) => all.includes(id))).toEqual(all);
        expect(seen).toEqual([...seen].sort());
        // The CVD moves to a replacement machine: the new machine's facts, the CVD's tags.
        await s.disableEndpoint(a.ep);
        const fresh = seq++;
        const tok = `f${fresh.toString(16).padStart(15, "0")}`;
        await s.createEnrollmentToken({
          id: tok,
          tokenHash: `h-${tok}`,
          createdBy: "admin",
          createdAt: t0,
          expiresAt: at(3600),
          maxUses: 1,
          usesLeft: 1,
          policyId: null,
          autoApprove: false,
          revokedAt: null,
        });
        const neu = await s.enrollEndpoint(
          {
            id: `ep_new${fresh}`,
            hostname: "new-hw",
            machineId: "f".repeat(32),
            facts: { hostname: "new-hw", dmi: { vendor: "Dell Inc." } },
            credentialHash: `c-new${fresh}`,
            enrollmentTokenId: tok,
            enrollKeyHash: "k",
            createdAt: at(500),
          },
          { at: at(500), autoApprove: null },
        );
        await s.approveEndpoint(neu!.id, { attach: a.cvd });
        expect(await t.getTarget(a.cvd)).toMatchObject({
          endpointId: neu!.id,
          hostname: "new-hw",
          facts: { dmi: { vendor: "Dell Inc." } },
          tags: ["lab", "p", "q"],
        });
      } finally {
        await s.close();
      }
    });
  });
}
