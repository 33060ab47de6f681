import {
  type BigIntStats,
  closeSync,
  constants,
  ftruncateSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import type { BlobId, CompiledPolicy, FsNode } from "@strata/core";
import { StrataError } from "@strata/core";
import {
  type ApplyOptions,
  applyMetadataSync,
  createSpecial,
  displayPath,
  nodeFromStat,
  nodeTypeOf,
  onlyTimesNeeded,
  readXattrs,
  validateName,
} from "@strata/fs";
import type { TreeAhead } from "./ahead.js";
import { failsBatch, type Made, stagingFailure } from "./creator.js";
import type { Fetcher, PendingFile, SyncQueue } from "./fetcher.js";
import { type JournalWriter, journalNode, WORKDIR_PREFIX, type Workdirs } from "./journal.js";
import type { SeedReader } from "./seed.js";
import type { RestoreSource, TreeRef } from "./source.js";
import type { LayerRestoreOptions, RestoreKind, RestoreStep } from "./types.js";

/*
 * Plan and stage (docs/design/restore.md, "Phases" 1): walk the snapshot's
 * trees and the root side by side, depth first in name order, and for each
 * entry in scope decide unchanged / meta / put / del. New versions are
 * built in the stage; operations stream to the journal. Nothing under the
 * root is modified here (a hard link from an unchanged root file into the
 * stage only adds a name to its inode).
 */

/** One entry of a snapshot directory listing. */
export interface SnapItem {
  node: FsNode;
  subtree?: TreeRef;
  /** The tree that lists this entry: chunk requests for a file name it. */
  owner: TreeRef;
  /** Absolute path in the snapshot (bytes): what the policy classifies. */
  snapPath: Buffer;
  /** Content written as is instead of chunks (recover's /etc/machine-id). */
  literal?: Buffer;
}

/** Which entries a batch handles: all of them, or a streaming part. */
export type Selection = "in" | "through" | "out";
export type Selector = (snapPath: Buffer) => Selection;

export interface RunCounters {
  totalFiles: number;
  totalBytes: number;
  restoredFiles: number;
  restoredBytes: number;
  seededBytes: number;
  files: number;
  unchangedFiles: number;
  /** Files found unchanged on the file cache's word (RestoreOptions.vouch), not read. */
  vouchedFiles: number;
  putOps: number;
  deleted: number;
  metaOps: number;
  bytes: number;
  current: string;
}

/** Kind `layer`'s options, checked and indexed once per run (layerPlan). */
export interface LayerPlan {
  removable: LayerRestoreOptions["removable"];
  doNotOverride: LayerRestoreOptions["doNotOverride"];
  enforceRemove: boolean;
  /** Literal files by their directory's absolute path (latin1). */
  literals: Map<string, { name: Buffer; content: Buffer }[]>;
  /** Absolute paths (latin1) of the literal files. */
  literalPaths: Set<string>;
  /** Absolute paths (latin1) of every directory above a literal file: never deleted, descended. */
  literalDirs: Set<string>;
  /** The time given to a literal file that takes neither the image's nor the root's. */
  now: bigint;
  /** Directories (latin1) whose literal files planning has met. */
  seen: Set<string>;
}

/** Check kind `layer`'s options (literal paths are plain absolute paths) and index the literals. */
export function layerPlan(o: LayerRestoreOptions, now: bigint): LayerPlan {
  const literals = new Map<string, { name: Buffer; content: Buffer }[]>();
  const literalPaths = new Set<string>();
  const literalDirs = new Set<string>();
  for (const [path, content] of o.literals ?? []) {
    const segs = path.split("/");
    const bad = (why: string) =>
      new StrataError("INVALID_ARGUMENT", `literal path ${JSON.stringify(path)} ${why}`, {
        subject: path,
        hint: "give absolute paths of the endpoint, without '.', '..' or empty segments",
      });
    if (segs[0] !== "" || segs.length < 2) throw bad("is not absolute");
    const names = segs.slice(1).map((seg) => Buffer.from(seg, "latin1"));
    for (const n of names) {
      try {
        validateName(n);
      } catch (e) {
        throw bad(`has a bad segment: ${(e as Error).message}`);
      }
    }
    if (!Buffer.isBuffer(content)) throw bad("has no Buffer content");
    const parent = segs.length === 2 ? "/" : segs.slice(0, -1).join("/");
    const list = literals.get(parent) ?? [];
    list.push({ name: names[names.length - 1]!, content });
    literals.set(parent, list);
    literalPaths.add(path);
    for (let i = 1; i < segs.length; i++) literalDirs.add(i === 1 ? "/" : segs.slice(0, i).join("/"));
  }
  for (const p of literalPaths) {
    if (literalDirs.has(p)) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `literal path ${JSON.stringify(p)} is also the directory of another`,
        {
          subject: p,
        },
      );
    }
  }
  return {
    removable: o.removable,
    doNotOverride: o.doNotOverride,
    enforceRemove: !!o.enforceRemove,
    literals,
    literalPaths,
    literalDirs,
    now,
    seen: new Set(),
  };
}

/** What stays the same across the batches of one run. */
export interface PlanEnv {
  source: RestoreSource;
  kind: RestoreKind;
  policy: CompiledPolicy | undefined;
  /** Kind `layer` only. */
  layer: LayerPlan | undefined;
  root: Buffer;
  /** Set owners (only root may give files away). */
  owner: boolean;
  trustMtime: boolean;
  /** RestoreOptions.vouch. */
  vouch: ((abs: Buffer, st: BigIntStats, node: FsNode) => boolean) | undefined;
  /** Stage a directory absent from the root whole (false when streaming: batches stay bounded). */
  wholeDirs: boolean;
  seeds: SeedReader;
  /** Listings read ahead of the walk. */
  trees: TreeAhead;
  work: Workdirs;
  /** Never touched: the state directory, our workdirs. */
  protectedPaths: Buffer[];
  /** Hard-link groups: snapshot inode key → where its first name went. */
  links: Map<string, { rel: Buffer; stage: Buffer | null; batch: number }>;
  counters: RunCounters;
  /** Count totals (files, bytes) while planning (false when a separate count did). */
  countTotals: boolean;
  /** This process's user and umask, read once: a file created in the stage is theirs. */
  creator?: { uid: number; umask: number };
  error(path: string, message: string): void;
  step(phase: RestoreStep["phase"]): void;
  progress(): void;
  signal: AbortSignal | undefined;
}

