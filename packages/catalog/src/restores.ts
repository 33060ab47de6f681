/**
 * Restore sessions and tasks (migration 0006_restores; docs/design/restore.md,
 * "Protocol" and "Tasks").
 *
 * A restore session is a transaction of kind restore: its row is all the
 * state the server keeps for it (grants are HMACs any node recomputes), so
 * any node serves any request of it. A task is a unit of endpoint work the
 * server queues (a revert, a recovery), with the agent's progress and the
 * final result.
 *
 * Contract (test/restore-contract.ts, run on SQLite and PostgreSQL):
 * - get* MUST return null, never throw, for a missing row.
 * - touchRestoreSession and closeRestoreSession change only open sessions;
 *   closeRestoreSession returns whether it closed one.
 * - createTask MUST throw ALREADY_EXISTS (naming the CVD) when the CVD
 *   already has a queued or running task, and leave the store unchanged.
 * - updateTask changes the task only when its state is one of `from` (a
 *   compare-and-set: two agents or an agent and a cancel never both win),
 *   and returns whether it did.
 * - list* answer newest first (created, then id).
 */
import { type SnapshotId, StrataError, type TreeId } from "@strata/core";
import Database from "better-sqlite3";
import type pg from "pg";
import { hexId, idBytes } from "./common.js";
import type { PostgresCatalog } from "./postgres.js";
import { openSqliteCatalog } from "./sqlite.js";

// ---- restore sessions -------------------------------------------------------

export type RestoreSessionState = "open" | "closed" | "expired";

export interface RestoreCounters {
  bytesSent: number;
  chunksSent: number;
  treesSent: number;
}

export interface RestoreSessionRecord extends RestoreCounters {
  /** `rs_…` */
  id: string;
  cvdId: string;
  snapshot: SnapshotId;
  /** The tree the session was opened on: the snapshot's root, or the directory `path` named. */
  root: TreeId;
  /** The path the session was opened with (null: the whole snapshot). */
  path: string | null;
  /** `endpoint:ep_…` or `user:NAME`. */
  openedBy: string;
  state: RestoreSessionState;
  createdAt: Date;
  updatedAt: Date;
  expiresAt: Date;
  closedAt: Date | null;
}

export interface RestoreSessionStore {
  createRestoreSession(r: RestoreSessionRecord): Promise<void>;
  getRestoreSession(id: string): Promise<RestoreSessionRecord | null>;
  /** Add to the counters and extend the expiry of an open session. */
  touchRestoreSession(id: string, now: Date, expiresAt: Date, add: Partial<RestoreCounters>): Promise<void>;
  /** Close an open session; false when it was not open. */
  closeRestoreSession(id: string, state: Exclude<RestoreSessionState, "open">, at: Date): Promise<boolean>;
  /** Sessions of a CVD, newest first. */
  listRestoreSessions(cvdId: string, limit: number): Promise<RestoreSessionRecord[]>;
  /** Open sessions whose expiry is before `now`. */
  expiredRestoreSessions(now: Date): Promise<RestoreSessionRecord[]>;
}

const RS_COLS = `id, cvd_id, snapshot, root, path, opened_by, state, created_at, updated_at, expires_at,
  closed_at, bytes_sent, chunks_sent, trees_sent`;

interface RsRow {
  id: string;
  cvd_id: string;
  snapshot: Buffer;
  root: Buffer;
  path: string | null;
  opened_by: string;
  state: RestoreSessionState;
  created_at: number | Date;
  updated_at: number | Date;
  expires_at: number | Date;
  closed_at: number | Date | null;
  bytes_sent: number | string;
  chunks_sent: number | string;
  trees_sent: number | string;
}

const toDate = (v: number | Date) => (v instanceof Date ? v : new Date(v));
const toDateOrNull = (v: number | Date | null) => (v === null ? null : toDate(v));

