/**
 * The upload protocol's binary forms (docs/design/protocol.md, "Chunks" and
 * "Trees"; the restore protocol reuses them, restore.md "Protocol"): frames
 * of a chunk stream and of a tree stream, a JSON frame, a reader that
 * takes them off a request body with bounded memory, and decompression with
 * an output bound.
 */
import { hash as oneShotHash } from "node:crypto";
import { createRequire } from "node:module";
import { StrataError } from "@strata/core";

const require = createRequire(import.meta.url);
const binding = require("zstd-napi/binding") as {
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
};

export const FRAMES_CONTENT_TYPE = "application/vnd.strata.frames";
export const FLAG_ZSTD = 1;

export interface ChunkFrame {
  id: Buffer;
  flags: number;
  payload: Buffer;
}
export interface TreeFrame extends ChunkFrame {
  path: Buffer;
}

/** Chunk frame: id(32) u32 n u8 flags payload(n). */
/** Bytes of a chunk frame before its payload: id(32) u32 n u8 flags. */
export const CHUNK_FRAME_HEADER = 37;

/**
 * A chunk frame's header written in place (the payload of `length` bytes
 * follows at `at + CHUNK_FRAME_HEADER`): for senders that build frames in
 * one buffer. `id` is the chunk id in hex.
 */
export function writeChunkFrameHeader(
  out: Buffer,
  at: number,
  id: string,
  length: number,
  compressed: boolean,
): void {
  if (out.write(id, at, 32, "hex") !== 32) throw new StrataError("INVALID_ARGUMENT", `bad chunk id ${id}`);
  out.writeUInt32LE(length, at + 32);
  out[at + 36] = compressed ? FLAG_ZSTD : 0;
}

export function encodeChunkFrame(id: Buffer, compressed: boolean, payload: Uint8Array): Buffer[] {
  const h = Buffer.allocUnsafe(37);
  id.copy(h, 0);
  h.writeUInt32LE(payload.length, 32);
  h[36] = compressed ? FLAG_ZSTD : 0;
  return [h, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)];
}

/** Tree frame: id(32) u32 p path(p) u32 n u8 flags payload(n). */
export function encodeTreeFrame(
  id: Buffer,
  path: Buffer,
  compressed: boolean,
  payload: Uint8Array,
): Buffer[] {
  const h = Buffer.allocUnsafe(36 + path.length + 5);
  id.copy(h, 0);
  h.writeUInt32LE(path.length, 32);
  path.copy(h, 36);
  h.writeUInt32LE(payload.length, 36 + path.length);
  h[40 + path.length] = compressed ? FLAG_ZSTD : 0;
  return [h, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)];
}

/**
 * Reads exact byte counts from an async stream of buffers, holding at most
 * one frame plus one incoming buffer. Counts the bytes consumed;
 * `onBytes` sees the size of every buffer taken from the stream.
 */
export class ByteReader {
  private readonly it: AsyncIterator<Buffer | Uint8Array | string>;
  private bufs: Buffer[] = [];
  private have = 0;
  private done = false;
  consumed = 0;

  constructor(
    src: AsyncIterable<Buffer | Uint8Array | string>,
    private readonly onBytes?: (n: number) => void,
  ) {
    this.it = src[Symbol.asyncIterator]();
  }

  /** Bytes received and not read yet: reads of up to this many need no waiting (`tryRead`). */
  get buffered(): number {
    return this.have;
  }

  /** True at a clean end of stream (no byte pending). */
  async atEnd(): Promise<boolean> {
    if (this.have > 0) return false;
    await this.fill(1);
    return this.have === 0;
  }