export interface BatchState {
  n: number;
  journal: JournalWriter;
  fetcher: Fetcher;
  syncs: SyncQueue;
  /** Stop at an entry boundary once this much is staged (streaming). */
  budget: { files: number; bytes: number } | null;
  stagedFiles: number;
  stagedBytes: number;
  /** Files and bytes that are in their final place once this batch is applied. */
  putFiles: number;
  putBytes: number;
  /** Stage entries named so far. */
  nextStage: number;
  /** Streaming: user-area entries met by a machine pass, handled later (relative paths). */
  deferred: Buffer[][] | null;
  /** The last entry completed (relative components): where a stopped batch resumes. */
  lastDone: Buffer[];
  /**
   * Work still running on libuv's threads (files being created, and the metadata of staged
   * directories that waits for them); none of these promises rejects. All settle before the commit.
   */
  settling: Set<Promise<void>>;
}

interface DirCtx {
  /** Where the directory is (or will be) in the root. */
  abs: Buffer;
  comps: Buffer[];
  /** A real directory in the root now (its listing is merged). */
  exists: boolean;
  /** Device of the directory (its parent's when it does not exist yet). */
  dev: number;
  /** Inside a directory staged whole: its stage path (children are created there, no operations). */
  stage: Buffer | null;
  snapPath: Buffer;
  cursor: Buffer[] | null;
  /** Creations inside this staged directory still running (its metadata waits for them). */
  settle?: Promise<void>[];
  /** Its own creation, queued off the walk (inside a staged directory): entries go in after it. */
  made?: Made;
}

interface Outcome {
  /** An entry directly inside the directory was renamed in or out (its mtime changes). */
  dirty: boolean;
  stopped: boolean;
}
const CLEAN: Outcome = { dirty: false, stopped: false };
const DIRTY: Outcome = { dirty: true, stopped: false };

/** `p` must settle before the metadata of staged directory `d` is set (nothing for a root directory). */
function settleIn(d: DirCtx, p: Promise<void>): void {
  if (!d.stage) return;
  if (d.settle) d.settle.push(p);
  else d.settle = [p];
}

const SLASH = Buffer.from("/");
const join = (a: Buffer, b: Buffer): Buffer =>
  a.length === 1 && a[0] === 0x2f ? Buffer.concat([a, b]) : Buffer.concat([a, SLASH, b]);
const relOf = (comps: Buffer[]): Buffer => Buffer.concat(comps.flatMap((c, i) => (i ? [SLASH, c] : [c])));
const WORKDIR = Buffer.from(WORKDIR_PREFIX);
const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;

/** Extended attributes a process without privileges may set on its own files. */
export function userSettable(name: string): boolean {
  return name.startsWith("user.") || name.startsWith("system.posix_acl_");
}

/** Paths `recover` never writes (restore.md, "Identity files"). */
export function isIdentityPath(snapPath: Buffer): boolean {
  const p = snapPath.toString("latin1");
  return p === "/etc/machine-id" || p === "/var/lib/dbus/machine-id" || p.startsWith("/etc/ssh/ssh_host_");
}

/**
 * Whether a path of this class is this kind's to change: excluded paths
 * never are, the user area not for `system` and `layer`, identity files not
 * for `recover` and `layer`, do-not-override paths not for `layer`.
 * "defer": a user-area path met by a streaming machine pass.
 */
export function classScope(
  env: Pick<PlanEnv, "policy" | "kind" | "layer">,
  snapPath: Buffer,
  literal: boolean,
  deferring: boolean,
): boolean | "defer" {
  if (env.policy) {
    const cls = env.policy.classify(snapPath);
    if (cls === "excluded") return false;
    if (cls === "user" && (env.kind === "system" || env.kind === "layer")) return false;
    if (cls === "user" && deferring) return "defer";
  }
  if (env.kind === "recover" && !literal && isIdentityPath(snapPath)) return false;
  if (env.kind === "layer" && (isIdentityPath(snapPath) || env.layer?.doNotOverride?.(snapPath)))
    return false;
  return true;
}

export class Planner {
  constructor(
    private readonly env: PlanEnv,
    private readonly b: BatchState,
    private readonly select: Selector,
  ) {}

  /** Load a snapshot directory listing, dropping (and reporting) names no filesystem can hold. */
  async listing(ref: TreeRef, snapPath: Buffer): Promise<SnapItem[]> {
    const t = await this.env.trees.load(ref);
    const out: SnapItem[] = [];
    let prev: Buffer | null = null;
    for (let i = 0; i < t.nodes.length; i++) {
      const node = t.nodes[i]!;
      if (prev && Buffer.compare(prev, node.name) >= 0) {
        throw new StrataError("DATA_CORRUPT", `the listing of ${displayPath(snapPath)} is not sorted`, {
          subject: displayPath(snapPath),
        });
      }
      prev = node.name;
      try {
        validateName(node.name);
      } catch (e) {
        this.env.error(displayPath(snapPath), `entry not restored: ${(e as Error).message}`);
        continue;
      }
      const sub = t.subtrees[i];
      out.push({ node, owner: ref, snapPath: join(snapPath, node.name), ...(sub ? { subtree: sub } : {}) });
    }
    // The subdirectories the walk will descend into, read ahead (`dir` forgets the unused ones).
    this.env.trees.ahead(
      out
        .filter(
          (it) =>
            it.subtree &&
            this.select(it.snapPath) !== "out" &&
            classScope(this.env, it.snapPath, false, this.b.deferred !== null) === true,
        )
        .map((it) => it.subtree!),
    );
    return out;
  }

