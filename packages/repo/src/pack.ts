import { createHash, hash as oneShotHash } from "node:crypto";
import { createRequire } from "node:module";
import {
  type BlobId,
  bytesToId,
  idToBytes,
  type PackId,
  ReadError,
  Reader,
  StrataError,
  TREE_DELTA,
  Writer,
} from "@strata/core";
import { Compressor } from "zstd-napi";
import type { BlobStore, TempObject } from "./blob-store.js";
import type { BlobType, IndexEntry } from "./catalog.js";
import { type MasterKey, openSealed, openSealedInto, SEAL_OVERHEAD, seal, sealInto } from "./crypto.js";

/** zstd-napi's low-level binding: compression into a caller's buffer. */
const zstd = createRequire(import.meta.url)("zstd-napi/binding") as typeof import("zstd-napi/binding.js");

/**
 * Pack format, version 1:
 *
 *   blob_0 || blob_1 || … || header_sealed || u32 headerLength || "STRPACK1"
 *
 * Each blob is seal(zstd(plain)) or seal(plain) when compression does not
 * save at least 1/32 of the size. The header lists, in file order, every
 * blob: u8 type (0 chunk, 1 tree), u8 flags (bit 0: compressed), 32-byte id,
 * u32 stored length, u32 raw length. Offsets are the running sum of stored
 * lengths. The header is sealed too, so the pack alone says what it holds and
 * the catalog can be rebuilt from packs. The pack id is the SHA-256 of the
 * whole file.
 */
export const PACK_MAGIC = Buffer.from("STRPACK1", "ascii");
const HEADER_ENTRY = 1 + 1 + 32 + 4 + 4;
export const PACK_TRAILER_MIN = SEAL_OVERHEAD + 4 + PACK_MAGIC.length;

export interface EncodedBlob {
  id: BlobId;
  type: BlobType;
  data: Buffer;
  rawLength: number;
  compressed: boolean;
}

/** Where `encodeMany` placed one blob in its output buffer. */
export interface PlacedBlob {
  id: BlobId;
  offset: number;
  length: number;
  rawLength: number;
  compressed: boolean;
}

/**
 * zstd at `level`, kept only when it saves at least 1/32 — the rule both
 * the repository and the upload protocol's wire form use.
 */
export function compressIfWorth(
  cmp: Compressor,
  plain: Uint8Array,
): { body: Uint8Array; compressed: boolean } {
  if (plain.length >= 64) {
    const z = cmp.compress(plain);
    if (z.length < plain.length - (plain.length >> 5)) return { body: z, compressed: true };
  }
  return { body: plain, compressed: false };
}

/**
 * Encodes batches of blobs into one new buffer, back to back, with the
 * compression rule of `compressIfWorth` and then `finish` (sealing, or a
 * plain copy) writing each body at its place. Compression goes through a
 * reused staging buffer, so a batch costs one allocation (plus the cipher's
 * own output per blob) instead of three or four per blob: the chunk workers
 * stream hundreds of MB through here, and garbage buffers pile up between
 * garbage collections.
 */
class BatchEncoder {
  private cctx: InstanceType<typeof zstd.CCtx> | null = null;
  private staging: Buffer = Buffer.alloc(0);
  constructor(
    private readonly level: number,
    private readonly overhead: number,
    private readonly finish: (body: Uint8Array, out: Buffer, offset: number) => void,
  ) {}

  encode(
    items: readonly { id: BlobId; plain: Uint8Array }[],
    take: OutputBuffer = fresh,
  ): { data: Buffer; blobs: PlacedBlob[] } {
    let need = 0;
    for (const it of items) if (it.plain.length >= 64) need += zstd.compressBound(it.plain.length);
    if (this.staging.length < need) this.staging = Buffer.allocUnsafeSlow(Math.max(need, 1 << 20));
    if (!this.cctx) {
      this.cctx = new zstd.CCtx();
      this.cctx.setParameter(zstd.CParameter.compressionLevel, this.level);
    }
    const bodies: Uint8Array[] = [];
    const blobs: PlacedBlob[] = [];
    let pos = 0;
    let total = 0;
    for (const it of items) {
      let body = it.plain;
      let compressed = false;
      if (it.plain.length >= 64) {
        const dst = this.staging.subarray(pos, pos + zstd.compressBound(it.plain.length));
        const n = this.cctx.compress2(dst, it.plain);
        if (n < it.plain.length - (it.plain.length >> 5)) {
          body = dst.subarray(0, n);
          compressed = true;
          pos += n;
        }
      }
      bodies.push(body);
      const length = body.length + this.overhead;
      blobs.push({ id: it.id, offset: total, length, rawLength: it.plain.length, compressed });
      total += length;
    }
    // A buffer of its own (never Node's shared pool): workers transfer its ArrayBuffer.
    const data = take(total);
    for (let i = 0; i < blobs.length; i++) this.finish(bodies[i]!, data, blobs[i]!.offset);
    return { data, blobs };
  }
}

