import { asChunkId, asTreeId, decodeTree, encodeTree, type FsNode, StrataError } from "@strata/core";
import { describe, expect, it } from "vitest";

const id = (c: string) => c.repeat(64);
const nodes: FsNode[] = [
  {
    name: Buffer.from([0x61, 0xff, 0x0a]),
    type: "file",
    mode: 0o4755,
    uid: 0,
    gid: 12345,
    mtimeNs: 1700000000123456789n,
    size: 10,
    content: [{ id: asChunkId(id("a")), len: 4 }, { hole: 6 }],
    xattrs: [{ name: "security.capability", value: Buffer.from([1, 2, 3]) }],
    link: { dev: 5, ino: 77, nlink: 2 },
  },
  {
    name: Buffer.from("d"),
    type: "dir",
    mode: 0o1777,
    uid: 1,
    gid: 2,
    mtimeNs: -5n,
    size: 0,
    subtree: asTreeId(id("b")),
  },
  {
    name: Buffer.from("l"),
    type: "symlink",
    mode: 0o777,
    uid: 0,
    gid: 0,
    mtimeNs: 0n,
    size: 0,
    target: Buffer.from([0xfe, 0x2f]),
  },
  { name: Buffer.from("n"), type: "chardev", mode: 0o666, uid: 0, gid: 0, mtimeNs: 1n, size: 0, rdev: 259 },
];

describe("tree codec", () => {
  it("round-trips every field byte-exactly", () => {
    const back = decodeTree(encodeTree(nodes));
    expect(back).toEqual(nodes);
  });
  it("is deterministic", () => {
    expect(encodeTree(nodes).equals(encodeTree(nodes.map((n) => ({ ...n }))))).toBe(true);
  });
  it("refuses unsorted or duplicate names on encode and decode", () => {
    expect(() => encodeTree([nodes[1]!, nodes[1]!])).toThrow(/sorted/);
    const enc = encodeTree([nodes[1]!]);
    const dup = Buffer.concat([
      enc.subarray(0, 1),
      Buffer.from([2, 0, 0, 0]),
      enc.subarray(5),
      enc.subarray(5),
    ]);
    expect(() => decodeTree(dup, "tree x")).toThrow(/tree x: entries not strictly sorted/);
  });
  it("reports truncation as DATA_CORRUPT naming the tree", () => {
    const enc = encodeTree(nodes);
    for (const cut of [1, 7, enc.length - 1]) {
      try {
        decodeTree(enc.subarray(0, cut), "tree abc");
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(StrataError);
        expect((e as StrataError).code).toBe("DATA_CORRUPT");
        expect((e as Error).message).toMatch(/tree abc/);
      }
    }
  });
});
