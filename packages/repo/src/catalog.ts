import type { BlobId, PackId, SnapshotId, TreeId } from "@strata/core";

/**
 * The metadata the repository needs from a catalog. The repository declares
 * this interface; `@strata/catalog` implements it on SQLite and PostgreSQL and
 * the composition root (CLI, server) wires one in. Every method that takes a
 * list works in one batch (no query per element); callers keep batches at or
 * below `MAX_BATCH` ids.
 *
 * Nothing here loads the whole index: lookups are by batch, listings are
 * async iterables that page through the database.
 */
export const MAX_BATCH = 5000;

export type BlobType = "chunk" | "tree";

export interface IndexEntry {
  id: BlobId;
  type: BlobType;
  packId: PackId;
  /** Byte offset of the stored (encrypted) blob inside its pack. */
  offset: number;
  /** Stored length in the pack (nonce + ciphertext + tag). */
  length: number;
  /** Plaintext length after decryption and decompression. */
  rawLength: number;
  /** Whether the stored plaintext is zstd-compressed. */
  compressed: boolean;
}

export type PackState = "active" | "doomed";

export interface PackRecord {
  id: PackId;
  size: number;
  blobCount: number;
  createdAt: Date;
  state: PackState;
  /** When prune doomed it; deletion waits out the grace period after this. */
  doomedAt: Date | null;
}

export interface SnapshotStats {
  filesNew: number;
  filesChanged: number;
  filesUnchanged: number;
  dirs: number;
  bytesRead: number;
  bytesAdded: number;
  /** Logical size of all files in the snapshot. */
  totalBytes: number;
  totalFiles: number;
  errors: number;
  durationMs: number;
}

export function emptySnapshotStats(): SnapshotStats {
  return {
    filesNew: 0,
    filesChanged: 0,
    filesUnchanged: 0,
    dirs: 0,
    bytesRead: 0,
    bytesAdded: 0,
    totalBytes: 0,
    totalFiles: 0,
    errors: 0,
    durationMs: 0,
  };
}

export interface SnapshotRecord {
  id: SnapshotId;
  time: Date;
  hostname: string;
  /** The absolute paths that were backed up. */
  paths: string[];
  tags: string[];
  tree: TreeId;
  parent: SnapshotId | null;
  kind: string;
  stats: SnapshotStats;
}

export interface LeaseRecord {
  name: string;
  holder: string;
  mode: "shared" | "exclusive";
  acquiredAt: Date;
  expiresAt: Date;
}

export interface PackUsage {
  packId: PackId;
  blobCount: number;
  usedCount: number;
  size: number;
  usedBytes: number;
}

/**
 * Bytes per entry of a pack layout (where the index says blobs lie in one
 * pack; `check` compares it with the pack's own header, see
 * `verifyPackLayout`): id (32), offset (u64 LE), length (u32 LE).
 */
export const PACK_LAYOUT_ENTRY = 44;

/** Build a pack layout buffer from rows ordered by offset. */
export function encodePackLayout(rows: readonly (readonly [Uint8Array, number, number])[]): Buffer {
  const out = Buffer.allocUnsafe(rows.length * PACK_LAYOUT_ENTRY);
  rows.forEach(([id, offset, length], i) => {
    const at = i * PACK_LAYOUT_ENTRY;
    out.set(id, at);
    out.writeUIntLE(offset, at + 32, 6);
    out.writeUInt16LE(0, at + 38);
    out.writeUInt32LE(length, at + 40);
  });
  return out;
}

export interface RepoCatalog {
  /**
   * Optional: start reading the index into the operating system's page
   * cache in the background (a backup is about to look up many ids). Never
   * blocks, never rejects; callers need not wait for it (the promise is for
   * tests). A catalog with nothing to gain need not have it.
   */
  warm?(): Promise<void>;
  // ---- packs and the blob index -------------------------------------
  /**
   * Record a pack and its blobs in one transaction. Idempotent: re-adding a
   * pack that is already recorded changes nothing. A blob already indexed in
   * another pack keeps its existing entry (first writer wins).
   */
  addPack(pack: PackRecord, entries: IndexEntry[]): Promise<void>;
  /** The subset of `ids` indexed in an *active* pack. */
  hasBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>>;
  /** Index entries of `ids` (active or doomed packs); missing ids are absent. */
  lookupBlobs(ids: readonly BlobId[]): Promise<Map<BlobId, IndexEntry>>;
  getPack(id: PackId): Promise<PackRecord | null>;
  /** All pack records, paged from the database. */
  listPacks(): AsyncIterable<PackRecord>;
  /**
   * Index entries that point into any of `packIds`, ordered by pack id, then
   * offset. There is no pack→entries index (migration 0009): this is one
   * scan of the whole index per call, for damaged packs (check) and tests.
   * Code that needs a pack's entries in the normal course reads the pack's
   * header and looks its ids up (`lookupBlobs`); never call this once per
   * pack in a loop over all packs.
   */
  packEntries(packIds: readonly PackId[]): Promise<IndexEntry[]>;
  /**
   * Where the index places those of `ids` (a pack's header's ids, at most
   * `MAX_BATCH`) that it places in `packId`, compactly (`check` compares it
   * with the pack's header): per entry, ordered by offset,
   * `PACK_LAYOUT_ENTRY` bytes — the raw blob id (32), the offset (u64) and
   * the length (u32), little-endian. Ids indexed in another pack, or not at
   * all, are left out.
   */
  packLayout(packId: PackId, ids: readonly BlobId[]): Promise<Buffer>;
  /** The subset of `ids` with no index entry at all (in an active or doomed pack). */
  missingBlobs(ids: readonly BlobId[]): Promise<BlobId[]>;
  /** Point existing entries for `entries[].id` at their new pack (repack). */
  moveBlobs(newPack: PackRecord, entries: IndexEntry[]): Promise<void>;
  markPacksDoomed(ids: readonly PackId[], at: Date): Promise<void>;
  /** Undo a doom: the pack is active again (a late snapshot needs it). */
  revivePacks(ids: readonly PackId[]): Promise<void>;
  /**
   * Remove pack records and all index entries that point into them, in one
   * transaction. One scan of the index per call: batch the ids (at most
   * `MAX_BATCH`).
   */
  removePacks(ids: readonly PackId[]): Promise<void>;
  /** Remove index entries (blobs found unused by prune inside a kept pack). */
  removeBlobs(ids: readonly BlobId[]): Promise<void>;
  countBlobs(): Promise<{ chunks: number; trees: number; rawBytes: number; storedBytes: number }>;

