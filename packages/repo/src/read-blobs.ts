import { writeAllSync } from "./blob-store.js";
import type { IndexEntry } from "./catalog.js";
import type { MasterKey } from "./crypto.js";
import { packName } from "./pack.js";
import type { Repository } from "./repository.js";
import {
  type FinishProblem,
  packFinish,
  packItems,
  type RestoreBatch,
  type RestoreItem,
  type RestoreReply,
} from "./restore-worker.js";
import { defaultThreads, ownBuffer, ThreadPool } from "./thread-pool.js";

/** Blobs closer than this in a pack are fetched by one read. */
const RANGE_GAP = 256 * 1024;
/** Longest single ranged read. */
const RANGE_MAX = 8 * 1024 * 1024;
const READS_IN_FLIGHT = 4;
/** Ranges, and bytes, sent to a restore worker in one message. */
const BATCH_RANGES = 32;
const BATCH_BYTES = 4 * 1024 * 1024;

/** Something that wants the plaintext of one indexed blob. */
export interface BlobWant {
  entry: IndexEntry;
}

/**
 * Read the blobs `wants` name, pack by pack. They are sorted by pack and
 * offset, and neighbours (closer than 256 KiB, up to 8 MiB a read) are
 * fetched with one ranged read, a few reads in flight: on a cold cache this
 * turns thousands of small random reads into a few large sequential ones. A
 * range that fails is retried blob by blob, so damage stays confined to the
 * blobs it touches. Each blob is decoded (and its hash checked by the codec)
 * once, however many wants name it; `onBlob` sees every want with the
 * plaintext, or with the error that made it unreadable. Used by the local
 * `Restorer` and by the agent's LocalRestoreSource.
 */
export async function readBlobs<W extends BlobWant>(
  repo: Repository,
  wants: W[],
  onBlob: (want: W, plain: Buffer | null, error: Error | null) => void | Promise<void>,
): Promise<void> {
  const ranges = planRanges(wants);
  let next = 0;
  const worker = async () => {
    while (next < ranges.length) await readRange(repo, ranges[next++]!, onBlob);
  };
  await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, ranges.length) }, worker));
}

/**
 * Sort wants by pack and offset and group neighbours (closer than 256 KiB,
 * up to 8 MiB a group) into ranges, each fetched by one read.
 */
export function planRanges<W extends BlobWant>(wants: W[]): W[][] {
  const sorted = [...wants].sort((a, b) =>
    a.entry.packId < b.entry.packId
      ? -1
      : a.entry.packId > b.entry.packId
        ? 1
        : a.entry.offset - b.entry.offset,
  );
  const ranges: W[][] = [];
  for (const w of sorted) {
    const cur = ranges[ranges.length - 1];
    const first = cur?.[0];
    const last = cur?.[cur.length - 1];
    if (
      cur &&
      first &&
      last &&
      w.entry.packId === first.entry.packId &&
      w.entry.offset <= last.entry.offset + last.entry.length + RANGE_GAP &&
      w.entry.offset + w.entry.length - first.entry.offset <= RANGE_MAX
    ) {
      cur.push(w);
    } else ranges.push([w]);
  }
  return ranges;
}

/**
 * Worker threads that decode blobs and write them into open files (see
 * restore-worker.ts). With a key they decode sealed blobs of packs; with
 * `null`, chunks in the restore protocol's wire form (`WireDecoder`), for
 * a restore from the server, which holds the key.
 */
/** Message buffers kept for reuse by `RestorePool.buffer`, and their least size. */
const FREE_BUFFERS = 8;
const BUFFER_BYTES = 1024 * 1024 + 64 * 1024;

export class RestorePool {
  private readonly pool: ThreadPool<Omit<RestoreBatch, "seq">, RestoreReply[]>;
  /** Buffers the workers handed back (see `buffer`). */
  private readonly free: Buffer[] = [];

  /** `perWorker`: jobs in flight per worker before `slot` waits (two: one decoding, one queued). */
  constructor(key: MasterKey | null, threads = defaultThreads(), perWorker = 2) {
    this.pool = new ThreadPool(
      new URL("./restore-worker.js", import.meta.url),
      { key: key ? new Uint8Array(key.key) : null, role: "restore" },
      threads,
      threads * perWorker,
      "restore",
    );
  }

