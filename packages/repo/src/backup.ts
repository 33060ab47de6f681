import { createHash } from "node:crypto";
import { type BigIntStats, lstatSync, readdirSync } from "node:fs";
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
import { displayPath, nodeFromStat, readNode } from "@strata/fs";
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
   * slash, empty for the root.
   */
  saveTree(id: TreeId, encoded: Buffer, path: Buffer, nodes: readonly FsNode[]): Promise<void>;
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
  signal?: AbortSignal;
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
}

export interface BackupResult {
  snapshot: SnapshotRecord;
  errors: BackupError[];
}

/** Stat signature: a file whose signature is unchanged is not read again. */
interface Sig {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}
const sigOf = (st: BigIntStats): Sig => ({
  dev: st.dev,
  ino: st.ino,
  size: st.size,
  mtimeNs: st.mtimeNs,
  ctimeNs: st.ctimeNs,
});
const sameSig = (a: Sig, b: Sig) =>
  a.dev === b.dev &&
  a.ino === b.ino &&
  a.size === b.size &&
  a.mtimeNs === b.mtimeNs &&
  a.ctimeNs === b.ctimeNs;

/** File-cache payload of one directory: its non-directory nodes with their signatures. */
/**
 * Cache row layout, version 2: u8 2, the non-directory nodes as an encoded
 * tree, u32 count, per node its signature (dev, ino, size, mtimeNs,
 * ctimeNs), then the 32-byte id of the directory's tree as last stored.
 */
