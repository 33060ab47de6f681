/**
 * Worker thread for restore: decodes the blobs of one ranged pack read (or,
 * without a key, chunks received in wire form, laid back to back) and
 * writes each plaintext straight into the files that want it (descriptors
 * opened by the main thread, which closes them only after the answer).
 * Decryption, decompression, hashing and the copy into the page cache thus
 * leave the main thread, which creates files and sets metadata meanwhile.
 */
import { closeSync, openSync } from "node:fs";
import { getSystemErrorName } from "node:util";
import { parentPort, workerData } from "node:worker_threads";
import { native } from "@strata/fs";
import { readRangeSync, writeAllSync } from "./blob-store.js";
import type { IndexEntry } from "./catalog.js";
import { MasterKey } from "./crypto.js";
import { BlobCodec } from "./pack.js";
import { serve } from "./thread-pool.js";
import { WireDecoder } from "./wire.js";

export interface RestoreItem
  extends Pick<IndexEntry, "id" | "packId" | "offset" | "length" | "rawLength" | "compressed"> {
  /** Where the plaintext goes: descriptor, file offset, descriptor, file offset, … */
  writes: number[];
}

/**
 * Items as they cross to the worker: flat arrays instead of an object per
 * blob, which the structured clone would copy one by one (a range of small
 * files holds thousands of blobs).
 */
export interface PackedItems {
  packId: IndexEntry["packId"];
  /** The blob ids, 64 hex characters each. */
  ids: string;
  /** Per item: offset, length, raw length, compressed (0/1), first write, write count. */
  nums: Float64Array;
  /** Descriptor, file offset pairs. */
  writes: Float64Array;
}

export function packItems(items: readonly RestoreItem[]): PackedItems {
  const nums = new Float64Array(items.length * 6);
  let nw = 0;
  for (const it of items) nw += it.writes.length;
  const writes = new Float64Array(nw);
  let w = 0;
  items.forEach((it, i) => {
    nums.set([it.offset, it.length, it.rawLength, it.compressed ? 1 : 0, w / 2, it.writes.length / 2], i * 6);
    writes.set(it.writes, w);
    w += it.writes.length;
  });
  return {
    packId: items[0]?.packId ?? ("" as IndexEntry["packId"]),
    ids: items.map((it) => it.id).join(""),
    nums,
    writes,
  };
}

/** One message: several ranges, decoded and written in order (fewer round trips for small files). */
export interface RestoreBatch {
  seq: number;
  jobs: Omit<RestoreRequest, "seq">[];
  /** Or: files whose every chunk is written, to close and give their times. */
  finish?: FinishJob;
}

/**
 * Files whose content is complete and whose only metadata left is their
 * times (`onlyTimesNeeded`): each file gets atime and mtime `mtimes[i]`
 * (nanoseconds) through its descriptor, which is then closed. The caller
 * owns nothing of these descriptors any more.
 */
export interface FinishJob {
  fds: Float64Array;
  mtimes: BigInt64Array;
}

/** What failed in a FinishJob: file `index`; `closed` false when its close failed (its data may be lost). */
export interface FinishProblem {
  index: number;
  closed: boolean;
  message: string;
}

export function packFinish(files: readonly { fd: number; mtimeNs: bigint }[]): FinishJob {
  const fds = new Float64Array(files.length);
  const mtimes = new BigInt64Array(files.length);
  files.forEach((f, i) => {
    fds[i] = f.fd;
    mtimes[i] = f.mtimeNs;
  });
  return { fds, mtimes };
}

/**
 * Run a FinishJob (native `futimensClose`: a raw close, so no warning that
 * this thread closes descriptors another opened).
 */
export function finishFiles(job: FinishJob): FinishProblem[] {
  const problems: FinishProblem[] = [];
  for (let i = 0; i < job.fds.length; i++) {
    const rc = native.futimensClose(job.fds[i]!, job.mtimes[i]!, job.mtimes[i]!);
    if (rc > 0)
      problems.push({ index: i, closed: true, message: `setting times: ${getSystemErrorName(-rc)}` });
    else if (rc < 0)
      problems.push({ index: i, closed: false, message: `closing: ${getSystemErrorName(rc)}` });
  }
  return problems;
}

