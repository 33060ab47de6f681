import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { availableParallelism } from "node:os";
import * as nodePath from "node:path";
import { globToRegExp, isStrataError, StrataError } from "@strata/core";
import { displayPath, native } from "@strata/fs";
import { RestorePool } from "@strata/repo";
import { TreeAhead } from "./ahead.js";
import { type Deferred, deferred } from "./deferred.js";
import { Fetcher, SyncQueue } from "./fetcher.js";
import {
  type ApplyContext,
  applyOp,
  emptyWorkdirs,
  fsyncPath,
  JournalWriter,
  parentOf,
  readJournal,
  removeTree,
  WORKDIR_PREFIX,
  type Workdir,
  Workdirs,
} from "./journal.js";
import {
  type BatchState,
  classScope,
  layerPlan,
  type PlanEnv,
  Planner,
  type RunCounters,
  type Selector,
  type SnapItem,
} from "./plan.js";
import { SeedReader } from "./seed.js";
import type { RestoreSource, TreeRef } from "./source.js";
import type {
  PendingOutcome,
  RestoreOptions,
  RestoreProgress,
  RestoreResult,
  RestoreStep,
  StagedOp,
} from "./types.js";

/** A restore in progress (docs/design/restore.md, "The engine"). */
export interface RestoreRun {
  /** The end: every batch applied and cleaned up. */
  done: Promise<RestoreResult>;
  /** The minimal restore set is in place (streaming); otherwise when done. */
  usable: Promise<void>;
  /**
   * Resolves once PATH (absolute in the snapshot) is in its final place,
   * jumping the streaming queue; rejects NOT_FOUND when the snapshot lacks it.
   */
  fetch(path: string): Promise<void>;
  progress(): RestoreProgress;
}

/** restore.md, "Streaming restore". */
export const DEFAULT_MINIMAL_SET: readonly string[] = [
  "/etc",
  "/usr",
  "/lib*",
  "/bin",
  "/sbin",
  "/boot",
  "/var/lib/dpkg",
];
// Small, so a `fetch` (which runs between batches) waits for little.
const BATCH_FILES = 1000;
const BATCH_BYTES = 8 * 1024 * 1024;
const FETCH_BYTES = 8 * 1024 * 1024;
/**
 * Files per chunk request. Each stays open until its chunks are written
 * (the workers write through its descriptor), and up to five requests are
 * collected or in flight (Fetcher): 1,024 files per request where the
 * descriptor limit allows (5,120 descriptors), fewer under a low limit.
 * Fewer, larger requests cost both sides less: with 256 a full restore of
 * 22,000 files took 12–15% longer (paired runs, docs/benchmarks.md).
 */
const FETCH_FILES = fetchFilesFor(openFileLimit());

/** Files per chunk request under a descriptor limit of `limit` (null: unknown). */
export function fetchFilesFor(limit: number | null): number {
  if (limit === null || Number.isNaN(limit)) return 256;
  // A quarter of the limit for the staged files of five requests; the rest stays for sockets,
  // the file cache, the worker threads and whatever else the process holds.
  return Math.max(16, Math.min(1024, Math.floor(limit / 4 / 5)));
}

/** The soft limit on open descriptors (`/proc/self/limits`), or null when unknown. */
function openFileLimit(): number | null {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0];
    if (soft === "unlimited") return Number.POSITIVE_INFINITY;
    const n = Number(soft);
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}
const RESTORE_DIR = "restore";

/**
 * Restore `source`'s snapshot into `opts.root` (or, for `files`, the given
 * paths into `opts.to`): plan and stage, commit, apply, clean up; in
 * bounded batches when streaming. Returns at once; see RestoreRun.
 */
export function runRestore(source: RestoreSource, opts: RestoreOptions): RestoreRun {
  const engine = new Engine(source, opts);
  const done = engine.run();
  // Callers may never look at `usable` or at a fetch: failures are theirs to see, not crashes.
  done.catch(() => {});
  return {
    done,
    usable: engine.usable.promise,
    fetch: (p) => engine.fetch(p),
    progress: () => engine.progressNow(),
  };
}

