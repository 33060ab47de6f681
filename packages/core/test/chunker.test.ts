import { randomBytes } from "node:crypto";
import { Chunker, DEFAULT_CHUNKER_PARAMS, validateChunkerParams } from "@strata/core";
import { describe, expect, it } from "vitest";

function chunkAll(data: Buffer, feed = data.length): number[] {
  const c = new Chunker();
  const lens: number[] = [];
  let start = 0;
  let avail = 0;
  while (start < data.length) {
    avail = Math.min(data.length, Math.max(avail, start) + feed);
    const eof = avail === data.length;
    const n = c.next(data, start, avail, eof);
    if (n < 0) continue;
    lens.push(n);
    start += n;
    if (eof && start === data.length) break;
  }
  return lens;
}

describe("FastCDC chunker", () => {
  const data = randomBytes(8 * 1024 * 1024);

  it("respects min/max and averages near avgSize", () => {
    const lens = chunkAll(data);
    expect(lens.reduce((a, b) => a + b, 0)).toBe(data.length);
    const { minSize, maxSize, avgSize } = DEFAULT_CHUNKER_PARAMS;
    for (const l of lens.slice(0, -1)) {
      expect(l).toBeGreaterThanOrEqual(minSize);
      expect(l).toBeLessThanOrEqual(maxSize);
    }
    const mean = data.length / lens.length;
    expect(mean).toBeGreaterThan(avgSize * 0.6);
    expect(mean).toBeLessThan(avgSize * 1.6);
  });

  it("cuts identically whether data arrives whole or in small pieces", () => {
    expect(chunkAll(data, 7919)).toEqual(chunkAll(data));
  });

  it("resynchronises after an insertion at the start", () => {
    const a = chunkAll(data);
    const b = chunkAll(Buffer.concat([randomBytes(100), data]));
    // All but the first couple of chunks must have the same lengths.
    const tailA = a.slice(-Math.floor(a.length * 0.9));
    const tailB = b.slice(-tailA.length);
    expect(tailB).toEqual(tailA);
  });

  it("a different gear seed gives different cut points", () => {
    const c = new Chunker({ ...DEFAULT_CHUNKER_PARAMS, gearSeed: "01" });
    const first = c.next(data, 0, data.length, true);
    expect(first).not.toBe(chunkAll(data)[0]);
  });

  it("rejects invalid parameters", () => {
    expect(validateChunkerParams({ ...DEFAULT_CHUNKER_PARAMS, avgSize: 1000 })).toContain(
      "avgSize must be a power of two",
    );
    expect(() => new Chunker({ ...DEFAULT_CHUNKER_PARAMS, minSize: 1 << 20 })).toThrow(/minSize/);
  });
});
