import { createHash } from "node:crypto";
import { type BigIntStats, lstatSync } from "node:fs";
import { hostname as osHostname } from "node:os";
import * as nodePath from "node:path";
import {
  type BlobId,
  chunkIdsOf,
  decodeTree,
  encodeTree,
  type FsNode,
  GlobSet,
  Reader,
  type SnapshotId,
  StrataError,
  type TreeId,
  Writer,
} from "@strata/core";
import { displayPath, nodeFromStat, readNode, type ScannedEntry, scanDir } from "@strata/fs";
import { emptySnapshotStats, type FileCache, type SnapshotRecord, type SnapshotStats } from "./catalog.js";
import { ChunkPool, type ChunkSink, repositorySink } from "./chunk-pool.js";
import type { WorkerInit } from "./chunk-worker.js";
import { statSig } from "./chunk-worker.js";
import { holdLease, type Lease, leaseHolder } from "./lease.js";
import type { Repository } from "./repository.js";

export interface BackupProgress {
  files: number;
  dirs: number;
  bytesRead: number;
  bytesAdded: number;
  errors: number;
  current: string;
}

export interface BackupError {
  path: string;
  message: string;
}

/** What the walk needs from where it stores: the local repository or an upload session. */
export interface WalkTarget {
  /** The chunk pool's sink and worker setup. */
  readonly sink: ChunkSink;
  readonly workerInit: WorkerInit;
  /** Which of these chunk ids the target holds: validates untrusted file-cache rows. */
  hasBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>>;
  /**
   * Store one tree. Called only for trees that differ from the cache's
   * known tree at that place, children before parents. `path` is the
   * directory's path in the snapshot: raw bytes, `/`-separated, no leading
   * slash, empty for the root. `prev`: the directory's tree in the
   * previous backup (from the file cache; not verified), which a target may
   * use as the base of a delta.
   */
  saveTree(
    id: TreeId,
    encoded: Buffer,
    path: Buffer,
    nodes: readonly FsNode[],
    prev: TreeId | null,
  ): Promise<void>;
  /** Bytes this run added to the target so far (progress and stats). */
  bytesAdded(): number;
}

/** Which paths a walk leaves out: a glob exclude list or an upload policy. */
export interface WalkFilter {
  /** True: the entry is not recorded at all. `path` is the snapshot path with a leading slash. */
  excluded(path: Buffer, display: string): boolean;
  /** False: the directory is recorded (its own metadata) with no entries. */
  descend(path: Buffer): boolean;
}

export interface WalkOptions {
  excludes?: string[];
  filter?: WalkFilter;
  fileCache?: FileCache | null;
  threads?: number;
  onProgress?: (p: BackupProgress) => void;
  onError?: (e: BackupError) => void;
  /** How many times a file that changes while read is re-read before giving up. */
  retries?: number;
  /**
   * File-cache rows of this generation or older are trusted without asking
   * the target (`hasBlobs`); 0 trusts none.
   */
  trustedGen?: number;
  /**
   * Walk only what changed (`walkRoot` only): see {@link WalkHint}. When the
   * hint cannot be followed safely the walk falls back to a full walk by
   * itself and says why in `WalkResult.scan`.
   */
  hint?: WalkHint | null;
  signal?: AbortSignal;
}

/**
 * A "dirty hint": the directories that may have changed since the parent
 * snapshot (a change watcher's answer). Every other directory's subtree is
 * taken from the file cache, whose rows must describe the parent snapshot
 * (the caller checks that the cache's last completed run was committed as
 * that snapshot; the walker checks every row it relies on against the
 * parent's tree ids, from `parentRoot` down).
 */
export interface WalkHint {
  /** The parent snapshot's root tree id. */
  parentRoot: TreeId;
  /**
   * Directories whose listing, or whose entries' metadata or content, may
   * have changed: snapshot paths with a leading slash (`/home/alice/docs`).
   * A directory's own metadata is its parent's business: a change to it
   * must name the parent. Listed directories need not exist any more.
   */
  dirs: readonly string[];
}

/** How the walk went about it. */
export interface WalkScan {
  /** "dirs": the hint was followed; "full": everything was walked. */
  mode: "full" | "dirs";
  /** Why a hinted walk fell back to a full walk (null otherwise). */
  reason: string | null;
  /** Directories listed (readdir) by the walk that produced the tree. */
  dirsRead: number;
  /** Subtrees taken from the file cache without being read (hinted walks). */
  dirsReused: number;
}

export interface BackupOptions extends WalkOptions {
  paths: string[];
  tags?: string[];
  hostname?: string;
  kind?: string;
}

export interface WalkResult {
  tree: TreeId;
  stats: SnapshotStats;
  errors: BackupError[];
  scan: WalkScan;
}

export interface BackupResult {
  snapshot: SnapshotRecord;
  errors: BackupError[];
}

/** Stat signature: a file whose signature is unchanged is not read again. */
export interface FileSig {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}
const sigOf = (st: BigIntStats): FileSig => ({
  dev: st.dev,
  ino: st.ino,
  size: st.size,
  mtimeNs: st.mtimeNs,
  ctimeNs: st.ctimeNs,
});
const sameSig = (a: FileSig, b: FileSig) =>
  a.dev === b.dev &&
  a.ino === b.ino &&
  a.size === b.size &&
  a.mtimeNs === b.mtimeNs &&
  a.ctimeNs === b.ctimeNs;

