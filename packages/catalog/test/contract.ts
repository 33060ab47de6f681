import { createHash } from "node:crypto";
import {
  asChunkId,
  asPackId,
  asSnapshotId,
  asTreeId,
  type BlobId,
  type PackId,
  type SnapshotId,
  type TreeId,
} from "@strata/core";
import {
  type BlobType,
  type IndexEntry,
  type LeaseRecord,
  PACK_LAYOUT_ENTRY,
  type PackRecord,
  type PackUsage,
  type RepoCatalog,
  type SnapshotRecord,
} from "@strata/repo";
import { afterEach, describe, expect, it } from "vitest";

/** A deterministic 64-hex id from any label. */
export function hid(label: string): string {
  return createHash("sha256").update(label).digest("hex");
}
const blob = (label: string | number): BlobId => asChunkId(hid(`blob:${label}`));
const packId = (label: string | number): PackId => asPackId(hid(`pack:${label}`));

const T0 = new Date("2024-05-01T10:00:00.000Z");
const at = (ms: number) => new Date(T0.getTime() + ms);

function pack(label: string | number, blobCount = 0, over: Partial<PackRecord> = {}): PackRecord {
  return {
    id: packId(label),
    size: 1000 + blobCount * 100,
    blobCount,
    createdAt: T0,
    state: "active",
    doomedAt: null,
    ...over,
  };
}
function entries(p: PackRecord, blobs: readonly BlobId[], type: BlobType = "chunk"): IndexEntry[] {
  return blobs.map((id, i) => ({
    id,
    type,
    packId: p.id,
    offset: 16 + i * 100,
    length: 100,
    rawLength: 150 + i,
    compressed: i % 2 === 0,
  }));
}
/** A pack with `n` fresh blobs `${label}/0..n-1`, recorded. */
async function addFresh(c: RepoCatalog, label: string, n: number): Promise<{ p: PackRecord; ids: BlobId[] }> {
  const ids = Array.from({ length: n }, (_, i) => blob(`${label}/${i}`));
  const p = pack(label, n);
  await c.addPack(p, entries(p, ids));
  return { p, ids };
}
function snapshot(label: string, time: Date, over: Partial<SnapshotRecord> = {}): SnapshotRecord {
  return {
    id: asSnapshotId(hid(`snap:${label}`)),
    time,
    hostname: "host-1",
    paths: ["/etc", "/home/ü"],
    tags: ["daily"],
    tree: asTreeId(hid(`tree:${label}`)),
    parent: null,
    kind: "full",
    stats: {
      filesNew: 1,
      filesChanged: 2,
      filesUnchanged: 3,
      dirs: 4,
      bytesRead: 5,
      bytesAdded: 6,
      totalBytes: 7,
      totalFiles: 8,
      errors: 0,
      durationMs: 1234,
    },
    ...over,
  };
}
function lease(
  name: string,
  holder: string,
  mode: LeaseRecord["mode"],
  from: number,
  ttl: number,
): LeaseRecord {
  return { name, holder, mode, acquiredAt: at(from), expiresAt: at(from + ttl) };
}
async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}
const sorted = <T extends string>(xs: Iterable<T>) => [...xs].sort();

/**
 * The behaviour every RepoCatalog must have. `open` returns a fresh, empty
 * catalog each time it is called; the suite closes what it opens.
 */
