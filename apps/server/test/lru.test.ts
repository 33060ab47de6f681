import { describe, expect, it } from "vitest";
import { Lru } from "../src/services/lru.js";
import { UPLOAD_TREE_CACHE_ENTRIES } from "../src/services/upload-service.js";

describe("Lru", () => {
  it("evicts the least recently used entry past its count", () => {
    const c = new Lru<number>(2);
    c.set("a", 1);
    c.set("b", 2);
    expect(c.get("a")).toBe(1); // a is now the most recent
    c.set("c", 3);
    expect(c.get("b")).toBeUndefined();
    expect(c.get("a")).toBe(1);
    expect(c.get("c")).toBe(3);
    expect(c.size.entries).toBe(2);
  });

  it("with a weight bound, holds at most that much in all, whatever the count allows", () => {
    // Decoded trees of 2,000 entries each, as a 1M-file endpoint's 1% change touches 500 of them.
    const c = new Lru<Map<string, number>>(512, {
      maxWeight: UPLOAD_TREE_CACHE_ENTRIES,
      weigh: (m) => m.size,
    });
    const tree = () => new Map(Array.from({ length: 2000 }, (_, i) => [`f${i}`, i]));
    let peak = 0;
    for (let i = 0; i < 500; i++) {
      c.set(`t${i}`, tree());
      peak = Math.max(peak, c.size.weight);
    }
    expect(peak).toBeLessThanOrEqual(UPLOAD_TREE_CACHE_ENTRIES);
    expect(c.size.entries).toBe(UPLOAD_TREE_CACHE_ENTRIES / 2000);
    expect(c.get("t499")?.size).toBe(2000);
    expect(c.get("t0")).toBeUndefined();
  });

  it("keeps the newest entry even when it alone is over the bound, and re-setting a key re-weighs it", () => {
    const c = new Lru<string>(10, { maxWeight: 5, weigh: (s) => s.length });
    c.set("a", "xx");
    c.set("b", "yyyyyyyy"); // 8 > 5: a goes, b stays
    expect(c.get("a")).toBeUndefined();
    expect(c.get("b")).toBe("yyyyyyyy");
    c.set("b", "z");
    expect(c.size).toEqual({ entries: 1, weight: 1 });
  });
});
