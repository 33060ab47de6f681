import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { StrataError } from "@strata/core";

/** The default number of threads: one per core, at most four. */
export function defaultThreads(): number {
  return Math.max(1, Math.min(availableParallelism(), 4));
}

let detachedEarly = false;

/**
 * Detach one ArrayBuffer now, once per thread. V8 compiles typed-array code
 * on the assumption that no ArrayBuffer was ever detached, until one is:
 * the first transfer (postMessage with a transfer list) then throws away
 * every optimized function that relied on it — most code that touches a
 * Buffer — and it is compiled again. The pools and their workers transfer
 * buffers, so they make that first detach before the work's code is hot
 * instead of in the middle of it: in a full restore, 32 such discards →
 * 5, and ~30 fewer optimizing compilations (docs/benchmarks.md, session 13).
 */
export function detachEarly(): void {
  if (detachedEarly) return;
  detachedEarly = true;
  const ab = new ArrayBuffer(8);
  structuredClone(ab, { transfer: [ab] });
}

/**
 * Worker threads answering requests of one kind (`{ seq, ... }` in,
 * `{ seq, result } | { seq, error }` out). A request goes to the worker
 * with the fewest in flight. `slot()` bounds the requests in flight, so a
 * caller holding large buffers awaits it before reading the next one.
 */
export class ThreadPool<Req extends object, Res> {
  private readonly workers: Worker[] = [];
  private readonly inFlight: number[] = [];
  private readonly waiting = new Map<
    number,
    { resolve: (v: Res) => void; reject: (e: unknown) => void; worker: number }
  >();
  private readonly slotWaiters: (() => void)[] = [];
  private seq = 0;
  private closed = false;
  private broken: unknown = null;

  constructor(
    script: URL,
    workerData: unknown,
    readonly threads: number,
    /** Requests in flight before `slot()` waits. */
    private readonly limit: number,
    what: string,
  ) {
    detachEarly();
    for (let i = 0; i < threads; i++) {
      const w = new Worker(script, { workerData });
      w.on("message", (m: { seq: number; result?: Res; error?: string }) => {
        const p = this.waiting.get(m.seq);
        if (!p) return;
        this.waiting.delete(m.seq);
        this.inFlight[p.worker]!--;
        this.slotWaiters.shift()?.();
        if (m.error === undefined) p.resolve(m.result as Res);
        else p.reject(new StrataError("INTERNAL", m.error || `${what} failed`));
      });
      w.on("error", (e) => this.fail(e));
      w.on("exit", (code) => {
        if (code !== 0 && !this.closed)
          this.fail(new StrataError("INTERNAL", `${what} worker exited with code ${code}`));
      });
      this.workers.push(w);
      this.inFlight.push(0);
    }
  }

  private fail(e: unknown): void {
    // A pool that lost a worker answers nothing more: a call sent to the dead thread would never settle.
    this.broken ??= e;
    for (const p of this.waiting.values()) p.reject(e);
    this.waiting.clear();
    for (const w of this.slotWaiters.splice(0)) w();
  }

  /** Resolves when fewer than `limit` requests are in flight. */
  async slot(): Promise<void> {
    while (this.waiting.size >= this.limit) await new Promise<void>((r) => this.slotWaiters.push(r));
  }

  /** Send a request; `transfer` lists ArrayBuffers moved to the worker (the caller must not use them afterwards). */
  call(req: Req, transfer: ArrayBuffer[] = []): Promise<Res> {
    if (this.broken) return Promise.reject(this.broken);
    const seq = ++this.seq;
    let k = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.inFlight[i]! < this.inFlight[k]!) k = i;
    this.inFlight[k]!++;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject, worker: k });
      this.workers[k]!.postMessage({ ...req, seq }, transfer);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** `buf` itself when it owns its whole ArrayBuffer (so it can be transferred), else a copy that does. */
export function ownBuffer(buf: Buffer): Buffer {
  return buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength ? buf : Buffer.from(buf);
}

/**
 * Run a worker's request handler: answers `{ seq, result }` or `{ seq, error }`.
 * `transferOf` names buffers of the result moved back to the caller (not copied).
 */
export function serve<Req extends { seq: number }, Res>(
  port: { on(ev: "message", f: (m: Req) => void): void; postMessage(m: unknown, t?: ArrayBuffer[]): void },
  handle: (m: Req) => Res | Promise<Res>,
  transferOf?: (result: Res) => ArrayBuffer[],
): void {
  detachEarly();
  port.on("message", (m: Req) => {
    Promise.resolve()
      .then(() => handle(m))
      .then(
        (result) => port.postMessage({ seq: m.seq, result }, transferOf?.(result)),
        (e) => port.postMessage({ seq: m.seq, error: (e as Error)?.message ?? String(e) }),
      );
  });
}
