/**
 * One upload of the endpoint's protected area into its CVD, as the agent
 * side of docs/design/protocol.md: create (or resume) a session, walk the
 * root under the policy, ask the server about every chunk it reads with a
 * proof of possession, send only what the server lacks, send the trees it
 * does not inherit (deepest first, each after the chunks it names are
 * acknowledged), and commit.
 *
 * Memory is bounded: at most two chunk streams of STREAM_BYTES are held,
 * the walk's pool waits while they are full, and the set of ids already
 * settled in this session is capped (past the cap the server answers
 * `owned`, which is correct, only slower).
 */
import { createHash } from "node:crypto";
import { hostname as osHostname } from "node:os";
import * as nodePath from "node:path";
import {
  type BlobId,
  type ChunkerParams,
  type CompiledPolicy,
  chunkIdsOf,
  type FsNode,
  StrataError,
  type TreeId,
} from "@strata/core";
import { trimMemory } from "@strata/fs";
import {
  type BackupError,
  type BackupProgress,
  type ChunkSink,
  type EncodedBlob,
  encodeChunkFrame,
  encodeTreeFrame,
  type FileCache,
  type SnapshotStats,
  TreeWalker,
  type WalkHint,
  type WalkTarget,
  WireCodec,
} from "@strata/repo";
import type { DirtySet } from "./watcher.js";

/** How the uploader talks to the server; paths are relative to /api/v1. */
export interface UploadTransport {
  json<T>(method: "GET" | "POST" | "PUT" | "DELETE", path: string, body?: unknown): Promise<T>;
  /** PUT a binary frame stream (Content-Type application/vnd.strata.frames). */
  frames<T>(path: string, body: AsyncIterable<Buffer>, bytes: number): Promise<T>;
}

export interface SessionView {
  session: string;
  resumed: boolean;
  nonce: string;
  parent: string | null;
  kind: string;
  chunker: ChunkerParams;
  limits: {
    maxBatch: number;
    maxChunkFrame: number;
    maxTreeFrame: number;
    maxStreamBytes: number;
    maxConcurrentStreams: number;
  };
}

export interface UploadOptions {
  transport: UploadTransport;
  cvdId: string;
  /** The endpoint's root directory (`/`, or where it is mounted). */
  root: string;
  policy: CompiledPolicy;
  /** The CVD's newest snapshot, or null for the first upload. */
  parent: string | null;
  /** pre-restore / pre-apply: a safety snapshot, kept by retention for a week (restore.md). */
  kind?: "centralize" | "upload" | "pre-apply" | "pre-restore" | "capture-pre" | "capture-post";
  hostname?: string;
  fileCache?: FileCache | null;
  threads?: number;
  /** zstd level for the wire (default 3). */
  level?: number;
  signal?: AbortSignal;
  onProgress?: (p: UploadProgress) => void;
  onError?: (e: BackupError) => void;
  /** Paces request bodies (the policy's bandwidth cap); default: unpaced. */
  pace?: (body: AsyncIterable<Buffer>) => AsyncIterable<Buffer>;
  /** Bytes per chunk stream (default 16 MiB, about one pack). */
  streamBytes?: number;
  /**
   * What changed since the last upload, as the watcher says (endpoint
   * paths). Absent or "full": everything is walked. "dirs": only those
   * directories are read, when the file cache can vouch for the rest
   * (docs/design/agent.md, "Incremental uploads").
   */
  dirty?: DirtySet | null;
  /**
   * What decides which files are protected here: the policy and what its
   * macros expanded to (homes, swap files, state directory). A change
   * makes the next upload walk everything. Default: the policy alone.
   */
  policyKey?: string;
  /** Walk everything at least this often, whatever the watcher says (default 24 h). */
  fullWalkEveryMs?: number;
  /**
   * A stream the server refuses because it is receiving too many (LOCKED)
   * is sent again after this wait, doubled each time up to 8×, for up to
   * `busyRetries` attempts (defaults 2000 ms and 30: about 6 minutes).
   */
  busyWaitMs?: number;
  busyRetries?: number;
}

