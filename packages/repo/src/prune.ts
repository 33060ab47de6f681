import { randomBytes } from "node:crypto";
import type { PackId } from "@strata/core";
import { DATA_EPOCH } from "./backup.js";
import { type IndexEntry, type LeaseRecord, MAX_BATCH, type PackRecord } from "./catalog.js";
import { holdLease, type Lease, leaseHolder } from "./lease.js";
import { markReachable } from "./marking.js";
import { packName, storePack } from "./pack.js";
import type { Repository } from "./repository.js";

export interface PruneOptions {
  /** Doomed packs are deleted only after this long (ms). */
  graceMs: number;
  /** Repack a pack when more than this fraction of its bytes is unused. */
  maxUnused?: number;
  now?: () => Date;
  onProgress?: (phase: string) => void;
}

export interface PruneReport {
  snapshots: number;
  orphansAdopted: number;
  packsRepacked: number;
  packsDoomed: number;
  bytesDoomed: number;
  packsDeleted: number;
  bytesDeleted: number;
  packsRevived: number;
  /** Doomed packs still waiting out the grace period. */
  packsWaiting: number;
}

/**
 * Prune in two phases so it never blocks or breaks a concurrent backup:
 *
 * 1. mark every blob reachable from a snapshot; packs with no used blob are
 *    doomed; packs with much unused data have their used blobs copied to new
 *    packs (entries re-pointed) and are doomed. Doomed packs stop counting
 *    for dedup at once, so new backups re-store what they need.
 * 2. sweep: a doomed pack is deleted only when (a) its grace period is over,
 *    (b) it was doomed before this sweep's mark began, (c) no backup that
 *    started before its doom was running at mark time or is running now, and
 *    (d) the fresh mark finds none of its blobs in use. A pack that fails
 *    (d) is revived.
 *
 * Catalog rows go before files: a crash leaves an unindexed pack file, which
 * the next prune adopts and dooms again — never an index entry without data.
 */
export async function prune(repo: Repository, opts: PruneOptions): Promise<PruneReport> {
  const now = opts.now ?? (() => new Date());
  const maxUnused = opts.maxUnused ?? 0.1;
  const report: PruneReport = {
    snapshots: 0,
    orphansAdopted: 0,
    packsRepacked: 0,
    packsDoomed: 0,
    bytesDoomed: 0,
    packsDeleted: 0,
    bytesDeleted: 0,
    packsRevived: 0,
    packsWaiting: 0,
  };
  const lease = await holdLease(repo.catalog, "marks", leaseHolder("prune"), "exclusive");
  try {
    opts.onProgress?.("adopting unindexed packs");
    report.orphansAdopted = (await repo.adoptOrphanPacks()).length;

    // Phase 1: mark and doom.
    opts.onProgress?.("marking used data");
    const snapshots = await repo.catalog.listSnapshots();
    report.snapshots = snapshots.length;
    await markReachable(repo, snapshots);
    const doom: PackId[] = [];
    const repack: { id: PackId; size: number }[] = [];
    for await (const u of repo.catalog.packUsage()) {
      const pack = await repo.catalog.getPack(u.packId);
      if (pack?.state !== "active") continue;
      if (u.usedCount === 0) {
        doom.push(u.packId);
        report.bytesDoomed += u.size;
      } else if (u.size > 0 && (u.size - u.usedBytes) / u.size > maxUnused) {
        repack.push({ id: u.packId, size: u.size });
      }
    }
    opts.onProgress?.(`repacking ${repack.length} packs`);
    // Chunks and trees keep to separate packs, as in backup.
    const builders = { chunk: repo.newPackBuilder(), tree: repo.newPackBuilder() };
    const writeBuilder = async (type: "chunk" | "tree") => {
      const builder = builders[type];
      if (builder.count === 0) return;
      const p = builder.finish(repo.key);
      await storePack(repo.store, p);
      const rec: PackRecord = {
        id: p.id,
        size: p.size,
        blobCount: p.entries.length,
        createdAt: now(),
        state: "active",
        doomedAt: null,
      };
      await repo.catalog.moveBlobs(rec, p.entries);
      builders[type] = repo.newPackBuilder();
    };
    for (const { id, size } of repack) {
      for (const e of await usedEntries(repo, id, size)) {
        const stored = await repo.store.getRange(packName(id), e.offset, e.length);
        // Never copy damaged data. A tree stored as a delta is copied as it
        // is: its hash is checked when it is rebuilt (check, restore).
        repo.codec.decode(e, stored, { treeDelta: e.type === "tree" });
        builders[e.type].add({
          id: e.id,
          type: e.type,
          data: stored,
          rawLength: e.rawLength,
          compressed: e.compressed,
        });
        if (builders[e.type].bytes >= repo.config.pack.targetSize) await writeBuilder(e.type);
      }
      lease.check();
    }
    await writeBuilder("chunk");
    await writeBuilder("tree");
    for (const { id } of repack) {
      const pack = await repo.catalog.getPack(id);
      if (pack) report.bytesDoomed += pack.size;
    }
    report.packsRepacked = repack.length;
    doom.push(...repack.map((p) => p.id));
    if (doom.length) {
      await repo.catalog.markPacksDoomed(doom, now());
      // Data has disappeared for new backups: file caches written before now
      // are no longer trusted without checking the index.
      await repo.catalog.setMeta(DATA_EPOCH, randomBytes(8).toString("hex"));
    }
    report.packsDoomed = doom.length;
    await repo.catalog.endMark();

    // Phase 2: sweep packs doomed earlier.
    opts.onProgress?.("deleting packs whose grace period is over");
    lease.check();
    await sweep(repo, opts.graceMs, now, report, lease);
    await removeStaleSnapshotObjects(repo);
    // Temporary files of writers that died; an hour is far longer than any put.
    await repo.store.sweepTemporary?.(new Date(now().getTime() - 3_600_000));
    return report;
  } finally {
    await lease.release();
  }
}