/**
 * Totals of a directory's whole subtree (itself included in `dirs`), kept in
 * its cache row so that a hinted walk knows a reused subtree's totals, and
 * whether hard links live below it, without reading it.
 */
export interface SubtreeTotals {
  files: number;
  bytes: number;
  dirs: number;
  /** Non-directories with more than one name (`FsNode.link`). */
  links: number;
}

/** Totals attached to directory nodes as they are built (a WeakMap: they die with the node). */
const totalsOf = new WeakMap<FsNode, SubtreeTotals>();

/** A directory's totals from its entries, or null when a subdirectory's are unknown. */
function totalsOfList(list: readonly FsNode[]): SubtreeTotals | null {
  const t = { files: 0, bytes: 0, dirs: 1, links: 0 };
  for (const n of list) {
    if (n.type === "dir") {
      const s = totalsOf.get(n);
      if (!s) return null;
      t.files += s.files;
      t.bytes += s.bytes;
      t.dirs += s.dirs;
      t.links += s.links;
      continue;
    }
    if (n.type === "file") {
      t.files++;
      t.bytes += n.size;
    }
    if (n.link) t.links++;
  }
  return t;
}

const EMPTY_TREE = createHash("sha256").update(encodeTree([])).digest("hex") as TreeId;

/**
 * File-cache row layout, version 3: u8 3, the directory's tree encoding
 * (every entry, subdirectories with their subtree ids: the row *is* the
 * tree, whose id is the SHA-256 of these bytes), u32 count, the signature
 * (dev, ino, size, mtimeNs, ctimeNs) of each non-directory entry in tree
 * order, the 32-byte tree id, then u8 1 and the subtree totals (files,
 * bytes, dirs, links as u64), or u8 0 when they are unknown.
 *
 * Version 2 (read, never written) held only the non-directory entries: it
 * still saves reading unchanged files, but a hinted walk cannot reuse it.
 */
function encodeCacheDir(
  enc: Buffer,
  list: readonly FsNode[],
  sigs: ReadonlyMap<string, FileSig>,
  treeId: TreeId,
  totals: SubtreeTotals | null,
): Buffer | null {
  const w = new Writer(enc.length + list.length * 40 + 96);
  w.u8(3).lbytes(enc);
  const own = list.filter((n) => n.type !== "dir");
  w.u32(own.length);
  for (const n of own) {
    const sig = sigs.get(n.name.toString("latin1"));
    if (!sig) return null; // cannot happen: every non-directory entry was stat'ed
    w.u64(sig.dev).u64(sig.ino).u64(sig.size).i64(sig.mtimeNs).i64(sig.ctimeNs);
  }
  w.bytes(Buffer.from(treeId, "hex"));
  if (totals) w.u8(1).u64(totals.files).u64(totals.bytes).u64(totals.dirs).u64(totals.links);
  else w.u8(0);
  return w.finish();
}
interface CachedEntries {
  /** Non-directory entries with their signatures, by name (latin1). */
  entries: Map<string, { node: FsNode; sig: FileSig }>;
  treeId: TreeId;
  /** Version 3: every entry of the tree, in order; null for a version 2 row. */
  nodes: FsNode[] | null;
  /** Version 3: the subtree's totals, when known. */
  totals: SubtreeTotals | null;
}
function decodeCacheDir(buf: Buffer): CachedEntries | null {
  try {
    const r = new Reader(buf, "file cache");
    const version = r.u8();
    if (version !== 2 && version !== 3) return null;
    const enc = Buffer.from(r.lbytes());
    const nodes = decodeTree(enc, "file cache");
    const own = version === 3 ? nodes.filter((n) => n.type !== "dir") : nodes;
    const n = r.u32();
    if (n !== own.length) return null;
    const out = new Map<string, { node: FsNode; sig: FileSig }>();
    for (const node of own) {
      const sig = {
        dev: BigInt(r.u64()),
        ino: BigInt(r.u64()),
        size: BigInt(r.u64()),
        mtimeNs: r.i64(),
        ctimeNs: r.i64(),
      };
      out.set(node.name.toString("latin1"), { node, sig });
    }
    const treeId = r.bytes(32).toString("hex") as TreeId;
    if (version === 2) return { entries: out, treeId, nodes: null, totals: null };
    // The row is the tree: a damaged one is not taken for the parent's.
    if (createHash("sha256").update(enc).digest("hex") !== treeId) return null;
    const totals = r.u8() === 1 ? { files: r.u64(), bytes: r.u64(), dirs: r.u64(), links: r.u64() } : null;
    return { entries: out, treeId, nodes, totals };
  } catch {
    return null; // a damaged cache only costs a re-read
  }
}

/**
 * The regular files (and other non-directories) the file cache records for
 * directory `dir` (absolute, as the walk named it), by name (latin1), with
 * the signature (dev, ino, size, mtime, ctime) each had when its content
 * was last read or vouched for. Only a row a completed run wrote or saw
 * (generation 1..`trustedGen`) counts; anything else is null. A restore
 * uses it to take a local file whose lstat still shows that signature as
 * holding the recorded content, without reading it (docs/design/restore.md).
 */
export function cachedFiles(
  cache: FileCache,
  dir: Buffer,
  trustedGen: number,
): Map<string, { node: FsNode; sig: Readonly<FileSig> }> | null {
  const row = cache.getDir(dir);
  const gen = row?.gen ?? 0;
  if (!row || gen <= 0 || gen > trustedGen) return null;
  return decodeCacheDir(row.data)?.entries ?? null;
}

