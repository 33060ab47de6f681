import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { StrataError } from "@strata/core";
import type { CachedDir, FileCache } from "@strata/repo";
import Database from "better-sqlite3";

/** Buffered writes (puts + touches) flushed in one transaction. */
export const FILE_CACHE_FLUSH_EVERY = 1000;
/**
 * …or sooner, once the buffered rows hold this many bytes: a row is a whole
 * directory (2,000 files make about 250 KB), so a count alone would buffer
 * the cache of a 1M-file endpoint (500 such rows, ~120 MB) until endRun.
 */
export const FILE_CACHE_FLUSH_BYTES = 8 * 1024 * 1024;

const SCHEMA_VERSION = 1;

/**
 * The backup client's directory cache in a local SQLite file.
 *
 * Runs and generations: `beginRun` bumps a generation number stored in the
 * file; a directory is *seen* in this run when it is read with `getDir`
 * (found) or written with `putDir` — so a caller that reuses an unchanged
 * directory's cached entry does not have to write it back. `endRun` deletes
 * every row not seen in this run (vanished directories), except after a
 * partial run (`endRun({ sweep: false })`: a hinted upload that read only
 * the directories that changed).
 *
 * Speed and durability: statements are prepared once; writes (new data and
 * "seen" generation bumps) are buffered in memory and flushed in one
 * transaction every FILE_CACHE_FLUSH_EVERY operations or FILE_CACHE_FLUSH_BYTES
 * of row data, whichever comes first, and on beginRun, endRun and close
 * (memory stays bounded whatever the directories' sizes). `getDir` reads its own buffered writes. WAL with
 * synchronous=NORMAL: a crash or power loss loses at most the last buffered
 * or un-synced rows, which only costs re-reading those files next time; and
 * without endRun nothing is deleted.
 *
 * The CLI keeps one cache file per set of backed-up paths, so backups of
 * different paths do not evict each other's rows. Two processes may share a
 * file (SQLite serializes them); they only lose efficiency, never safety,
 * because the backup verifies every hit against the index.
 */
export class SqliteFileCache implements FileCache {
  readonly path: string;
  private readonly db: Database.Database;
  private gen: number;
  private inRun = false;
  /** Pending puts, keyed by the path bytes as latin1 (a lossless byte↔string mapping). */
  private readonly puts = new Map<string, Buffer>();
  /** Bytes of row data in `puts`. */
  private putBytes = 0;
  /** Rows found by getDir with an older generation: bump on flush. */
  private readonly touches = new Set<string>();
  private readonly stGet: Database.Statement;
  private readonly stPut: Database.Statement;
  private readonly stTouch: Database.Statement;
  private readonly stSweep: Database.Statement;
  private readonly stSetGen: Database.Statement;
  private readonly flushTx: () => void;