  /** The root directory's own metadata (when the source knows it): after everything below. */
  rootMeta(n: FsNode, dirty: boolean): void {
    const st = lstatSync(this.env.root, { bigint: true });
    if (dirty || !this.sameMeta(this.env.root, st, n)) this.meta([], n);
  }

  /**
   * layer, after planning: literal files in scope whose directory is neither
   * in the image nor in the root were not written; say so.
   */
  reportUnseenLiterals(): void {
    const l = this.env.layer;
    if (!l) return;
    for (const [dir, list] of l.literals) {
      if (l.seen.has(dir)) continue;
      for (const lit of list) {
        const p = join(Buffer.from(dir, "latin1"), lit.name);
        if (classScope(this.env, p, true, false) !== true) continue;
        this.env.error(
          displayPath(p),
          `not written: its directory ${dir} is neither in the image nor on the endpoint`,
        );
      }
    }
  }

  /** Plan the root directory. */
  async top(items: SnapItem[], dev: number, cursor: Buffer[] | null): Promise<Outcome> {
    return this.dir(
      { abs: this.env.root, comps: [], exists: true, dev, stage: null, snapPath: SLASH, cursor },
      items,
    );
  }

  private full(): boolean {
    const bud = this.b.budget;
    if (!bud) return false;
    const staged = this.b.stagedFiles + this.b.journal.count;
    return staged > 0 && (staged >= bud.files || this.b.stagedBytes >= bud.bytes);
  }

  private async dir(d: DirCtx, items: SnapItem[]): Promise<Outcome> {
    try {
      return await this.dirEntries(d, items);
    } finally {
      this.env.trees.forget(items.flatMap((it) => (it.subtree ? [it.subtree] : [])));
    }
  }

  private async dirEntries(d: DirCtx, items: SnapItem[]): Promise<Outcome> {
    const env = this.env;
    let names: Buffer[] = [];
    if (d.exists) {
      try {
        names = readdirSync(d.abs, { encoding: "buffer" });
      } catch (e) {
        throw new StrataError("IO_ERROR", `cannot list ${displayPath(d.abs)}: ${(e as Error).message}`, {
          subject: displayPath(d.abs),
        });
      }
      names.sort(Buffer.compare);
    }
    if (env.kind === "recover" && d.snapPath.toString("latin1") === "/etc") {
      items = this.withMachineId(items, names, d);
    }
    const literals = env.layer?.literals.get(d.snapPath.toString("latin1"));
    if (literals) items = this.withLiterals(items, literals, d);
    let dirty = false;
    let cursor = d.cursor;
    let i = 0;
    let j = 0;
    while (i < items.length || j < names.length) {
      env.signal?.throwIfAborted();
      const item = items[i];
      const rname = names[j];
      const c = item && rname ? Buffer.compare(item.node.name, rname) : item ? -1 : 1;
      const name = c <= 0 ? item!.node.name : rname!;
      const snapItem = c <= 0 ? item : undefined;
      const inRoot = c >= 0;
      if (c <= 0) i++;
      if (c >= 0) j++;
      let childCursor: Buffer[] | null = null;
      if (cursor) {
        const k = Buffer.compare(name, cursor[0]!);
        if (k < 0 || (k === 0 && cursor.length === 1)) continue;
        if (k === 0) childCursor = cursor.slice(1);
        cursor = null;
      }
      if (!childCursor && this.full()) return { dirty, stopped: true };
      const out = await this.entry(d, name, snapItem, inRoot, childCursor);
      dirty ||= out.dirty;
      if (out.stopped) return { dirty, stopped: true };
      this.b.lastDone = [...d.comps, name];
    }
    return { dirty, stopped: false };
  }

  /** recover: a device without /etc/machine-id gets "uninitialized\n" (first boot makes a new id). */
  private withMachineId(items: SnapItem[], names: Buffer[], d: DirCtx): SnapItem[] {
    const mid = Buffer.from("machine-id");
    if (names.some((n) => n.equals(mid))) return items;
    const literal = Buffer.from("uninitialized\n");
    const node: FsNode = {
      name: mid,
      type: "file",
      mode: 0o444,
      uid: 0,
      gid: 0,
      mtimeNs: BigInt(Date.now()) * 1_000_000n,
      size: literal.length,
    };
    const synth: SnapItem = {
      node,
      owner: this.env.source.snapshot.root,
      snapPath: join(d.snapPath, mid),
      literal,
    };
    const rest = items.filter((it) => !it.node.name.equals(mid));
    const at = rest.findIndex((it) => Buffer.compare(it.node.name, mid) > 0);
    rest.splice(at < 0 ? rest.length : at, 0, synth);
    return rest;
  }

  /**
   * layer: the agent's literal files of this directory replace (or join)
   * the image's entries. Metadata: the image's entry's when it has a file
   * there, else the root file's (its time kept when the content is the
   * same, so an unchanged file stays unchanged), else 0644 root:root.
   */
  private withLiterals(
    items: SnapItem[],
    literals: { name: Buffer; content: Buffer }[],
    d: DirCtx,
  ): SnapItem[] {
    this.env.layer!.seen.add(d.snapPath.toString("latin1"));
    const out = [...items];
    for (const lit of literals) {
      const at = out.findIndex((it) => it.node.name.equals(lit.name));
      const img = at >= 0 ? out[at] : undefined;
      let node: FsNode;
      if (img?.node.type === "file") {
        const { content: _content, link: _link, ...rest } = img.node;
        node = { ...rest, size: lit.content.length };
      } else {
        const abs = join(d.abs, lit.name);
        const st = d.exists && !d.stage ? lstatSync(abs, { bigint: true, throwIfNoEntry: false }) : undefined;
        if (st?.isFile()) {
          const { link: _link, ...rest } = nodeFromStat(abs, lit.name, st);
          let xattrs: FsNode["xattrs"];
          try {
            xattrs = readXattrs(abs);
          } catch {
            xattrs = [];
          }
          node = {
            ...rest,
            size: lit.content.length,
            mtimeNs: sameBytes(abs, st, lit.content) ? st.mtimeNs : this.env.layer!.now,
            ...(xattrs.length ? { xattrs } : {}),
          };
        } else {
          node = {
            name: lit.name,
            type: "file",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtimeNs: this.env.layer!.now,
            size: lit.content.length,
          };
        }
      }
      const synth: SnapItem = {
        node,
        owner: img?.owner ?? this.env.source.snapshot.root,
        snapPath: join(d.snapPath, lit.name),
        literal: lit.content,
      };
      if (img) out[at] = synth;
      else {
        const k = out.findIndex((it) => Buffer.compare(it.node.name, lit.name) > 0);
        out.splice(k < 0 ? out.length : k, 0, synth);
      }
    }
    return out;
  }

