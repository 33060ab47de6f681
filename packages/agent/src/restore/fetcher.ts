import { closeSync, constants, fsync, openSync } from "node:fs";
import { promisify } from "node:util";
import { type BlobId, StrataError } from "@strata/core";
import { native } from "@strata/fs";
import { type RestorePool, writeAllSync } from "@strata/repo";
import { type Made, StageCreator } from "./creator.js";
import type { RestoreSource, TreeRef } from "./source.js";

const fsyncAsync = promisify(fsync);
/** A chunk as the pool's workers take it (restore-worker.ts `RestoreItem`). */
type RestoreItem = Parameters<RestorePool["run"]>[1][number][number];

/** A staged regular file waiting for chunks. */
export interface PendingFile {
  /** Where it is staged (absolute). */
  path: Buffer;
  /** Its path in the snapshot, as errors show it. */
  name: string;
  /** Open for writing (O_NOFOLLOW, made by the engine) until `finish`; the Fetcher closes it. */
  fd: number;
  /**
   * Set while the file is created on libuv's threads (`Fetcher.create`; `fd` is -1 until it settles);
   * never rejects. Then either `fd` is open, or `openError` holds a failure that fails the
   * batch, or `skipped` says the file was reported and left out.
   */
  opened?: Promise<void>;
  openError?: unknown;
  skipped?: boolean;
  /**
   * Told why a file queued by `Fetcher.create` was not created (and is skipped); null when its
   * directory was not made (and was reported).
   */
  notCreated?: (e: Error | null) => void;
  /** Chunk writes still missing. */
  missing: number;
  /**
   * Set when the file's times are all the metadata it lacks (`onlyTimesNeeded`):
   * a worker of the pool may then close it and set them.
   */
  mtimeNs?: bigint;
  /**
   * Called once every chunk is in place (after the descriptor is closed):
   * metadata, then `sync`. With `times`, a worker has set the times already
   * (or failed to, saying why).
   */
  finish: (times?: { error?: string }) => void;
}

interface Target {
  file: PendingFile;
  offset: number;
}

interface Batch {
  chunks: Map<BlobId, { len: number; targets: Target[] }>;
  trees: Map<string, { tree: TreeRef; ids: BlobId[] }>;
  files: PendingFile[];
  bytes: number;
}

const IN_FLIGHT = 4;
/** Received (compressed) bytes handed to a worker in one message. */
const JOB_BYTES = 512 * 1024;
/** Chunks in one worker message. */
const JOB_CHUNKS = 1024;

const newBatch = (): Batch => ({ chunks: new Map(), trees: new Map(), files: [], bytes: 0 });

export interface FetcherLimits {
  /** Chunk bytes per request (restore.md: up to 8 MiB across many files). */
  bytes: number;
  files: number;
}

/** A chunk of a worker message: where its body lies in the message's buffer, and what it is. */
interface JobChunk {
  id: BlobId;
  len: number;
  compressed: boolean;
  at: number;
  size: number;
  targets: Target[];
}

/**
 * Collects the chunks staged files still lack and fetches them from the
 * source in batches (restore.md, "Seeds"): up to 8 MiB or `limits.files`
 * files (1,024 by default) per `fetchChunks` call, four calls in flight while
 * planning goes on, so memory holds at most five batches of requests (and
 * their files' descriptors).
 * A chunk named by several files (or twice in one) is fetched once and
 * written everywhere.
 *
 * With a `pool` and a source that hands chunks over in wire form
 * (`fetchChunkFrames`), the chunks go to the pool's worker threads in
 * messages of about 512 KiB: each worker decompresses a chunk into the
 * length the snapshot names, checks its SHA-256 and only then writes it
 * into the staged files (pwrite on the descriptors opened here). Nothing
 * unverified reaches a file; a chunk that fails names the files it was for.
 */
export class Fetcher {
  private batch = newBatch();
  /**
   * Requests in flight: four, so the server reads the next batches while this one is written
   * and planning is not held up by one slow answer (two left the planner idle a fifth of the time).
   */
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown = null;
  /** Every file handed to `add` and not finished: their descriptors close on `abandon`. */
  private readonly open = new Set<PendingFile>();
  fetchedBytes = 0;
  /** Creates the stage's entries off this thread (files through `create`; `made`, `created`). */
  readonly creator = new StageCreator();

  constructor(
    private readonly source: RestoreSource,
    private readonly syncs: SyncQueue,
    private readonly limits: FetcherLimits,
    private readonly signal?: AbortSignal,
    private readonly pool: RestorePool | null = null,
  ) {}