/** A hinted walk cannot go on safely: the walker starts again and walks everything. */
export class HintAbandoned extends Error {
  constructor(readonly reason: string) {
    super(`walking everything: ${reason}`);
  }
}

/** The dirty directories as a trie of name bytes (latin1 keys), bounded by the hint's size. */
interface DirtyTrie {
  dirty: boolean;
  children: Map<string, DirtyTrie>;
}

function dirtyTrie(dirs: readonly string[]): DirtyTrie {
  const top: DirtyTrie = { dirty: false, children: new Map() };
  for (const d of dirs) {
    if (!d.startsWith("/")) throw new HintAbandoned(`a changed directory is not an absolute path: ${d}`);
    let t = top;
    for (const seg of d.split("/")) {
      if (seg === "" || seg === ".") continue;
      if (seg === "..") throw new HintAbandoned(`a changed directory is outside the root: ${d}`);
      const k = Buffer.from(seg).toString("latin1");
      let c = t.children.get(k);
      if (!c) {
        c = { dirty: false, children: new Map() };
        t.children.set(k, c);
      }
      t = c;
    }
    t.dirty = true;
  }
  return top;
}

const SLASH = Buffer.from("/");
/** Catalog meta key changed by prune whenever stored data may disappear. */
export const DATA_EPOCH = "data.epoch";

/**
 * One backup run against the local repository: holds a shared lease for
 * its whole duration (so prune never deletes packs it may still
 * reference), walks, flushes, then commits the snapshot.
 */
export class Backup {
  constructor(
    private readonly repo: Repository,
    private readonly opts: BackupOptions,
  ) {}

  async run(): Promise<BackupResult> {
    const started = Date.now();
    const paths = normalizePaths(this.opts.paths);
    for (const p of paths) {
      try {
        lstatSync(p);
      } catch (e) {
        throw new StrataError("NOT_FOUND", `cannot back up ${p}: ${(e as Error).message}`, { subject: p });
      }
    }
    const repo = this.repo;
    // Dedup lookups follow; let the index reach the page cache meanwhile.
    void repo.catalog.warm?.();
    const lease: Lease = await holdLease(repo.catalog, "repo", leaseHolder("backup"), "shared");
    const startWritten = repo.written.storedBytes;
    const cache = this.opts.fileCache ?? null;
    try {
      await repo.adoptOrphanPacks();
      // Cache rows are trusted without asking the index only when the run
      // that wrote them completed and no prune has removed or doomed data
      // since (prune changes the catalog's data epoch).
      const epoch = (await repo.catalog.getMeta(DATA_EPOCH)) ?? "0";
      const trustedGen = cache && cache.getMeta(DATA_EPOCH) === epoch ? cache.completedGen() : 0;
      const local = repositorySink(repo);
      const target: WalkTarget = {
        sink: local.sink,
        workerInit: local.init,
        hasBlobs: (ids) => repo.hasBlobs(ids),
        // A changed directory's tree is stored as a delta against its
        // previous version when that is much smaller (see saveTreeEncoded).
        saveTree: async (id, enc, _path, _nodes, prev) => {
          await repo.saveTreeEncoded(id, enc, prev);
        },
        bytesAdded: () => repo.written.storedBytes - startWritten,
      };
      const walker = new TreeWalker(target, { ...this.opts, trustedGen });
      cache?.beginRun();
      const { tree, stats, errors } = await walker.walkPaths(paths);
      await repo.flush();
      lease.check();
      stats.bytesAdded = repo.written.storedBytes - startWritten;
      stats.durationMs = Date.now() - started;
      const hostname = this.opts.hostname ?? osHostname();
      const prior = (await repo.catalog.listSnapshots())
        .filter((s) => s.hostname === hostname && JSON.stringify(s.paths) === JSON.stringify(paths))
        .pop();
      const snapshot = await repo.saveSnapshot({
        time: new Date(),
        hostname,
        paths,
        tags: this.opts.tags ?? [],
        tree,
        parent: (prior?.id ?? null) as SnapshotId | null,
        kind: this.opts.kind ?? "backup",
        stats,
      });
      if (cache) {
        cache.endRun();
        cache.setMeta(DATA_EPOCH, epoch);
      }
      walker.progress(true);
      return { snapshot, errors };
    } finally {
      await lease.release();
    }
  }
}

/**
 * The walk of one backup or upload: depth-first over the given paths (or
 * one root directory), reusing unchanged files from the file cache, sending
 * changed files through the chunk pool, and handing trees to the target
 * bottom-up.
 */
export class TreeWalker {
  private readonly excludes: GlobSet;
  private errors: BackupError[] = [];
  private readonly stats: SnapshotStats = emptySnapshotStats();
  private pool!: ChunkPool;
  /** Cache rows of this generation or older are trusted without asking the target. */
  private readonly trustedGen: number;
  private current = "";
  private lastProgress = 0;
  /** Length of the walked root's path prefix on disk: snapshot paths start after it. */
  private rootLen = 1;
  /** Following a hint: a hard-linked file seen anywhere abandons it. */
  private hinted = false;
  private scan: WalkScan = { mode: "full", reason: null, dirsRead: 0, dirsReused: 0 };
  /** File reads and directory trees not finished yet (an abandoned hinted walk waits for them). */
  private pending = 0;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(
    private readonly target: WalkTarget,
    private readonly opts: WalkOptions,
  ) {
    this.excludes = new GlobSet(opts.excludes ?? []);
    this.trustedGen = opts.trustedGen ?? 0;
  }