  slot(): Promise<void> {
    return this.pool.slot();
  }

  /**
   * A buffer of at least `size` bytes for a job's `buf` (send it whole: a
   * part would be copied to be transferred). The workers hand job buffers
   * back with their answers and they are reused here: writing into fresh
   * memory costs a page fault per 4 KiB, which made the copies into new
   * message buffers several times dearer than the copies themselves.
   */
  buffer(size: number): Buffer {
    const i = this.free.findIndex((b) => b.length >= size);
    if (i >= 0) return this.free.splice(i, 1)[0]!;
    return Buffer.allocUnsafeSlow(Math.max(size, BUFFER_BYTES));
  }

  /**
   * Decode and write each job's items: from `buf` (transferred), the pack's
   * bytes from offset `base` on, or read by the worker from the file at
   * `path` (`length` bytes from `base`). One answer per job, in order.
   */
  run(
    jobs: ({ buf: Buffer; base: number } | { path: string; base: number; length: number })[],
    items: RestoreItem[][],
  ): Promise<RestoreReply[]> {
    const transfer: ArrayBuffer[] = [];
    const out = jobs.map((j, i) => {
      const packed = packItems(items[i]!);
      transfer.push(packed.nums.buffer as ArrayBuffer, packed.writes.buffer as ArrayBuffer);
      if ("buf" in j) {
        const own = ownBuffer(j.buf);
        transfer.push(own.buffer as ArrayBuffer);
        return { buf: own, base: j.base, items: packed };
      }
      return { path: j.path, base: j.base, length: j.length, items: packed };
    });
    return this.pool.call({ jobs: out }, transfer).then((replies) => {
      for (const r of replies) {
        if (!r.buf) continue;
        if (
          r.buf.byteLength >= BUFFER_BYTES &&
          r.buf.byteLength <= 2 * BUFFER_BYTES &&
          this.free.length < FREE_BUFFERS
        )
          this.free.push(Buffer.from(r.buf));
        delete r.buf;
      }
      return replies;
    });
  }

