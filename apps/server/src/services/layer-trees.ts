/**
 * Tree work for layers (docs/design/layers.md), on the repository: filter a
 * snapshot into a base layer, diff two snapshots into an app layer, compose
 * layers into an image, list what an image no longer owns, compare an image
 * with a snapshot. Every operation reads one directory at a time (memory
 * holds the directories on the current path, never a whole tree), skips
 * subtrees whose ids are equal, and saves new trees bottom-up with
 * `saveTree`, reusing the id of every subtree it did not change.
 *
 * Paths are absolute, '/'-separated byte-path strings (core
 * `bytePathString`: UTF-8 where the names are, each other byte escaped, so
 * the exact bytes come back with `bytePathOf`); the rule matchers take them
 * as strings. The root is "/".
 */
import {
  type BlobId,
  bytePathOf,
  bytePathString,
  displayBytePath,
  encodeTree,
  type FsNode,
  StrataError,
  type TreeId,
} from "@strata/core";
import type { Repository } from "@strata/repo";
import { Lru } from "./lru.js";

/** `dir` + `/` + name; dir "/" is the root. */
export function childPath(dir: string, name: Buffer): string {
  return `${dir === "/" ? "" : dir}/${bytePathString(name)}`;
}

/** An absolute byte-path string as name segments (the exact bytes). */
export function pathSegments(p: string): Buffer[] {
  return p
    .split("/")
    .filter((s) => s !== "" && s !== ".")
    .map((s) => bytePathOf(s));
}

/** A node's encoding without its name and hard-link identity (inode numbers differ between machines). */
function nodeKey(n: FsNode, ignoreMtime = false): Buffer {
  const { link: _link, ...rest } = n;
  return encodeTree([{ ...rest, name: Buffer.from("x"), ...(ignoreMtime ? { mtimeNs: 0n } : {}) }]);
}

/** Same file, symlink or device (content, metadata), ignoring hard-link identity. */
export function sameNode(a: FsNode, b: FsNode): boolean {
  return a.type === b.type && nodeKey(a).equals(nodeKey(b));
}

/** Same directory metadata (mode, owner, xattrs), ignoring its entries and its mtime. */
function sameDirMeta(a: FsNode, b: FsNode): boolean {
  const none = "0".repeat(64) as TreeId;
  return nodeKey({ ...a, subtree: none }, true).equals(nodeKey({ ...b, subtree: none }, true));
}

/** First `max` items (for display: a name that is not UTF-8 with its bytes as \xNN) plus a count. */
export class Sample {
  readonly items: string[] = [];
  count = 0;
  constructor(private readonly max = 100) {}
  add(p: string): void {
    this.count++;
    if (this.items.length < this.max) this.items.push(displayBytePath(p));
  }
}

export interface TreeStats {
  files: number;
  bytes: number;
}

export interface CaptureDiff {
  /** The sparse layer tree: changed and added entries and the directories on their way. */
  tree: TreeId;
  added: Sample;
  changed: Sample;
  /** Every path present before and gone after (the manifest's `removed`). */
  removed: string[];
  /** Every added, changed and removed path, for the triggers. */
  touched: string[];
  /** Regular files in the layer tree, and their bytes. */
  stats: TreeStats;
}

/** Which paths an operation leaves out, and where it may skip a directory whole. */
export interface PathFilter {
  /** Leave this entry out (with everything below it). */
  skip(path: string, node: FsNode): boolean;
  /** Something below this directory may be skipped: descend into it (false: keep it whole). */
  mayMatchBelow(dir: string): boolean;
}

export class LayerTrees {
  private readonly trees = new Lru<FsNode[]>(256);
  private readonly statsCache = new Lru<TreeStats>(4096);

  constructor(private readonly repo: Repository) {}

  async load(id: TreeId): Promise<FsNode[]> {
    const hit = this.trees.get(id);
    if (hit) return hit;
    // A tree saved a moment ago may still sit in the open pack: write it out first.
    if (this.repo.isPending(id as string as BlobId)) await this.repo.flush();
    const nodes = await this.repo.loadTree(id);
    this.trees.set(id, nodes);
    return nodes;
  }

