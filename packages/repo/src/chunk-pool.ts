import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type BlobId, type ContentPiece, StrataError } from "@strata/core";
import type { FromWorker, ToWorker, WorkerInit } from "./chunk-worker.js";
import type { Repository } from "./repository.js";

export type FileResult =
  | { ok: true; pieces: ContentPiece[]; size: number; bytesRead: number }
  | { ok: false; changed: boolean; code: string; message: string };

interface Job {
  resolve: (r: FileResult) => void;
  reject: (e: unknown) => void;
  reserved: Set<BlobId>;
  worker: number;
}

/**
 * A pool of chunk workers with a bounded number of files in flight. The
 * main thread answers their "which ids are new?" queries from the repository
 * (reserving new ids so two workers never store the same chunk) and appends
 * the encrypted blobs they send to the open pack.
 */
export class ChunkPool {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly jobs = new Map<number, Job>();
  private nextJob = 1;
  private inFlight = 0;
  private readonly slotWaiters: (() => void)[] = [];
  private fatal: unknown = null;
  /** Bytes handed to the repository by workers. */
  storedBytes = 0;

  constructor(
    private readonly repo: Repository,
    threads = Math.max(1, Math.min(availableParallelism(), 8)),
    private readonly maxInFlight = threads * 8,
  ) {
    const init: WorkerInit = {
      key: new Uint8Array(repo.key.key),
      chunker: repo.config.chunker,
      level: repo.config.compression.level,
    };
    for (let i = 0; i < threads; i++) {
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

  private closing = false;

  private fail(e: unknown): void {
    if (this.fatal) return;
    this.fatal = e;
    for (const j of this.jobs.values()) j.reject(e);
    this.jobs.clear();
    for (const w of this.slotWaiters.splice(0)) w();
  }

  /** Wait for a free slot; call before `submit` to apply back-pressure. */
  async slot(): Promise<void> {
    while (this.inFlight >= this.maxInFlight && !this.fatal) {
      await new Promise<void>((r) => this.slotWaiters.push(r));
    }
    if (this.fatal) throw this.fatal;
  }

  get busy(): number {
    return this.inFlight;
  }

  submit(path: Buffer): Promise<FileResult> {
    if (this.fatal) return Promise.reject(this.fatal);
    const job = this.nextJob++;
    let wi = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[wi]!) wi = i;
    this.load[wi]!++;
    this.inFlight++;
    return new Promise<FileResult>((resolve, reject) => {
      this.jobs.set(job, { resolve, reject, reserved: new Set(), worker: wi });
      this.workers[wi]!.postMessage({ t: "file", job, path: new Uint8Array(path) } satisfies ToWorker);
    });
  }

  private finish(job: number, r: FileResult): void {
    const j = this.jobs.get(job);
    if (!j) return;
    this.jobs.delete(job);
    // Reservations not fulfilled cannot happen (workers send blobs right after
    // the answer), but release defensively so no id is left claimed.
    if (j.reserved.size) this.repo.release(j.reserved);
    this.load[j.worker]!--;
    this.inFlight--;
    this.slotWaiters.shift()?.();
    j.resolve(r);
  }

  private onMessage(wi: number, m: FromWorker): void {
    const j = this.jobs.get(m.job);
    if (!j) return;
    switch (m.t) {
      case "query":
        this.repo.reserve(m.ids).then(
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
            this.storedBytes += data.length;
          }
        } catch (e) {
          this.fail(e);
        }
        break;
      case "done":
        this.finish(m.job, { ok: true, pieces: m.pieces, size: m.size, bytesRead: m.bytesRead });
        break;
      case "changed":
        this.finish(m.job, { ok: false, changed: true, code: "CHANGED", message: m.why });
        break;
      case "error":
        this.finish(m.job, { ok: false, changed: false, code: m.code, message: m.message });
        break;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
