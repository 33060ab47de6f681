/**
 * Restore sessions, restore tasks and a CVD's history, as
 * docs/design/restore.md ("Protocol", "Tasks", "Single files") specifies
 * them. Tree and chunk bodies are frame streams (application/vnd.strata.frames),
 * read by the agent's RemoteRestoreSource, not by this JSON client.
 */
import { CVD_ID_PATTERN, ENDPOINT_ID_PATTERN } from "./fleet.js";
import { dateTime, nullableDateTime, obj, type Schema, str } from "./json-schema.js";

export const RESTORE_SESSION_PATTERN = "^rs_[A-Za-z0-9_-]{1,60}$";
export const TASK_ID_PATTERN = "^task_[A-Za-z0-9_-]{1,60}$";
export const TREE_ID_PATTERN = "^[0-9a-f]{64}$";
/** A snapshot reference: `latest`, a full id or a unique prefix of at least 4 hex digits. */
export const SNAPSHOT_REF_PATTERN = "^(latest|[0-9a-f]{4,64})$";
/** A grant: 22 base64url characters (132 bits of an HMAC). */
export const GRANT_PATTERN = "^[A-Za-z0-9_-]{22}$";
/** Paths travel as strings; at most this long. */
export const MAX_RESTORE_PATH = 4096;
/** Trees in one `POST /restores/:session/trees` (the server answers TOO_LARGE beyond). */
export const MAX_TREES_PER_REQUEST = 256;

export interface OpenRestoreRequest {
  /** `latest` (default), a snapshot id or a unique prefix. */
  snapshot?: string;
  /** Instead of `snapshot`: the newest snapshot taken at or before this time (RFC 3339). */
  at?: string;
  /** Absolute path in the snapshot: the session then reaches only that directory (or that file's directory). */
  path?: string;
  /**
   * Open the CVD's layer image instead of one of its snapshots (endpoints
   * only, their own CVD): its target image, or with `snapshot` the image of
   * one of its open apply tasks (docs/design/layers.md, "Apply").
   */
  image?: boolean;
}

export interface RestoreSessionInfo {
  session: string;
  snapshot: { id: string; time: string };
  /** The repository's chunker parameters (seed files are cut the same way). */
  chunker: {
    algorithm: string;
    minSize: number;
    avgSize: number;
    maxSize: number;
    normalization: number;
    gearSeed: string;
  };
  /** The tree the session reaches, with its grant. */
  root: { id: string; grant: string };
  /** With a `path` naming a non-directory: that entry of `root` (the file's parent directory). */
  node?: { name: string; nameB64: string; type: string };
  /** The path the session was opened on ("/" for the whole snapshot). */
  path: string;
  expiresAt: string;
}

export type TaskKind = "system" | "full" | "recover" | "files" | "apply";
export const TASK_KIND_NAMES: readonly TaskKind[] = ["system", "full", "recover", "files", "apply"];
export type TaskState = "queued" | "running" | "done" | "failed" | "cancelled";