  private async save(nodes: FsNode[]): Promise<TreeId> {
    const id = await this.repo.saveTree(nodes);
    this.trees.set(id, nodes);
    return id;
  }

  /** The node at `path` (no symlinks followed), or null; the root itself is not a node. */
  async lookup(root: TreeId, path: string): Promise<FsNode | null> {
    const segs = pathSegments(path);
    let tree: TreeId | undefined = root;
    let node: FsNode | null = null;
    for (const seg of segs) {
      if (!tree) return null;
      node = (await this.load(tree)).find((n) => n.name.equals(seg)) ?? null;
      if (!node) return null;
      tree = node.type === "dir" ? node.subtree : undefined;
    }
    return node;
  }

  /**
   * The content of the regular file at `path`, following symlinks (at most
   * 8, relative ones from their directory) — /etc/os-release is a symlink
   * on Debian. Null when there is no such file. TOO_LARGE past `maxBytes`.
   */
  async readFile(root: TreeId, path: string, maxBytes = 64 * 1024 * 1024): Promise<Buffer | null> {
    let p = path;
    for (let hops = 0; hops < 8; hops++) {
      const n = await this.lookup(root, p);
      if (!n) return null;
      if (n.type === "symlink" && n.target) {
        const t = n.target.toString("utf8");
        const dir = p.slice(0, p.lastIndexOf("/")) || "/";
        p = normalize(t.startsWith("/") ? t : `${dir}/${t}`);
        continue;
      }
      if (n.type !== "file") return null;
      if (n.size > maxBytes)
        throw new StrataError("TOO_LARGE", `${path} is ${n.size} bytes; at most ${maxBytes} are read`, {
          subject: path,
        });
      const parts: Buffer[] = [];
      for (const piece of n.content ?? []) {
        parts.push("id" in piece ? await this.repo.loadBlob(piece.id) : Buffer.alloc(piece.hole));
      }
      return Buffer.concat(parts);
    }
    return null;
  }

  /** Regular files below `tree` and their bytes (cached by subtree id: snapshots share most of them). */
  async stats(tree: TreeId): Promise<TreeStats> {
    const hit = this.statsCache.get(tree);
    if (hit) return hit;
    const s = { files: 0, bytes: 0 };
    for (const n of await this.load(tree)) {
      if (n.type === "file") {
        s.files++;
        s.bytes += n.size;
      } else if (n.type === "dir" && n.subtree) {
        const sub = await this.stats(n.subtree);
        s.files += sub.files;
        s.bytes += sub.bytes;
      }
    }
    this.statsCache.set(tree, s);
    return s;
  }

  /**
   * `tree` without the entries `f.skip`s (and what is below them). A
   * directory is only read when `f.mayMatchBelow` says something below it
   * may be skipped; every other subtree keeps its id.
   */
  async filter(tree: TreeId, f: PathFilter, dir = "/"): Promise<TreeId> {
    const nodes = await this.load(tree);
    const out: FsNode[] = [];
    let changed = false;
    for (const n of nodes) {
      const p = childPath(dir, n.name);
      if (f.skip(p, n)) {
        changed = true;
        continue;
      }
      if (n.type === "dir" && n.subtree && f.mayMatchBelow(p)) {
        const sub = await this.filter(n.subtree, f, p);
        if (sub !== n.subtree) {
          out.push({ ...n, subtree: sub });
          changed = true;
          continue;
        }
      }
      out.push(n);
    }
    return changed ? this.save(out) : tree;
  }

  /**
   * What an install changed between `pre` and `post` (layers.md, "App
   * layer"), outside what `ignore` skips: the sparse layer tree (each added
   * or changed entry with the post snapshot's node, each directory on the
   * way with the post node and only the entries below it that changed),
   * the paths added, changed and removed. Subtrees with equal ids are not
   * read.
   */
  async diff(pre: TreeId, post: TreeId, ignore: PathFilter): Promise<CaptureDiff> {
    const d: CaptureDiff = {
      tree: "" as TreeId,
      added: new Sample(),
      changed: new Sample(),
      removed: [],
      touched: [],
      stats: { files: 0, bytes: 0 },
    };
    d.tree = (await this.diffDir(pre, post, "/", ignore, d)) ?? (await this.save([]));
    return d;
  }

