import { createHash } from "node:crypto";
import { type BigIntStats, closeSync, constants, fstatSync, openSync, readSync, writeSync } from "node:fs";
import { type BlobId, Chunker, type ChunkerParams, type FsNode } from "@strata/core";
import { dataRanges } from "@strata/fs";

/*
 * Local data first (docs/design/restore.md, "Seeds"): compare a file in the
 * root with the snapshot's version by hashing it at the snapshot's chunk
 * boundaries, and build a changed file from the chunks of the old one.
 */

/** Pieces larger than this are not read for a comparison (a hostile snapshot may claim anything). */
const MAX_PIECE = 64 * 1024 * 1024;

const { O_RDONLY, O_NOFOLLOW, O_NOATIME } = constants;

/** Open for reading without following a symlink; O_NOATIME when we may (our own files, or root). */
export function openForRead(path: Buffer): number {
  try {
    return openSync(path, O_RDONLY | O_NOFOLLOW | O_NOATIME);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") throw e;
    return openSync(path, O_RDONLY | O_NOFOLLOW);
  }
}

function readFull(fd: number, buf: Buffer, len: number, pos: number): number {
  let got = 0;
  while (got < len) {
    const n = readSync(fd, buf, got, len - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/**
 * The local data tools of one restore: one read buffer and one chunker,
 * reused (planning is sequential).
 */
export class SeedReader {
  private buf: Buffer;
  private readonly chunker: Chunker;
  readonly params: ChunkerParams;

  constructor(params: ChunkerParams) {
    this.params = params;
    this.chunker = new Chunker(params);
    this.buf = Buffer.allocUnsafeSlow(Math.max(1024 * 1024, params.maxSize * 2));
  }

  private need(len: number): Buffer {
    if (this.buf.length < len) this.buf = Buffer.allocUnsafeSlow(len);
    return this.buf;
  }

  /**
   * Whether the regular file at `path` (lstat'ed as `st`) holds exactly the
   * content of `node`: every chunk hashes to its id at its offset and every
   * hole reads as zeroes. Reads the file once at most; stops at the first
   * difference.
   */
  sameContent(path: Buffer, st: BigIntStats, node: FsNode): boolean {
    if (Number(st.size) !== node.size) return false;
    let fd: number;
    try {
      fd = openForRead(path);
    } catch {
      return false;
    }
    try {
      const now = fstatSync(fd, { bigint: true });
      if (!now.isFile() || now.ino !== st.ino || now.size !== st.size) return false;
      let off = 0;
      for (const p of node.content ?? []) {
        if ("hole" in p) {
          if (!this.zeroes(fd, off, p.hole)) return false;
          off += p.hole;
          continue;
        }
        if (p.len > MAX_PIECE || off + p.len > node.size) return false;
        const b = this.need(p.len);
        if (readFull(fd, b, p.len, off) !== p.len) return false;
        if (sha(b.subarray(0, p.len)) !== p.id) return false;
        off += p.len;
      }
      return off === node.size;
    } finally {
      closeSync(fd);
    }
  }

  /** `len` bytes at `off` are zero (holes are skipped without reading). */
  private zeroes(fd: number, off: number, len: number): boolean {
    const end = off + len;
    const ranges = dataRanges(fd, end).filter(([o, l]) => o + l > off);
    for (const [o, l] of ranges) {
      let pos = Math.max(o, off);
      const stop = Math.min(o + l, end);
      while (pos < stop) {
        const n = Math.min(1024 * 1024, stop - pos);
        const b = this.need(n);
        if (readFull(fd, b, n, pos) !== n) return false;
        for (let i = 0; i < n; i++) if (b[i] !== 0) return false;
        pos += n;
      }
    }
    return true;
  }

  /**
   * Cut the regular file at `seed` with the repository's chunker (over its
   * data extents, as a backup does) and copy every chunk `wanted` names into
   * `fd` at each of its offsets; satisfied ids are removed from `wanted`.
   * Returns the bytes copied. A seed that cannot be read copies nothing.
   */
  copyFrom(seed: Buffer, wanted: Map<BlobId, number[]>, fd: number): number {
    if (wanted.size === 0) return 0;
    let sfd: number;
    try {
      sfd = openForRead(seed);
    } catch {
      return 0;
    }
    let copied = 0;
    try {
      const st = fstatSync(sfd, { bigint: true });
      if (!st.isFile()) return 0;
      const size = Number(st.size);
      const ranges: [number, number][] =
        Number(st.blocks) * 512 >= size ? (size > 0 ? [[0, size]] : []) : dataRanges(sfd, size);
      const buf = this.need(Math.max(1024 * 1024, this.params.maxSize * 2));
      for (const [off, len] of ranges) {
        const end = off + len;
        let filled = 0;
        let readPos = off;
        this.chunker.reset();
        for (;;) {
          const want = Math.min(buf.length - filled, end - readPos);
          if (want > 0) {
            const n = readSync(sfd, buf, filled, want, readPos);
            if (n === 0) return copied; // shrank while read: keep what we copied
            filled += n;
            readPos += n;
          }
          const eof = readPos >= end;
          let start = 0;
          while (start < filled) {
            const l = this.chunker.next(buf, start, filled, eof);
            if (l <= 0) break;
            const data = buf.subarray(start, start + l);
            const id = sha(data) as BlobId;
            const at = wanted.get(id);
            if (at) {
              for (const o of at) {
                let w = 0;
                while (w < l) w += writeSync(fd, data, w, l - w, o + w);
                copied += l;
              }
              wanted.delete(id);
              if (wanted.size === 0) return copied;
            }
            start += l;
          }
          if (start > 0) {
            buf.copy(buf, 0, start, filled);
            filled -= start;
          }
          if (eof && filled === 0) break;
        }
      }
      return copied;
    } finally {
      closeSync(sfd);
    }
  }
}
