/**
 * Worker thread for restore: decodes the blobs of one ranged pack read and
 * writes each plaintext straight into the files that want it (descriptors
 * opened by the main thread, which closes them only after the answer).
 * Decryption, decompression, hashing and the copy into the page cache thus
 * leave the main thread, which creates files and sets metadata meanwhile.
 */
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import type { IndexEntry } from "./catalog.js";
import { MasterKey } from "./crypto.js";
import { BlobCodec } from "./pack.js";
import { serve } from "./thread-pool.js";

export interface RestoreItem
  extends Pick<IndexEntry, "id" | "packId" | "offset" | "length" | "rawLength" | "compressed"> {
  /** Where the plaintext goes: descriptor, file offset, descriptor, file offset, … */
  writes: number[];
}

export interface RestoreRequest {
  seq: number;
  /** Bytes of the pack from offset `base` on; every item lies inside. */
  buf?: Uint8Array;
  /** Or: the pack's file (see `BlobStore.localPath`), read here from `base` for `length` bytes. */
  path?: string;
  length?: number;
  base: number;
  items: RestoreItem[];
}

export interface RestoreReply {
  /** The range could not be read from `path` (nothing was written): the caller reads it itself. */
  readError?: string;
  /** Plaintext bytes written. */
  bytes: number;
  /** What failed: the blob (`write` = -1) or one of its writes (index into the pairs). */
  problems: { item: number; write: number; message: string }[];
}

/** Pack files kept open by this thread (packs are immutable; restore holds a lease against prune). */
const files = new Map<string, number>();
const MAX_FILES = 16;

function readPack(path: string, base: number, length: number): Buffer {
  let fd = files.get(path);
  if (fd === undefined) {
    fd = openSync(path, "r");
    files.set(path, fd);
    if (files.size > MAX_FILES) {
      const [oldest, ofd] = files.entries().next().value as [string, number];
      files.delete(oldest);
      closeSync(ofd);
    }
  }
  const buf = Buffer.allocUnsafeSlow(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, base + got);
    if (n === 0) throw new Error(`${path} ends at byte ${base + got}, before ${base + length}`);
    got += n;
  }
  return buf;
}

export function decodeAndWrite(codec: BlobCodec, m: Omit<RestoreRequest, "seq">): RestoreReply {
  const reply: RestoreReply = { bytes: 0, problems: [] };
  let buf: Buffer;
  if (m.buf) buf = Buffer.from(m.buf.buffer, m.buf.byteOffset, m.buf.byteLength);
  else {
    try {
      buf = readPack(m.path!, m.base, m.length!);
    } catch (e) {
      return { ...reply, readError: (e as Error).message };
    }
  }
  m.items.forEach((it, i) => {
    let plain: Buffer;
    try {
      plain = codec.decode(it, buf.subarray(it.offset - m.base, it.offset - m.base + it.length));
    } catch (e) {
      reply.problems.push({ item: i, write: -1, message: (e as Error).message });
      return;
    }
    for (let k = 0; k < it.writes.length; k += 2) {
      const fd = it.writes[k]!;
      const pos = it.writes[k + 1]!;
      try {
        let w = 0;
        while (w < plain.length) w += writeSync(fd, plain, w, plain.length - w, pos + w);
        reply.bytes += plain.length;
      } catch (e) {
        reply.problems.push({ item: i, write: k / 2, message: (e as Error).message });
      }
    }
  });
  return reply;
}

if (parentPort) {
  const key = new MasterKey(Buffer.from((workerData as { key: Uint8Array }).key));
  const codec = new BlobCodec(key, 1);
  serve(parentPort, (m: RestoreRequest) => decodeAndWrite(codec, m));
}
