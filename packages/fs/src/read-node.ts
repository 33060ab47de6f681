import type { BigIntStats } from "node:fs";
import { constants } from "node:fs";
import { readlink } from "node:fs/promises";
import { type FsNode, fromSystemError, type NodeType, StrataError, type Xattr } from "@strata/core";
import { displayPath } from "./display-path.js";
import { native } from "./native.js";

const { S_IFMT, S_IFREG, S_IFDIR, S_IFLNK, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK } = constants;

/** The node type for st_mode, or undefined for a type Strata does not know. */
export function nodeTypeOf(mode: number): NodeType | undefined {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "file";
    case S_IFDIR:
      return "dir";
    case S_IFLNK:
      return "symlink";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "socket";
    case S_IFCHR:
      return "chardev";
    case S_IFBLK:
      return "blockdev";
    default:
      return undefined;
  }
}

/**
 * Describe the object at `path` (already lstat'ed by the caller as `st`, with
 * `{ bigint: true }` so nanoseconds and large inode numbers survive). Content
 * and subtree are left for the repository to fill.
 */
export async function readNode(path: Buffer, name: Buffer, st: BigIntStats): Promise<FsNode> {
  const node = nodeFromStat(path, name, st);
  const type = node.type;
  if (type === "symlink") {
    try {
      node.target = await readlink(path, { encoding: "buffer" });
    } catch (e) {
      throw fromSystemError(e, "reading symlink", displayPath(path));
    }
  }
  if (type === "chardev" || type === "blockdev") node.rdev = Number(st.rdev);
  const xattrs = readXattrs(path);
  if (xattrs.length > 0) node.xattrs = xattrs;
  return node;
}

/**
 * The part of a node that `lstat` alone gives (no further syscalls): type,
 * mode, owner, mtime, size and hard-link identity. `readNode` adds the
 * symlink target, device number and xattrs; the backup walk uses this for
 * regular files, whose xattrs are read by the worker that reads the content.
 */
export function nodeFromStat(path: Buffer, name: Buffer, st: BigIntStats): FsNode {
  const mode = Number(st.mode);
  const type = nodeTypeOf(mode);
  if (type === undefined) {
    throw new StrataError(
      "UNSUPPORTED",
      `${displayPath(path)} has an unknown file type (mode ${mode.toString(8)})`,
      {
        subject: displayPath(path),
      },
    );
  }
  const node: FsNode = {
    name,
    type,
    mode: mode & 0o7777,
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeNs: st.mtimeNs,
    size: type === "file" ? Number(st.size) : 0,
  };
  // Hard links are only recorded when there is another name for the inode, so
  // identical trees from different disks encode identically.
  if (type !== "dir" && st.nlink > 1n) {
    node.link = { dev: Number(st.dev), ino: Number(st.ino), nlink: Number(st.nlink) };
  }
  return node;
}

/**
 * Every extended attribute of the object itself (not a symlink's target), in
 * all namespaces the kernel lets us read: user, trusted, security (including
 * security.capability) and system (POSIX ACLs), sorted by name bytes.
 * A filesystem without xattr support yields none.
 */
export function readXattrs(path: Buffer): Xattr[] {
  let names: string[];
  try {
    names = native.llistxattr(path);
  } catch (e) {
    if (isNotSupported(e)) return [];
    throw fromSystemError(e, "listing xattrs of", displayPath(path));
  }
  const out: Xattr[] = [];
  for (const name of names) {
    try {
      out.push({ name, value: native.lgetxattr(path, name) });
    } catch (e) {
      // Removed between list and get: the file changed under us, as files do.
      if ((e as NodeJS.ErrnoException).code === "ENODATA") continue;
      if (isNotSupported(e)) continue;
      throw fromSystemError(e, `reading xattr ${name} of`, displayPath(path));
    }
  }
  // Names are latin1 strings (one char per byte), so this is byte order.
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return out;
}

function isNotSupported(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === "ENOTSUP" || code === "EOPNOTSUPP";
}

/**
 * Data extents of the open regular file `fd` of logical size `size`, as
 * [offset, length] pairs in order; everything else is a hole. A filesystem
 * without SEEK_DATA/SEEK_HOLE reports the whole file as data.
 */
export function dataRanges(fd: number, size: number): Array<[number, number]> {
  if (size <= 0) return [];
  const ranges: Array<[number, number]> = [];
  try {
    let off = 0;
    while (off < size) {
      const data = native.seekData(fd, off);
      if (data < 0 || data >= size) break;
      let hole = native.seekHole(fd, data);
      if (hole < 0 || hole > size) hole = size;
      ranges.push([data, hole - data]);
      off = hole;
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EINVAL" || code === "ENOTSUP" || code === "EOPNOTSUPP") return [[0, size]];
    throw fromSystemError(e, "finding data extents of", `fd ${fd}`);
  }
  return ranges;
}
