import { mkdirSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { dirname } from "node:path";
import { type BlobId, type PackId, type SnapshotId, StrataError, type TreeId } from "@strata/core";
import {
  encodePackLayout,
  type IndexEntry,
  type LeaseRecord,
  type PackRecord,
  type PackUsage,
  type RepoCatalog,
  type SnapshotRecord,
} from "@strata/repo";
import Database from "better-sqlite3";
import {
  blobTypeCode,
  blobTypeName,
  checkId,
  hexId,
  idBytes,
  loadMigrations,
  PAGE_SIZE,
  prefixRange,
} from "./common.js";

type Db = Database.Database;
type Stmt = Database.Statement;

interface BlobRow {
  id: Buffer;
  type: number;
  pack_id: Buffer;
  offset: number;
  length: number;
  raw_length: number;
  compressed: number;
}
interface PackRow {
  id: Buffer;
  size: number;
  blob_count: number;
  created_at: number;
  state: string;
  doomed_at: number | null;
}
interface SnapshotRow {
  id: Buffer;
  time: number;
  hostname: string;
  paths: string;
  tags: string;
  tree: Buffer;
  parent: Buffer | null;
  kind: string;
  stats: string;
}
interface LeaseRow {
  name: string;
  holder: string;
  mode: string;
  acquired_at: number;
  expires_at: number;
}

/** Index entry columns; `p` is the entry's pack (blobs.pack = packs.seq, migration 0005). */
const BLOB_COLS = `b.id, b.type, p.id AS pack_id, b."offset" AS "offset", b.length, b.raw_length, b.compressed`;
const PACK_COLS = "id, size, blob_count, created_at, state, doomed_at";
const SNAP_COLS = "id, time, hostname, paths, tags, tree, parent, kind, stats";
/** Ids travel into SQL as one JSON array of hex strings, unpacked with json_each + unhex: one statement, any batch size. */
const IDS = "(SELECT unhex(value) FROM json_each(?))";

function toEntry(r: BlobRow): IndexEntry {
  return {
    id: hexId<BlobId>(r.id),
    type: blobTypeName(r.type),
    packId: hexId<PackId>(r.pack_id),
    offset: r.offset,
    length: r.length,
    rawLength: r.raw_length,
    compressed: r.compressed !== 0,
  };
}
function toPack(r: PackRow): PackRecord {
  return {
    id: hexId<PackId>(r.id),
    size: r.size,
    blobCount: r.blob_count,
    createdAt: new Date(r.created_at),
    state: r.state === "doomed" ? "doomed" : "active",
    doomedAt: r.doomed_at === null ? null : new Date(r.doomed_at),
  };
}
function toSnapshot(r: SnapshotRow): SnapshotRecord {
  return {
    id: hexId<SnapshotId>(r.id),
    time: new Date(r.time),
    hostname: r.hostname,
    paths: JSON.parse(r.paths) as string[],
    tags: JSON.parse(r.tags) as string[],
    tree: hexId<TreeId>(r.tree),
    parent: r.parent === null ? null : hexId<SnapshotId>(r.parent),
    kind: r.kind,
    stats: JSON.parse(r.stats) as SnapshotRecord["stats"],
  };
}
function toLease(r: LeaseRow): LeaseRecord {
  return {
    name: r.name,
    holder: r.holder,
    mode: r.mode === "exclusive" ? "exclusive" : "shared",
    acquiredAt: new Date(r.acquired_at),
    expiresAt: new Date(r.expires_at),
  };
}

/** Validates every id (throws on a malformed one) and returns the JSON array parameter. */
function idsJson(ids: readonly string[]): string {
  for (const id of ids) checkId(id);
  return JSON.stringify(ids);
}

function checkEntries(pack: PackRecord, entries: readonly IndexEntry[]): void {
  for (const e of entries) {
    if (e.packId !== pack.id) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `index entry ${e.id} names pack ${e.packId}, not ${pack.id}`,
        {
          subject: e.id,
        },
      );
    }
  }
}