interface FetchWish {
  /** Absolute snapshot path, bytes. */
  path: Buffer;
  done: Deferred<void>;
}

class Engine {
  readonly usable = deferred<void>();
  private readonly finished = deferred<void>();
  private readonly counters: RunCounters = {
    totalFiles: 0,
    totalBytes: 0,
    restoredFiles: 0,
    restoredBytes: 0,
    seededBytes: 0,
    files: 0,
    unchangedFiles: 0,
    vouchedFiles: 0,
    putOps: 0,
    deleted: 0,
    metaOps: 0,
    bytes: 0,
    current: "",
  };
  private readonly errors: { path: string; message: string }[] = [];
  private phase: RestoreProgress["phase"] = "planning";
  private fetched = 0;
  private fetcher: Fetcher | null = null;
  private pool: RestorePool | null = null;
  private steps = 0;
  private lastProgress = 0;
  private batches = 0;
  private readonly wishes: FetchWish[] = [];
  private env!: PlanEnv;
  private idDir = "";
  private rootDev = 0;
  private topItems: SnapItem[] = [];
  private unsafe: StrataError[] = [];
  private readonly streaming: boolean;
  /** This run made `idDir` (so it may remove it). */
  private created = false;
  /** A committed journal whose apply failed stays for recoverPendingRestore. */
  private journalLeft = false;
  /** deferApply: the batch is committed and left for recoverPendingRestore. */
  private pending = false;

  constructor(
    private readonly source: RestoreSource,
    private readonly opts: RestoreOptions,
  ) {
    this.streaming = !!opts.streaming && (opts.kind === "full" || opts.kind === "recover");
  }

  progressNow(): RestoreProgress {
    const c = this.counters;
    return {
      phase: this.phase,
      totalFiles: c.totalFiles,
      totalBytes: c.totalBytes,
      // A fetched path is met again by its pass (unchanged then): never report more than the total.
      restoredFiles: c.totalFiles ? Math.min(c.restoredFiles, c.totalFiles) : c.restoredFiles,
      restoredBytes: c.totalBytes ? Math.min(c.restoredBytes, c.totalBytes) : c.restoredBytes,
      seededBytes: c.seededBytes,
      fetchedBytes: this.fetched + (this.fetcher?.fetchedBytes ?? 0),
      usable: this.isUsable,
      ...(c.current ? { current: c.current } : {}),
    };
  }
  private isUsable = false;

  private progress(force = false): void {
    if (!this.opts.onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 100) return;
    this.lastProgress = now;
    this.opts.onProgress(this.progressNow());
  }

  private setPhase(p: RestoreProgress["phase"]): void {
    this.phase = p;
    this.progress(true);
  }

  private step(phase: RestoreStep["phase"]): void {
    this.opts.onStep?.({ phase, n: ++this.steps });
  }

  private error(path: string, message: string): void {
    const e = { path, message };
    this.errors.push(e);
    this.opts.onError?.(e);
  }

  async fetch(path: string): Promise<void> {
    const abs = nodePath.posix.resolve("/", path);
    const found = await this.findItem(abs);
    if (!found) {
      throw new StrataError("NOT_FOUND", `${abs} is not in snapshot ${this.source.snapshot.id.slice(0, 8)}`, {
        subject: abs,
        hint: "list the snapshot's files to find the path",
      });
    }
    if (!this.streaming || this.finished.settled) return this.finished.promise;
    const wish: FetchWish = { path: Buffer.from(abs), done: deferred<void>() };
    this.wishes.push(wish);
    return wish.done.promise;
  }

