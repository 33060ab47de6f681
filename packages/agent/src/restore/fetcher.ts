import { closeSync, constants, fsync, openSync, writeSync } from "node:fs";
import { promisify } from "node:util";
import { type BlobId, StrataError } from "@strata/core";
import { displayPath } from "@strata/fs";
import type { RestoreSource, TreeRef } from "./source.js";

const fsyncAsync = promisify(fsync);

/** A staged regular file waiting for chunks. */
export interface PendingFile {
  /** Where it is staged (absolute). */
  path: Buffer;
  /** Chunk writes still missing. */
  missing: number;
  /** Called once every chunk is in place: metadata, then `sync`. */
  finish: () => void;
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

const IN_FLIGHT = 2;

const newBatch = (): Batch => ({ chunks: new Map(), trees: new Map(), files: [], bytes: 0 });

export interface FetcherLimits {
  /** Chunk bytes per request (restore.md: up to 8 MiB across many files). */
  bytes: number;
  files: number;
}

/**
 * Collects the chunks staged files still lack and fetches them from the
 * source in batches (restore.md, "Seeds"): up to 8 MiB or 1,000 files per
 * `fetchChunks` call, two calls in flight while planning goes on, so memory
 * holds at most three batches of requests. A chunk named by several files
 * (or twice in one) is fetched once and written everywhere.
 */
export class Fetcher {
  private batch = newBatch();
  /** Requests in flight: two, so the server reads the next batch while this one is written. */
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown = null;
  fetchedBytes = 0;

  constructor(
    private readonly source: RestoreSource,
    readonly _sync: SyncQueue,
    private readonly limits: FetcherLimits,
    private readonly signal?: AbortSignal,
  ) {}

  /** `wanted`: chunk id → offsets in the file; `tree` names the file (its grant covers the ids). */
  async add(
    file: PendingFile,
    tree: TreeRef,
    wanted: Map<BlobId, number[]>,
    lens: Map<BlobId, number>,
  ): Promise<void> {
    const b = this.batch;
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

  private async run(b: Batch): Promise<void> {
    if (b.chunks.size) {
      await this.source.fetchChunks(
        [...b.trees.values()],
        (id, plain) => {
          const c = b.chunks.get(id);
          if (!c) return; // not asked for (or delivered twice)
          b.chunks.delete(id);
          if (plain.length !== c.len) {
            throw new StrataError(
              "DATA_CORRUPT",
              `chunk ${id} has ${plain.length} bytes where the snapshot says ${c.len}`,
              { subject: id },
            );
          }
          for (const t of c.targets) {
            const fd = openSync(t.file.path, constants.O_WRONLY | constants.O_NOFOLLOW);
            try {
              let w = 0;
              while (w < plain.length) w += writeSync(fd, plain, w, plain.length - w, t.offset + w);
            } finally {
              closeSync(fd);
            }
            this.fetchedBytes += plain.length;
            t.file.missing--;
          }
        },
        this.signal,
      );
    }
    for (const f of b.files) {
      if (f.missing !== 0) {
        throw new StrataError(
          "DATA_CORRUPT",
          `the source did not deliver every chunk of ${displayPath(f.path)}`,
          { subject: displayPath(f.path) },
        );
      }
      f.finish();
    }
  }
}

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

  constructor(
    private readonly parallel = 16,
    readonly viaSyncfs = true,
  ) {}

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