/**
 * Supplies `encodeMany`'s output: a Buffer of exactly `n` bytes whose
 * ArrayBuffer belongs to no one else (it may be larger, and is transferred
 * whole). Chunk workers hand out buffers the main thread gave back, so a
 * backup reuses a few warm buffers instead of touching fresh memory for
 * every batch.
 */
export type OutputBuffer = (n: number) => Buffer;
const fresh: OutputBuffer = (n) => Buffer.allocUnsafeSlow(n);

/** The upload protocol's chunk form: compressed (when worth it), not sealed. */
export class WireCodec {
  private readonly cmp = new Compressor();
  private readonly batch: BatchEncoder;
  constructor(level = 3) {
    this.cmp.setParameters({ compressionLevel: level });
    this.batch = new BatchEncoder(level, 0, (body, out, off) => out.set(body, off));
  }
  /** Encode several blobs (as `encode` would) back to back into one new buffer; see BatchEncoder. */
  encodeMany(
    items: readonly { id: BlobId; plain: Uint8Array }[],
    take?: OutputBuffer,
  ): { data: Buffer; blobs: PlacedBlob[] } {
    return this.batch.encode(items, take);
  }
  encode(id: BlobId, type: BlobType, plain: Uint8Array): EncodedBlob {
    const { body, compressed } = compressIfWorth(this.cmp, plain);
    return {
      id,
      type,
      data: Buffer.from(body.buffer, body.byteOffset, body.byteLength),
      rawLength: plain.length,
      compressed,
    };
  }
}

/** Per-thread codec state (zstd contexts are reused; they are not thread-safe). */
export class BlobCodec {
  private readonly cmp = new Compressor();
  private readonly batch: BatchEncoder;
  constructor(
    private readonly key: MasterKey,
    level = 3,
  ) {
    this.cmp.setParameters({ compressionLevel: level });
    this.batch = new BatchEncoder(level, SEAL_OVERHEAD, (body, out, off) => sealInto(key, body, out, off));
  }

  /** Encode several blobs (as `encode` would) back to back into one new buffer; see BatchEncoder. */
  encodeMany(
    items: readonly { id: BlobId; plain: Uint8Array }[],
    take?: OutputBuffer,
  ): { data: Buffer; blobs: PlacedBlob[] } {
    return this.batch.encode(items, take);
  }

  encode(id: BlobId, type: BlobType, plain: Uint8Array): EncodedBlob {
    const { body, compressed } = compressIfWorth(this.cmp, plain);
    return { id, type, data: seal(this.key, body), rawLength: plain.length, compressed };
  }

  /**
   * Decrypt, decompress and verify the hash; throws DATA_CORRUPT naming the
   * blob and pack. With `treeDelta`, a tree blob stored as a delta (its
   * plaintext starts with TREE_DELTA) is returned as it is, its hash
   * unchecked: only its reconstruction can be hashed against the id
   * (`Repository.loadTreeBytes`). Every other plaintext is hash-checked.
   * The plaintext is a buffer of its own (callers may transfer it).
   */
  decode(
    e: Pick<IndexEntry, "id" | "packId" | "compressed" | "rawLength">,
    stored: Uint8Array,
    opts?: { treeDelta?: boolean },
  ): Buffer {
    const r = this.open(e, stored, opts);
    if ("problem" in r) throw new StrataError("DATA_CORRUPT", r.problem, { subject: e.id, cause: r.cause });
    const out = Buffer.allocUnsafeSlow(r.plain.length);
    r.plain.copy(out);
    return out;
  }

  /**
   * `decode` without the copy: the plaintext is a view of a buffer this
   * codec reuses, valid until its next call (a worker that writes it out
   * and moves on).
   */
  decodeTransient(
    e: Pick<IndexEntry, "id" | "packId" | "compressed" | "rawLength">,
    stored: Uint8Array,
  ): Buffer {
    const r = this.open(e, stored);
    if ("problem" in r) throw new StrataError("DATA_CORRUPT", r.problem, { subject: e.id, cause: r.cause });
    return r.plain;
  }

