import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
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
import type pg from "pg";
import type copyStreamsModule from "pg-copy-streams";
import {
  blobTypeCode,
  blobTypeName,
  hexId,
  idBytes,
  idsBytes,
  loadMigrations,
  PAGE_SIZE,
  prefixRange,
} from "./common.js";

type PoolClient = pg.PoolClient;

export interface PostgresCatalogOptions {
  /**
   * Schema holding the catalog tables (created if missing). Lets several
   * repositories — or test runs — share one database. Default: the
   * connection's search_path (normally `public`).
   */
  schema?: string;
  /** Pool size. Default 10. */
  maxConnections?: number;
}

/** Entry lists longer than this go through COPY into a temp table; shorter ones through one unnest() INSERT. */
export const COPY_THRESHOLD = 1000;

/** Advisory-lock class id ("Stra"); the second key is a hash of schema and lock name. */
const LOCK_CLASS = 0x53747261;

/*
 * Id lists are bound as one bytea[] parameter and matched with
 * `= ANY (SELECT unnest($n::bytea[]))`: the sub-select makes the planner run
 * a semi-join that probes the primary key per id. A bare `= ANY($n)` over
 * thousands of elements is often planned as a (parallel) sequential scan with
 * a hashed filter — about 6x slower on a 200k-row index in our measurement,
 * and worse as the index grows.
 */

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * pg and pg-copy-streams, loaded by the first `openPostgresCatalog`: every
 * `strata` command imports the catalog, and pg alone took ~0.1 s of each
 * start-up that never opens PostgreSQL.
 */
let pgLib: typeof pg;
let copyStreams: typeof copyStreamsModule;
async function loadPg(): Promise<void> {
  pgLib ??= (await import("pg")).default;
  copyStreams ??= (await import("pg-copy-streams")).default;
}

/** int8 as a JS number (counts, sizes and offsets stay far below 2^53); everything else as pg defaults. */
const TYPES = {
  getTypeParser: ((oid: number, format?: string) => {
    if (oid === 20 && format !== "binary") return (v: string) => Number(v);
    return pgLib.types.getTypeParser(oid, format as "text");
  }) as pg.CustomTypesConfig["getTypeParser"],
};

/** Index entry columns; `p` is the entry's pack (blobs.pack = packs.seq, migration 0005). */
const BLOB_COLS = `b.id, b.type, p.id AS pack_id, b."offset" AS "offset", b.length, b.raw_length, b.compressed`;
const PACK_COLS = "id, size, blob_count, created_at, state, doomed_at";
const SNAP_COLS = "id, time, hostname, paths, tags, tree, parent, kind, stats";
const BLOB_SET = `type = EXCLUDED.type, pack = EXCLUDED.pack, "offset" = EXCLUDED."offset",
  length = EXCLUDED.length, raw_length = EXCLUDED.raw_length, compressed = EXCLUDED.compressed`;
/**
 * First writer wins — unless the existing entry's pack is doomed: then
 * hasBlobs said "absent", the caller stored the blob again, and the new copy
 * must become the indexed one or prune would drop it with the old pack.
 */
const ON_CONFLICT_FIRST_WINS = `ON CONFLICT (id) DO UPDATE SET ${BLOB_SET}
  WHERE (SELECT p.state FROM packs p WHERE p.seq = blobs.pack) = 'doomed'`;
const ON_CONFLICT_MOVE = `ON CONFLICT (id) DO UPDATE SET ${BLOB_SET}`;

interface BlobRow {
  id: Buffer;
  type: number;
  pack_id: Buffer;
  offset: number;
  length: number;
  raw_length: number;
  compressed: boolean;
}
interface PackRow {
  id: Buffer;
  size: number;
  blob_count: number;
  created_at: Date;
  state: string;
  doomed_at: Date | null;
}
interface SnapshotRow {
  id: Buffer;
  time: Date;
  hostname: string;
  paths: string[];
  tags: string[];
  tree: Buffer;
  parent: Buffer | null;
  kind: string;
  stats: SnapshotRecord["stats"];
}
interface LeaseRow {
  name: string;
  holder: string;
  mode: string;
  acquired_at: Date;
  expires_at: Date;
}