/** How an upload found what changed. */
export interface UploadScan {
  /** True: every directory was walked (`reason` says why); false: the dirty set was followed. */
  full: boolean;
  reason: string | null;
  /** Directories the watcher named (0 for a full walk). */
  dirtyDirs: number;
  /** Directories listed; a hinted upload lists the dirty ones, and new ones below them. */
  dirsRead: number;
  /** Unchanged subtrees taken from the file cache without being read. */
  dirsReused: number;
}

export interface UploadProgress extends BackupProgress {
  bytesSent: number;
  chunksSent: number;
  chunksProven: number;
}

export interface UploadResult {
  snapshot: string;
  session: string;
  resumed: boolean;
  stats: SnapshotStats;
  errors: BackupError[];
  bytesSent: number;
  chunksSent: number;
  chunksProven: number;
  treesSent: number;
  /** Streams sent again because the server was receiving too many (LOCKED). */
  busyRetries: number;
  transaction: unknown;
  scan: UploadScan;
}

/** File-cache meta key: the snapshot the cache's completed generation was committed as. */
export const CACHE_PARENT = "cvd.snapshot";
/** File-cache meta key: that snapshot's root tree id. */
export const CACHE_ROOT = "cvd.root";
/** File-cache meta key: the fingerprint of the root and policy that snapshot was walked under. */
export const CACHE_SCOPE = "cvd.scope";
/** File-cache meta key: when the last full walk that was committed started (ISO time). */
export const CACHE_FULL_AT = "cvd.fullWalkAt";
/** A full walk at least this often (docs/design/agent.md, "Incremental uploads"). */
export const FULL_WALK_EVERY_MS = 24 * 60 * 60_000;

const STREAM_BYTES = 16 * 1024 * 1024;
const TREE_STREAM_BYTES = 4 * 1024 * 1024;
const SETTLED_MAX = 200_000;

type HaveAnswer = "owned" | "accepted" | "prove" | "send";

/** Pending `have` question: ids with proofs, answered as a set of ids to send. */
interface Question {
  ids: readonly BlobId[];
  proofs: Buffer | null;
  resolve: (need: Set<BlobId>) => void;
  reject: (e: unknown) => void;
}

class RemoteSink implements ChunkSink {
  /** Ids sent, accepted or owned in this session (bounded). */
  private settled = new Set<BlobId>();
  /** Ids this run must send and has not yet buffered: trees naming them wait. */
  private readonly outstanding = new Map<BlobId, { done: Promise<void>; resolve: () => void }>();
  private frames: Buffer[] = [];
  private frameBytes = 0;
  private frameIds: BlobId[] = [];
  private trees: Buffer[] = [];
  private treeBytes = 0;
  private chain: Promise<void> = Promise.resolve();
  private inFlightBytes = 0;
  private readonly roomWaiters: (() => void)[] = [];
  private questions: Question[] = [];
  private asking = false;
  private failed: unknown = null;
  private readonly codec: WireCodec;
  readonly counts = { bytesSent: 0, chunksSent: 0, chunksProven: 0, treesSent: 0, busyRetries: 0 };

  constructor(
    private readonly o: UploadOptions,
    private readonly view: SessionView,
  ) {
    this.codec = new WireCodec(o.level ?? 3);
  }

  private get streamBytes() {
    return Math.min(this.o.streamBytes ?? STREAM_BYTES, this.view.limits.maxStreamBytes);
  }

  private check(): void {
    if (this.failed) throw this.failed;
    this.o.signal?.throwIfAborted();
  }

  private settle(id: BlobId): void {
    if (this.settled.size >= SETTLED_MAX) this.settled = new Set();
    this.settled.add(id);
  }

  async reserve(ids: readonly BlobId[], proofs: Buffer | null): Promise<Set<BlobId>> {
    this.check();
    // Back-pressure: at most two streams' worth of frames waiting to go.
    while (this.frameBytes + this.inFlightBytes > 2 * this.streamBytes && !this.failed)
      await new Promise<void>((r) => this.roomWaiters.push(r));
    this.check();
    return new Promise<Set<BlobId>>((resolve, reject) => {
      this.questions.push({ ids, proofs, resolve, reject });
      if (!this.asking) {
        this.asking = true;
        setImmediate(() => void this.ask());
      }
    });
  }