  /** The snapshot's entry at absolute `abs` (undefined when absent); "/" gives a stand-in. */
  private async findItem(abs: string): Promise<SnapItem | undefined> {
    const segs = abs.split("/").filter(Boolean);
    let ref: TreeRef = this.source.snapshot.root;
    let item: SnapItem | undefined;
    let snapPath = Buffer.from("/");
    if (segs.length === 0) {
      return {
        node: this.source.snapshot.node ?? {
          name: Buffer.from("/"),
          type: "dir",
          mode: 0o755,
          uid: 0,
          gid: 0,
          mtimeNs: 0n,
          size: 0,
        },
        owner: ref,
        subtree: ref,
        snapPath,
      };
    }
    for (const seg of segs) {
      if (item && (item.node.type !== "dir" || !item.subtree)) return undefined;
      const t = await this.source.loadTree(ref, this.opts.signal);
      const want = Buffer.from(seg);
      const i = t.nodes.findIndex((n) => n.name.equals(want));
      if (i < 0) return undefined;
      snapPath =
        snapPath.length === 1
          ? Buffer.concat([snapPath, want])
          : Buffer.concat([snapPath, Buffer.from("/"), want]);
      const sub = t.subtrees[i];
      item = { node: t.nodes[i]!, owner: ref, snapPath, ...(sub ? { subtree: sub } : {}) };
      if (sub) ref = sub;
    }
    return item;
  }

  async run(): Promise<RestoreResult> {
    try {
      return await this.runAll();
    } finally {
      await this.pool?.close();
    }
  }

  private async runAll(): Promise<RestoreResult> {
    const started = Date.now();
    const received = this.source.stats.bytesReceived;
    try {
      await this.prepare();
      if (!this.streaming) {
        const out = await this.batch(() => "in", null, null, null);
        if (out.stopped) throw new StrataError("INTERNAL", "an unbounded restore batch stopped");
        this.isUsable = true;
      } else await this.stream();
      if (!this.pending) this.finish();
      this.setPhase("done");
      this.finished.resolve();
      this.usable.resolve();
      for (const w of this.wishes.splice(0)) w.done.resolve();
      if (this.unsafe.length) {
        const first = this.unsafe[0]!;
        throw new StrataError(
          "UNSAFE_PATH",
          `${first.message}${this.unsafe.length > 1 ? ` (and ${this.unsafe.length - 1} more refused)` : ""}; everything else was restored`,
          { subject: first.subject, hint: first.hint, cause: first },
        );
      }
      const c = this.counters;
      return {
        kind: this.opts.kind,
        snapshot: this.source.snapshot.id,
        files: c.files,
        unchangedFiles: c.unchangedFiles,
        vouchedFiles: c.vouchedFiles,
        putOps: c.putOps,
        deleted: c.deleted,
        metaOps: c.metaOps,
        bytes: c.bytes,
        seededBytes: c.seededBytes,
        fetchedBytes: this.fetched,
        bytesReceived: this.source.stats.bytesReceived - received,
        errors: this.errors,
        durationMs: Date.now() - started,
        batches: this.batches,
        ...(this.pending ? { pending: true } : {}),
      };
    } catch (e) {
      // A journal left by a failed apply is recovery's to roll forward; anything else goes.
      if (this.created && !this.journalLeft) removeWorkdirs(this.idDir, this.env?.work.list ?? []);
      this.finished.reject(e);
      this.usable.reject(e);
      for (const w of this.wishes.splice(0)) w.done.reject(e);
      throw e;
    }
  }

