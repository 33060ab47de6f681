/**
 * The agent's upload bandwidth cap: one token bucket shared by every
 * request the agent makes, so the policy's `bandwidthLimitKBps` bounds the
 * sum, not each connection.
 *
 * Tokens are bytes. The bucket holds at most one second of the rate (the
 * burst) and starts full. A take larger than the bucket is allowed when the
 * bucket is full and leaves it in debt, so any chunk size is paced at the
 * rate on average. Waiters are served first come, first served: a large
 * body cannot starve a small request, nor the other way round.
 */
import { Readable } from "node:stream";
import { StrataError } from "@strata/core";
import { type Clock, systemClock } from "./clock.js";

/** What a request needs from the limiter: wait until `bytes` may be sent. */
export interface Throttle {
  take(bytes: number, signal?: AbortSignal): Promise<void>;
}

export interface TokenBucketOptions {
  /** KiB/s; 0 means unlimited. */
  rateKBps: number;
  clock?: Clock;
  /** Seconds of rate the bucket holds. Default 1. */
  burstSeconds?: number;
}

interface Waiter {
  bytes: number;
  resolve: () => void;
  reject: (e: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

function checkRate(kBps: number): number {
  if (!Number.isFinite(kBps) || kBps < 0)
    throw new StrataError("INVALID_ARGUMENT", `bandwidth limit ${kBps} KiB/s must be a number ≥ 0`);
  return kBps;
}

export class TokenBucket implements Throttle {
  private readonly clock: Clock;
  private readonly burstSeconds: number;
  private kBps: number;
  private tokens = 0;
  private last = 0;
  private readonly queue: Waiter[] = [];
  private pumping = false;
  /** Aborted to cut the pump's sleep short (rate change, head waiter gone). */
  private wake: AbortController | undefined;

  constructor(opts: TokenBucketOptions) {
    this.clock = opts.clock ?? systemClock;
    this.burstSeconds = opts.burstSeconds ?? 1;
    this.kBps = checkRate(opts.rateKBps);
    this.last = this.clock.now();
    this.tokens = this.capacity;
  }

  /** The current cap in KiB/s (0: unlimited). */
  get rateKBps(): number {
    return this.kBps;
  }

  private get bytesPerSecond(): number {
    return this.kBps * 1024;
  }

  private get capacity(): number {
    return this.bytesPerSecond * this.burstSeconds;
  }

  /**
   * Change the cap (a new policy). Takes effect for bytes not yet granted,
   * including requests already waiting.
   */
  setRate(kBps: number): void {
    checkRate(kBps);
    if (kBps === this.kBps) return;
    const wasUnlimited = this.kBps === 0;
    this.refill();
    this.kBps = kBps;
    // Leaving "unlimited" starts with a full bucket, like a new one.
    this.tokens = wasUnlimited ? this.capacity : Math.min(this.tokens, this.capacity);
    this.last = this.clock.now();
    this.wake?.abort();
    void this.pump();
  }

  take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (bytes <= 0 || (this.kBps === 0 && this.queue.length === 0)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        bytes,
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.queue.indexOf(w);
          if (i < 0) return;
          this.queue.splice(i, 1);
          reject(signal?.reason);
          if (i === 0) this.wake?.abort();
        },
      };
      signal?.addEventListener("abort", w.onAbort, { once: true });
      this.queue.push(w);
      void this.pump();
    });
  }

  private refill(): void {
    const now = this.clock.now();
    if (this.kBps > 0 && now > this.last)
      this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
  }

  private grant(w: Waiter): void {
    w.signal?.removeEventListener("abort", w.onAbort);
    w.resolve();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      for (let w = this.queue[0]; w !== undefined; w = this.queue[0]) {
        if (this.kBps === 0) {
          this.queue.shift();
          this.grant(w);
          continue;
        }
        this.refill();
        const need = Math.min(w.bytes, this.capacity);
        if (this.tokens >= need) {
          this.tokens -= w.bytes;
          this.queue.shift();
          this.grant(w);
          continue;
        }
        const ms = Math.ceil(((need - this.tokens) / this.bytesPerSecond) * 1000);
        this.wake = new AbortController();
        await this.clock.sleep(ms, this.wake.signal).catch(() => {});
        this.wake = undefined;
      }
    } finally {
      this.pumping = false;
    }
  }
}

export interface ThrottleIterableOptions {
  signal?: AbortSignal;
  /** Largest piece taken from the bucket and yielded at once. Default 16 KiB. */
  sliceBytes?: number;
}

/**
 * Pace a body: yields the source's bytes, in pieces of at most
 * `sliceBytes`, each after the throttle grants it. Works on any async
 * iterable of bytes, Node streams included.
 */
export async function* throttleIterable(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  throttle: Throttle,
  opts: ThrottleIterableOptions = {},
): AsyncGenerator<Buffer> {
  const slice = opts.sliceBytes ?? 16 * 1024;
  for await (const chunk of source) {
    const buf = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (let off = 0; off < buf.length; off += slice) {
      const piece = buf.subarray(off, Math.min(buf.length, off + slice));
      await throttle.take(piece.length, opts.signal);
      yield piece;
    }
  }
}

/** `throttleIterable` as a Readable, for APIs that want a stream body. */
export function throttleStream(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  throttle: Throttle,
  opts: ThrottleIterableOptions = {},
): Readable {
  return Readable.from(throttleIterable(source, throttle, opts), { objectMode: false });
}
