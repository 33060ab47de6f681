import type { CompiledPolicy } from "@strata/core";

/** docs/design/restore.md, "Kinds"; `layer` is docs/design/layers.md, "Engine kind `layer`". */
export type RestoreKind = "system" | "full" | "recover" | "files" | "layer";

/**
 * What kind `layer` needs besides the image (the source's snapshot) and
 * the policy (docs/design/layers.md, "Engine kind `layer`"). Paths are
 * absolute paths of the endpoint, as bytes.
 */
export interface LayerRestoreOptions {
  /**
   * The removal set, as a predicate (never a set of the whole tree): a root
   * entry absent from the image is deleted only when this answers `true`.
   * `"below"`: the entry is not in the set but some path strictly below it
   * is, so a directory is descended (and only its removable entries go).
   * Asked for every entry below a removable directory too: a directory goes
   * whole only when everything below it may go.
   */
  removable: (snapPath: Buffer) => boolean | "below";
  /** Do-not-override rules: such a path (and everything below it) is never written or deleted. */
  doNotOverride?: (snapPath: Buffer) => boolean;
  /** Enforce `remove`: machine-area entries absent from the image are deleted too. */
  enforceRemove?: boolean;
  /**
   * Files whose content the agent computed (dpkg status, passwd, …), keyed
   * by absolute path as a latin1 string (so any bytes survive). Written with
   * the image's metadata when the image has the entry, else with the root
   * file's (mtime now), else 0644 root:root; equal content is left alone.
   */
  literals?: Map<string, Buffer>;
  /**
   * Paths (absolute, bytes) whose staged `put` and `del` operations
   * `beforeCommit` is told (docs/design/layers.md, "Kernel hooks before the
   * commit"): the agent watches /boot and the kernel images in it.
   */
  watch?: (snapPath: Buffer) => boolean;
  /**
   * Called once everything is staged and durable, right before the commit
   * (also with `deferApply`), with the watched operations in journal order;
   * not called when the apply changes nothing. The root is still the old
   * state. A throw aborts the apply: nothing is committed, the stage goes,
   * and the run rejects with that error.
   */
  beforeCommit?: (ops: StagedOp[]) => Promise<void>;
}

/** A staged operation on a watched path (`LayerRestoreOptions.watch`). */
export interface StagedOp {
  op: "put" | "del";
  /** Absolute path in the root, bytes. */
  path: Buffer;
  /** `put`: the staged entry (host path) that the commit renames into place; a directory holds what it will hold. */
  staged?: Buffer;
}

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
   * Worker threads that verify and write chunks fetched in wire form (a
   * source with `fetchChunkFrames`): default one per core but one (the
   * main thread keeps a core busy planning and staging), at least one, at
   * most four; 0 does it on the main thread.
   */
  workers?: number;
  /**
   * `files`: paths of the snapshot to restore, each written below `to`
   * under its own name (PATH /home/a/x --to D gives D/x).
   */
  paths?: string[];
  to?: string;
  /** Kind `layer`: the removal set, do-not-override rules, enforce and literal files (required for `layer`). */
  layer?: LayerRestoreOptions;
  /**
   * Stage and commit, then return without applying (`RestoreResult.pending`):
   * the next `recoverPendingRestore` rolls the committed journal forward (an
   * apply at the next restart). Not with `streaming`.
   */
  deferApply?: boolean;
  /** Stream (full/recover): minimal set first, then the rest in batches. */
  streaming?: boolean;
  /** Minimal restore set (absolute dir globs); defaults in restore.md. */
  minimalSet?: string[];
  onProgress?: (p: RestoreProgress) => void;
  /** Per-path problems that did not stop the restore. */
  onError?: (e: { path: string; message: string }) => void;
  signal?: AbortSignal;
  /**
   * Accept a regular file whose size, mtime, mode, owner and xattrs equal
   * the snapshot's as unchanged without reading it. Off by default: the
   * engine then hashes the local file at the snapshot's chunk boundaries,
   * so content changed behind an unchanged mtime is repaired. The agent
   * sets it when its file cache vouches for the files (restore.md, "The
   * engine").
   */
  trustMtime?: boolean;
  /**
   * Says a root file holds a snapshot file's content without reading it
   * (`fileCacheVouch`: the agent's file cache records the file's signature
   * and chunk list). Metadata is still compared; a file it does not vouch
   * for is hashed as usual.
   */
  vouch?: (abs: Buffer, st: import("node:fs").BigIntStats, node: import("@strata/core").FsNode) => boolean;
  /** Streaming batch limits (restore.md: 2,000 files, 32 MiB); tests make them small. */
  batchLimits?: { files?: number; bytes?: number };
  /**
   * Fault-injection hook: called synchronously before every step that
   * changes the disk (each staged entry, the commit rename, each applied
   * operation, each cleanup step), numbered from 1 across the run. Crash
   * tests kill the process from here at a chosen step.
   */
  onStep?: (step: RestoreStep) => void;
}

export interface RestoreStep {
  phase: "stage" | "commit" | "apply" | "cleanup";
  /** 1, 2, 3, … across the whole run. */
  n: number;
}

export interface RestoreResult {
  kind: RestoreKind;
  snapshot: string;
  files: number;
  unchangedFiles: number;
  /**
   * Of the files left in place, those the agent's file cache vouched for
   * (RestoreOptions.vouch): not read. The others were hashed, or trusted
   * by mtime (trustMtime).
   */
  vouchedFiles: number;
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
  /** Committed batches (1 unless streaming). */
  batches: number;
  /**
   * `deferApply`: the batch is committed but not applied (the counts are what
   * it will do); `recoverPendingRestore` applies it. Absent otherwise.
   */
  pending?: boolean;
}

/**
 * What the agent finds at start (`recoverPendingRestore(stateDir, root)`):
 * a committed journal is rolled forward, an uncommitted stage rolled back.
 */
export type PendingOutcome =
  | { outcome: "none" }
  | {
      outcome: "rolled-forward";
      id: string;
      /** Operations refused while rolling forward (UNSAFE_PATH), the rest applied. */
      errors?: { path: string; message: string }[];
    }
  | { outcome: "rolled-back"; id: string };
