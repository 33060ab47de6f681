/** Little-endian binary writer/reader with bounds checks for untrusted input. */
export class Writer {
  private buf: Buffer;
  private len = 0;
  constructor(initial = 4096) {
    this.buf = Buffer.allocUnsafe(initial);
  }
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }
  u8(v: number): this {
    this.ensure(1);
    this.buf[this.len++] = v;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.buf.writeUInt16LE(v, this.len);
    this.len += 2;
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.len);
    this.len += 4;
    return this;
  }
  u64(v: number | bigint): this {
    this.ensure(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.len);
    this.len += 8;
    return this;
  }
  i64(v: bigint): this {
    this.ensure(8);
    this.buf.writeBigInt64LE(v, this.len);
    this.len += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }
  /** u32 length prefix + bytes. */
  lbytes(b: Uint8Array): this {
    return this.u32(b.length).bytes(b);
  }
  finish(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

export class ReadError extends Error {}

export class Reader {
  private off = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  private need(n: number): void {
    if (n < 0 || this.off + n > this.buf.length) {
      throw new ReadError(`${this.what}: truncated at byte ${this.off} (need ${n} more)`);
    }
  }
  get remaining(): number {
    return this.buf.length - this.off;
  }
  /** Bytes read so far. */
  get offset(): number {
    return this.off;
  }
  u8(): number {
    this.need(1);
    return this.buf[this.off++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = this.buf.readBigUInt64LE(this.off);
    this.off += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ReadError(`${this.what}: integer out of range`);
    return Number(v);
  }
  i64(): bigint {
    this.need(8);
    const v = this.buf.readBigInt64LE(this.off);
    this.off += 8;
    return v;
  }
  /** Pass over `n` bytes. */
  skip(n: number): void {
    this.need(n);
    this.off += n;
  }
  /** Pass over a u64, checking it is in range as `u64` does (without making a bigint). */
  skipU64(): void {
    this.need(8);
    if (this.buf.readUInt32LE(this.off + 4) > 0x1fffff)
      throw new ReadError(`${this.what}: integer out of range`);
    this.off += 8;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return b;
  }
  lbytes(max = 1 << 30): Buffer {
    const n = this.u32();
    if (n > max) throw new ReadError(`${this.what}: length ${n} exceeds ${max}`);
    return this.bytes(n);
  }
}