  private async prepare(): Promise<void> {
    const o = this.opts;
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(o.id) || o.id.startsWith(".")) {
      throw new StrataError("INVALID_ARGUMENT", `restore id ${JSON.stringify(o.id)} is not a plain name`, {
        hint: "use letters, digits, '.', '_' and '-'",
      });
    }
    if (o.streaming && (o.kind === "layer" || o.deferApply)) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        o.kind === "layer"
          ? "a layer apply cannot stream: it is one atomic batch"
          : "a deferred restore cannot stream: streaming applies batch after batch",
        { hint: "run it without streaming" },
      );
    }
    if (o.kind === "layer" && (!o.layer || !o.policy)) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `a layer apply needs ${o.layer ? "the CVD's policy" : "layer options (the removal set)"}`,
        { hint: "give `policy` (the user area is never touched) and `layer.removable`" },
      );
    }
    let rootPath: string;
    if (o.kind === "files") {
      if (!o.to || !o.paths?.length) {
        throw new StrataError("INVALID_ARGUMENT", "a files restore needs paths and a destination (to)", {
          hint: "give the snapshot paths to restore and the directory to write them into",
        });
      }
      rootPath = nodePath.resolve(o.to);
      mkdirSync(rootPath, { recursive: true });
    } else {
      if (!nodePath.isAbsolute(o.root)) {
        throw new StrataError("INVALID_ARGUMENT", `restore root ${o.root} is not absolute`, {
          subject: o.root,
        });
      }
      rootPath = o.root;
    }
    const st = lstatSync(rootPath, { throwIfNoEntry: false });
    if (!st?.isDirectory()) {
      throw new StrataError(
        st?.isSymbolicLink() ? "UNSAFE_PATH" : "NOT_FOUND",
        `restore root ${rootPath} is ${st ? (st.isSymbolicLink() ? "a symlink" : "not a directory") : "missing"}`,
        { subject: rootPath, hint: "give an existing directory (the endpoint's / or a mounted disk)" },
      );
    }
    const root = Buffer.from(realpathSync(rootPath));
    this.rootDev = st.dev;
    const stateDir = nodePath.resolve(o.stateDir);
    mkdirSync(nodePath.join(stateDir, RESTORE_DIR), { recursive: true, mode: 0o700 });
    this.idDir = nodePath.join(stateDir, RESTORE_DIR, o.id);
    if (existsSync(this.idDir)) {
      throw new StrataError("ALREADY_EXISTS", `restore ${o.id} has state in ${this.idDir}`, {
        subject: this.idDir,
        hint: "a restore with this id ran before and was interrupted: call recoverPendingRestore first",
      });
    }
    // Planning against a root that a committed journal is still to change would plan the wrong
    // changes (`files` writes elsewhere, into `to`).
    const waiting = o.kind === "files" ? [] : pendingRestores(stateDir);
    if (waiting.length) {
      throw new StrataError(
        "LOCKED",
        `restore ${waiting[0]} is committed and not applied yet (in ${nodePath.join(stateDir, RESTORE_DIR)})`,
        { subject: waiting[0], hint: "call recoverPendingRestore first: it applies the committed restore" },
      );
    }
    mkdirSync(this.idDir, { mode: 0o700 });
    this.created = true;
    writeFileSync(
      nodePath.join(this.idDir, "meta.json"),
      JSON.stringify({
        id: o.id,
        kind: o.kind,
        rootB64: root.toString("base64"),
        snapshot: this.source.snapshot.id,
      }),
      { mode: 0o600 },
    );
    fsyncPath(nodePath.join(this.idDir, "meta.json"));
    fsyncPath(nodePath.dirname(this.idDir));
    const stateDev = lstatSync(this.idDir).dev;
    const work = new Workdirs(this.idDir, o.id, root, stateDev);
    const owner = process.geteuid?.() === 0;
    this.env = {
      source: this.source,
      kind: o.kind,
      policy: o.policy,
      layer: o.kind === "layer" ? layerPlan(o.layer!, BigInt(Date.now()) * 1_000_000n) : undefined,
      root,
      owner,
      trustMtime: !!o.trustMtime,
      vouch: o.vouch,
      wholeDirs: !this.streaming,
      seeds: new SeedReader(this.source.chunker),
      trees: new TreeAhead(this.source, o.signal),
      work,
      protectedPaths: [Buffer.from(stateDir), Buffer.from(realpathSync(stateDir))],
      links: new Map(),
      counters: this.counters,
      countTotals: !this.streaming,
      creator: { uid: process.geteuid?.() ?? -1, umask: process.umask() },
      error: (p, m) => this.error(p, m),
      step: (p) => this.step(p),
      progress: () => this.progress(),
      signal: o.signal,
    };
    this.topItems = o.kind === "files" ? await this.filesItems(o.paths!) : await this.rootItems();
  }

  private async rootItems(): Promise<SnapItem[]> {
    const planner = new Planner(this.env, this.newBatchState(null), () => "in");
    return planner.listing(this.source.snapshot.root, Buffer.from("/"));
  }

  /** files: the requested entries, as the listing of a directory that is `to`. */
  private async filesItems(paths: string[]): Promise<SnapItem[]> {
    const out: SnapItem[] = [];
    for (const p of paths) {
      const abs = nodePath.posix.resolve("/", p);
      if (abs === "/") {
        out.push(...(await this.rootItems()));
        continue;
      }
      const item = await this.findItem(abs);
      if (!item) {
        throw new StrataError(
          "NOT_FOUND",
          `${abs} is not in snapshot ${this.source.snapshot.id.slice(0, 8)}`,
          {
            subject: abs,
            hint: "check the path (and the snapshot) and try again",
          },
        );
      }
      out.push(item);
    }
    out.sort((a, b) => Buffer.compare(a.node.name, b.node.name));
    for (let i = 1; i < out.length; i++) {
      if (out[i]!.node.name.equals(out[i - 1]!.node.name)) {
        throw new StrataError(
          "INVALID_ARGUMENT",
          `two paths to restore share the name ${displayPath(out[i]!.node.name)}`,
          { hint: "restore them one at a time, into different destinations" },
        );
      }
    }
    return out;
  }

  private newBatchState(budget: BatchState["budget"], deferredList: Buffer[][] | null = null): BatchState {
    const syncs = new SyncQueue(undefined, undefined, () => this.env.work.list.map((w) => w.path));
    this.fetcher = new Fetcher(
      this.source,
      syncs,
      { bytes: FETCH_BYTES, files: FETCH_FILES },
      this.opts.signal,
      this.workers(),
    );
    return {
      n: this.batches + 1,
      journal: null as unknown as JournalWriter,
      fetcher: this.fetcher,
      syncs,
      budget,
      stagedFiles: 0,
      stagedBytes: 0,
      putFiles: 0,
      putBytes: 0,
      nextStage: 0,
      deferred: deferredList,
      lastDone: [],
      settling: new Set(),
    };
  }

  /**
   * One atomic batch: plan and stage what `select` picks (from `cursor`,
   * until `budget`), commit, apply, clean up. Returns where it stopped.
   */
  private async batch(
    select: Selector,
    cursor: Buffer[] | null,
    budget: BatchState["budget"],
    deferredList: Buffer[][] | null,
  ): Promise<{ stopped: boolean; lastDone: Buffer[] }> {
    const b = this.newBatchState(budget, deferredList);
    const pending = nodePath.join(this.idDir, "journal.pending");
    b.journal = new JournalWriter(pending);
    const layer = this.opts.kind === "layer" ? this.opts.layer : undefined;
    const watched: StagedOp[] = [];
    const watch = layer?.beforeCommit ? layer.watch : undefined;
    if (watch) {
      b.journal.observer = (op) => {
        if (op.op === "meta") return;
        const rel = Buffer.from(op.pathB64, "base64");
        const abs = Buffer.concat([Buffer.from("/"), rel]);
        if (!watch(abs)) return;
        const w = this.env.work.list[op.work];
        watched.push(
          op.op === "put" && w
            ? { op: "put", path: abs, staged: Buffer.concat([w.path, Buffer.from(`/stage/${op.stage}`)]) }
            : { op: op.op, path: abs },
        );
      };
    }
    const planner = new Planner(this.env, b, select);
    let committed = false;
    try {
      this.setPhase("planning");
      const out = await planner.top(this.topItems, this.rootDev, cursor);
      planner.reportUnseenLiterals();
      const rootNode = this.source.snapshot.node;
      if (rootNode && this.opts.kind !== "files") planner.rootMeta(rootNode, out.dirty);
      this.setPhase("staging");
      await b.fetcher.drain();
      // Directories and symlinks queued last are made (or fail the batch) before what waits on them.
      await b.fetcher.created();
      await planner.settled();
      await b.syncs.drain();
      this.fetched += b.fetcher.fetchedBytes;
      this.fetcher = null;
      if (b.journal.count === 0) {
        b.journal.close();
        unlinkSync(pending);
        emptyWorkdirs(this.env.work.list);
        return { stopped: out.stopped, lastDone: b.lastDone };
      }
      this.setPhase("committing");
      await b.syncs.settled();
      for (const w of this.env.work.list) {
        // Every staged file and directory of this filesystem, in one call (SyncQueue.viaSyncfs).
        if (b.syncs.viaSyncfs) native.syncfs(w.path);
        fsyncPath(Buffer.concat([w.path, Buffer.from("/stage")]));
        fsyncPath(w.path);
      }
      if (layer?.beforeCommit) {
        // The last point where the root is the old state (layers.md, "Kernel hooks before the commit").
        this.opts.signal?.throwIfAborted();
        await layer.beforeCommit(watched);
        this.opts.signal?.throwIfAborted();
      }
      this.step("commit");
      b.journal.commit(nodePath.join(this.idDir, "journal"), this.idDir);
      committed = true;
      this.batches++;
      if (this.opts.deferApply) {
        // The restart point: recoverPendingRestore applies it (layers.md, "Engine kind `layer`").
        this.pending = true;
        return { stopped: out.stopped, lastDone: b.lastDone };
      }
      this.setPhase("applying");
      const ctx: ApplyContext = { root: this.env.root, work: this.env.work.list, owner: this.env.owner };
      await applyCommitted(this.idDir, ctx, {
        step: (p) => this.step(p),
        error: (path, e) => {
          if (isStrataError(e, "UNSAFE_PATH")) this.unsafe.push(e);
          this.error(path, e.message);
        },
        final: false,
      });
      this.counters.restoredFiles += b.putFiles;
      this.counters.restoredBytes += b.putBytes;
      this.counters.bytes += b.putBytes;
      this.progress(true);
      return { stopped: out.stopped, lastDone: b.lastDone };
    } catch (e) {
      b.journal.close();
      // No write may be in flight (nor a descriptor open) when the stage goes.
      await b.fetcher.abandon();
      await planner.settled();
      if (!committed) this.rollback();
      else this.journalLeft = true;
      throw e;
    }
  }

  /**
   * The worker threads that verify and write fetched chunks, started at the
   * first batch that can use them (a source that hands over chunks in wire
   * form) and stopped when the run ends.
   */
  private workers(): RestorePool | null {
    if (!this.source.fetchChunkFrames || this.opts.workers === 0) return null;
    // Four jobs per worker (of at most 512 KiB received each): the main thread, which reads the
    // chunk stream, also walks the snapshot, and two left the worker idle through its bursts.
    this.pool ??= new RestorePool(null, this.opts.workers ?? restoreWorkers(), 4);
    return this.pool;
  }

  /** Nothing committed: the stage goes, the root is as it was. */
  private rollback(): void {
    removeWorkdirs(this.idDir, this.env?.work.list ?? []);
  }

  /** After the last batch: workdirs and the restore's state directory go. */
  private finish(): void {
    removeWorkdirs(this.idDir, this.env.work.list);
  }

  private budget(): { files: number; bytes: number } {
    return {
      files: this.opts.batchLimits?.files ?? BATCH_FILES,
      bytes: this.opts.batchLimits?.bytes ?? BATCH_BYTES,
    };
  }

  /** Run `select` to completion in bounded batches, serving fetch wishes between them. */
  private async pass(
    select: Selector,
    deferredList: Buffer[][] | null,
    serve: boolean,
    bounded = true,
  ): Promise<void> {
    let cursor: Buffer[] | null = null;
    for (;;) {
      this.opts.signal?.throwIfAborted();
      if (serve) await this.serveWishes();
      const out = await this.batch(select, cursor, bounded ? this.budget() : null, deferredList);
      if (this.unsafe.length) throw this.unsafe[0];
      if (!out.stopped) return;
      cursor = out.lastDone;
    }
  }

  private async serveWishes(): Promise<void> {
    while (this.wishes.length) {
      const w = this.wishes.shift()!;
      await this.pass(pathSelector(w.path), null, false);
      w.done.resolve();
    }
  }

  private async stream(): Promise<void> {
    const minimal = minimalSelector(this.opts.minimalSet ?? DEFAULT_MINIMAL_SET);
    // The minimal set is one atomic batch (restore.md), however large.
    await this.pass(minimal, null, false, false);
    this.isUsable = true;
    this.usable.resolve();
    this.setPhase("streaming");
    await this.countTotals(this.topItems);
    const later: Buffer[][] = [];
    await this.pass((p) => (minimal(p) === "in" ? "out" : "in"), later, true);
    for (const comps of later) {
      const p = Buffer.concat(comps.flatMap((c) => [Buffer.from("/"), c]));
      await this.pass(pathSelector(p), null, true);
    }
    await this.serveWishes();
  }

  /** Streaming: files and bytes in scope, from the trees alone (planning meets them batch by batch). */
  private async countTotals(items: SnapItem[]): Promise<void> {
    const c = this.counters;
    for (const it of items) {
      if (classScope(this.env, it.snapPath, false, false) !== true) continue;
      if (it.node.type === "dir") {
        if (it.subtree) {
          const planner = new Planner(this.env, this.newBatchState(null), () => "in");
          await this.countTotals(await planner.listing(it.subtree, it.snapPath));
        }
      } else {
        c.totalFiles++;
        c.totalBytes += it.node.type === "file" ? it.node.size : 0;
      }
    }
    this.fetcher = null;
  }
}