function toSession(r: RsRow): RestoreSessionRecord {
  return {
    id: r.id,
    cvdId: r.cvd_id,
    snapshot: hexId<SnapshotId>(r.snapshot),
    root: hexId<TreeId>(r.root),
    path: r.path,
    openedBy: r.opened_by,
    state: r.state,
    createdAt: toDate(r.created_at),
    updatedAt: toDate(r.updated_at),
    expiresAt: toDate(r.expires_at),
    closedAt: toDateOrNull(r.closed_at),
    bytesSent: Number(r.bytes_sent),
    chunksSent: Number(r.chunks_sent),
    treesSent: Number(r.trees_sent),
  };
}

function sessionValues(r: RestoreSessionRecord, t: (d: Date) => number | Date): unknown[] {
  return [
    r.id,
    r.cvdId,
    idBytes(r.snapshot),
    idBytes(r.root),
    r.path,
    r.openedBy,
    r.state,
    t(r.createdAt),
    t(r.updatedAt),
    t(r.expiresAt),
    r.closedAt ? t(r.closedAt) : null,
    r.bytesSent,
    r.chunksSent,
    r.treesSent,
  ];
}

const restoreCounters = (a: Partial<RestoreCounters>) => [
  a.bytesSent ?? 0,
  a.chunksSent ?? 0,
  a.treesSent ?? 0,
];

// ---- tasks -------------------------------------------------------------------

export const TASK_KINDS = ["system", "full", "recover", "files", "apply"] as const;
export type TaskKind = (typeof TASK_KINDS)[number];
export const TASK_STATES = ["queued", "running", "done", "failed", "cancelled"] as const;
export type TaskState = (typeof TASK_STATES)[number];

export interface TaskError {
  code: string;
  message: string;
}

export interface TaskRecord {
  /** `task_…` */
  id: string;
  cvdId: string;
  endpointId: string;
  kind: TaskKind;
  params: Record<string, unknown>;
  state: TaskState;
  /** The agent's last progress report (JSON), null before the first. */
  progress: Record<string, unknown> | null;
  result: Record<string, unknown> | null;
  error: TaskError | null;
  /** `user:NAME` (or `system`). */
  createdBy: string;
  createdAt: Date;
  updatedAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

export interface TaskFilter {
  cvdId?: string;
  endpointId?: string;
  states?: readonly TaskState[];
  /** At most this many, newest first. */
  limit: number;
}

/** What updateTask may change. `undefined` leaves a field as it is; `null` clears it. */
export interface TaskPatch {
  state?: TaskState;
  progress?: Record<string, unknown> | null;
  result?: Record<string, unknown> | null;
  error?: TaskError | null;
  startedAt?: Date | null;
  finishedAt?: Date | null;
}

export interface TaskStore {
  /** ALREADY_EXISTS when the CVD already has a queued or running task. */
  createTask(t: TaskRecord): Promise<void>;
  getTask(id: string): Promise<TaskRecord | null>;
  listTasks(filter: TaskFilter): Promise<TaskRecord[]>;
  /** Compare-and-set on the state: applies `patch` only when the task's state is one of `from`. */
  updateTask(id: string, from: readonly TaskState[], patch: TaskPatch, at: Date): Promise<boolean>;
}

const TASK_COLS = `id, cvd_id, endpoint_id, kind, params, state, progress, result, error, created_by,
  created_at, updated_at, started_at, finished_at`;

interface TaskRow {
  id: string;
  cvd_id: string;
  endpoint_id: string;
  kind: TaskKind;
  params: string | Record<string, unknown>;
  state: TaskState;
  progress: string | Record<string, unknown> | null;
  result: string | Record<string, unknown> | null;
  error: string | TaskError | null;
  created_by: string;
  created_at: number | Date;
  updated_at: number | Date;
  started_at: number | Date | null;
  finished_at: number | Date | null;
}

const json = <T>(v: string | T | null): T | null => (typeof v === "string" ? (JSON.parse(v) as T) : v);
const jsonText = (v: unknown) => (v === null || v === undefined ? null : JSON.stringify(v));

function toTask(r: TaskRow): TaskRecord {
  return {
    id: r.id,
    cvdId: r.cvd_id,
    endpointId: r.endpoint_id,
    kind: r.kind,
    params: json<Record<string, unknown>>(r.params) ?? {},
    state: r.state,
    progress: json(r.progress),
    result: json(r.result),
    error: json(r.error),
    createdBy: r.created_by,
    createdAt: toDate(r.created_at),
    updatedAt: toDate(r.updated_at),
    startedAt: toDateOrNull(r.started_at),
    finishedAt: toDateOrNull(r.finished_at),
  };
}

function taskValues(t: TaskRecord, d: (x: Date) => number | Date): unknown[] {
  return [
    t.id,
    t.cvdId,
    t.endpointId,
    t.kind,
    JSON.stringify(t.params ?? {}),
    t.state,
    jsonText(t.progress),
    jsonText(t.result),
    jsonText(t.error),
    t.createdBy,
    d(t.createdAt),
    d(t.updatedAt),
    t.startedAt ? d(t.startedAt) : null,
    t.finishedAt ? d(t.finishedAt) : null,
  ];
}

function activeTaskExists(cvdId: string): StrataError {
  return new StrataError("ALREADY_EXISTS", `CVD ${cvdId} already has a queued or running task`, {
    subject: cvdId,
    hint: "wait for it (`strata task list --cvd CVD`) or cancel it with `strata task cancel ID`",
  });
}

/** The SET clause of a TaskPatch: [sql fragments, values], columns in a fixed order. */
function patchColumns(p: TaskPatch, d: (x: Date) => number | Date): [string[], unknown[]] {
  const cols: string[] = [];
  const vals: unknown[] = [];
  const set = (col: string, v: unknown) => {
    cols.push(col);
    vals.push(v);
  };
  if (p.state !== undefined) set("state", p.state);
  if (p.progress !== undefined) set("progress", jsonText(p.progress));
  if (p.result !== undefined) set("result", jsonText(p.result));
  if (p.error !== undefined) set("error", jsonText(p.error));
  if (p.startedAt !== undefined) set("started_at", p.startedAt ? d(p.startedAt) : null);
  if (p.finishedAt !== undefined) set("finished_at", p.finishedAt ? d(p.finishedAt) : null);
  return [cols, vals];
}

// ---- SQLite --------------------------------------------------------------------

export class SqliteRestoreStore implements RestoreSessionStore {
  constructor(private readonly db: Database.Database) {}

