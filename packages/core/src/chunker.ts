import { createHash } from "node:crypto";

/**
 * FastCDC content-defined chunking with normalized chunking (Xia et al.,
 * "The Design of Fast Content-Defined Chunking for Data Deduplication Based
 * Storage Systems", 2020).
 *
 * A 32-bit gear hash rolls over the data; a cut point is where the hash has
 * zeroes under a mask. Before the normal size a mask with more one bits
 * (harder to match) is used, after it a mask with fewer (easier), which pulls
 * chunk sizes towards the average. The parameters are data stored in the
 * repository config, so a repository keeps chunking the same way even when
 * the defaults change.
 */
export interface ChunkerParams {
  /** Algorithm id; only "fastcdc-v1" exists. */
  algorithm: "fastcdc-v1";
  minSize: number;
  avgSize: number;
  maxSize: number;
  /** Normalization level: mask bits added before / removed after avgSize. */
  normalization: number;
  /** Seed of the gear table, hex. Different seeds give different cut points. */
  gearSeed: string;
}

export const DEFAULT_CHUNKER_PARAMS: ChunkerParams = {
  algorithm: "fastcdc-v1",
  minSize: 32 * 1024,
  avgSize: 128 * 1024,
  maxSize: 1024 * 1024,
  normalization: 2,
  gearSeed: "7374726174612d6765617273",
};

export function validateChunkerParams(p: ChunkerParams): string[] {
  const errors: string[] = [];
  if (p.algorithm !== "fastcdc-v1") errors.push(`unknown chunker algorithm ${String(p.algorithm)}`);
  const pow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  if (!pow2(p.avgSize)) errors.push("avgSize must be a power of two");
  if (!(p.minSize >= 64 && p.minSize < p.avgSize)) errors.push("minSize must be >= 64 and < avgSize");
  if (!(p.maxSize > p.avgSize && p.maxSize <= 64 * 1024 * 1024))
    errors.push("maxSize must be > avgSize and <= 64 MiB");
  if (!(Number.isInteger(p.normalization) && p.normalization >= 0 && p.normalization <= 4))
    errors.push("normalization must be 0..4");
  if (!/^([0-9a-f]{2})+$/.test(p.gearSeed)) errors.push("gearSeed must be non-empty hex");
  return errors;
}

const gearCache = new Map<string, Int32Array>();

/**
 * Gear table: 256 pseudo-random 32-bit words derived from the seed. Cached
 * per seed: every file gets a chunker, and deriving the table costs 32
 * SHA-256 computations.
 */
export function gearTable(seedHex: string): Int32Array {
  const cached = gearCache.get(seedHex);
  if (cached) return cached;
  const table = deriveGearTable(seedHex);
  gearCache.set(seedHex, table);
  return table;
}

function deriveGearTable(seedHex: string): Int32Array {
  const table = new Int32Array(256);
  const seed = Buffer.from(seedHex, "hex");
  for (let i = 0; i < 256; i += 8) {
    const h = createHash("sha256")
      .update(seed)
      .update(Buffer.from([i]))
      .digest();
    for (let j = 0; j < 8; j++) table[i + j] = h.readInt32LE(j * 4);
  }
  return table;
}

/** A mask of `bits` one bits spread over the high half of the word. */
function mask(bits: number): number {
  // The gear hash shifts left, so high bits depend on the most bytes; spread
  // the ones over the top bits to use the widest window.
  let m = 0;
  for (let i = 0; i < bits; i++) m |= 1 << (31 - i);
  return m | 0;
}

/**
 * Streaming chunker. Feed it contiguous data with `scan`; it remembers how
 * far into the current chunk it got, so no byte is scanned twice. The caller
 * owns the buffer and keeps the bytes of the current chunk contiguous.
 */
export class Chunker {
  readonly params: ChunkerParams;
  private readonly gear: Int32Array;
  private readonly maskS: number;
  private readonly maskL: number;
  /** Bytes of the current chunk already scanned. */
  private pos = 0;
  private hash = 0;

  constructor(params: ChunkerParams = DEFAULT_CHUNKER_PARAMS) {
    const errs = validateChunkerParams(params);
    if (errs.length) throw new Error(`invalid chunker parameters: ${errs.join("; ")}`);
    this.params = params;
    this.gear = gearTable(params.gearSeed);
    const bits = Math.round(Math.log2(params.avgSize));
    this.maskS = mask(bits + params.normalization);
    this.maskL = mask(bits - params.normalization);
  }

  /**
   * `data[start..end)` holds the current chunk's bytes from its first byte
   * (start) to the end of what is available. Returns the chunk length when a
   * cut point is found, or -1 when more data is needed. With `eof`, the rest
   * is one final chunk (its length is returned, 0 if empty).
   */
  next(data: Uint8Array, start: number, end: number, eof: boolean): number {
    const { minSize, avgSize, maxSize } = this.params;
    const avail = end - start;
    if (this.pos < minSize) {
      // Cut points below minSize are never taken: skip hashing them.
      if (avail <= minSize) {
        if (eof) return this.cut(avail);
        this.pos = avail;
        return -1;
      }
      this.pos = minSize;
      this.hash = 0;
    }
    const gear = this.gear;
    let h = this.hash;
    let i = this.pos;
    const normalEnd = Math.min(avgSize, avail);
    const maskS = this.maskS;
    for (; i < normalEnd; i++) {
      h = ((h << 1) + gear[data[start + i]!]!) | 0;
      if ((h & maskS) === 0) return this.cut(i + 1);
    }
    const hardEnd = Math.min(maxSize, avail);
    const maskL = this.maskL;
    for (; i < hardEnd; i++) {
      h = ((h << 1) + gear[data[start + i]!]!) | 0;
      if ((h & maskL) === 0) return this.cut(i + 1);
    }
    if (i >= maxSize) return this.cut(maxSize);
    if (eof) return this.cut(avail);
    this.pos = i;
    this.hash = h;
    return -1;
  }

  private cut(len: number): number {
    this.pos = 0;
    this.hash = 0;
    return len;
  }

  reset(): void {
    this.pos = 0;
    this.hash = 0;
  }
}