  /**
   * What `decode` checks, without keeping the plaintext: null when the blob
   * is intact, else the message `decode` would throw (`check --read-data`).
   */
  verify(
    e: Pick<IndexEntry, "id" | "packId" | "compressed" | "rawLength">,
    stored: Uint8Array,
    opts?: { treeDelta?: boolean },
  ): string | null {
    const r = this.open(e, stored, opts);
    return "problem" in r ? r.problem : null;
  }

  private dctx: InstanceType<typeof zstd.DCtx> | null = null;
  private sealedOut: Buffer = Buffer.alloc(0);
  private plainOut: Buffer = Buffer.alloc(0);

  /** A reused buffer of at least `n` bytes; past 8 MiB (large trees) a one-off one, so it does not stay. */
  private static room(held: Buffer, n: number): Buffer {
    if (held.length >= n) return held;
    return n > 8 << 20 ? Buffer.allocUnsafeSlow(n) : Buffer.allocUnsafeSlow(Math.max(n, 1 << 20));
  }

  /**
   * Decrypt and decompress into buffers reused across calls and check the
   * plaintext (length, hash; see `decode` for `treeDelta`). The plaintext
   * returned is valid until the next call.
   */
  private open(
    e: Pick<IndexEntry, "id" | "packId" | "compressed" | "rawLength">,
    stored: Uint8Array,
    opts?: { treeDelta?: boolean },
  ): { plain: Buffer } | { problem: string; cause?: unknown } {
    const where = `blob ${e.id} in pack ${e.packId}`;
    if (stored.length < SEAL_OVERHEAD) return { problem: `${where} fails authentication (damaged)` };
    const bodyLen = stored.length - SEAL_OVERHEAD;
    const sealedOut = BlobCodec.room(this.sealedOut, bodyLen);
    if (bodyLen <= 8 << 20) this.sealedOut = sealedOut;
    if (openSealedInto(this.key, stored, sealedOut, 0) < 0)
      return { problem: `${where} fails authentication (damaged)` };
    let plain = sealedOut.subarray(0, bodyLen);
    if (e.compressed) {
      const plainOut = BlobCodec.room(this.plainOut, e.rawLength);
      if (e.rawLength <= 8 << 20) this.plainOut = plainOut;
      this.dctx ??= new zstd.DCtx();
      let n: number;
      try {
        // Exactly rawLength of room: a frame that decompresses to more fails here.
        n = this.dctx.decompress(plainOut.subarray(0, e.rawLength), plain);
      } catch (cause) {
        return { problem: `${where} does not decompress`, cause };
      }
      plain = plainOut.subarray(0, n);
    }
    if (plain.length !== e.rawLength) return { problem: `${where} does not match its hash` };
    if (opts?.treeDelta && plain[0] === TREE_DELTA) return { plain };
    if (oneShotHash("sha256", plain, "hex") !== e.id) return { problem: `${where} does not match its hash` };
    return { plain };
  }
}

/** A finished pack: its id, size and entries, and the bytes still to be stored. */
export interface FinishedPack {
  id: PackId;
  /** The whole pack, or only the header and trailer when the blobs went to `temp`. */
  parts: Buffer[];
  size: number;
  entries: IndexEntry[];
  /** Holds the blobs already written (streamed packs), or null (everything is in `parts`). */
  temp: TempObject | null;
}

/**
 * Accumulates encoded blobs; `finish` produces the pack's header, id and
 * entries. With `openTemp`, each blob is written to a temporary object of
 * the blob store as it is added (the pack is hashed as it goes) and only the
 * entries stay in memory; without it the blobs are held until `finish`.
 */
export class PackBuilder {
  private readonly parts: Buffer[] = [];
  private readonly entries: Omit<IndexEntry, "packId">[] = [];
  private readonly hash = createHash("sha256");
  private temp: TempObject | null = null;
  private size = 0;

  constructor(private readonly openTemp?: () => TempObject) {}

  get bytes(): number {
    return this.size;
  }
  get count(): number {
    return this.entries.length;
  }

  add(b: EncodedBlob): void {
    if (this.openTemp) {
      this.temp ??= this.openTemp();
      this.temp.write(b.data);
    } else this.parts.push(b.data);
    this.hash.update(b.data);
    this.entries.push({
      id: b.id,
      type: b.type,
      offset: this.size,
      length: b.data.length,
      rawLength: b.rawLength,
      compressed: b.compressed,
    });
    this.size += b.data.length;
  }