function packParams(p: PackRecord): unknown[] {
  return [
    idBytes(p.id),
    p.size,
    p.blobCount,
    p.createdAt.getTime(),
    p.state,
    p.doomedAt === null ? null : p.doomedAt.getTime(),
  ];
}
function entryParams(e: IndexEntry, packSeq: number): unknown[] {
  return [
    idBytes(e.id),
    blobTypeCode(e.type),
    packSeq,
    e.offset,
    e.length,
    e.rawLength,
    e.compressed ? 1 : 0,
  ];
}

/**
 * Apply pending migrations in one IMMEDIATE transaction (several processes
 * opening the same file serialize on SQLite's write lock; the applied set is
 * re-read inside the transaction).
 */
function migrate(db: Db): void {
  const migrations = loadMigrations("sqlite");
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
  )`);
  const run = db.transaction(() => {
    const applied = new Set(
      db
        .prepare("SELECT version FROM schema_migrations")
        .pluck()
        .all()
        .map((v) => Number(v)),
    );
    const known = new Set(migrations.map((m) => m.version));
    for (const v of applied) {
      if (!known.has(v)) {
        throw new StrataError(
          "CONFIG_INVALID",
          `catalog schema version ${v} is newer than this program knows`,
          {
            hint: "upgrade strata",
          },
        );
      }
    }
    const record = db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)");
    for (const m of migrations) {
      if (applied.has(m.version)) continue;
      db.exec(m.sql);
      record.run(m.version, m.name, Date.now());
    }
  });
  const before = applied(db);
  run.immediate();
  // A migration that rebuilt tables (0005) leaves the old pages on the
  // freelist: give them back once, when they are a quarter of the file.
  // VACUUM needs the database to itself; if another process is using it,
  // the space is simply reused by later writes.
  if (applied(db) !== before) {
    const free = Number(db.pragma("freelist_count", { simple: true }));
    const total = Number(db.pragma("page_count", { simple: true }));
    if (free > 0 && free * 4 > total) {
      try {
        db.exec("VACUUM");
      } catch {
        // busy: keep the free pages
      }
    }
  }
}

function applied(db: Db): number {
  return Number(db.prepare("SELECT count(*) FROM schema_migrations").pluck().get());
}

/**
 * The catalog on an embedded SQLite file. All calls are synchronous under the
 * hood (better-sqlite3); the async signatures are the contract's.
 *
 * Durability: WAL with synchronous=FULL, so every committed transaction
 * (addPack, addSnapshot, …) is fsynced before the call returns — the write
 * order "packs, then index, then snapshot" must survive power loss.
 */
export class SqliteCatalog implements RepoCatalog {
  readonly path: string;
  private readonly db: Db;
  private readonly s: Record<string, Stmt>;
  private readonly txAddPack: (pack: PackRecord, entries: readonly IndexEntry[]) => void;
  private readonly txMoveBlobs: (pack: PackRecord, entries: readonly IndexEntry[]) => void;
  private readonly txRemovePacks: (json: string) => void;
  private readonly txAcquire: (l: LeaseRecord, now: number) => boolean;
  private readonly txFillUsage: () => void;

  /**
   * Read the database file (and its WAL) once, sequentially, in the
   * background: a backup's dedup lookups then hit the page cache instead
   * of reading B-tree pages one by one from a cold disk (restic reads its
   * whole index at start for the same reason). Bounded: a catalog over
   * WARM_MAX_BYTES is left to the lookups; nothing stays in our memory.
   */
  warm(): Promise<void> {
    if (this.path === ":memory:") return Promise.resolve();
    // A server warms at every restore it opens: at most once a minute (the
    // page cache may have been dropped since; reading it again when it was
    // not costs a copy of the file).
    const now = Date.now();
    if (this.warming && now - this.warmedAt < WARM_AGAIN_MS) return this.warming;
    this.warmedAt = now;
    this.warming = warmFile(this.path).then(() => warmFile(`${this.path}-wal`));
    return this.warming;
  }
  private warming: Promise<void> | null = null;
  private warmedAt = 0;

  constructor(db: Db, path: string) {
    this.db = db;
    this.path = path;
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      insertPack: p(`INSERT INTO packs (${PACK_COLS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`),
      // First writer wins — unless the existing entry's pack is doomed: then
      // hasBlobs said "absent", the caller stored the blob again, and the new
      // copy must become the indexed one or prune would drop it with the old pack.
      insertEntry: p(
        `INSERT INTO blobs (id, type, pack, "offset", length, raw_length, compressed)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET
           type = excluded.type, pack = excluded.pack, "offset" = excluded."offset",
           length = excluded.length, raw_length = excluded.raw_length, compressed = excluded.compressed
         WHERE (SELECT state FROM packs WHERE packs.seq = blobs.pack) = 'doomed'`,
      ),
      upsertEntry: p(
        `INSERT INTO blobs (id, type, pack, "offset", length, raw_length, compressed)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET
           type = excluded.type, pack = excluded.pack, "offset" = excluded."offset",
           length = excluded.length, raw_length = excluded.raw_length, compressed = excluded.compressed`,
      ),
      hasBlobs: p(
        `SELECT b.id FROM json_each(?) j
         CROSS JOIN blobs b ON b.id = unhex(j.value)
         JOIN packs p ON p.seq = b.pack
         WHERE p.state = 'active'`,
      ).pluck(),
      // Rows name the asked id by its index (j.key) and the pack by its seq: no 32-byte
      // Buffer per column and row, which cost four fifths of a lookup (packIdsOf names the packs).
      lookupBlobs: p(
        `SELECT j.key, b.type, b.pack, b."offset", b.length, b.raw_length, b.compressed
         FROM json_each(?) j CROSS JOIN blobs b ON b.id = unhex(j.value)`,
      ).raw(),
      packIdsOf: p(
        "SELECT p.seq, lower(hex(p.id)) FROM json_each(?) j CROSS JOIN packs p ON p.seq = j.value",
      ).raw(),
      addPins: p(
        "INSERT INTO pins (holder, id) SELECT ?, unhex(j.value) FROM json_each(?) j WHERE true ON CONFLICT DO NOTHING",
      ),
      pinned: p(
        "SELECT p.id FROM json_each(?) j CROSS JOIN pins p ON p.holder = ? AND p.id = unhex(j.value)",
      ).pluck(),
      removePins: p("DELETE FROM pins WHERE holder = ?"),
      listPins: p("SELECT DISTINCT id FROM pins WHERE id > ? ORDER BY id LIMIT ?").pluck(),
      getPack: p(`SELECT ${PACK_COLS} FROM packs WHERE id = ?`),
      packSeq: p("SELECT seq FROM packs WHERE id = ?").pluck(),
      listPacks: p(`SELECT ${PACK_COLS} FROM packs WHERE id > ? ORDER BY id LIMIT ?`),
      packLayout: p(
        `SELECT b.id, b."offset", b.length FROM json_each(?) j CROSS JOIN blobs b ON b.id = unhex(j.value)
         WHERE b.pack = (SELECT seq FROM packs WHERE id = ?) ORDER BY b."offset"`,
      ).raw(),
      missingBlobs: p(
        "SELECT j.value FROM json_each(?) j WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = unhex(j.value))",
      ).pluck(),
      // No index on blobs.pack (migration 0009): one scan of blobs, which
      // CROSS JOIN keeps as the outer loop (never a scan per pack).
      packEntries: p(
        `SELECT ${BLOB_COLS} FROM blobs b CROSS JOIN packs p ON p.seq = b.pack
         WHERE b.pack IN (SELECT seq FROM packs WHERE id IN ${IDS}) ORDER BY p.id, b."offset"`,
      ),
      doom: p(`UPDATE packs SET state = 'doomed', doomed_at = ? WHERE state = 'active' AND id IN ${IDS}`),
      revive: p(`UPDATE packs SET state = 'active', doomed_at = NULL WHERE id IN ${IDS}`),
      // One scan of blobs per call (no index on blobs.pack).
      deleteEntriesOfPacks: p(`DELETE FROM blobs WHERE pack IN (SELECT seq FROM packs WHERE id IN ${IDS})`),
      deletePacks: p(`DELETE FROM packs WHERE id IN ${IDS}`),
      deleteBlobs: p(`DELETE FROM blobs WHERE id IN ${IDS}`),
      countBlobs: p(
        `SELECT coalesce(sum(type = 0), 0) AS chunks, coalesce(sum(type = 1), 0) AS trees,
                coalesce(sum(raw_length), 0) AS rawBytes, coalesce(sum(length), 0) AS storedBytes
         FROM blobs`,
      ),
      addSnapshot: p(
        `INSERT INTO snapshots (${SNAP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
      ),
      getSnapshot: p(`SELECT ${SNAP_COLS} FROM snapshots WHERE id = ?`),
      findSnapshots: p(`SELECT ${SNAP_COLS} FROM snapshots WHERE id BETWEEN ? AND ? ORDER BY time, id`),
      listSnapshots: p(`SELECT ${SNAP_COLS} FROM snapshots ORDER BY time, id`),
      listSnapshotsTagged: p(
        `SELECT ${SNAP_COLS} FROM snapshots
         WHERE EXISTS (SELECT 1 FROM json_each(snapshots.tags) t WHERE t.value = ?) ORDER BY time, id`,
      ),
      removeSnapshots: p(`DELETE FROM snapshots WHERE id IN ${IDS}`),
      clearMarks: p("DELETE FROM marks"),
      // RETURNING reports only rows actually inserted, i.e. the newly marked ids.
      mark: p(`INSERT INTO marks (id) SELECT unhex(value) FROM json_each(?) WHERE true
               ON CONFLICT (id) DO NOTHING RETURNING id`).pluck(),
      // packUsage: one scan of blobs, aggregated per pack into a TEMP table
      // (never fsynced; better-sqlite3 cannot keep a statement open across
      // the caller's other queries), then paged in pack id order.
      clearUsage: p("DELETE FROM pack_usage"),
      fillUsage: p(
        `INSERT INTO pack_usage (pack, blob_count, used_count, used_bytes)
         SELECT b.pack, count(*), count(m.id), coalesce(sum(CASE WHEN m.id IS NOT NULL THEN b.length END), 0)
         FROM blobs b LEFT JOIN marks m ON m.id = b.id
         GROUP BY b.pack`,
      ),
      packUsage: p(
        `SELECT p.id AS id, p.size AS size, coalesce(u.blob_count, 0) AS blob_count,
                coalesce(u.used_count, 0) AS used_count, coalesce(u.used_bytes, 0) AS used_bytes
         FROM packs p LEFT JOIN pack_usage u ON u.pack = p.seq
         WHERE p.id > ? ORDER BY p.id LIMIT ?`,
      ),
      markedBlobs: p("SELECT m.id FROM json_each(?) j CROSS JOIN marks m ON m.id = unhex(j.value)").pluck(),
      dropExpiredLeases: p("DELETE FROM leases WHERE name = ? AND expires_at <= ?"),
      otherLeases: p("SELECT mode FROM leases WHERE name = ? AND holder <> ?").pluck(),
      putLease: p(
        `INSERT INTO leases (name, holder, mode, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (name, holder) DO UPDATE SET
           mode = excluded.mode, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at`,
      ),
      renewLease: p("UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND expires_at > ?"),
      releaseLease: p("DELETE FROM leases WHERE name = ? AND holder = ?"),
      listLeases: p(
        "SELECT name, holder, mode, acquired_at, expires_at FROM leases WHERE expires_at > ? ORDER BY name, holder",
      ),
      getMeta: p("SELECT value FROM meta WHERE key = ?").pluck(),
      setMeta: p(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      ),
    };

    const s = this.s;
    const addPack = db.transaction((pack: PackRecord, entries: readonly IndexEntry[]) => {
      // Already recorded: change nothing (the first addPack wrote its entries in the same transaction).
      if (s.insertPack!.run(...packParams(pack)).changes === 0) return;
      const seq = s.packSeq!.get(idBytes(pack.id)) as number;
      for (const e of entries) s.insertEntry!.run(...entryParams(e, seq));
    });
    this.txAddPack = (pack, entries) => addPack.immediate(pack, entries);
    const moveBlobs = db.transaction((pack: PackRecord, entries: readonly IndexEntry[]) => {
      s.insertPack!.run(...packParams(pack));
      const seq = s.packSeq!.get(idBytes(pack.id)) as number;
      for (const e of entries) s.upsertEntry!.run(...entryParams(e, seq));
    });
    this.txMoveBlobs = (pack, entries) => moveBlobs.immediate(pack, entries);
    const removePacks = db.transaction((json: string) => {
      s.deleteEntriesOfPacks!.run(json);
      s.deletePacks!.run(json);
    });
    this.txRemovePacks = (json) => removePacks.immediate(json);
    const acquire = db.transaction((l: LeaseRecord, now: number): boolean => {
      s.dropExpiredLeases!.run(l.name, now);
      const others = s.otherLeases!.all(l.name, l.holder) as string[];
      if (others.length > 0 && (l.mode === "exclusive" || others.includes("exclusive"))) return false;
      s.putLease!.run(l.name, l.holder, l.mode, l.acquiredAt.getTime(), l.expiresAt.getTime());
      return true;
    });
    this.txAcquire = (l, now) => acquire.immediate(l, now);
    // Deferred: only the temp table is written, and readers see one snapshot of blobs.
    this.txFillUsage = db.transaction(() => {
      s.clearUsage!.run();
      s.fillUsage!.run();
    });
  }

  async addPack(pack: PackRecord, entries: IndexEntry[]): Promise<void> {
    checkEntries(pack, entries);
    this.txAddPack(pack, entries);
  }

  async hasBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>> {
    if (ids.length === 0) return new Set();
    const rows = this.s.hasBlobs!.all(idsJson(ids)) as Buffer[];
    return new Set(rows.map((b) => hexId<BlobId>(b)));
  }

  async addPins(holder: string, ids: readonly BlobId[]): Promise<void> {
    if (ids.length) this.s.addPins!.run(holder, idsJson(ids));
  }

  async pinned(holder: string, ids: readonly BlobId[]): Promise<Set<BlobId>> {
    if (ids.length === 0) return new Set();
    return new Set((this.s.pinned!.all(idsJson(ids), holder) as Buffer[]).map((b) => hexId<BlobId>(b)));
  }

  async removePins(holder: string): Promise<void> {
    this.s.removePins!.run(holder);
  }

  async *listPins(): AsyncIterable<BlobId[]> {
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const rows = this.s.listPins!.all(after, PAGE_SIZE) as Buffer[];
      if (rows.length) yield rows.map((b) => hexId<BlobId>(b));
      if (rows.length < PAGE_SIZE) return;
      after = rows[rows.length - 1]!;
    }
  }

  async lookupBlobs(ids: readonly BlobId[]): Promise<Map<BlobId, IndexEntry>> {
    const out = new Map<BlobId, IndexEntry>();
    if (ids.length === 0) return out;
    type Row = [
      key: number,
      type: number,
      pack: number,
      offset: number,
      length: number,
      raw: number,
      compressed: number,
    ];
    const rows = this.s.lookupBlobs!.all(idsJson(ids)) as Row[];
    const seqs = [...new Set(rows.map((r) => r[2]))];
    const packs = new Map(this.s.packIdsOf!.all(JSON.stringify(seqs)) as [number, PackId][]);
    for (const [key, type, pack, offset, length, rawLength, compressed] of rows) {
      const id = ids[key]!;
      out.set(id, {
        id,
        type: blobTypeName(type),
        packId: packs.get(pack)!,
        offset,
        length,
        rawLength,
        compressed: compressed !== 0,
      });
    }
    return out;
  }

  async getPack(id: PackId): Promise<PackRecord | null> {
    const r = this.s.getPack!.get(idBytes(id)) as PackRow | undefined;
    return r ? toPack(r) : null;
  }

  async *listPacks(): AsyncIterable<PackRecord> {
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const rows = this.s.listPacks!.all(after, PAGE_SIZE) as PackRow[];
      for (const r of rows) yield toPack(r);
      if (rows.length < PAGE_SIZE) return;
      after = rows[rows.length - 1]!.id;
    }
  }

  async packLayout(packId: PackId, ids: readonly BlobId[]): Promise<Buffer> {
    if (ids.length === 0) return Buffer.alloc(0);
    return encodePackLayout(
      this.s.packLayout!.all(idsJson(ids), idBytes(packId)) as [Buffer, number, number][],
    );
  }

  async missingBlobs(ids: readonly BlobId[]): Promise<BlobId[]> {
    if (ids.length === 0) return [];
    return this.s.missingBlobs!.all(idsJson(ids)) as BlobId[];
  }

  async packEntries(packIds: readonly PackId[]): Promise<IndexEntry[]> {
    if (packIds.length === 0) return [];
    return (this.s.packEntries!.all(idsJson(packIds)) as BlobRow[]).map(toEntry);
  }

  /**
   * Records `newPack` (if new) and points every entry at it. Entries whose id
   * is not indexed (any more) are inserted: the blob is in the new pack, so
   * indexing it is true, and it keeps repack safe against a concurrent removeBlobs.
   */
  async moveBlobs(newPack: PackRecord, entries: IndexEntry[]): Promise<void> {
    checkEntries(newPack, entries);
    this.txMoveBlobs(newPack, entries);
  }

  /** Dooms active packs; a pack already doomed keeps its original doomedAt (the grace period is not restarted). */
  async markPacksDoomed(ids: readonly PackId[], at: Date): Promise<void> {
    if (ids.length === 0) return;
    this.s.doom!.run(at.getTime(), idsJson(ids));
  }

  async revivePacks(ids: readonly PackId[]): Promise<void> {
    if (ids.length === 0) return;
    this.s.revive!.run(idsJson(ids));
  }

  async removePacks(ids: readonly PackId[]): Promise<void> {
    if (ids.length === 0) return;
    this.txRemovePacks(idsJson(ids));
  }

  async removeBlobs(ids: readonly BlobId[]): Promise<void> {
    if (ids.length === 0) return;
    this.s.deleteBlobs!.run(idsJson(ids));
  }

  async countBlobs(): Promise<{ chunks: number; trees: number; rawBytes: number; storedBytes: number }> {
    const r = this.s.countBlobs!.get() as {
      chunks: number;
      trees: number;
      rawBytes: number;
      storedBytes: number;
    };
    return { chunks: r.chunks, trees: r.trees, rawBytes: r.rawBytes, storedBytes: r.storedBytes };
  }

  /** Idempotent: a snapshot id is the hash of its record, so re-adding it changes nothing. */
  async addSnapshot(sn: SnapshotRecord): Promise<void> {
    this.s.addSnapshot!.run(
      idBytes(sn.id),
      sn.time.getTime(),
      sn.hostname,
      JSON.stringify(sn.paths),
      JSON.stringify(sn.tags),
      idBytes(sn.tree),
      sn.parent === null ? null : idBytes(sn.parent),
      sn.kind,
      JSON.stringify(sn.stats),
    );
  }

  async getSnapshot(id: SnapshotId): Promise<SnapshotRecord | null> {
    const r = this.s.getSnapshot!.get(idBytes(id)) as SnapshotRow | undefined;
    return r ? toSnapshot(r) : null;
  }

  /** Ordered by time (then id). A non-hex prefix matches nothing. */
  async findSnapshots(prefix: string): Promise<SnapshotRecord[]> {
    const range = prefixRange(prefix);
    if (!range) return [];
    return (this.s.findSnapshots!.all(range[0], range[1]) as SnapshotRow[]).map(toSnapshot);
  }

  async listSnapshots(filter: { tag?: string } = {}): Promise<SnapshotRecord[]> {
    const rows =
      filter.tag === undefined ? this.s.listSnapshots!.all() : this.s.listSnapshotsTagged!.all(filter.tag);
    return (rows as SnapshotRow[]).map(toSnapshot);
  }

  async removeSnapshots(ids: readonly SnapshotId[]): Promise<void> {
    if (ids.length === 0) return;
    this.s.removeSnapshots!.run(idsJson(ids));
  }

  async beginMark(): Promise<void> {
    this.s.clearMarks!.run();
  }

  async mark(ids: readonly BlobId[]): Promise<BlobId[]> {
    if (ids.length === 0) return [];
    return (this.s.mark!.all(idsJson(ids)) as Buffer[]).map((b) => hexId<BlobId>(b));
  }

  /**
   * Every pack (active and doomed), in id order, paged. blobCount is the number
   * of index entries pointing into the pack (a pack whose blobs all lost
   * first-writer-wins, or were removed, reports 0); size is the pack's size.
   * The counts are taken once, when iteration starts (one scan of blobs); one
   * iteration at a time per catalog (prune and check hold the marks lease).
   */
  async *packUsage(): AsyncIterable<PackUsage> {
    this.txFillUsage();
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const rows = this.s.packUsage!.all(after, PAGE_SIZE) as {
        id: Buffer;
        size: number;
        blob_count: number;
        used_count: number;
        used_bytes: number;
      }[];
      for (const r of rows) {
        yield {
          packId: hexId<PackId>(r.id),
          blobCount: r.blob_count,
          usedCount: r.used_count,
          size: r.size,
          usedBytes: r.used_bytes,
        };
      }
      if (rows.length < PAGE_SIZE) return;
      after = rows[rows.length - 1]!.id;
    }
  }

  async markedBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>> {
    if (ids.length === 0) return new Set();
    return new Set((this.s.markedBlobs!.all(idsJson(ids)) as Buffer[]).map((b) => hexId<BlobId>(b)));
  }

  async endMark(): Promise<void> {
    this.s.clearMarks!.run();
  }

  async acquireLease(l: LeaseRecord, now: Date): Promise<boolean> {
    return this.txAcquire(l, now.getTime());
  }

  /** True when the holder's row still exists (not released, and not replaced after expiring). */
  async renewLease(name: string, holder: string, expiresAt: Date, now: Date): Promise<boolean> {
    return this.s.renewLease!.run(expiresAt.getTime(), name, holder, now.getTime()).changes > 0;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    this.s.releaseLease!.run(name, holder);
  }

  async listLeases(now: Date): Promise<LeaseRecord[]> {
    return (this.s.listLeases!.all(now.getTime()) as LeaseRow[]).map(toLease);
  }

  async getMeta(key: string): Promise<string | null> {
    const v = this.s.getMeta!.get(key) as string | undefined;
    return v ?? null;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.s.setMeta!.run(key, value);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/** Catalogs larger than this are not read ahead by `warm`. */
const WARM_MAX_BYTES = 256 * 1024 * 1024;
/** `warm` reads the file again only this long after it last started to. */
const WARM_AGAIN_MS = 60_000;

/** Read `file` to the end in 1 MiB pieces into one scratch buffer; errors are ignored. */
async function warmFile(file: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(file, "r");
    const { size } = await fh.stat();
    if (size > WARM_MAX_BYTES) return;
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (let pos = 0; pos < size; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      pos += bytesRead;
    }
  } catch {
    // Only a hint.
  } finally {
    await fh?.close().catch(() => {});
  }
}

