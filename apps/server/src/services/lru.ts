/**
 * A small least-recently-used cache keyed by id: the restore service keeps
 * trees it serves in one, the layer service trees it walks, the upload
 * service the parent snapshot's trees it checks uploads against.
 *
 * Bounded by count and, with `weigh`, by total weight too: a tree of one
 * directory can hold 2,000 entries or 200,000, so a count alone does not
 * bound memory (512 decoded 2,000-entry trees are about half a gigabyte).
 */
export class Lru<V> {
  private readonly map = new Map<string, { v: V; w: number }>();
  private total = 0;
  constructor(
    private readonly max: number,
    private readonly bound: { maxWeight: number; weigh: (v: V) => number } | null = null,
  ) {}
  get(k: string): V | undefined {
    const e = this.map.get(k);
    if (e !== undefined) {
      this.map.delete(k);
      this.map.set(k, e);
    }
    return e?.v;
  }
  set(k: string, v: V): void {
    const old = this.map.get(k);
    if (old) {
      this.map.delete(k);
      this.total -= old.w;
    }
    const w = this.bound ? Math.max(0, this.bound.weigh(v)) : 0;
    this.map.set(k, { v, w });
    this.total += w;
    // The newest entry stays even when it alone is over the weight bound:
    // its caller holds it anyway.
    while (
      this.map.size > 1 &&
      (this.map.size > this.max || (this.bound !== null && this.total > this.bound.maxWeight))
    ) {
      const [oldest, e] = this.map.entries().next().value!;
      this.map.delete(oldest);
      this.total -= e.w;
    }
  }
  /** Entries and their total weight. */
  get size(): { entries: number; weight: number } {
    return { entries: this.map.size, weight: this.total };
  }
}