  /**
   * Close `files` and set their times on a worker (`FinishJob`): the
   * descriptors belong to the worker from this call on, answered or not.
   * Resolves with what failed.
   */
  async finish(files: readonly { fd: number; mtimeNs: bigint }[]): Promise<FinishProblem[]> {
    if (!files.length) return [];
    await this.pool.slot();
    const job = packFinish(files);
    const transfer = [job.fds.buffer, job.mtimes.buffer] as ArrayBuffer[];
    const [reply] = await this.pool.call({ jobs: [], finish: job }, transfer);
    return reply?.finished ?? [];
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/** A blob to be written into an open file at `pos`. */
export interface WriteWant extends BlobWant {
  fd: number;
  pos: number;
}

/**
 * `readBlobs` for restore: the same ranged reads, but each range is decoded
 * and written into its files by a worker of `pool` (the descriptors must
 * stay open until this resolves). `onWritten` sees every want with the
 * bytes written, or the error that left its part of the file unwritten. A
 * range that cannot be read is retried blob by blob on this thread.
 */
export async function writeBlobs<W extends WriteWant>(
  repo: Repository,
  pool: RestorePool,
  wants: W[],
  onWritten: (want: W, bytes: number, error: Error | null) => void,
): Promise<void> {
  const ranges = planRanges(wants);
  // Neighbouring ranges travel to a worker together (up to 32 of them or
  // 4 MiB), so a directory of small files costs a few round trips.
  const batches: W[][][] = [];
  let size = 0;
  for (const r of ranges) {
    const cur = batches[batches.length - 1];
    const len = r[r.length - 1]!.entry.offset + r[r.length - 1]!.entry.length - r[0]!.entry.offset;
    if (cur && cur.length < BATCH_RANGES && size + len <= BATCH_BYTES) {
      cur.push(r);
      size += len;
    } else {
      batches.push([r]);
      size = len;
    }
  }
  let next = 0;
  const one = async (batch: W[][]) => {
    await pool.slot();
    const jobs: ({ buf: Buffer; base: number } | { path: string; base: number; length: number })[] = [];
    const jobItems: RestoreItem[][] = [];
    const jobOwners: W[][][] = [];
    const jobRanges: W[][] = [];
    const unread: W[][] = [];
    for (const range of batch) {
      const first = range[0]!.entry;
      const last = range[range.length - 1]!.entry;
      const length = last.offset + last.length - first.offset;
      // The worker reads the range itself when the store is a local
      // directory; otherwise it is read here and handed over.
      const local = repo.store.localPath?.(packName(first.packId));
      let job: (typeof jobs)[number];
      if (local) job = { path: local, base: first.offset, length };
      else {
        try {
          job = {
            buf: await repo.store.getRange(packName(first.packId), first.offset, length),
            base: first.offset,
          };
        } catch {
          unread.push(range);
          continue;
        }
      }
      // One item per blob, with every place it goes.
      const items: RestoreItem[] = [];
      const owners: W[][] = [];
      for (const w of range) {
        const e = w.entry;
        const prev = items[items.length - 1];
        if (prev && prev.id === e.id && prev.offset === e.offset) {
          prev.writes.push(w.fd, w.pos);
          owners[owners.length - 1]!.push(w);
          continue;
        }
        items.push({
          id: e.id,
          packId: e.packId,
          offset: e.offset,
          length: e.length,
          rawLength: e.rawLength,
          compressed: e.compressed,
          writes: [w.fd, w.pos],
        });
        owners.push([w]);
      }
      jobs.push(job);
      jobItems.push(items);
      jobOwners.push(owners);
      jobRanges.push(range);
    }
    let replies: RestoreReply[] = [];
    if (jobs.length) {
      try {
        replies = await pool.run(jobs, jobItems);
      } catch (e) {
        for (const owners of jobOwners)
          for (const ws of owners) for (const w of ws) onWritten(w, 0, e as Error);
        replies = [];
      }
    }
    replies.forEach((reply, j) => {
      if (reply.readError !== undefined) {
        unread.push(jobRanges[j]!);
        return;
      }
      const owners = jobOwners[j]!;
      const failed = new Map<W, string>();
      for (const p of reply.problems) {
        const ws = owners[p.item]!;
        if (p.write < 0) for (const w of ws) failed.set(w, p.message);
        else failed.set(ws[p.write]!, p.message);
      }
      for (const ws of owners)
        for (const w of ws) {
          const problem = failed.get(w);
          onWritten(
            w,
            problem === undefined ? w.entry.rawLength : 0,
            problem === undefined ? null : new Error(problem),
          );
        }
    });
    // Ranges that could not be read: blob by blob on this thread, so damage
    // stays confined to the blobs it touches.
    for (const range of unread) {
      await readRange(repo, range, (w, plain, error) => {
        if (!plain) return onWritten(w, 0, error);
        try {
          writeAllSync(w.fd, plain, w.pos);
          onWritten(w, plain.length, null);
        } catch (e) {
          onWritten(w, 0, e as Error);
        }
      });
    }
  };
  const worker = async () => {
    while (next < batches.length) await one(batches[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, batches.length) }, worker));
}

async function readRange<W extends BlobWant>(
  repo: Repository,
  range: W[],
  onBlob: (want: W, plain: Buffer | null, error: Error | null) => void | Promise<void>,
): Promise<void> {
  const first = range[0]!.entry;
  const last = range[range.length - 1]!.entry;
  let buf: Buffer | null = null;
  try {
    buf = await repo.store.getRange(
      packName(first.packId),
      first.offset,
      last.offset + last.length - first.offset,
    );
  } catch {
    buf = null; // fall back to blob-by-blob reads below
  }
  let prev: IndexEntry | null = null;
  let plain: Buffer | null = null;
  let error: Error | null = null;
  for (const w of range) {
    const e = w.entry;
    if (!prev || e.id !== prev.id || e.packId !== prev.packId || e.offset !== prev.offset) {
      prev = e;
      plain = null;
      error = null;
      try {
        plain = buf
          ? repo.codec.decode(e, buf.subarray(e.offset - first.offset, e.offset - first.offset + e.length))
          : await repo.readEntry(e);
      } catch (err) {
        error = err as Error;
      }
    }
    await onBlob(w, plain, plain ? null : (error ?? new Error(`blob ${e.id} unreadable`)));
  }
}