  /**
   * Create `file.path` off this thread (StageCreator) instead of the caller opening it; then
   * `add` it. The promise (also `file.opened`) settles once it is created or has failed.
   */
  create(file: PendingFile, mode: number, parent?: Made): Promise<void> {
    file.opened = this.creator.add(file, mode, parent);
    return file.opened;
  }

  /** `m` is made or has failed (see `Made.failed`). */
  async made(m: Made): Promise<void> {
    this.creator.flush();
    await m.done;
  }

  /** Every queued creation is done; a directory or symlink that failed the batch throws here. */
  async created(): Promise<void> {
    await this.creator.idle();
    if (this.creator.failure) throw this.creator.failure;
  }

  /** `wanted`: chunk id → offsets in the file; `tree` names the file (its grant covers the ids). */
  async add(
    file: PendingFile,
    tree: TreeRef,
    wanted: Map<BlobId, number[]>,
    lens: Map<BlobId, number>,
  ): Promise<void> {
    const b = this.batch;
    this.open.add(file);
    for (const [id, offsets] of wanted) {
      let c = b.chunks.get(id);
      if (!c) {
        c = { len: lens.get(id) ?? 0, targets: [] };
        b.chunks.set(id, c);
        b.bytes += c.len;
        let t = b.trees.get(tree.id);
        if (!t) {
          t = { tree, ids: [] };
          b.trees.set(tree.id, t);
        }
        t.ids.push(id);
      }
      for (const offset of offsets) {
        c.targets.push({ file, offset });
        file.missing++;
      }
    }
    b.files.push(file);
    if (b.bytes >= this.limits.bytes || b.files.length >= this.limits.files) await this.flush();
  }