  /** The sparse tree of `dir`'s changes, or null when nothing below it changed. */
  private async diffDir(
    pre: TreeId | null,
    post: TreeId,
    dir: string,
    ignore: PathFilter,
    d: CaptureDiff,
  ): Promise<TreeId | null> {
    if (pre === post) return null;
    const before = pre ? await this.load(pre) : [];
    const after = await this.load(post);
    const out: FsNode[] = [];
    let i = 0;
    let j = 0;
    while (i < before.length || j < after.length) {
      const a = before[i];
      const b = after[j];
      const c = a && b ? Buffer.compare(a.name, b.name) : a ? -1 : 1;
      if (c < 0) {
        i++;
        const p = childPath(dir, a!.name);
        if (!ignore.skip(p, a!)) await this.listRemoved(a!, p, ignore, d);
        continue;
      }
      j++;
      const old = c === 0 ? a! : null;
      if (old) i++;
      const p = childPath(dir, b!.name);
      if (ignore.skip(p, b!)) continue;
      if (b!.type === "dir") {
        const wasDir = old?.type === "dir";
        if (!old) {
          d.added.add(p);
          d.touched.push(p);
        } else if (!wasDir || !sameDirMeta(old, b!)) {
          d.changed.add(p);
          d.touched.push(p);
        }
        if (wasDir && old.subtree === b!.subtree && sameDirMeta(old, b!)) continue;
        const sub = b!.subtree
          ? await this.diffDir(wasDir ? (old.subtree ?? null) : null, b!.subtree, p, ignore, d)
          : null;
        const metaChanged = !wasDir || !sameDirMeta(old, b!);
        if (sub === null && !metaChanged) continue;
        out.push({ ...b!, subtree: sub ?? (await this.save([])) });
        continue;
      }
      if (old && sameNode(old, b!)) continue;
      if (old?.type === "dir") await this.listRemoved(old, p, ignore, d, false);
      if (old) d.changed.add(p);
      else d.added.add(p);
      d.touched.push(p);
      if (b!.type === "file") {
        d.stats.files++;
        d.stats.bytes += b!.size;
      }
      out.push(b!);
    }
    return out.length ? this.save(out) : null;
  }

  /** `n` at `p` is gone: it and (for a directory) everything below it, outside what `ignore` skips. */
  private async listRemoved(
    n: FsNode,
    p: string,
    ignore: PathFilter,
    d: CaptureDiff,
    self = true,
  ): Promise<void> {
    if (self) {
      d.removed.push(p);
      d.touched.push(p);
    }
    if (n.type !== "dir" || !n.subtree) return;
    for (const c of await this.load(n.subtree)) {
      const cp = childPath(p, c.name);
      if (!ignore.skip(cp, c)) await this.listRemoved(c, cp, ignore, d);
    }
  }

  /** `tree` without the entries at `paths` (absent paths are ignored). */
  async remove(tree: TreeId, paths: readonly string[]): Promise<TreeId> {
    const trie = new Trie();
    for (const p of paths) trie.add(pathSegments(p));
    return this.removeDir(tree, trie);
  }

  private async removeDir(tree: TreeId, t: Trie): Promise<TreeId> {
    const nodes = await this.load(tree);
    const out: FsNode[] = [];
    let changed = false;
    for (const n of nodes) {
      const child = t.children.get(n.name.toString("latin1"));
      if (!child) {
        out.push(n);
        continue;
      }
      if (child.terminal) {
        changed = true;
        continue;
      }
      if (n.type === "dir" && n.subtree && child.children.size) {
        const sub = await this.removeDir(n.subtree, child);
        if (sub !== n.subtree) {
          out.push({ ...n, subtree: sub });
          changed = true;
          continue;
        }
      }
      out.push(n);
    }
    return changed ? this.save(out) : tree;
  }

