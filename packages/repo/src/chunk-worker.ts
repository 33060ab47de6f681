/**
 * Worker thread: reads files, cuts them into chunks, hashes them, asks the
 * main thread which ids are new, and compresses and encrypts only those.
 * The main thread owns the catalog and the open pack; workers own the
 * CPU-heavy work. Large files are streamed through a pooled 1 MiB buffer (one
 * query per buffer); small files come in batches and are asked about
 * together.
 */
import { createHash, createHmac } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { type BlobId, Chunker, type ChunkerParams, type ContentPiece, type Xattr } from "@strata/core";
import { dataRanges, readXattrs } from "@strata/fs";
import { BufferPool } from "./buffer-pool.js";
import { MasterKey } from "./crypto.js";
import { BlobCodec, WireCodec } from "./pack.js";
import { detachEarly } from "./thread-pool.js";

/**
 * `key` set: blobs are compressed and sealed for a local pack. `key` null:
 * blobs are only compressed (the wire form of the upload protocol; the
 * server seals). `proofKey` set: every query carries, per id, the proof of
 * possession HMAC-SHA256(proofKey, plaintext) (docs/design/protocol.md).
 */
export interface WorkerInit {
  key: Uint8Array | null;
  proofKey: Uint8Array | null;
  chunker: ChunkerParams;
  level: number;
}
export type ToWorker =
  | { t: "file"; job: number; path: Uint8Array }
  /** Small files: all paths in one buffer (cheaper to post than many). */
  | { t: "files"; job: number; paths: Uint8Array; lens: number[]; sizes: number[] }
  | { t: "need"; job: number; seq: number; need: boolean[] }
  /** A `blobs` message's buffer, given back once its bytes are written (job 0). */
  | { t: "recycle"; job: 0; buf: ArrayBuffer };
export type FileOutcome =
  | { t: "ok"; pieces: ContentPiece[]; size: number; bytesRead: number; sig: string; xattrs: Xattr[] }
  | { t: "changed"; why: string }
  | { t: "error"; code: string; message: string };
export type FromWorker =
  /** `proofs`: 32 bytes per id, in order, when the pool was set up with a proof key. */
  | { t: "query"; job: number; seq: number; ids: BlobId[]; proofs?: Uint8Array }
  | {
      t: "blobs";
      job: number;
      data: Uint8Array;
      blobs: { id: BlobId; offset: number; length: number; rawLength: number; compressed: boolean }[];
    }
  | { t: "done"; job: number; results: FileOutcome[] };

/** Read buffer of a large file (at least twice the largest chunk). */
const BUF_SIZE = 1024 * 1024;
/**
 * Bytes of buffers a worker keeps for reuse (read buffers, and the output
 * buffers of `blobs` messages, which the main thread gives back once the
 * repository has written them: `recycle`). About its jobs in flight.
 */
const POOL_BYTES = 16 * 1024 * 1024;

