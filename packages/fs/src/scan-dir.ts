import type { BigIntStats } from "node:fs";
import { errnoError, native } from "./native.js";

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
/** Bytes of one entry's stat values: ten 64-bit fields. */
const STAT_BYTES = 80;

/**
 * An lstat result read from `scanDir`'s buffer. It has the fields and type
 * tests a backup walk uses (dev, ino, mode, nlink, uid, gid, rdev, size,
 * mtimeNs, ctimeNs; isDirectory, isFile, isSymbolicLink), as bigints like
 * `lstatSync(p, { bigint: true })`, read only when asked for.
 */
export class PackedStat {
  constructor(
    private readonly b: Buffer,
    private readonly o: number,
  ) {}
  get dev(): bigint {
    return this.b.readBigUInt64LE(this.o);
  }
  get ino(): bigint {
    return this.b.readBigUInt64LE(this.o + 8);
  }
  get mode(): bigint {
    return this.b.readBigUInt64LE(this.o + 16);
  }
  get nlink(): bigint {
    return this.b.readBigUInt64LE(this.o + 24);
  }
  get uid(): bigint {
    return this.b.readBigUInt64LE(this.o + 32);
  }
  get gid(): bigint {
    return this.b.readBigUInt64LE(this.o + 40);
  }
  get rdev(): bigint {
    return this.b.readBigUInt64LE(this.o + 48);
  }
  get size(): bigint {
    return this.b.readBigInt64LE(this.o + 56);
  }
  get mtimeNs(): bigint {
    return this.b.readBigInt64LE(this.o + 64);
  }
  get ctimeNs(): bigint {
    return this.b.readBigInt64LE(this.o + 72);
  }
  private type(): number {
    return this.b.readUInt32LE(this.o + 16) & S_IFMT;
  }
  isDirectory(): boolean {
    return this.type() === S_IFDIR;
  }
  isFile(): boolean {
    return this.type() === S_IFREG;
  }
  isSymbolicLink(): boolean {
    return this.type() === S_IFLNK;
  }
}

export interface ScannedEntry {
  name: Buffer;
  /** The entry's lstat, typed as Node's for the code that takes one (only the fields above exist). */
  st: BigIntStats | null;
  /** Why it could not be stat'ed (ENOENT: it vanished between readdir and lstat). */
  error: NodeJS.ErrnoException | null;
}

/**
 * List directory `path` and lstat every entry in one native call (readdir
 * and fstatat relative to the open directory): a walk of many small files
 * pays one crossing into C per directory instead of one per entry and builds
 * no Stats objects. Entries come in directory order, "." and ".." left out.
 * Throws like `readdirSync` when the directory cannot be read.
 */
export function scanDir(path: Buffer): ScannedEntry[] {
  const b = native.scanDir(path);
  const out: ScannedEntry[] = [];
  let o = 0;
  while (o < b.length) {
    const len = b.readUInt16LE(o);
    const name = Buffer.from(b.subarray(o + 2, o + 2 + len));
    o += 2 + len;
    const status = b.readInt32LE(o);
    o += 4;
    if (status === 0) {
      out.push({ name, st: new PackedStat(b, o) as unknown as BigIntStats, error: null });
      o += STAT_BYTES;
    } else {
      const where = Buffer.concat([path, Buffer.from("/"), name]).toString();
      const error = errnoError(status, "lstat", where);
      out.push({ name, st: null, error });
    }
  }
  return out;
}
