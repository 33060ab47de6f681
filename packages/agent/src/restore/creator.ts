import { StrataError } from "@strata/core";
import { displayPath, errnoError, native } from "@strata/fs";
import type { PendingFile } from "./fetcher.js";

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

/** Files per job: a job costs the main thread a call and a callback, whatever its size. */
const PER_JOB = 64;

/**
 * Creates staged files off the main thread (restore.md, "Files are created
 * off the walk"): queued files are created in jobs on libuv's
 * thread pool (`native.createFiles`, O_CREAT|O_EXCL|O_NOFOLLOW as before),
 * one at a time: a job goes at 64 files, or at `flush`; what is queued
 * meanwhile goes when it ends.
 * A queued file's promise settles, and never rejects, once its job is done:
 * then `fd` is open, or `openError` holds a failure that fails the batch
 * (`failsBatch`), or `skipped` is set and `notCreated` was told why.
 * Whoever waits for a file calls `flush` first (a partial job waits for
 * more files otherwise).
 */
export class FileCreator {
  private files: PendingFile[] = [];
  private modes: number[] = [];
  private current: { promise: Promise<void>; settle: () => void } | null = null;
  /** A job is on the pool: the next waits for it (creations in walk order, one thread in the stage). */
  private busy = false;
  /** `flush` was asked while busy: the queue goes as soon as the job is done. */
  private wanted = false;
  /** Jobs sent to the pool so far. */
  jobs = 0;

  add(file: PendingFile, mode: number): Promise<void> {
    if (!this.current) {
      let settle!: () => void;
      const promise = new Promise<void>((r) => {
        settle = r;
      });
      this.current = { promise, settle };
    }
    const { promise } = this.current;
    this.files.push(file);
    this.modes.push(mode);
    if (this.files.length >= PER_JOB) this.flush();
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
    const files = this.files;
    const modes = this.modes;
    this.files = [];
    this.modes = [];
    this.current = null;
    try {
      native.createFiles(
        files.map((f) => f.path),
        modes,
        (results) => {
          for (let i = 0; i < files.length; i++) {
            const f = files[i]!;
            const r = results[i]!;
            if (r >= 0) {
              f.fd = r;
              continue;
            }
            const e = errnoError(-r, "open", displayPath(f.path));
            if (failsBatch(e)) f.openError = stagingFailure(e, f.name);
            else {
              f.skipped = true;
              try {
                f.notCreated?.(e);
              } catch {
                // reporting must not keep the others waiting
              }
            }
          }
          this.busy = false;
          if (this.wanted || this.files.length >= PER_JOB) this.flush();
          job.settle();
        },
      );
    } catch (e) {
      this.busy = false;
      // Not queued (out of memory): nothing was created; the batch fails.
      for (const f of files) f.openError = e;
      job.settle();
    }
  }
}
