import type { CompiledPolicy } from "@strata/core";

/** docs/design/restore.md, "Kinds". */
export type RestoreKind = "system" | "full" | "recover" | "files";

export interface RestoreProgress {
  phase: "planning" | "staging" | "committing" | "applying" | "streaming" | "done";
  /** Files and bytes of the snapshot in scope, known once planning has seen them. */
  totalFiles: number;
  totalBytes: number;
  /** Files and bytes in their final place (unchanged ones count as restored). */
  restoredFiles: number;
  restoredBytes: number;
  /** Bytes copied from seeds (local files) and bytes fetched from the source. */
  seededBytes: number;
  fetchedBytes: number;
  /** Streaming: true once the minimal restore set is in place. */
  usable: boolean;
  current?: string;
}

export interface RestoreOptions {
  /** The endpoint's root (absolute); every write stays below it. */
  root: string;
  /** Agent state directory: the journal lives in STATE/restore/ID/. */
  stateDir: string;
  /** Unique id of this restore (the task id); names its journal and stage. */
  id: string;
  kind: RestoreKind;
  /** Classifies paths (absolute, relative to root) for system/full/recover. */
  policy?: CompiledPolicy;
  /**
   * `files`: paths of the snapshot to restore, each written below `to`
   * under its own name (PATH /home/a/x --to D gives D/x).
   */
  paths?: string[];
  to?: string;
  /** Stream (full/recover): minimal set first, then the rest in batches. */
  streaming?: boolean;
  /** Minimal restore set (absolute dir globs); defaults in restore.md. */
  minimalSet?: string[];
  onProgress?: (p: RestoreProgress) => void;
  /** Per-path problems that did not stop the restore. */
  onError?: (e: { path: string; message: string }) => void;
  signal?: AbortSignal;
}

export interface RestoreResult {
  kind: RestoreKind;
  snapshot: string;
  files: number;
  unchangedFiles: number;
  putOps: number;
  deleted: number;
  metaOps: number;
  bytes: number;
  seededBytes: number;
  fetchedBytes: number;
  /** Bytes received from the source over the network. */
  bytesReceived: number;
  errors: { path: string; message: string }[];
  durationMs: number;
}

/**
 * What the agent finds at start (`recoverPendingRestore(stateDir, root)`):
 * a committed journal is rolled forward, an uncommitted stage rolled back.
 */
export type PendingOutcome =
  | { outcome: "none" }
  | { outcome: "rolled-forward"; id: string }
  | { outcome: "rolled-back"; id: string };
