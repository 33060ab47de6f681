/**
 * A minimal ustar writer for the recovery tool's payload: regular files
 * only (tar creates their parent directories), owned by root, with fixed
 * times, streamed — the node binary is read once, never held whole.
 */
import { statSync } from "node:fs";
import type { Readable } from "node:stream";

export interface TarEntry {
  /** Relative path inside the archive, `/`-separated, < 100 bytes. */
  name: string;
  mode: number;
  /** The content: in memory, or read from this file. */
  data?: Buffer;
  file?: string;
}

const BLOCK = 512;

function octal(n: number, width: number): string {
  // width - 1 digits and a NUL, as tar expects.
  return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

/** One ustar header block. */
export function tarHeader(name: string, size: number, mode: number, mtime: number): Buffer {
  const nameBytes = Buffer.from(name, "utf8");
  if (nameBytes.length >= 100) throw new Error(`tar: name too long: ${name}`);
  const h = Buffer.alloc(BLOCK);
  nameBytes.copy(h, 0);
  h.write(octal(mode, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii"); // uid
  h.write(octal(0, 8), 116, "ascii"); // gid
  h.write(octal(size, 12), 124, "ascii");
  h.write(octal(mtime, 12), 136, "ascii");
  h.fill(0x20, 148, 156); // checksum counted as spaces
  h.write("0", 156, "ascii"); // regular file
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  h.write("root", 265, "ascii");
  h.write("root", 297, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return h;
}

/** The archive's bytes, entry by entry, ending with the two zero blocks. */
export async function* tarEntries(
  entries: TarEntry[],
  open: (file: string) => Readable,
  mtime = Math.floor(Date.now() / 1000),
): AsyncGenerator<Buffer> {
  for (const e of entries) {
    let size = 0;
    if (e.data) {
      size = e.data.length;
      yield tarHeader(e.name, size, e.mode, mtime);
      yield e.data;
    } else if (e.file) {
      // The header needs the size first: count as we read, and refuse a file that changed.
      const expected = statSync(e.file).size;
      yield tarHeader(e.name, expected, e.mode, mtime);
      for await (const chunk of open(e.file) as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > expected) throw new Error(`${e.file} grew while it was archived`);
        yield chunk;
      }
      if (size !== expected) throw new Error(`${e.file} shrank while it was archived`);
    } else {
      throw new Error(`tar: ${e.name} has no content`);
    }
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad) yield Buffer.alloc(pad);
  }
  yield Buffer.alloc(BLOCK * 2);
}
