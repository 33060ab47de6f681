import type { IndexEntry } from "./catalog.js";
import { packName } from "./pack.js";
import type { Repository } from "./repository.js";

/** Blobs closer than this in a pack are fetched by one read. */
const RANGE_GAP = 256 * 1024;
/** Longest single ranged read. */
const RANGE_MAX = 8 * 1024 * 1024;
const READS_IN_FLIGHT = 4;

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
  let next = 0;
  const worker = async () => {
    while (next < ranges.length) await readRange(repo, ranges[next++]!, onBlob);
  };
  await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, ranges.length) }, worker));
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
