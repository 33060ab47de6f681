import {
  constants as C,
  closeSync,
  promises as fsp,
  ftruncateSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  rmSync,
  symlinkSync,
  unlinkSync,
} from "node:fs";
import * as nodePath from "node:path";
import { type BlobId, chunkIdsOf, type FsNode, StrataError, type TreeId } from "@strata/core";
import {
  applyMetadataSync,
  createSpecial,
  displayPath,
  hasDefaultAcl,
  trimMemory,
  validateName,
} from "@strata/fs";
import type { IndexEntry, SnapshotRecord } from "./catalog.js";
import { holdLease, leaseHolder } from "./lease.js";
import { RestorePool, writeBlobs } from "./read-blobs.js";
import type { Repository } from "./repository.js";

export interface RestoreOptions {
  target: string;
  /** Absolute paths inside the snapshot; only these (and their contents) are restored. */
  includes?: string[];
  /** Restore the contents of this path of the snapshot into the target, instead of the whole snapshot. */
  subpath?: string;
  onProgress?: (p: RestoreProgress) => void;
  onError?: (e: { path: string; message: string }) => void;
  /** Files written concurrently. */
  concurrency?: number;
}

export interface RestoreProgress {
  files: number;
  dirs: number;
  bytes: number;
  current: string;
}

export interface RestoreResult {
  files: number;
  dirs: number;
  bytes: number;
  errors: { path: string; message: string }[];
}

const SLASH = Buffer.from("/");
/** Files whose content is written together (bounds open descriptors). */
const FILE_GROUP = 128;
/**
 * Groups being written at once: the walk goes on creating files while their
 * content is read and written, so at most (GROUPS_IN_FLIGHT + 1) ×
 * FILE_GROUP descriptors are open.
 */
const GROUPS_IN_FLIGHT = 3;
/** Directory listings read ahead of the walk. */
const PREFETCH_TREES = 64;

interface PendingFile {
  fd: number;
  node: FsNode;
  dest: Buffer;
  path: string;
  damaged: string[];
  /** Whether the content has holes (then the size is set by ftruncate). */
  sparse: boolean;
  /** Bytes covered by pieces. */
  written: number;
  /** Created in an ACL-clean directory (see `Restorer.restoreTree`). */
  clean: boolean;
}

interface WriteTask {
  file: PendingFile;
  fd: number;
  pos: number;
  entry: IndexEntry;
}

/**
 * Restore a snapshot (or part of it) into `target`. Never writes outside
 * the target: every name is validated (no '/', '.', '..', NUL), every
 * directory we descend into is one we created or checked to be a real
 * directory, files are created with O_EXCL|O_NOFOLLOW, and an existing
 * entry in the way is removed (not followed). Directory metadata is applied
 * after the directory's contents, so mtimes survive.
 *
 * The walk creates entries in tree order on the main thread; file content is
 * written in groups (pack-ordered ranged reads, decoded and written by worker
 * threads, see `writeBlobs`) while the walk goes on. A file's metadata is set
 * once its content is written, a directory's once everything below it is.
 */
export class Restorer {
  private readonly result: RestoreResult = { files: 0, dirs: 0, bytes: 0, errors: [] };
  private readonly links = new Map<string, Buffer>();
  private readonly includes: string[] | null;
  private lastProgress = 0;
  private current = "";
  private pool: RestorePool | null = null;
  /** Whether to restore owners: decided once (root only), not per object. */
  private readonly owner = process.geteuid?.() === 0;
  /** The target has no default ACL (see `restoreTree`'s `clean`). */
  private targetClean = false;
  /** Directory listings read ahead of the walk (see `prefetch`). */
  private readonly trees = new Map<TreeId, Promise<FsNode[]>>();
  private groups = 0;
  private readonly groupWaiters: (() => void)[] = [];

  constructor(
    private readonly repo: Repository,
    private readonly opts: RestoreOptions,
  ) {
    this.includes = opts.includes?.length ? opts.includes.map((p) => nodePath.posix.resolve("/", p)) : null;
  }