  /** Start fetching the collected batch (after the previous one is done). */
  async flush(): Promise<void> {
    while (this.inflight.size >= IN_FLIGHT) await Promise.race(this.inflight);
    if (this.failure) throw this.failure;
    const b = this.batch;
    if (b.files.length === 0) return;
    this.batch = newBatch();
    const p: Promise<void> = this.run(b)
      .catch((e: unknown) => {
        this.failure ??= e;
      })
      .finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  /** Everything collected is fetched and written. */
  async drain(): Promise<void> {
    await this.flush();
    await Promise.all([...this.inflight]);
    if (this.failure) throw this.failure;
  }

  /**
   * The run failed: wait for the requests in flight (and, when a worker
   * may still be writing, for the pool to stop), then close every
   * descriptor still open. Only then may the stage be removed.
   */
  async abandon(): Promise<void> {
    this.failure ??= new StrataError("INTERNAL", "the restore stopped");
    await Promise.allSettled([...this.inflight]);
    // A file still being created gets its descriptor soon, and nothing may be created in the
    // stage once it goes: wait, so every descriptor is closed below.
    await this.creator.idle();
    // A worker failure rejects every call at once, while the other workers may still be
    // writing: they stop before a descriptor they hold is closed (and its number reused).
    if (this.pool) await this.pool.close();
    for (const f of this.open) closeQuietly(f);
    this.open.clear();
  }

  private done(f: PendingFile): void {
    this.open.delete(f);
    closeSync(f.fd);
    f.fd = -1;
    f.finish();
  }

  private async run(b: Batch): Promise<void> {
    // Files the engine is still creating: the request goes out meanwhile, writes wait for them.
    const opened = this.opened(b);
    opened.catch(() => {}); // awaited below
    if (b.chunks.size) {
      if (this.pool && this.source.fetchChunkFrames) await this.viaWorkers(b, this.pool, opened);
      else {
        await opened;
        await this.here(b);
      }
    }
    await opened;
    for (const f of b.files) {
      if (f.missing !== 0) {
        throw new StrataError("DATA_CORRUPT", `the source did not deliver every chunk of ${f.name}`, {
          subject: f.name,
        });
      }
    }
    // Files that lack only their times are closed and given them by a worker: a `close` and a
    // `utimensat` per file less on this thread, which plans the restore and is its critical path.
    const pool = this.pool;
    const quick = pool ? b.files.filter((f) => f.mtimeNs !== undefined) : [];
    if (pool && quick.length) await this.finishOnWorker(quick, pool);
    // The rest are still open here (a handed descriptor is -1): closed and finished on this thread.
    for (const f of b.files) if (f.fd >= 0) this.done(f);
    this.syncs.written(this.fetchedBytes);
  }

  /**
   * Every file of the batch is created: a failure that fails the batch is thrown; skipped
   * files leave the batch (their chunks are still received, and written nowhere).
   */
  private async opened(b: Batch): Promise<void> {
    const waits = b.files.filter((f) => f.opened).map((f) => f.opened);
    if (!waits.length) return;
    this.creator.flush();
    await Promise.all(waits);
    const failed = b.files.find((f) => f.openError !== undefined);
    if (failed) throw failed.openError;
    if (this.creator.failure) throw this.creator.failure;
    if (!b.files.some((f) => f.skipped)) return;
    for (const f of b.files) if (f.skipped) this.open.delete(f);
    b.files = b.files.filter((f) => !f.skipped);
    for (const c of b.chunks.values()) c.targets = c.targets.filter((t) => !t.file.skipped);
  }

  private async finishOnWorker(files: PendingFile[], pool: RestorePool): Promise<void> {
    const handed = files.map((f) => {
      // The worker owns the descriptor from here on: never closed here again, answered or not.
      const fd = f.fd;
      this.open.delete(f);
      f.fd = -1;
      return { fd, mtimeNs: f.mtimeNs! };
    });
    const problems = new Map((await pool.finish(handed)).map((p) => [p.index, p]));
    for (const [i, p] of problems) {
      if (!p.closed) {
        // A failed close may have lost written data (EIO, a full disk on write-back).
        throw new StrataError("IO_ERROR", `${files[i]!.name}: ${p.message}`, { subject: files[i]!.name });
      }
    }
    files.forEach((f, i) => {
      const p = problems.get(i);
      f.finish(p ? { error: p.message } : {});
    });
  }

  /** Chunks verified by the source, written on this thread. */
  private async here(b: Batch): Promise<void> {
    await this.source.fetchChunks(
      [...b.trees.values()],
      (id, plain) => {
        const c = b.chunks.get(id);
        if (!c) return; // not asked for (or delivered twice)
        b.chunks.delete(id);
        if (plain.length !== c.len) {
          throw new StrataError(
            "DATA_CORRUPT",
            `chunk ${id} has ${plain.length} bytes where the snapshot says ${c.len}${namesOf(c.targets)}`,
            { subject: id },
          );
        }
        for (const t of c.targets) {
          writeAllSync(t.file.fd, plain, t.offset);
          this.fetchedBytes += plain.length;
          t.file.missing--;
        }
      },
      this.signal,
    );
  }

  /** Chunks in wire form, verified and written by the pool's workers (once `opened`). */
  private async viaWorkers(b: Batch, pool: RestorePool, opened: Promise<void>): Promise<void> {
    const jobs: Promise<void>[] = [];
    let parts: Buffer[] = [];
    let chunks: JobChunk[] = [];
    let size = 0;
    let failed: unknown = null;
    const send = async () => {
      if (!chunks.length) return;
      const buf = pool.buffer(size);
      let at = 0;
      for (const p of parts) at += p.copy(buf, at);
      const these = chunks;
      parts = [];
      chunks = [];
      size = 0;
      await pool.slot();
      await opened;
      const items: RestoreItem[] = these.map((c) => ({
        id: c.id,
        packId: "" as RestoreItem["packId"],
        offset: c.at,
        length: c.size,
        rawLength: c.len,
        compressed: c.compressed,
        // A chunk queued before its files were created may still name a skipped one.
        writes: c.targets.flatMap((t) => (t.file.skipped ? [] : [t.file.fd, t.offset])),
      }));
      const job = pool.run([{ buf, base: 0 }], [items]).then(([reply]) => {
        const bad = new Map<number, string>();
        for (const p of reply!.problems) if (!bad.has(p.item)) bad.set(p.item, p.message);
        these.forEach((c, i) => {
          const problem = bad.get(i);
          if (problem !== undefined) {
            failed ??= new StrataError(
              "DATA_CORRUPT",
              `${problem.replace(/^chunk [0-9a-f]{64}/, `chunk ${c.id} from the server`)}${namesOf(c.targets)}`,
              {
                subject: c.targets[0]!.file.name,
                hint: "the server's repository may be damaged: run `strata repo check --read-data` there",
              },
            );
            return;
          }
          for (const t of c.targets) {
            this.fetchedBytes += c.len;
            t.file.missing--;
          }
        });
      });
      job.catch((e: unknown) => {
        failed ??= e; // stops the stream at the next chunk
      });
      jobs.push(job);
    };
    try {
      await this.source.fetchChunkFrames!(
        [...b.trees.values()],
        // Not async: a promise only when a message goes to the pool (most frames just queue).
        (id, compressed, payload) => {
          if (failed) throw failed;
          const c = b.chunks.get(id);
          if (!c) return; // not asked for (or delivered twice)
          b.chunks.delete(id);
          chunks.push({ id, len: c.len, compressed, at: size, size: payload.length, targets: c.targets });
          parts.push(payload);
          size += payload.length;
          if (size >= JOB_BYTES || chunks.length >= JOB_CHUNKS) return send();
        },
        this.signal,
      );
      await send();
    } finally {
      // Every write of this batch is done (or failed) before anyone looks at the files.
      await Promise.allSettled(jobs);
    }
    for (const j of jobs) await j; // a worker that failed (crashed) fails the batch
    if (failed) throw failed;
  }
}

/** " (for FILE[, and N more])": the staged files a chunk was for, as the snapshot names them. */
function namesOf(targets: Target[]): string {
  if (!targets.length) return "";
  const first = targets[0]!.file.name;
  const more = new Set(targets.map((t) => t.file)).size - 1;
  return ` (for ${first}${more > 0 ? `, and ${more} more` : ""})`;
}

function closeQuietly(f: PendingFile): void {
  if (f.fd < 0) return;
  try {
    closeSync(f.fd);
  } catch {
    // already gone
  }
  f.fd = -1;
}

/** Stage bytes written between two background syncfs calls. */
const BACKGROUND_SYNC_BYTES = 64 * 1024 * 1024;

/**
 * fsync of staged files and directories, several in flight on the thread
 * pool (concurrent fsyncs share journal commits), all awaited before the
 * commit. Bounded: `add` waits while too many are queued.
 */
export class SyncQueue {
  private running = 0;
  private queue: Buffer[] = [];
  private waiters: (() => void)[] = [];
  private failure: unknown = null;