  /** Walk absolute paths; the snapshot root mirrors them (backing up /srv/a gives srv → a). */
  walkPaths(paths: string[]): Promise<WalkResult> {
    return this.walk(() => this.buildRoot(paths));
  }

  /**
   * Walk one directory as the snapshot's root: an endpoint's `/` mounted or
   * copied at `dir`. Snapshot paths (filter, errors, tree paths) are
   * relative to it. With a hint (`WalkOptions.hint`), only the changed
   * directories are read; when the hint cannot be followed safely the walk
   * starts again and walks everything (`WalkResult.scan` says why).
   */
  walkRoot(dir: string): Promise<WalkResult> {
    const abs = nodePath.resolve(dir);
    this.rootLen = abs === "/" ? 1 : Buffer.byteLength(abs) + 1;
    const full = () => this.walkDir(Buffer.from(abs), "/");
    const hint = this.opts.hint;
    if (!hint) return this.walk(full);
    if (!this.opts.fileCache)
      return this.walk(full, "the walk has no file cache to take unchanged directories from");
    return this.walk(full, null, async () => {
      const trie = dirtyTrie(hint.dirs);
      return (await this.walkHinted(Buffer.from(abs), "/", trie, hint.parentRoot)).later;
    });
  }

  private async walk(
    full: () => Promise<Later<DirDone>>,
    fallback: string | null = null,
    hinted: (() => Promise<Later<DirDone>>) | null = null,
  ): Promise<WalkResult> {
    this.pool = new ChunkPool(this.target.sink, this.target.workerInit, this.opts.threads);
    try {
      let root: DirDone | null = null;
      this.scan = { mode: "full", reason: fallback, dirsRead: 0, dirsReused: 0 };
      if (hinted) {
        this.scan.mode = "dirs";
        this.hinted = true;
        try {
          root = await (await hinted()).value;
          if (!root.totals) throw new HintAbandoned("the totals of a reused directory are unknown");
        } catch (e) {
          if (!(e instanceof HintAbandoned)) throw e;
          // Let what the hinted walk started finish (its reads, trees and
          // cache rows are correct, only incomplete), then start over.
          await this.idle();
          this.hinted = false;
          this.errors = [];
          Object.assign(this.stats, emptySnapshotStats());
          this.scan = { mode: "full", reason: e.reason, dirsRead: 0, dirsReused: 0 };
          root = null;
        }
        this.hinted = false;
      }
      if (!root) root = await (await full()).value;
      else {
        // Only changed directories were read: the totals come from the
        // reused subtrees' cache rows.
        const t = root.totals!;
        this.stats.totalFiles = t.files;
        this.stats.totalBytes = t.bytes;
        this.stats.dirs = t.dirs;
        this.stats.filesUnchanged = Math.max(0, t.files - this.stats.filesNew - this.stats.filesChanged);
      }
      this.stats.errors = this.errors.length;
      this.stats.bytesAdded = this.target.bytesAdded();
      return { tree: root.id, stats: this.stats, errors: this.errors, scan: this.scan };
    } finally {
      await this.pool.close();
    }
  }

