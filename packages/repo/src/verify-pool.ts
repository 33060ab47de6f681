import type { PackId } from "@strata/core";
import type { IndexEntry } from "./catalog.js";
import type { MasterKey } from "./crypto.js";
import type { PackVerdict } from "./pack-verify.js";
import { defaultThreads, ownBuffer, ThreadPool } from "./thread-pool.js";
import type { VerifyRequest } from "./verify-worker.js";

/**
 * Worker threads verifying whole packs for `check --read-data`, so every
 * core decrypts and hashes. At most `threads + 1` packs are in flight (each
 * up to 64 MiB): the caller awaits `slot()` before reading the next pack, so
 * one pack is read while every worker is busy and no worker waits for the
 * disk.
 */
export class VerifyPool {
  private readonly pool: ThreadPool<Omit<VerifyRequest, "seq">, PackVerdict & { headerBroken?: boolean }>;

  constructor(key: MasterKey, threads = defaultThreads()) {
    this.pool = new ThreadPool(
      new URL("./verify-worker.js", import.meta.url),
      { key: new Uint8Array(key.key) },
      threads,
      threads + 1,
      "verify",
    );
  }

  slot(): Promise<void> {
    return this.pool.slot();
  }

  /** Verify `data` (transferred: the caller must not use it afterwards). */
  verify(id: PackId, data: Buffer, size: number, entries: IndexEntry[]): Promise<PackVerdict> {
    // Transfer needs a buffer of its own (not a slice of a shared pool).
    const own = ownBuffer(data);
    return this.pool.call(
      {
        id,
        data: own,
        size,
        entries: entries.map((e) => ({
          id: e.id,
          packId: e.packId,
          offset: e.offset,
          length: e.length,
          rawLength: e.rawLength,
          compressed: e.compressed,
          type: e.type,
        })),
      },
      [own.buffer as ArrayBuffer],
    );
  }

  /** Verify `data` (transferred) against the catalog's compact layout of the pack (see verifyPackLayout). */
  verifyLayout(id: PackId, data: Buffer, layout: Buffer): Promise<PackVerdict & { headerBroken?: boolean }> {
    const own = ownBuffer(data);
    const lay = ownBuffer(layout);
    const transfer = [own.buffer as ArrayBuffer];
    if (lay.buffer !== own.buffer) transfer.push(lay.buffer as ArrayBuffer);
    return this.pool.call({ id, data: own, size: data.length, layout: lay }, transfer);
  }

  /** The same, the worker reading the pack from its file at `path` itself, a few MiB at a time. */
  verifyLayoutFrom(
    id: PackId,
    path: string,
    size: number,
    layout: Buffer,
  ): Promise<PackVerdict & { headerBroken?: boolean }> {
    const lay = ownBuffer(layout);
    return this.pool.call({ id, path, size, layout: lay }, [lay.buffer as ArrayBuffer]);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
