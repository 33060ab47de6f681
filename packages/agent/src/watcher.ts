/**
 * Which directories changed since the last upload, so an upload can rescan
 * only those (syncthing's watch aggregator, reduced to what an upload
 * needs). Built on our own inotify watcher in the @strata/fs addon
 * (native/strata_watch.c): one watch per directory, and a tree of watched
 * directories kept in C as watch descriptor → parent + name bytes, so its
 * memory grows with directories, not files.
 *
 * The answer is a hint an upload may trust only because it is
 * conservative: whenever the watcher cannot vouch for having seen every
 * change, it says "full" and the upload walks everything. That is the
 * case before the first upload (nothing was watched while the agent was
 * down), after the kernel's event queue overflowed, while some directory
 * could not be watched (the kernel's `max_user_watches`), when a root
 * could not be watched or itself changed, when a dirty directory's path is
 * not UTF-8 (the upload's hint is strings), and when more than `maxDirs`
 * directories changed (the set's memory is bounded; a walk is cheaper than
 * a huge list anyway).
 *
 * A dirty directory is one whose listing, or whose entries' metadata or
 * content, may have changed: its parent's view of it did not (a change to a
 * directory's own mode makes its parent dirty). A dirty directory may no
 * longer exist when the upload looks.
 *
 * Who does what: the addon reads events on the event loop (libuv polls the
 * inotify descriptor; no thread), marks the directory an event names dirty,
 * drops the watches of removed directories, follows directories moved
 * within the area and unwatches those moved away. Directories created or
 * moved in come here: the policy decides (`skipDir`), the addon adds the
 * watch and then lists the directory, and each subdirectory found is
 * handled the same way; a new directory is dirty itself, as what was
 * created in it before its watch existed was not reported. After an
 * overflow everything is walked again (existing watches are confirmed,
 * missing ones added, stale ones dropped) and the set is full.
 */
import { lstatSync, readFileSync } from "node:fs";
import { setImmediate as yieldToLoop } from "node:timers/promises";
import { StrataError } from "@strata/core";
import { native, WATCH_FLAGS, type WatchHandle } from "@strata/fs";

export type DirtySet = { kind: "full"; reason: string } | { kind: "dirs"; dirs: string[] };

export interface ChangeWatcherOptions {
  /** Absolute directories to watch, recursively. */
  roots: readonly string[];
  /**
   * True for a directory whose changes do not matter (excluded by the
   * policy): it is left out of the dirty set.
   */
  shouldIgnore?: (dir: string) => boolean;
  /**
   * Absolute directories not to watch at all (their whole subtree is
   * excluded, e.g. the agent's state): saves inotify watches, which are a
   * limited kernel resource.
   */
  ignoreDirs?: readonly string[];
  /**
   * True for a directory not to watch, nor anything below it (every entry
   * below it is excluded by the policy: /proc, /tmp, ~/.cache). Asked for
   * each directory, including ones that appear later. A path that is not
   * UTF-8 is not asked: it is watched.
   */
  skipDir?: (dir: string) => boolean;
  /** Largest dirty set kept before collapsing to "full". Default 10,000. */
  maxDirs?: number;
  /**
   * Test hook: watches this watcher may hold; past it adding one fails with
   * ENOSPC, as the kernel's `fs.inotify.max_user_watches` would.
   */
  maxWatches?: number;
  /**
   * New directories waiting to be watched before the watcher gives up on
   * them and walks everything again instead (bounds its memory during a
   * storm of new directories). Default 65,536.
   */
  maxPendingDirs?: number;
  /**
   * Told why the next upload walks everything when the watcher lost track:
   * a queue overflow, a directory or root that cannot be watched. Once per
   * episode, not once per directory.
   */
  onError?: (e: Error) => void;
}

export const DEFAULT_MAX_DIRTY_DIRS = 10_000;
export const DEFAULT_MAX_PENDING_DIRS = 65_536;
/** Directories handled between two yields to the event loop. */
const BATCH = 64;

const utf8 = new TextDecoder("utf-8", { fatal: true });
function decode(b: Uint8Array): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

interface Work {
  parentWd: number;
  name: Buffer;
  /** A directory that appeared while watching: dirty itself. */
  dirty: boolean;
}

export class ChangeWatcher {
  private readonly h: WatchHandle;
  private full: string | null = "nothing was watched before the agent started";
  /** Dirty directories put back by an upload that did not finish. */
  private readonly extra = new Set<string>();
  private readonly rootWds = new Map<string, number>();
  /** Directories to watch and list (depth first). */
  private readonly work: Work[] = [];
  private running: Promise<void> | null = null;
  /** Why everything must be walked again (an overflow, dropped new directories). */
  private rewalkDue: string | null = null;
  /** Why some directory is not watched (the watch limit); retried at each `take`. */
  private unwatched: string | null = null;
  /** Whether `unwatched` was told (once until a walk watches everything again). */
  private unwatchedTold = false;
  private readonly maxDirs: number;
  /** A walk of everything is under way. */
  private walking = false;
  private closed = false;