  /** Resolves once every file read and directory tree started is done. */
  private idle(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** The snapshot path of a directory on disk (no leading slash; empty for the root). */
  private snapshotPath(abs: Buffer): Buffer {
    return abs.length < this.rootLen ? Buffer.alloc(0) : abs.subarray(this.rootLen);
  }

  private async storeTree(
    id: TreeId,
    enc: Buffer,
    abs: Buffer,
    nodes: readonly FsNode[],
    prev: TreeId | null,
  ): Promise<void> {
    await this.target.saveTree(id, enc, this.snapshotPath(abs), nodes, prev);
  }

  private error(path: string, message: string): void {
    const e = { path, message };
    this.errors.push(e);
    this.opts.onError?.(e);
  }

  progress(force = false): void {
    if (!this.opts.onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 200) return;
    this.lastProgress = now;
    this.opts.onProgress({
      files: this.stats.totalFiles,
      dirs: this.stats.dirs,
      bytesRead: this.stats.bytesRead,
      bytesAdded: this.target.bytesAdded(),
      errors: this.errors.length,
      current: this.current,
    });
  }

  /**
   * The snapshot root mirrors absolute paths: backing up /srv/a gives a root
   * tree with srv → a. Directories above the backed-up paths are recorded
   * with their real metadata but only the entries on the way down.
   */
  private async buildRoot(paths: string[]): Promise<Later<DirDone>> {
    if (paths.includes("/")) return this.walkDir(Buffer.from("/"), "/");
    interface Spec {
      children: Map<string, Spec>;
      full: boolean;
    }
    const top: Spec = { children: new Map(), full: false };
    for (const p of paths) {
      let s = top;
      for (const seg of p.split("/").filter(Boolean)) {
        let c = s.children.get(seg);
        if (!c) {
          c = { children: new Map(), full: false };
          s.children.set(seg, c);
        }
        s = c;
      }
      s.full = true;
    }
    const build = async (dir: string, spec: Spec): Promise<Later<DirDone>> => {
      const names = [...spec.children.keys()].map((n) => Buffer.from(n)).sort(Buffer.compare);
      const nodes: Promise<FsNode | null>[] = [];
      for (const name of names) {
        const child = spec.children.get(name.toString())!;
        const abs = dir === "/" ? `/${name}` : `${dir}/${name}`;
        const st = lstatSync(abs, { bigint: true });
        if (child.full) nodes.push((await this.entry(Buffer.from(abs), abs, name, st, null)).value);
        else {
          const node = await readNode(Buffer.from(abs), name, st);
          const sub = await build(abs, child);
          nodes.push(sub.value.then((d) => withSubtree(node, d)));
        }
      }
      return this.finishDir(Buffer.from(dir), nodes, null, null);
    };
    return build("/", top);
  }

  /** True when a full walk leaves this entry out. */
  private isExcluded(childAbs: Buffer, childDisplay: string, name: Buffer): boolean {
    if (!this.excludes.empty && this.excludes.matches(childDisplay, displayPath(name))) return true;
    return (
      this.opts.filter?.excluded(Buffer.concat([SLASH, this.snapshotPath(childAbs)]), childDisplay) ?? false
    );
  }

  /**
   * Walk `abs` now; returns a promise for its tree id once its files are
   * stored. `how.untrusted`: the directory is not in the parent snapshot,
   * so no cache row below it is trusted. `how.known`: a hinted walk lists
   * a changed directory whose parent-snapshot row is verified; its
   * unchanged subdirectories are reused from their rows.
   */
  private async walkDir(abs: Buffer, display: string, how: ListHow = {}): Promise<Later<DirDone>> {
    this.stats.dirs++;
    this.opts.signal?.throwIfAborted();
    const filter = this.opts.filter;
    // A directory whose every entry is excluded is recorded empty (its own
    // metadata only), through the cache like any other, so it is not sent again.
    const descend = !filter || filter.descend(Buffer.concat([SLASH, this.snapshotPath(abs)]));
    // One native call lists the directory and lstats every entry.
    let listing: ScannedEntry[];
    try {
      if (descend) this.scan.dirsRead++;
      listing = descend ? scanDir(abs) : [];
    } catch (e) {
      this.error(display, `cannot read directory: ${(e as Error).message}`);
      return this.finishDir(abs, [], null, null);
    }
    listing.sort((a, b) => Buffer.compare(a.name, b.name));
    const cache = this.opts.fileCache;
    const known = how.known ?? null;
    const row = known ? { data: known.raw, gen: 1 } : (cache?.getDir(abs) ?? null);
    const cachedRaw = row?.data;
    const trusted =
      known !== null ||
      (!how.untrusted && row !== null && (row.gen ?? 0) > 0 && (row.gen ?? 0) <= this.trustedGen);
    const decoded = known ? known.row : decodeCacheDirOrNull(cachedRaw);
    const cached = cache
      ? trusted
        ? decoded?.entries
        : await this.validCacheEntries(decoded?.entries ?? null)
      : null;
    if (known) {
      // A hard link's other names may live in directories the hint does
      // not name: their link count (and content) changed with this one.
      for (const e of known.row.entries.values())
        if (e.node.link) throw new HintAbandoned(`${display} held a hard-linked file`);
    }
    // A trusted row's tree id is known to be stored: an identical tree
    // needs no index query.
    const knownTree = trusted ? (decoded?.treeId ?? null) : null;
    const oldDirs = new Map<string, FsNode>();
    if (known)
      for (const n of known.row.nodes) if (n.type === "dir") oldDirs.set(n.name.toString("latin1"), n);
    const nodes: Promise<FsNode | null>[] = [];
    const cacheOut: { node: FsNode; sig: FileSig }[] = [];
    const base = abs.length === 1 ? abs : Buffer.concat([abs, SLASH]);
    let n = 0;
    /** Non-directory entries that are not unchanged cache hits. */
    let fresh = 0;
    try {
      for (const { name, st, error } of listing) {
        const childAbs = Buffer.concat([base, name]);
        const childDisplay = display === "/" ? `/${displayPath(name)}` : `${display}/${displayPath(name)}`;
        if (this.isExcluded(childAbs, childDisplay, name)) continue;
        if (!st) {
          if (error?.code === "ENOENT") this.error(childDisplay, "vanished during backup");
          else this.error(childDisplay, `cannot stat: ${error?.message}`);
          continue;
        }
        const key = name.toString("latin1");
        let p: Promise<FsNode | null>;
        const old = known && st.isDirectory() ? oldDirs.get(key) : undefined;
        if (old?.subtree) {
          oldDirs.delete(key);
          p = (
            await this.knownChild(childAbs, childDisplay, name, st, old.subtree, how.trie?.children.get(key))
          ).value;
        } else {
          const hit = cached?.get(key);
          if (!st.isDirectory() && !(hit && sameSig(hit.sig, sigOf(st)))) fresh++;
          // In a hinted walk a directory the parent did not have is new: walked whole, no row trusted.
          p = (
            await this.entry(
              childAbs,
              childDisplay,
              name,
              st,
              hit ?? null,
              cacheOut,
              how.untrusted || !!known,
            )
          ).value;
        }
        // Rejections are collected by finishDir; mark them handled meanwhile.
        p.catch(() => {});
        nodes.push(p);
        // Let worker messages through during long synchronous stretches.
        if (++n % 256 === 0) await new Promise((r) => setImmediate(r));
      }
      // Subdirectories gone (or no longer directories): hard-linked files
      // below them had other names whose link count dropped.
      for (const [key, old] of oldDirs) {
        const childAbs = Buffer.concat([base, Buffer.from(key, "latin1")]);
        const gone = old.subtree ? this.verifiedRow(childAbs, old.subtree) : null;
        if (old.subtree !== EMPTY_TREE && (!gone?.row.totals || gone.row.totals.links > 0))
          throw new HintAbandoned(
            `${display}/${displayPath(old.name)} was removed and may have held hard-linked files`,
          );
      }
    } catch (e) {
      for (const p of nodes) p.catch(() => {});
      throw e;
    }
    // Nothing new and the same tree as the trusted row: the row stays as it is.
    return this.finishDir(
      abs,
      nodes,
      cache ? abs : null,
      cacheOut,
      cachedRaw ?? null,
      knownTree,
      fresh === 0,
      totalsOfList,
      decoded?.treeId ?? null,
    );
  }

  /**
   * The file cache's row of `abs` when it describes the parent snapshot's
   * tree `subtree`: written or seen by a completed run (trusted
   * generation), version 3 with totals, and for exactly this tree id.
   */
  private verifiedRow(abs: Buffer, subtree: TreeId): { row: VerifiedRow; raw: Buffer } | null {
    const row = this.opts.fileCache?.getDir(abs) ?? null;
    if (!row) return null;
    const gen = row.gen ?? 0;
    if (gen <= 0 || gen > this.trustedGen) return null;
    const d = decodeCacheDir(row.data);
    if (!d?.nodes || !d.totals || d.treeId !== subtree) return null;
    return { row: d as VerifiedRow, raw: row.data };
  }

  /**
   * A subdirectory of a listed directory that the parent snapshot had as
   * `subtree`: walked with the hint when something below it changed,
   * otherwise its subtree is reused (its own metadata is fresh from lstat).
   */
  private async knownChild(
    abs: Buffer,
    display: string,
    name: Buffer,
    st: BigIntStats,
    subtree: TreeId,
    trie: DirtyTrie | undefined,
  ): Promise<Later<FsNode | null>> {
    this.current = display;
    this.progress();
    let node: FsNode;
    try {
      node = await readNode(abs, name, st);
    } catch (e) {
      this.error(display, (e as Error).message);
      return now(null);
    }
    if (trie) {
      const sub = await this.walkHinted(abs, display, trie, subtree);
      return { value: sub.later.value.then((d) => withSubtree(node, d)) };
    }
    const v = this.verifiedRow(abs, subtree);
    if (!v) {
      if (subtree !== EMPTY_TREE)
        throw new HintAbandoned(`the file cache does not hold the parent snapshot's tree of ${display}`);
      // Empty in the parent (unreadable, say): nothing to reuse, nothing lost.
      const sub = await this.walkDir(abs, display, { untrusted: true });
      return { value: sub.value.then((d) => withSubtree(node, d)) };
    }
    this.scan.dirsReused++;
    const reused = { ...node, subtree };
    totalsOf.set(reused, v.row.totals);
    return now(reused);
  }

  /**
   * A directory on the way to a changed one, or a changed one: `subtree`
   * is its tree in the parent snapshot. Returns its new tree and its old
   * totals.
   */
  private async walkHinted(
    abs: Buffer,
    display: string,
    trie: DirtyTrie,
    subtree: TreeId,
  ): Promise<{ later: Later<DirDone>; old: SubtreeTotals }> {
    this.opts.signal?.throwIfAborted();
    const v = this.verifiedRow(abs, subtree);
    if (!v) {
      if (subtree !== EMPTY_TREE)
        throw new HintAbandoned(`the file cache does not hold the parent snapshot's tree of ${display}`);
      return {
        later: await this.walkDir(abs, display, { untrusted: true }),
        old: { files: 0, bytes: 0, dirs: 1, links: 0 },
      };
    }
    const filter = this.opts.filter;
    const descend = !filter || filter.descend(Buffer.concat([SLASH, this.snapshotPath(abs)]));
    if (!trie.dirty && descend) {
      const later = await this.reuseAbove(abs, display, trie, v);
      if (later) return { later, old: v.row.totals };
      // What changed below does not match the parent's listing: read this directory.
    }
    return { later: await this.walkDir(abs, display, { known: v, trie }), old: v.row.totals };
  }

  /**
   * A directory that did not change itself but has changed directories
   * below: its tree is the parent's with those children's entries
   * rebuilt (fresh metadata, new subtree); every other entry is reused
   * without a stat. Null when the parent's listing does not fit what the
   * hint names (a changed child the parent did not have as a directory, or
   * one that is not a directory any more): the caller lists it.
   */
  private async reuseAbove(
    abs: Buffer,
    display: string,
    trie: DirtyTrie,
    v: { row: VerifiedRow; raw: Buffer },
  ): Promise<Later<DirDone> | null> {
    const byName = new Map<string, FsNode>();
    for (const n of v.row.nodes) byName.set(n.name.toString("latin1"), n);
    const base = abs.length === 1 ? abs : Buffer.concat([abs, SLASH]);
    const todo: {
      key: string;
      name: Buffer;
      abs: Buffer;
      display: string;
      st: BigIntStats;
      old: FsNode;
      t: DirtyTrie;
    }[] = [];
    for (const [key, t] of trie.children) {
      const name = Buffer.from(key, "latin1");
      const childAbs = Buffer.concat([base, name]);
      const childDisplay = display === "/" ? `/${displayPath(name)}` : `${display}/${displayPath(name)}`;
      const old = byName.get(key);
      if (!old) {
        // Left out by the policy: a full walk does not record it either.
        if (this.isExcluded(childAbs, childDisplay, name)) continue;
        return null;
      }
      if (old.type !== "dir" || !old.subtree) return null;
      let st: BigIntStats | undefined;
      try {
        st = lstatSync(childAbs, { bigint: true, throwIfNoEntry: false });
      } catch {
        return null;
      }
      if (!st?.isDirectory()) return null;
      todo.push({ key, name, abs: childAbs, display: childDisplay, st, old, t });
    }
    // Nothing protected changed below: the parent's tree as it was.
    if (!todo.length) return now({ id: v.row.treeId, totals: v.row.totals });
    const changed = new Map<string, Promise<FsNode | null>>();
    const olds = new Map<string, SubtreeTotals>();
    try {
      for (const c of todo) {
        this.current = c.display;
        this.progress();
        let node: FsNode;
        try {
          node = await readNode(c.abs, c.name, c.st);
        } catch (e) {
          // A full walk reports it and leaves the directory out.
          throw new HintAbandoned(`cannot read ${c.display}: ${(e as Error).message}`);
        }
        const sub = await this.walkHinted(c.abs, c.display, c.t, c.old.subtree!);
        olds.set(c.key, sub.old);
        const p = sub.later.value.then((d) => withSubtree(node, d));
        p.catch(() => {});
        changed.set(c.key, p);
      }
    } catch (e) {
      for (const p of changed.values()) p.catch(() => {});
      throw e;
    }
    const nodes = v.row.nodes.map((n) => changed.get(n.name.toString("latin1")) ?? Promise.resolve(n));
    const cacheOut = [...v.row.entries.values()];
    // The totals: the parent's, plus what each rebuilt child gained or lost.
    const totals = (list: readonly FsNode[]): SubtreeTotals | null => {
      const t = { ...v.row.totals };
      for (const [key, old] of olds) {
        const cur = list.find((n) => n.name.toString("latin1") === key);
        const s = cur ? totalsOf.get(cur) : { files: 0, bytes: 0, dirs: 0, links: 0 };
        if (!s) return null;
        t.files += s.files - old.files;
        t.bytes += s.bytes - old.bytes;
        t.dirs += s.dirs - old.dirs;
        t.links += s.links - old.links;
      }
      return t;
    };
    return this.finishDir(abs, nodes, abs, cacheOut, v.raw, v.row.treeId, true, totals);
  }

  /**
   * Drop cached entries whose chunks are not stored (and live) any more: the
   * cache may have been written by a backup killed before its packs were
   * indexed, or prune may have removed or doomed the data since. One
   * catalog query per directory.
   */
  private async validCacheEntries(
    cached: Map<string, { node: FsNode; sig: FileSig }> | null,
  ): Promise<Map<string, { node: FsNode; sig: FileSig }> | null> {
    if (!cached || cached.size === 0) return cached;
    const ids: BlobId[] = [];
    for (const { node } of cached.values()) for (const c of chunkIdsOf(node)) ids.push(c);
    if (ids.length === 0) return cached;
    const present = await this.target.hasBlobs([...new Set(ids)]);
    for (const [k, { node }] of cached) {
      for (const c of chunkIdsOf(node)) {
        if (!present.has(c)) {
          cached.delete(k);
          break;
        }
      }
    }
    return cached;
  }

  private async entry(
    abs: Buffer,
    display: string,
    name: Buffer,
    st: BigIntStats,
    hit: { node: FsNode; sig: FileSig } | null,
    cacheOut: { node: FsNode; sig: FileSig }[] | null = null,
    untrusted = false,
  ): Promise<Later<FsNode | null>> {
    this.current = display;
    this.progress();
    const sig = sigOf(st);
    if (st.isDirectory()) {
      let node: FsNode;
      try {
        node = await readNode(abs, name, st);
      } catch (e) {
        this.error(display, (e as Error).message);
        return now(null);
      }
      const sub = await this.walkDir(abs, display, { untrusted });
      return { value: sub.value.then((d) => withSubtree(node, d)) };
    }
    // A hard link's other names may live in directories the hint does not
    // name: their link count (and content) changed with this one.
    if (this.hinted && st.nlink > 1n) throw new HintAbandoned(`${display} is a hard-linked file`);
    if (hit && sameSig(hit.sig, sig) && hit.node.type !== "dir") {
      const node = { ...hit.node, name };
      if (node.type === "file") {
        this.stats.filesUnchanged++;
        this.stats.totalFiles++;
        this.stats.totalBytes += node.size;
      }
      cacheOut?.push({ node, sig });
      return now(node);
    }
    if (st.isFile()) {
      // Regular files: everything but xattrs comes from lstat; the worker
      // reads the xattrs with the content.
      const node = nodeFromStat(abs, name, st);
      const isNew = !hit;
      await this.pool.slot(node.size);
      this.pending++;
      const value = this.readFile(abs, display, node, st, this.opts.retries ?? 3).then((done) => {
        if (!done) return null;
        if (isNew) this.stats.filesNew++;
        else this.stats.filesChanged++;
        this.stats.totalFiles++;
        this.stats.totalBytes += done.node.size;
        cacheOut?.push({ node: done.node, sig: done.sig });
        return done.node;
      });
      value.then(
        () => this.settle(),
        () => this.settle(),
      );
      return { value };
    }
    let node: FsNode;
    try {
      node = await readNode(abs, name, st);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      this.error(
        display,
        code === "ENOENT" ? "vanished during backup" : `cannot read metadata: ${(e as Error).message}`,
      );
      return now(null);
    }
    cacheOut?.push({ node, sig });
    return now(node);
  }

  private async readFile(
    abs: Buffer,
    display: string,
    node: FsNode,
    st: BigIntStats,
    retries: number,
  ): Promise<{ node: FsNode; sig: FileSig } | null> {
    let cur = node;
    let curSt = st;
    for (let attempt = 0; ; attempt++) {
      let r = await this.pool.submit(abs, cur.size);
      if (r.ok && r.sig !== statSig(curSt)) {
        // Changed between the walk's lstat and the read: metadata and
        // content would come from different moments. Read both again.
        r = { ok: false, changed: true, code: "CHANGED", message: "file changed between stat and read" };
      }
      if (r.ok) {
        this.stats.bytesRead += r.bytesRead;
        // The worker checked the file did not change while read; record the
        // signature seen before reading so a later change is noticed.
        const node: FsNode = { ...cur, size: r.size, content: r.pieces };
        if (r.xattrs.length) node.xattrs = r.xattrs;
        else delete node.xattrs;
        return { node, sig: sigOf(curSt) };
      }
      if (!r.changed || attempt >= retries) {
        const msg = r.changed
          ? `changed while being read ${retries + 1} times; not stored (${r.message})`
          : r.code === "ENOENT"
            ? "vanished during backup"
            : `cannot read: ${r.message}`;
        this.error(display, msg);
        return null;
      }
      // Re-stat and re-read the metadata: the file changed under us.
      try {
        curSt = lstatSync(abs, { bigint: true });
        if (!curSt.isFile()) {
          this.error(display, "changed type during backup; not stored");
          return null;
        }
        cur = nodeFromStat(abs, node.name, curSt);
      } catch (e) {
        this.error(
          display,
          (e as NodeJS.ErrnoException).code === "ENOENT" ? "vanished during backup" : (e as Error).message,
        );
        return null;
      }
    }
  }

  private settle(): void {
    if (--this.pending === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private async finishDir(
    abs: Buffer,
    nodes: Promise<FsNode | null>[],
    cacheKey: Buffer | null,
    cacheOut: { node: FsNode; sig: FileSig }[] | null,
    cachedRaw: Buffer | null = null,
    knownTree: TreeId | null = null,
    allHits = false,
    totalsFn: (list: readonly FsNode[]) => SubtreeTotals | null = totalsOfList,
    /** The directory's tree in the previous backup, when the file cache knows it (trusted or not). */
    prevTree: TreeId | null = knownTree,
  ): Promise<Later<DirDone>> {
    this.pending++;
    const value = Promise.all(nodes)
      .then(async (resolved) => {
        const list = resolved.filter((n): n is FsNode => n !== null);
        const enc = encodeTree(list);
        const id = createHash("sha256").update(enc).digest("hex") as TreeId;
        const totals = totalsFn(list);
        if (id !== knownTree) await this.storeTree(id, enc, abs, list, prevTree);
        // An unchanged directory (trusted row, every entry a hit, same tree)
        // needs no new row: getDir already marked it seen. Version 2 rows
        // are rewritten once, as version 3.
        const unchanged = allHits && id === knownTree && cachedRaw?.[0] === 3;
        if (cacheKey && cacheOut && this.opts.fileCache && !unchanged) {
          const sigs = new Map<string, FileSig>();
          for (const e of cacheOut) sigs.set(e.node.name.toString("latin1"), e.sig);
          const data = encodeCacheDir(enc, list, sigs, id, totals);
          // An unchanged directory keeps its row (getDir already marked it
          // seen): no rewrite of the whole cache on a no-change backup.
          if (data && !cachedRaw?.equals(data)) this.opts.fileCache.putDir(cacheKey, { data });
        }
        return { id, totals };
      })
      .finally(() => this.settle());
    return { value };
  }
}

/** A directory's tree, once its entries are stored, with its subtree totals (null: unknown). */
interface DirDone {
  id: TreeId;
  totals: SubtreeTotals | null;
}

/** A cache row a hinted walk may rely on: version 3, with totals. */
type VerifiedRow = CachedEntries & { nodes: FsNode[]; totals: SubtreeTotals };

/** How `walkDir` lists a directory (see there). */
interface ListHow {
  untrusted?: boolean;
  known?: { row: VerifiedRow; raw: Buffer };
  trie?: DirtyTrie;
}

/** A directory's node with its tree, carrying the subtree's totals along. */
function withSubtree(node: FsNode, d: DirDone): FsNode {
  const n = { ...node, subtree: d.id };
  if (d.totals) totalsOf.set(n, d.totals);
  return n;
}

/** A value computed later, wrapped so `await` on the walk does not wait for it. */
interface Later<T> {
  value: Promise<T>;
}
const now = <T>(v: T): Later<T> => ({ value: Promise.resolve(v) });

function decodeCacheDirOrNull(b: Buffer | undefined): CachedEntries | null {
  return b ? decodeCacheDir(b) : null;
}

export function normalizePaths(paths: string[]): string[] {
  if (paths.length === 0)
    throw new StrataError("INVALID_ARGUMENT", "no paths to back up", { hint: "give at least one PATH" });
  const abs = [...new Set(paths.map((p) => nodePath.resolve(p)))].sort();
  // Drop paths inside other paths: they are already covered.
  return abs.filter((p) => !abs.some((q) => q !== p && (q === "/" || p.startsWith(`${q}/`))));
}

export function backup(repo: Repository, opts: BackupOptions): Promise<BackupResult> {
  return new Backup(repo, opts).run();
}
