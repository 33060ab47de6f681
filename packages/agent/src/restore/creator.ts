import { constants } from "node:fs";
import { StrataError } from "@strata/core";
import { displayPath, errnoError, native } from "@strata/fs";
import { type Deferred, deferred } from "./deferred.js";
import type { PendingFile } from "./fetcher.js";

const { S_IFDIR, S_IFLNK, S_IFREG } = constants;

/** Out of space or descriptors, or a failing disk: the whole batch fails (never a partial restore). */
export function failsBatch(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return code === "ENOSPC" || code === "EDQUOT" || code === "EIO" || code === "EMFILE" || code === "ENFILE";
}

/** A failure that fails the batch (`failsBatch`), naming the snapshot path being staged. */
export function stagingFailure(e: unknown, shown: string): StrataError {
  const code = (e as NodeJS.ErrnoException).code;
  const full = code === "ENOSPC" || code === "EDQUOT";
  const hint = full
    ? "free space (or inodes) on the filesystem being restored to and run the restore again; it was not changed"
    : code === "EMFILE" || code === "ENFILE"
      ? "raise the open-file limit (ulimit -n) and run the restore again; nothing was changed"
      : "check the disk being restored to (dmesg) and run the restore again; nothing was changed";
  return new StrataError(full ? "NO_SPACE" : "IO_ERROR", `cannot stage ${shown}: ${(e as Error).message}`, {
    subject: shown,
    cause: e,
    hint,
  });
}

/** Entries per job: a job costs the main thread a call and a callback, whatever its size. */
const PER_JOB = 64;

/** Entries queued at most: past it the walk waits for the pool (`room`). */
const MAX_QUEUED = 4096;

/** A directory or symlink queued for creation (`StageCreator.make`). */
export interface Made {
  /** Settles, and never rejects, once its job is done. */
  done: Promise<void>;
  /** It was not created: reported through `onError`, or its directory was not, or the batch fails. */
  failed: boolean;
}

interface Op {
  path: Buffer;
  /** Permission bits with the type: S_IFREG, S_IFDIR or S_IFLNK. */
  mode: number;
  target: Buffer | undefined;
  /** The queued directory it goes into (none: one that exists already). */
  parent: Made | undefined;
  file: PendingFile | undefined;
  made: (Made & { name: string; onError: (e: Error | null) => void }) | undefined;
}

/**
 * Creates a stage's entries off the main thread (restore.md, "The stage's tree is
 * created off the walk"): queued files, directories and symlinks are
 * created in jobs on libuv's thread pool (`native.createFiles`; files
 * O_CREAT|O_EXCL|O_NOFOLLOW as before), one job at a time and in the order
 * queued, so an entry may be queued into a directory queued before it. A
 * job goes at 64 entries, or at `flush`; what is queued meanwhile goes when
 * it ends. A queued entry's promise settles, and never rejects, once its
 * job is done: then a file's `fd` is open, or `openError` holds a failure
 * that fails the batch (`failsBatch`), or `skipped` is set and `notCreated`
 * was told why; a directory or symlink is made, or `failed` is set and
 * `onError` was told why (or the batch's `failure` is set). An entry whose
 * directory was not made is not created either, and is told `null` (the
 * directory was reported). Whoever waits for an entry calls `flush` first
 * (a partial job waits for more entries otherwise).
 */
export class StageCreator {
  private ops: Op[] = [];
  private current: Deferred<void> | null = null;
  /** A job is on the pool: the next waits for it. */
  private busy = false;
  /** `flush` was asked while busy: the queue goes as soon as the job is done. */
  private wanted = false;
  /** Settled when no job runs and nothing is queued (`idle`). */
  private quiet: Deferred<void> | null = null;
  /** Jobs sent to the pool so far. */
  jobs = 0;
  /** A directory or symlink could not be made for a reason that fails the batch (`failsBatch`). */
  failure: StrataError | null = null;