  private isProtected(abs: Buffer): boolean {
    return this.env.protectedPaths.some((p) => p.equals(abs));
  }

  private inClassScope(snapPath: Buffer, literal: boolean): boolean | "defer" {
    return classScope(this.env, snapPath, literal, this.b.deferred !== null);
  }

  private async entry(
    d: DirCtx,
    name: Buffer,
    item: SnapItem | undefined,
    inRoot: boolean,
    cursor: Buffer[] | null,
  ): Promise<Outcome> {
    const env = this.env;
    const abs = join(d.abs, name);
    if (this.isProtected(abs)) return CLEAN;
    if (!item && name.subarray(0, WORKDIR.length).equals(WORKDIR)) return CLEAN;
    const snapPath = item?.snapPath ?? join(d.snapPath, name);
    const sel = this.select(snapPath);
    if (sel === "out") return CLEAN;
    const scope = this.inClassScope(snapPath, item?.literal !== undefined);
    if (scope === false) return CLEAN;
    if (scope === "defer") {
      if (sel === "in") this.b.deferred!.push([...d.comps, name]);
      return CLEAN;
    }
    const comps = [...d.comps, name];
    const shown = displayPath(snapPath);
    env.counters.current = shown;
    let r: BigIntStats | undefined;
    if (inRoot) {
      try {
        r = lstatSync(abs, { bigint: true, throwIfNoEntry: false });
      } catch (e) {
        env.error(shown, `cannot stat: ${(e as Error).message}`);
        return CLEAN;
      }
    }
    const n = item?.node;
    if (!n) {
      if (!r || sel !== "in" || env.kind === "files") return CLEAN;
      if (env.kind === "layer") return this.layerAbsent(d, abs, comps, r, snapPath, cursor);
      return this.remove(d, abs, comps, r, snapPath);
    }
    if (n.type === "dir" ? false : sel !== "in") return CLEAN;
    if (n.type !== "dir" && env.countTotals) {
      env.counters.totalFiles++;
      env.counters.totalBytes += n.type === "file" ? n.size : 0;
    }
    if (n.type !== "dir") env.counters.files++;
    env.progress();
    const rtype = r ? nodeTypeOf(Number(r.mode)) : undefined;
    if (!r || d.stage) return this.create(d, item!, comps, undefined);
    if (rtype !== n.type) {
      if (rtype === "dir") {
        if (Number(r.dev) !== d.dev) {
          env.error(shown, "not restored: a mount point is in the way");
          return CLEAN;
        }
        if (env.kind === "files") {
          env.error(shown, "not restored: a directory is in the way (files never deletes)");
          return CLEAN;
        }
        if (!(await this.replaceable(abs, snapPath, Number(r.dev)))) {
          env.error(
            shown,
            "not restored: the directory in its place holds paths this restore must not touch",
          );
          return CLEAN;
        }
      }
      return this.create(d, item!, comps, undefined);
    }
    switch (n.type) {
      case "dir": {
        const dev = Number(r.dev);
        const sub = item!.subtree ? await this.listing(item!.subtree, snapPath) : [];
        const out = await this.dir({ abs, comps, exists: true, dev, stage: null, snapPath, cursor }, sub);
        if (out.dirty || !this.sameMeta(abs, r, n)) this.meta(comps, n);
        return { dirty: false, stopped: out.stopped };
      }
      case "file":
        return this.file(d, item!, comps, abs, r);
      case "symlink": {
        let target: Buffer | null = null;
        try {
          target = readlinkSync(abs, { encoding: "buffer" });
        } catch {
          target = null;
        }
        if (!target?.equals(n.target ?? Buffer.alloc(0))) return this.create(d, item!, comps, undefined);
        return this.metaOrUnchanged(abs, r, n, comps);
      }
      default: {
        const sameDev =
          n.type !== "chardev" && n.type !== "blockdev" ? true : Number(r.rdev) === (n.rdev ?? 0);
        if (!sameDev) return this.create(d, item!, comps, undefined);
        return this.metaOrUnchanged(abs, r, n, comps);
      }
    }
  }

  private metaOrUnchanged(abs: Buffer, r: BigIntStats, n: FsNode, comps: Buffer[]): Outcome {
    const c = this.env.counters;
    if (!this.sameMeta(abs, r, n)) this.meta(comps, n);
    else c.unchangedFiles++;
    c.restoredFiles++;
    return CLEAN;
  }

