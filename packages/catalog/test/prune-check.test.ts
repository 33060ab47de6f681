/**
 * Prune and check on a real repository (files in a directory) over both
 * catalogs. The catalog has no pack→entries index (migration 0009): repack
 * and check take a pack's entries from its header, prune's classification
 * and sweep aggregate in one scan, and damaged packs' entries come from the
 * index in batches. These tests pin what that must keep: exactly the
 * entries the index places in a pack count as the pack's.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BlobId, chunkIdsOf, type PackId } from "@strata/core";
import {
  backup,
  check,
  DirBlobStore,
  type IndexEntry,
  type PackRecord,
  packName,
  prune,
  type RepoCatalog,
  Repository,
  storePack,
} from "@strata/repo";
import { afterAll, describe, expect, it } from "vitest";
import { openPostgresCatalog, openSqliteCatalog } from "../src/index.js";
import { dropTestSchemas, findTestPostgres, newTestSchema } from "./pg-helper.js";

const dir = mkdtempSync(join(tmpdir(), "strata-prune-check-"));
let n = 0;
const target = await findTestPostgres();
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  if (target.url) await dropTestSchemas(target.url);
});

const backends: [string, () => Promise<RepoCatalog>][] = [
  ["sqlite", () => openSqliteCatalog(join(dir, `c-${n++}.db`))],
];
if (target.url) {
  const url = target.url;
  backends.push(["postgres", () => openPostgresCatalog(url, { schema: newTestSchema() })]);
}

const T0 = new Date("2025-01-01T00:00:00Z");
const at = (s: number) => () => new Date(T0.getTime() + s * 1000);

/** Files of random (incompressible) content under `root/name`. */
function files(root: string, name: string, count: number, size: number): string {
  const d = join(root, name);
  mkdirSync(d, { recursive: true });
  for (let i = 0; i < count; i++) writeFileSync(join(d, `f${i}`), randomBytes(size));
  return d;
}

/** The packs a step added, and among them the ones holding chunks. */
async function newPacks(
  repo: Repository,
  before: Set<string>,
): Promise<{ all: PackRecord[]; data: PackId[] }> {
  const all: PackRecord[] = [];
  for await (const p of repo.catalog.listPacks()) if (!before.has(p.id)) all.push(p);
  const data: PackId[] = [];
  for (const p of all)
    if ((await repo.readPackHeader(p.id, p.size)).some((e) => e.type === "chunk")) data.push(p.id);
  return { all, data };
}
async function packIds(repo: Repository): Promise<Set<string>> {
  const s = new Set<string>();
  for await (const p of repo.catalog.listPacks()) s.add(p.id);
  return s;
}

async function openRepo(open: () => Promise<RepoCatalog>): Promise<{ repo: Repository; root: string }> {
  const root = join(dir, `r-${n++}`);
  mkdirSync(root);
  const repo = await Repository.init(new DirBlobStore(join(root, "repo")), await open(), Buffer.from("pw"));
  return { repo, root };
}