  /** Answer queued questions with `have` requests of up to maxBatch ids. */
  private async ask(): Promise<void> {
    try {
      while (this.questions.length) {
        const qs: Question[] = [];
        let n = 0;
        while (this.questions.length && n + this.questions[0]!.ids.length <= this.view.limits.maxBatch) {
          const q = this.questions.shift()!;
          n += q.ids.length;
          qs.push(q);
        }
        if (!qs.length) qs.push(this.questions.shift()!); // a single oversized question (cannot happen: workers ask per buffer)
        try {
          const entries: { id: BlobId; proof?: string }[] = [];
          const index = new Map<BlobId, number>();
          for (const q of qs) {
            q.ids.forEach((id, i) => {
              if (this.settled.has(id) || this.outstanding.has(id) || index.has(id)) return;
              index.set(id, entries.length);
              entries.push(
                q.proofs ? { id, proof: q.proofs.subarray(i * 32, i * 32 + 32).toString("base64") } : { id },
              );
            });
          }
          const status: HaveAnswer[] = [];
          for (let i = 0; i < entries.length; i += this.view.limits.maxBatch) {
            const part = entries.slice(i, i + this.view.limits.maxBatch);
            const r = await this.o.transport.json<{ status: HaveAnswer[] }>(
              "POST",
              `/uploads/${this.view.session}/have`,
              { chunks: part },
            );
            if (!Array.isArray(r.status) || r.status.length !== part.length)
              throw new StrataError("INTERNAL", "the server's have answer does not match the question");
            status.push(...r.status);
          }
          const toSend = new Set<BlobId>();
          for (const [id, i] of index) {
            const a = status[i];
            if (a === "send" || a === "prove") toSend.add(id);
            else {
              if (a === "accepted") this.counts.chunksProven++;
              this.settle(id);
            }
          }
          // Claim: the first question naming an id to send gets it.
          for (const id of toSend) {
            let resolve!: () => void;
            const done = new Promise<void>((r) => {
              resolve = r;
            });
            this.outstanding.set(id, { done, resolve });
          }
          for (const q of qs) {
            const need = new Set<BlobId>();
            for (const id of q.ids) {
              if (toSend.delete(id)) need.add(id);
            }
            q.resolve(need);
          }
        } catch (e) {
          for (const q of qs) q.reject(e);
          this.fail(e);
        }
      }
    } finally {
      this.asking = false;
    }
  }

  release(ids: Iterable<BlobId>): void {
    for (const id of ids) {
      const o = this.outstanding.get(id);
      if (o) {
        this.outstanding.delete(id);
        o.resolve();
      }
    }
  }

  addEncoded(b: EncodedBlob): void {
    this.check();
    const id = Buffer.from(b.id, "hex");
    this.frames.push(...encodeChunkFrame(id, b.compressed, b.data));
    this.frameBytes += 37 + b.data.length;
    this.frameIds.push(b.id);
    // In a buffer now: any tree naming it is queued after this buffer's
    // stream, and no later question sends it again (a failed stream fails
    // the whole upload; the next one starts a fresh sink).
    this.settle(b.id);
    const o = this.outstanding.get(b.id);
    this.outstanding.delete(b.id);
    o?.resolve();
    if (this.frameBytes >= this.streamBytes) this.flushChunks();
  }

  private fail(e: unknown): void {
    if (!this.failed) this.failed = e;
    for (const w of this.roomWaiters.splice(0)) w();
    for (const o of this.outstanding.values()) o.resolve();
  }

  /** Queue the buffered chunk frames as one stream. */
  private flushChunks(): void {
    if (!this.frames.length) return;
    const frames = this.frames;
    const ids = this.frameIds;
    const bytes = this.frameBytes;
    this.frames = [];
    this.frameIds = [];
    this.frameBytes = 0;
    this.inFlightBytes += bytes;
    this.chain = this.chain.then(async () => {
      if (this.failed) return;
      try {
        await this.send(`/uploads/${this.view.session}/chunks`, frames, bytes);
        this.counts.bytesSent += bytes;
        this.counts.chunksSent += ids.length;
      } catch (e) {
        this.fail(e);
      } finally {
        this.inFlightBytes -= bytes;
        for (const w of this.roomWaiters.splice(0)) w();
        // The stream's frames, and the blobs the workers sent for them, are
        // free now: give the pages back (as a local backup does after each pack).
        trimMemory();
      }
    });
  }