  private async file(
    d: DirCtx,
    item: SnapItem,
    comps: Buffer[],
    abs: Buffer,
    r: BigIntStats,
  ): Promise<Outcome> {
    const env = this.env;
    const n = item.node;
    const c = env.counters;
    if (item.literal) {
      // Content computed by the agent: compared byte for byte (a meta would change other names too).
      const metaEq = this.sameMeta(abs, r, n);
      if (!sameBytes(abs, r, item.literal) || (r.nlink !== 1n && !metaEq))
        return this.create(d, item, comps, undefined);
      if (metaEq) c.unchangedFiles++;
      else this.meta(comps, n);
      c.restoredFiles++;
      c.restoredBytes += n.size;
      return CLEAN;
    }
    const key = n.link ? `${n.link.dev}:${n.link.ino}` : null;
    const first = key ? env.links.get(key) : undefined;
    if (first) {
      // Another name of an inode already handled: unchanged when it is that inode now.
      if (first.stage === null || first.batch !== this.b.n) {
        const st = lstatSync(join(env.root, first.rel), { bigint: true, throwIfNoEntry: false });
        if (st && st.ino === r.ino && st.dev === r.dev) {
          c.unchangedFiles++;
          c.restoredFiles++;
          c.restoredBytes += n.size;
          return CLEAN;
        }
      }
      return this.create(d, item, comps, undefined);
    }
    const metaEq = this.sameMeta(abs, r, n);
    // A file with other names that the snapshot does not group with it gets its own inode.
    const linksOk = r.nlink === 1n || key !== null;
    let same = linksOk && this.env.trustMtime && metaEq && Number(r.size) === n.size;
    if (linksOk && !same && env.vouch?.(abs, r, n) === true) {
      same = true;
      c.vouchedFiles++;
    }
    if (linksOk && !same) same = env.seeds.sameContent(abs, r, n);
    if (!same) return this.create(d, item, comps, abs);
    if (key) env.links.set(key, { rel: relOf(comps), stage: null, batch: this.b.n });
    if (metaEq) c.unchangedFiles++;
    else this.meta(comps, n);
    c.restoredFiles++;
    c.restoredBytes += n.size;
    return CLEAN;
  }

  /** Same mode, owner, mtime and xattrs (what a `meta` operation would set). */
  private sameMeta(abs: Buffer, st: BigIntStats, n: FsNode): boolean {
    if (n.type !== "symlink" && (Number(st.mode) & 0o7777) !== n.mode) return false;
    if (this.env.owner && (Number(st.uid) !== n.uid || Number(st.gid) !== n.gid)) return false;
    if (st.mtimeNs !== n.mtimeNs) return false;
    let have: { name: string; value: Buffer }[];
    try {
      have = readXattrs(abs);
    } catch {
      return false;
    }
    const keep = (x: { name: string }) => this.env.owner || userSettable(x.name);
    have = have.filter(keep);
    const want = (n.xattrs ?? []).filter(keep);
    if (have.length !== want.length) return false;
    for (let i = 0; i < want.length; i++) {
      if (have[i]!.name !== want[i]!.name || !have[i]!.value.equals(want[i]!.value)) return false;
    }
    return true;
  }

  private meta(comps: Buffer[], n: FsNode): void {
    this.env.step("stage");
    // Without privileges only the xattrs a user may set are asked for (applyMeta reports the rest).
    const node =
      this.env.owner || !n.xattrs ? n : { ...n, xattrs: n.xattrs.filter((x) => userSettable(x.name)) };
    this.b.journal.add({ op: "meta", pathB64: relOf(comps).toString("base64"), node: journalNode(node) });
    this.env.counters.metaOps++;
  }

  /** A new stage entry for a path whose parent is in the root (or will be, by an earlier put). */
  private stageEntry(d: DirCtx): { path: Buffer; work: number; stage: string } {
    const work = this.env.work.forDir(this.existingAncestor(d.abs), d.dev);
    const stage = String(this.b.nextStage++);
    const path = Buffer.concat([this.env.work.list[work]!.path, Buffer.from(`/stage/${stage}`)]);
    return { path, work, stage };
  }

  private existingAncestor(abs: Buffer): Buffer {
    let cur = abs;
    for (;;) {
      const st = lstatSync(cur, { throwIfNoEntry: false });
      if (st?.isDirectory()) return cur;
      const i = cur.lastIndexOf(0x2f);
      if (i <= 0 || cur.length <= this.env.root.length) return this.env.root;
      cur = cur.subarray(0, i);
    }
  }