function toEntry(r: BlobRow): IndexEntry {
  return {
    id: hexId<BlobId>(r.id),
    type: blobTypeName(r.type),
    packId: hexId<PackId>(r.pack_id),
    offset: r.offset,
    length: r.length,
    rawLength: r.raw_length,
    compressed: r.compressed,
  };
}
function toPack(r: PackRow): PackRecord {
  return {
    id: hexId<PackId>(r.id),
    size: r.size,
    blobCount: r.blob_count,
    createdAt: r.created_at,
    state: r.state === "doomed" ? "doomed" : "active",
    doomedAt: r.doomed_at,
  };
}
function toSnapshot(r: SnapshotRow): SnapshotRecord {
  return {
    id: hexId<SnapshotId>(r.id),
    time: r.time,
    hostname: r.hostname,
    paths: r.paths,
    tags: r.tags,
    tree: hexId<TreeId>(r.tree),
    parent: r.parent === null ? null : hexId<SnapshotId>(r.parent),
    kind: r.kind,
    stats: r.stats,
  };
}
function toLease(r: LeaseRow): LeaseRecord {
  return {
    name: r.name,
    holder: r.holder,
    mode: r.mode === "exclusive" ? "exclusive" : "shared",
    acquiredAt: r.acquired_at,
    expiresAt: r.expires_at,
  };
}

function packParams(p: PackRecord): unknown[] {
  return [idBytes(p.id), p.size, p.blobCount, p.createdAt, p.state, p.doomedAt];
}

/** Validates entries against their pack and drops repeated ids (first kept): one INSERT may not touch a row twice. */
function uniqueEntries(pack: PackRecord, entries: readonly IndexEntry[]): IndexEntry[] {
  const seen = new Set<string>();
  const out: IndexEntry[] = [];
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
    idBytes(e.id);
    blobTypeCode(e.type);
    if (seen.has(e.id)) continue;
    seen.add(e.id);
    out.push(e);
  }
  return out;
}

