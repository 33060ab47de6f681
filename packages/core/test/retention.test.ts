import { applyRetention } from "@strata/core";
import { describe, expect, it } from "vitest";

const snaps = Array.from({ length: 48 }, (_, i) => ({
  id: `s${i}`,
  time: new Date(Date.UTC(2026, 0, 1 + Math.floor(i / 4), (i % 4) * 6)),
}));

describe("retention", () => {
  it("keeps last N", () => {
    const d = applyRetention(snaps, { last: 3 });
    expect(d.keep.map((k) => k.item.id)).toEqual(["s47", "s46", "s45"]);
    expect(d.remove).toHaveLength(45);
  });
  it("keeps the newest of each day", () => {
    const d = applyRetention(snaps, { daily: 2 });
    expect(d.keep.map((k) => k.item.id)).toEqual(["s47", "s43"]);
  });
  it("unions rules and records reasons", () => {
    const d = applyRetention(snaps, { last: 1, daily: 2, monthly: 1 });
    expect(d.keep[0]!.reasons).toEqual(["last", "daily", "monthly"]);
    expect(d.keep).toHaveLength(2);
  });
});