  async createRestoreSession(r: RestoreSessionRecord): Promise<void> {
    this.db
      .prepare(`INSERT INTO restore_sessions (${RS_COLS}) VALUES (${Array(14).fill("?").join(", ")})`)
      .run(...sessionValues(r, (d) => d.getTime()));
  }

  async getRestoreSession(id: string): Promise<RestoreSessionRecord | null> {
    const r = this.db.prepare(`SELECT ${RS_COLS} FROM restore_sessions WHERE id = ?`).get(id) as
      | RsRow
      | undefined;
    return r ? toSession(r) : null;
  }

  async touchRestoreSession(
    id: string,
    now: Date,
    expiresAt: Date,
    add: Partial<RestoreCounters>,
  ): Promise<void> {
    this.db
      .prepare(
        `UPDATE restore_sessions SET updated_at = ?, expires_at = ?, bytes_sent = bytes_sent + ?,
           chunks_sent = chunks_sent + ?, trees_sent = trees_sent + ?
         WHERE id = ? AND state = 'open'`,
      )
      .run(now.getTime(), expiresAt.getTime(), ...restoreCounters(add), id);
  }

  async closeRestoreSession(id: string, state: "closed" | "expired", at: Date): Promise<boolean> {
    const r = this.db
      .prepare(
        `UPDATE restore_sessions SET state = ?, closed_at = ?, updated_at = ? WHERE id = ? AND state = 'open'`,
      )
      .run(state, at.getTime(), at.getTime(), id);
    return r.changes > 0;
  }

  async listRestoreSessions(cvdId: string, limit: number): Promise<RestoreSessionRecord[]> {
    return (
      this.db
        .prepare(
          `SELECT ${RS_COLS} FROM restore_sessions WHERE cvd_id = ? ORDER BY created_at DESC, id LIMIT ?`,
        )
        .all(cvdId, limit) as RsRow[]
    ).map(toSession);
  }