  /**
   * Write the snapshot's version of an entry into the stage (inside the
   * staged directory `d.stage`, or as a new stage entry with a `put`).
   * `seed`: the root's regular file at the same path, for local chunks.
   */
  private async create(
    d: DirCtx,
    item: SnapItem,
    comps: Buffer[],
    seed: Buffer | undefined,
  ): Promise<Outcome> {
    const env = this.env;
    const n = item.node;
    const shown = displayPath(item.snapPath);
    const entry = d.stage ? null : this.stageEntry(d);
    const dest = d.stage ? join(d.stage, n.name) : entry!.path;
    const abs = join(d.abs, n.name);
    env.step("stage");
    // Only the local creation of this entry may fail it alone ("not restored"); what a
    // listing, the walk below or the fetcher throws (missing or corrupt snapshot data, a lost
    // server, a full disk) fails the batch: never a partly restored directory.
    if (n.type === "dir") {
      // Inside a staged directory it is made off the walk, before anything queued into it.
      const made = d.stage
        ? this.b.fetcher.creator.make(
            dest,
            0o700,
            undefined,
            shown,
            (e) => e && this.notCreated(e, shown),
            d.made,
          )
        : undefined;
      if (!made) {
        try {
          mkdirSync(dest, 0o700);
        } catch (e) {
          return this.notCreated(e, shown);
        }
      }
      if (made || env.wholeDirs) {
        // Staged whole: its content is created inside, no operations.
        await this.b.fetcher.creator.room();
        const sub = item.subtree ? await this.listing(item.subtree, item.snapPath) : [];
        const inside: DirCtx = {
          abs,
          comps,
          exists: false,
          dev: d.dev,
          stage: dest,
          snapPath: item.snapPath,
          cursor: null,
          ...(made ? { settle: [made.done], made } : {}),
        };
        await this.dir(inside, sub);
        this.afterCreations(inside, d, () => {
          if (made?.failed) return;
          this.applyMeta(dest, n, shown);
          this.b.syncs.add(dest);
        });
        if (entry) this.put(comps, entry);
        return entry ? DIRTY : CLEAN;
      }
      // Streaming: put the directory empty, then its entries one by one.
      this.applyMeta(dest, n, shown);
      this.b.syncs.add(dest);
      this.put(comps, entry!);
      const sub = item.subtree ? await this.listing(item.subtree, item.snapPath) : [];
      const out = await this.dir(
        { abs, comps, exists: false, dev: d.dev, stage: null, snapPath: item.snapPath, cursor: null },
        sub,
      );
      if (out.dirty) this.meta(comps, n);
      return { dirty: true, stopped: out.stopped };
    }
    if (n.type === "file") {
      if (!(await this.stageFile(d, dest, item, comps, seed))) return CLEAN;
    } else if (n.type === "symlink" && d.stage) {
      // Made off the walk like the files around it; its metadata once it is there.
      this.b.putFiles++;
      const made = this.b.fetcher.creator.make(
        dest,
        0o777,
        n.target ?? Buffer.alloc(0),
        shown,
        (e) => {
          this.b.putFiles--;
          if (e) this.notCreated(e, shown);
        },
        d.made,
      );
      this.afterSettled([made.done], d, shown, () => {
        if (!made.failed) this.applyMeta(dest, n, shown);
      });
      this.b.stagedFiles++;
      await this.b.fetcher.creator.room();
      return CLEAN;
    } else {
      if (!(await this.parentMade(d))) return CLEAN;
      try {
        if (n.type === "symlink") symlinkSync(n.target ?? Buffer.alloc(0), dest);
        else await createSpecial(dest, n);
      } catch (e) {
        return this.notCreated(e, shown);
      }
      this.applyMeta(dest, n, shown);
    }
    this.b.stagedFiles++;
    this.b.stagedBytes += n.type === "file" ? n.size : 0;
    this.b.putFiles++;
    this.b.putBytes += n.type === "file" ? n.size : 0;
    if (!entry) return CLEAN;
    this.put(comps, entry);
    return DIRTY;
  }

  /**
   * An entry the filesystem would not create: reported and left out ("not restored"),
   * unless the failure dooms the batch (a full disk, no descriptors, a failing disk:
   * `stagingFailure`) or is a refusal to write through a symlink (UNSAFE_PATH).
   */
  private notCreated(e: unknown, shown: string): Outcome {
    if (e instanceof StrataError && e.code === "UNSAFE_PATH") throw e;
    if ((e as Error).name === "AbortError") throw e;
    if (failsBatch(e)) throw stagingFailure(e, shown);
    this.env.error(shown, `not restored: ${(e as Error).message}`);
    return CLEAN;
  }

  private put(comps: Buffer[], entry: { work: number; stage: string }): void {
    this.b.journal.add({
      op: "put",
      pathB64: relOf(comps).toString("base64"),
      stage: entry.stage,
      work: entry.work,
    });
    this.env.counters.putOps++;
  }

  private async stageFile(
    d: DirCtx,
    dest: Buffer,
    item: SnapItem,
    comps: Buffer[],
    seed: Buffer | undefined,
  ): Promise<boolean> {
    const env = this.env;
    const n = item.node;
    const shown = displayPath(item.snapPath);
    const key = n.link ? `${n.link.dev}:${n.link.ino}` : null;
    if (key) {
      // A hard-link group's names are created here (linked to its first): once the directory is.
      if (!(await this.parentMade(d))) return false;
      const first = env.links.get(key);
      if (first) {
        const src = first.stage && first.batch === this.b.n ? first.stage : join(env.root, first.rel);
        try {
          linkSync(src, dest);
          return true;
        } catch (e) {
          env.error(
            shown,
            `restored as a separate file: cannot link it to ${displayPath(first.rel)}: ${(e as Error).message}`,
          );
        }
      } else env.links.set(key, { rel: relOf(comps), stage: dest, batch: this.b.n });
    }
    const wanted = new Map<BlobId, number[]>();
    const lens = new Map<BlobId, number>();
    let off = 0;
    let holes = false;
    for (const p of n.content ?? []) {
      if ("hole" in p) {
        off += p.hole;
        holes = true;
        continue;
      }
      const at = wanted.get(p.id);
      if (at) at.push(off);
      else wanted.set(p.id, [off]);
      lens.set(p.id, p.len);
      off += p.len;
    }
    if (!item.literal && off !== n.size) {
      throw new StrataError("DATA_CORRUPT", `${shown}: its pieces add up to ${off} bytes, not ${n.size}`, {
        subject: shown,
      });
    }
    // Created with its final permission bits when they let the owner read and write (most
    // files): its chmod is then skipped. The stage is the restore's own 0700 directory.
    const createMode = (n.mode & 0o777) | 0o600;
    const fresh = this.fresh(createMode);
    const file: PendingFile = {
      path: dest,
      name: shown,
      // The fetcher writes the missing chunks through it and closes it (see Fetcher).
      fd: -1,
      missing: 0,
      // Created with its owner and mode, without xattrs: its times are all it lacks.
      ...(onlyTimesNeeded(n, this.metaOpts(fresh)) ? { mtimeNs: n.mtimeNs } : {}),
      finish: (times) => {
        if (!times) this.applyMeta(dest, n, shown, fresh);
        else if (times.error) env.error(shown, `metadata not restored: ${times.error}`);
        this.b.syncs.add(dest);
      },
    };
    if (!key && !seed && !holes && !item.literal && wanted.size > 0) {
      // Nothing to write here before the chunks come (restore.md, "The stage's tree is created
      // off the walk"): created on libuv's threads while the walk goes on; no one else knows the path.
      file.notCreated = (e) => {
        this.b.putFiles--;
        this.b.putBytes -= n.size;
        // Reports it (a failure that fails the batch never comes here); null: its directory was
        // not made, and was reported.
        if (e) this.notCreated(e, shown);
      };
      const created = this.b.fetcher.create(file, createMode, d.made);
      // A staged directory's metadata waits for the files created in it (afterCreations).
      settleIn(d, created);
      await this.b.fetcher.add(file, item.owner, wanted, lens);
      await this.b.syncs.throttle();
      return true;
    }
    if (!(await this.parentMade(d))) return false;
    let fd: number;
    try {
      fd = openSync(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, createMode);
    } catch (e) {
      this.notCreated(e, shown);
      return false;
    }
    file.fd = fd;
    let fetching = false;
    try {
      // Holes (and a hole at the end) are made by the size alone; the writes fill a dense file.
      if (holes || item.literal) ftruncateSync(fd, n.size);
      if (item.literal) {
        let w = 0;
        while (w < item.literal.length) w += writeSync(fd, item.literal, w, item.literal.length - w, w);
      } else if (seed) {
        env.counters.seededBytes += env.seeds.copyFrom(seed, wanted, fd);
      }
      fetching = wanted.size > 0 && !item.literal;
    } catch (e) {
      // Written only partly: it goes (inside a staged directory it would be put with it).
      try {
        unlinkSync(dest);
      } catch {
        // gone already
      }
      this.notCreated(e, shown);
      return false;
    } finally {
      if (!fetching) {
        closeSync(fd);
        file.fd = -1;
      }
    }
    if (fetching) await this.b.fetcher.add(file, item.owner, wanted, lens);
    else file.finish();
    await this.b.syncs.throttle();
    return true;
  }