  /** Writes into the stage counted when the last background syncfs started. */
  private flushedAt = 0;
  /** Background syncfs rounds started. */
  backgroundSyncs = 0;
  private background: Promise<void> | null = null;

  /**
   * `workdirs`: the stage directories, one per filesystem (read when a
   * background syncfs starts; the list grows as the walk meets filesystems).
   */
  constructor(
    private readonly parallel = 16,
    readonly viaSyncfs = true,
    private readonly workdirs: () => Buffer[] = () => [],
  ) {}

  /**
   * `total` bytes are written into the stage so far. Every BACKGROUND_SYNC_BYTES more, a
   * syncfs of the stage's filesystems starts on libuv's pool (restore.md, "Durability"),
   * so the commit's own syncfs finds little left to write. Its errors are left to that one.
   */
  written(total: number): void {
    if (!this.viaSyncfs || this.background || total - this.flushedAt < BACKGROUND_SYNC_BYTES) return;
    const dirs = this.workdirs();
    if (!dirs.length) return;
    this.flushedAt = total;
    this.backgroundSyncs++;
    this.background = Promise.all(
      dirs.map((d) => new Promise<void>((resolve) => native.syncfsAsync(d, () => resolve()))),
    ).then(() => {
      this.background = null;
    });
  }

  /** A background syncfs still running has ended (before the commit's own). */
  async settled(): Promise<void> {
    await this.background;
  }

  /**
   * With `viaSyncfs`, staged entries are not fsynced one by one: the
   * commit calls syncfs on each workdir's filesystem instead (one flush of
   * everything dirty there), which costs far less for thousands of files.
   */
  add(path: Buffer): void {
    if (this.viaSyncfs) return;
    this.queue.push(path);
    this.pump();
  }

  private pump(): void {
    while (this.running < this.parallel && this.queue.length) {
      const p = this.queue.shift()!;
      this.running++;
      this.one(p)
        .catch((e: unknown) => {
          this.failure ??= e;
        })
        .finally(() => {
          this.running--;
          this.pump();
          if (this.running === 0 && this.queue.length === 0) for (const w of this.waiters.splice(0)) w();
        });
    }
  }

  private async one(p: Buffer): Promise<void> {
    const fd = openSync(p, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      await fsyncAsync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** Wait while more than `max` are queued (keeps the queue bounded). */
  async throttle(max = 4096): Promise<void> {
    while (this.queue.length > max) await new Promise<void>((r) => this.waiters.push(r));
  }

  async drain(): Promise<void> {
    if (this.running || this.queue.length) await new Promise<void>((r) => this.waiters.push(r));
    if (this.failure) throw this.failure;
  }
}
