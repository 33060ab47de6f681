/**
 * Upload sessions of the agent protocol (docs/design/protocol.md, "Upload
 * session"): one row per session, the trees it uploaded by path, and its
 * counters. Every piece of protocol state lives here, so any server node
 * can serve any request of a session. The chunks a session possesses are
 * pins in the repository catalog (RepoCatalog.addPins), where prune sees
 * them.
 */
import type { SnapshotId, TreeId } from "@strata/core";
import Database from "better-sqlite3";
import type pg from "pg";
import { hexId, idBytes } from "./common.js";
import { type PostgresCatalog, withTransaction } from "./postgres.js";
import { openSqliteCatalog } from "./sqlite.js";

export type UploadState = "open" | "committed" | "aborted" | "expired";

export interface UploadCounters {
  chunksSent: number;
  chunksProven: number;
  treesUploaded: number;
  bytesReceived: number;
  failedProofs: number;
  resumes: number;
}

export interface UploadSessionRecord extends UploadCounters {
  id: string;
  cvdId: string;
  parent: SnapshotId | null;
  nonce: Buffer;
  kind: string;
  state: UploadState;
  idempotencyKey: string | null;
  createdAt: Date;
  updatedAt: Date;
  expiresAt: Date;
  finishedAt: Date | null;
  snapshot: SnapshotId | null;
  /** The agent's report at commit (stats, errors); never trusted for decisions. */
  report: unknown;
}

export interface TreeAtPath {
  /** SHA-256 of the raw snapshot path. */
  pathHash: Buffer;
  tree: TreeId;
}

export interface UploadStore {
  /** Insert an open session; false when the CVD already has an open one. */
  createSession(r: UploadSessionRecord): Promise<boolean>;
  getSession(id: string): Promise<UploadSessionRecord | null>;
  openSessionOf(cvdId: string): Promise<UploadSessionRecord | null>;
  /** Add to the counters and extend the expiry of an open session. */
  touch(id: string, now: Date, expiresAt: Date, add: Partial<UploadCounters>): Promise<void>;
  addTrees(sessionId: string, trees: readonly TreeAtPath[]): Promise<void>;
  /** For each pair, whether the session uploaded that tree at that path. */
  hasTrees(sessionId: string, trees: readonly TreeAtPath[]): Promise<boolean[]>;
  /** Close a session (committed, aborted or expired) and drop its per-path trees. */
  finish(
    id: string,
    state: Exclude<UploadState, "open">,
    at: Date,
    snapshot: SnapshotId | null,
    report: unknown,
  ): Promise<void>;
  /** Sessions of a CVD, newest first: the transaction log. */
  listSessions(cvdId: string, limit: number): Promise<UploadSessionRecord[]>;
  /** Open sessions whose expiry is before `now`. */
  expiredSessions(now: Date): Promise<UploadSessionRecord[]>;
  close(): Promise<void>;
}

const COLS = `id, cvd_id, parent, nonce, kind, state, idempotency_key, created_at, updated_at, expires_at,
  finished_at, snapshot, chunks_sent, chunks_proven, trees_uploaded, bytes_received, failed_proofs, resumes, report`;

interface Row {
  id: string;
  cvd_id: string;
  parent: Buffer | null;
  nonce: Buffer;
  kind: string;
  state: UploadState;
  idempotency_key: string | null;
  created_at: number | Date;
  updated_at: number | Date;
  expires_at: number | Date;
  finished_at: number | Date | null;
  snapshot: Buffer | null;
  chunks_sent: number | string;
  chunks_proven: number | string;
  trees_uploaded: number | string;
  bytes_received: number | string;
  failed_proofs: number | string;
  resumes: number | string;
  report: string | object | null;
}

const toDate = (v: number | Date) => (v instanceof Date ? v : new Date(v));

function toRecord(r: Row): UploadSessionRecord {
  return {
    id: r.id,
    cvdId: r.cvd_id,
    parent: r.parent ? hexId<SnapshotId>(r.parent) : null,
    nonce: Buffer.from(r.nonce),
    kind: r.kind,
    state: r.state,
    idempotencyKey: r.idempotency_key,
    createdAt: toDate(r.created_at),
    updatedAt: toDate(r.updated_at),
    expiresAt: toDate(r.expires_at),
    finishedAt: r.finished_at === null ? null : toDate(r.finished_at),
    snapshot: r.snapshot ? hexId<SnapshotId>(r.snapshot) : null,
    chunksSent: Number(r.chunks_sent),
    chunksProven: Number(r.chunks_proven),
    treesUploaded: Number(r.trees_uploaded),
    bytesReceived: Number(r.bytes_received),
    failedProofs: Number(r.failed_proofs),
    resumes: Number(r.resumes),
    report: typeof r.report === "string" ? JSON.parse(r.report) : r.report,
  };
}

