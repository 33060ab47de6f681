import { ReadError, Reader, Writer } from "./codec.js";
import { StrataError } from "./errors.js";
import { bytesToId, type ChunkId, idToBytes, type TreeId } from "./ids.js";
import type { ContentPiece, FsNode, NodeType } from "./node.js";

/**
 * Tree encoding, version 1. A tree is the listing of one directory: its
 * entries sorted by raw name bytes, strictly increasing (no duplicates). The
 * encoding is deterministic, so identical directories produce identical
 * bytes, hence identical tree ids, and are stored once. Layout (little
 * endian):
 *
 *   u8 version=1, u32 count, then per entry:
 *   u16 nameLen, name bytes, u8 type, u32 mode, u32 uid, u32 gid, i64 mtimeNs,
 *   type-specific body:
 *     file:    u64 size, u32 pieces, per piece u8 kind (0 chunk: 32-byte id +
 *              u32 len; 1 hole: u64 len)
 *     dir:     32-byte subtree id
 *     symlink: u32 len + target bytes
 *     chardev, blockdev: u64 rdev
 *   u16 xattrs, per xattr: u16 nameLen + name (latin1), u32 valueLen + value
 *   u8 hasLink; when 1: u64 dev, u64 ino, u32 nlink
 */
const TYPES: NodeType[] = ["file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev"];

export function encodeTree(nodes: readonly FsNode[]): Buffer {
  const w = new Writer(256 + nodes.length * 96);
  w.u8(TREE_FULL).u32(nodes.length);
  let prev: Buffer | null = null;
  for (const n of nodes) {
    if (prev && Buffer.compare(prev, n.name) >= 0) {
      throw new StrataError("INTERNAL", `tree entries not strictly sorted at ${n.name.toString("latin1")}`);
    }
    prev = n.name;
    w.u16(n.name.length).bytes(n.name);
    w.u8(TYPES.indexOf(n.type)).u32(n.mode).u32(n.uid).u32(n.gid).i64(n.mtimeNs);
    switch (n.type) {
      case "file": {
        const pieces = n.content ?? [];
        w.u64(n.size).u32(pieces.length);
        for (const p of pieces) {
          if ("id" in p) w.u8(0).bytes(idToBytes(p.id)).u32(p.len);
          else w.u8(1).u64(p.hole);
        }
        break;
      }
      case "dir":
        if (!n.subtree) throw new StrataError("INTERNAL", "directory node without subtree");
        w.bytes(idToBytes(n.subtree));
        break;
      case "symlink":
        w.lbytes(n.target ?? Buffer.alloc(0));
        break;
      case "chardev":
      case "blockdev":
        w.u64(n.rdev ?? 0);
        break;
      default:
        break;
    }
    const xs = n.xattrs ?? [];
    w.u16(xs.length);
    for (const x of xs) {
      const name = Buffer.from(x.name, "latin1");
      w.u16(name.length).bytes(name).lbytes(x.value);
    }
    if (n.link) w.u8(1).u64(n.link.dev).u64(n.link.ino).u32(n.link.nlink);
    else w.u8(0);
  }
  return w.finish();
}

/** Decode a tree; throws DATA_CORRUPT naming `what` on any malformed input. */
export function decodeTree(buf: Buffer, what = "tree"): FsNode[] {
  try {
    const r = new Reader(buf, what);
    const count = readTreeHead(r, buf, what);
    const out: FsNode[] = [];
    let prev: Buffer | null = null;
    for (let i = 0; i < count; i++) {
      const node = readEntry(r, what);
      if (prev && Buffer.compare(prev, node.name) >= 0)
        throw new ReadError(`${what}: entries not strictly sorted`);
      prev = node.name;
      out.push(node);
    }
    if (r.remaining !== 0) throw new ReadError(`${what}: ${r.remaining} trailing bytes`);
    return out;
  } catch (e) {
    throw corrupt(e, what);
  }
}

/** What `scanTree` finds in a tree. */
export interface TreeScan {
  /** Per entry, in order: the directory's subtree id, or null for anything else. */
  subtrees: (TreeId | null)[];
  /** Every chunk id its files name. */
  chunks: Set<ChunkId>;
}

