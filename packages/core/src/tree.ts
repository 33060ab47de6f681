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
  w.u8(1).u32(nodes.length);
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
    const version = r.u8();
    if (version !== 1) throw new ReadError(`${what}: unknown tree version ${version}`);
    const count = r.u32();
    if (count > buf.length) throw new ReadError(`${what}: entry count ${count} too large`);
    const out: FsNode[] = [];
    let prev: Buffer | null = null;
    for (let i = 0; i < count; i++) {
      const name = Buffer.from(r.bytes(r.u16()));
      if (prev && Buffer.compare(prev, name) >= 0)
        throw new ReadError(`${what}: entries not strictly sorted`);
      prev = name;
      const type = TYPES[r.u8()];
      if (!type) throw new ReadError(`${what}: unknown entry type`);
      const node: FsNode = {
        name,
        type,
        mode: r.u32(),
        uid: r.u32(),
        gid: r.u32(),
        mtimeNs: r.i64(),
        size: 0,
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
      out.push(node);
    }
    if (r.remaining !== 0) throw new ReadError(`${what}: ${r.remaining} trailing bytes`);
    return out;
  } catch (e) {
    if (e instanceof ReadError) throw new StrataError("DATA_CORRUPT", e.message, { subject: what, cause: e });
    throw e;
  }
}

/** Ids of every chunk a file node references (holes excluded). */
export function* chunkIdsOf(node: FsNode): Generator<ChunkId> {
  for (const p of node.content ?? []) if ("id" in p) yield p.id;
}
