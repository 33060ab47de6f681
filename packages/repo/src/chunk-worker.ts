/**
 * Worker thread: reads one file at a time (several interleaved), cuts it into
 * chunks, hashes them, asks the main thread which ids are new, and compresses
 * and encrypts only those. The main thread owns the catalog and the open
 * pack; workers own CPU-heavy work. Memory per job is bounded by the read
 * buffer (one batch of chunks in flight per job).
 */
import { createHash } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { type BlobId, Chunker, type ChunkerParams, type ContentPiece } from "@strata/core";
import { dataRanges } from "@strata/fs";
import { MasterKey } from "./crypto.js";
import { BlobCodec } from "./pack.js";

export interface WorkerInit {
  key: Uint8Array;
  chunker: ChunkerParams;
  level: number;
}
export type ToWorker =
  | { t: "file"; job: number; path: Uint8Array }
  | { t: "need"; job: number; seq: number; need: boolean[] };
export type FromWorker =
  | { t: "query"; job: number; seq: number; ids: BlobId[] }
  | {
      t: "blobs";
      job: number;
      data: Uint8Array;
      blobs: { id: BlobId; offset: number; length: number; rawLength: number; compressed: boolean }[];
    }
  | { t: "done"; job: number; pieces: ContentPiece[]; size: number; bytesRead: number }
  | { t: "changed"; job: number; why: string }
  | { t: "error"; job: number; code: string; message: string };

const BUF_SIZE = 8 * 1024 * 1024;
const bufPool: Buffer[] = [];
const giveBuffer = (b: Buffer) => {
  if (bufPool.length < 4) bufPool.push(b);
};

if (parentPort) {
  const port = parentPort;
  const init = workerData as WorkerInit;
  const codec = new BlobCodec(new MasterKey(Buffer.from(init.key)), init.level);
  const waiters = new Map<string, (need: boolean[]) => void>();
  let seqCounter = 0;

  const ask = (job: number, ids: BlobId[]): Promise<boolean[]> =>
    new Promise((resolve) => {
      const seq = ++seqCounter;
      waiters.set(`${job}:${seq}`, resolve);
      port.postMessage({ t: "query", job, seq, ids } satisfies FromWorker);
    });

  port.on("message", (m: ToWorker) => {
    if (m.t === "need") {
      const k = `${m.job}:${m.seq}`;
      const w = waiters.get(k);
      waiters.delete(k);
      w?.(m.need);
    } else if (m.t === "file") {
      processFile(m.job, Buffer.from(m.path.buffer, m.path.byteOffset, m.path.byteLength)).catch(
        (e: unknown) => {
          const err = e as NodeJS.ErrnoException;
          port.postMessage({
            t: "error",
            job: m.job,
            code: err.code ?? "EIO",
            message: err.message,
          } satisfies FromWorker);
        },
      );
    }
  });

  async function processFile(job: number, path: Buffer): Promise<void> {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NOATIME);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EPERM") throw e;
      fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW); // O_NOATIME needs ownership
    }
    let heldBuf: Buffer | null = null;
    const takeBuffer = (size: number): Buffer => {
      // Small files get a buffer of their size; large ones reuse pooled
      // read buffers, so the heap does not churn through 8 MiB per file.
      const want = Math.max(BUF_SIZE, init.chunker.maxSize * 2);
      if (size + 1 < want) return Buffer.allocUnsafe(Math.max(size, 1));
      heldBuf = bufPool.pop() ?? Buffer.allocUnsafeSlow(want);
      return heldBuf;
    };
    try {
      const before = fstatSync(fd, { bigint: true });
      if (!before.isFile()) {
        port.postMessage({ t: "changed", job, why: "no longer a regular file" } satisfies FromWorker);
        return;
      }
      const size = Number(before.size);
      // Only ask the kernel for holes when the file has fewer blocks than bytes.
      const ranges: [number, number][] =
        Number(before.blocks) * 512 >= size ? [[0, size]] : dataRanges(fd, size);
      const chunker = new Chunker(init.chunker);
      const pieces: ContentPiece[] = [];
      const buf = takeBuffer(size);
      let cursor = 0;
      let bytesRead = 0;
      for (const [off, len] of ranges) {
        if (len <= 0) continue;
        if (off > cursor) pieces.push({ hole: off - cursor });
        cursor = off;
        const end = off + len;
        let filled = 0; // bytes in buf
        let readPos = off;
        chunker.reset();
        while (true) {
          const want = Math.min(buf.length - filled, end - readPos);
          let n = 0;
          if (want > 0) {
            n = readSync(fd, buf, filled, want, readPos);
            if (n === 0) {
              port.postMessage({
                t: "changed",
                job,
                why: "file shrank while being read",
              } satisfies FromWorker);
              return;
            }
            filled += n;
            readPos += n;
            bytesRead += n;
          }
          const eof = readPos >= end;
          // Cut every complete chunk in the buffer.
          const cuts: { start: number; len: number; id: BlobId }[] = [];
          let start = 0;
          while (start < filled) {
            const l = chunker.next(buf, start, filled, eof);
            if (l <= 0) break;
            cuts.push({
              start,
              len: l,
              id: createHash("sha256")
                .update(buf.subarray(start, start + l))
                .digest("hex") as BlobId,
            });
            start += l;
          }
          if (cuts.length) {
            const need = await ask(
              job,
              cuts.map((c) => c.id),
            );
            const encoded = [];
            let total = 0;
            for (let i = 0; i < cuts.length; i++) {
              const c = cuts[i]!;
              pieces.push({ id: c.id as never, len: c.len });
              if (need[i]) {
                const e = codec.encode(c.id, "chunk", buf.subarray(c.start, c.start + c.len));
                encoded.push(e);
                total += e.data.length;
              }
            }
            if (encoded.length) {
              // One transferred buffer per batch: cheaper than one per blob.
              const data = Buffer.allocUnsafeSlow(total);
              let off = 0;
              const blobs = encoded.map((e) => {
                e.data.copy(data, off);
                const b = {
                  id: e.id,
                  offset: off,
                  length: e.data.length,
                  rawLength: e.rawLength,
                  compressed: e.compressed,
                };
                off += e.data.length;
                return b;
              });
              port.postMessage({ t: "blobs", job, data, blobs } satisfies FromWorker, [
                data.buffer as ArrayBuffer,
              ]);
            }
          }
          // Keep the partial chunk at the front of the buffer.
          if (start > 0) {
            buf.copy(buf, 0, start, filled);
            filled -= start;
          }
          if (eof && filled === 0) break;
          if (eof && start === 0 && filled > 0 && cuts.length === 0) {
            // eof with data left can't happen (next() returns the rest at eof)
            break;
          }
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
        port.postMessage({ t: "changed", job, why: "file changed while being read" } satisfies FromWorker);
        return;
      }
      port.postMessage({ t: "done", job, pieces, size, bytesRead } satisfies FromWorker);
    } finally {
      closeSync(fd);
      if (heldBuf) giveBuffer(heldBuf);
    }
  }
}