  /**
   * Entries created here (not queued) go into a directory queued off the walk only once it is
   * made: false when it was not (it was reported; what it would hold is left out silently).
   */
  private async parentMade(d: DirCtx): Promise<boolean> {
    if (!d.made) return true;
    await this.b.fetcher.made(d.made);
    return !d.made.failed;
  }

  /**
   * Run `then` (a staged directory's metadata) once every creation inside `inside` has
   * settled: a creation after it would move the directory's mtime, and a mode without the
   * owner's write or search bits would refuse it. Its parent's metadata waits for this in turn.
   */
  private afterCreations(inside: DirCtx, parent: DirCtx, then: () => void): void {
    this.afterSettled(inside.settle ?? [], parent, displayPath(inside.snapPath), then);
  }

  /**
   * Run `then` (metadata of entry `shown`) once `waits` have settled — at once when there are
   * none — and make `parent`'s metadata wait for it; a throw is reported, not fatal.
   */
  private afterSettled(waits: Promise<void>[], parent: DirCtx, shown: string, then: () => void): void {
    if (!waits.length) {
      then();
      return;
    }
    const settling = this.b.settling;
    const p = Promise.all(waits).then(() => {
      try {
        then();
      } catch (e) {
        this.env.error(shown, `metadata not restored: ${(e as Error).message}`);
      }
    });
    settling.add(p);
    void p.then(() => settling.delete(p));
    settleIn(parent, p);
  }

  /** Every metadata `afterCreations` deferred is set (call after the fetcher is drained or abandoned). */
  async settled(): Promise<void> {
    while (this.b.settling.size) await Promise.all([...this.b.settling]);
  }

  /**
   * Metadata on a staged entry. Failures are reported, not fatal: as
   * non-root the owner is left to the restoring user and xattrs it may not
   * set (security.*, trusted.*) are dropped; mode and times still apply.
   */
  /**
   * What a file this run just created in a stage has: this process's user,
   * the stage's group (all workdirs must agree), `mode` less the umask.
   * Unknown (undefined) when a workdir was not made by this run.
   */
  private fresh(mode: number): { uid: number; gid: number; mode: number } | undefined {
    const c = this.env.creator;
    const work = this.env.work.list;
    const gid = work[0]?.createdGid;
    // A default ACL on the stage replaces the umask (and its inherited entries are removed later).
    if (!c || gid === undefined || work.some((w) => w.createdGid !== gid || w.inheritsAcl !== false))
      return undefined;
    return { uid: c.uid, gid, mode: mode & ~c.umask };
  }

  /**
   * How metadata is applied to an entry created in a stage: without a
   * default ACL there, it inherited none, and its xattrs need no listing
   * (one syscall less per object).
   */
  private metaOpts(fresh?: ApplyOptions["fresh"]): ApplyOptions {
    return {
      owner: this.env.owner,
      noInheritedAcl: !this.env.work.list.some((w) => w.inheritsAcl),
      ...(fresh ? { fresh } : {}),
    };
  }

  private applyMeta(dest: Buffer, n: FsNode, shown: string, fresh?: ApplyOptions["fresh"]): void {
    let node = n;
    if (!this.env.owner && n.xattrs?.some((x) => !userSettable(x.name))) {
      const dropped = n.xattrs.filter((x) => !userSettable(x.name)).map((x) => x.name);
      this.env.error(shown, `metadata not fully restored: ${dropped.join(", ")} need root`);
      node = { ...n, xattrs: n.xattrs.filter((x) => userSettable(x.name)) };
    }
    const opts = this.metaOpts(fresh);
    try {
      applyMetadataSync(dest, node, opts);
    } catch (e) {
      this.env.error(shown, `metadata not fully restored: ${(e as Error).message}`);
      try {
        const { xattrs: _dropped, ...rest } = node;
        applyMetadataSync(dest, rest, opts);
      } catch (e2) {
        this.env.error(shown, `metadata not restored: ${(e2 as Error).message}`);
      }
    }
  }