  constructor(db: Database.Database, path: string) {
    this.db = db;
    this.path = path;
    this.gen = Number(db.prepare("SELECT value FROM cache_meta WHERE key = 'gen'").pluck().get() ?? 0);
    this.stGet = db.prepare("SELECT data, gen FROM dirs WHERE path = ?");
    this.stPut = db.prepare(
      "INSERT INTO dirs (path, data, gen) VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE SET data = excluded.data, gen = excluded.gen",
    );
    this.stTouch = db.prepare("UPDATE dirs SET gen = ? WHERE path = ?");
    this.stSweep = db.prepare("DELETE FROM dirs WHERE gen <> ?");
    this.stSetGen = db.prepare(
      "INSERT INTO cache_meta (key, value) VALUES ('gen', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    );
    this.flushTx = db.transaction(() => {
      for (const [k, data] of this.puts) this.stPut.run(Buffer.from(k, "latin1"), data, this.gen);
      for (const k of this.touches) this.stTouch.run(this.gen, Buffer.from(k, "latin1"));
    });
  }

  getDir(dir: Buffer): CachedDir | null {
    const k = dir.toString("latin1");
    const pending = this.puts.get(k);
    if (pending) return { data: pending, gen: this.gen };
    const row = this.stGet.get(dir) as { data: Buffer; gen: number } | undefined;
    if (!row) return null;
    if (row.gen !== this.gen) {
      this.touches.add(k);
      this.maybeFlush();
    }
    return { data: row.data, gen: row.gen };
  }

  putDir(dir: Buffer, value: CachedDir): void {
    const k = dir.toString("latin1");
    // Copy: the caller may reuse its buffer before the flush.
    const data = Buffer.from(value.data);
    this.putBytes += data.length - (this.puts.get(k)?.length ?? 0);
    this.puts.set(k, data);
    this.touches.delete(k);
    this.maybeFlush();
  }

  beginRun(): void {
    this.flush();
    this.gen += 1;
    this.stSetGen.run(this.gen);
    this.inRun = true;
  }

  endRun(opts: { sweep?: boolean } = {}): void {
    this.flush();
    if (this.inRun) {
      if (opts.sweep !== false) this.stSweep.run(this.gen);
      this.setMeta("completed_gen", String(this.gen));
    }
    this.inRun = false;
  }

  completedGen(): number {
    return Number(this.getMeta("completed_gen") ?? 0);
  }

  getMeta(key: string): string | null {
    // cache_meta.value has integer affinity (it holds the generation): a
    // numeric-looking string comes back as a number.
    const v = this.db.prepare("SELECT value FROM cache_meta WHERE key = ?").pluck().get(key) as
      | string
      | number
      | undefined;
    return v === undefined || v === null ? null : String(v);
  }

  setMeta(key: string, value: string): void {
    this.db
      .prepare(
        "INSERT INTO cache_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      )
      .run(key, value);
  }

  /** Write buffered puts and touches now. */
  flush(): void {
    if (this.puts.size === 0 && this.touches.size === 0) return;
    this.flushTx();
    this.puts.clear();
    this.putBytes = 0;
    this.touches.clear();
  }

  /** Rows and bytes of row data written but not flushed yet (bounded: see FILE_CACHE_FLUSH_BYTES). */
  get buffered(): { rows: number; bytes: number } {
    return { rows: this.puts.size + this.touches.size, bytes: this.putBytes };
  }

  close(): void {
    if (!this.db.open) return;
    try {
      this.flush();
    } finally {
      this.db.close();
    }
  }

  private maybeFlush(): void {
    if (
      this.puts.size + this.touches.size >= FILE_CACHE_FLUSH_EVERY ||
      this.putBytes >= FILE_CACHE_FLUSH_BYTES
    )
      this.flush();
  }
}

export function openSqliteFileCache(path: string): SqliteFileCache {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  let db: Database.Database;
  try {
    db = new Database(path);
  } catch (e) {
    throw new StrataError("IO_ERROR", `cannot open file cache ${path}: ${(e as Error).message}`, {
      subject: path,
      cause: e,
    });
  }
  try {
    db.pragma("busy_timeout = 5000");
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    const version = Number(db.pragma("user_version", { simple: true }));
    if (version > SCHEMA_VERSION) {
      throw new StrataError("CONFIG_INVALID", `file cache ${path} was written by a newer strata`, {
        subject: path,
        hint: "delete the cache file; it is rebuilt by the next backup",
      });
    }
    if (version < SCHEMA_VERSION) {
      db.transaction(() => {
        // path: raw directory path bytes (not necessarily UTF-8); data: the
        // repository's opaque encoding; gen: run generation that last saw it.
        db.exec(`CREATE TABLE IF NOT EXISTS dirs (
                   path BLOB    NOT NULL PRIMARY KEY,
                   data BLOB    NOT NULL,
                   gen  INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS cache_meta (
                   key   TEXT    NOT NULL PRIMARY KEY,
                   value INTEGER NOT NULL
                 ) WITHOUT ROWID;`);
        db.pragma(`user_version = ${SCHEMA_VERSION}`);
      }).immediate();
    }
    return new SqliteFileCache(db, path);
  } catch (e) {
    db.close();
    throw e;
  }
}
