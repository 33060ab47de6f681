import { MessageChannel } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { BufferPool } from "../src/buffer-pool.js";

describe("BufferPool", () => {
  it("hands out exact lengths on power-of-two ArrayBuffers and reuses what is given back", () => {
    const pool = new BufferPool(1 << 20, 64 * 1024, 512 * 1024);
    const a = pool.take(100_000);
    expect(a.length).toBe(100_000);
    expect(a.buffer.byteLength).toBe(128 * 1024);
    expect(a.byteOffset).toBe(0);
    pool.give(a.buffer);
    expect(pool.keptBytes).toBe(128 * 1024);
    const b = pool.take(70_000);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.keptBytes).toBe(0);
    // A request of another class does not take it.
    pool.give(b.buffer);
    const c = pool.take(10);
    expect(c.buffer.byteLength).toBe(64 * 1024);
    expect(c.buffer).not.toBe(a.buffer);
  });

  it("keeps at most maxKept bytes and drops buffers that are not its own sizes", () => {
    const pool = new BufferPool(256 * 1024, 64 * 1024, 512 * 1024);
    const bufs = [pool.take(200_000), pool.take(200_000), pool.take(200_000)];
    for (const b of bufs) pool.give(b.buffer);
    expect(pool.keptBytes).toBe(256 * 1024); // one 256 KiB buffer kept, two dropped
    pool.give(new ArrayBuffer(100_000)); // not a class size
    pool.give(new ArrayBuffer(1 << 20)); // above the largest class
    expect(pool.keptBytes).toBe(256 * 1024);
    const big = pool.take(600_000); // above maxClass: a one-off of the exact size
    expect(big.buffer.byteLength).toBe(600_000);
  });

  it("gives buffers that can be transferred to another thread and back", async () => {
    const pool = new BufferPool(1 << 20);
    const buf = pool.take(1000);
    buf.fill(7);
    const { port1, port2 } = new MessageChannel();
    const got = new Promise<ArrayBuffer>((resolve) => port2.once("message", resolve));
    port1.postMessage(buf.buffer, [buf.buffer as ArrayBuffer]);
    expect(buf.length).toBe(0); // detached here
    const back = await got;
    expect(new Uint8Array(back, 0, 1000).every((x) => x === 7)).toBe(true);
    pool.give(back);
    expect(pool.take(5000).buffer).toBe(back);
    port1.close();
  });
});
