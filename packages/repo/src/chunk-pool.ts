import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type BlobId, type ContentPiece, StrataError, type Xattr } from "@strata/core";
import type { FileOutcome, FromWorker, ToWorker, WorkerInit } from "./chunk-worker.js";
import type { EncodedBlob } from "./pack.js";
import type { Repository } from "./repository.js";
import { detachEarly } from "./thread-pool.js";

/**
 * Where the pool's chunks go: the local repository (sealed into packs) or
 * an upload session (compressed frames for the server). `reserve` answers
 * which of the ids must be sent — and claims them so no other job sends
 * them; `proofs` (32 bytes per id) are given when the pool has a proof key.
 */
export interface ChunkSink {
  reserve(ids: readonly BlobId[], proofs: Buffer | null): Promise<Set<BlobId>>;
  release(ids: Iterable<BlobId>): void;
  addEncoded(b: EncodedBlob): void;
  /**
   * True when `addEncoded` is done with the blob's bytes once it returns
   * (they were written out, not kept): the pool then gives the buffer back
   * to its worker for the next batch.
   */
  readonly releasesData?: boolean;
}

/** The local repository as a chunk sink, with the worker setup that seals for it. */
export function repositorySink(repo: Repository): { sink: ChunkSink; init: WorkerInit } {
  return {
    sink: {
      reserve: (ids) => repo.reserve(ids),
      release: (ids) => repo.release(ids),
      addEncoded: (b) => repo.addEncoded(b),
      releasesData: repo.streamsPacks,
    },
    init: {
      key: new Uint8Array(repo.key.key),
      proofKey: null,
      chunker: repo.config.chunker,
      level: repo.config.compression.level,
    },
  };
}

export type FileResult =
  | { ok: true; pieces: ContentPiece[]; size: number; bytesRead: number; sig: string; xattrs: Xattr[] }
  | { ok: false; changed: boolean; code: string; message: string };

/** Files below this size travel to workers in batches. */
export const SMALL_FILE = 256 * 1024;
const BATCH_FILES = 64;
const BATCH_BYTES = 2 * 1024 * 1024;
/**
 * Bytes of small files in flight per thread. A worker holds a batch's
 * content until the main thread has said which chunks are new, and the main
 * thread may be slow to answer (it owns the catalog): without a byte bound,
 * a fast walk queued dozens of batches per worker.
 */
const SMALL_BYTES_PER_THREAD = 2 * BATCH_BYTES;

interface Job {
  resolve: (r: FileResult[]) => void;
  reject: (e: unknown) => void;
  reserved: Set<BlobId>;
  worker: number;
  files: number;
  bytes: number;
  large: boolean;
}

interface Pending {
  path: Buffer;
  size: number;
  resolve: (r: FileResult) => void;
  reject: (e: unknown) => void;
}

/**
 * One worker per core (at most 8). Each worker is a V8 isolate with its own
 * heap and buffers (~60 MB at full speed), so cores − 1 saves memory — but
 * on this 2-core machine it made every backup 10–25% slower on a quiet
 * machine (docs/benchmarks.md, 2026-11-26), so speed wins.
 */
export function defaultChunkThreads(): number {
  return Math.max(1, Math.min(availableParallelism(), 8));
}

/**
 * A pool of chunk workers with bounded work in flight. Large files go one
 * per job (a worker holds one 1 MiB read buffer per large job); small files
 * go in batches so a directory of tiny files costs a few messages, not five
 * per file. The main thread answers the workers' "which ids are new?"
 * queries from the repository (reserving new ids so two workers never store
 * the same chunk) and appends the encrypted blobs they send to the open pack.
 */
export class ChunkPool {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly jobs = new Map<number, Job>();
  private nextJob = 1;
  private largeInFlight = 0;
  private smallInFlight = 0;
  private readonly maxLarge: number;
  private readonly maxSmall: number;
  private readonly maxSmallBytes: number;
  private smallBytes = 0;
  private readonly slotWaiters: { size: number; wake: () => void }[] = [];
  private batch: Pending[] = [];
  private batchBytes = 0;
  private batchScheduled = false;
  private fatal: unknown = null;
  private closing = false;

  constructor(
    private readonly repo: ChunkSink,
    private readonly init: WorkerInit,
    threads = defaultChunkThreads(),
  ) {
    this.maxLarge = threads * 2;
    this.maxSmall = threads * BATCH_FILES * 3;
    this.maxSmallBytes = threads * SMALL_BYTES_PER_THREAD;
    this.threads = threads;
  }

  private readonly threads: number;