/** Open (creating if needed) a SQLite catalog file and bring its schema up to date. */
export async function openSqliteCatalog(path: string): Promise<SqliteCatalog> {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  let db: Db;
  try {
    db = new Database(path);
  } catch (e) {
    throw new StrataError("IO_ERROR", `cannot open catalog ${path}: ${(e as Error).message}`, {
      subject: path,
      cause: e,
    });
  }
  try {
    db.pragma("busy_timeout = 10000");
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("foreign_keys = ON");
    migrate(db);
    // The mark set lives in a TEMP table that shadows `marks`: it is only
    // used by the one process holding the exclusive "marks" lease, and temp
    // tables are never fsynced — marking a large repository would otherwise
    // pay one synchronous commit per tree.
    db.exec("CREATE TEMP TABLE IF NOT EXISTS marks (id BLOB PRIMARY KEY) WITHOUT ROWID");
    // packUsage's per-pack aggregate (see there); pack = packs.seq.
    db.exec(`CREATE TEMP TABLE IF NOT EXISTS pack_usage (
      pack INTEGER PRIMARY KEY, blob_count INTEGER NOT NULL, used_count INTEGER NOT NULL, used_bytes INTEGER NOT NULL)`);
    return new SqliteCatalog(db, path);
  } catch (e) {
    db.close();
    throw e;
  }
}