/**
 * Worker threads for fetched chunks by default: one per core but one. The
 * main thread (requests, planning, stage files, metadata) keeps a core
 * busy; on two cores a second worker only cost its start-up and memory
 * (restore-file of a Debian root: ~0.3 s of CPU and 15 MB more, no faster).
 */
function restoreWorkers(): number {
  return Math.max(1, Math.min(availableParallelism() - 1, 4));
}

function minimalSelector(globs: readonly string[]): Selector {
  const compiled = globs.map((g) =>
    g
      .split("/")
      .filter(Boolean)
      .map((s) => globToRegExp(s)),
  );
  return (snapPath) => {
    const segs = snapPath.toString("utf8").split("/").filter(Boolean);
    let through = false;
    for (const g of compiled) {
      if (segs.length >= g.length) {
        if (g.every((re, i) => re.test(segs[i]!))) return "in";
      } else if (segs.every((s, i) => g[i]!.test(s))) through = true;
    }
    return through ? "through" : "out";
  };
}

/** PATH, what is below it, and the directories on the way to it. */
function pathSelector(target: Buffer): Selector {
  if (target.length === 1) return () => "in";
  const withSlash = Buffer.concat([target, Buffer.from("/")]);
  return (snapPath) => {
    if (snapPath.equals(target) || snapPath.subarray(0, withSlash.length).equals(withSlash)) return "in";
    const p = Buffer.concat([snapPath, Buffer.from("/")]);
    if (target.subarray(0, p.length).equals(p)) return "through";
    return "out";
  };
}

