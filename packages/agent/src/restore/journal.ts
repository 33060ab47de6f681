import {
  appendFileSync,
  closeSync,
  createReadStream,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { createInterface } from "node:readline";
import { type FsNode, type NodeType, StrataError } from "@strata/core";
import { applyMetadataSync, displayPath, hasDefaultAcl, nodeTypeOf } from "@strata/fs";

/*
 * The restore journal (docs/design/restore.md, "Phases" and "Operations").
 * One JSON object per line; paths are bytes, relative to the restore's
 * root, carried base64 in `…B64` fields. Lines stream to `journal.pending`
 * while planning; fsync + rename to `journal` is the commit point. Every
 * operation is idempotent, so a crashed apply is simply run again.
 */

/** Metadata a `meta` operation gives a path (what `applyMetadataSync` sets). */
export interface JournalNode {
  type: NodeType;
  mode: number;
  uid: number;
  gid: number;
  /** Nanoseconds, as a decimal string (JSON has no bigint). */
  mtimeNs: string;
  /** [name, base64 value]. */
  xattrs?: [string, string][];
}

export type JournalOp =
  /** Rename stage entry `stage` of workdir `work` to the path (what is there goes to trash first when a directory is involved). */
  | { op: "put"; pathB64: string; stage: string; work: number }
  /** Move the path into the trash of workdir `work`. */
  | { op: "del"; pathB64: string; work: number }
  /** Give the path this metadata, without following symlinks. */
  | { op: "meta"; pathB64: string; node: JournalNode };

export function journalNode(n: FsNode): JournalNode {
  const out: JournalNode = {
    type: n.type,
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    mtimeNs: n.mtimeNs.toString(),
  };
  if (n.xattrs?.length) out.xattrs = n.xattrs.map((x) => [x.name, x.value.toString("base64")]);
  return out;
}

function fsNodeOf(j: JournalNode, name: Buffer): FsNode {
  const n: FsNode = {
    name,
    type: j.type,
    mode: j.mode,
    uid: j.uid,
    gid: j.gid,
    mtimeNs: BigInt(j.mtimeNs),
    size: 0,
  };
  if (j.xattrs?.length) n.xattrs = j.xattrs.map(([name, v]) => ({ name, value: Buffer.from(v, "base64") }));
  return n;
}

/** Buffered, append-only writer of `journal.pending`. */
export class JournalWriter {
  private fd: number;
  private buf: string[] = [];
  private bytes = 0;
  /** Operations written so far. */
  count = 0;
  /** Told every operation as it is added (kind `layer`'s watched paths). */
  observer: ((op: JournalOp) => void) | null = null;

  constructor(readonly pendingPath: string) {
    this.fd = openSync(pendingPath, "w", 0o600);
  }

  add(op: JournalOp): void {
    this.observer?.(op);
    const line = `${JSON.stringify(op)}\n`;
    this.buf.push(line);
    this.bytes += line.length;
    this.count++;
    if (this.bytes >= 64 * 1024) this.flush();
  }

  private flush(): void {
    if (!this.buf.length) return;
    const data = Buffer.from(this.buf.join(""));
    this.buf = [];
    this.bytes = 0;
    let off = 0;
    while (off < data.length) off += writeSync(this.fd, data, off, data.length - off);
  }

  /** Durable, then renamed to `finalPath` (the commit point), then the directory is made durable. */
  commit(finalPath: string, dir: string): void {
    this.flush();
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = -1;
    renameSync(this.pendingPath, finalPath);
    fsyncPath(dir);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** The operations of a committed journal, in order. */
export async function* readJournal(path: string): AsyncGenerator<JournalOp> {
  const rl = createInterface({ input: createReadStream(path), crlfDelay: Number.POSITIVE_INFINITY });
  let line = 0;
  for await (const text of rl) {
    line++;
    if (text === "") continue;
    let op: JournalOp;
    try {
      op = JSON.parse(text) as JournalOp;
    } catch (e) {
      throw new StrataError("DATA_CORRUPT", `restore journal ${path} line ${line} is not JSON`, {
        subject: path,
        cause: e,
      });
    }
    yield op;
  }
}

export function fsyncPath(path: string | Buffer): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Workdirs: where stage and trash live, one per filesystem.

export interface Workdir {
  /** Absolute; holds `stage/` and `trash/`. */
  path: Buffer;
  dev: number;
  /**
   * `stage/` has a default ACL (inherited from where the workdir was made),
   * so objects created in it carry ACLs the snapshot may lack. Known only
   * for workdirs this run created.
   */
  inheritsAcl?: boolean;
  /**
   * The group objects created in `stage/` get: its own when it is setgid,
   * else this process's. Known only for workdirs this run created.
   */
  createdGid?: number;
}

export const WORKDIR_PREFIX = ".strata-restore-";

/**
 * The workdirs of one restore, recorded in `STATE/restore/ID/work` (one
 * JSON line each, written and fsynced before the directory is created) so
 * `recoverPendingRestore` finds every stage to roll back.
 */
export class Workdirs {
  readonly list: Workdir[] = [];
  private readonly registry: string;

  constructor(
    private readonly idDir: string,
    private readonly id: string,
    private readonly root: Buffer,
    private readonly stateDev: number,
  ) {
    this.registry = `${idDir}/work`;
  }

  static read(idDir: string): Workdir[] {
    let text = "";
    try {
      text = readFileSync(`${idDir}/work`, "utf8");
    } catch {
      return [];
    }
    const out: Workdir[] = [];
    for (const line of text.split("\n")) {
      if (!line) continue;
      try {
        const j = JSON.parse(line) as { pathB64: string; dev: number };
        out.push({ path: Buffer.from(j.pathB64, "base64"), dev: j.dev });
      } catch {
        // a torn last line: that workdir was never created
      }
    }
    return out;
  }

  /** Index of the workdir for entries of directory `dirAbs` (on device `dev`), creating it. */
  forDir(dirAbs: Buffer, dev: number): number {
    const i = this.list.findIndex((w) => w.dev === dev);
    if (i >= 0) return i;
    let path: Buffer;
    if (dev === this.stateDev) path = Buffer.from(this.idDir);
    else {
      // The top of that filesystem inside the root (a separate /home: ROOT/home).
      let top = dirAbs;
      while (!top.equals(this.root)) {
        const parent = parentOf(top);
        if (lstatSync(parent, { bigint: false }).dev !== dev) break;
        top = parent;
      }
      path = Buffer.concat([top, Buffer.from(`/${WORKDIR_PREFIX}${this.id}`)]);
    }
    appendFileSync(this.registry, `${JSON.stringify({ pathB64: path.toString("base64"), dev })}\n`, {
      mode: 0o600,
    });
    fsyncPath(this.registry);
    mkdirSync(path, { recursive: true, mode: 0o700 });
    mkdirSync(Buffer.concat([path, Buffer.from("/stage")]), { mode: 0o700 });
    mkdirSync(Buffer.concat([path, Buffer.from("/trash")]), { mode: 0o700 });
    const st = lstatSync(path);
    if (!st.isDirectory() || st.dev !== dev) {
      throw new StrataError(
        "UNSAFE_PATH",
        `restore workdir ${displayPath(path)} is not a directory on the expected filesystem`,
        { subject: displayPath(path) },
      );
    }
    const stage = Buffer.concat([path, Buffer.from("/stage")]);
    const sst = lstatSync(stage);
    this.list.push({
      path,
      dev,
      inheritsAcl: hasDefaultAcl(stage),
      createdGid: sst.mode & 0o2000 ? sst.gid : (process.getegid?.() ?? sst.gid),
    });
    return this.list.length - 1;
  }
}

/** Empty the stage and trash of each workdir (between streaming batches). */
export function emptyWorkdirs(work: readonly Workdir[]): void {
  for (const w of work) {
    for (const sub of ["/stage", "/trash"]) {
      const p = Buffer.concat([w.path, Buffer.from(sub)]);
      removeTree(p);
      mkdirSync(p, { mode: 0o700 });
    }
  }
}

/** Remove a path we own, never following a symlink at it. */
export function removeTree(p: Buffer | string): void {
  const st = lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  rmSync(p, { recursive: st.isDirectory(), force: true });
}

export function parentOf(p: Buffer): Buffer {
  const i = p.lastIndexOf(0x2f);
  return i <= 0 ? Buffer.from("/") : p.subarray(0, i);
}

// ---------------------------------------------------------------------------
// Apply

export interface ApplyContext {
  root: Buffer;
  work: readonly Workdir[];
  /** Set metadata owners (root only). */
  owner: boolean;
}

const SLASH = 0x2f;

function unsafe(path: Buffer, why: string): StrataError {
  const shown = displayPath(path);
  return new StrataError("UNSAFE_PATH", `refusing to change ${shown}: ${why}`, {
    subject: shown,
    hint: "something changed the directory tree during the restore; check it and run the restore again",
  });
}

/**
 * `root/rel` after checking, with lstat, that every directory on the way is
 * a real directory (a symlink swapped in after planning is refused, never
 * followed), and that the parent is on device `dev` when given.
 */
function checkedPath(ctx: ApplyContext, rel: Buffer, dev: number | undefined): Buffer {
  if (rel.length === 0) return ctx.root;
  if (rel[0] === SLASH || rel.includes(0)) throw unsafe(rel, "not a relative path");
  const comps: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= rel.length; i++) {
    if (i === rel.length || rel[i] === SLASH) {
      const c = rel.subarray(start, i);
      if (
        c.length === 0 ||
        (c.length === 1 && c[0] === 0x2e) ||
        (c.length === 2 && c[0] === 0x2e && c[1] === 0x2e)
      )
        throw unsafe(rel, "not a plain path");
      comps.push(c);
      start = i + 1;
    }
  }
  let cur = ctx.root;
  let st = lstatSync(cur);
  if (!st.isDirectory()) throw unsafe(cur, "the restore root is not a directory");
  for (let i = 0; i < comps.length - 1; i++) {
    cur = Buffer.concat([cur, Buffer.from("/"), comps[i]!]);
    const next = lstatSync(cur, { throwIfNoEntry: false });
    if (!next) throw unsafe(cur, "a parent directory is missing");
    if (!next.isDirectory())
      throw unsafe(cur, next.isSymbolicLink() ? "a parent is a symlink" : "a parent is not a directory");
    st = next;
  }
  if (dev !== undefined && st.dev !== dev) throw unsafe(cur, "a parent moved to another filesystem");
  return Buffer.concat([ctx.root, Buffer.from("/"), rel]);
}

function toTrash(ctx: ApplyContext, w: number, n: number, p: Buffer): void {
  const trash = Buffer.concat([ctx.work[w]!.path, Buffer.from(`/trash/${n}`)]);
  renameSync(p, trash);
}

/**
 * Apply operation number `n` (its line index: names its trash entry).
 * Throws UNSAFE_PATH when a check fails; other errors are I/O failures.
 */
export function applyOp(ctx: ApplyContext, op: JournalOp, n: number): void {
  const rel = Buffer.from(op.pathB64, "base64");
  if (op.op === "put") {
    const w = ctx.work[op.work];
    if (!w || !/^[0-9]+$/.test(op.stage)) throw unsafe(rel, "journal names an unknown stage entry");
    const s = Buffer.concat([w.path, Buffer.from(`/stage/${op.stage}`)]);
    const sst = lstatSync(s, { throwIfNoEntry: false });
    if (!sst) return; // done already
    const p = checkedPath(ctx, rel, w.dev);
    const pst = lstatSync(p, { throwIfNoEntry: false });
    if (pst && (pst.isDirectory() || sst.isDirectory())) {
      if (pst.dev !== w.dev) throw unsafe(p, "it is a mount point");
      toTrash(ctx, op.work, n, p);
    }
    renameSync(s, p);
    return;
  }
  if (op.op === "del") {
    const w = ctx.work[op.work];
    if (!w) throw unsafe(rel, "journal names an unknown workdir");
    const p = checkedPath(ctx, rel, w.dev);
    const pst = lstatSync(p, { throwIfNoEntry: false });
    if (!pst) return;
    if (pst.dev !== w.dev) throw unsafe(p, "it is a mount point");
    toTrash(ctx, op.work, n, p);
    return;
  }
  if (op.op === "meta") {
    const p = checkedPath(ctx, rel, undefined);
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (!st) throw unsafe(p, "it vanished after planning");
    if (nodeTypeOf(st.mode) !== op.node.type)
      throw unsafe(p, `it is no longer a ${op.node.type} (changed after planning)`);
    applyMetadataSync(p, fsNodeOf(op.node, Buffer.alloc(0)), { owner: ctx.owner });
    return;
  }
  throw new StrataError(
    "DATA_CORRUPT",
    `unknown restore journal operation ${JSON.stringify((op as { op: unknown }).op)}`,
  );
}