export function runCatalogContract(name: string, open: () => Promise<RepoCatalog>): void {
  describe(`RepoCatalog contract: ${name}`, () => {
    const opened: RepoCatalog[] = [];
    const fresh = async () => {
      const c = await open();
      opened.push(c);
      return c;
    };
    afterEach(async () => {
      for (const c of opened.splice(0)) await c.close();
    });

    describe("packs and the blob index", () => {
      it("records a pack and its entries, and reads them back exactly", async () => {
        const c = await fresh();
        const p = pack("a", 3, { size: 5_000_000_000 }); // > 2^32: sizes are 64-bit
        const ids = [blob(1), blob(2), asTreeId(hid("t")) as BlobId];
        const es = entries(p, ids);
        es[2]!.type = "tree";
        es[2]!.offset = 4_500_000_000;
        await c.addPack(p, [es[2]!, es[0]!, es[1]!]);

        expect(await c.getPack(p.id)).toEqual(p);
        expect(await c.getPack(packId("missing"))).toBeNull();
        expect(await c.packEntries([p.id])).toEqual(es); // ordered by offset
        expect(await c.packEntries([packId("missing")])).toEqual([]);
        expect(await c.packEntries([])).toEqual([]);
        // Where the index places a header's ids, compactly: id, offset (64-bit), length per entry, by offset.
        const layout = await c.packLayout(p.id, [ids[2]!, blob("nope"), ids[0]!, ids[1]!]);
        expect(layout.length).toBe(3 * PACK_LAYOUT_ENTRY);
        es.forEach((e, i) => {
          const at = i * PACK_LAYOUT_ENTRY;
          expect(layout.subarray(at, at + 32).toString("hex")).toBe(e.id);
          expect(layout.readUIntLE(at + 32, 6)).toBe(e.offset);
          expect(layout.readUInt32LE(at + 40)).toBe(e.length);
        });
        expect((await c.packLayout(packId("missing"), ids)).length).toBe(0);
        expect((await c.packLayout(p.id, [])).length).toBe(0);
        expect(await c.missingBlobs([...ids, blob("nope")])).toEqual([blob("nope")]);
        expect(await c.missingBlobs(ids)).toEqual([]);
        expect(await c.missingBlobs([])).toEqual([]);
        const found = await c.lookupBlobs([...ids, blob("nope")]);
        expect(found.size).toBe(3);
        for (const e of es) expect(found.get(e.id)).toEqual(e);
        expect(sorted(await c.hasBlobs([...ids, blob("nope")]))).toEqual(sorted(ids));
        expect(await c.countBlobs()).toEqual({
          chunks: 2,
          trees: 1,
          rawBytes: 150 + 151 + 152,
          storedBytes: 300,
        });
      });

      it("handles empty lists without touching anything", async () => {
        const c = await fresh();
        expect((await c.hasBlobs([])).size).toBe(0);
        expect((await c.lookupBlobs([])).size).toBe(0);
        expect(await c.mark([])).toEqual([]);
        await c.markPacksDoomed([], T0);
        await c.revivePacks([]);
        await c.removePacks([]);
        await c.removeBlobs([]);
        await c.removeSnapshots([]);
        await c.addPack(pack("empty"), []);
        expect((await c.getPack(packId("empty")))?.blobCount).toBe(0);
        expect(await c.countBlobs()).toEqual({ chunks: 0, trees: 0, rawBytes: 0, storedBytes: 0 });
      });

      it("rejects malformed ids instead of truncating them", async () => {
        const c = await fresh();
        await expect(c.hasBlobs(["abc" as BlobId])).rejects.toThrow(/hex id/);
        await expect(c.getPack("Z".repeat(64) as PackId)).rejects.toThrow(/hex id/);
        await expect(c.lookupBlobs([hid("x").toUpperCase() as BlobId])).rejects.toThrow(/hex id/);
      });

      it("addPack is idempotent: re-adding a recorded pack changes nothing", async () => {
        const c = await fresh();
        const { p, ids } = await addFresh(c, "a", 3);
        const before = await c.packEntries([p.id]);
        // Same pack again, even with different entries and record: ignored.
        await c.addPack(
          { ...p, size: 1 },
          entries(p, [blob("other"), ...ids]).map((e) => ({ ...e, offset: e.offset + 1 })),
        );
        expect(await c.packEntries([p.id])).toEqual(before);
        expect(await c.getPack(p.id)).toEqual(p);
        expect((await c.hasBlobs([blob("other")])).size).toBe(0);
      });

      it("first writer wins: a blob already indexed in an active pack keeps its entry", async () => {
        const c = await fresh();
        const { p: a, ids } = await addFresh(c, "a", 2);
        const b = pack("b", 2);
        await c.addPack(b, entries(b, [ids[1]!, blob("b-own")]));
        expect((await c.lookupBlobs([ids[1]!])).get(ids[1]!)?.packId).toBe(a.id);
        expect((await c.packEntries([b.id])).map((e) => e.id)).toEqual([blob("b-own")]);
        // b's header lists ids[1] too, but the index places it in a: not b's.
        const bLayout = await c.packLayout(b.id, [ids[1]!, blob("b-own")]);
        expect(bLayout.length).toBe(PACK_LAYOUT_ENTRY);
        expect(bLayout.subarray(0, 32).toString("hex")).toBe(blob("b-own"));
        // Duplicate ids inside one pack: the first is indexed.
        const d = pack("d", 2);
        const de = entries(d, [blob("dup"), blob("dup")]);
        await c.addPack(d, de);
        expect((await c.lookupBlobs([blob("dup")])).get(blob("dup"))).toEqual(de[0]);
      });

      it("hasBlobs excludes doomed packs, lookupBlobs does not; revive undoes the doom", async () => {
        const c = await fresh();
        const { p: a, ids: aIds } = await addFresh(c, "a", 3);
        const { p: b, ids: bIds } = await addFresh(c, "b", 2);
        await c.markPacksDoomed([a.id], at(5000));
        expect(sorted(await c.hasBlobs([...aIds, ...bIds]))).toEqual(sorted(bIds));
        expect((await c.lookupBlobs(aIds)).size).toBe(3);
        expect(await c.missingBlobs(aIds)).toEqual([]); // doomed entries still exist
        expect(await c.getPack(a.id)).toEqual({ ...a, state: "doomed", doomedAt: at(5000) });
        // Dooming again does not restart the grace period.
        await c.markPacksDoomed([a.id], at(9000));
        expect((await c.getPack(a.id))?.doomedAt).toEqual(at(5000));
        const states = new Map((await collect(c.listPacks())).map((p) => [p.id, p.state]));
        expect(states).toEqual(
          new Map([
            [a.id, "doomed"],
            [b.id, "active"],
          ]),
        );

        await c.revivePacks([a.id]);
        expect(await c.getPack(a.id)).toEqual(a);
        expect((await c.hasBlobs(aIds)).size).toBe(3);
      });

      it("a blob re-stored while its old pack is doomed is re-indexed in the new pack", async () => {
        // hasBlobs said "absent" (doomed), so the uploader stored it again;
        // the new copy must win or removing the doomed pack would lose it.
        const c = await fresh();
        const { p: a, ids } = await addFresh(c, "a", 2);
        await c.markPacksDoomed([a.id], at(1));
        expect((await c.hasBlobs([ids[0]!])).size).toBe(0);
        const b = pack("b", 1);
        await c.addPack(b, entries(b, [ids[0]!]));
        expect((await c.lookupBlobs([ids[0]!])).get(ids[0]!)?.packId).toBe(b.id);
        expect((await c.hasBlobs(ids)).has(ids[0]!)).toBe(true);
        await c.removePacks([a.id]);
        expect(sorted((await c.lookupBlobs(ids)).keys())).toEqual([ids[0]!]);
      });

      it("moveBlobs records the new pack and re-points the given entries", async () => {
        const c = await fresh();
        const { p: a, ids } = await addFresh(c, "a", 4);
        const n = pack("new", 2);
        const moved = entries(n, [ids[1]!, ids[3]!]);
        await c.moveBlobs(n, moved);
        expect(await c.getPack(n.id)).toEqual(n);
        expect(await c.packEntries([n.id])).toEqual(moved);
        expect((await c.packEntries([a.id])).map((e) => e.id)).toEqual([ids[0], ids[2]]);
        const looked = await c.lookupBlobs(ids);
        expect(looked.get(ids[1]!)).toEqual(moved[0]);
        expect(looked.get(ids[0]!)?.packId).toBe(a.id);
        // Re-running the move (a retried repack) is harmless.
        await c.moveBlobs(n, moved);
        expect(await c.packEntries([n.id])).toEqual(moved);
        // A repack out of a doomed pack makes its blobs live again.
        await c.markPacksDoomed([a.id], at(1));
        const n2 = pack("new2", 1);
        await c.moveBlobs(n2, entries(n2, [ids[0]!]));
        expect(sorted(await c.hasBlobs(ids))).toEqual(sorted([ids[0]!, ids[1]!, ids[3]!]));
      });

      it("removePacks deletes pack records and every entry pointing into them; removeBlobs deletes entries", async () => {
        const c = await fresh();
        const { p: a, ids: aIds } = await addFresh(c, "a", 3);
        const { p: b, ids: bIds } = await addFresh(c, "b", 3);
        const { p: k, ids: kIds } = await addFresh(c, "keep", 3);
        await c.removePacks([a.id, b.id, packId("never-existed")]);
        expect(await c.getPack(a.id)).toBeNull();
        expect(await c.getPack(b.id)).toBeNull();
        expect((await c.lookupBlobs([...aIds, ...bIds])).size).toBe(0);
        expect(await c.packEntries([a.id])).toEqual([]);
        expect((await collect(c.listPacks())).map((p) => p.id)).toEqual([k.id]);

        await c.removeBlobs([kIds[1]!]);
        expect((await c.packEntries([k.id])).map((e) => e.id)).toEqual([kIds[0], kIds[2]]);
        expect((await c.countBlobs()).chunks).toBe(2);
        // The pack of removed blobs can be recorded again with its entries.
        await c.addPack(a, entries(a, aIds));
        expect((await c.hasBlobs(aIds)).size).toBe(3);
      });

      it("packEntries takes several packs: their entries ordered by pack id, then offset", async () => {
        const c = await fresh();
        const made = [];
        for (const label of ["x", "y", "z"]) made.push(await addFresh(c, label, 3));
        const { p: other } = await addFresh(c, "other", 2);
        const want = made
          .map(({ p, ids }) => ({ p, es: entries(p, ids) }))
          .sort((u, v) => u.p.id.localeCompare(v.p.id))
          .flatMap((x) => x.es);
        const got = await c.packEntries([made[2]!.p.id, made[0]!.p.id, made[1]!.p.id, packId("none")]);
        expect(got).toEqual(want);
        expect(got.some((e) => e.packId === other.id)).toBe(false);
        // Entries re-pointed elsewhere are the other pack's.
        const n = pack("n", 1);
        await c.moveBlobs(n, entries(n, [made[0]!.ids[1]!]));
        expect((await c.packEntries([made[0]!.p.id])).map((e) => e.id)).toEqual([
          made[0]!.ids[0],
          made[0]!.ids[2],
        ]);
      });

      it("removePacks takes MAX_BATCH (5000) packs in one call", async () => {
        const c = await fresh();
        const { p: keep, ids: keepIds } = await addFresh(c, "keep", 2);
        const gone: PackId[] = [];
        for (let i = 0; i < 5000; i += 500) {
          // Many packs, few calls: moveBlobs records a pack with its entries.
          for (let j = i; j < i + 500; j++) {
            const p = pack(`gone/${j}`, 1);
            gone.push(p.id);
            await c.moveBlobs(p, entries(p, [blob(`gone/${j}`)]));
          }
        }
        await c.removePacks(gone);
        expect((await collect(c.listPacks())).map((p) => p.id)).toEqual([keep.id]);
        expect((await c.countBlobs()).chunks).toBe(2);
        expect((await c.packEntries([keep.id])).map((e) => e.id)).toEqual(keepIds);
      }, 300_000);

      it("works on batches of MAX_BATCH (5000) ids in one call", async () => {
        const c = await fresh();
        const { p, ids } = await addFresh(c, "big", 5000);
        const { ids: ids2 } = await addFresh(c, "big2", 2500);
        expect((await c.packEntries([p.id])).length).toBe(5000);
        const ask = [...ids.slice(0, 2500), ...Array.from({ length: 2500 }, (_, i) => blob(`absent/${i}`))];
        const has = await c.hasBlobs(ask);
        expect(has.size).toBe(2500);
        expect(has.has(ids[0]!)).toBe(true);
        const look = await c.lookupBlobs(ids);
        expect(look.size).toBe(5000);
        expect(look.get(ids[4999]!)?.offset).toBe(16 + 4999 * 100);

        await c.beginMark();
        expect((await c.mark(ids)).length).toBe(5000);
        const again = await c.mark([...ids.slice(0, 2500), ...ids2.slice(0, 2500)]);
        expect(sorted(again)).toEqual(sorted(ids2.slice(0, 2500)));
        await c.endMark();

        await c.markPacksDoomed([p.id], at(1));
        expect((await c.hasBlobs(ids)).size).toBe(0);
        await c.removePacks([p.id]);
        expect((await c.lookupBlobs(ids)).size).toBe(0);
        expect((await c.countBlobs()).chunks).toBe(2500);
      });

      it("listPacks pages through more packs than one page", async () => {
        const c = await fresh();
        const n = 1203;
        const want: PackId[] = [];
        for (let i = 0; i < n; i++) {
          const p = pack(`many/${i}`, 1);
          want.push(p.id);
          await c.addPack(p, entries(p, [blob(`many/${i}`)]));
        }
        const got = await collect(c.listPacks());
        expect(got.length).toBe(n);
        expect(got.map((p) => p.id).sort()).toEqual(want.sort());
        await c.beginMark();
        await c.mark(Array.from({ length: 600 }, (_, i) => blob(`many/${i}`)));
        const usage = await collect(c.packUsage());
        expect(usage.length).toBe(n);
        expect(usage.reduce((s, u) => s + u.usedCount, 0)).toBe(600);
        expect(usage.reduce((s, u) => s + u.blobCount, 0)).toBe(n);
        await c.endMark();
      }, 300_000);
    });

    describe("snapshots", () => {
      it("adds, gets, lists by time and removes snapshots", async () => {
        const c = await fresh();
        const s1 = snapshot("one", at(3000));
        const s2 = snapshot("two", at(1000), { parent: null, tags: [], paths: ["/"] });
        const s3 = snapshot("three", at(2000), { parent: s2.id, kind: "system", hostname: "h2" });
        for (const s of [s1, s2, s3]) await c.addSnapshot(s);
        await c.addSnapshot(s1); // idempotent
        expect(await c.getSnapshot(s3.id)).toEqual(s3);
        expect(await c.getSnapshot(asSnapshotId(hid("none")))).toBeNull();
        expect(await c.listSnapshots()).toEqual([s2, s3, s1]);
        await c.removeSnapshots([s3.id, asSnapshotId(hid("none"))]);
        expect((await c.listSnapshots()).map((s) => s.id)).toEqual([s2.id, s1.id]);
      });

      it("lists only the snapshots carrying a tag, in the database", async () => {
        const c = await fresh();
        const a1 = snapshot("a1", at(1000), { tags: ["cvd:cvd_a", "daily"] });
        const b1 = snapshot("b1", at(2000), { tags: ["cvd:cvd_b"] });
        const a2 = snapshot("a2", at(3000), { tags: ["cvd:cvd_a"] });
        const none = snapshot("n", at(4000), { tags: [] });
        for (const s of [a2, none, b1, a1]) await c.addSnapshot(s);
        expect((await c.listSnapshots({ tag: "cvd:cvd_a" })).map((s) => s.id)).toEqual([a1.id, a2.id]);
        expect(await c.listSnapshots({ tag: "cvd:cvd_b" })).toEqual([b1]);
        expect(await c.listSnapshots({ tag: "cvd:cvd" })).toEqual([]); // whole tags only
        expect(await c.listSnapshots({})).toHaveLength(4);
      });

      it("finds snapshots by hex prefix, ordered by time", async () => {
        const c = await fresh();
        const mk = (id: string, t: number) => snapshot(id, at(t), { id: asSnapshotId(id) });
        const a = mk(`ab${"0".repeat(62)}`, 300);
        const b = mk(`ab${"f".repeat(62)}`, 100);
        const d = mk(`abc${"1".repeat(61)}`, 200);
        const e = mk(`ac${"0".repeat(62)}`, 50);
        for (const s of [a, b, d, e]) await c.addSnapshot(s);
        expect((await c.findSnapshots("ab")).map((s) => s.id)).toEqual([b.id, d.id, a.id]);
        expect((await c.findSnapshots("abc")).map((s) => s.id)).toEqual([d.id]); // odd length
        expect((await c.findSnapshots("ABC")).map((s) => s.id)).toEqual([d.id]); // case-insensitive
        expect((await c.findSnapshots(a.id)).map((s) => s.id)).toEqual([a.id]); // full id
        expect((await c.findSnapshots("")).length).toBe(4);
        expect(await c.findSnapshots("ad")).toEqual([]);
        expect(await c.findSnapshots("xyz")).toEqual([]);
        expect(await c.findSnapshots("a%")).toEqual([]);
      });
    });

    describe("prune marking", () => {
      it("mark returns only newly marked ids and beginMark starts over", async () => {
        const c = await fresh();
        await c.beginMark();
        expect(sorted(await c.mark([blob(1), blob(2), blob(1)]))).toEqual(sorted([blob(1), blob(2)]));
        expect(await c.mark([blob(2), blob(3)])).toEqual([blob(3)]);
        expect(await c.mark([blob(1), blob(2), blob(3)])).toEqual([]);
        await c.beginMark();
        expect((await c.mark([blob(1)])).length).toBe(1);
        await c.endMark();
      });

      it("packUsage and markedBlobs report marked blobs per pack", async () => {
        const c = await fresh();
        const { p: a, ids: aIds } = await addFresh(c, "a", 4); // 2 marked
        const { p: b, ids: bIds } = await addFresh(c, "b", 2); // all marked
        const { p: z, ids: zIds } = await addFresh(c, "z", 3); // none marked, doomed
        const e = pack("e", 0); // no entries at all
        await c.addPack(e, []);
        await c.markPacksDoomed([z.id], at(1));

        await c.beginMark();
        await c.mark([aIds[0]!, aIds[2]!, ...bIds, blob("not-indexed")]);
        const usage = new Map<PackId, PackUsage>((await collect(c.packUsage())).map((u) => [u.packId, u]));
        expect(usage.size).toBe(4);
        expect(usage.get(a.id)).toEqual({
          packId: a.id,
          blobCount: 4,
          usedCount: 2,
          size: a.size,
          usedBytes: 200,
        });
        expect(usage.get(b.id)).toEqual({
          packId: b.id,
          blobCount: 2,
          usedCount: 2,
          size: b.size,
          usedBytes: 200,
        });
        expect(usage.get(z.id)).toEqual({
          packId: z.id,
          blobCount: 3,
          usedCount: 0,
          size: z.size,
          usedBytes: 0,
        });
        expect(usage.get(e.id)).toEqual({
          packId: e.id,
          blobCount: 0,
          usedCount: 0,
          size: e.size,
          usedBytes: 0,
        });

        expect(sorted(await c.markedBlobs([...aIds, ...zIds, blob("not-indexed"), blob("never")]))).toEqual(
          sorted([aIds[0]!, aIds[2]!, blob("not-indexed")]),
        );
        expect((await c.markedBlobs([])).size).toBe(0);
        // Counts are taken when iteration starts: an entry moved meanwhile is not counted twice.
        const it = c.packUsage()[Symbol.asyncIterator]();
        const first = await it.next();
        expect(first.done).toBe(false);
        const n = pack("n", 1);
        await c.moveBlobs(n, entries(n, [aIds[0]!]));
        const rest: PackUsage[] = [first.value as PackUsage];
        for (let x = await it.next(); !x.done; x = await it.next()) rest.push(x.value);
        expect(rest.reduce((s, u) => s + u.blobCount, 0)).toBe(9);
        await c.endMark();
        await c.beginMark();
        const after = await collect(c.packUsage());
        expect(after.every((u) => u.usedCount === 0 && u.usedBytes === 0)).toBe(true);
        await c.endMark();
      });
    });

    describe("pins", () => {
      it("pins per holder, answers by holder, lists every pinned id once, and unpins a holder", async () => {
        const c = await fresh();
        const many = Array.from({ length: 2500 }, (_, i) => blob(`pin/${i}`));
        await c.addPins("up_a", many);
        await c.addPins("up_a", many.slice(0, 10)); // idempotent
        await c.addPins("up_b", [many[0]!, blob("b-only")]);
        expect(sorted(await c.pinned("up_a", [many[0]!, many[2499]!, blob("b-only")]))).toEqual(
          sorted([many[0]!, many[2499]!]),
        );
        expect([...(await c.pinned("up_b", [many[1]!, blob("b-only")]))]).toEqual([blob("b-only")]);
        expect(await c.pinned("up_c", many.slice(0, 5))).toEqual(new Set());
        const listed: BlobId[] = [];
        for await (const page of c.listPins()) listed.push(...page);
        expect(listed.length).toBe(2501); // many[0] is pinned twice but listed once
        expect(new Set(listed)).toEqual(new Set([...many, blob("b-only")]));
        await c.removePins("up_a");
        expect(await c.pinned("up_a", many.slice(0, 5))).toEqual(new Set());
        const left: BlobId[] = [];
        for await (const page of c.listPins()) left.push(...page);
        expect(sorted(left)).toEqual(sorted([many[0]!, blob("b-only")]));
      });
    });

    describe("leases", () => {
      it("shared leases coexist; exclusive excludes everything", async () => {
        const c = await fresh();
        expect(await c.acquireLease(lease("repo", "backup-1", "shared", 0, 60_000), at(0))).toBe(true);
        expect(await c.acquireLease(lease("repo", "backup-2", "shared", 10, 60_000), at(10))).toBe(true);
        expect(await c.acquireLease(lease("repo", "prune", "exclusive", 20, 60_000), at(20))).toBe(false);
        // Other names are independent.
        expect(await c.acquireLease(lease("other", "prune", "exclusive", 20, 60_000), at(20))).toBe(true);
        await c.releaseLease("repo", "backup-1");
        expect(await c.acquireLease(lease("repo", "prune", "exclusive", 30, 60_000), at(30))).toBe(false);
        await c.releaseLease("repo", "backup-2");
        expect(await c.acquireLease(lease("repo", "prune", "exclusive", 40, 60_000), at(40))).toBe(true);
        expect(await c.acquireLease(lease("repo", "backup-3", "shared", 50, 60_000), at(50))).toBe(false);
        expect(await c.acquireLease(lease("repo", "prune-2", "exclusive", 50, 60_000), at(50))).toBe(false);
        const held = await c.listLeases(at(60));
        expect(held).toEqual([
          lease("other", "prune", "exclusive", 20, 60_000),
          lease("repo", "prune", "exclusive", 40, 60_000),
        ]);
      });

      it("expired leases are ignored and replaced", async () => {
        const c = await fresh();
        expect(await c.acquireLease(lease("repo", "crashed", "exclusive", 0, 1000), at(0))).toBe(true);
        expect(await c.acquireLease(lease("repo", "b", "shared", 999, 1000), at(999))).toBe(false);
        expect(await c.listLeases(at(1000))).toEqual([]); // expiresAt <= now is expired
        expect(await c.acquireLease(lease("repo", "b", "shared", 1000, 1000), at(1000))).toBe(true);
        // The crashed holder cannot heartbeat its way back once replaced.
        expect(await c.renewLease("repo", "crashed", at(99_000), at(1500))).toBe(false);
        expect((await c.listLeases(at(1500))).map((l) => l.holder)).toEqual(["b"]);
      });

      it("an expired lease cannot be renewed, even if nobody replaced it", async () => {
        const c = await fresh();
        expect(await c.acquireLease(lease("repo", "slow", "shared", 0, 1000), at(0))).toBe(true);
        expect(await c.renewLease("repo", "slow", at(5000), at(1000))).toBe(false);
        expect(await c.renewLease("repo", "slow", at(5000), at(999))).toBe(true);
      });

      it("renewal extends a held lease; release ends it", async () => {
        const c = await fresh();
        expect(await c.acquireLease(lease("repo", "a", "exclusive", 0, 1000), at(0))).toBe(true);
        expect(await c.renewLease("repo", "a", at(5000), at(500))).toBe(true);
        expect(await c.acquireLease(lease("repo", "b", "shared", 2000, 1000), at(2000))).toBe(false);
        expect((await c.listLeases(at(4999)))[0]?.expiresAt).toEqual(at(5000));
        expect(await c.renewLease("repo", "nobody", at(9000), at(600))).toBe(false);
        await c.releaseLease("repo", "a");
        await c.releaseLease("repo", "a"); // idempotent
        expect(await c.renewLease("repo", "a", at(9000), at(700))).toBe(false);
        expect(await c.listLeases(at(0))).toEqual([]);
        expect(await c.acquireLease(lease("repo", "b", "shared", 2000, 1000), at(2000))).toBe(true);
      });

      it("the same holder may re-acquire (refresh or upgrade when alone)", async () => {
        const c = await fresh();
        expect(await c.acquireLease(lease("repo", "a", "shared", 0, 1000), at(0))).toBe(true);
        expect(await c.acquireLease(lease("repo", "a", "exclusive", 10, 1000), at(10))).toBe(true);
        expect(await c.listLeases(at(20))).toEqual([lease("repo", "a", "exclusive", 10, 1000)]);
      });

      it("concurrent exclusive acquisitions: exactly one wins", async () => {
        const c = await fresh();
        const results = await Promise.all(
          Array.from({ length: 12 }, (_, i) =>
            c.acquireLease(lease("repo", `h${i}`, "exclusive", 0, 60_000), at(0)),
          ),
        );
        expect(results.filter(Boolean).length).toBe(1);
        expect((await c.listLeases(at(1))).length).toBe(1);
      });
    });

    describe("meta", () => {
      it("stores and overwrites string values", async () => {
        const c = await fresh();
        expect(await c.getMeta("repo.id")).toBeNull();
        await c.setMeta("repo.id", "abc");
        await c.setMeta("config.fingerprint", "ü 𝄞");
        await c.setMeta("repo.id", "def");
        expect(await c.getMeta("repo.id")).toBe("def");
        expect(await c.getMeta("config.fingerprint")).toBe("ü 𝄞");
        await c.setMeta("empty", "");
        expect(await c.getMeta("empty")).toBe("");
      });
    });
  });
}

