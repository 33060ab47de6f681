import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type PackId, StrataError } from "@strata/core";
import type { IndexEntry } from "./catalog.js";
import type { MasterKey } from "./crypto.js";
import type { PackVerdict } from "./pack-verify.js";
import type { VerifyRequest } from "./verify-worker.js";

/**
 * Worker threads verifying whole packs for `check --read-data`, so every
 * core decrypts and hashes. At most `threads` packs are in flight (each
 * up to 64 MiB): the caller awaits `slot()` before reading the next pack.
 */
export class VerifyPool {
  private readonly workers: Worker[] = [];
  private readonly waiting = new Map<
    number,
    { resolve: (v: PackVerdict) => void; reject: (e: unknown) => void }
  >();
  private readonly slotWaiters: (() => void)[] = [];
  private seq = 0;
  private next = 0;
  private closed = false;

  constructor(
    key: MasterKey,
    private readonly threads = Math.max(1, Math.min(availableParallelism(), 4)),
  ) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(new URL("./verify-worker.js", import.meta.url), {
        workerData: { key: new Uint8Array(key.key) },
      });
      w.on("message", (m: { seq: number; verdict?: PackVerdict; error?: string }) => {
        const p = this.waiting.get(m.seq);
        if (!p) return;
        this.waiting.delete(m.seq);
        this.slotWaiters.shift()?.();
        if (m.verdict) p.resolve(m.verdict);
        else p.reject(new StrataError("INTERNAL", m.error ?? "verification failed"));
      });
      w.on("error", (e) => this.fail(e));
      w.on("exit", (code) => {
        if (code !== 0 && !this.closed)
          this.fail(new StrataError("INTERNAL", `verify worker exited with code ${code}`));
      });
      this.workers.push(w);
    }
  }

  private fail(e: unknown): void {
    for (const p of this.waiting.values()) p.reject(e);
    this.waiting.clear();
    for (const w of this.slotWaiters.splice(0)) w();
  }

  async slot(): Promise<void> {
    while (this.waiting.size >= this.threads) await new Promise<void>((r) => this.slotWaiters.push(r));
  }

  /** Verify `data` (transferred: the caller must not use it afterwards). */
  verify(id: PackId, data: Buffer, size: number, entries: IndexEntry[]): Promise<PackVerdict> {
    const seq = ++this.seq;
    const w = this.workers[this.next++ % this.workers.length]!;
    // Transfer needs a buffer of its own (not a slice of a shared pool).
    const own =
      data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? data : Buffer.from(data);
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      const req: VerifyRequest = {
        seq,
        id,
        data: own,
        size,
        entries: entries.map((e) => ({
          id: e.id,
          packId: e.packId,
          offset: e.offset,
          length: e.length,
          rawLength: e.rawLength,
          compressed: e.compressed,
        })),
      };
      w.postMessage(req, [own.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
