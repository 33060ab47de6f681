import { type BlobId, chunkIdsOf, decodeTree, type FsNode, type PackId, type TreeId } from "@strata/core";
import { displayPath } from "@strata/fs";
import { encodePackLayout, type IndexEntry, MAX_BATCH, PACK_LAYOUT_ENTRY } from "./catalog.js";
import { holdLease, leaseHolder } from "./lease.js";
import { packIdFromName, packName } from "./pack.js";
import type { PackVerdict } from "./pack-verify.js";
import type { Repository } from "./repository.js";
import { VerifyPool } from "./verify-pool.js";

export interface CheckOptions {
  readData?: boolean;
  /** Fraction 0..1 of packs to read fully (chosen at random). */
  readDataSubset?: number;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
}

export interface CheckReport {
  ok: boolean;
  packs: number;
  packsRead: number;
  snapshots: number;
  trees: number;
  errors: string[];
  warnings: string[];
  damagedPacks: { pack: PackId; problem: string }[];
  damagedBlobs: { blob: BlobId; pack: PackId | null; problem: string }[];
  affected: { snapshot: string; path: string; problem: string }[];
}

/** A layout whose parts were looked up separately, ordered by offset. */
function sortLayout(b: Buffer): Buffer {
  const n = b.length / PACK_LAYOUT_ENTRY;
  const offset = (k: number) => b.readUIntLE(k * PACK_LAYOUT_ENTRY + 32, 6);
  const order = Array.from({ length: n }, (_, k) => k).sort((x, y) => offset(x) - offset(y));
  const out = Buffer.allocUnsafe(b.length);
  order.forEach((k, i) => {
    b.copy(out, i * PACK_LAYOUT_ENTRY, k * PACK_LAYOUT_ENTRY, (k + 1) * PACK_LAYOUT_ENTRY);
  });
  return out;
}

/** Damaged packs whose entries one `packEntries` call (one scan of the index) fetches. */
const DAMAGED_BATCH = 1000;

/**
 * Verify the repository. Without readData: every catalog pack exists with
 * its recorded size, every snapshot object opens, every tree decodes and
 * every referenced blob is indexed in an intact pack. With readData: also
 * read packs, verify the pack hash, the header against the catalog, and every
 * blob's authentication tag and hash. Damage is traced to the snapshots and
 * files it affects.
 */
