import type { RestoreSource, SourceTree, TreeRef } from "./source.js";

/** Listings requested or held ahead of the walk (loading or loaded, not yet used): bounds memory. */
const AHEAD_TREES = 256;
/** Requests in flight for a source that loads one listing per request. */
const AHEAD_LOADS = 8;
/** Requests in flight for a source that loads many listings per request (`loadTrees`). */
const AHEAD_BATCHES = 2;
/** Listings per batch request. */
const BATCH_TREES = 64;

interface Held {
  promise: Promise<SourceTree>;
  resolve: (t: SourceTree) => void;
  reject: (e: unknown) => void;
}

/**
 * Directory listings read ahead of the planning walk. The walk goes depth
 * first and asks for one listing at a time; from a remote source each
 * would be a round trip to the server. So when a directory is listed, the
 * listings of the subdirectories the walk will enter are wanted at once,
 * and wanted listings are requested in the walk's order: the children of
 * the directory listed last come first (a stack), as a depth-first walk
 * will need them. A source with `loadTrees` gets them in batches of up to
 * 64 per request, two requests in flight; another one request per listing,
 * 8 in flight. At most 256 listings are loading or loaded ahead; wanted
 * ones beyond that wait as references (the listing that named them is in
 * memory anyway). A listing read ahead is verified by the source like any
 * other; a failure is reported when the walk gets there.
 */
export class TreeAhead {
  /** Requested (loading or loaded) and not used yet, by tree id. */
  private readonly held = new Map<string, Held>();
  /** Wanted and not requested yet, by tree id; `order` holds them, next on top. */
  private readonly wanted = new Map<string, TreeRef>();
  private readonly order: TreeRef[] = [];
  private requests = 0;
  private readonly batch: number;

  constructor(
    private readonly source: RestoreSource,
    private readonly signal?: AbortSignal,
  ) {
    this.batch = source.loadTrees ? Math.max(1, Math.min(BATCH_TREES, source.maxTrees ?? BATCH_TREES)) : 1;
  }

  /** The listing of `ref`: the one read ahead, or read now (with the next wanted ones, batched). */
  load(ref: TreeRef): Promise<SourceTree> {
    let h = this.held.get(ref.id);
    if (!h) {
      this.wanted.delete(ref.id);
      // The walk waits for this one: request it now, whatever is in flight.
      const room = Math.max(0, AHEAD_TREES - this.held.size - 1);
      this.start([ref, ...this.next(Math.min(this.batch - 1, room))]);
      h = this.held.get(ref.id)!;
    }
    this.held.delete(ref.id);
    this.pump();
    return h.promise;
  }

  /** The walk will enter these directories, in this order, before anything wanted earlier. */
  ahead(refs: Iterable<TreeRef>): void {
    const fresh: TreeRef[] = [];
    for (const ref of refs) {
      if (this.held.has(ref.id) || this.wanted.has(ref.id)) continue;
      this.wanted.set(ref.id, ref);
      fresh.push(ref);
    }
    for (let i = fresh.length - 1; i >= 0; i--) this.order.push(fresh[i]!);
    this.pump();
  }

  /** The walk is done with these listings' places: drop what was read ahead for them and not used. */
  forget(refs: Iterable<TreeRef>): void {
    for (const ref of refs) {
      this.held.delete(ref.id);
      this.wanted.delete(ref.id);
    }
    // Stale references in `order` are skipped when they come up; trimmed here so it stays small.
    while (this.order.length && !this.wanted.has(this.order[this.order.length - 1]!.id)) this.order.pop();
    if (this.wanted.size === 0) this.order.length = 0;
    this.pump();
  }

  /** Up to `n` wanted references, next first, moved out of `wanted`. */
  private next(n: number): TreeRef[] {
    const out: TreeRef[] = [];
    while (out.length < n && this.order.length) {
      const ref = this.order.pop()!;
      if (this.wanted.get(ref.id) !== ref) continue; // forgotten, or requested already
      this.wanted.delete(ref.id);
      out.push(ref);
    }
    return out;
  }

  private pump(): void {
    const limit = this.source.loadTrees ? AHEAD_BATCHES : AHEAD_LOADS;
    while (this.requests < limit && this.held.size < AHEAD_TREES && this.wanted.size) {
      const refs = this.next(Math.min(this.batch, AHEAD_TREES - this.held.size));
      if (!refs.length) return;
      this.start(refs);
    }
  }

  /** Request `refs` (one request, or one each); their listings are held until used or forgotten. */
  private start(refs: TreeRef[]): void {
    const hs = refs.map((ref) => {
      let resolve!: (t: SourceTree) => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<SourceTree>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(() => {}); // the walk sees the failure when it gets there
      const h: Held = { promise, resolve, reject };
      this.held.set(ref.id, h);
      return h;
    });
    const settle = (p: Promise<unknown>) => {
      this.requests++;
      p.catch((e: unknown) => {
        for (const h of hs) h.reject(e); // those delivered already stay resolved
      }).finally(() => {
        this.requests--;
        this.pump();
      });
    };
    if (this.source.loadTrees && refs.length > 1) {
      settle(this.source.loadTrees(refs, (i, t) => hs[i]?.resolve(t), this.signal));
    } else {
      refs.forEach((ref, i) => {
        settle(this.source.loadTree(ref, this.signal).then((t) => hs[i]!.resolve(t)));
      });
    }
  }
}
