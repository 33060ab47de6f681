import {
  asChunkId,
  asTreeId,
  decodeTree,
  encodeTree,
  type FsNode,
  StrataError,
  scanTree,
} from "@strata/core";
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

/** What decodeTree says, or its error message. */
function outcome<T>(f: () => T): T | string {
  try {
    return f();
  } catch (e) {
    return `${(e as StrataError).code}: ${(e as Error).message}`;
  }
}

describe("scanTree (subtrees and chunks without decoding the nodes)", () => {
  const more: FsNode[] = [
    ...nodes,
    {
      name: Buffer.from("z"),
      type: "file",
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 2n,
      size: 12,
      // The same chunk twice and another: a set of two.
      content: [
        { id: asChunkId(id("c")), len: 4 },
        { id: asChunkId(id("a")), len: 4 },
        { id: asChunkId(id("c")), len: 4 },
      ],
    },
    {
      name: Buffer.from("zz"),
      type: "dir",
      mode: 0o755,
      uid: 0,
      gid: 0,
      mtimeNs: 3n,
      size: 0,
      subtree: asTreeId(id("e")),
    },
  ];

  it("finds what decoding finds", () => {
    const enc = encodeTree(more);
    const scan = scanTree(enc);
    const dec = decodeTree(enc);
    expect(scan.subtrees).toEqual(dec.map((n) => (n.type === "dir" ? n.subtree : null)));
    expect(scan.subtrees).toEqual([null, id("b"), null, null, null, id("e")]);
    expect([...scan.chunks].sort()).toEqual([id("a"), id("c")]);
    expect(scanTree(encodeTree([])).subtrees).toEqual([]);
  });

  it("refuses what decodeTree refuses, with the same error", () => {
    const enc = encodeTree(more);
    const spoiled: Buffer[] = [];
    for (let cut = 1; cut < enc.length; cut += 7) spoiled.push(enc.subarray(0, cut));
    spoiled.push(Buffer.concat([enc, Buffer.from([0])])); // trailing byte
    const badType = Buffer.from(enc);
    badType[5 + 2 + 3] = 9; // the first entry's type byte
    spoiled.push(badType);
    const huge = Buffer.from(encodeTree([more[4]!]));
    huge.writeUInt32LE(0x00200000, 5 + 2 + 1 + 1 + 12 + 8 + 4); // size above 2^53
    spoiled.push(huge);
    const unsorted = encodeTree([more[1]!]);
    spoiled.push(
      Buffer.concat([
        unsorted.subarray(0, 1),
        Buffer.from([2, 0, 0, 0]),
        unsorted.subarray(5),
        unsorted.subarray(5),
      ]),
    );
    for (const b of spoiled) {
      const want = outcome(() => decodeTree(b, "tree t"));
      expect(typeof want).toBe("string");
      expect(outcome(() => scanTree(b, "tree t"))).toBe(want);
    }
  });
});
