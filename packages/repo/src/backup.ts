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
import { ChunkPool } from "./chunk-pool.js";
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

export interface BackupOptions {
  paths: string[];
  tags?: string[];
  excludes?: string[];
  hostname?: string;
  kind?: string;
  fileCache?: FileCache | null;
  threads?: number;
  onProgress?: (p: BackupProgress) => void;
  onError?: (e: BackupError) => void;
  /** How many times a file that changes while read is re-read before giving up. */
  retries?: number;
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
 * One backup run: walks the given paths depth-first, reuses unchanged files
 * from the file cache, sends changed files through the chunk pool, writes
 * trees bottom-up and commits a snapshot. Holds a shared lease on the
 * repository for its whole duration so prune never deletes packs it may
 * still reference.
 */
export class Backup {
  private readonly excludes: GlobSet;
  private readonly errors: BackupError[] = [];
  private readonly stats: SnapshotStats = emptySnapshotStats();
  private pool!: ChunkPool;
  /** Cache rows of this generation or older are trusted without an index query. */
  private trustedGen = 0;
  private epoch = "0";
  private current = "";
  private lastProgress = 0;

  constructor(
    private readonly repo: Repository,
    private readonly opts: BackupOptions,
  ) {
    this.excludes = new GlobSet(opts.excludes ?? []);
  }

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
    const lease: Lease = await holdLease(this.repo.catalog, "repo", leaseHolder("backup"), "shared");
    const startWritten = this.repo.written.storedBytes;
    this.pool = new ChunkPool(this.repo, this.opts.threads);
    const cache = this.opts.fileCache ?? null;
    try {
      await this.repo.adoptOrphanPacks();
      // Cache rows are trusted without asking the index only when the run
      // that wrote them completed and no prune has removed or doomed data
      // since (prune changes the catalog's data epoch).
      const epoch = (await this.repo.catalog.getMeta(DATA_EPOCH)) ?? "0";
      if (cache) {
        this.trustedGen = cache.getMeta(DATA_EPOCH) === epoch ? cache.completedGen() : 0;
        this.epoch = epoch;
      }
      cache?.beginRun();
      const root = await this.buildRoot(paths);
      const tree = await root.value;
      await this.repo.flush();
      lease.check();
      this.stats.bytesAdded = this.repo.written.storedBytes - startWritten;
      this.stats.errors = this.errors.length;
      this.stats.durationMs = Date.now() - started;
      const hostname = this.opts.hostname ?? osHostname();
      const prior = (await this.repo.catalog.listSnapshots())
        .filter((s) => s.hostname === hostname && JSON.stringify(s.paths) === JSON.stringify(paths))
        .pop();
      const snapshot = await this.repo.saveSnapshot({
        time: new Date(),
        hostname,
        paths,
        tags: this.opts.tags ?? [],
        tree,
        parent: (prior?.id ?? null) as SnapshotId | null,
        kind: this.opts.kind ?? "backup",
        stats: this.stats,
      });
      if (cache) {
        cache.endRun();
        cache.setMeta(DATA_EPOCH, this.epoch);
      }
      this.progress(true);
      return { snapshot, errors: this.errors };
    } finally {
      await this.pool.close();
      await lease.release();
    }
  }

  private error(path: string, message: string): void {
    const e = { path, message };
    this.errors.push(e);
    this.opts.onError?.(e);
  }

  private progress(force = false): void {
    if (!this.opts.onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 200) return;
    this.lastProgress = now;
    this.opts.onProgress({
      files: this.stats.totalFiles,
      dirs: this.stats.dirs,
      bytesRead: this.stats.bytesRead,
      bytesAdded: this.repo.written.storedBytes,
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
      return this.finishDir(nodes, null, null);
    };
    return build("/", top);
  }

  /** Walk `abs` now; returns a promise for its tree id once its files are stored. */
  private async walkDir(abs: Buffer, display: string): Promise<Later<TreeId>> {
    this.stats.dirs++;
    let names: Buffer[];
    try {
      names = readdirSync(abs, { encoding: "buffer" });
    } catch (e) {
      this.error(display, `cannot read directory: ${(e as Error).message}`);
      return { value: this.repo.saveTree([]) };
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
    return this.finishDir(nodes, cache ? abs : null, cacheOut, cachedRaw ?? null, knownTree, fresh === 0);
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
    const present = await this.repo.hasBlobs([...new Set(ids)]);
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
      if (id !== knownTree) await this.repo.saveBlob(id, "tree", enc);
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