export async function check(repo: Repository, opts: CheckOptions = {}): Promise<CheckReport> {
  const r: CheckReport = {
    ok: true,
    packs: 0,
    packsRead: 0,
    snapshots: 0,
    trees: 0,
    errors: [],
    warnings: [],
    damagedPacks: [],
    damagedBlobs: [],
    affected: [],
  };
  const lease = await holdLease(repo.catalog, "marks", leaseHolder("check"), "exclusive");
  // Started only when data is read.
  const pool: { verifier: VerifyPool | null } = { verifier: null };
  try {
    const badBlobs = new Map<BlobId, string>();
    const verifying: Promise<void>[] = [];
    const badPack = (pack: PackId, problem: string) => {
      r.damagedPacks.push({ pack, problem });
      r.errors.push(`pack ${pack}: ${problem}`);
    };
    const badBlob = (blob: BlobId, pack: PackId | null, problem: string) => {
      if (badBlobs.has(blob)) return;
      badBlobs.set(blob, problem);
      r.damagedBlobs.push({ blob, pack, problem });
      r.errors.push(`blob ${blob}${pack ? ` in pack ${pack}` : ""}: ${problem}`);
    };

    // The pack phase (1, 2) and the tree walk (3) run at the same time: the
    // walk waits on small reads and catalog lookups, the pack phase on whole
    // pack reads and the verify workers. The walk traces to files the damage
    // known when it visits a tree; if the pack phase finds damaged blobs the
    // walk had not seen, it runs again (only then) to trace them.
    const walk = async (): Promise<{ snapshot: string; path: string; problem: string }[]> => {
      const affected: { snapshot: string; path: string; problem: string }[] = [];
      const treeDamage = new Map<TreeId, { path: string; problem: string }[]>();
      const first = r.trees === 0;
      await repo.catalog.beginMark();
      try {
        // Trees marked (by their parent's one `mark` call for all its
        // subdirectories) but not visited yet. A tree is visited once, where
        // it is first met in walk order — also when that is inside a sibling
        // visited before it — so its damage is known wherever it recurs.
        const pending = new Set<TreeId>();
        const visit = async (id: TreeId, marked = false): Promise<{ path: string; problem: string }[]> => {
          const memo = treeDamage.get(id);
          if (memo) return memo;
          if (!marked) {
            if (pending.has(id)) pending.delete(id);
            else if ((await repo.catalog.mark([id])).length === 0) return [];
          }
          if (first) r.trees++;
          const out: { path: string; problem: string }[] = [];
          let nodes: FsNode[];
          try {
            // A tree stored as a delta is rebuilt from its base, read from
            // the store, and hashed: a damaged base shows up here, under
            // every snapshot and path whose tree depends on it.
            const t = await repo.loadTreeResolved(id, { uncached: true });
            nodes = decodeTree(t.bytes, `tree ${id}`);
          } catch (e) {
            const problem = `directory listing (tree ${id}) unreadable: ${(e as Error).message}`;
            badBlob(id, null, (e as Error).message);
            out.push({ path: "", problem });
            treeDamage.set(id, out);
            return out;
          }
          const ids = new Set<BlobId>();
          for (const n of nodes) for (const c of chunkIdsOf(n)) ids.add(c);
          const unique = [...ids];
          // Only what is missing comes back (usually nothing): no entry objects.
          const missing = new Set<BlobId>();
          for (let i = 0; i < unique.length; i += MAX_BATCH) {
            for (const m of await repo.catalog.missingBlobs(unique.slice(i, i + MAX_BATCH))) missing.add(m);
          }
          const subtrees = [
            ...new Set(nodes.flatMap((n) => (n.type === "dir" && n.subtree ? [n.subtree] : []))),
          ];
          for (let i = 0; i < subtrees.length; i += MAX_BATCH) {
            for (const t of await repo.catalog.mark(subtrees.slice(i, i + MAX_BATCH)))
              pending.add(t as TreeId);
          }
          for (const n of nodes) {
            const name = `/${displayPath(n.name)}`;
            for (const c of chunkIdsOf(n)) {
              const problem = missing.has(c) ? `chunk ${c} is not in the index` : badBlobs.get(c);
              if (problem) {
                if (missing.has(c)) badBlob(c, null, "referenced but not in the index");
                out.push({ path: name, problem: `chunk ${c.slice(0, 12)}: ${problem}` });
                break;
              }
            }
            if (n.type === "dir" && n.subtree) {
              const sub = n.subtree;
              const fresh = pending.delete(sub);
              const damage = fresh ? await visit(sub, true) : (treeDamage.get(sub) ?? []);
              for (const d of damage) out.push({ path: name + d.path, problem: d.problem });
            }
          }
          if (out.length) treeDamage.set(id, out);
          return out;
        };
        for (const s of snapshots) {
          if (first) {
            try {
              await repo.loadSnapshotObject(s.id);
            } catch (e) {
              r.errors.push(`snapshot ${s.id}: ${(e as Error).message}`);
            }
          }
          for (const d of await visit(s.tree)) {
            affected.push({ snapshot: s.id, path: d.path || "/", problem: d.problem });
          }
        }
      } finally {
        await repo.catalog.endMark();
      }
      return affected;
    };

    const snapshots = await repo.catalog.listSnapshots();
    r.snapshots = snapshots.length;
    const packs = [];
    for await (const p of repo.catalog.listPacks()) packs.push(p);
    r.packs = packs.length;
    const subset = opts.readData ? 1 : (opts.readDataSubset ?? 0);
    // How many index entries point into each pack (one scan of the index),
    // so that a read pack's entries can come from its header (see readPack).
    // Taken before the walk starts: it uses the mark set that the walk fills.
    const indexed = new Map<PackId, number>();
    if (subset > 0) for await (const u of repo.catalog.packUsage()) indexed.set(u.packId, u.blobCount);
    const walked = walk();
    // Awaited after the pack phase; a failure must not go unhandled meanwhile.
    walked.catch(() => {});
    // Bad blobs the running walk may not have seen (found by the pack phase).
    let foundByPacks = 0;
    const packBadBlob = (blob: BlobId, pack: PackId | null, problem: string) => {
      if (!badBlobs.has(blob)) foundByPacks++;
      badBlob(blob, pack, problem);
    };

    // 1. Packs: present, right size, (optionally) intact. The entries of
    // missing and truncated packs, and of read packs whose header does not
    // open, come from the index after the loop: one scan per batch of packs.
    const known = new Set<string>();
    const lost: PackId[] = [];
    const truncated = new Map<PackId, { size: number; read: boolean }>();
    const unopened = new Map<PackId, number>();
    let done = 0;
    for (const p of packs) {
      known.add(p.id);
      opts.onProgress?.({ phase: "packs", done: done++, total: packs.length });
      const st = await repo.store.stat(packName(p.id));
      if (!st && p.state === "doomed") {
        r.warnings.push(`pack ${p.id} was deleted by an interrupted prune; the next prune forgets it`);
        continue;
      }
      const read = subset >= 1 || (subset > 0 && Math.random() < subset);
      if (!st) {
        badPack(p.id, "missing from the store");
        lost.push(p.id);
        continue;
      }
      if (st.size !== p.size) {
        badPack(p.id, `size is ${st.size} bytes, catalog says ${p.size} (truncated or replaced)`);
        truncated.set(p.id, { size: st.size, read });
        continue;
      }
      if (read) await readPack(p.id, st.size, null);
    }
    const damaged = [...lost, ...truncated.keys(), ...unopened.keys()];
    for (let i = 0; i < damaged.length; i += DAMAGED_BATCH) {
      const byPack = new Map<PackId, IndexEntry[]>();
      for (const e of await repo.catalog.packEntries(damaged.slice(i, i + DAMAGED_BATCH))) {
        const list = byPack.get(e.packId);
        if (list) list.push(e);
        else byPack.set(e.packId, [e]);
      }
      for (const id of damaged.slice(i, i + DAMAGED_BATCH)) {
        const entries = byPack.get(id) ?? [];
        const cut = truncated.get(id);
        const size = unopened.get(id);
        if (cut) {
          for (const e of entries)
            if (e.offset + e.length > cut.size) packBadBlob(e.id, id, "beyond the end of its truncated pack");
          if (cut.read) await readPack(id, cut.size, entries);
        } else if (size !== undefined) await readPack(id, size, entries);
        else for (const e of entries) packBadBlob(e.id, id, "its pack is missing");
      }
    }

    /**
     * Where the index says blobs lie in pack `id` (`PACK_LAYOUT_ENTRY` bytes
     * each, by offset), from the pack's header: the index's entries for its
     * ids that are placed in this pack (`packLayout`). When the index has
     * more entries in the pack than that (some the header does not list),
     * the layout comes from the index itself (one scan), so the worker names
     * them. Null when the header does not open.
     */
    async function layoutOf(id: PackId, size: number): Promise<Buffer | null> {
      let header: IndexEntry[];
      try {
        header = await repo.readPackHeader(id, size);
      } catch {
        return null;
      }
      const ids = [...new Set(header.map((h) => h.id))];
      const parts: Buffer[] = [];
      for (let i = 0; i < ids.length; i += MAX_BATCH)
        parts.push(await repo.catalog.packLayout(id, ids.slice(i, i + MAX_BATCH)));
      let layout = parts.length === 1 ? parts[0]! : sortLayout(Buffer.concat(parts));
      if (layout.length / PACK_LAYOUT_ENTRY !== (indexed.get(id) ?? 0)) {
        const all = await repo.catalog.packEntries([id]);
        layout = encodePackLayout(all.map((e) => [Buffer.from(e.id, "hex"), e.offset, e.length] as const));
      }
      return layout;
    }

    /**
     * Read a pack and verify it on a worker: against the index's compact
     * layout of it (`entries` null), or its full entries (a truncated pack,
     * or one whose header does not open).
     */
    async function readPack(id: PackId, size: number, entries: IndexEntry[] | null): Promise<void> {
      const layout = entries ? null : await layoutOf(id, size);
      if (!entries && !layout) {
        // The header does not open: verify every index entry on its own, after the loop.
        unopened.set(id, size);
        return;
      }
      r.packsRead++;
      // Verified on the worker threads; results are applied as they come.
      // At most one pack per worker, plus one, is queued. A worker reads a
      // pack from its file itself, a few MiB at a time, when the store has
      // files; otherwise the pack is read here, whole, and handed over.
      pool.verifier ??= new VerifyPool(repo.key);
      const verifier = pool.verifier;
      const local = layout ? repo.store.localPath?.(packName(id)) : undefined;
      await verifier.slot();
      const orEntryByEntry = async (v: PackVerdict & { headerBroken?: boolean }) => {
        if (!v.headerBroken) return v;
        // The header opened here but not on the worker (the file changed):
        // verify every index entry on its own.
        const all = await repo.catalog.packEntries([id]);
        await verifier.slot();
        return verifier.verify(id, await repo.store.getRange(packName(id), 0, size), size, all);
      };
      let verdict: Promise<PackVerdict>;
      if (layout && local) verdict = verifier.verifyLayoutFrom(id, local, size, layout).then(orEntryByEntry);
      else {
        let data: Buffer;
        try {
          // One positional read of the whole pack (readFile would take 512 KiB at a time).
          data = await repo.store.getRange(packName(id), 0, size);
        } catch (e) {
          badPack(id, `cannot be read: ${(e as Error).message}`);
          return;
        }
        verdict = layout
          ? verifier.verifyLayout(id, data, layout).then(orEntryByEntry)
          : verifier.verify(id, data, size, entries ?? []);
      }
      const done = verdict.then(
        (v) => {
          for (const p of v.packProblems) badPack(id, p);
          r.errors.push(...v.errors);
          for (const b of v.badBlobs) packBadBlob(b.id, id, b.problem);
        },
        (e) => {
          r.errors.push(`pack ${id}: ${(e as Error).message}`);
        },
      );
      verifying.push(done);
    }

    await Promise.all(verifying);

    // 2. Pack files the catalog does not know (left by a killed backup).
    for await (const obj of repo.store.list("packs/")) {
      const id = packIdFromName(obj.name);
      if (!id) r.warnings.push(`unexpected object ${obj.name}`);
      else if (!known.has(id))
        r.warnings.push(
          `pack ${id} is not indexed (left by an interrupted backup; the next backup or prune adopts it)`,
        );
    }

    // 3. Snapshots and trees; trace damage to files.
    let affected = await walked;
    if (foundByPacks > 0) affected = await walk();
    r.affected.push(...affected);
    for await (const obj of repo.store.list("snapshots/")) {
      const id = obj.name.slice("snapshots/".length);
      if (!(await repo.catalog.getSnapshot(id as never))) {
        r.warnings.push(
          `snapshot object ${id} is not in the catalog (an interrupted forget; the next prune removes it)`,
        );
      }
    }
    r.ok = r.errors.length === 0 && r.affected.length === 0;
    return r;
  } finally {
    await pool.verifier?.close();
    await lease.release();
  }
}
