import type { RestoreSource, SourceTree, TreeRef } from "./source.js";

/** Listings held ahead of the walk (loaded or loading): bounds memory. */
const AHEAD_TREES = 64;
/** Listings loading at once (each is one request to a remote source). */
const AHEAD_LOADS = 8;

/**
 * Directory listings read ahead of the planning walk. The walk goes depth
 * first and asks for one listing at a time; from a remote source each is a
 * round trip to the server, so when a directory is listed its
 * subdirectories' listings are asked for at once (a few requests in flight,
 * at most 64 listings held), as the local `Restorer` reads ahead. A listing
 * read ahead is verified by the source like any other; a failure is
 * reported when the walk gets there.
 */
export class TreeAhead {
  private readonly held = new Map<string, Promise<SourceTree>>();
  private readonly queue: { ref: TreeRef; start: () => void }[] = [];
  private loading = 0;

  constructor(
    private readonly source: RestoreSource,
    private readonly signal?: AbortSignal,
  ) {}

  /** The listing of `ref`: the one read ahead, or read now. */
  load(ref: TreeRef): Promise<SourceTree> {
    const p = this.held.get(ref.id);
    if (!p) return this.source.loadTree(ref, this.signal);
    this.held.delete(ref.id);
    // Still queued: start it now (the walk waits for it).
    const q = this.queue.findIndex((x) => x.ref.id === ref.id);
    if (q >= 0) this.queue.splice(q, 1)[0]!.start();
    return p;
  }

  /** Start reading these listings (in order) while there is room. */
  ahead(refs: Iterable<TreeRef>): void {
    for (const ref of refs) {
      if (this.held.size >= AHEAD_TREES) return;
      if (this.held.has(ref.id)) continue;
      let start!: () => void;
      const started = new Promise<void>((r) => {
        start = r;
      });
      const p = started.then(() => this.source.loadTree(ref, this.signal));
      p.catch(() => {}); // the walk sees the failure when it gets there
      p.finally(() => {
        this.loading--;
        this.pump();
      }).catch(() => {});
      this.held.set(ref.id, p);
      this.queue.push({
        ref,
        start: () => {
          this.loading++;
          start();
        },
      });
    }
    this.pump();
  }

  /** The walk is done with these listings' places: drop what was read ahead for them and not used. */
  forget(refs: Iterable<TreeRef>): void {
    for (const ref of refs) {
      if (!this.held.delete(ref.id)) continue;
      const q = this.queue.findIndex((x) => x.ref.id === ref.id);
      if (q >= 0) this.queue.splice(q, 1);
    }
  }

  private pump(): void {
    while (this.loading < AHEAD_LOADS && this.queue.length) this.queue.shift()!.start();
  }
}