function removeWorkdirs(idDir: string, work: readonly Workdir[]): void {
  for (const w of work) {
    // Only directories we named: a damaged registry must not remove anything else.
    const base = w.path.subarray(w.path.lastIndexOf(0x2f) + 1).toString("latin1");
    if (w.path.toString() === idDir || base.startsWith(WORKDIR_PREFIX)) {
      removeTree(Buffer.concat([w.path, Buffer.from("/stage")]));
      removeTree(Buffer.concat([w.path, Buffer.from("/trash")]));
      if (w.path.toString() !== idDir) removeTree(w.path);
    }
  }
  const journal = nodePath.join(idDir, "journal");
  if (existsSync(journal)) {
    unlinkSync(journal);
    fsyncPath(idDir);
  }
  removeTree(idDir);
}

interface ApplyHooks {
  step(phase: RestoreStep["phase"]): void;
  error(path: string, e: StrataError): void;
  /** Remove the workdirs and state at the end (recovery) instead of emptying them for the next batch. */
  final: boolean;
}

/**
 * Apply the committed journal of `idDir` (again), make the renames durable,
 * then clean up: trash and stage go first, the journal last. An operation
 * refused as unsafe, or metadata that cannot be set, is reported and the
 * rest goes on; any other failure leaves the journal for the next start.
 */