  /** Workers start on first use: a backup with nothing to read starts none. */
  private start(): void {
    if (this.workers.length) return;
    detachEarly();
    const init = this.init;
    for (let i = 0; i < this.threads; i++) {
      const w = new Worker(new URL("./chunk-worker.js", import.meta.url), { workerData: init });
      w.on("message", (m: FromWorker) => this.onMessage(i, m));
      w.on("error", (e) => this.fail(e));
      w.on("exit", (code) => {
        if (code !== 0 && !this.closing)
          this.fail(new StrataError("INTERNAL", `chunk worker exited with code ${code}`));
      });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  private fail(e: unknown): void {
    if (this.fatal) return;
    this.fatal = e;
    for (const j of this.jobs.values()) j.reject(e);
    this.jobs.clear();
    for (const p of this.batch.splice(0)) p.reject(e);
    for (const w of this.slotWaiters.splice(0)) w.wake();
  }

  private hasRoom(size: number): boolean {
    if (size >= SMALL_FILE) return this.largeInFlight < this.maxLarge;
    return (
      this.smallInFlight < this.maxSmall &&
      (this.smallBytes === 0 || this.smallBytes + size <= this.maxSmallBytes)
    );
  }

  /** Wait until a file of `size` bytes may be submitted (back-pressure). */
  async slot(size: number): Promise<void> {
    while (!this.hasRoom(size) && !this.fatal) {
      // Waiting for room must not hold back a batch that would make room.
      this.flushBatch();
      await new Promise<void>((wake) => this.slotWaiters.push({ size, wake }));
    }
    if (this.fatal) throw this.fatal;
  }

  submit(path: Buffer, size: number): Promise<FileResult> {
    if (this.fatal) return Promise.reject(this.fatal);
    if (size >= SMALL_FILE) {
      this.largeInFlight++;
      return this.post({ t: "file", job: 0, path: new Uint8Array(path) }, 1, true).then((r) => r[0]!);
    }
    this.smallInFlight++;
    this.smallBytes += size;
    return new Promise<FileResult>((resolve, reject) => {
      this.batch.push({ path, size, resolve, reject });
      this.batchBytes += size;
      if (this.batch.length >= BATCH_FILES || this.batchBytes >= BATCH_BYTES) this.flushBatch();
      else if (!this.batchScheduled) {
        this.batchScheduled = true;
        setImmediate(() => this.flushBatch());
      }
    });
  }

  private flushBatch(): void {
    this.batchScheduled = false;
    if (this.batch.length === 0) return;
    const batch = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    const paths = Buffer.concat(batch.map((p) => p.path));
    const lens = batch.map((p) => p.path.length);
    const sizes = batch.map((p) => p.size);
    const bytes = sizes.reduce((a, b) => a + b, 0);
    this.post({ t: "files", job: 0, paths, lens, sizes }, batch.length, false, bytes).then(
      (results) => {
        for (const [i, p] of batch.entries()) p.resolve(results[i]!);
      },
      (e) => {
        for (const p of batch) p.reject(e);
      },
    );
  }

  private post(
    msg: ToWorker & { job: number },
    files: number,
    large: boolean,
    bytes = 0,
  ): Promise<FileResult[]> {
    this.start();
    const job = this.nextJob++;
    let wi = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[wi]!) wi = i;
    this.load[wi]! += files;
    return new Promise<FileResult[]>((resolve, reject) => {
      this.jobs.set(job, { resolve, reject, reserved: new Set(), worker: wi, files, bytes, large });
      this.workers[wi]!.postMessage({ ...msg, job });
    });
  }

  private finish(job: number, r: FileResult[]): void {
    const j = this.jobs.get(job);
    if (!j) return;
    this.jobs.delete(job);
    // Reservations not fulfilled cannot happen (workers send blobs right after
    // the answer), but release defensively so no id is left claimed.
    if (j.reserved.size) this.repo.release(j.reserved);
    this.load[j.worker]! -= j.files;
    if (j.large) this.largeInFlight -= j.files;
    else {
      this.smallInFlight -= j.files;
      this.smallBytes -= j.bytes;
    }
    for (let i = 0; i < this.slotWaiters.length; i++) {
      const w = this.slotWaiters[i]!;
      if (this.hasRoom(w.size)) {
        this.slotWaiters.splice(i--, 1);
        w.wake();
      }
    }
    j.resolve(r);
  }

  private onMessage(wi: number, m: FromWorker): void {
    const j = this.jobs.get(m.job);
    if (!j) return;
    switch (m.t) {
      case "query":
        this.repo
          .reserve(
            m.ids,
            m.proofs ? Buffer.from(m.proofs.buffer, m.proofs.byteOffset, m.proofs.byteLength) : null,
          )
          .then(
            (need) => {
              for (const id of need) j.reserved.add(id);
              this.workers[wi]!.postMessage({
                t: "need",
                job: m.job,
                seq: m.seq,
                need: m.ids.map((id) => {
                  // An id repeated inside one batch is stored once: the first asks.
                  if (need.has(id)) {
                    need.delete(id);
                    return true;
                  }
                  return false;
                }),
              } satisfies ToWorker);
            },
            (e) => this.fail(e),
          );
        break;
      case "blobs":
        try {
          const all = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
          for (const b of m.blobs) {
            const data = all.subarray(b.offset, b.offset + b.length);
            this.repo.addEncoded({
              id: b.id,
              type: "chunk",
              data,
              rawLength: b.rawLength,
              compressed: b.compressed,
            });
            j.reserved.delete(b.id);
          }
          if (this.repo.releasesData && !this.closing)
            this.workers[wi]!.postMessage(
              { t: "recycle", job: 0, buf: m.data.buffer as ArrayBuffer } satisfies ToWorker,
              [m.data.buffer as ArrayBuffer],
            );
        } catch (e) {
          this.fail(e);
        }
        break;
      case "done":
        this.finish(m.job, m.results.map(toResult));
        break;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.flushBatch();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

function toResult(o: FileOutcome): FileResult {
  if (o.t === "ok") {
    return { ok: true, pieces: o.pieces, size: o.size, bytesRead: o.bytesRead, sig: o.sig, xattrs: o.xattrs };
  }
  if (o.t === "changed") return { ok: false, changed: true, code: "CHANGED", message: o.why };
  return { ok: false, changed: false, code: o.code, message: o.message };
}