/**
 * The subtrees and chunk ids of a full tree encoding, without decoding its
 * entries into nodes (no name, xattr or content objects): what a server
 * answering a restore needs of each tree. Validates exactly as decodeTree
 * does, with the same DATA_CORRUPT errors.
 */
export function scanTree(buf: Buffer, what = "tree"): TreeScan {
  try {
    const r = new Reader(buf, what);
    const count = readTreeHead(r, buf, what);
    const subtrees: (TreeId | null)[] = new Array(count);
    const chunks = new Set<ChunkId>();
    let prev: Buffer | null = null;
    for (let i = 0; i < count; i++) {
      const name = r.bytes(r.u16());
      if (prev && Buffer.compare(prev, name) >= 0)
        throw new ReadError(`${what}: entries not strictly sorted`);
      prev = name;
      const type = TYPES[r.u8()];
      if (!type) throw new ReadError(`${what}: unknown entry type`);
      // mode, uid, gid, mtime: one by one, so a truncation reads as decodeTree reports it.
      r.skip(4);
      r.skip(4);
      r.skip(4);
      r.skip(8);
      subtrees[i] = null;
      switch (type) {
        case "file": {
          r.skipU64();
          const n = r.u32();
          if (n > r.remaining) throw new ReadError(`${what}: piece count ${n} too large`);
          for (let j = 0; j < n; j++) {
            const kind = r.u8();
            if (kind === 0) {
              chunks.add(bytesToId<ChunkId>(r.bytes(32)));
              r.skip(4);
            } else if (kind === 1) r.skipU64();
            else throw new ReadError(`${what}: unknown piece kind ${kind}`);
          }
          break;
        }
        case "dir":
          subtrees[i] = bytesToId<TreeId>(r.bytes(32));
          break;
        case "symlink":
          r.lbytes(4096 * 16);
          break;
        case "chardev":
        case "blockdev":
          r.skipU64();
          break;
        default:
          break;
      }
      const nx = r.u16();
      for (let j = 0; j < nx; j++) {
        r.skip(r.u16());
        r.lbytes(1 << 26);
      }
      if (r.u8() === 1) {
        r.skipU64();
        r.skipU64();
        r.skip(4);
      }
    }
    if (r.remaining !== 0) throw new ReadError(`${what}: ${r.remaining} trailing bytes`);
    return { subtrees, chunks };
  } catch (e) {
    throw corrupt(e, what);
  }
}

function corrupt(e: unknown, what: string): unknown {
  if (e instanceof ReadError) return new StrataError("DATA_CORRUPT", e.message, { subject: what, cause: e });
  return e;
}

/** Version byte and entry count of a full (version 1) tree encoding. */
function readTreeHead(r: Reader, buf: Buffer, what: string): number {
  const version = r.u8();
  if (version !== TREE_FULL) throw new ReadError(`${what}: unknown tree version ${version}`);
  const count = r.u32();
  if (count > buf.length) throw new ReadError(`${what}: entry count ${count} too large`);
  return count;
}