  /**
   * layer: a root entry the image lacks. Deleted when removable (or, with
   * enforce remove, in the machine area); a directory the removal set (or
   * a literal file) lies below is descended with an empty listing; anything
   * else is user-installed and kept.
   */
  private async layerAbsent(
    d: DirCtx,
    abs: Buffer,
    comps: Buffer[],
    r: BigIntStats,
    snapPath: Buffer,
    cursor: Buffer[] | null,
  ): Promise<Outcome> {
    const how = this.layerDeletion(snapPath);
    if (how === true) return this.remove(d, abs, comps, r, snapPath);
    if (how === false || !r.isDirectory()) return CLEAN;
    const kept = this.keptNode(abs, r);
    const out = await this.dir(
      { abs, comps, exists: true, dev: Number(r.dev), stage: null, snapPath, cursor },
      [],
    );
    // A directory that is not the image's keeps its own metadata (its mtime is not churned).
    if (out.dirty && kept) this.meta(comps, kept);
    return { dirty: false, stopped: out.stopped };
  }

  /** layer: may a root entry absent from the image go (true), or is only something below it removable ("below")? */
  private layerDeletion(snapPath: Buffer): boolean | "below" {
    const l = this.env.layer!;
    const key = snapPath.toString("latin1");
    if (l.literalDirs.has(key)) return "below";
    if (l.literalPaths.has(key)) return false;
    const rem = l.removable(snapPath);
    if (rem === true) return true;
    if (l.enforceRemove && this.env.policy?.classify(snapPath) === "machine") return true;
    return rem === "below" ? "below" : false;
  }

  /** The root entry's own metadata (what a `meta` gives back after entries below it changed). */
  private keptNode(abs: Buffer, r: BigIntStats): FsNode | undefined {
    try {
      const { link: _link, ...n } = nodeFromStat(abs, Buffer.alloc(0), r);
      const xattrs = readXattrs(abs);
      return xattrs.length ? { ...n, xattrs } : n;
    } catch {
      return undefined;
    }
  }

  /** A root entry the snapshot lacks: `del`, or (a directory holding paths out of scope) `del`s below it. */
  private async remove(
    d: DirCtx,
    abs: Buffer,
    comps: Buffer[],
    r: BigIntStats,
    snapPath: Buffer,
  ): Promise<Outcome> {
    if (r.isDirectory()) {
      if (Number(r.dev) !== d.dev) return CLEAN; // a mount point is not the snapshot's to remove
      if (!(await this.replaceable(abs, snapPath, d.dev))) return CLEAN;
    }
    this.del(comps, d.abs, d.dev);
    return DIRTY;
  }

  /** `del` of `comps`, whose parent directory `parentAbs` is on device `dev`. */
  private del(comps: Buffer[], parentAbs: Buffer, dev: number): void {
    this.env.step("stage");
    const work = this.env.work.forDir(parentAbs, dev);
    this.b.journal.add({ op: "del", pathB64: relOf(comps).toString("base64"), work });
    this.env.counters.deleted++;
  }

  /**
   * Whether everything below the root directory `abs` is this restore's to
   * delete. When not, the parts that are get their own `del`s here (so
   * the directory stays, with what must be kept). For `layer` an entry is
   * the restore's to delete only when removable (layerDeletion); a kept
   * directory whose entries went gets its own metadata back.
   * `keep`: the directory stays whatever is below it (layer, "below").
   */
  private async replaceable(abs: Buffer, snapPath: Buffer, dev: number, keep = false): Promise<boolean> {
    const layer = this.env.kind === "layer";
    const before = this.b.journal.count;
    let names: Buffer[];
    try {
      names = readdirSync(abs, { encoding: "buffer" });
    } catch {
      return false;
    }
    names.sort(Buffer.compare);
    const comps = abs.length > this.env.root.length ? relComps(abs.subarray(this.env.root.length + 1)) : [];
    const doomed: Buffer[] = [];
    let all = true;
    for (const name of names) {
      const cabs = join(abs, name);
      const csnap = join(snapPath, name);
      if (
        this.isProtected(cabs) ||
        this.env.protectedPaths.some((p) =>
          p.subarray(0, cabs.length + 1).equals(Buffer.concat([cabs, SLASH])),
        ) ||
        name.subarray(0, WORKDIR.length).equals(WORKDIR) ||
        this.inClassScope(csnap, false) !== true
      ) {
        all = false;
        continue;
      }
      const st = lstatSync(cabs, { throwIfNoEntry: false });
      if (!st) continue;
      const how = layer ? this.layerDeletion(csnap) : true;
      if (how !== true) {
        all = false;
        if (how === "below" && st.isDirectory() && st.dev === dev)
          await this.replaceable(cabs, csnap, dev, true);
        continue;
      }
      if (st.isDirectory()) {
        if (st.dev !== dev || !(await this.replaceable(cabs, csnap, dev))) {
          all = false;
          continue;
        }
      }
      doomed.push(name);
    }
    if (all && !keep) return true;
    for (const name of doomed) this.del([...comps, name], abs, dev);
    if (layer && this.b.journal.count > before) {
      // Entries below went, the directory stays: it keeps its own metadata (planning changed nothing yet).
      const kept = this.keptNode(abs, lstatSync(abs, { bigint: true }));
      if (kept) this.meta(comps, kept);
    }
    return false;
  }
}

/** Whether the regular file at `abs` (lstat'ed as `st`) holds exactly `want`. */
function sameBytes(abs: Buffer, st: BigIntStats, want: Buffer): boolean {
  if (!st.isFile() || st.size !== BigInt(want.length)) return false;
  let fd: number;
  try {
    fd = openSync(abs, constants.O_RDONLY | O_NOFOLLOW);
  } catch {
    return false;
  }
  try {
    const buf = Buffer.allocUnsafe(Math.min(want.length, 1 << 20) + 1);
    let off = 0;
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, off);
      if (n === 0) return off === want.length;
      if (off + n > want.length || !buf.subarray(0, n).equals(want.subarray(off, off + n))) return false;
      off += n;
    }
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

function relComps(rel: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= rel.length; i++) {
    if (i === rel.length || rel[i] === 0x2f) {
      if (i > start) out.push(rel.subarray(start, i));
      start = i + 1;
    }
  }
  return out;
}