async function sweep(
  repo: Repository,
  graceMs: number,
  now: () => Date,
  report: PruneReport,
  lease: Lease,
): Promise<void> {
  const markStart = now();
  const leasesAtStart = await repo.catalog.listLeases(markStart);
  const doomed: PackRecord[] = [];
  for await (const p of repo.catalog.listPacks()) if (p.state === "doomed" && p.doomedAt) doomed.push(p);
  const blockedBy = (p: PackRecord, leases: LeaseRecord[]) =>
    leases.some((l) => l.name === "repo" && l.acquiredAt.getTime() <= p.doomedAt!.getTime());
  const eligible = doomed.filter(
    (p) =>
      p.doomedAt!.getTime() + graceMs <= markStart.getTime() &&
      p.doomedAt!.getTime() < markStart.getTime() &&
      !blockedBy(p, leasesAtStart),
  );
  report.packsWaiting = doomed.length - eligible.length;
  if (!eligible.length) return;
  await markReachable(repo, await repo.catalog.listSnapshots());
  const leasesNow = await repo.catalog.listLeases(now());
  // (d) for every eligible pack at once: one scan of the index.
  const candidates = new Set<PackId>(eligible.map((p) => p.id));
  const inUse = new Set<PackId>();
  for await (const u of repo.catalog.packUsage())
    if (u.usedCount > 0 && candidates.has(u.packId)) inUse.add(u.packId);
  const revive: PackId[] = [];
  const gone: PackId[] = [];
  for (const p of eligible) {
    if (blockedBy(p, leasesNow)) {
      report.packsWaiting++;
      continue;
    }
    if (inUse.has(p.id)) {
      revive.push(p.id);
      continue;
    }
    // File first, rows second: a backup starting in between must not adopt
    // the file as a live pack. A crash in between leaves rows of doomed,
    // unreferenced packs whose files are gone; check ignores those and the
    // next sweep removes them. Rows go in batches: each removePacks scans
    // the index once.
    lease.check();
    await repo.store.delete(packName(p.id));
    gone.push(p.id);
    report.packsDeleted++;
    report.bytesDeleted += p.size;
    if (gone.length >= MAX_BATCH) await repo.catalog.removePacks(gone.splice(0));
  }
  if (gone.length) await repo.catalog.removePacks(gone);
  if (revive.length) await repo.catalog.revivePacks(revive);
  report.packsRevived = revive.length;
  await repo.catalog.endMark();
}

/**
 * The marked index entries of pack `id` (what a repack copies), ordered by
 * offset: its entries come from its own header (`indexedEntries`), so no
 * scan of the index per pack. Only a pack whose header does not open falls
 * back to the index (`packEntries`, one scan); its blobs are still verified
 * one by one before they are copied.
 */
async function usedEntries(repo: Repository, id: PackId, size: number): Promise<IndexEntry[]> {
  let entries: IndexEntry[];
  try {
    entries = await repo.indexedEntries(id, await repo.readPackHeader(id, size));
  } catch {
    entries = await repo.catalog.packEntries([id]);
  }
  const used: IndexEntry[] = [];
  for (let i = 0; i < entries.length; i += MAX_BATCH) {
    const batch = entries.slice(i, i + MAX_BATCH);
    const marked = await repo.catalog.markedBlobs(batch.map((e) => e.id));
    for (const e of batch) if (marked.has(e.id)) used.push(e);
  }
  return used;
}

/**
 * Snapshot objects without a catalog row were left by a `forget` that was
 * interrupted between removing the row and the object: finish the job.
 */
async function removeStaleSnapshotObjects(repo: Repository): Promise<void> {
  for await (const obj of repo.store.list("snapshots/")) {
    const id = obj.name.slice("snapshots/".length);
    if (/^[0-9a-f]{64}$/.test(id) && !(await repo.catalog.getSnapshot(id as never)))
      await repo.store.delete(obj.name);
  }
}
