import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { systemClock } from "../src/clock.js";
import { TokenBucket, throttleIterable, throttleStream } from "../src/throttle.js";
import { FakeClock, settle } from "./helpers.js";

const KiB = 1024;

/** Start `take` and report whether it has resolved. */
function track(p: Promise<void>): { done: () => boolean; error: () => unknown } {
  let done = false;
  let error: unknown;
  p.then(
    () => {
      done = true;
    },
    (e) => {
      error = e;
    },
  );
  return { done: () => done, error: () => error };
}

async function drain(it: AsyncIterable<Buffer>, got: { bytes: number }): Promise<void> {
  for await (const b of it) got.bytes += b.length;
}

describe("TokenBucket", () => {
  it("does not wait when unlimited", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket({ rateKBps: 0, clock });
    const t = track(b.take(100 * 1024 * 1024));
    await settle();
    expect(t.done()).toBe(true);
    expect(clock.pending()).toEqual([]);
  });

  it("grants a one-second burst, then paces at the rate", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket({ rateKBps: 10, clock });
    const first = track(b.take(10 * KiB));
    await settle();
    expect(first.done()).toBe(true);
    const second = track(b.take(10 * KiB));
    await clock.advance(999);
    expect(second.done()).toBe(false);
    await clock.advance(1);
    expect(second.done()).toBe(true);
  });

  it("lets a take larger than the bucket through when full and makes the next one wait off the debt", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket({ rateKBps: 10, clock });
    const big = track(b.take(50 * KiB));
    await settle();
    expect(big.done()).toBe(true);
    const next = track(b.take(1 * KiB));
    // 40 KiB of debt plus 1 KiB at 10 KiB/s: 4.1 s.
    await clock.advance(4000);
    expect(next.done()).toBe(false);
    await clock.advance(100);
    expect(next.done()).toBe(true);
  });

  it("is shared: two bodies together stay under the cap, and both progress", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket({ rateKBps: 10, clock });
    const a = { bytes: 0 };
    const c = { bytes: 0 };
    const body = () => [Buffer.alloc(30 * KiB)];
    const pa = track(drain(throttleIterable(body(), b, { sliceBytes: 1 * KiB }), a));
    const pc = track(drain(throttleIterable(body(), b, { sliceBytes: 1 * KiB }), c));
    await clock.advance(2500);
    // 10 KiB burst + 25 KiB paced, split between the two.
    expect(a.bytes + c.bytes).toBeLessThanOrEqual(35 * KiB + 2 * KiB);
    expect(a.bytes).toBeGreaterThan(10 * KiB);
    expect(c.bytes).toBeGreaterThan(10 * KiB);
    // 60 KiB in total: 10 KiB burst then 50 KiB at 10 KiB/s = 5 s.
    await clock.advance(2400);
    expect(pa.done() && pc.done()).toBe(false);
    await clock.advance(200);
    expect(pa.done() && pc.done()).toBe(true);
    expect(a.bytes + c.bytes).toBe(60 * KiB);
  });

  it("applies a new rate to requests already waiting", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket({ rateKBps: 1, clock });
    await b.take(1 * KiB);
    const slow = track(b.take(1 * KiB));
    await clock.advance(100);
    expect(slow.done()).toBe(false);
    b.setRate(100);
    expect(b.rateKBps).toBe(100);
    // At 100 KiB/s the remaining ~0.9 KiB take ~9 ms, not 900.
    await clock.advance(20);
    expect(slow.done()).toBe(true);

    const later = track(b.take(200 * KiB));
    await settle();
    const after = track(b.take(1 * KiB));
    b.setRate(0);
    await settle();
    expect(later.done() && after.done()).toBe(true);
  });

  it("drops an aborted waiter and serves the next one", async () => {
    const clock = new FakeClock();
    const b = new TokenBucket({ rateKBps: 1, clock });
    await b.take(1 * KiB);
    const ac = new AbortController();
    const gone = track(b.take(8 * KiB, ac.signal));
    const next = track(b.take(1 * KiB));
    await clock.advance(10);
    ac.abort(new Error("stop"));
    await settle();
    expect((gone.error() as Error).message).toBe("stop");
    // Only `next`'s 1 KiB is owed now, not 8 KiB first.
    await clock.advance(1000);
    expect(next.done()).toBe(true);
    await expect(b.take(1, ac.signal)).rejects.toThrow("stop");
  });

  it("rejects a negative rate", () => {
    expect(() => new TokenBucket({ rateKBps: -1 })).toThrow(/≥ 0/);
  });
});

describe("throttled upload over loopback HTTP (real time)", () => {
  it("keeps the average rate under the cap", async () => {
    let first = 0;
    let last = 0;
    let received = 0;
    const server = createServer((req, res) => {
      req.on("data", (d: Buffer) => {
        const now = performance.now();
        if (first === 0) first = now;
        last = now;
        received += d.length;
      });
      req.on("end", () => res.end("ok"));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    try {
      const rateKBps = 256;
      const total = 768 * KiB;
      const bucket = new TokenBucket({ rateKBps, clock: systemClock });
      const source = (function* () {
        for (let i = 0; i < total / (64 * KiB); i++) yield Buffer.alloc(64 * KiB, i);
      })();
      const body = throttleStream(source, bucket);
      await new Promise<void>((resolve, reject) => {
        const req = request({ host: "127.0.0.1", port, method: "POST", path: "/" }, (res) => {
          res.resume();
          res.on("end", resolve);
        });
        req.on("error", reject);
        body.pipe(req);
      });
      expect(received).toBe(total);
      // What the bucket lets through beyond its one-second burst must take
      // at least (total - burst) / rate. Margin 25% for timer granularity.
      const seconds = (last - first) / 1000;
      const paced = (total - rateKBps * KiB) / KiB / seconds;
      expect(paced).toBeLessThan(rateKBps * 1.25);
    } finally {
      server.close();
    }
  });
});