  /**
   * `upper` laid over `lower`: path by path the upper entry wins; where both
   * have a directory, their entries are merged the same way and the
   * directory keeps `lower`'s metadata (the first layer that has it). A
   * directory only one side has keeps its subtree id.
   */
  async overlay(lower: TreeId, upper: TreeId): Promise<TreeId> {
    if (lower === upper) return lower;
    const a = await this.load(lower);
    const b = await this.load(upper);
    if (!a.length) return upper;
    if (!b.length) return lower;
    const out: FsNode[] = [];
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      const x = a[i];
      const y = b[j];
      const c = x && y ? Buffer.compare(x.name, y.name) : x ? -1 : 1;
      if (c < 0) {
        out.push(x!);
        i++;
      } else if (c > 0) {
        out.push(y!);
        j++;
      } else {
        i++;
        j++;
        if (x!.type === "dir" && y!.type === "dir" && x!.subtree && y!.subtree)
          out.push({ ...x!, subtree: await this.overlay(x!.subtree, y!.subtree) });
        else out.push(y!);
      }
    }
    return this.save(out);
  }

  /**
   * Every path below `a` that `b` lacks, parents before children (a
   * directory only `a` has is listed with everything below it). Subtrees
   * with equal ids are not read.
   */
  async onlyIn(a: TreeId, b: TreeId | null, dir = "/", out: string[] = []): Promise<string[]> {
    if (a === b) return out;
    const x = await this.load(a);
    const y = b ? await this.load(b) : [];
    let j = 0;
    for (const n of x) {
      while (j < y.length && Buffer.compare(y[j]!.name, n.name) < 0) j++;
      const other = j < y.length && y[j]!.name.equals(n.name) ? y[j]! : null;
      const p = childPath(dir, n.name);
      if (!other) out.push(p);
      if (n.type === "dir" && n.subtree)
        await this.onlyIn(n.subtree, other?.type === "dir" ? (other.subtree ?? null) : null, p, out);
    }
    return out;
  }

  /**
   * Walk `image` against `current` (an endpoint's snapshot) where they
   * differ: `visit` sees each image entry with the snapshot's entry at the
   * same path (or null), `onlyCurrent` each snapshot entry the image lacks
   * in a directory both have. Directories with equal subtree ids are
   * skipped; `skipBelow` prunes the walk.
   */
  async compare(
    image: TreeId,
    current: TreeId | null,
    o: {
      visit: (path: string, img: FsNode, cur: FsNode | null) => void;
      onlyCurrent?: (path: string, cur: FsNode) => void;
      skipBelow?: (dir: string) => boolean;
    },
    dir = "/",
  ): Promise<void> {
    if (image === current) return;
    const x = await this.load(image);
    const y = current ? await this.load(current) : [];
    let j = 0;
    for (const n of x) {
      while (j < y.length && Buffer.compare(y[j]!.name, n.name) < 0) {
        o.onlyCurrent?.(childPath(dir, y[j]!.name), y[j]!);
        j++;
      }
      const other = j < y.length && y[j]!.name.equals(n.name) ? y[j]! : null;
      if (other) j++;
      const p = childPath(dir, n.name);
      o.visit(p, n, other);
      if (n.type === "dir" && n.subtree && !o.skipBelow?.(p))
        await this.compare(n.subtree, other?.type === "dir" ? (other.subtree ?? null) : null, o, p);
    }
    for (; j < y.length; j++) o.onlyCurrent?.(childPath(dir, y[j]!.name), y[j]!);
  }
}

class Trie {
  terminal = false;
  readonly children = new Map<string, Trie>();
  add(segs: Buffer[]): void {
    let t: Trie = this;
    for (const s of segs) {
      const k = s.toString("latin1");
      let c = t.children.get(k);
      if (!c) {
        c = new Trie();
        t.children.set(k, c);
      }
      t = c;
    }
    if (t !== this) t.terminal = true;
  }
}

/** `a/./b/../c` → `/a/c` (within the tree: `..` never climbs above the root). */
function normalize(p: string): string {
  const out: string[] = [];
  for (const s of p.split("/")) {
    if (s === "" || s === ".") continue;
    if (s === "..") out.pop();
    else out.push(s);
  }
  return `/${out.join("/")}`;
}