  private async fill(n: number): Promise<void> {
    while (this.have < n && !this.done) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        break;
      }
      const b =
        typeof r.value === "string"
          ? Buffer.from(r.value)
          : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      this.onBytes?.(b.length);
      if (b.length) {
        this.bufs.push(b);
        this.have += b.length;
      }
    }
  }

  /** Exactly n bytes; throws `what` truncated when the stream ends first. */
  async read(n: number, what: string): Promise<Buffer> {
    await this.fill(n);
    if (this.have < n)
      throw new StrataError("INVALID_ARGUMENT", `${what} is truncated (${this.have} of ${n} bytes)`);
    return this.take(n);
  }

  /** Exactly n bytes when they are buffered already, else null (and nothing is read). */
  tryRead(n: number): Buffer | null {
    return this.have >= n ? this.take(n) : null;
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    let out: Buffer;
    if (this.bufs[0]!.length >= n) {
      out = this.bufs[0]!.subarray(0, n);
      if (this.bufs[0]!.length === n) this.bufs.shift();
      else this.bufs[0] = this.bufs[0]!.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const b = this.bufs[0]!;
        const take = Math.min(b.length, n - off);
        b.copy(out, off, 0, take);
        off += take;
        if (take === b.length) this.bufs.shift();
        else this.bufs[0] = b.subarray(take);
      }
    }
    this.have -= n;
    this.consumed += n;
    return out;
  }

  /** Drop what is left of the stream (so the connection can be reused). */
  async drain(): Promise<void> {
    this.bufs = [];
    this.have = 0;
    while (!this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else this.onBytes?.(typeof r.value === "string" ? Buffer.byteLength(r.value) : r.value.byteLength);
    }
  }
}

function checkFlags(flags: number, what: string): void {
  if (flags & ~FLAG_ZSTD) throw new StrataError("INVALID_ARGUMENT", `${what} has unknown flags ${flags}`);
}

/**
 * The next chunk frame. Without waiting (a frame, not a promise) when the
 * frame is buffered already: a restore reads ~25,000 frames, most of them
 * from buffers that hold many.
 */
export function readChunkFrame(
  r: ByteReader,
  maxPayload: number,
  index: number,
): ChunkFrame | Promise<ChunkFrame> {
  const h = r.tryRead(37);
  if (!h) return readChunkFrameAsync(r, maxPayload, index);
  const what = `chunk frame ${index}`;
  const { n, flags } = chunkFrameHeader(h, maxPayload, what);
  const payload = r.tryRead(n);
  if (payload) return { id: Buffer.from(h.subarray(0, 32)), flags, payload };
  return r.read(n, what).then((p) => ({ id: Buffer.from(h.subarray(0, 32)), flags, payload: p }));
}

async function readChunkFrameAsync(r: ByteReader, maxPayload: number, index: number): Promise<ChunkFrame> {
  const what = `chunk frame ${index}`;
  const h = await r.read(37, what);
  const { n, flags } = chunkFrameHeader(h, maxPayload, what);
  return { id: Buffer.from(h.subarray(0, 32)), flags, payload: await r.read(n, what) };
}

function chunkFrameHeader(h: Buffer, maxPayload: number, what: string): { n: number; flags: number } {
  const n = h.readUInt32LE(32);
  const flags = h[36]!;
  checkFlags(flags, what);
  if (n > maxPayload)
    throw new StrataError(
      "TOO_LARGE",
      `${what} (${h.subarray(0, 32).toString("hex")}) has a ${n}-byte payload; the limit is ${maxPayload}`,
    );
  return { n, flags };
}

export async function readTreeFrame(
  r: ByteReader,
  maxPayload: number,
  maxPath: number,
  index: number,
): Promise<TreeFrame> {
  const what = `tree frame ${index}`;
  const h = await r.read(36, what);
  const p = h.readUInt32LE(32);
  if (p > maxPath)
    throw new StrataError("TOO_LARGE", `${what} has a ${p}-byte path; the limit is ${maxPath}`);
  const path = await r.read(p, what);
  const h2 = await r.read(5, what);
  const n = h2.readUInt32LE(0);
  const flags = h2[4]!;
  checkFlags(flags, what);
  if (n > maxPayload)
    throw new StrataError(
      "TOO_LARGE",
      `${what} (${h.subarray(0, 32).toString("hex")}) has a ${n}-byte payload; the limit is ${maxPayload}`,
    );
  return {
    id: Buffer.from(h.subarray(0, 32)),
    path: Buffer.from(path),
    flags,
    payload: await r.read(n, what),
  };
}

