import { createHash } from "node:crypto";
import {
  applyTreeDelta,
  asChunkId,
  decodeTree,
  encodeTree,
  encodeTreeDelta,
  type FsNode,
  isStrataError,
  TREE_DELTA,
  type TreeId,
  treeDeltaBase,
} from "@strata/core";
import { describe, expect, it } from "vitest";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex") as TreeId;

function file(name: string, salt = ""): FsNode {
  return {
    name: Buffer.from(name),
    type: "file",
    mode: 0o644,
    uid: 1000,
    gid: 1000,
    mtimeNs: 1700000000000000000n,
    size: 100,
    content: [{ id: asChunkId(sha(Buffer.from(name + salt))), len: 100 }],
  };
}

const names = Array.from({ length: 100 }, (_, i) => `f${String(i).padStart(3, "0")}`);
const baseNodes = names.map((n) => file(n));
const base = encodeTree(baseNodes);
const baseId = sha(base);

function roundTrip(nodes: FsNode[]): Buffer {
  const full = encodeTree(nodes);
  const delta = encodeTreeDelta(baseId, base, full);
  expect(delta[0]).toBe(TREE_DELTA);
  expect(treeDeltaBase(delta)).toBe(baseId);
  const rebuilt = applyTreeDelta(delta, base, "tree t");
  expect(rebuilt.equals(full)).toBe(true);
  expect(decodeTree(rebuilt)).toEqual(decodeTree(full));
  return delta;
}

function expectCorrupt(f: () => unknown, text: RegExp): void {
  try {
    f();
  } catch (e) {
    expect(isStrataError(e) && e.code).toBe("DATA_CORRUPT");
    expect((e as Error).message).toMatch(text);
    return;
  }
  throw new Error("expected DATA_CORRUPT");
}

describe("tree deltas", () => {
  it("a full tree is its own stored form", () => {
    expect(treeDeltaBase(base)).toBeNull();
  });

  for (const [where, at] of [
    ["start", 0],
    ["middle", 50],
    ["end", 99],
  ] as const) {
    it(`round trip: change, insert and remove at the ${where}`, () => {
      const changed = baseNodes.slice();
      changed[at] = file(names[at]!, "edited");
      const delta = roundTrip(changed);
      // One changed entry costs about one entry, not the whole listing.
      expect(delta.length).toBeLessThan(base.length / 20);

      // New names that sort just before and just after names[at].
      const before = baseNodes.slice();
      before.splice(at, 0, file(`${names[at - 1] ?? "e"}x`));
      roundTrip(before);
      const after = baseNodes.slice();
      after.splice(at + 1, 0, file(`${names[at]}x`));
      roundTrip(after);

      const removed = baseNodes.slice();
      removed.splice(at, 1);
      roundTrip(removed);
    });
  }

  it("round trip: many edits, everything removed, empty base, identical", () => {
    const mixed = baseNodes
      .filter((_, i) => i % 7 !== 3)
      .map((n, i) => (i % 11 === 0 ? file(n.name.toString(), "x") : n));
    mixed.push(file("zz-new"));
    roundTrip(mixed);
    roundTrip([]);
    roundTrip(baseNodes);
    const empty = encodeTree([]);
    const emptyId = sha(empty);
    const full = encodeTree([file("a"), file("b")]);
    const d = encodeTreeDelta(emptyId, empty, full);
    expect(applyTreeDelta(d, empty).equals(full)).toBe(true);
    const d0 = encodeTreeDelta(emptyId, empty, empty);
    expect(applyTreeDelta(d0, empty).equals(empty)).toBe(true);
  });

  it("rejects malformed deltas naming the tree", () => {
    const changed = baseNodes.slice();
    changed[10] = file(names[10]!, "edited");
    const good = encodeTreeDelta(baseId, base, encodeTree(changed));
    // Layout: u8 2, 32-byte base, u32 count, u32 ops, then ops (copy 10, skip 1, insert, copy 89).
    const opsAt = 41;
    expect(good.readUInt32LE(37)).toBe(4);

    expectCorrupt(
      () => applyTreeDelta(Buffer.concat([good, Buffer.from([0])]), base, "tree T1"),
      /tree T1: 1 trailing bytes/,
    );
    expectCorrupt(
      () => applyTreeDelta(good.subarray(0, good.length - 3), base, "tree T2"),
      /tree T2: truncated/,
    );
    const wrongCount = Buffer.from(good);
    wrongCount.writeUInt32LE(101, 33);
    expectCorrupt(() => applyTreeDelta(wrongCount, base, "tree T3"), /tree T3: 100 entries, announces 101/);
    const tooMany = Buffer.from(good);
    tooMany.writeUInt32LE(50, 33);
    expectCorrupt(() => applyTreeDelta(tooMany, base, "tree T4"), /tree T4: more than the 50 entries/);
    const pastBase = Buffer.from(good);
    pastBase.writeUInt32LE(200, opsAt + 1); // copy 200 of 100
    expectCorrupt(() => applyTreeDelta(pastBase, base, "tree T5"), /tree T5: op 0 goes past the base/);
    const badOp = Buffer.from(good);
    badOp[opsAt] = 9;
    expectCorrupt(() => applyTreeDelta(badOp, base, "tree T6"), /tree T6: unknown delta op 9/);
    const zeroRun = Buffer.from(good);
    zeroRun.writeUInt32LE(0, opsAt + 1);
    expectCorrupt(() => applyTreeDelta(zeroRun, base, "tree T7"), /tree T7: op 0 goes past/);
    const fewerOps = Buffer.from(good);
    fewerOps.writeUInt32LE(3, 37); // the last copy becomes trailing bytes
    expectCorrupt(() => applyTreeDelta(fewerOps, base, "tree T8"), /tree T8: 5 trailing bytes/);
    const leftOver = Buffer.from(good);
    leftOver.writeUInt32LE(88, good.length - 4); // copy 88 of the last 89: one base entry unaccounted for
    leftOver.writeUInt32LE(99, 33);
    expectCorrupt(() => applyTreeDelta(leftOver, base, "tree T9"), /tree T9: 1 entries of the base left/);
    expectCorrupt(
      () => applyTreeDelta(good, base.subarray(0, base.length - 1), "tree T10"),
      /tree T10 \(its base\)/,
    );
    expectCorrupt(() => treeDeltaBase(good.subarray(0, 20), "tree T11"), /tree T11: tree delta truncated/);
    expectCorrupt(
      () => treeDeltaBase(Buffer.from([3, 0, 0]), "tree T12"),
      /tree T12: unknown tree version 3/,
    );
    // A delta applied to the wrong base rebuilds other bytes: the caller's hash check refuses them.
    const other = encodeTree(baseNodes.map((n) => ({ ...n, uid: 7 })));
    const rebuilt = applyTreeDelta(good, other, "tree T13");
    expect(sha(rebuilt)).not.toBe(sha(encodeTree(changed)));
  });
});