const counters = (a: Partial<UploadCounters>) => [
  a.chunksSent ?? 0,
  a.chunksProven ?? 0,
  a.treesUploaded ?? 0,
  a.bytesReceived ?? 0,
  a.failedProofs ?? 0,
  a.resumes ?? 0,
];

function values(r: UploadSessionRecord, t: (d: Date) => number | Date): unknown[] {
  return [
    r.id,
    r.cvdId,
    r.parent ? idBytes(r.parent) : null,
    r.nonce,
    r.kind,
    r.state,
    r.idempotencyKey,
    t(r.createdAt),
    t(r.updatedAt),
    t(r.expiresAt),
    r.finishedAt ? t(r.finishedAt) : null,
    r.snapshot ? idBytes(r.snapshot) : null,
    ...counters(r),
    r.report === null || r.report === undefined ? null : JSON.stringify(r.report),
  ];
}

const pairsJson = (trees: readonly TreeAtPath[]) =>
  JSON.stringify(trees.map((t) => [t.pathHash.toString("hex"), t.tree]));

export class SqliteUploadStore implements UploadStore {
  private readonly db: Database.Database;
  constructor(db: Database.Database) {
    this.db = db;
  }

  async createSession(r: UploadSessionRecord): Promise<boolean> {
    try {
      this.db
        .prepare(`INSERT INTO upload_sessions (${COLS}) VALUES (${Array(19).fill("?").join(", ")})`)
        .run(...values(r, (d) => d.getTime()));
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === "SQLITE_CONSTRAINT_UNIQUE") return false;
      throw e;
    }
  }

  async getSession(id: string): Promise<UploadSessionRecord | null> {
    const r = this.db.prepare(`SELECT ${COLS} FROM upload_sessions WHERE id = ?`).get(id) as Row | undefined;
    return r ? toRecord(r) : null;
  }

  async openSessionOf(cvdId: string): Promise<UploadSessionRecord | null> {
    const r = this.db
      .prepare(`SELECT ${COLS} FROM upload_sessions WHERE cvd_id = ? AND state = 'open'`)
      .get(cvdId) as Row | undefined;
    return r ? toRecord(r) : null;
  }

  async touch(id: string, now: Date, expiresAt: Date, add: Partial<UploadCounters>): Promise<void> {
    this.db
      .prepare(
        `UPDATE upload_sessions SET updated_at = ?, expires_at = ?,
           chunks_sent = chunks_sent + ?, chunks_proven = chunks_proven + ?,
           trees_uploaded = trees_uploaded + ?, bytes_received = bytes_received + ?,
           failed_proofs = failed_proofs + ?, resumes = resumes + ?
         WHERE id = ? AND state = 'open'`,
      )
      .run(now.getTime(), expiresAt.getTime(), ...counters(add), id);
  }

  async addTrees(sessionId: string, trees: readonly TreeAtPath[]): Promise<void> {
    if (!trees.length) return;
    this.db
      .prepare(
        `INSERT INTO upload_trees (session_id, path_hash, tree)
         SELECT ?, unhex(j.value ->> 0), unhex(j.value ->> 1) FROM json_each(?) j WHERE true
         ON CONFLICT DO NOTHING`,
      )
      .run(sessionId, pairsJson(trees));
  }

  async hasTrees(sessionId: string, trees: readonly TreeAtPath[]): Promise<boolean[]> {
    if (!trees.length) return [];
    const found = new Set(
      (
        this.db
          .prepare(
            `SELECT j.key FROM json_each(?) j CROSS JOIN upload_trees u
               ON u.session_id = ? AND u.path_hash = unhex(j.value ->> 0) AND u.tree = unhex(j.value ->> 1)`,
          )
          .pluck()
          .all(pairsJson(trees), sessionId) as number[]
      ).map(Number),
    );
    return trees.map((_, i) => found.has(i));
  }

  async finish(
    id: string,
    state: Exclude<UploadState, "open">,
    at: Date,
    snapshot: SnapshotId | null,
    report: unknown,
  ): Promise<void> {
    this.db.transaction(() => {
      this.db
        .prepare(
          `UPDATE upload_sessions SET state = ?, finished_at = ?, updated_at = ?, snapshot = ?, report = ?
           WHERE id = ? AND state = 'open'`,
        )
        .run(
          state,
          at.getTime(),
          at.getTime(),
          snapshot ? idBytes(snapshot) : null,
          report === null || report === undefined ? null : JSON.stringify(report),
          id,
        );
      this.db.prepare("DELETE FROM upload_trees WHERE session_id = ?").run(id);
    })();
  }

  async listSessions(cvdId: string, limit: number): Promise<UploadSessionRecord[]> {
    return (
      this.db
        .prepare(`SELECT ${COLS} FROM upload_sessions WHERE cvd_id = ? ORDER BY created_at DESC, id LIMIT ?`)
        .all(cvdId, limit) as Row[]
    ).map(toRecord);
  }

  async expiredSessions(now: Date): Promise<UploadSessionRecord[]> {
    return (
      this.db
        .prepare(`SELECT ${COLS} FROM upload_sessions WHERE state = 'open' AND expires_at < ?`)
        .all(now.getTime()) as Row[]
    ).map(toRecord);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/** Open the upload tables of a SQLite catalog file (migrating it first). */
export async function openSqliteUploadStore(path: string): Promise<SqliteUploadStore> {
  await (await openSqliteCatalog(path)).close();
  const db = new Database(path);
  db.pragma("busy_timeout = 10000");
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  return new SqliteUploadStore(db);
}

/** The upload tables on PostgreSQL: shares the catalog's pool and schema. */
export class PostgresUploadStore implements UploadStore {
  private readonly pool: pg.Pool;
  constructor(catalog: PostgresCatalog) {
    this.pool = catalog.pool;
  }

  async createSession(r: UploadSessionRecord): Promise<boolean> {
    try {
      await this.pool.query(
        `INSERT INTO upload_sessions (${COLS}) VALUES (${Array.from({ length: 19 }, (_, i) => `$${i + 1}`).join(", ")})`,
        values(r, (d) => d),
      );
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === "23505") return false;
      throw e;
    }
  }

  async getSession(id: string): Promise<UploadSessionRecord | null> {
    const r = await this.pool.query<Row>(`SELECT ${COLS} FROM upload_sessions WHERE id = $1`, [id]);
    return r.rows[0] ? toRecord(r.rows[0]) : null;
  }

  async openSessionOf(cvdId: string): Promise<UploadSessionRecord | null> {
    const r = await this.pool.query<Row>(
      `SELECT ${COLS} FROM upload_sessions WHERE cvd_id = $1 AND state = 'open'`,
      [cvdId],
    );
    return r.rows[0] ? toRecord(r.rows[0]) : null;
  }

  async touch(id: string, now: Date, expiresAt: Date, add: Partial<UploadCounters>): Promise<void> {
    await this.pool.query(
      `UPDATE upload_sessions SET updated_at = $1, expires_at = $2,
         chunks_sent = chunks_sent + $3, chunks_proven = chunks_proven + $4,
         trees_uploaded = trees_uploaded + $5, bytes_received = bytes_received + $6,
         failed_proofs = failed_proofs + $7, resumes = resumes + $8
       WHERE id = $9 AND state = 'open'`,
      [now, expiresAt, ...counters(add), id],
    );
  }

  async addTrees(sessionId: string, trees: readonly TreeAtPath[]): Promise<void> {
    if (!trees.length) return;
    await this.pool.query(
      `INSERT INTO upload_trees (session_id, path_hash, tree)
       SELECT $1, p, t FROM unnest($2::bytea[], $3::bytea[]) AS x (p, t) ON CONFLICT DO NOTHING`,
      [sessionId, trees.map((t) => t.pathHash), trees.map((t) => idBytes(t.tree))],
    );
  }

  async hasTrees(sessionId: string, trees: readonly TreeAtPath[]): Promise<boolean[]> {
    if (!trees.length) return [];
    const r = await this.pool.query<{ i: number }>(
      `SELECT x.i FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS x (p, t, i)
       JOIN upload_trees u ON u.session_id = $1 AND u.path_hash = x.p AND u.tree = x.t`,
      [sessionId, trees.map((t) => t.pathHash), trees.map((t) => idBytes(t.tree))],
    );
    const found = new Set(r.rows.map((row) => Number(row.i) - 1));
    return trees.map((_, i) => found.has(i));
  }

  async finish(
    id: string,
    state: Exclude<UploadState, "open">,
    at: Date,
    snapshot: SnapshotId | null,
    report: unknown,
  ): Promise<void> {
    await withTransaction(this.pool, async (c) => {
      await c.query(
        `UPDATE upload_sessions SET state = $1, finished_at = $2, updated_at = $2, snapshot = $3, report = $4::jsonb
         WHERE id = $5 AND state = 'open'`,
        [
          state,
          at,
          snapshot ? idBytes(snapshot) : null,
          report === null || report === undefined ? null : JSON.stringify(report),
          id,
        ],
      );
      await c.query("DELETE FROM upload_trees WHERE session_id = $1", [id]);
    });
  }

  async listSessions(cvdId: string, limit: number): Promise<UploadSessionRecord[]> {
    const r = await this.pool.query<Row>(
      `SELECT ${COLS} FROM upload_sessions WHERE cvd_id = $1 ORDER BY created_at DESC, id LIMIT $2`,
      [cvdId, limit],
    );
    return r.rows.map(toRecord);
  }

  async expiredSessions(now: Date): Promise<UploadSessionRecord[]> {
    const r = await this.pool.query<Row>(
      `SELECT ${COLS} FROM upload_sessions WHERE state = 'open' AND expires_at < $1`,
      [now],
    );
    return r.rows.map(toRecord);
  }

  async close(): Promise<void> {
    // The pool belongs to the catalog.
  }
}