/**
 * JSON frame (restore protocol, after a tree frame): u32 n, then n bytes
 * of UTF-8 JSON.
 */
export function encodeJsonFrame(value: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(value), "utf8");
  const h = Buffer.allocUnsafe(4);
  h.writeUInt32LE(body.length, 0);
  return Buffer.concat([h, body]);
}

export async function readJsonFrame(r: ByteReader, maxPayload: number, what: string): Promise<unknown> {
  const n = (await r.read(4, what)).readUInt32LE(0);
  if (n > maxPayload)
    throw new StrataError("TOO_LARGE", `${what} has a ${n}-byte payload; the limit is ${maxPayload}`);
  const body = await r.read(n, what);
  try {
    return JSON.parse(body.toString("utf8"));
  } catch (e) {
    throw new StrataError("INVALID_ARGUMENT", `${what} is not JSON: ${(e as Error).message}`);
  }
}

let sharedDctx: { decompress(dst: Uint8Array, src: Uint8Array): number } | null = null;

/**
 * Decompress a zstd payload into at most `max` bytes: a payload that
 * inflates further (a decompression bomb) or is not valid zstd is
 * INVALID_ARGUMENT naming `what` (it is the sender's bad frame).
 */
export function boundedDecompress(payload: Uint8Array, max: number, what: string, scratch?: Buffer): Buffer {
  // Into `scratch` when it is large enough (the result is then valid until its next use).
  const out = scratch && scratch.length >= max ? scratch.subarray(0, max) : Buffer.allocUnsafe(max);
  let n: number;
  try {
    // One context per thread, reused: a new one allocates its tables anew each time.
    sharedDctx ??= new binding.DCtx();
    n = sharedDctx.decompress(out, payload);
  } catch (e) {
    throw new StrataError(
      "INVALID_ARGUMENT",
      `${what} does not decompress within ${max} bytes: ${(e as Error).message}`,
      { hint: "a frame's payload must be zstd that inflates to at most the limit" },
    );
  }
  return out.subarray(0, n);
}

/**
 * Decodes chunks received in wire form (compressed or not, not sealed):
 * decompress into exactly the length the snapshot names, then check the
 * SHA-256 against the id. Throws DATA_CORRUPT naming the chunk. One
 * decompression context and one output buffer, reused: the plaintext
 * returned is valid until the next call (the restore workers write it at
 * once). Used on the restore worker threads and by the remote source.
 */
export class WireDecoder {
  private readonly dctx = new binding.DCtx();
  private out: Buffer = Buffer.alloc(0);

  decode(e: { id: string; compressed: boolean; rawLength: number }, body: Uint8Array): Buffer {
    const what = `chunk ${e.id}`;
    let plain: Buffer;
    if (e.compressed) {
      if (this.out.length < e.rawLength) this.out = Buffer.allocUnsafeSlow(Math.max(e.rawLength, 1 << 20));
      let n: number;
      try {
        n = this.dctx.decompress(this.out.subarray(0, e.rawLength), body);
      } catch (err) {
        throw new StrataError(
          "DATA_CORRUPT",
          `${what} does not decompress into its ${e.rawLength} bytes: ${(err as Error).message}`,
          { subject: e.id },
        );
      }
      plain = this.out.subarray(0, n);
    } else plain = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    if (plain.length !== e.rawLength)
      throw new StrataError(
        "DATA_CORRUPT",
        `${what} has ${plain.length} bytes where the snapshot says ${e.rawLength}`,
        { subject: e.id },
      );
    // One call per chunk: a Hash object each (create, update, digest) cost a third more.
    if (oneShotHash("sha256", plain, "hex") !== e.id)
      throw new StrataError("DATA_CORRUPT", `${what} does not match its hash`, { subject: e.id });
    return plain;
  }
}