  // ---- snapshots ------------------------------------------------------
  addSnapshot(s: SnapshotRecord): Promise<void>;
  getSnapshot(id: SnapshotId): Promise<SnapshotRecord | null>;
  /** Snapshots whose id starts with `prefix` (hex). */
  findSnapshots(prefix: string): Promise<SnapshotRecord[]>;
  /**
   * All snapshots ordered by time ascending; with `tag`, only those carrying
   * it (filtered in the database: a CVD's snapshots among a fleet's).
   */
  listSnapshots(filter?: { tag?: string }): Promise<SnapshotRecord[]>;
  removeSnapshots(ids: readonly SnapshotId[]): Promise<void>;

  // ---- prune marking (kept in the database, not in RAM) --------------
  /** Start a fresh mark set (drops any previous one). */
  beginMark(): Promise<void>;
  /** Add ids to the mark set; returns the subset that was not yet marked. */
  mark(ids: readonly BlobId[]): Promise<BlobId[]>;
  /**
   * Per pack (active and doomed, in id order): how many index entries point
   * into it, how many of those are marked, and their bytes. One scan of the
   * index per call, aggregated in the database; the result is paged.
   */
  packUsage(): AsyncIterable<PackUsage>;
  /** The subset of `ids` in the mark set. */
  markedBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>>;
  endMark(): Promise<void>;

  // ---- pins: blobs an open upload session holds -----------------------
  /** Pin `ids` for `holder` (idempotent). Prune keeps pinned blobs as if a snapshot used them. */
  addPins(holder: string, ids: readonly BlobId[]): Promise<void>;
  /** The subset of `ids` pinned by `holder`. */
  pinned(holder: string, ids: readonly BlobId[]): Promise<Set<BlobId>>;
  removePins(holder: string): Promise<void>;
  /** Every pinned id of every holder, in pages (an id may repeat across holders). */
  listPins(): AsyncIterable<BlobId[]>;

  // ---- leases (locks with heartbeats) ---------------------------------
  /**
   * Take a lease. Shared leases coexist; an exclusive lease excludes all
   * others. Expired leases are ignored and replaced. Returns false when held.
   */
  acquireLease(l: LeaseRecord, now: Date): Promise<boolean>;
  /**
   * Extend a lease that is still live at `now`. An expired lease cannot be
   * renewed (someone else may have acted on its expiry): returns false.
   */
  renewLease(name: string, holder: string, expiresAt: Date, now: Date): Promise<boolean>;
  releaseLease(name: string, holder: string): Promise<void>;
  listLeases(now: Date): Promise<LeaseRecord[]>;

  // ---- repository-wide key/value (config fingerprint, schema info) ----
  getMeta(key: string): Promise<string | null>;
  setMeta(key: string, value: string): Promise<void>;

  close(): Promise<void>;
}

/**
 * Local cache of the backup client: for each directory it backed up, the stat
 * signature and encoded node of every non-directory entry, so an unchanged
 * file is not read again. Hits are only used when every chunk they name is
 * still stored (the backup checks the index). Trees are always re-encoded
 * (cheap) and deduplicated by id.
 */
export interface FileCache {
  /** The cached entry list of directory `dir` (raw path bytes), or null. */
  getDir(dir: Buffer): CachedDir | null;
  putDir(dir: Buffer, value: CachedDir): void;
  /** The generation of the last run that reached `endRun` (0: none). */
  completedGen(): number;
  getMeta(key: string): string | null;
  setMeta(key: string, value: string): void;
  /** Drop directories not touched since `beginRun` (vanished paths). */
  beginRun(): void;
  /**
   * The run completed: its generation becomes `completedGen`. Rows not
   * touched since `beginRun` are deleted, unless `sweep` is false: a
   * hinted walk (backup.ts, `WalkHint`) reads only changed directories and
   * keeps every other row as it is.
   */
  endRun(opts?: { sweep?: boolean }): void;
  close(): void;
}

export interface CachedDir {
  /** Opaque encoded payload owned by the repository's backup code. */
  data: Buffer;
  /** Generation of the run that wrote or last saw the row (0 when unknown). */
  gen?: number;
}