/** One entry of a version 1 tree (see encodeTree). */
function readEntry(r: Reader, what: string): FsNode {
  const name = Buffer.from(r.bytes(r.u16()));
  const type = TYPES[r.u8()];
  if (!type) throw new ReadError(`${what}: unknown entry type`);
  // Every field, in one order, whatever the type: all decoded nodes share one hidden class, so the
  // restore's planner, which reads tens of thousands of them, stays monomorphic (with a class per
  // combination of optional fields, its optimized code was thrown away and rebuilt as new ones came).
  const node: FsNode = {
    name,
    type,
    mode: r.u32(),
    uid: r.u32(),
    gid: r.u32(),
    mtimeNs: r.i64(),
    size: 0,
    content: undefined,
    target: undefined,
    rdev: undefined,
    xattrs: undefined,
    link: undefined,
    subtree: undefined,
  };
  switch (type) {
    case "file": {
      node.size = r.u64();
      const n = r.u32();
      if (n > r.remaining) throw new ReadError(`${what}: piece count ${n} too large`);
      const content: ContentPiece[] = new Array(n);
      for (let j = 0; j < n; j++) {
        const kind = r.u8();
        if (kind === 0) content[j] = { id: bytesToId<ChunkId>(r.bytes(32)), len: r.u32() };
        else if (kind === 1) content[j] = { hole: r.u64() };
        else throw new ReadError(`${what}: unknown piece kind ${kind}`);
      }
      node.content = content;
      break;
    }
    case "dir":
      node.subtree = bytesToId<TreeId>(r.bytes(32));
      break;
    case "symlink":
      node.target = Buffer.from(r.lbytes(4096 * 16));
      break;
    case "chardev":
    case "blockdev":
      node.rdev = r.u64();
      break;
    default:
      break;
  }
  const nx = r.u16();
  if (nx > 0) {
    node.xattrs = [];
    for (let j = 0; j < nx; j++) {
      const xname = r.bytes(r.u16()).toString("latin1");
      node.xattrs.push({ name: xname, value: Buffer.from(r.lbytes(1 << 26)) });
    }
  }
  if (r.u8() === 1) node.link = { dev: r.u64(), ino: r.u64(), nlink: r.u32() };
  return node;
}

/**
 * Stored forms of a tree blob. The tree's id is always the SHA-256 of its
 * full (version 1) encoding; the stored plaintext is either that encoding
 * or a delta (version 2) against a base tree that is stored full:
 *
 *   u8 version=2, 32-byte base tree id, u32 entry count of the result,
 *   u32 op count, then per op:
 *     0 copy:   u32 n (≥ 1): the next n entries of the base, unchanged
 *     1 skip:   u32 n (≥ 1): the next n entries of the base are left out
 *     2 insert: one entry in version 1 form
 *
 * The ops consume the base's entries exactly once, in order. Applying the
 * delta yields the full version 1 bytes, which the reader hashes against the
 * tree's id (docs/design/repository-format.md, "Tree deltas").
 */
export const TREE_FULL = 1;
export const TREE_DELTA = 2;
const OP_COPY = 0;
const OP_SKIP = 1;
const OP_INSERT = 2;

/** The base tree of a stored tree plaintext: null when it is stored full. Throws DATA_CORRUPT when neither. */
export function treeDeltaBase(stored: Buffer, what = "tree"): TreeId | null {
  if (stored[0] === TREE_FULL) return null;
  if (stored[0] === TREE_DELTA && stored.length >= 41) return bytesToId<TreeId>(stored.subarray(1, 33));
  throw new StrataError(
    "DATA_CORRUPT",
    stored[0] === TREE_DELTA
      ? `${what}: tree delta truncated (${stored.length} bytes)`
      : `${what}: unknown tree version ${stored[0] ?? "(empty)"}`,
    { subject: what },
  );
}

/** Byte ranges of the entries of a full tree encoding (validated as decodeTree does). */
function entrySpans(buf: Buffer, what: string): number[] {
  const r = new Reader(buf, what);
  const count = readTreeHead(r, buf, what);
  // starts[i] .. starts[i + 1]; the last one ends the buffer.
  const starts: number[] = [];
  for (let i = 0; i < count; i++) {
    starts.push(r.offset);
    readEntry(r, what);
  }
  if (r.remaining !== 0) throw new ReadError(`${what}: ${r.remaining} trailing bytes`);
  starts.push(r.offset);
  return starts;
}

function entryName(buf: Buffer, start: number): Buffer {
  return buf.subarray(start + 2, start + 2 + buf.readUInt16LE(start));
}

/**
 * Encode `full` (a full tree encoding) as a delta against `base` (the full
 * encoding of tree `baseId`). Both are trusted (produced or verified by the
 * caller); the result applies back to `full` exactly.
 */