  /** Queue staged file `file` (permission bits `mode`), inside `parent` when that is queued too. */
  add(file: PendingFile, mode: number, parent?: Made): Promise<void> {
    return this.queue({
      path: file.path,
      mode: S_IFREG | (mode & 0o7777),
      target: undefined,
      parent,
      file,
      made: undefined,
    });
  }

  /**
   * Queue a directory (`target` undefined; made with `mode`) or a symlink to `target`, named
   * `name` (the snapshot path) in errors; `onError` hears why it was not made (null: its
   * directory was not made, and was reported). `onError` must not throw.
   */
  make(
    path: Buffer,
    mode: number,
    target: Buffer | undefined,
    name: string,
    onError: (e: Error | null) => void,
    parent?: Made,
  ): Made {
    const made = { done: undefined as unknown as Promise<void>, failed: false, name, onError };
    made.done = this.queue({
      path,
      mode: (target === undefined ? S_IFDIR : S_IFLNK) | (mode & 0o7777),
      target,
      parent,
      file: undefined,
      made,
    });
    return made;
  }

  /** Resolves at once unless 4,096 entries wait; then once all are created (memory stays bounded). */
  async room(): Promise<void> {
    if (this.ops.length >= MAX_QUEUED) await this.idle();
  }

  /** Everything queued is done (flushed here). */
  idle(): Promise<void> {
    this.flush();
    if (!this.busy && !this.current) return Promise.resolve();
    this.quiet ??= deferred<void>();
    return this.quiet.promise;
  }

  private queue(op: Op): Promise<void> {
    this.current ??= deferred<void>();
    const { promise } = this.current;
    this.ops.push(op);
    if (this.ops.length >= PER_JOB) this.flush();
    return promise;
  }

  flush(): void {
    const job = this.current;
    if (!job) return;
    if (this.busy) {
      this.wanted = true;
      return;
    }
    this.busy = true;
    this.wanted = false;
    this.jobs++;
    const ops = this.ops;
    this.ops = [];
    this.current = null;
    const done = (results: Int32Array | null) => {
      for (let i = 0; i < ops.length; i++) this.settleOp(ops[i]!, results ? results[i]! : null);
      this.busy = false;
      if (this.wanted || this.ops.length >= PER_JOB) this.flush();
      job.resolve();
      if (!this.busy && !this.current && this.quiet) {
        this.quiet.resolve();
        this.quiet = null;
      }
    };
    try {
      native.createFiles(
        ops.map((o) => o.path),
        ops.map((o) => o.mode),
        done,
        ops.map((o) => o.target),
      );
    } catch (e) {
      // Not queued (out of memory): nothing was created; the batch fails.
      this.failure ??= new StrataError("INTERNAL", `cannot create staged entries: ${(e as Error).message}`, {
        cause: e,
      });
      for (const o of ops) if (o.file) o.file.openError = this.failure;
      done(null);
    }
  }

  /** What the job answered for one entry (`r`: descriptor, 0, or minus the errno; null: not run). */
  private settleOp(op: Op, r: number | null): void {
    const { file, made } = op;
    if (r === null) {
      if (made) made.failed = true;
      return;
    }
    if (r >= 0) {
      // Made (its directory was, then: a stage's names are unique, so no mkdir fails on EEXIST).
      if (file) file.fd = r;
      return;
    }
    // Under a directory that was not made: nothing of its own to report.
    const e = op.parent?.failed
      ? null
      : errnoError(-r, file ? "open" : op.target === undefined ? "mkdir" : "symlink", displayPath(op.path));
    const fatal = e !== null && failsBatch(e);
    if (fatal) {
      const err = stagingFailure(e, file?.name ?? made!.name);
      if (file) {
        file.openError = err;
        return;
      }
      this.failure ??= err;
    }
    if (file) file.skipped = true;
    if (made) made.failed = true;
    try {
      if (file) file.notCreated?.(e);
      else made!.onError(fatal ? null : e);
    } catch {
      // reporting must not keep the others waiting
    }
  }
}