export interface Task {
  id: string;
  cvd: string;
  endpoint: string;
  kind: TaskKind;
  /** `snapshot` (resolved id) always; `time` of that snapshot; `streaming` for recover. */
  params: Record<string, unknown>;
  state: TaskState;
  /** The agent's last report: restoredBytes/totalBytes, restoredFiles/totalFiles, usable, phase… */
  progress: Record<string, unknown> | null;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  createdBy: string;
  createdAt: string;
  updatedAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

export interface RevertRequest {
  /** `latest` (default), an id or a unique prefix. */
  snapshot?: string;
  /** `full` instead of `system`: the user area too. */
  full?: boolean;
}

export interface RecoverRequest {
  /** The replacement endpoint (new or pending; or already holding this CVD). */
  endpoint: string;
  snapshot?: string;
  /** Minimal restore set first, then the rest in batches (default true). */
  streaming?: boolean;
}

export interface TaskQuery {
  cvd?: string;
  state?: TaskState;
  limit?: number;
}

/** What `GET /agent/self` lists: the endpoint's queued and running tasks. */
export interface AgentTaskRef {
  id: string;
  kind: TaskKind;
  state: "queued" | "running";
}

export interface TaskProgressRequest {
  progress: Record<string, unknown>;
}
/** The answer to a progress report: the task's state (`cancelled`: stop). */
export interface TaskProgressAnswer {
  state: TaskState;
}

export interface TaskFinishRequest {
  result?: Record<string, unknown>;
  error?: { code: string; message: string };
}

export interface HistoryQuery {
  path: string;
  /** Snapshots looked at, newest first (default 50, at most 500). */
  limit?: number;
  /** Continue after this snapshot (the previous page's `next`). */
  before?: string;
}

export interface HistoryEntry {
  name: string;
  /** The raw name bytes, base64 (names need not be UTF-8). */
  nameB64: string;
  /** In the newest snapshot holding it. */
  type: string;
  size: number;
  mtime: string | null;
  /** Indexes into `snapshots` of the snapshots holding it (newest first). */
  present: number[];
  /** Newest and oldest snapshot of this page holding it. */
  lastSeen: string;
  firstSeen: string;
  /** Distinct versions (type, size, mtime) seen on this page. */
  versions: number;
}

export interface CvdHistory {
  cvd: string;
  path: string;
  /** The snapshots of this page, newest first; `present` marks those where `path` is not a directory or is missing. */
  snapshots: { id: string; time: string; present: boolean }[];
  entries: HistoryEntry[];
  /** Pass as `before` for older snapshots; null when this page reached the oldest. */
  next: string | null;
}

/** `GET /cvds/:cvd/browse`: one folder of one snapshot. */
export interface BrowseQuery {
  /** Absolute folder path in the snapshot (default `/`). */
  path?: string;
  /** `latest` (default), a snapshot id or a unique prefix. */
  snapshot?: string;
  /** Instead of `snapshot`: the newest snapshot taken at or before this time. */
  at?: string;
  /** Entries returned, in name order (default 1,000, at most 10,000). */
  limit?: number;
}

export interface BrowseEntry {
  name: string;
  /** The raw name bytes, base64 (names need not be UTF-8). */
  nameB64: string;
  type: string;
  /** Regular files: bytes; others 0. */
  size: number;
  /** Permission bits (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtime: string | null;
  /** Symlinks: the target (UTF-8, lossy). */
  target?: string;
}

export interface CvdBrowse {
  cvd: string;
  snapshot: { id: string; time: string };
  path: string;
  entries: BrowseEntry[];
  /** Entries in the folder; more than `entries.length` when `truncated`. */
  total: number;
  truncated: boolean;
}

// ---- JSON Schemas ---------------------------------------------------------

const taskKind = str({ enum: [...TASK_KIND_NAMES] });
const taskState = str({ enum: ["queued", "running", "done", "failed", "cancelled"] });
const anyObject = { type: "object", additionalProperties: true };
const nullableObject = { type: ["object", "null"], additionalProperties: true };
const taskError = obj({ code: str({ maxLength: 64 }), message: str({ maxLength: 4096 }) });

export const restoreSchemas = {
  OpenRestoreRequest: obj(
    {
      snapshot: str({ pattern: SNAPSHOT_REF_PATTERN }),
      at: dateTime,
      path: str({ minLength: 1, maxLength: MAX_RESTORE_PATH }),
      image: { type: "boolean" },
    },
    [],
  ),
  RestoreSessionInfo: obj(
    {
      session: str(),
      snapshot: obj({ id: str(), time: dateTime }),
      chunker: anyObject,
      root: obj({ id: str(), grant: str() }),
      node: obj({ name: str(), nameB64: str(), type: str() }),
      path: str(),
      expiresAt: dateTime,
    },
    ["session", "snapshot", "chunker", "root", "path", "expiresAt"],
  ),
  RestoreSessionParams: obj({ session: str({ pattern: RESTORE_SESSION_PATTERN }) }),
  RestoreTreeParams: obj({
    session: str({ pattern: RESTORE_SESSION_PATTERN }),
    tree: str({ pattern: TREE_ID_PATTERN }),
  }),
  RestoreTreeQuery: obj({ grant: str({ pattern: GRANT_PATTERN }) }),
  RestoreTreesRequest: obj({
    trees: {
      type: "array",
      minItems: 1,
      items: obj({ id: str({ pattern: TREE_ID_PATTERN }), grant: str({ pattern: GRANT_PATTERN }) }),
    },
  }),
  ChunkFetchRequest: obj({
    requests: {
      type: "array",
      minItems: 1,
      maxItems: 1024,
      items: obj({
        tree: str({ pattern: TREE_ID_PATTERN }),
        grant: str({ pattern: GRANT_PATTERN }),
        ids: { type: "array", minItems: 1, maxItems: 8192, items: str({ pattern: TREE_ID_PATTERN }) },
      }),
    },
  }),
  Task: obj({
    id: str(),
    cvd: str(),
    endpoint: str(),
    kind: taskKind,
    params: anyObject,
    state: taskState,
    progress: nullableObject,
    result: nullableObject,
    error: { anyOf: [{ type: "null" }, taskError] },
    createdBy: str(),
    createdAt: dateTime,
    updatedAt: dateTime,
    startedAt: nullableDateTime,
    finishedAt: nullableDateTime,
  }),
  RevertRequest: obj({ snapshot: str({ pattern: SNAPSHOT_REF_PATTERN }), full: { type: "boolean" } }, []),
  RecoverRequest: obj(
    {
      endpoint: str({ pattern: ENDPOINT_ID_PATTERN }),
      snapshot: str({ pattern: SNAPSHOT_REF_PATTERN }),
      streaming: { type: "boolean" },
    },
    ["endpoint"],
  ),
  TaskIdParams: obj({ id: str({ pattern: TASK_ID_PATTERN }) }),
  CvdParams: obj({ cvd: str({ pattern: CVD_ID_PATTERN }) }),
  TaskQuery: obj(
    {
      cvd: str({ pattern: CVD_ID_PATTERN }),
      state: taskState,
      limit: { type: "integer", minimum: 1, maximum: 1000 },
    },
    [],
  ),
  AgentTaskRef: obj({ id: str(), kind: taskKind, state: str({ enum: ["queued", "running"] }) }),
  TaskProgressRequest: obj({ progress: anyObject }),
  TaskProgressAnswer: obj({ state: taskState }),
  TaskFinishRequest: obj({ result: anyObject, error: taskError }, []),
  HistoryQuery: obj(
    {
      path: str({ minLength: 1, maxLength: MAX_RESTORE_PATH }),
      limit: { type: "integer", minimum: 1, maximum: 500 },
      before: str({ pattern: TREE_ID_PATTERN }),
    },
    ["path"],
  ),
  BrowseQuery: obj(
    {
      path: str({ minLength: 1, maxLength: MAX_RESTORE_PATH }),
      snapshot: str({ pattern: SNAPSHOT_REF_PATTERN }),
      at: dateTime,
      limit: { type: "integer", minimum: 1, maximum: 10_000 },
    },
    [],
  ),
  CvdBrowse: obj({
    cvd: str(),
    snapshot: obj({ id: str(), time: dateTime }),
    path: str(),
    entries: {
      type: "array",
      items: obj(
        {
          name: str(),
          nameB64: str(),
          type: str(),
          size: { type: "integer" },
          mode: { type: "integer" },
          uid: { type: "integer" },
          gid: { type: "integer" },
          mtime: { type: ["string", "null"] },
          target: str(),
        },
        ["name", "nameB64", "type", "size", "mode", "uid", "gid", "mtime"],
      ),
    },
    total: { type: "integer" },
    truncated: { type: "boolean" },
  }),
  CvdHistory: obj({
    cvd: str(),
    path: str(),
    snapshots: { type: "array", items: obj({ id: str(), time: dateTime, present: { type: "boolean" } }) },
    entries: {
      type: "array",
      items: obj({
        name: str(),
        nameB64: str(),
        type: str(),
        size: { type: "integer" },
        mtime: { type: ["string", "null"] },
        present: { type: "array", items: { type: "integer" } },
        lastSeen: str(),
        firstSeen: str(),
        versions: { type: "integer" },
      }),
    },
    next: { type: ["string", "null"] },
  }),
} satisfies Record<string, Schema>;