/** A URL with any password blanked, for error messages. */
function redact(url: string): string {
  return url.replace(/(\/\/[^:/?#@]*:)[^@/?#]*@/, "$1***@");
}

/**
 * The catalog on PostgreSQL, for server clusters: stateless nodes share it.
 * Every list-taking method is one statement over `= ANY (SELECT unnest($1::bytea[]))` or
 * `unnest(...)`; large entry lists are streamed with COPY.
 */
/**
 * Run `fn` in a transaction on one pooled connection: COMMIT on success,
 * ROLLBACK on error (a connection whose ROLLBACK fails is discarded, not
 * returned to the pool). `onRollback` runs before the ROLLBACK.
 */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (c: PoolClient) => Promise<T>,
  onRollback?: (c: PoolClient) => void,
): Promise<T> {
  const c = await pool.connect();
  let broken: Error | undefined;
  try {
    await c.query("BEGIN");
    const r = await fn(c);
    await c.query("COMMIT");
    return r;
  } catch (e) {
    onRollback?.(c);
    try {
      await c.query("ROLLBACK");
    } catch (e2) {
      broken = e2 as Error;
    }
    throw e;
  } finally {
    c.release(broken);
  }
}

export class PostgresCatalog implements RepoCatalog {
  readonly pool: pg.Pool;
  readonly schema: string | undefined;
  /** Pool clients that already created the session's COPY staging table. */
  private readonly staged = new WeakSet<PoolClient>();

  constructor(pool: pg.Pool, schema: string | undefined) {
    this.pool = pool;
    this.schema = schema;
  }

  private tx<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    // A rolled-back transaction may have created the staging table: forget it.
    return withTransaction(this.pool, fn, (c) => this.staged.delete(c));
  }

  private async q<R extends pg.QueryResultRow>(
    sql: string,
    params: unknown[] = [],
  ): Promise<pg.QueryResult<R>> {
    return this.pool.query<R>(sql, params);
  }

  /** Insert index entries for one pack; `onConflict` decides what happens to ids already indexed. */
  private async insertEntries(
    c: PoolClient,
    pack: PackRecord,
    entries: IndexEntry[],
    onConflict: string,
  ): Promise<void> {
    if (entries.length === 0) return;
    const seqRow = await c.query<{ seq: number }>("SELECT seq FROM packs WHERE id = $1", [idBytes(pack.id)]);
    const packSeq = seqRow.rows[0]!.seq;
    if (entries.length <= COPY_THRESHOLD) {
      await c.query(
        `INSERT INTO blobs (id, type, pack, "offset", length, raw_length, compressed)
         SELECT u.id, u.type, $1, u.off, u.len, u.raw, u.comp
         FROM unnest($2::bytea[], $3::smallint[], $4::int8[], $5::int4[], $6::int4[], $7::bool[])
           AS u (id, type, off, len, raw, comp)
         ${onConflict}`,
        [
          packSeq,
          entries.map((e) => idBytes(e.id)),
          entries.map((e) => blobTypeCode(e.type)),
          entries.map((e) => e.offset),
          entries.map((e) => e.length),
          entries.map((e) => e.rawLength),
          entries.map((e) => e.compressed),
        ],
      );
      return;
    }
    // COPY cannot resolve conflicts, so it fills a per-session temp table
    // (created once per pooled connection, emptied at commit: no catalog
    // churn from CREATE/DROP per call) and one INSERT … SELECT merges it.
    if (!this.staged.has(c)) {
      await c.query(
        `CREATE TEMP TABLE IF NOT EXISTS strata_blobs_in (
           id bytea NOT NULL, type smallint NOT NULL, "offset" int8 NOT NULL,
           length int4 NOT NULL, raw_length int4 NOT NULL, compressed bool NOT NULL
         ) ON COMMIT DELETE ROWS`,
      );
      this.staged.add(c);
    }
    const stream = c.query(
      copyStreams.from(
        `COPY pg_temp.strata_blobs_in (id, type, "offset", length, raw_length, compressed) FROM STDIN`,
      ),
    );
    function* lines(): Generator<string> {
      let buf = "";
      let n = 0;
      for (const e of entries) {
        // Text COPY format: a backslash must be doubled, so bytea hex is \\x….
        buf += `\\\\x${e.id}\t${blobTypeCode(e.type)}\t${e.offset}\t${e.length}\t${e.rawLength}\t${e.compressed ? "t" : "f"}\n`;
        if (++n === 1000) {
          yield buf;
          buf = "";
          n = 0;
        }
      }
      if (buf) yield buf;
    }
    await pipeline(Readable.from(lines()), stream);
    await c.query(
      `INSERT INTO blobs (id, type, pack, "offset", length, raw_length, compressed)
       SELECT s.id, s.type, $1, s."offset", s.length, s.raw_length, s.compressed FROM pg_temp.strata_blobs_in s
       ${onConflict}`,
      [packSeq],
    );
  }

  async addPack(pack: PackRecord, entries: IndexEntry[]): Promise<void> {
    const list = uniqueEntries(pack, entries);
    await this.tx(async (c) => {
      const r = await c.query(
        `INSERT INTO packs (${PACK_COLS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING`,
        packParams(pack),
      );
      // Already recorded: change nothing (its entries were written in the same transaction).
      if (r.rowCount === 0) return;
      await this.insertEntries(c, pack, list, ON_CONFLICT_FIRST_WINS);
    });
  }

  async hasBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>> {
    if (ids.length === 0) return new Set();
    const r = await this.q<{ id: Buffer }>(
      `SELECT b.id FROM blobs b JOIN packs p ON p.seq = b.pack
       WHERE b.id = ANY (SELECT unnest($1::bytea[])) AND p.state = 'active'`,
      [idsBytes(ids)],
    );
    return new Set(r.rows.map((row) => hexId<BlobId>(row.id)));
  }

  async addPins(holder: string, ids: readonly BlobId[]): Promise<void> {
    if (ids.length === 0) return;
    await this.q("INSERT INTO pins (holder, id) SELECT $1, unnest($2::bytea[]) ON CONFLICT DO NOTHING", [
      holder,
      idsBytes(ids),
    ]);
  }

  async pinned(holder: string, ids: readonly BlobId[]): Promise<Set<BlobId>> {
    if (ids.length === 0) return new Set();
    const r = await this.q<{ id: Buffer }>(
      "SELECT id FROM pins WHERE holder = $1 AND id = ANY (SELECT unnest($2::bytea[]))",
      [holder, idsBytes(ids)],
    );
    return new Set(r.rows.map((row) => hexId<BlobId>(row.id)));
  }

  async removePins(holder: string): Promise<void> {
    await this.q("DELETE FROM pins WHERE holder = $1", [holder]);
  }

  async *listPins(): AsyncIterable<BlobId[]> {
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const r = await this.q<{ id: Buffer }>(
        "SELECT DISTINCT id FROM pins WHERE id > $1 ORDER BY id LIMIT $2",
        [after, PAGE_SIZE],
      );
      if (r.rows.length) yield r.rows.map((row) => hexId<BlobId>(row.id));
      if (r.rows.length < PAGE_SIZE) return;
      after = r.rows[r.rows.length - 1]!.id;
    }
  }

  async lookupBlobs(ids: readonly BlobId[]): Promise<Map<BlobId, IndexEntry>> {
    const out = new Map<BlobId, IndexEntry>();
    if (ids.length === 0) return out;
    const r = await this.q<BlobRow>(
      `SELECT ${BLOB_COLS} FROM blobs b JOIN packs p ON p.seq = b.pack
       WHERE b.id = ANY (SELECT unnest($1::bytea[]))`,
      [idsBytes(ids)],
    );
    for (const row of r.rows) {
      const e = toEntry(row);
      out.set(e.id, e);
    }
    return out;
  }

  async getPack(id: PackId): Promise<PackRecord | null> {
    const r = await this.q<PackRow>(`SELECT ${PACK_COLS} FROM packs WHERE id = $1`, [idBytes(id)]);
    return r.rows[0] ? toPack(r.rows[0]) : null;
  }

  async *listPacks(): AsyncIterable<PackRecord> {
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const r = await this.q<PackRow>(`SELECT ${PACK_COLS} FROM packs WHERE id > $1 ORDER BY id LIMIT $2`, [
        after,
        PAGE_SIZE,
      ]);
      for (const row of r.rows) yield toPack(row);
      if (r.rows.length < PAGE_SIZE) return;
      after = r.rows[r.rows.length - 1]!.id;
    }
  }

  async packLayout(packId: PackId, ids: readonly BlobId[]): Promise<Buffer> {
    if (ids.length === 0) return Buffer.alloc(0);
    const r = await this.q<{ id: Buffer; offset: number; length: number }>(
      `SELECT b.id, b."offset", b.length FROM blobs b
       WHERE b.id = ANY (SELECT unnest($1::bytea[])) AND b.pack = (SELECT seq FROM packs WHERE id = $2)
       ORDER BY b."offset"`,
      [idsBytes(ids), idBytes(packId)],
    );
    return encodePackLayout(r.rows.map((x) => [x.id, Number(x.offset), Number(x.length)] as const));
  }

  async missingBlobs(ids: readonly BlobId[]): Promise<BlobId[]> {
    if (ids.length === 0) return [];
    const r = await this.q<{ id: string }>(
      `SELECT encode(x, 'hex') AS id FROM unnest($1::bytea[]) x
       WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = x)`,
      [idsBytes(ids)],
    );
    return r.rows.map((x) => x.id as BlobId);
  }

  /** One scan of blobs (no index on blobs.pack, migration 0009), hash-joined with the few packs. */
  async packEntries(packIds: readonly PackId[]): Promise<IndexEntry[]> {
    if (packIds.length === 0) return [];
    const r = await this.q<BlobRow>(
      `SELECT ${BLOB_COLS} FROM packs p JOIN blobs b ON b.pack = p.seq
       WHERE p.id = ANY (SELECT unnest($1::bytea[])) ORDER BY p.id, b."offset"`,
      [idsBytes(packIds)],
    );
    return r.rows.map(toEntry);
  }

  /**
   * Records `newPack` (if new) and points every entry at it. Entries whose id
   * is not indexed (any more) are inserted: the blob is in the new pack, so
   * indexing it is true, and it keeps repack safe against a concurrent removeBlobs.
   */
  async moveBlobs(newPack: PackRecord, entries: IndexEntry[]): Promise<void> {
    const list = uniqueEntries(newPack, entries);
    await this.tx(async (c) => {
      await c.query(
        `INSERT INTO packs (${PACK_COLS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING`,
        packParams(newPack),
      );
      await this.insertEntries(c, newPack, list, ON_CONFLICT_MOVE);
    });
  }

  /** Dooms active packs; a pack already doomed keeps its original doomedAt (the grace period is not restarted). */
  async markPacksDoomed(ids: readonly PackId[], at: Date): Promise<void> {
    if (ids.length === 0) return;
    await this.q(
      "UPDATE packs SET state = 'doomed', doomed_at = $1 WHERE state = 'active' AND id = ANY (SELECT unnest($2::bytea[]))",
      [at, idsBytes(ids)],
    );
  }

  async revivePacks(ids: readonly PackId[]): Promise<void> {
    if (ids.length === 0) return;
    await this.q(
      "UPDATE packs SET state = 'active', doomed_at = NULL WHERE id = ANY (SELECT unnest($1::bytea[]))",
      [idsBytes(ids)],
    );
  }

  /** One scan of blobs per call (no index on blobs.pack): callers batch. */
  async removePacks(ids: readonly PackId[]): Promise<void> {
    if (ids.length === 0) return;
    const bytes = idsBytes(ids);
    await this.tx(async (c) => {
      await c.query(
        "DELETE FROM blobs WHERE pack IN (SELECT seq FROM packs WHERE id = ANY (SELECT unnest($1::bytea[])))",
        [bytes],
      );
      await c.query("DELETE FROM packs WHERE id = ANY (SELECT unnest($1::bytea[]))", [bytes]);
    });
  }

  async removeBlobs(ids: readonly BlobId[]): Promise<void> {
    if (ids.length === 0) return;
    await this.q("DELETE FROM blobs WHERE id = ANY (SELECT unnest($1::bytea[]))", [idsBytes(ids)]);
  }

  async countBlobs(): Promise<{ chunks: number; trees: number; rawBytes: number; storedBytes: number }> {
    const r = await this.q<{ chunks: number; trees: number; raw_bytes: number; stored_bytes: number }>(
      `SELECT count(*) FILTER (WHERE type = 0)::int8 AS chunks, count(*) FILTER (WHERE type = 1)::int8 AS trees,
              coalesce(sum(raw_length), 0)::int8 AS raw_bytes, coalesce(sum(length), 0)::int8 AS stored_bytes
       FROM blobs`,
    );
    const row = r.rows[0]!;
    return { chunks: row.chunks, trees: row.trees, rawBytes: row.raw_bytes, storedBytes: row.stored_bytes };
  }

  /** Idempotent: a snapshot id is the hash of its record, so re-adding it changes nothing. */
  async addSnapshot(sn: SnapshotRecord): Promise<void> {
    await this.q(
      `INSERT INTO snapshots (${SNAP_COLS}) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8, $9::jsonb)
       ON CONFLICT (id) DO NOTHING`,
      [
        idBytes(sn.id),
        sn.time,
        sn.hostname,
        JSON.stringify(sn.paths),
        JSON.stringify(sn.tags),
        idBytes(sn.tree),
        sn.parent === null ? null : idBytes(sn.parent),
        sn.kind,
        JSON.stringify(sn.stats),
      ],
    );
  }

  async getSnapshot(id: SnapshotId): Promise<SnapshotRecord | null> {
    const r = await this.q<SnapshotRow>(`SELECT ${SNAP_COLS} FROM snapshots WHERE id = $1`, [idBytes(id)]);
    return r.rows[0] ? toSnapshot(r.rows[0]) : null;
  }

  /** Ordered by time (then id). A non-hex prefix matches nothing. */
  async findSnapshots(prefix: string): Promise<SnapshotRecord[]> {
    const range = prefixRange(prefix);
    if (!range) return [];
    const r = await this.q<SnapshotRow>(
      `SELECT ${SNAP_COLS} FROM snapshots WHERE id BETWEEN $1 AND $2 ORDER BY time, id`,
      range,
    );
    return r.rows.map(toSnapshot);
  }

  async listSnapshots(filter: { tag?: string } = {}): Promise<SnapshotRecord[]> {
    const r =
      filter.tag === undefined
        ? await this.q<SnapshotRow>(`SELECT ${SNAP_COLS} FROM snapshots ORDER BY time, id`)
        : await this.q<SnapshotRow>(`SELECT ${SNAP_COLS} FROM snapshots WHERE tags ? $1 ORDER BY time, id`, [
            filter.tag,
          ]);
    return r.rows.map(toSnapshot);
  }

  async removeSnapshots(ids: readonly SnapshotId[]): Promise<void> {
    if (ids.length === 0) return;
    await this.q("DELETE FROM snapshots WHERE id = ANY (SELECT unnest($1::bytea[]))", [idsBytes(ids)]);
  }

  async beginMark(): Promise<void> {
    await this.q("TRUNCATE marks");
  }

  async mark(ids: readonly BlobId[]): Promise<BlobId[]> {
    if (ids.length === 0) return [];
    // RETURNING reports only rows actually inserted, i.e. the newly marked ids.
    const r = await this.q<{ id: Buffer }>(
      "INSERT INTO marks (id) SELECT unnest($1::bytea[]) ON CONFLICT (id) DO NOTHING RETURNING id",
      [idsBytes(ids)],
    );
    return r.rows.map((row) => hexId<BlobId>(row.id));
  }

  /**
   * Every pack (active and doomed), in id order, paged. blobCount is the number
   * of index entries pointing into the pack (a pack whose blobs all lost
   * first-writer-wins, or were removed, reports 0); size is the pack's size.
   * One query — a single scan of blobs aggregated per pack — read through a
   * cursor, PAGE_SIZE rows at a time, in a read-only transaction on one
   * pooled connection held until the iteration ends.
   */
  async *packUsage(): AsyncIterable<PackUsage> {
    const c = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await c.query("BEGIN READ ONLY");
      await c.query(
        `DECLARE strata_pack_usage NO SCROLL CURSOR FOR
         SELECT p.id, p.size, coalesce(u.blob_count, 0)::int8 AS blob_count,
                coalesce(u.used_count, 0)::int8 AS used_count, coalesce(u.used_bytes, 0)::int8 AS used_bytes
         FROM packs p LEFT JOIN (
           SELECT b.pack, count(*) AS blob_count, count(m.id) AS used_count,
                  sum(b.length) FILTER (WHERE m.id IS NOT NULL) AS used_bytes
           FROM blobs b LEFT JOIN marks m ON m.id = b.id
           GROUP BY b.pack
         ) u ON u.pack = p.seq
         ORDER BY p.id`,
      );
      for (;;) {
        const r = await c.query<{
          id: Buffer;
          size: number;
          blob_count: number;
          used_count: number;
          used_bytes: number;
        }>(`FETCH ${PAGE_SIZE} FROM strata_pack_usage`);
        for (const row of r.rows) {
          yield {
            packId: hexId<PackId>(row.id),
            blobCount: row.blob_count,
            usedCount: row.used_count,
            size: row.size,
            usedBytes: row.used_bytes,
          };
        }
        if (r.rows.length < PAGE_SIZE) break;
      }
    } finally {
      try {
        await c.query("ROLLBACK");
      } catch (e) {
        broken = e as Error;
      }
      c.release(broken);
    }
  }

  async markedBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>> {
    if (ids.length === 0) return new Set();
    const r = await this.q<{ id: Buffer }>(
      "SELECT m.id FROM marks m WHERE m.id = ANY (SELECT unnest($1::bytea[]))",
      [idsBytes(ids)],
    );
    return new Set(r.rows.map((row) => hexId<BlobId>(row.id)));
  }

  async endMark(): Promise<void> {
    await this.q("TRUNCATE marks");
  }

  /** Serialized per (schema, name) by a transaction-scoped advisory lock, so check-then-insert is atomic across nodes. */
  async acquireLease(l: LeaseRecord, now: Date): Promise<boolean> {
    return this.tx(async (c) => {
      await c.query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema() || '/' || $2))", [
        LOCK_CLASS,
        l.name,
      ]);
      await c.query("DELETE FROM leases WHERE name = $1 AND expires_at <= $2", [l.name, now]);
      const others = await c.query<{ mode: string }>(
        "SELECT mode FROM leases WHERE name = $1 AND holder <> $2",
        [l.name, l.holder],
      );
      const modes = others.rows.map((r) => r.mode);
      if (modes.length > 0 && (l.mode === "exclusive" || modes.includes("exclusive"))) return false;
      await c.query(
        `INSERT INTO leases (name, holder, mode, acquired_at, expires_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name, holder) DO UPDATE SET
           mode = EXCLUDED.mode, acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at`,
        [l.name, l.holder, l.mode, l.acquiredAt, l.expiresAt],
      );
      return true;
    });
  }

  /** True when the holder's row still exists (not released, and not replaced after expiring). */
  async renewLease(name: string, holder: string, expiresAt: Date, now: Date): Promise<boolean> {
    const r = await this.q(
      "UPDATE leases SET expires_at = $1 WHERE name = $2 AND holder = $3 AND expires_at > $4",
      [expiresAt, name, holder, now],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    await this.q("DELETE FROM leases WHERE name = $1 AND holder = $2", [name, holder]);
  }

  async listLeases(now: Date): Promise<LeaseRecord[]> {
    const r = await this.q<LeaseRow>(
      `SELECT name, holder, mode, acquired_at, expires_at FROM leases WHERE expires_at > $1 ORDER BY name, holder`,
      [now],
    );
    return r.rows.map(toLease);
  }

  async getMeta(key: string): Promise<string | null> {
    const r = await this.q<{ value: string }>("SELECT value FROM meta WHERE key = $1", [key]);
    return r.rows[0]?.value ?? null;
  }

  async setMeta(key: string, value: string): Promise<void> {
    await this.q(
      "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
      [key, value],
    );
  }

  async close(): Promise<void> {
    if (!this.pool.ended) await this.pool.end();
  }
}