export function encodeTreeDelta(baseId: TreeId, base: Buffer, full: Buffer): Buffer {
  const b = entrySpans(base, `tree ${baseId}`);
  const f = entrySpans(full, "new tree");
  const w = new Writer(64 + full.length / 4);
  w.u8(TREE_DELTA)
    .bytes(idToBytes(baseId))
    .u32(f.length - 1);
  const ops = new Writer(64 + full.length / 4);
  let nops = 0;
  let run = { op: -1, n: 0 };
  const endRun = () => {
    if (run.n > 0) {
      ops.u8(run.op).u32(run.n);
      nops++;
    }
    run = { op: -1, n: 0 };
  };
  const base1 = (op: number) => {
    if (run.op !== op) endRun();
    run.op = op;
    run.n++;
  };
  const insert = (j: number) => {
    endRun();
    ops.u8(OP_INSERT).bytes(full.subarray(f[j]!, f[j + 1]!));
    nops++;
  };
  let i = 0;
  let j = 0;
  const nb = b.length - 1;
  const nf = f.length - 1;
  while (i < nb || j < nf) {
    if (i >= nb) insert(j++);
    else if (j >= nf) {
      base1(OP_SKIP);
      i++;
    } else {
      const c = Buffer.compare(entryName(base, b[i]!), entryName(full, f[j]!));
      if (c < 0) {
        base1(OP_SKIP);
        i++;
      } else if (c > 0) insert(j++);
      else {
        if (base.subarray(b[i]!, b[i + 1]!).equals(full.subarray(f[j]!, f[j + 1]!))) base1(OP_COPY);
        else {
          base1(OP_SKIP);
          insert(j);
        }
        i++;
        j++;
      }
    }
  }
  endRun();
  return Buffer.concat([w.u32(nops).finish(), ops.finish()]);
}

/**
 * Apply a stored delta to its base's full encoding: returns the full
 * version 1 bytes (not yet hashed: the caller compares them with the tree's
 * id). Throws DATA_CORRUPT naming `what` on any malformed delta.
 */
export function applyTreeDelta(delta: Buffer, base: Buffer, what = "tree"): Buffer {
  try {
    const r = new Reader(delta, what);
    if (r.u8() !== TREE_DELTA) throw new ReadError(`${what}: not a tree delta`);
    r.bytes(32);
    const count = r.u32();
    if (count > delta.length + base.length) throw new ReadError(`${what}: entry count ${count} too large`);
    const nops = r.u32();
    if (nops > r.remaining) throw new ReadError(`${what}: op count ${nops} too large`);
    const b = entrySpans(base, `${what} (its base)`);
    const nb = b.length - 1;
    const parts: Buffer[] = [];
    const head = Buffer.alloc(5);
    head[0] = TREE_FULL;
    head.writeUInt32LE(count, 1);
    parts.push(head);
    let i = 0;
    let made = 0;
    for (let k = 0; k < nops; k++) {
      const op = r.u8();
      if (op === OP_COPY || op === OP_SKIP) {
        const n = r.u32();
        if (n === 0 || i + n > nb) throw new ReadError(`${what}: op ${k} goes past the base's ${nb} entries`);
        if (op === OP_COPY) {
          parts.push(base.subarray(b[i]!, b[i + n]!));
          made += n;
        }
        i += n;
      } else if (op === OP_INSERT) {
        const at = r.offset;
        readEntry(r, what);
        parts.push(delta.subarray(at, r.offset));
        made++;
      } else throw new ReadError(`${what}: unknown delta op ${op}`);
      if (made > count) throw new ReadError(`${what}: more than the ${count} entries it announces`);
    }
    if (r.remaining !== 0) throw new ReadError(`${what}: ${r.remaining} trailing bytes`);
    if (i !== nb) throw new ReadError(`${what}: ${nb - i} entries of the base left unaccounted for`);
    if (made !== count) throw new ReadError(`${what}: ${made} entries, announces ${count}`);
    return Buffer.concat(parts);
  } catch (e) {
    throw corrupt(e, what);
  }
}

/** Ids of every chunk a file node references (holes excluded). */
export function* chunkIdsOf(node: FsNode): Generator<ChunkId> {
  for (const p of node.content ?? []) if ("id" in p) yield p.id;
}