export interface RestoreRequest {
  seq: number;
  /** Bytes of the pack from offset `base` on; every item lies inside. */
  buf?: Uint8Array;
  /** Or: the pack's file (see `BlobStore.localPath`), read here from `base` for `length` bytes. */
  path?: string;
  length?: number;
  base: number;
  items: PackedItems;
}

export interface RestoreReply {
  /** A FinishJob's answer (then nothing else is set). */
  finished?: FinishProblem[];
  /** The range could not be read from `path` (nothing was written): the caller reads it itself. */
  readError?: string;
  /** Plaintext bytes written. */
  bytes: number;
  /** What failed: the blob (`write` = -1) or one of its writes (index into the pairs). */
  problems: { item: number; write: number; message: string }[];
  /** The request's `buf`, moved back for reuse (fresh memory costs a page fault per 4 KiB). */
  buf?: ArrayBuffer;
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
  // One read buffer per thread, grown to the longest range read: the range
  // is decoded and written before the next is read, and a fresh buffer per
  // range (up to 8 MiB) left the thread's garbage to the next GC.
  if (readBuf.length < length) readBuf = Buffer.allocUnsafeSlow(Math.max(length, 2 * readBuf.length));
  return readRangeSync(fd, path, base, length, readBuf);
}
let readBuf = Buffer.alloc(0);

/**
 * What turns a stored (or received) body into verified plaintext: BlobCodec
 * (through `decodeTransient`), or WireDecoder for chunks in wire form. The
 * plaintext may be a reused buffer, valid until the next call.
 */
export interface BlobDecoder {
  decode(e: Pick<IndexEntry, "id" | "packId" | "compressed" | "rawLength">, body: Uint8Array): Buffer;
}

export function decodeAndWrite(codec: BlobDecoder, m: Omit<RestoreRequest, "seq">): RestoreReply {
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
  const { packId, ids, nums, writes } = m.items;
  const n = nums.length / 6;
  for (let i = 0; i < n; i++) {
    const at = i * 6;
    const offset = nums[at]!;
    const length = nums[at + 1]!;
    const e = {
      id: ids.slice(i * 64, i * 64 + 64) as IndexEntry["id"],
      packId,
      rawLength: nums[at + 2]!,
      compressed: nums[at + 3] === 1,
    };
    let plain: Buffer;
    try {
      plain = codec.decode(e, buf.subarray(offset - m.base, offset - m.base + length));
    } catch (err) {
      reply.problems.push({ item: i, write: -1, message: (err as Error).message });
      continue;
    }
    const first = nums[at + 4]!;
    const count = nums[at + 5]!;
    for (let k = 0; k < count; k++) {
      const fd = writes[(first + k) * 2]!;
      const pos = writes[(first + k) * 2 + 1]!;
      try {
        writeAllSync(fd, plain, pos);
        reply.bytes += plain.length;
      } catch (err) {
        reply.problems.push({ item: i, write: k, message: (err as Error).message });
      }
    }
  }
  return reply;
}

// Only in a thread started by RestorePool (the main thread imports packItems from here).
// Without a key the thread decodes chunks in wire form (the agent's restore from the server).
if (parentPort && (workerData as { role?: string } | null)?.role === "restore") {
  const raw = (workerData as { key: Uint8Array | null }).key;
  const blobs = raw ? new BlobCodec(new MasterKey(Buffer.from(raw)), 1) : null;
  const codec: BlobDecoder = blobs
    ? { decode: (e, body) => blobs.decodeTransient(e, body) }
    : new WireDecoder();
  serve(
    parentPort,
    (m: RestoreBatch) =>
      m.finish
        ? [{ bytes: 0, problems: [], finished: finishFiles(m.finish) }]
        : m.jobs.map((j) => {
            const reply = decodeAndWrite(codec, j);
            if (j.buf && j.buf.byteOffset === 0 && j.buf.byteLength === j.buf.buffer.byteLength)
              reply.buf = j.buf.buffer as ArrayBuffer;
            return reply;
          }),
    (replies) => replies.flatMap((r) => (r.buf ? [r.buf] : [])),
  );
}