/**
 * Apply pending migrations in one transaction. A transaction-scoped advisory
 * lock serializes server nodes that start at the same time; the applied set
 * is read after taking it.
 */
async function migrate(pool: pg.Pool, schema: string | undefined): Promise<void> {
  const migrations = loadMigrations("postgres");
  const c = await pool.connect();
  let broken: Error | undefined;
  try {
    await c.query("BEGIN");
    await c.query("SELECT pg_advisory_xact_lock($1, hashtext($2))", [
      LOCK_CLASS,
      `migrate/${schema ?? "(search_path)"}`,
    ]);
    if (schema) {
      await c.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
      await c.query(`SET LOCAL search_path TO "${schema}"`);
    }
    await c.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version    integer     NOT NULL PRIMARY KEY,
      name       text        NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
    const applied = new Set(
      (await c.query<{ version: number }>("SELECT version FROM schema_migrations")).rows.map(
        (r) => r.version,
      ),
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
    for (const m of migrations) {
      if (applied.has(m.version)) continue;
      await c.query(m.sql);
      await c.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.name]);
    }
    await c.query("COMMIT");
  } catch (e) {
    try {
      await c.query("ROLLBACK");
    } catch (e2) {
      broken = e2 as Error;
    }
    throw e;
  } finally {
    c.release(broken);
  }
}

/** Connect to a PostgreSQL catalog and bring its schema up to date. */
export async function openPostgresCatalog(
  url: string,
  opts: PostgresCatalogOptions = {},
): Promise<PostgresCatalog> {
  const schema = opts.schema;
  if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
    throw new StrataError("INVALID_ARGUMENT", `invalid catalog schema name ${JSON.stringify(schema)}`, {
      hint: "use lowercase letters, digits and underscores",
    });
  }
  await loadPg();
  const pool = new pgLib.Pool({
    connectionString: url,
    max: opts.maxConnections ?? 10,
    types: TYPES,
    ...(schema ? { options: `-c search_path=${schema}` } : {}),
  });
  // An idle pooled client losing its connection must not crash the process; the next query reconnects.
  pool.on("error", () => {});
  try {
    await migrate(pool, schema);
  } catch (e) {
    await pool.end().catch(() => {});
    if (e instanceof StrataError) throw e;
    throw new StrataError(
      "IO_ERROR",
      `cannot open PostgreSQL catalog ${redact(url)}: ${(e as Error).message}`,
      {
        subject: redact(url),
        cause: e,
      },
    );
  }
  return new PostgresCatalog(pool, schema);
}