  private async send(path: string, frames: Buffer[], bytes: number): Promise<void> {
    const wait = this.o.busyWaitMs ?? 2000;
    const tries = this.o.busyRetries ?? 30;
    for (let attempt = 1; ; attempt++) {
      const body = async function* () {
        for (const f of frames) yield f;
      };
      const paced = this.o.pace ? this.o.pace(body()) : body();
      try {
        await this.o.transport.frames(path, paced, bytes);
        return;
      } catch (e) {
        // The server's stream limit (all agents together): wait and send again.
        // Nothing of a refused stream was stored; a stream that was cut is not retried here.
        // Also a stream of this session still being received after its connection was cut.
        if ((e as { code?: string }).code !== "LOCKED" || attempt >= tries) throw e;
        this.counts.busyRetries++;
        const ms = wait * 2 ** Math.min(attempt - 1, 3) * (0.75 + Math.random() / 2);
        await new Promise((r) => setTimeout(r, ms));
        this.check();
      }
    }
  }

  /** Add a tree; its chunks must be acknowledged before it goes. */
  async saveTree(id: TreeId, enc: Buffer, path: Buffer, nodes: readonly FsNode[]): Promise<void> {
    this.check();
    for (const n of nodes) {
      if (n.type !== "file") continue;
      for (const c of chunkIdsOf(n)) {
        const o = this.outstanding.get(c);
        if (o) await o.done;
      }
    }
    this.check();
    const w = this.codec.encode(id as unknown as BlobId, "tree", enc);
    this.trees.push(...encodeTreeFrame(Buffer.from(id, "hex"), path, w.compressed, w.data));
    this.treeBytes += 41 + path.length + w.data.length;
    if (this.treeBytes >= TREE_STREAM_BYTES) this.flushTrees();
  }

  /** Queue buffered trees after every chunk stream queued so far. */
  flushTrees(): void {
    this.flushChunks();
    if (!this.trees.length) return;
    const frames = this.trees;
    const bytes = this.treeBytes;
    this.trees = [];
    this.treeBytes = 0;
    this.chain = this.chain.then(async () => {
      if (this.failed) return;
      try {
        await this.send(`/uploads/${this.view.session}/trees`, frames, bytes);
        this.counts.bytesSent += bytes;
        this.counts.treesSent += frames.length / 2;
      } catch (e) {
        this.fail(e);
      }
    });
  }

  /** Send everything buffered and wait for it. */
  async drain(): Promise<void> {
    this.flushTrees();
    await this.chain;
    if (this.failed) throw this.failed;
  }
}

/**
 * Upload the protected area once and commit a snapshot. Throws on a
 * transport or server error; the next call resumes the same session, and
 * what the server acknowledged is not sent again.
 */
