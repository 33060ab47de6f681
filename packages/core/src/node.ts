import type { ChunkId, TreeId } from "./ids.js";

/**
 * One filesystem object as recorded in a tree. Names and symlink targets are
 * raw bytes (Linux names need not be UTF-8). Times are nanoseconds since the
 * epoch. This is the unit of fidelity: what `@strata/fs` reads from an
 * endpoint and writes back on restore.
 */
export type NodeType = "file" | "dir" | "symlink" | "fifo" | "socket" | "chardev" | "blockdev";

/** A piece of a regular file's content: a stored chunk, or a hole of zeroes. */
export type ContentPiece = { id: ChunkId; len: number } | { hole: number };

export interface Xattr {
  /** Full attribute name including namespace, e.g. "security.capability". */
  name: string;
  value: Buffer;
}

export interface FsNode {
  name: Buffer;
  type: NodeType;
  /** Permission bits including setuid/setgid/sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  /** Regular files: logical size in bytes (holes included). */
  size: number;
  /** Regular files: content in order; holes are kept sparse on restore. */
  content?: ContentPiece[];
  /** Symlinks: the raw target bytes. */
  target?: Buffer;
  /** Devices: st_rdev. */
  rdev?: number;
  /** Sorted by name. Includes system.posix_acl_access/default for ACLs. */
  xattrs?: Xattr[];
  /**
   * Non-directories with st_nlink > 1: identity of the inode so restore can
   * recreate the hard link. Absent when nlink is 1 so identical trees from
   * different disks encode identically.
   */
  link?: { dev: number; ino: number; nlink: number };
  /** Directories: the id of the tree holding the entries. */
  subtree?: TreeId;
}

/** Compare raw name bytes: the order of entries in a tree. */
export function compareNames(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}