  private constructor(private readonly opts: ChangeWatcherOptions) {
    this.maxDirs = opts.maxDirs ?? DEFAULT_MAX_DIRTY_DIRS;
    if (typeof native.watchOpen !== "function")
      throw new StrataError(
        "INTERNAL",
        "the @strata/fs native addon has no watcher (built before it had one)",
        {
          subject: "@strata/fs",
          hint: "rebuild it: `npm run build:native -w @strata/fs`",
        },
      );
    this.h = native.watchOpen(
      (flags, newDirs) => this.onNative(flags, newDirs),
      this.maxDirs,
      opts.maxWatches ?? 0,
    );
  }

  /** Watch every root and every directory below it. A root that cannot be watched is retried by `take`. */
  static async start(opts: ChangeWatcherOptions): Promise<ChangeWatcher> {
    const w = new ChangeWatcher(opts);
    w.walking = true;
    w.watchRoots();
    w.kick();
    await w.settled();
    return w;
  }

  /** Roots currently watched. */
  get watching(): string[] {
    return [...this.rootWds.keys()];
  }

  /** Watches held and the bytes of the watcher's own tables (for status and benchmarks). */
  stats(): { watches: number; bytes: number } {
    return this.closed ? { watches: 0, bytes: 0 } : native.watchStats(this.h);
  }

  private skip(dir: string): boolean {
    return (this.opts.ignoreDirs ?? []).includes(dir) || (this.opts.skipDir?.(dir) ?? false);
  }

  private watchRoots(): void {
    for (const root of this.opts.roots) {
      if (this.rootWds.has(root) || this.skip(root)) continue;
      try {
        const r = native.watchAdd(this.h, 0, Buffer.from(root), false);
        this.rootWds.set(root, r.wd);
        this.pushSubdirs(r.wd, r.subdirs, false);
      } catch (e) {
        this.markFull(`cannot watch ${root}: ${(e as Error).message}`);
        this.opts.onError?.(e as Error);
      }
    }
  }

  private pushSubdirs(parentWd: number, packed: Buffer | null, dirty: boolean): void {
    if (packed === null) return;
    for (let off = 0; off < packed.length; ) {
      const len = packed.readUInt16LE(off);
      this.work.push({ parentWd, name: packed.subarray(off + 2, off + 2 + len), dirty });
      off += 2 + len;
    }
  }

  /** Called by the addon on the event loop; must not throw. */
  private onNative(flags: number, newDirs: Buffer | null): void {
    if (this.closed) return;
    try {
      if (flags & WATCH_FLAGS.overflow)
        this.lostTrack("the kernel's inotify event queue overflowed (fs.inotify.max_queued_events)");
      if (flags & WATCH_FLAGS.newDirsLost) this.lostTrack("too many directories appeared at once");
      if (flags & WATCH_FLAGS.unmounted) this.lostTrack("a filesystem in the watched area was unmounted");
      if (flags & WATCH_FLAGS.rootGone)
        for (const [root, wd] of this.rootWds)
          if (native.watchPath(this.h, wd) === null) this.rootWds.delete(root);
      if (flags & WATCH_FLAGS.rootChanged)
        this.markFull(`the watched root ${this.opts.roots.join(", ")} itself changed`);
      if (newDirs !== null)
        for (let off = 0; off < newDirs.length; ) {
          const parentWd = newDirs.readInt32LE(off);
          const len = newDirs.readUInt16LE(off + 4);
          this.work.push({
            parentWd,
            name: Buffer.from(newDirs.subarray(off + 6, off + 6 + len)),
            dirty: true,
          });
          off += 6 + len;
        }
      // The queue is dropped when the walk of everything starts. During that walk the queue
      // also holds the walk's own frontier, which is not what this bounds.
      if (!this.walking && this.work.length > (this.opts.maxPendingDirs ?? DEFAULT_MAX_PENDING_DIRS))
        this.lostTrack("too many directories appeared at once");
      this.kick();
    } catch (e) {
      this.markFull(`watcher error: ${(e as Error).message}`);
      this.opts.onError?.(e as Error);
    }
  }

  /** Events were lost: the next upload walks everything, and every directory is watched again. */
  private lostTrack(reason: string): void {
    this.markFull(reason);
    if (this.rewalkDue === null)
      this.opts.onError?.(new Error(`${reason}; the next upload walks everything`));
    this.rewalkDue = reason;
  }

  private kick(): void {
    if (this.running !== null || this.closed) return;
    this.running = this.pump().finally(() => {
      this.running = null;
      if (this.work.length || this.rewalkDue !== null) this.kick();
    });
  }

  private async settled(): Promise<void> {
    while (this.running !== null) await this.running;
  }