export async function uploadOnce(o: UploadOptions): Promise<UploadResult> {
  const started = new Date();
  const view = await o.transport.json<SessionView>("POST", `/cvds/${o.cvdId}/uploads`, {
    parent: o.parent,
    kind: o.kind ?? (o.parent ? "upload" : "centralize"),
  });
  const sink = new RemoteSink(o, view);
  const cache = o.fileCache ?? null;
  // Cache rows stand for the snapshot the cache was committed as: only when
  // that is the session's parent are their files inherited without reading.
  const trusted = cache !== null && view.parent !== null && cache.getMeta(CACHE_PARENT) === view.parent;
  const target: WalkTarget = {
    sink,
    workerInit: {
      key: null,
      proofKey: new Uint8Array(Buffer.from(view.nonce, "base64")),
      chunker: view.chunker,
      level: o.level ?? 3,
    },
    // Untrusted rows are not inherited: their files are read again (and proved, not sent).
    hasBlobs: async () => new Set(),
    saveTree: (id, enc, path, nodes) => sink.saveTree(id, enc, path, nodes),
    bytesAdded: () => sink.counts.bytesSent,
  };
  const scope = createHash("sha256")
    .update(JSON.stringify({ root: nodePath.resolve(o.root), policy: o.policyKey ?? o.policy.policy }))
    .digest("hex");
  const plan = planScan(o, cache, view.parent, scope, started.getTime());
  const walker = new TreeWalker(target, {
    hint: plan.hint,
    filter: {
      excluded: (p) => o.policy.classify(p) === "excluded",
      descend: (p) => o.policy.shouldDescend(p),
    },
    fileCache: cache,
    threads: o.threads,
    trustedGen: trusted ? cache.completedGen() : 0,
    signal: o.signal,
    onError: o.onError,
    onProgress: o.onProgress
      ? (p) =>
          o.onProgress?.({
            ...p,
            bytesSent: sink.counts.bytesSent,
            chunksSent: sink.counts.chunksSent,
            chunksProven: sink.counts.chunksProven,
          })
      : undefined,
  });
  cache?.beginRun();
  const { tree, stats, errors, scan } = await walker.walkRoot(o.root);
  await sink.drain();
  stats.durationMs = Date.now() - started.getTime();
  const committed = await o.transport.json<{ snapshot: string; transaction: unknown }>(
    "POST",
    `/uploads/${view.session}/commit`,
    {
      root: tree,
      time: started.toISOString(),
      hostname: o.hostname ?? osHostname(),
      paths: ["/"],
      stats,
      errors: errors.slice(0, 1000).map((e) => ({
        pathB64: Buffer.from(e.path).toString("base64"),
        path: e.path,
        message: e.message,
      })),
    },
  );
  const full = scan.mode === "full";
  if (cache) {
    // A hinted walk touched only what changed: every other row still
    // describes the new snapshot and stays.
    cache.endRun({ sweep: full });
    cache.setMeta(CACHE_ROOT, tree);
    cache.setMeta(CACHE_SCOPE, scope);
    if (full) cache.setMeta(CACHE_FULL_AT, started.toISOString());
    cache.setMeta(CACHE_PARENT, committed.snapshot);
  }
  return {
    snapshot: committed.snapshot,
    session: view.session,
    resumed: view.resumed,
    stats,
    errors,
    ...sink.counts,
    transaction: committed.transaction,
    scan: {
      full,
      reason: full ? (scan.reason ?? plan.reason) : null,
      dirtyDirs: full ? 0 : (plan.hint?.dirs.length ?? 0),
      dirsRead: scan.dirsRead,
      dirsReused: scan.dirsReused,
    },
  };
}

/**
 * Whether this upload may follow the dirty set, or why it walks
 * everything. The rules are docs/design/agent.md's "Incremental uploads".
 */
export function planScan(
  o: Pick<UploadOptions, "dirty" | "kind" | "fullWalkEveryMs">,
  cache: FileCache | null,
  parent: string | null,
  scope: string,
  now: number,
): { hint: WalkHint | null; reason: string | null } {
  const full = (reason: string) => ({ hint: null, reason });
  const d = o.dirty;
  if (!d) return full("no list of changes was given");
  if (d.kind === "full") return full(d.reason);
  if (o.kind && o.kind !== "upload") return full(`a ${o.kind} snapshot walks everything`);
  if (!cache) return full("there is no file cache");
  if (parent === null) return full("the first upload walks everything");
  if (cache.getMeta(CACHE_PARENT) !== parent)
    return full("the parent snapshot is not the last one this agent committed");
  const root = cache.getMeta(CACHE_ROOT);
  if (!root || !/^[0-9a-f]{64}$/.test(root))
    return full("the file cache does not know the parent snapshot's tree");
  if (cache.getMeta(CACHE_SCOPE) !== scope)
    return full("the upload policy (or what it protects here, or the root) changed");
  const every = o.fullWalkEveryMs ?? FULL_WALK_EVERY_MS;
  const last = Date.parse(cache.getMeta(CACHE_FULL_AT) ?? "");
  if (!Number.isFinite(last) || now - last >= every || now < last)
    return full(
      `the periodic full walk is due (every ${every >= 3_600_000 ? `${Math.round(every / 3_600_000)} h` : `${Math.round(every / 60_000)} min`})`,
    );
  return { hint: { parentRoot: root as TreeId, dirs: d.dirs }, reason: null };
}