async function applyCommitted(idDir: string, ctx: ApplyContext, hooks: ApplyHooks): Promise<void> {
  const journal = nodePath.join(idDir, "journal");
  const touched = new Set<string>();
  let n = 0;
  for await (const op of readJournal(journal)) {
    hooks.step("apply");
    const rel = Buffer.from(op.pathB64, "base64");
    try {
      applyOp(ctx, op, n);
    } catch (e) {
      const shown = displayPath(rel.length ? rel : Buffer.from("."));
      if (isStrataError(e, "UNSAFE_PATH")) hooks.error(shown, e);
      else if (op.op === "meta") {
        hooks.error(
          shown,
          isStrataError(e)
            ? e
            : new StrataError("IO_ERROR", `setting metadata of ${shown}: ${(e as Error).message}`),
        );
      } else throw e;
    }
    if (op.op !== "meta" && rel.length)
      touched.add(parentOf(Buffer.concat([ctx.root, Buffer.from("/"), rel])).toString("latin1"));
    n++;
  }
  for (const d of touched) {
    try {
      fsyncPath(Buffer.from(d, "latin1"));
    } catch {
      // gone again (a later operation trashed it): nothing to make durable
    }
  }
  hooks.step("cleanup");
  if (hooks.final) removeWorkdirs(idDir, ctx.work);
  else {
    emptyWorkdirs(ctx.work);
    unlinkSync(journal);
    fsyncPath(idDir);
  }
}