  async run(snapshot: SnapshotRecord): Promise<RestoreResult> {
    // Shared with backups: prune will not delete packs this restore may read.
    const lease = await holdLease(this.repo.catalog, "repo", leaseHolder("restore"), "shared");
    try {
      return await this.runLeased(snapshot);
    } finally {
      await this.pool?.close();
      await lease.release();
    }
  }

  private async runLeased(snapshot: SnapshotRecord): Promise<RestoreResult> {
    const target = Buffer.from(nodePath.resolve(this.opts.target));
    await ensureRealDir(target, this.opts.target);
    this.targetClean = !hasDefaultAcl(target);
    let tree: TreeId = snapshot.tree;
    let prefix = "";
    let topNode: FsNode | null = null;
    if (this.opts.subpath && this.opts.subpath !== "/") {
      const segs = this.opts.subpath.split("/").filter(Boolean);
      for (let i = 0; i < segs.length; i++) {
        const nodes = await this.repo.loadTree(tree);
        const want = Buffer.from(segs[i]!);
        const n = nodes.find((x) => x.name.equals(want));
        if (!n) {
          throw new StrataError(
            "NOT_FOUND",
            `${this.opts.subpath} is not in snapshot ${snapshot.id.slice(0, 8)}`,
            {
              hint: "list the snapshot with `strata ls SNAPSHOT`",
            },
          );
        }
        prefix += `/${segs[i]}`;
        if (n.type !== "dir") {
          if (i !== segs.length - 1) throw new StrataError("NOT_FOUND", `${prefix} is not a directory`);
          await this.restoreNode(
            n,
            target,
            nodePath.posix.dirname(prefix) === "/" ? "" : nodePath.posix.dirname(prefix),
            1,
            false,
            null,
            null,
            this.targetClean,
          );
          return this.result;
        }
        tree = n.subtree!;
        topNode = n;
      }
    }
    await (await this.restoreTree(tree, target, prefix, this.includes ? 2 : 1, false, this.targetClean)).done;
    if (topNode) this.meta(target, topNode, prefix);
    this.progress(true);
    return this.result;
  }

  private error(path: string, message: string): void {
    const e = { path, message };
    this.result.errors.push(e);
    this.opts.onError?.(e);
  }

  private progress(force = false): void {
    if (!this.opts.onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 200) return;
    this.lastProgress = now;
    this.opts.onProgress({
      files: this.result.files,
      dirs: this.result.dirs,
      bytes: this.result.bytes,
      current: this.current,
    });
  }

  /** 0: skip, 1: restore whole, 2: only descend (an ancestor of an include). */
  private selected(path: string): 0 | 1 | 2 {
    if (!this.includes) return 1;
    for (const inc of this.includes) if (path === inc || path.startsWith(`${inc}/`) || inc === "/") return 1;
    for (const inc of this.includes) if (inc.startsWith(`${path}/`)) return 2;
    return 0;
  }

  /**
   * Create the entries of tree `id` in `dir` (recursively). Resolves when
   * the walk of the tree is over; `done` settles once every file's content
   * and every metadata below it is written. `clean`: `dir` has no default
   * ACL and what is created in it inherits none (the target had none and
   * every directory between was created by this restore), so there is no
   * inherited ACL to look for and remove.
   */
  private async restoreTree(
    id: TreeId,
    dir: Buffer,
    prefix: string,
    mode: 1 | 2 = this.includes ? 2 : 1,
    fresh = false,
    clean = false,
  ): Promise<{ done: Promise<void> }> {
    let nodes: FsNode[];
    try {
      nodes = await this.loadTree(id);
    } catch (e) {
      this.error(prefix || "/", `cannot load directory listing: ${(e as Error).message}`);
      return { done: Promise.resolve() };
    }
    if (mode === 1) this.prefetch(nodes);
    // One index lookup for every chunk of every file in this directory.
    const ids = new Set<BlobId>();
    for (const n of nodes) for (const c of chunkIdsOf(n)) ids.add(c);
    let index = new Map<BlobId, IndexEntry>();
    if (ids.size) {
      try {
        index = await this.repo.lookup([...ids]);
      } catch (e) {
        this.error(prefix || "/", `cannot look up file data: ${(e as Error).message}`);
      }
    }
    // Files are created as they come and their content is written in groups
    // (see writeGroup), started before descending into a subdirectory so
    // open descriptors stay bounded, and finished in the background.
    const pending: Promise<void>[] = [];
    const group: PendingFile[] = [];
    const start = async () => {
      const files = group.splice(0);
      while (this.groups >= GROUPS_IN_FLIGHT) await new Promise<void>((r) => this.groupWaiters.push(r));
      this.groups++;
      pending.push(
        this.writeGroup(files, index)
          .catch((e) => this.error(prefix || "/", (e as Error).message))
          .finally(() => {
            this.groups--;
            this.groupWaiters.shift()?.();
            // The group's ranges, read and decoded by the workers, are free now. At
            // most once a second: each trim makes later buffers fault their pages in
            // again (every 250 ms cost A's restore ~0.8 s of system time).
            trimMemory(1000);
          }),
      );
    };
    for (const node of nodes) {
      if (node.type === "dir" && group.length) await start();
      const pendingFile = await this.restoreNode(node, dir, prefix, mode, fresh, index, pending, clean);
      if (pendingFile) {
        group.push(pendingFile);
        if (group.length >= FILE_GROUP) await start();
      }
    }
    if (group.length) await start();
    return { done: Promise.all(pending).then(() => {}) };
  }

