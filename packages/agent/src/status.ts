/**
 * The agent's status: what `strata agent status` shows, served over the
 * control socket and kept in `status.json` in the state directory (written
 * atomically: temp file + rename, so a reader never sees half of one). The
 * file outlives the process: the next start reads the last successful
 * upload and the snooze back from it. Format: docs/design/agent.md
 * ("status.json"). Times are ISO 8601 strings, or null.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import * as path from "node:path";

export const STATUS_FILE = "status.json";
export const STATUS_VERSION = 1;

export type EndpointState = "pending" | "active" | "disabled";

/**
 * - starting: before the first answer from the server
 * - idle: waiting for the next upload
 * - uploading: an upload runs
 * - restoring: a task (a restore) runs; uploads wait for it
 * - snoozed: the user snoozed uploads
 * - retrying: the last attempt failed; waiting out the backoff
 * - inactive: the endpoint is pending approval, disabled, or unknown to the agent
 * - stopped: the agent is not running (written at a clean stop)
 */
export type AgentActivity =
  | "starting"
  | "idle"
  | "uploading"
  | "restoring"
  | "snoozed"
  | "retrying"
  | "inactive"
  | "stopped";

/**
 * What the upload last reported, kept as it said it (upload.ts's
 * UploadProgress: files, dirs, bytesRead, bytesSent, …). By convention
 * `phase` ("scanning", "committing") and `files` are shown to people.
 */
export type ProgressReport = Record<string, unknown>;

export interface UploadRecord {
  startedAt: string;
  finishedAt: string;
  result: "ok" | "failed" | "aborted";
  /** Why it failed or was aborted. */
  error: { code: string; message: string } | null;
  /** Whether it walked everything, and why; or how many dirty directories it rescanned. */
  full: boolean;
  reason: string | null;
  dirtyDirs: number;
  /**
   * Directories the upload listed, when it said (its summary's `scan`).
   * `full`/`reason` are then the upload's own decision: it walks
   * everything when it cannot trust the dirty set (docs/design/agent.md,
   * "Incremental uploads").
   */
  dirsRead?: number;
  /** What uploadOnce returned (snapshot id, counts): JSON, shown as is. */
  summary: unknown;
}

export interface AgentStatus {
  version: number;
  pid: number;
  running: boolean;
  startedAt: string;
  updatedAt: string;
  stateDir: string;
  /** The endpoint's state at the server; "unknown" until the first answer. */
  state: EndpointState | "unknown";
  activity: AgentActivity;
  policy: {
    id: string;
    name: string;
    version: number;
    intervalMinutes: number;
    bandwidthLimitKBps: number;
  } | null;
  current: {
    startedAt: string;
    full: boolean;
    reason: string | null;
    dirtyDirs: number;
    progress: ProgressReport;
  } | null;
  lastUpload: UploadRecord | null;
  /** The task running now (restore.md, "Tasks"), with its last progress report. */
  task?: { id: string; kind: string; startedAt: string; progress: ProgressReport } | null;
  /** How the last task ended here. */
  lastTask?: {
    id: string;
    kind: string;
    result: "ok" | "failed" | "aborted";
    error: { code: string; message: string } | null;
    summary: unknown;
  } | null;
  lastSuccessAt: string | null;
  consecutiveFailures: number;
  nextUploadAt: string | null;
  snoozedUntil: string | null;
  /** A sync-now waits to be served (after the current upload, or right now). */
  syncRequested: boolean;
  /**
   * The administrator's requests as agent/self last said them (agent.md,
   * "Remote sync and snooze"): only a change is acted on, so a restart does
   * not sync again or undo a `resume` the user gave since.
   */
  remote?: { snoozedUntil: string | null; syncRequestedAt: string | null } | null;
  server: { lastContactAt: string | null; error: string | null };
  /**
   * What the next upload will rescan: `full` says why it walks everything
   * (null when it rescans only `dirs` changed directories).
   */
  changes: { watching: boolean; full: string | null; dirs: number };
}

export function statusPath(stateDir: string): string {
  return path.join(stateDir, STATUS_FILE);
}

/**
 * Replace status.json whole. Readable by all: it holds no secret. Unlike
 * state.ts's writeFileAtomic it does not fsync: it is written up to once a
 * second during an upload, by a process in the idle I/O class, and losing
 * the last version to a power cut costs at most one early upload.
 */
export function writeStatus(stateDir: string, status: AgentStatus): void {
  const file = statusPath(stateDir);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(status, null, 2)}\n`, { mode: 0o644 });
  renameSync(tmp, file);
}

/** The last status written, or null when there is none or it cannot be read. */
export function readStatus(stateDir: string): AgentStatus | null {
  try {
    const s = JSON.parse(readFileSync(statusPath(stateDir), "utf8")) as AgentStatus;
    return typeof s === "object" && s !== null && s.version === STATUS_VERSION ? s : null;
  } catch {
    return null;
  }
}

/** An ISO time from status.json as milliseconds, or null. */
export function timeOf(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isFinite(t) ? t : null;
}

export const isoOrNull = (ms: number | null): string | null =>
  ms === null ? null : new Date(ms).toISOString();