/** Ids of the restores of `stateDir` whose journal is committed and not (fully) applied. */
function pendingRestores(stateDir: string): string[] {
  const dir = nodePath.join(nodePath.resolve(stateDir), RESTORE_DIR);
  let ids: string[];
  try {
    ids = readdirSync(dir);
  } catch {
    return [];
  }
  return ids.filter((id) => existsSync(nodePath.join(dir, id, "journal"))).sort();
}

/**
 * Whether a committed restore waits in `stateDir` (a `deferApply` run, or
 * an apply a crash interrupted): `recoverPendingRestore` applies it.
 */
export function hasPendingRestore(stateDir: string): boolean {
  return pendingRestores(stateDir).length > 0;
}

/**
 * At agent start, before anything else: finish or undo every restore a
 * crash interrupted. A committed journal is applied again (its operations
 * are idempotent) and cleaned up; a stage without a journal is removed.
 * Either way the root is then at the old or the new state of that batch.
 * `root` is used when the restore's own record of its root is unreadable.
 */
export async function recoverPendingRestore(stateDir: string, root: string): Promise<PendingOutcome[]> {
  const dir = nodePath.join(nodePath.resolve(stateDir), RESTORE_DIR);
  let ids: string[];
  try {
    ids = readdirSync(dir);
  } catch {
    return [{ outcome: "none" }];
  }
  const out: PendingOutcome[] = [];
  for (const id of ids.sort()) {
    const idDir = nodePath.join(dir, id);
    if (!lstatSync(idDir).isDirectory()) continue;
    const work = Workdirs.read(idDir);
    if (!existsSync(nodePath.join(idDir, "journal"))) {
      removeWorkdirs(idDir, work);
      out.push({ outcome: "rolled-back", id });
      continue;
    }
    let rootBuf = Buffer.from(nodePath.resolve(root));
    try {
      const meta = JSON.parse(readFileSync(nodePath.join(idDir, "meta.json"), "utf8")) as {
        rootB64?: string;
      };
      if (meta.rootB64) rootBuf = Buffer.from(meta.rootB64, "base64");
    } catch {
      // the given root
    }
    const errors: { path: string; message: string }[] = [];
    await applyCommitted(
      idDir,
      { root: rootBuf, work, owner: process.geteuid?.() === 0 },
      { step: () => {}, error: (path, e) => errors.push({ path, message: e.message }), final: true },
    );
    out.push({ outcome: "rolled-forward", id, ...(errors.length ? { errors } : {}) });
  }
  return out.length ? out : [{ outcome: "none" }];
}
