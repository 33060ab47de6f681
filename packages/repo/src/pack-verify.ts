import { createHash } from "node:crypto";
import type { BlobId, PackId } from "@strata/core";
import { type IndexEntry, PACK_LAYOUT_ENTRY } from "./catalog.js";
import type { MasterKey } from "./crypto.js";
import { BlobCodec, parsePackHeader } from "./pack.js";

export interface PackVerdict {
  /** Problems of the pack as a whole (hash, header). */
  packProblems: string[];
  /** Header vs catalog disagreements. */
  errors: string[];
  badBlobs: { id: BlobId; problem: string }[];
}

type Entry = Pick<IndexEntry, "id" | "packId" | "offset" | "length" | "rawLength" | "compressed"> &
  Partial<Pick<IndexEntry, "type">>;

/**
 * Verify a whole pack held in memory: its hash against its id, its header
 * against the catalog's entries, and every blob (authentication, size and
 * plaintext hash; a tree stored as a delta is hashed when it is rebuilt). Pure computation, so check can run it on worker threads.
 */
export async function verifyPackBytes(
  key: MasterKey,
  codec: BlobCodec,
  id: PackId,
  data: Buffer,
  expectedSize: number,
  entries: readonly Entry[],
): Promise<PackVerdict> {
  const v: PackVerdict = { packProblems: [], errors: [], badBlobs: [] };
  if (expectedSize === data.length && createHash("sha256").update(data).digest("hex") !== id) {
    v.packProblems.push("content does not match its id (damaged)");
  }
  try {
    const header = await parsePackHeader(key, id, data.length, async (o, l) => data.subarray(o, o + l));
    const byId = new Map(header.map((h) => [h.id, h]));
    for (const e of entries) {
      const h = byId.get(e.id);
      if (!h || h.offset !== e.offset || h.length !== e.length) {
        v.errors.push(`pack ${id}: header does not list blob ${e.id} where the catalog says`);
      }
    }
  } catch (e) {
    v.errors.push(`pack ${id}: ${(e as Error).message}`);
  }
  for (const e of entries) {
    if (e.offset + e.length > data.length) continue; // reported by the size check
    const problem = codec.verify(e, data.subarray(e.offset, e.offset + e.length), {
      treeDelta: e.type === "tree",
    });
    if (problem) v.badBlobs.push({ id: e.id, problem });
  }
  return v;
}

export { BlobCodec };

/** Bytes read (and hashed) at a time when a pack is verified from its file. */
const SEGMENT = 4 * 1024 * 1024;

/**
 * Verify a pack against the index's compact layout of it
 * (`encodePackLayout`; check builds it from the header and the index):
 * its hash against its id; every blob its
 * (authenticated) header lists (authentication, size and plaintext hash);
 * and every catalog entry against the header (same id, offset and length).
 * `read(offset, length)` returns the pack's bytes (a view of a buffer, or a
 * positional read of its file, which may reuse one buffer: the bytes of a
 * read are not used after the next read); the pack is read once, in order, in
 * segments of about 4 MiB, so memory stays small whatever the pack's size.
 * With a header that does not open, `headerBroken` is set and nothing else
 * is checked: the caller verifies again with the catalog's full entries.
 */
export async function verifyPackLayout(
  key: MasterKey,
  codec: BlobCodec,
  id: PackId,
  size: number,
  read: (offset: number, length: number) => Buffer,
  layout: Buffer,
): Promise<PackVerdict & { headerBroken?: boolean }> {
  const v: PackVerdict = { packProblems: [], errors: [], badBlobs: [] };
  let header: IndexEntry[];
  try {
    header = await parsePackHeader(key, id, size, async (o, l) => read(o, l));
  } catch {
    return { ...v, headerBroken: true };
  }
  const hash = createHash("sha256");
  try {
    let i = 0;
    let pos = 0;
    while (i < header.length) {
      const from = header[i]!.offset;
      let j = i;
      while (j + 1 < header.length && header[j + 1]!.offset + header[j + 1]!.length - from <= SEGMENT) j++;
      const end = header[j]!.offset + header[j]!.length;
      const seg = read(from, end - from);
      hash.update(seg);
      for (let k = i; k <= j; k++) {
        const e = header[k]!;
        // A tree stored as a delta is hash-checked when check's walk rebuilds it.
        const problem = codec.verify(e, seg.subarray(e.offset - from, e.offset - from + e.length), {
          treeDelta: e.type === "tree",
        });
        if (problem) v.badBlobs.push({ id: e.id, problem });
      }
      pos = end;
      i = j + 1;
    }
    hash.update(read(pos, size - pos)); // the header and trailer
  } catch (err) {
    v.packProblems.push(`cannot be read: ${(err as Error).message}`);
    return v;
  }
  if (hash.digest("hex") !== id) v.packProblems.push("content does not match its id (damaged)");
  // Both are ordered by offset; the header covers the pack without gaps.
  let h = 0;
  for (let at = 0; at + PACK_LAYOUT_ENTRY <= layout.length; at += PACK_LAYOUT_ENTRY) {
    const offset = layout.readUIntLE(at + 32, 6);
    const length = layout.readUInt32LE(at + 40);
    while (h < header.length && header[h]!.offset < offset) h++;
    const he = header[h];
    const blobId = layout.subarray(at, at + 32);
    if (!he || he.offset !== offset || he.length !== length || !Buffer.from(he.id, "hex").equals(blobId)) {
      v.errors.push(`pack ${id}: header does not list blob ${blobId.toString("hex")} where the catalog says`);
    }
  }
  return v;
}

/** `read` for `verifyPackLayout` over a buffer holding the whole pack. */
export function readFromBuffer(data: Buffer): (offset: number, length: number) => Buffer {
  return (offset, length) => {
    if (offset + length > data.length)
      throw new Error(`wanted bytes ${offset}..${offset + length}, the pack has ${data.length}`);
    return data.subarray(offset, offset + length);
  };
}
