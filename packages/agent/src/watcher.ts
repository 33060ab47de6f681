/**
 * Which directories changed since the last upload, so an upload can rescan
 * only those (syncthing's watch aggregator, reduced to what an upload
 * needs). Built on @parcel/watcher (inotify on Linux).
 *
 * The answer is a hint an upload may trust only because it is
 * conservative: whenever the watcher cannot vouch for having seen every
 * change, it says "full" and the upload walks everything. That is the
 * case before the first upload (nothing was watched while the agent was
 * down), after a watcher error or a kernel queue overflow, when a root
 * could not be watched, when a path's name could not be represented, and
 * when more than `maxDirs` directories changed (the set's memory is
 * bounded; a walk is cheaper than a huge list anyway).
 *
 * A dirty directory is one whose listing, or whose entries' metadata or
 * content, may have changed: its parent's view of it did not (a change to a
 * directory's own mode makes its parent dirty). A dirty directory may no
 * longer exist when the upload looks.
 *
 * What @parcel/watcher (2.6, inotify) does not say, and how it is made up
 * for: a directory that appears with subdirectories already in it (moved
 * in, `mkdir -p`, `cp -r`, an archive unpacked) gets a watch on itself
 * only, so nothing below those subdirectories is ever reported. Such a
 * directory makes the set full and gets a recursive subscription of its
 * own, which `take` waits for. And the kernel's queue overflow is dropped
 * silently: a burst of events large enough to have overflowed it makes the
 * set full.
 */
import { existsSync, lstatSync, readdirSync } from "node:fs";
import * as path from "node:path";

export type DirtySet = { kind: "full"; reason: string } | { kind: "dirs"; dirs: string[] };

export interface WatchEvent {
  path: string;
  type: "create" | "update" | "delete";
}

export interface WatchSubscription {
  unsubscribe(): Promise<void>;
}

/** @parcel/watcher's `subscribe`, narrowed to what we use; injectable for fault tests. */
export type SubscribeFn = (
  dir: string,
  fn: (err: Error | null, events: WatchEvent[]) => unknown,
  opts: { ignore?: string[] },
) => Promise<WatchSubscription>;

export interface ChangeWatcherOptions {
  /** Absolute directories to watch, recursively. */
  roots: readonly string[];
  /** True for a path whose changes do not matter (excluded by the policy). */
  shouldIgnore?: (path: string) => boolean;
  /**
   * Absolute directories not to watch at all (their whole subtree is
   * excluded, e.g. /proc): saves inotify watches, which are a limited
   * kernel resource.
   */
  ignoreDirs?: readonly string[];
  /** Largest dirty set kept before collapsing to "full". Default 10,000. */
  maxDirs?: number;
  /**
   * Events in one batch from which the kernel's queue may have overflowed
   * (which @parcel/watcher does not report): the set becomes full. Default 4096.
   */
  burstEvents?: number;
  subscribe?: SubscribeFn;
  /** Told about each watcher error (for the log); the set is already "full". */
  onError?: (e: Error) => void;
}

export const DEFAULT_MAX_DIRTY_DIRS = 10_000;
export const DEFAULT_BURST_EVENTS = 4096;
/** Directories with a subscription of their own before the roots are subscribed again instead. */
const MAX_EXTRA_SUBSCRIPTIONS = 256;

async function parcelSubscribe(): Promise<SubscribeFn> {
  const w = await import("@parcel/watcher");
  return (dir, fn, opts) => w.subscribe(dir, fn, opts);
}

export class ChangeWatcher {
  private dirs = new Set<string>();
  private full: string | null = "nothing was watched before the agent started";
  private readonly subs = new Map<string, WatchSubscription>();
  /** Directories that appeared with subdirectories, subscribed on their own. */
  private readonly extras = new Map<string, WatchSubscription>();
  private readonly pendingExtras = new Set<Promise<void>>();
  /** Subscribe the roots again at the next `take` (too many extras, or one failed). */
  private rewatch = false;
  private readonly maxDirs: number;
  private closed = false;

  private constructor(
    private readonly opts: ChangeWatcherOptions,
    private readonly subscribe: SubscribeFn,
  ) {
    this.maxDirs = opts.maxDirs ?? DEFAULT_MAX_DIRTY_DIRS;
  }

  /** Subscribe to every root. A root that cannot be watched is retried by `take`. */
  static async start(opts: ChangeWatcherOptions): Promise<ChangeWatcher> {
    const w = new ChangeWatcher(opts, opts.subscribe ?? (await parcelSubscribe()));
    await w.subscribeMissing();
    return w;
  }

  /** Roots currently watched. */
  get watching(): string[] {
    return [...this.subs.keys()];
  }

  private async subscribeMissing(): Promise<void> {
    for (const root of this.opts.roots) {
      if (this.subs.has(root) || this.closed) continue;
      const ignore = (this.opts.ignoreDirs ?? []).filter((d) => isUnder(d, root));
      try {
        const sub = await this.subscribe(root, (err, events) => this.onEvents(err, events), { ignore });
        if (this.closed) await sub.unsubscribe();
        else this.subs.set(root, sub);
      } catch (e) {
        this.fail(`cannot watch ${root}: ${(e as Error).message}`, e);
      }
    }
  }

