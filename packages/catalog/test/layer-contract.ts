/**
 * The LayerStore contract (layers.ts), run against SQLite and PostgreSQL by
 * layers.test.ts.
 */
import { isStrataError, type SnapshotId, type TreeId } from "@strata/core";
import { describe, expect, it } from "vitest";
import type { LayerStore, LayerVersionRecord, TaskStore } from "../src/index.js";
import { hid } from "./contract.js";

const t0 = new Date("2026-04-01T08:00:00.000Z");
const at = (s: number) => new Date(t0.getTime() + s * 1000);
let seq = 0;

async function code(p: Promise<unknown>): Promise<string | null> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  return isStrataError(e) ? e.code : e === null ? null : String(e);
}

function version(layerId: string, v: number, over: Partial<LayerVersionRecord> = {}): LayerVersionRecord {
  return {
    layerId,
    version: v,
    label: String(v),
    snapshot: hid(`snap-${layerId}-${v}`) as SnapshotId,
    tree: hid(`tree-${layerId}-${v}`) as TreeId,
    osId: "debian",
    osVersion: "12",
    files: 10 * v,
    bytes: 1000 * v,
    packages: v,
    sourceCvd: "cvd_ref",
    sourceSnapshots: [hid(`src-${v}`)],
    createdAt: at(v),
    createdBy: "user:admin",
    ...over,
  };
}