  async expiredRestoreSessions(now: Date): Promise<RestoreSessionRecord[]> {
    return (
      this.db
        .prepare(`SELECT ${RS_COLS} FROM restore_sessions WHERE state = 'open' AND expires_at < ?`)
        .all(now.getTime()) as RsRow[]
    ).map(toSession);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/** Open the restore-session table of a SQLite catalog file (migrating it first). */
export async function openSqliteRestoreStore(path: string): Promise<SqliteRestoreStore> {
  await (await openSqliteCatalog(path)).close();
  const db = new Database(path);
  db.pragma("busy_timeout = 10000");
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  return new SqliteRestoreStore(db);
}

export class SqliteTaskStore implements TaskStore {
  constructor(private readonly db: Database.Database) {}

  async createTask(t: TaskRecord): Promise<void> {
    try {
      this.db
        .prepare(`INSERT INTO tasks (${TASK_COLS}) VALUES (${Array(14).fill("?").join(", ")})`)
        .run(...taskValues(t, (d) => d.getTime()));
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "SQLITE_CONSTRAINT_UNIQUE") {
        if (this.db.prepare("SELECT 1 FROM tasks WHERE id = ?").get(t.id))
          throw new StrataError("ALREADY_EXISTS", `task ${t.id} exists`, { subject: t.id });
        throw activeTaskExists(t.cvdId);
      }
      throw e;
    }
  }

  async getTask(id: string): Promise<TaskRecord | null> {
    const r = this.db.prepare(`SELECT ${TASK_COLS} FROM tasks WHERE id = ?`).get(id) as TaskRow | undefined;
    return r ? toTask(r) : null;
  }

  async listTasks(f: TaskFilter): Promise<TaskRecord[]> {
    const where: string[] = [];
    const vals: unknown[] = [];
    if (f.cvdId !== undefined) {
      where.push("cvd_id = ?");
      vals.push(f.cvdId);
    }
    if (f.endpointId !== undefined) {
      where.push("endpoint_id = ?");
      vals.push(f.endpointId);
    }
    if (f.states) {
      if (!f.states.length) return [];
      where.push(`state IN (${f.states.map(() => "?").join(", ")})`);
      vals.push(...f.states);
    }
    const sql = `SELECT ${TASK_COLS} FROM tasks ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
      ORDER BY created_at DESC, id DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...vals, f.limit) as TaskRow[]).map(toTask);
  }

  async updateTask(id: string, from: readonly TaskState[], patch: TaskPatch, at: Date): Promise<boolean> {
    if (!from.length) return false;
    const [cols, vals] = patchColumns(patch, (d) => d.getTime());
    const set = [...cols.map((c) => `${c} = ?`), "updated_at = ?"].join(", ");
    const r = this.db
      .prepare(`UPDATE tasks SET ${set} WHERE id = ? AND state IN (${from.map(() => "?").join(", ")})`)
      .run(...vals, at.getTime(), id, ...from);
    return r.changes > 0;
  }
}

// ---- PostgreSQL ----------------------------------------------------------------

const params = (n: number, from = 1) => Array.from({ length: n }, (_, i) => `$${i + from}`).join(", ");

/** Restore sessions on PostgreSQL: shares the catalog's pool and schema. */
export class PostgresRestoreStore implements RestoreSessionStore {
  private readonly pool: pg.Pool;
  constructor(catalog: PostgresCatalog | { pool: pg.Pool }) {
    this.pool = catalog.pool;
  }

  async createRestoreSession(r: RestoreSessionRecord): Promise<void> {
    await this.pool.query(
      `INSERT INTO restore_sessions (${RS_COLS}) VALUES (${params(14)})`,
      sessionValues(r, (d) => d),
    );
  }

  async getRestoreSession(id: string): Promise<RestoreSessionRecord | null> {
    const r = await this.pool.query<RsRow>(`SELECT ${RS_COLS} FROM restore_sessions WHERE id = $1`, [id]);
    return r.rows[0] ? toSession(r.rows[0]) : null;
  }

  async touchRestoreSession(
    id: string,
    now: Date,
    expiresAt: Date,
    add: Partial<RestoreCounters>,
  ): Promise<void> {
    await this.pool.query(
      `UPDATE restore_sessions SET updated_at = $1, expires_at = $2, bytes_sent = bytes_sent + $3,
         chunks_sent = chunks_sent + $4, trees_sent = trees_sent + $5
       WHERE id = $6 AND state = 'open'`,
      [now, expiresAt, ...restoreCounters(add), id],
    );
  }

  async closeRestoreSession(id: string, state: "closed" | "expired", at: Date): Promise<boolean> {
    const r = await this.pool.query(
      `UPDATE restore_sessions SET state = $1, closed_at = $2, updated_at = $2 WHERE id = $3 AND state = 'open'`,
      [state, at, id],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async listRestoreSessions(cvdId: string, limit: number): Promise<RestoreSessionRecord[]> {
    const r = await this.pool.query<RsRow>(
      `SELECT ${RS_COLS} FROM restore_sessions WHERE cvd_id = $1 ORDER BY created_at DESC, id LIMIT $2`,
      [cvdId, limit],
    );
    return r.rows.map(toSession);
  }

  async expiredRestoreSessions(now: Date): Promise<RestoreSessionRecord[]> {
    const r = await this.pool.query<RsRow>(
      `SELECT ${RS_COLS} FROM restore_sessions WHERE state = 'open' AND expires_at < $1`,
      [now],
    );
    return r.rows.map(toSession);
  }

  async close(): Promise<void> {
    // The pool belongs to the catalog.
  }
}

export class PostgresTaskStore implements TaskStore {
  constructor(private readonly pool: pg.Pool) {}

  async createTask(t: TaskRecord): Promise<void> {
    try {
      await this.pool.query(
        `INSERT INTO tasks (${TASK_COLS}) VALUES (${params(14)})`,
        taskValues(t, (d) => d),
      );
    } catch (e) {
      const err = e as { code?: string; constraint?: string };
      if (err.code === "23505") {
        if (err.constraint === "tasks_active") throw activeTaskExists(t.cvdId);
        throw new StrataError("ALREADY_EXISTS", `task ${t.id} exists`, { subject: t.id });
      }
      throw e;
    }
  }

  async getTask(id: string): Promise<TaskRecord | null> {
    const r = await this.pool.query<TaskRow>(`SELECT ${TASK_COLS} FROM tasks WHERE id = $1`, [id]);
    return r.rows[0] ? toTask(r.rows[0]) : null;
  }

  async listTasks(f: TaskFilter): Promise<TaskRecord[]> {
    const where: string[] = [];
    const vals: unknown[] = [];
    if (f.cvdId !== undefined) {
      vals.push(f.cvdId);
      where.push(`cvd_id = $${vals.length}`);
    }
    if (f.endpointId !== undefined) {
      vals.push(f.endpointId);
      where.push(`endpoint_id = $${vals.length}`);
    }
    if (f.states) {
      if (!f.states.length) return [];
      vals.push([...f.states]);
      where.push(`state = ANY($${vals.length}::text[])`);
    }
    vals.push(f.limit);
    const r = await this.pool.query<TaskRow>(
      `SELECT ${TASK_COLS} FROM tasks ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
       ORDER BY created_at DESC, id DESC LIMIT $${vals.length}`,
      vals,
    );
    return r.rows.map(toTask);
  }

  async updateTask(id: string, from: readonly TaskState[], patch: TaskPatch, at: Date): Promise<boolean> {
    if (!from.length) return false;
    const [cols, vals] = patchColumns(patch, (d) => d);
    const set = [...cols, "updated_at"].map((c, i) => `${c} = $${i + 1}`).join(", ");
    const n = cols.length + 1;
    const r = await this.pool.query(
      `UPDATE tasks SET ${set} WHERE id = $${n + 1} AND state = ANY($${n + 2}::text[])`,
      [...vals, at, id, [...from]],
    );
    return (r.rowCount ?? 0) > 0;
  }
}