  private fail(reason: string, e: unknown): void {
    this.markFull(reason);
    this.opts.onError?.(e instanceof Error ? e : new Error(String(e)));
  }

  private onEvents(err: Error | null, events: readonly WatchEvent[]): void {
    if (err) {
      this.fail(`watcher error: ${err.message}`, err);
      return;
    }
    const burst = this.opts.burstEvents ?? DEFAULT_BURST_EVENTS;
    if (events.length >= burst)
      this.markFull(`a burst of ${events.length} changes (the kernel's event queue may have overflowed)`);
    let created: Set<string> | null = null;
    for (const ev of events) {
      this.add(ev.path);
      if (ev.type !== "create") continue;
      created ??= new Set(events.filter((e) => e.type === "create").map((e) => e.path));
      this.checkNewDir(ev.path, created);
    }
  }

  /**
   * A created directory: what was created in it before its watch was
   * added was not reported, so it is dirty itself. Subdirectories whose own
   * creation was not reported existed before it was watched, so nothing
   * below them would ever be: watch it whole, and walk everything once.
   */
  private checkNewDir(p: string, created: ReadonlySet<string>): void {
    if (this.closed || this.opts.shouldIgnore?.(p)) return;
    let unseen: boolean;
    try {
      if (!lstatSync(p).isDirectory()) return;
      unseen = readdirSync(p, { withFileTypes: true }).some(
        (d) => d.isDirectory() && !created.has(path.join(p, d.name)),
      );
    } catch {
      return; // gone already: nothing to watch
    }
    // What was created in it before it was watched was not reported: list it.
    this.addDir(p);
    if (!unseen) return;
    this.markFull(`${p} appeared with subdirectories that were not watched`);
    if (this.extras.size >= MAX_EXTRA_SUBSCRIPTIONS) {
      this.rewatch = true;
      return;
    }
    const ignore = (this.opts.ignoreDirs ?? []).filter((d) => isUnder(d, p));
    const job = (async () => {
      try {
        const sub = await this.subscribe(p, (err, events) => this.onEvents(err, events), { ignore });
        const old = this.extras.get(p);
        if (this.closed) await sub.unsubscribe();
        else this.extras.set(p, sub);
        await old?.unsubscribe();
      } catch (e) {
        if (!existsSync(p)) return;
        // Watching everything again at the next take repairs it; the set is full meanwhile.
        this.rewatch = true;
        this.fail(`cannot watch ${p}: ${(e as Error).message}`, e);
      }
    })();
    this.pendingExtras.add(job);
    void job.finally(() => this.pendingExtras.delete(job));
  }

  private add(p: string): void {
    if (this.full !== null) return;
    if (this.opts.shouldIgnore?.(p)) return;
    // The native side decodes names as UTF-8 with replacement: such a path
    // does not name the directory it came from.
    if (p.includes("\uFFFD")) this.markFull("a changed path's name is not valid UTF-8");
    else if (this.opts.roots.includes(p)) this.markFull(`the watched root ${p} itself changed`);
    else this.addDir(path.dirname(p));
  }

  private addDir(dir: string): void {
    if (this.full !== null) return;
    this.dirs.add(dir);
    if (this.dirs.size > this.maxDirs) this.markFull(`more than ${this.maxDirs} directories changed`);
  }

  /** Forget the dirty directories: the next upload must walk everything. */
  markFull(reason: string): void {
    if (this.full === null) this.full = reason;
    this.dirs.clear();
  }

  /** The current set, without resetting it. */
  peek(): DirtySet {
    return this.full !== null
      ? { kind: "full", reason: this.full }
      : { kind: "dirs", dirs: [...this.dirs].sort() };
  }

  /**
   * The set since the last `take`, and start a new one. Roots not watched
   * yet are subscribed first, so changes during the upload are seen.
   */
  async take(): Promise<DirtySet> {
    // A directory being subscribed must be watched before the upload walks it.
    while (this.pendingExtras.size) await Promise.all([...this.pendingExtras]);
    if (this.rewatch) await this.watchAgain();
    await this.subscribeMissing();
    const set = this.peek();
    this.dirs = new Set();
    this.full = this.subs.size < this.opts.roots.length ? "a protected root is not watched" : null;
    return set;
  }

  /** An upload that took `set` did not finish: its directories are still dirty. */
  putBack(set: DirtySet): void {
    if (set.kind === "full") this.markFull(set.reason);
    else for (const d of set.dirs) this.addDir(d);
  }

  /** Subscribe the roots anew (every directory watched), then drop the old subscriptions. */
  private async watchAgain(): Promise<void> {
    this.rewatch = false;
    const old = [...this.subs.values(), ...this.extras.values()];
    this.subs.clear();
    this.extras.clear();
    await this.subscribeMissing();
    await Promise.allSettled(old.map((s) => s.unsubscribe()));
    this.markFull("the watcher watched everything again");
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.pendingExtras]);
    const subs = [...this.subs.values(), ...this.extras.values()];
    this.subs.clear();
    this.extras.clear();
    await Promise.allSettled(subs.map((s) => s.unsubscribe()));
  }
}

function isUnder(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel);
}