export function runLayerStoreContract(
  name: string,
  open: () => Promise<{ layers: LayerStore; tasks: TaskStore; close(): Promise<void> }>,
): void {
  describe(`LayerStore contract (${name})`, () => {
    it("layers: unique names, lookups by id and name, listed by name", async () => {
      const s = await open();
      try {
        const n = seq++;
        expect(await s.layers.getLayer("lay_missing")).toBeNull();
        expect(await s.layers.getLayerByName("missing")).toBeNull();
        const base = {
          id: `lay_b${n}`,
          name: `debian-${n}`,
          kind: "base" as const,
          description: "",
          createdAt: at(1),
        };
        const app = {
          id: `lay_a${n}`,
          name: `Jq-${n}`,
          kind: "app" as const,
          description: "jq",
          createdAt: at(2),
        };
        await s.layers.createLayer(base);
        await s.layers.createLayer(app);
        expect(await code(s.layers.createLayer({ ...app, id: `lay_c${n}` }))).toBe("ALREADY_EXISTS");
        expect(await code(s.layers.createLayer({ ...app, name: `other-${n}` }))).toBe("ALREADY_EXISTS");
        expect(await s.layers.getLayer(base.id)).toEqual(base);
        expect(await s.layers.getLayerByName(app.name)).toEqual(app);
        // Byte order: upper case before lower case on both catalogs.
        const names = (await s.layers.listLayers()).map((l) => l.name);
        expect(names.indexOf(app.name)).toBeLessThan(names.indexOf(base.name));
        expect(names).toHaveLength(2);
      } finally {
        await s.close();
      }
    });

    it("versions: next number only, labels unique per layer, manifests apart from listings", async () => {
      const s = await open();
      try {
        const id = `lay_v${seq++}`;
        expect(await code(s.layers.addLayerVersion(version(id, 1), {}))).toBe("NOT_FOUND");
        await s.layers.createLayer({ id, name: id, kind: "app", description: "", createdAt: at(0) });
        expect(await s.layers.newestLayerVersion(id)).toBeNull();
        const manifest = {
          os: { id: "debian", versionId: "12" },
          packages: [{ name: "jq", stanza: "Package: jq\n" }],
        };
        await s.layers.addLayerVersion(version(id, 1, { label: "1.6" }), manifest);
        expect(await code(s.layers.addLayerVersion(version(id, 1, { label: "1.7" }), {}))).toBe(
          "ALREADY_EXISTS",
        );
        expect(await code(s.layers.addLayerVersion(version(id, 2, { label: "1.6" }), {}))).toBe(
          "ALREADY_EXISTS",
        );
        expect(await code(s.layers.addLayerVersion(version(id, 3), {}))).toBe("INVALID_ARGUMENT");
        await s.layers.addLayerVersion(version(id, 2, { osId: null, osVersion: null, sourceCvd: null }), {
          removed: ["/x"],
        });
        expect(await s.layers.getLayerVersion(id, 1)).toEqual(version(id, 1, { label: "1.6" }));
        expect(await s.layers.getLayerVersion(id, 9)).toBeNull();
        expect((await s.layers.newestLayerVersion(id))?.version).toBe(2);
        expect((await s.layers.listLayerVersions(id)).map((v) => [v.version, v.label, v.osId])).toEqual([
          [1, "1.6", "debian"],
          [2, "2", null],
        ]);
        const all = await s.layers.listLayerVersions();
        expect(all.filter((v) => v.layerId === id).map((v) => v.version)).toEqual([1, 2]);
        expect(await s.layers.getLayerManifest(id, 1)).toEqual(manifest);
        expect(await s.layers.getLayerManifest(id, 2)).toEqual({ removed: ["/x"] });
        expect(await s.layers.getLayerManifest(id, 3)).toBeNull();
      } finally {
        await s.close();
      }
    });

    it("reference CVDs: set, unset, idempotent", async () => {
      const s = await open();
      try {
        const cvd = `cvd_r${seq++}`;
        expect(await s.layers.isReference(cvd)).toBe(false);
        expect(await s.layers.setReference(cvd, true, at(1), "user:admin")).toBe(true);
        expect(await s.layers.setReference(cvd, true, at(2), "user:admin")).toBe(false);
        expect(await s.layers.isReference(cvd)).toBe(true);
        expect(await s.layers.setReference(cvd, false, at(3), "user:admin")).toBe(true);
        expect(await s.layers.setReference(cvd, false, at(4), "user:admin")).toBe(false);
        expect(await s.layers.isReference(cvd)).toBe(false);
      } finally {
        await s.close();
      }
    });

    it("captures: created open, finished once (compare-and-set)", async () => {
      const s = await open();
      try {
        const c = {
          id: `cap_${seq++}`,
          cvdId: "cvd_ref",
          state: "open" as const,
          preSnapshot: hid("pre") as SnapshotId,
          postSnapshot: null,
          params: {},
          layerId: null,
          layerVersion: null,
          createdAt: at(10),
          finishedAt: null,
        };
        expect(await s.layers.getCapture(c.id)).toBeNull();
        await s.layers.createCapture(c);
        expect(await s.layers.getCapture(c.id)).toEqual(c);
        const patch = {
          state: "finished" as const,
          postSnapshot: hid("post") as SnapshotId,
          params: { name: "jq" },
          layerId: "lay_x",
          layerVersion: 3,
          finishedAt: at(20),
        };
        expect(await s.layers.updateCapture(c.id, ["open"], patch)).toBe(true);
        expect(await s.layers.updateCapture(c.id, ["open"], { state: "cancelled" })).toBe(false);
        expect(await s.layers.updateCapture(c.id, [], { state: "cancelled" })).toBe(false);
        expect(await s.layers.getCapture(c.id)).toEqual({ ...c, ...patch });
      } finally {
        await s.close();
      }
    });

    it("assignments: newest first over several targets, versions kept or null", async () => {
      const s = await open();
      try {
        const cvd = `cvd_as${seq++}`;
        const a = (id: string, t: number, kind: "cvd" | "collection", target: string) => ({
          id,
          targetKind: kind,
          targetId: target,
          base: { layer: "lay_base", version: t === 1 ? 2 : null },
          apps: [
            { layer: "lay_jq", version: null },
            { layer: "lay_vim", version: 4 },
          ],
          assignedAt: at(t),
          assignedBy: "user:admin",
        });
        const first = a(`asg_${seq++}`, 1, "cvd", cvd);
        const second = { ...a(`asg_${seq++}`, 2, "collection", `col_${cvd}`), base: null, apps: [] };
        const other = a(`asg_${seq++}`, 3, "cvd", `${cvd}x`);
        for (const x of [first, second, other]) await s.layers.addAssignment(x);
        expect(await s.layers.assignmentsFor([], 10)).toEqual([]);
        expect(await s.layers.assignmentsFor([{ kind: "cvd", id: cvd }], 10)).toEqual([first]);
        expect(
          await s.layers.assignmentsFor(
            [
              { kind: "cvd", id: cvd },
              { kind: "collection", id: `col_${cvd}` },
            ],
            10,
          ),
        ).toEqual([second, first]);
        expect(
          (
            await s.layers.assignmentsFor(
              [
                { kind: "cvd", id: cvd },
                { kind: "collection", id: `col_${cvd}` },
              ],
              1,
            )
          ).map((x) => x.id),
        ).toEqual([second.id]);
        // A collection id that happens to equal the CVD id is another target.
        expect(await s.layers.assignmentsFor([{ kind: "collection", id: cvd }], 10)).toEqual([]);
      } finally {
        await s.close();
      }
    });

    it("images: first row of a key wins; found by snapshot; CVD target and applied image", async () => {
      const s = await open();
      try {
        const key = hid(`image-${seq++}`);
        const img = {
          key,
          snapshot: hid(`imgsnap-${key}`) as SnapshotId,
          layers: [
            ["base", "lay_b", 1],
            ["app", "lay_a", 2],
          ] as ["base" | "app", string, number][],
          manifest: { packages: [], removed: ["/a"] },
          createdAt: at(5),
        };
        expect(await s.layers.getImage(key)).toBeNull();
        expect(await s.layers.putImage(img)).toEqual(img);
        const again = { ...img, snapshot: hid("another") as SnapshotId, createdAt: at(6) };
        expect(await s.layers.putImage(again)).toEqual(img);
        expect(await s.layers.getImageBySnapshot(img.snapshot)).toEqual(img);
        expect(await s.layers.getImageBySnapshot(hid("nothing") as SnapshotId)).toBeNull();

        const cvd = `cvd_i${seq++}`;
        expect(await s.layers.getCvdImage(cvd)).toBeNull();
        await s.layers.setTargetImage(cvd, img.snapshot, at(7));
        expect(await s.layers.getCvdImage(cvd)).toEqual({
          cvdId: cvd,
          targetImage: img.snapshot,
          targetAt: at(7),
          appliedImage: null,
          appliedAt: null,
        });
        await s.layers.setAppliedImage(cvd, img.snapshot, at(8));
        const next = hid("next") as SnapshotId;
        await s.layers.setTargetImage(cvd, next, at(9));
        expect(await s.layers.getCvdImage(cvd)).toEqual({
          cvdId: cvd,
          targetImage: next,
          targetAt: at(9),
          appliedImage: img.snapshot,
          appliedAt: at(8),
        });
      } finally {
        await s.close();
      }
    });

    it("tasks take the kind apply (migration 0007)", async () => {
      const s = await open();
      try {
        const t = {
          id: `task_apply${seq++}`,
          cvdId: `cvd_ap${seq++}`,
          endpointId: "ep_a",
          kind: "apply" as const,
          params: { image: hid("img"), enforce: "none", atRestart: false },
          state: "queued" as const,
          progress: null,
          result: null,
          error: null,
          createdBy: "user:admin",
          createdAt: at(1),
          updatedAt: at(1),
          startedAt: null,
          finishedAt: null,
        };
        await s.tasks.createTask(t);
        expect(await s.tasks.getTask(t.id)).toEqual(t);
        // The rebuilt table keeps its one-active-task-per-CVD index.
        expect(await code(s.tasks.createTask({ ...t, id: `${t.id}b` }))).toBe("ALREADY_EXISTS");
      } finally {
        await s.close();
      }
    });
  });
}