  /** A listing read ahead by `prefetch`, or read now. */
  private loadTree(id: TreeId): Promise<FsNode[]> {
    const ahead = this.trees.get(id);
    if (!ahead) return this.repo.loadTree(id);
    this.trees.delete(id);
    return ahead;
  }

  /**
   * Start reading the listings of `nodes`' subdirectories, which the walk
   * will need next: on a cold cache each is a small random read, and read
   * one after another they would leave the walk (and the workers behind it)
   * waiting on the disk. At most PREFETCH_TREES are held.
   */
  private prefetch(nodes: FsNode[]): void {
    for (const n of nodes) {
      if (this.trees.size >= PREFETCH_TREES) return;
      if (n.type !== "dir" || !n.subtree || this.trees.has(n.subtree)) continue;
      const p = this.repo.loadTree(n.subtree);
      p.catch(() => {}); // reported when the walk gets there
      this.trees.set(n.subtree, p);
    }
  }

  /**
   * Write the content of a group of created files. Their chunks are read
   * pack by pack with ranged reads and written by worker threads (see
   * `writeBlobs`); a chunk that cannot be read leaves its part of the file
   * zero-filled and is reported.
   */
  private async writeGroup(files: PendingFile[], index: Map<BlobId, IndexEntry>): Promise<void> {
    const tasks: WriteTask[] = [];
    for (const f of files) {
      let off = 0;
      for (const p of f.node.content ?? []) {
        if ("hole" in p) {
          off += p.hole;
          f.sparse = true;
          continue;
        }
        const e = index.get(p.id);
        if (!e) f.damaged.push(`chunk ${p.id} is not in the index`);
        else tasks.push({ file: f, fd: f.fd, pos: off, entry: e });
        off += p.len;
      }
      f.written = off;
    }
    if (tasks.length) {
      this.pool ??= new RestorePool(this.repo.key);
      await writeBlobs(this.repo, this.pool, tasks, (t, bytes, error) => {
        if (error) t.file.damaged.push(error.message);
        else this.result.bytes += bytes;
        this.progress();
      });
    }
    for (const f of files) {
      try {
        // Holes (and a hole at the end) are made by the size alone.
        if (f.sparse || f.written !== f.node.size) ftruncateSync(f.fd, f.node.size);
      } catch (e) {
        f.damaged.push((e as Error).message);
      } finally {
        closeSync(f.fd);
      }
      if (f.damaged.length) {
        this.error(f.path, `restored with damaged parts (zero-filled): ${f.damaged.join("; ")}`);
      }
      this.meta(f.dest, f.node, f.path, f.clean);
    }
  }

