/**
 * Buffers for reuse, by power-of-two size class, each on an ArrayBuffer of
 * its own (so it can be transferred to another thread and given back).
 *
 * Why: a backup streams hundreds of MB through read, compression and output
 * buffers. Fresh buffers for each batch touch fresh memory, and on a
 * virtual machine every first touch of a page is a page fault costing tens
 * of microseconds (about 1 s of system time per 500 MB backed up here);
 * giving freed memory back to the kernel (`malloc_trim`) makes every reuse a
 * fault again. A few warm buffers per thread avoid both, and bound what the
 * thread keeps (`maxKept` bytes; past it, given-back buffers are dropped).
 */
export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private kept = 0;

  constructor(
    private readonly maxKept: number,
    private readonly minClass = 64 * 1024,
    private readonly maxClass = 8 * 1024 * 1024,
  ) {}

  /** The size class of an `n`-byte request: the next power of two, at least `minClass`. */
  classOf(n: number): number {
    let c = this.minClass;
    while (c < n) c *= 2;
    return c;
  }

  /**
   * A buffer of exactly `n` bytes (contents undefined) on an ArrayBuffer of
   * its class size; above `maxClass`, a one-off buffer of `n` bytes.
   */
  take(n: number): Buffer {
    const size = this.classOf(n);
    if (size > this.maxClass) return Buffer.allocUnsafeSlow(n);
    const ab = this.free.get(size)?.pop();
    if (ab) {
      this.kept -= size;
      return Buffer.from(ab, 0, n);
    }
    return Buffer.from(Buffer.allocUnsafeSlow(size).buffer, 0, n);
  }

  /**
   * Keep `ab` for a later `take` (only buffers `take` handed out, whose
   * views are no longer used). Others, and any past `maxKept`, are dropped.
   */
  give(ab: ArrayBufferLike): void {
    const size = ab.byteLength;
    if (size < this.minClass || size > this.maxClass || (size & (size - 1)) !== 0) return;
    if (this.kept + size > this.maxKept) return;
    const list = this.free.get(size);
    if (list) list.push(ab as ArrayBuffer);
    else this.free.set(size, [ab as ArrayBuffer]);
    this.kept += size;
  }

  /** Bytes held for reuse. */
  get keptBytes(): number {
    return this.kept;
  }
}