function encodeCacheDir(entries: { node: FsNode; sig: Sig }[], treeId: TreeId): Buffer {
  const tree = encodeTree(entries.map((e) => e.node));
  const w = new Writer(tree.length + entries.length * 40 + 48);
  w.u8(2).lbytes(tree).u32(entries.length);
  for (const { sig } of entries) w.u64(sig.dev).u64(sig.ino).u64(sig.size).i64(sig.mtimeNs).i64(sig.ctimeNs);
  w.bytes(Buffer.from(treeId, "hex"));
  return w.finish();
}
interface CachedEntries {
  entries: Map<string, { node: FsNode; sig: Sig }>;
  treeId: TreeId;
}
function decodeCacheDir(buf: Buffer): CachedEntries | null {
  try {
    const r = new Reader(buf, "file cache");
    if (r.u8() !== 2) return null;
    const nodes = decodeTree(Buffer.from(r.lbytes()), "file cache");
    const n = r.u32();
    if (n !== nodes.length) return null;
    const out = new Map<string, { node: FsNode; sig: Sig }>();
    for (const node of nodes) {
      const sig = {
        dev: BigInt(r.u64()),
        ino: BigInt(r.u64()),
        size: BigInt(r.u64()),
        mtimeNs: r.i64(),
        ctimeNs: r.i64(),
      };
      out.set(node.name.toString("latin1"), { node, sig });
    }
    return { entries: out, treeId: r.bytes(32).toString("hex") as TreeId };
  } catch {
    return null; // a damaged cache only costs a re-read
  }
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
        saveTree: async (id, enc) => {
          await repo.saveBlob(id, "tree", enc);
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
  private readonly errors: BackupError[] = [];
  private readonly stats: SnapshotStats = emptySnapshotStats();
  private pool!: ChunkPool;
  /** Cache rows of this generation or older are trusted without asking the target. */
  private readonly trustedGen: number;
  private current = "";
  private lastProgress = 0;
  /** Length of the walked root's path prefix on disk: snapshot paths start after it. */
  private rootLen = 1;

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
   * relative to it.
   */
  walkRoot(dir: string): Promise<WalkResult> {
    const abs = nodePath.resolve(dir);
    this.rootLen = abs === "/" ? 1 : Buffer.byteLength(abs) + 1;
    return this.walk(() => this.walkDir(Buffer.from(abs), "/"));
  }

  private async walk(build: () => Promise<Later<TreeId>>): Promise<WalkResult> {
    this.pool = new ChunkPool(this.target.sink, this.target.workerInit, this.opts.threads);
    try {
      const root = await build();
      const tree = await root.value;
      this.stats.errors = this.errors.length;
      this.stats.bytesAdded = this.target.bytesAdded();
      return { tree, stats: this.stats, errors: this.errors };
    } finally {
      await this.pool.close();
    }
  }

  /** The snapshot path of a directory on disk (no leading slash; empty for the root). */
  private snapshotPath(abs: Buffer): Buffer {
    return abs.length < this.rootLen ? Buffer.alloc(0) : abs.subarray(this.rootLen);
  }

  private async storeTree(id: TreeId, enc: Buffer, abs: Buffer, nodes: readonly FsNode[]): Promise<void> {
    await this.target.saveTree(id, enc, this.snapshotPath(abs), nodes);
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
  private async buildRoot(paths: string[]): Promise<Later<TreeId>> {
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
    const build = async (dir: string, spec: Spec): Promise<Later<TreeId>> => {
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
          nodes.push(sub.value.then((subtree) => ({ ...node, subtree })));
        }
      }
      return this.finishDir(Buffer.from(dir), nodes, null, null);
    };
    return build("/", top);
  }

  /** Walk `abs` now; returns a promise for its tree id once its files are stored. */
  private async walkDir(abs: Buffer, display: string): Promise<Later<TreeId>> {
    this.stats.dirs++;
    this.opts.signal?.throwIfAborted();
    const filter = this.opts.filter;
    // A directory whose every entry is excluded is recorded empty (its own
    // metadata only), through the cache like any other, so it is not sent again.
    const descend = !filter || filter.descend(Buffer.concat([SLASH, this.snapshotPath(abs)]));
    let names: Buffer[];
    try {
      names = descend ? readdirSync(abs, { encoding: "buffer" }) : [];
    } catch (e) {
      this.error(display, `cannot read directory: ${(e as Error).message}`);
      return this.finishDir(abs, [], null, null);
    }
    names.sort(Buffer.compare);
    const cache = this.opts.fileCache;
    const row = cache?.getDir(abs) ?? null;
    const cachedRaw = row?.data;
    const trusted = row !== null && (row.gen ?? 0) > 0 && (row.gen ?? 0) <= this.trustedGen;
    const decoded = decodeCacheDirOrNull(cachedRaw);
    const cached = cache
      ? trusted
        ? decoded?.entries
        : await this.validCacheEntries(decoded?.entries ?? null)
      : null;
    // A trusted row's tree id is known to be stored: an identical tree
    // needs no index query.
    const knownTree = trusted ? (decoded?.treeId ?? null) : null;
    const nodes: Promise<FsNode | null>[] = [];
    const cacheOut: { node: FsNode; sig: Sig }[] = [];
    const base = abs.length === 1 ? abs : Buffer.concat([abs, SLASH]);
    let n = 0;
    /** Non-directory entries that are not unchanged cache hits. */
    let fresh = 0;
    for (const name of names) {
      const childAbs = Buffer.concat([base, name]);
      const childDisplay = display === "/" ? `/${displayPath(name)}` : `${display}/${displayPath(name)}`;
      if (!this.excludes.empty && this.excludes.matches(childDisplay, displayPath(name))) continue;
      if (filter?.excluded(Buffer.concat([SLASH, this.snapshotPath(childAbs)]), childDisplay)) continue;
      let st: BigIntStats | undefined;
      try {
        st = lstatSync(childAbs, { bigint: true, throwIfNoEntry: false });
      } catch (e) {
        this.error(childDisplay, `cannot stat: ${(e as Error).message}`);
        continue;
      }
      if (!st) {
        this.error(childDisplay, "vanished during backup");
        continue;
      }
      const hit = cached?.get(name.toString("latin1"));
      if (!st.isDirectory() && !(hit && sameSig(hit.sig, sigOf(st)))) fresh++;
      const p = (await this.entry(childAbs, childDisplay, name, st, hit ?? null, cacheOut)).value;
      // Rejections are collected by finishDir; mark them handled meanwhile.
      p.catch(() => {});
      nodes.push(p);
      // Let worker messages through during long synchronous stretches.
      if (++n % 256 === 0) await new Promise((r) => setImmediate(r));
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
    );
  }

  /**
   * Drop cached entries whose chunks are not stored (and live) any more: the
   * cache may have been written by a backup killed before its packs were
   * indexed, or prune may have removed or doomed the data since. One
   * catalog query per directory.
   */
  private async validCacheEntries(
    cached: Map<string, { node: FsNode; sig: Sig }> | null,
  ): Promise<Map<string, { node: FsNode; sig: Sig }> | null> {
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
    hit: { node: FsNode; sig: Sig } | null,
    cacheOut: { node: FsNode; sig: Sig }[] | null = null,
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
      const sub = await this.walkDir(abs, display);
      return { value: sub.value.then((subtree) => ({ ...node, subtree })) };
    }
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
      const value = this.readFile(abs, display, node, st, this.opts.retries ?? 3).then((done) => {
        if (!done) return null;
        if (isNew) this.stats.filesNew++;
        else this.stats.filesChanged++;
        this.stats.totalFiles++;
        this.stats.totalBytes += done.node.size;
        cacheOut?.push({ node: done.node, sig: done.sig });
        return done.node;
      });
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
  ): Promise<{ node: FsNode; sig: Sig } | null> {
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

  private async finishDir(
    abs: Buffer,
    nodes: Promise<FsNode | null>[],
    cacheKey: Buffer | null,
    cacheOut: { node: FsNode; sig: Sig }[] | null,
    cachedRaw: Buffer | null = null,
    knownTree: TreeId | null = null,
    allHits = false,
  ): Promise<Later<TreeId>> {
    const value = Promise.all(nodes).then(async (resolved) => {
      const list = resolved.filter((n): n is FsNode => n !== null);
      const enc = encodeTree(list);
      const id = createHash("sha256").update(enc).digest("hex") as TreeId;
      if (id !== knownTree) await this.storeTree(id, enc, abs, list);
      // An unchanged directory (trusted row, every entry a hit, same tree)
      // needs no new row: getDir already marked it seen.
      const unchanged = allHits && id === knownTree;
      if (cacheKey && cacheOut && this.opts.fileCache && !unchanged) {
        cacheOut.sort((a, b) => Buffer.compare(a.node.name, b.node.name));
        const data = encodeCacheDir(cacheOut, id);
        // An unchanged directory keeps its row (getDir already marked it
        // seen): no rewrite of the whole cache on a no-change backup.
        if (!cachedRaw?.equals(data)) this.opts.fileCache.putDir(cacheKey, { data });
      }
      return id;
    });
    return { value };
  }
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