  /**
   * Create one node (recursively for directories). Metadata syscalls are
   * synchronous: restore performs several per object, and synchronous calls
   * cost far less than thread-pool round trips; only pack reads are async.
   */
  private async restoreNode(
    node: FsNode,
    dir: Buffer,
    prefix: string,
    parentMode: 1 | 2 = 1,
    fresh = false,
    index: Map<BlobId, IndexEntry> | null = null,
    /** Where a directory's completion goes; without it, it is awaited here. */
    pending: Promise<void>[] | null = null,
    /** `dir` is ACL-clean (see `restoreTree`). */
    clean = false,
  ): Promise<PendingFile | null> {
    const path = `${prefix}/${displayPath(node.name)}`;
    try {
      validateName(node.name);
    } catch (e) {
      this.error(path, `not restored: ${(e as Error).message}`);
      return null;
    }
    const sel = parentMode === 1 ? 1 : this.selected(path);
    if (sel === 0) return null;
    if (sel === 2 && node.type !== "dir") return null;
    const dest = Buffer.concat([dir, SLASH, node.name]);
    this.current = path;
    this.progress();
    try {
      if (node.type === "dir") {
        const created = makeDir(dest, path);
        const inner = clean && created;
        this.result.dirs++;
        const below = node.subtree
          ? (await this.restoreTree(node.subtree, dest, path, sel, created, inner)).done
          : Promise.resolve();
        const finished = below.then(() => this.meta(dest, node, path, inner));
        if (pending) pending.push(finished);
        else await finished;
        return null;
      }
      // In a directory we just created nothing can be in the way.
      if (!fresh) clearWay(dest);
      if (node.link) {
        const key = `${node.link.dev}:${node.link.ino}`;
        const first = this.links.get(key);
        if (first) {
          linkSync(first, dest);
          this.result.files++;
          return null;
        }
        this.links.set(key, dest);
      }
      if (node.type === "file") {
        const fd = openSync(dest, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
        this.result.files++;
        if (!index) {
          // A single file restored on its own (SNAPSHOT:/path/to/file).
          const ids = [...chunkIdsOf(node)];
          const own = ids.length ? await this.repo.lookup(ids) : new Map<BlobId, IndexEntry>();
          await this.writeGroup(
            [{ fd, node, dest, path, damaged: [], sparse: false, written: 0, clean }],
            own,
          );
          return null;
        }
        return { fd, node, dest, path, damaged: [], sparse: false, written: 0, clean };
      }
      if (node.type === "symlink") symlinkSync(node.target ?? Buffer.alloc(0), dest);
      else await createSpecial(dest, node);
      this.result.files++;
      // Symlinks carry no ACLs.
      this.meta(dest, node, path, clean || node.type === "symlink");
    } catch (e) {
      this.error(path, (e as Error).message);
    }
    return null;
  }

  private meta(dest: Buffer, node: FsNode, path: string, clean = false): void {
    try {
      applyMetadataSync(dest, node, { owner: this.owner, noInheritedAcl: clean });
    } catch (e) {
      this.error(path, `cannot set metadata: ${(e as Error).message}`);
    }
  }
}

async function ensureRealDir(p: Buffer, display: string): Promise<void> {
  await fsp.mkdir(p, { recursive: true });
  const st = await fsp.lstat(p);
  if (!st.isDirectory()) {
    throw new StrataError("UNSAFE_PATH", `restore target ${display} is not a directory`, {
      subject: display,
    });
  }
}

/**
 * Create a directory, or accept an existing real one; never a symlink.
 * Returns true when the directory was created (so it is known to be empty).
 */
function makeDir(p: Buffer, display: string): boolean {
  try {
    mkdirSync(p, 0o700);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  const st = lstatSync(p);
  if (st.isDirectory()) return false;
  unlinkSync(p);
  mkdirSync(p, 0o700);
  if (!lstatSync(p).isDirectory())
    throw new StrataError("UNSAFE_PATH", `${display} is not a directory`, { subject: display });
  return true;
}

/** Remove whatever is at `p` (without following symlinks) so a new node can be created. */
function clearWay(p: Buffer): void {
  const st = lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  if (st.isDirectory()) rmSync(p, { recursive: true, force: true });
  else unlinkSync(p);
}

export function restore(
  repo: Repository,
  snapshot: SnapshotRecord,
  opts: RestoreOptions,
): Promise<RestoreResult> {
  return new Restorer(repo, opts).run(snapshot);
}