/**
 * After migration 0009 on either database: the `n` entries a test wrote
 * before it (entry i: pack i % 2, offset 10·i, length 10, raw 20 + i, a
 * tree when i % 7 is 0, compressed when i is odd; pack 1 doomed) all read
 * back, and the pack→entries operations that lost their index still work.
 */
export async function expectMigratedEntries(c: RepoCatalog, ids: BlobId[], packs: PackId[]): Promise<void> {
  const n = ids.length;
  const found = await c.lookupBlobs(ids);
  expect(found.size).toBe(n);
  ids.forEach((id, i) => {
    expect(found.get(id)).toEqual({
      id,
      type: i % 7 === 0 ? "tree" : "chunk",
      packId: packs[i % 2],
      offset: i * 10,
      length: 10,
      rawLength: 20 + i,
      compressed: i % 2 === 1,
    });
  });
  expect((await c.hasBlobs(ids)).size).toBe(n / 2);
  const inA = await c.packEntries([packs[0]!]);
  expect(inA.map((e) => e.offset)).toEqual(ids.filter((_, i) => i % 2 === 0).map((_, j) => j * 20));
  const usage = [];
  for await (const u of c.packUsage()) usage.push([u.packId, u.blobCount]);
  expect(usage).toEqual([
    [packs[0], n / 2],
    [packs[1], n / 2],
  ]);
  await c.removePacks([packs[1]!]);
  expect((await c.lookupBlobs(ids)).size).toBe(n / 2);
  expect((await c.countBlobs()).storedBytes).toBe((n / 2) * 10);
}

export type { SnapshotId, TreeId };
export { addFresh, blob, entries, pack, packId };