for (const [name, open] of backends) {
  describe(`prune and check without a pack→entries index: ${name}`, () => {
    it("repack copies the used entries the index places in the pack, not a copy indexed elsewhere; the sweep deletes and revives", async () => {
      const { repo, root } = await openRepo(open);
      const src = join(root, "src");
      files(src, "a", 4, 50_000);
      files(src, "b", 4, 50_000);
      const before = await packIds(repo);
      const both = (await backup(repo, { paths: [src] })).snapshot;
      const { data } = await newPacks(repo, before);
      expect(data).toHaveLength(1);
      const p = data[0]!;
      // A second snapshot of a alone: b's data becomes unused once `both` goes.
      const onlyA = (await backup(repo, { paths: [join(src, "a")] })).snapshot;
      const header = await repo.readPackHeader(p);
      const aChunks = new Set<BlobId>();
      for await (const { node } of repo.walk(onlyA.tree)) for (const c of chunkIdsOf(node)) aChunks.add(c);
      const used = header.filter((e) => aChunks.has(e.id));
      expect(used.length).toBeGreaterThan(1);
      // One used blob is also stored in another pack q, which the index names
      // (a repack or a doomed-copy re-store did that): it is q's, not p's.
      const x = used[0]!;
      const qb = repo.newPackBuilder();
      qb.add({
        id: x.id,
        type: x.type,
        data: await repo.store.getRange(packName(p), x.offset, x.length),
        rawLength: x.rawLength,
        compressed: x.compressed,
      });
      const q = qb.finish(repo.key);
      await storePack(repo.store, q);
      const qRec: PackRecord = {
        id: q.id,
        size: q.size,
        blobCount: 1,
        createdAt: T0,
        state: "active",
        doomedAt: null,
      };
      await repo.catalog.moveBlobs(qRec, q.entries);
      await repo.removeSnapshots([both.id]);

      const first = await prune(repo, { graceMs: 0, now: at(1) });
      // p, and tree packs that also held the forgotten snapshot's trees.
      expect(first.packsRepacked).toBeGreaterThanOrEqual(1);
      expect((await repo.catalog.getPack(p))?.state).toBe("doomed");
      // Copied: every used entry of p but x, now in one new pack.
      const moved = await repo.catalog.lookupBlobs(used.map((e) => e.id));
      expect(moved.get(x.id)?.packId).toBe(q.id);
      const targets = new Set(used.slice(1).map((e) => moved.get(e.id)?.packId));
      expect(targets.size).toBe(1);
      const fresh = [...targets][0]!;
      expect(fresh).not.toBe(p);
      const freshHeader = await repo.readPackHeader(fresh);
      expect(freshHeader.map((e) => e.id).sort()).toEqual(
        used
          .slice(1)
          .map((e) => e.id)
          .sort(),
      );

      // A later prune deletes p (file and rows); nothing it held is lost.
      const second = await prune(repo, { graceMs: 0, now: at(2) });
      expect(second.packsDeleted).toBe(first.packsDoomed);
      expect(await repo.catalog.getPack(p)).toBeNull();
      expect(await repo.store.stat(packName(p))).toBeNull();
      expect(await repo.catalog.packEntries([p])).toEqual([]);
      const c = await check(repo, { readData: true });
      expect(c.errors).toEqual([]);
      expect(c.ok).toBe(true);

      // A doomed pack a snapshot uses again is revived, not deleted.
      await repo.catalog.markPacksDoomed([fresh], at(3)());
      const third = await prune(repo, { graceMs: 0, now: at(4) });
      expect(third.packsRevived).toBe(1);
      expect((await repo.catalog.getPack(fresh))?.state).toBe("active");
      expect((await check(repo, { readData: true })).ok).toBe(true);
      await repo.close();
      await repo.catalog.close();
    });

    it("the sweep deletes many doomed packs and removes their rows in batches", async () => {
      const { repo, root } = await openRepo(open);
      const snaps = [];
      for (let i = 0; i < 12; i++) {
        const d = files(join(root, "src"), `d${i}`, 1, 5_000);
        snaps.push((await backup(repo, { paths: [d] })).snapshot);
      }
      await repo.removeSnapshots(snaps.slice(0, 10).map((s) => s.id));
      const first = await prune(repo, { graceMs: 0, now: at(1) });
      // Each backup wrote a data pack and a tree pack; tree packs the kept
      // snapshots share in part are repacked (and doomed) too.
      expect(first.packsDoomed).toBeGreaterThanOrEqual(20);
      const doomed: PackId[] = [];
      for await (const p of repo.catalog.listPacks()) if (p.state === "doomed") doomed.push(p.id);
      expect(doomed).toHaveLength(first.packsDoomed);
      const second = await prune(repo, { graceMs: 0, now: at(2) });
      expect(second.packsDeleted).toBe(first.packsDoomed);
      for (const id of doomed) {
        expect(await repo.catalog.getPack(id)).toBeNull();
        expect(await repo.store.stat(packName(id))).toBeNull();
      }
      expect(await repo.catalog.packEntries(doomed)).toEqual([]);
      const counts = await repo.catalog.countBlobs();
      expect(counts.chunks).toBe(2);
      expect((await check(repo, { readData: true })).ok).toBe(true);
      await repo.close();
      await repo.catalog.close();
    });

    it("check names an index entry the header does not list, verifies a pack whose header does not open entry by entry, and lists a missing pack's entries", async () => {
      const { repo, root } = await openRepo(open);
      const src = join(root, "src");
      const data: PackId[] = [];
      for (const d of ["a", "b", "c"]) {
        const before = await packIds(repo);
        await backup(repo, { paths: [files(src, d, 3, 20_000)] });
        data.push(...(await newPacks(repo, before)).data);
      }
      expect(data).toHaveLength(3);
      const [stray, broken, lost] = data as [PackId, PackId, PackId];
      expect((await check(repo, { readData: true })).ok).toBe(true);

      // 1. An index entry into `stray` for a blob its header does not list.
      const z = randomBytes(32).toString("hex") as BlobId;
      const rec = (await repo.catalog.getPack(stray))!;
      const ze: IndexEntry = {
        id: z,
        type: "chunk",
        packId: stray,
        offset: 0,
        length: 10,
        rawLength: 10,
        compressed: false,
      };
      await repo.catalog.moveBlobs(rec, [ze]);
      // 2. A flipped byte in `broken`'s header (just before its trailer).
      const bf = join(root, "repo", packName(broken));
      const bytes = readFileSync(bf);
      bytes[bytes.length - 20]! ^= 1;
      writeFileSync(bf, bytes);
      const brokenEntries = await repo.catalog.packEntries([broken]);
      // 3. `lost` is gone.
      const lostEntries = await repo.catalog.packEntries([lost]);
      rmSync(join(root, "repo", packName(lost)));

      const r = await check(repo, { readData: true });
      expect(r.ok).toBe(false);
      expect(r.errors).toContain(`pack ${stray}: header does not list blob ${z} where the catalog says`);
      expect(r.errors.filter((e) => e.startsWith(`pack ${stray}:`))).toHaveLength(1);
      expect(r.errors).toContainEqual(expect.stringMatching(new RegExp(`^pack ${broken}: .*header`)));
      expect(r.damagedPacks).toContainEqual({
        pack: broken,
        problem: "content does not match its id (damaged)",
      });
      // Its blobs are intact: verified one by one, none is damaged.
      expect(r.damagedBlobs.filter((b) => b.pack === broken)).toEqual([]);
      // Three files of random bytes: a chunk each, or two when a boundary falls past the minimum size.
      expect(brokenEntries.length).toBeGreaterThanOrEqual(3);
      expect(r.damagedPacks).toContainEqual({ pack: lost, problem: "missing from the store" });
      expect(
        r.damagedBlobs
          .filter((b) => b.pack === lost)
          .map((b) => b.blob)
          .sort(),
      ).toEqual(lostEntries.map((e) => e.id).sort());
      expect(
        r.damagedBlobs.filter((b) => b.pack === lost).every((b) => b.problem === "its pack is missing"),
      ).toBe(true);
      expect(r.packsRead).toBe((await packIds(repo)).size - 1);
      await repo.close();
      await repo.catalog.close();
    });
  });
}