  finish(key: MasterKey): FinishedPack {
    const w = new Writer(8 + this.entries.length * HEADER_ENTRY);
    w.u8(1).u32(this.entries.length);
    for (const e of this.entries) {
      w.u8(e.type === "tree" ? 1 : 0)
        .u8(e.compressed ? 1 : 0)
        .bytes(idToBytes(e.id))
        .u32(e.length)
        .u32(e.rawLength);
    }
    const header = seal(key, w.finish());
    const tail = Buffer.alloc(4 + PACK_MAGIC.length);
    tail.writeUInt32LE(header.length, 0);
    PACK_MAGIC.copy(tail, 4);
    const id = this.hash.update(header).update(tail).digest("hex") as PackId;
    const size = this.size + header.length + tail.length;
    const parts = this.temp ? [header, tail] : [...this.parts, header, tail];
    return { id, parts, size, entries: this.entries.map((e) => ({ ...e, packId: id })), temp: this.temp };
  }

  /** Drop a pack that will not be finished (its temporary object, if any). */
  async discard(): Promise<void> {
    await this.temp?.abort();
  }
}

/**
 * Store a finished pack under `packs/…/<id>`: durable when this resolves
 * (the caller indexes it only afterwards). A failed write leaves no object.
 */
export async function storePack(store: BlobStore, p: FinishedPack): Promise<void> {
  if (!p.temp) return store.put(packName(p.id), p.parts);
  try {
    for (const part of p.parts) p.temp.write(part);
  } catch (e) {
    await p.temp.abort();
    throw e;
  }
  await p.temp.commit(packName(p.id));
}

/** Parse a pack's header from its last bytes. `tail` must end at the pack's end. */
export function parsePackHeader(
  key: MasterKey,
  packId: PackId,
  packSize: number,
  readTail: (offset: number, length: number) => Promise<Buffer>,
): Promise<IndexEntry[]> {
  return (async () => {
    const where = `pack ${packId}`;
    if (packSize < PACK_TRAILER_MIN)
      throw new StrataError("DATA_CORRUPT", `${where} is truncated (${packSize} bytes)`, { subject: packId });
    const tail = await readTail(packSize - 4 - PACK_MAGIC.length, 4 + PACK_MAGIC.length);
    if (!tail.subarray(4).equals(PACK_MAGIC)) {
      throw new StrataError("DATA_CORRUPT", `${where} has no pack trailer (truncated or not a pack)`, {
        subject: packId,
      });
    }
    const hlen = tail.readUInt32LE(0);
    const headerStart = packSize - 4 - PACK_MAGIC.length - hlen;
    if (hlen < SEAL_OVERHEAD || headerStart < 0) {
      throw new StrataError("DATA_CORRUPT", `${where} has a bad header length`, { subject: packId });
    }
    const sealed = await readTail(headerStart, hlen);
    const plain = openSealed(key, sealed);
    if (!plain)
      throw new StrataError("DATA_CORRUPT", `${where} header fails authentication`, { subject: packId });
    try {
      const r = new Reader(plain, `${where} header`);
      if (r.u8() !== 1) throw new ReadError(`${where}: unknown pack version`);
      const n = r.u32();
      if (n * HEADER_ENTRY > r.remaining) throw new ReadError(`${where}: header count too large`);
      const out: IndexEntry[] = [];
      let off = 0;
      for (let i = 0; i < n; i++) {
        const tb = r.u8();
        if (tb > 1) throw new ReadError(`${where}: unknown blob type ${tb}`);
        const type: BlobType = tb === 1 ? "tree" : "chunk";
        const compressed = (r.u8() & 1) === 1;
        const id = bytesToId<BlobId>(r.bytes(32));
        const length = r.u32();
        const rawLength = r.u32();
        out.push({ id, type, packId, offset: off, length, rawLength, compressed });
        off += length;
      }
      if (r.remaining !== 0) throw new ReadError(`${where}: ${r.remaining} trailing header bytes`);
      if (off !== headerStart)
        throw new ReadError(`${where}: header does not cover the pack (${off} != ${headerStart})`);
      return out;
    } catch (e) {
      if (e instanceof ReadError) throw new StrataError("DATA_CORRUPT", e.message, { subject: packId });
      throw e;
    }
  })();
}

export function packName(id: PackId): string {
  return `packs/${id.slice(0, 2)}/${id}`;
}
export function packIdFromName(name: string): PackId | null {
  const m = /^packs\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(name);
  return m ? (m[1] as PackId) : null;
}