  /** Handle queued directories (and a walk of everything when one is due), yielding to the event loop. */
  private async pump(): Promise<void> {
    let sweep = false;
    let t = performance.now();
    let n = 0;
    while (!this.closed) {
      if (this.rewalkDue !== null) {
        this.rewalkDue = null;
        this.unwatched = null;
        this.work.length = 0;
        native.watchSweep(this.h, true);
        this.rootWds.clear();
        this.watchRoots();
        sweep = true;
        this.walking = true;
      }
      const item = this.work.pop();
      if (item === undefined) {
        this.walking = false;
        if (sweep) {
          native.watchSweep(this.h, false);
          if (this.unwatched === null) this.unwatchedTold = false;
        }
        return;
      }
      this.visit(item);
      if (++n % BATCH === 0 && performance.now() - t > 5) {
        await yieldToLoop();
        t = performance.now();
      }
    }
  }

  private visit({ parentWd, name, dirty }: Work): void {
    const parent = native.watchPath(this.h, parentWd);
    if (parent === null) return; // gone since: so is what was in it
    const full = Buffer.concat([
      parent,
      parent[parent.length - 1] === 0x2f ? Buffer.alloc(0) : Buffer.from("/"),
      name,
    ]);
    const p = decode(full);
    if (p !== null && this.skip(p)) {
      native.watchRemove(this.h, parentWd, name); // moved to where it is excluded
      return;
    }
    let r: { wd: number; subdirs: Buffer | null };
    try {
      r = native.watchAdd(this.h, parentWd, name, dirty);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") return; // gone or replaced: its parent is dirty
      this.cannotWatch(p ?? full.toString("latin1"), e as Error);
      return;
    }
    if (r.subdirs === null) {
      if (exists(full)) this.cannotWatch(p ?? full.toString("latin1"), new Error("cannot list it"));
      return;
    }
    this.pushSubdirs(r.wd, r.subdirs, dirty);
  }

  private cannotWatch(dir: string, e: Error): void {
    const limit =
      (e as NodeJS.ErrnoException).code === "ENOSPC"
        ? ` (the kernel's inotify watch limit, fs.inotify.max_user_watches = ${maxUserWatches()}, is reached)`
        : "";
    const reason = `a directory is not watched: ${dir}${limit}`;
    this.markFull(reason);
    if (this.unwatched !== null) return;
    this.unwatched = reason;
    if (this.unwatchedTold) return; // told once per episode, not per directory or retry
    this.unwatchedTold = true;
    this.opts.onError?.(
      new Error(
        `cannot watch ${dir}: ${e.message}${limit}; directories from there on are not watched and every upload walks everything until they can be`,
      ),
    );
  }

  /** Forget the dirty directories: the next upload must walk everything. */
  markFull(reason: string): void {
    if (this.full === null) this.full = reason;
    this.extra.clear();
    if (!this.closed) native.watchTake(this.h, true);
  }

  /** The current set, without resetting it. */
  peek(): DirtySet {
    if (this.full !== null) return { kind: "full", reason: this.full };
    const bufs = this.closed ? [] : native.watchTake(this.h, false);
    const tooMany: DirtySet = { kind: "full", reason: `more than ${this.maxDirs} directories changed` };
    if (bufs === null) return tooMany;
    const dirs = new Set(this.extra);
    for (const b of bufs) {
      const d = decode(b);
      if (d === null) return { kind: "full", reason: "a changed directory's path is not valid UTF-8" };
      if (!this.opts.shouldIgnore?.(d)) dirs.add(d);
    }
    if (dirs.size > this.maxDirs) return tooMany;
    return { kind: "dirs", dirs: [...dirs].sort() };
  }

  /**
   * The set since the last `take`, and start a new one. Directories being
   * added are watched first, and what could not be watched is tried again,
   * so changes during the upload are seen.
   */
  async take(): Promise<DirtySet> {
    // A directory being added must be watched before the upload walks it.
    await this.settled();
    if (this.unwatched !== null) this.rewalkDue = `retrying: ${this.unwatched}`;
    if (this.rootWds.size < this.opts.roots.length) this.watchRoots();
    this.kick();
    await this.settled();
    const set = this.peek();
    if (!this.closed) native.watchTake(this.h, true);
    this.extra.clear();
    this.full =
      this.rootWds.size < this.opts.roots.filter((r) => !this.skip(r)).length
        ? "a protected root is not watched"
        : this.unwatched;
    return set;
  }

  /** An upload that took `set` did not finish: its directories are still dirty. */
  putBack(set: DirtySet): void {
    if (set.kind === "full") {
      this.markFull(set.reason);
      return;
    }
    for (const d of set.dirs) this.extra.add(d);
    const now = this.peek();
    if (now.kind === "full") this.markFull(now.reason);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.settled();
    native.watchClose(this.h);
  }
}

function exists(p: Buffer): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function maxUserWatches(): string {
  try {
    return readFileSync("/proc/sys/fs/inotify/max_user_watches", "utf8").trim();
  } catch {
    return "?";
  }
}