/** What the content was read under; the walk compares it with its own lstat. */
export function statSig(st: { ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

if (parentPort) {
  detachEarly();
  const port = parentPort;
  const init = workerData as WorkerInit;
  const codec = init.key
    ? new BlobCodec(new MasterKey(Buffer.from(init.key)), init.level)
    : new WireCodec(init.level);
  const proofKey = init.proofKey ? Buffer.from(init.proofKey) : null;
  const chunker = new Chunker(init.chunker);
  const pool = new BufferPool(POOL_BYTES);
  const waiters = new Map<string, (need: boolean[]) => void>();
  let seqCounter = 0;

  const ask = (job: number, cuts: Cut[]): Promise<boolean[]> =>
    new Promise((resolve) => {
      const seq = ++seqCounter;
      waiters.set(`${job}:${seq}`, resolve);
      const ids = cuts.map((c) => c.id);
      if (!proofKey) {
        port.postMessage({ t: "query", job, seq, ids } satisfies FromWorker);
        return;
      }
      const proofs = Buffer.allocUnsafeSlow(32 * cuts.length);
      cuts.forEach((c, i) => {
        createHmac("sha256", proofKey)
          .update(c.data)
          .digest()
          .copy(proofs, i * 32);
      });
      port.postMessage({ t: "query", job, seq, ids, proofs } satisfies FromWorker, [
        proofs.buffer as ArrayBuffer,
      ]);
    });

  const asPath = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  const errorOutcome = (e: unknown): FileOutcome => {
    const err = e as NodeJS.ErrnoException;
    return { t: "error", code: err.code ?? "EIO", message: err.message };
  };

  port.on("message", (m: ToWorker) => {
    if (m.t === "recycle") pool.give(m.buf);
    else if (m.t === "need") {
      const k = `${m.job}:${m.seq}`;
      const w = waiters.get(k);
      waiters.delete(k);
      w?.(m.need);
    } else if (m.t === "file") {
      largeFile(m.job, asPath(m.path)).then(
        (r) => port.postMessage({ t: "done", job: m.job, results: [r] } satisfies FromWorker),
        (e) => port.postMessage({ t: "done", job: m.job, results: [errorOutcome(e)] } satisfies FromWorker),
      );
    } else if (m.t === "files") {
      const all = asPath(m.paths);
      const paths: Buffer[] = [];
      let off = 0;
      for (const l of m.lens) {
        paths.push(all.subarray(off, off + l));
        off += l;
      }
      smallFiles(m.job, paths, m.sizes).then(
        (results) => port.postMessage({ t: "done", job: m.job, results } satisfies FromWorker),
        (e) =>
          port.postMessage({
            t: "done",
            job: m.job,
            results: m.lens.map(() => errorOutcome(e)),
          } satisfies FromWorker),
      );
    }
  });

  function openFile(path: Buffer): number {
    try {
      return openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NOATIME);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EPERM") throw e;
      return openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW); // O_NOATIME needs ownership
    }
  }

  /** Encode the cuts the main thread asked for and send them in one transferred buffer. */
  function sendBlobs(job: number, cuts: readonly Cut[], need: readonly boolean[]): void {
    const items = cuts.filter((_, i) => need[i]).map((c) => ({ id: c.id, plain: c.data }));
    if (!items.length) return;
    const { data, blobs } = codec.encodeMany(items, (n) => pool.take(n));
    port.postMessage({ t: "blobs", job, data, blobs } satisfies FromWorker, [data.buffer as ArrayBuffer]);
  }

  type Cut = { data: Uint8Array; id: BlobId };
  /** Cut every complete chunk of buf[0..filled) into `out`; returns the bytes consumed. */
  function cutAll(c: Chunker, buf: Buffer, filled: number, eof: boolean, out: Cut[]): number {
    let start = 0;
    while (start < filled) {
      const l = c.next(buf, start, filled, eof);
      if (l <= 0) break;
      const data = buf.subarray(start, start + l);
      out.push({ data, id: createHash("sha256").update(data).digest("hex") as BlobId });
      start += l;
    }
    return start;
  }

  /** Small files: read whole, chunk, then one query and one blob message for the batch. */
  async function smallFiles(job: number, paths: Buffer[], sizes: number[]): Promise<FileOutcome[]> {
    // The walk's sizes (a file may have grown since: the buffer then grows).
    let batchBuf = pool.take(sizes.reduce((a, b) => a + b + 1, 0));
    let used = 0;
    try {
      return await readSmallFiles();
    } finally {
      pool.give(batchBuf.buffer);
    }

    async function readSmallFiles(): Promise<FileOutcome[]> {
      const results: (FileOutcome | null)[] = [];
      const perFile: { cuts: Cut[]; size: number; sig: string; xattrs: Xattr[] }[] = [];
      for (const path of paths) {
        let fd = -1;
        try {
          fd = openFile(path);
          const before = fstatSync(fd, { bigint: true });
          if (!before.isFile()) {
            results.push({ t: "changed", why: "no longer a regular file" });
            perFile.push({ cuts: [], size: 0, sig: "", xattrs: [] });
            continue;
          }
          const size = Number(before.size);
          if (used + size + 1 > batchBuf.length) {
            // Cuts of earlier files point into the old buffer: keep it (it
            // becomes garbage once this batch is done) and start a bigger one.
            batchBuf = pool.take(Math.max(batchBuf.length * 2, size + 1));
            used = 0;
          }
          const buf = batchBuf.subarray(used, used + size + 1);
          used += size;
          let got = 0;
          while (got <= size) {
            const n = readSync(fd, buf, got, size + 1 - got, got);
            if (n === 0) break;
            got += n;
          }
          const after = fstatSync(fd, { bigint: true });
          if (
            got !== size ||
            after.size !== before.size ||
            after.mtimeNs !== before.mtimeNs ||
            after.ctimeNs !== before.ctimeNs
          ) {
            results.push({ t: "changed", why: "file changed while being read" });
            perFile.push({ cuts: [], size: 0, sig: "", xattrs: [] });
            continue;
          }
          const cuts: Cut[] = [];
          chunker.reset();
          if (size > 0) cutAll(chunker, buf, size, true, cuts);
          // Extended attributes are read here, not by the walk: the worker has
          // the file in hand and the main thread has enough to do.
          const xattrs = readXattrs(path);
          results.push(null);
          perFile.push({ cuts, size, sig: statSig(before), xattrs });
        } catch (e) {
          results.push(errorOutcome(e));
          perFile.push({ cuts: [], size: 0, sig: "", xattrs: [] });
        } finally {
          if (fd >= 0) closeSync(fd);
        }
      }
      const all = perFile.flatMap((f) => f.cuts);
      if (all.length) {
        const need = await ask(job, all);
        sendBlobs(job, all, need);
      }
      return results.map((r, i) => {
        if (r) return r;
        const f = perFile[i]!;
        return {
          t: "ok",
          pieces: f.cuts.map((c) => ({ id: c.id as never, len: c.data.length })),
          size: f.size,
          bytesRead: f.size,
          sig: f.sig,
          xattrs: f.xattrs,
        };
      });
    }
  }

  async function largeFile(job: number, path: Buffer): Promise<FileOutcome> {
    const fd = openFile(path);
    let held: Buffer | null = null;
    try {
      const before = fstatSync(fd, { bigint: true });
      if (!before.isFile()) return { t: "changed", why: "no longer a regular file" };
      const size = Number(before.size);
      // Only ask the kernel for holes when the file has fewer blocks than bytes.
      const ranges: [number, number][] =
        Number(before.blocks) * 512 >= size ? [[0, size]] : dataRanges(fd, size);
      const fileChunker = new Chunker(init.chunker);
      const pieces: ContentPiece[] = [];
      held = pool.take(Math.max(BUF_SIZE, init.chunker.maxSize * 2));
      const buf = held;
      let cursor = 0;
      let bytesRead = 0;
      for (const [off, len] of ranges) {
        if (len <= 0) continue;
        if (off > cursor) pieces.push({ hole: off - cursor });
        const end = off + len;
        let filled = 0;
        let readPos = off;
        fileChunker.reset();
        while (true) {
          const want = Math.min(buf.length - filled, end - readPos);
          if (want > 0) {
            const n = readSync(fd, buf, filled, want, readPos);
            if (n === 0) return { t: "changed", why: "file shrank while being read" };
            filled += n;
            readPos += n;
            bytesRead += n;
          }
          const eof = readPos >= end;
          const cuts: Cut[] = [];
          const start = cutAll(fileChunker, buf, filled, eof, cuts);
          if (cuts.length) {
            const need = await ask(job, cuts);
            for (const c of cuts) pieces.push({ id: c.id as never, len: c.data.length });
            sendBlobs(job, cuts, need);
          }
          // Keep the partial chunk at the front of the buffer.
          if (start > 0) {
            buf.copy(buf, 0, start, filled);
            filled -= start;
          }
          if (eof && filled === 0) break;
        }
        cursor = end;
      }
      if (cursor < size) pieces.push({ hole: size - cursor });
      const after = fstatSync(fd, { bigint: true });
      if (
        after.size !== before.size ||
        after.mtimeNs !== before.mtimeNs ||
        after.ctimeNs !== before.ctimeNs
      ) {
        return { t: "changed", why: "file changed while being read" };
      }
      return { t: "ok", pieces, size, bytesRead, sig: statSig(before), xattrs: readXattrs(path) };
    } finally {
      closeSync(fd);
      if (held) pool.give(held.buffer);
    }
  }
}
