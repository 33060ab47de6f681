/**
 * The server side of the upload protocol (docs/design/protocol.md): upload
 * sessions, the dedup question with proofs of possession, chunk and tree
 * streams checked against the ownership rules, and the commit. Callers
 * (the HTTP layer) have already established that `cvdId` is the calling
 * endpoint's own CVD; every session lookup here checks that the session
 * belongs to that CVD and answers NOT_FOUND otherwise.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { TreeAtPath, UploadCounters, UploadSessionRecord, UploadStore } from "@strata/catalog";
import {
  applyRetention,
  type BlobId,
  chunkIdsOf,
  compilePolicy,
  decodeTree,
  type FsNode,
  type PolicyPreview,
  PolicyPreviewBuilder,
  type RetentionCounts,
  type SnapshotId,
  StrataError,
  type TreeId,
  type UploadPolicy,
} from "@strata/core";
import { validateName } from "@strata/fs";
import type { CvdSnapshotSummary } from "@strata/protocol";
import {
  ByteReader,
  boundedDecompress,
  emptySnapshotStats,
  FLAG_ZSTD,
  holdLease,
  leaseHolder,
  MAX_BATCH,
  type Repository,
  readChunkFrame,
  readTreeFrame,
  type SnapshotRecord,
  type SnapshotStats,
  TREE_DELTA_MIN,
} from "@strata/repo";
import type { AuditService } from "./audit-service.js";
import type { Clock } from "./context.js";
import { Lru } from "./lru.js";

export const UPLOAD_KINDS = [
  "centralize",
  "upload",
  "pre-apply",
  "pre-restore",
  "capture-pre",
  "capture-post",
] as const;
/** Snapshots taken before a risky operation: retention keeps them this long whatever its counts. */
export const SAFETY_KINDS: readonly string[] = ["pre-apply", "pre-restore"];
/**
 * The two ends of an app capture (docs/design/layers.md, "App layer"):
 * kept like safety snapshots, so a capture left open over a busy hour of
 * uploads can still be finished.
 */
export const CAPTURE_KINDS: readonly string[] = ["capture-pre", "capture-post"];
export const SAFETY_KEEP_MS = 7 * 24 * 3_600_000;
export type UploadKind = (typeof UPLOAD_KINDS)[number];

export interface UploadLimits {
  maxBatch: number;
  maxTreeFrame: number;
  maxStreamBytes: number;
  maxConcurrentStreams: number;
  /**
   * Streams received at once by this server node, all sessions together.
   * Each costs buffers, a worker's share of the CPU (every chunk is
   * decompressed and hashed) and catalog writes; past the node's cores more
   * only add memory and latency. Over it a stream is refused with LOCKED
   * (429, Retry-After) and the agent sends it again after the wait.
   */
  maxServerStreams: number;
  sessionTtlMs: number;
  /** Failed proofs in one session that get an audit record (once). */
  failedProofAudit: number;
}

export const DEFAULT_UPLOAD_LIMITS: UploadLimits = {
  maxBatch: MAX_BATCH,
  maxTreeFrame: 64 * 1024 * 1024,
  maxStreamBytes: 256 * 1024 * 1024,
  maxConcurrentStreams: 2,
  maxServerStreams: 8,
  sessionTtlMs: 7 * 86_400_000,
  failedProofAudit: 1000,
};

/** Seconds an agent waits before sending a stream the server's limit refused. */
export const STREAM_RETRY_AFTER_S = 2;

/** Tag that ties a snapshot to its CVD (kept in the snapshot object, so a rebuilt catalog keeps it). */
export const cvdTag = (cvdId: string) => `cvd:${cvdId}`;

/**
 * The pin holder of the chunks the server sent to a CVD's endpoint through
 * a restore session on a layer image (docs/design/layers.md, "Ownership of
 * what an apply brought"): its next upload owns them as if it had proved
 * them. Only the server's own sending puts an id here, so knowing a hash
 * still grants nothing. The commit of the CVD's next upload drops them.
 */
export const sentToCvdHolder = (cvdId: string) => `sent:${cvdId}`;

export interface SessionView {
  session: string;
  resumed: boolean;
  state: UploadSessionRecord["state"];
  nonce: string;
  parent: string | null;
  kind: string;
  chunker: Repository["config"]["chunker"];
  compression: { algorithm: "zstd"; maxLevel: number };
  limits: {
    maxBatch: number;
    maxChunkFrame: number;
    maxTreeFrame: number;
    maxStreamBytes: number;
    maxConcurrentStreams: number;
  };
  expiresAt: string;
}

export interface SessionStatus {
  session: string;
  state: UploadSessionRecord["state"];
  parent: string | null;
  chunksPossessed: number;
  treesUploaded: number;
  bytesReceived: number;
  snapshot: string | null;
  expiresAt: string;
}

export interface HaveEntry {
  id: string;
  proof?: string;
}
export type HaveAnswer = "owned" | "accepted" | "prove" | "send";

export interface CommitRequest {
  root: string;
  time: string;
  hostname: string;
  paths?: string[];
  tags?: string[];
  stats?: Partial<SnapshotStats>;
  errors?: { pathB64?: string; path?: string; code?: string; message: string }[];
  /** Files of this upload with at least one chunk the server did not have (the agent's count). */
  uniqueFiles?: number;
}

export interface TransactionView {
  id: string;
  cvd: string;
  /** An upload kind (centralize, upload, pre-apply) or `restore`. */
  kind: string;
  /** Uploads: open, committed, aborted, expired. Restores: open, closed, expired. */
  state: string;
  snapshot: string | null;
  startedAt: string;
  finishedAt: string | null;
  durationMs: number | null;
  chunksSent: number;
  chunksProven: number;
  treesUploaded: number;
  bytesSent: number;
  retries: number;
  changedFiles: number | null;
  uniqueFiles: number | null;
  errors: number | null;
  /** Restores: `endpoint:ep_…` or `user:NAME`. */
  openedBy?: string;
  /** Restores: trees served. */
  treesSent?: number;
  /** Restores: the path the session was opened on. */
  path?: string;
}

const HEX64 = /^[0-9a-f]{64}$/;
const EMPTY_PATH_HASH = createHash("sha256").update(Buffer.alloc(0)).digest();
const pathHash = (p: Buffer) => createHash("sha256").update(p).digest();
/** A tree at a path, as a set key. */
const treeKey = (t: TreeAtPath) => `${t.pathHash.toString("hex")}:${t.tree}`;
/** Trees recorded (and pinned) per catalog write in `putTrees`. */
const TREE_BATCH = 256;

function checkId(id: unknown, what: string): string {
  if (typeof id !== "string" || !HEX64.test(id))
    throw new StrataError("INVALID_ARGUMENT", `${what} must be 64 lowercase hex characters`, {
      subject: String(id).slice(0, 80),
    });
  return id;
}

/**
 * Decoded parent-snapshot trees (siblings share their ancestors), at most
 * 512 and at most this many entries in all: memory stays bounded whatever
 * the directories' sizes (a 1M-file endpoint's 1% change touches 500 trees
 * of 2,000 entries).
 */
export const UPLOAD_TREE_CACHE_ENTRIES = 100_000;

export class UploadService {
  private readonly limits: UploadLimits;
  private readonly trees = new Lru<Map<string, FsNode>>(512, {
    maxWeight: UPLOAD_TREE_CACHE_ENTRIES,
    weigh: (m) => m.size,
  });
  /** Streams being received per session on this node (back-pressure). */
  private readonly streams = new Map<string, number>();
  /** Streams being received on this node, all sessions. */
  private serverStreams = 0;

  constructor(
    private readonly d: {
      repo: Repository;
      uploads: UploadStore;
      clock: Clock;
      audit: AuditService;
      limits?: Partial<UploadLimits>;
      /** The retention counts of the CVD's policy; null keeps every snapshot. */
      retentionOf?: (cvdId: string) => Promise<RetentionCounts | null>;
      /** Snapshots open tasks still need (a revert's target): retention never forgets them. */
      pinnedByTasks?: (cvdId: string) => Promise<string[]>;
    },
  ) {
    this.limits = { ...DEFAULT_UPLOAD_LIMITS, ...d.limits };
  }

  private get repo() {
    return this.d.repo;
  }

  private view(s: UploadSessionRecord, resumed: boolean): SessionView {
    const c = this.repo.config;
    return {
      session: s.id,
      resumed,
      state: s.state,
      nonce: s.nonce.toString("base64"),
      parent: s.parent,
      kind: s.kind,
      chunker: c.chunker,
      compression: { algorithm: "zstd", maxLevel: 19 },
      limits: {
        maxBatch: this.limits.maxBatch,
        maxChunkFrame: c.chunker.maxSize,
        maxTreeFrame: this.limits.maxTreeFrame,
        maxStreamBytes: this.limits.maxStreamBytes,
        maxConcurrentStreams: this.limits.maxConcurrentStreams,
      },
      expiresAt: s.expiresAt.toISOString(),
    };
  }

  private expiry(): Date {
    return new Date(this.d.clock.now().getTime() + this.limits.sessionTtlMs);
  }

  /** A snapshot of this CVD, or NOT_FOUND (also for another CVD's snapshot). */
  async cvdSnapshot(cvdId: string, id: string): Promise<SnapshotRecord> {
    const snap = await this.repo.catalog.getSnapshot(checkId(id, "snapshot id") as SnapshotId);
    if (!snap?.tags.includes(cvdTag(cvdId)))
      throw new StrataError("NOT_FOUND", `snapshot ${id} does not exist`, { subject: id });
    return snap;
  }

  /** Snapshots of a CVD, oldest first. */
  snapshotsOf(cvdId: string): Promise<SnapshotRecord[]> {
    return this.repo.catalog.listSnapshots({ tag: cvdTag(cvdId) });
  }

  async create(
    cvdId: string,
    body: { parent?: string | null; kind?: string },
  ): Promise<{ created: boolean; view: SessionView }> {
    const kind = body.kind ?? "upload";
    if (!(UPLOAD_KINDS as readonly string[]).includes(kind))
      throw new StrataError("INVALID_ARGUMENT", `kind must be one of ${UPLOAD_KINDS.join(", ")}`);
    const parent = body.parent ? (await this.cvdSnapshot(cvdId, body.parent)).id : null;
    await this.expireStale();
    for (let attempt = 0; attempt < 3; attempt++) {
      const open = await this.d.uploads.openSessionOf(cvdId);
      if (open) {
        await this.d.uploads.touch(open.id, this.d.clock.now(), this.expiry(), { resumes: 1 });
        return { created: false, view: this.view((await this.d.uploads.getSession(open.id)) ?? open, true) };
      }
      const now = this.d.clock.now();
      const rec: UploadSessionRecord = {
        id: `up_${randomBytes(16).toString("base64url")}`,
        cvdId,
        parent,
        nonce: randomBytes(32),
        kind,
        state: "open",
        idempotencyKey: null,
        createdAt: now,
        updatedAt: now,
        expiresAt: this.expiry(),
        finishedAt: null,
        snapshot: null,
        chunksSent: 0,
        chunksProven: 0,
        treesUploaded: 0,
        bytesReceived: 0,
        failedProofs: 0,
        resumes: 0,
        report: null,
      };
      if (await this.d.uploads.createSession(rec)) return { created: true, view: this.view(rec, false) };
      // Another request created one at the same moment: resume it.
    }
    throw new StrataError("LOCKED", `CVD ${cvdId} is busy creating an upload session`, {
      hint: "retry in a few seconds",
    });
  }

  /** Expire open sessions past their expiry: unpin what they held. */
  async expireStale(): Promise<number> {
    const now = this.d.clock.now();
    const stale = await this.d.uploads.expiredSessions(now);
    for (const s of stale) {
      await this.d.uploads.finish(s.id, "expired", now, null, null);
      await this.repo.catalog.removePins(s.id);
    }
    return stale.length;
  }

  /** The session, if it is this CVD's; NOT_FOUND otherwise (never "exists but not yours"). */
  private async session(cvdId: string, id: string, mustBeOpen = true): Promise<UploadSessionRecord> {
    const s = typeof id === "string" && id.length <= 64 ? await this.d.uploads.getSession(id) : null;
    if (!s || s.cvdId !== cvdId)
      throw new StrataError("NOT_FOUND", `upload session ${String(id).slice(0, 64)} does not exist`, {
        subject: String(id).slice(0, 64),
      });
    if (mustBeOpen && s.state === "open" && s.expiresAt < this.d.clock.now()) {
      await this.expireStale();
      s.state = "expired";
    }
    if (mustBeOpen && s.state !== "open")
      throw new StrataError("SESSION_EXPIRED", `upload session ${s.id} is ${s.state}`, {
        subject: s.id,
        hint: "create a new session with POST /cvds/{cvd}/uploads",
      });
    return s;
  }

  async status(cvdId: string, id: string): Promise<SessionStatus> {
    const s = await this.session(cvdId, id, false);
    return {
      session: s.id,
      state: s.state,
      parent: s.parent,
      chunksPossessed: s.chunksSent + s.chunksProven,
      treesUploaded: s.treesUploaded,
      bytesReceived: s.bytesReceived,
      snapshot: s.snapshot,
      expiresAt: s.expiresAt.toISOString(),
    };
  }

  private async touch(s: UploadSessionRecord, add: Partial<UploadCounters>): Promise<void> {
    await this.d.uploads.touch(s.id, this.d.clock.now(), this.expiry(), add);
  }

  /** Run `f` under a shared repository lease, like a backup: prune never deletes what it may use. */
  private async leased<T>(f: () => Promise<T>): Promise<T> {
    const lease = await holdLease(this.repo.catalog, "repo", leaseHolder("upload"), "shared");
    try {
      return await f();
    } finally {
      await lease.release();
    }
  }

  private async stream<T>(s: UploadSessionRecord, f: () => Promise<T>): Promise<T> {
    const n = this.streams.get(s.id) ?? 0;
    if (n >= this.limits.maxConcurrentStreams)
      throw new StrataError("LOCKED", `upload session ${s.id} already has ${n} streams in flight`, {
        hint: "wait for a stream to finish (Retry-After)",
      });
    if (this.serverStreams >= this.limits.maxServerStreams)
      throw Object.assign(
        new StrataError(
          "LOCKED",
          `this server is receiving ${this.serverStreams} upload streams, its limit (maxServerStreams); upload session ${s.id} must wait`,
          { hint: "send the stream again after Retry-After (the agent does)" },
        ),
        { retryAfterSeconds: STREAM_RETRY_AFTER_S },
      );
    this.streams.set(s.id, n + 1);
    this.serverStreams++;
    try {
      return await this.leased(f);
    } finally {
      this.serverStreams--;
      const left = (this.streams.get(s.id) ?? 1) - 1;
      if (left) this.streams.set(s.id, left);
      else this.streams.delete(s.id);
    }
  }

  async have(cvdId: string, id: string, chunks: HaveEntry[]): Promise<{ status: HaveAnswer[] }> {
    const s = await this.session(cvdId, id);
    if (!Array.isArray(chunks))
      throw new StrataError("INVALID_ARGUMENT", "chunks must be an array of { id, proof? }");
    if (chunks.length > this.limits.maxBatch)
      throw new StrataError(
        "TOO_LARGE",
        `${chunks.length} ids in one have; the limit is ${this.limits.maxBatch}`,
      );
    const ids: BlobId[] = [];
    const proofs: (Buffer | null)[] = [];
    const seen = new Set<string>();
    for (const [i, c] of chunks.entries()) {
      const cid = checkId(c?.id, `chunks[${i}].id`);
      if (seen.has(cid)) throw new StrataError("INVALID_ARGUMENT", `chunk ${cid} appears twice in one have`);
      seen.add(cid);
      ids.push(cid as BlobId);
      if (c.proof === undefined) proofs.push(null);
      else {
        const p = typeof c.proof === "string" ? Buffer.from(c.proof, "base64") : Buffer.alloc(0);
        if (p.length !== 32)
          throw new StrataError("INVALID_ARGUMENT", `chunks[${i}].proof must be 32 bytes in base64`);
        proofs.push(p);
      }
    }
    return this.leased(async () => {
      const owned = await this.owned(s, ids);
      const status: HaveAnswer[] = ids.map((cid, i) =>
        owned.has(cid) ? "owned" : proofs[i] ? "send" : "prove",
      );
      const toCheck = ids.filter((_cid, i) => status[i] === "send");
      const stored = toCheck.length ? await this.repo.catalog.hasBlobs(toCheck) : new Set<BlobId>();
      const accepted: BlobId[] = [];
      let failed = 0;
      if (stored.size) {
        // Read in pack order: one pass over each pack's region.
        const entries = [...(await this.repo.lookup([...stored])).values()].sort((a, b) =>
          a.packId === b.packId ? a.offset - b.offset : a.packId < b.packId ? -1 : 1,
        );
        const ok = new Set<BlobId>();
        const proofOf = new Map(ids.map((cid, i) => [cid, proofs[i]]));
        for (const e of entries) {
          const plain = await this.repo.readEntry(e);
          const mac = createHmac("sha256", s.nonce).update(plain).digest();
          if (timingSafeEqual(mac, proofOf.get(e.id)!)) ok.add(e.id);
          else failed++;
        }
        for (const [i, cid] of ids.entries()) {
          if (ok.has(cid)) {
            status[i] = "accepted";
            accepted.push(cid);
          }
        }
      }
      // Possession is durable before the answer says so.
      if (accepted.length) await this.repo.catalog.addPins(s.id, accepted);
      await this.touch(s, { chunksProven: accepted.length, failedProofs: failed });
      // A correct agent never fails a proof: many failures are someone
      // probing which contents the fleet stores (protocol.md, "Timing").
      const T = this.limits.failedProofAudit;
      if (failed > 0 && s.failedProofs < T && s.failedProofs + failed >= T) {
        await this.d.audit.record({
          actor: `cvd:${s.cvdId}`,
          action: "upload.failed_proofs",
          object: `upload:${s.id}`,
          detail: { failedProofs: s.failedProofs + failed, threshold: T },
          remoteAddr: "agent",
        });
      }
      return { status };
    });
  }

  async putChunks(
    cvdId: string,
    id: string,
    body: AsyncIterable<Buffer | Uint8Array | string>,
  ): Promise<{ stored: number; bytes: number; ids: string[] }> {
    const s = await this.session(cvdId, id);
    return this.stream(s, async () => {
      const r = new ByteReader(body);
      const maxSize = this.repo.config.chunker.maxSize;
      const seen = new Set<string>();
      let batch: BlobId[] = [];
      const done: string[] = [];
      let stored = 0;
      let bytes = 0;
      let counted = 0;
      const commitBatch = async () => {
        if (!batch.length) return;
        await this.repo.flush();
        await this.repo.catalog.addPins(s.id, batch);
        await this.touch(s, { chunksSent: batch.length, bytesReceived: r.consumed - counted });
        counted = r.consumed;
        for (const b of batch) done.push(b);
        batch = [];
      };
      try {
        for (let i = 0; !(await r.atEnd()); i++) {
          const f = await readChunkFrame(r, maxSize, i);
          if (r.consumed > this.limits.maxStreamBytes)
            throw new StrataError("TOO_LARGE", `chunk stream exceeds ${this.limits.maxStreamBytes} bytes`, {
              hint: "send streams of about one pack (16-64 MiB)",
            });
          const cid = f.id.toString("hex");
          if (seen.has(cid)) throw new StrataError("INVALID_ARGUMENT", `chunk ${cid} repeats in one stream`);
          seen.add(cid);
          const plain =
            f.flags & FLAG_ZSTD ? boundedDecompress(f.payload, maxSize, `chunk ${cid}`) : f.payload;
          if (plain.length > maxSize)
            throw new StrataError(
              "TOO_LARGE",
              `chunk ${cid} is ${plain.length} bytes; the limit is ${maxSize}`,
            );
          if (createHash("sha256").update(plain).digest("hex") !== cid)
            throw new StrataError("INVALID_ARGUMENT", `chunk ${cid}: the content does not match its id`, {
              subject: cid,
            });
          // The agent's compressed form is kept as it is (it follows the
          // repository's rule: compressed only when that saves 1/32).
          const compressed = (f.flags & FLAG_ZSTD) !== 0;
          if (
            await this.repo.saveBody(
              cid as BlobId,
              "chunk",
              compressed ? f.payload : plain,
              compressed,
              plain.length,
            )
          ) {
            stored++;
            bytes += plain.length;
          }
          batch.push(cid as BlobId);
          if (batch.length >= 2000) await commitBatch();
        }
        await commitBatch();
      } catch (e) {
        // What arrived whole before the failure stands (protocol.md, "Chunks").
        await commitBatch().catch(() => {});
        throw e;
      }
      return { stored, bytes, ids: done };
    });
  }

  /**
   * The tree the session's parent snapshot has at `segs` (its root for no
   * segments), or null when there is no parent or it has no directory
   * there. Walks (and caches) the ancestors only: the tree itself is loaded
   * when the ownership check needs its entries. The id serves both the
   * inheritance check and the delta base of the uploaded version.
   */
  private async parentTree(
    segs: Buffer[],
    /** The parent snapshot's root tree (null: no parent), looked up once per stream. */
    parentRoot: () => Promise<string | null>,
  ): Promise<TreeId | null> {
    let tree = await parentRoot();
    if (!tree) return null;
    for (const seg of segs) {
      const n = (await this.dirOf(tree)).get(seg.toString("latin1"));
      if (n?.type !== "dir" || !n.subtree) return null;
      tree = n.subtree;
    }
    return tree as TreeId;
  }

  private async dirOf(tree: string): Promise<Map<string, FsNode>> {
    const hit = this.trees.get(tree);
    if (hit) return hit;
    const nodes = await this.repo.loadTree(tree as TreeId);
    const m = new Map(nodes.map((n) => [n.name.toString("latin1"), n]));
    this.trees.set(tree, m);
    return m;
  }

  async putTrees(
    cvdId: string,
    id: string,
    body: AsyncIterable<Buffer | Uint8Array | string>,
  ): Promise<{ stored: number; ids: string[] }> {
    const s = await this.session(cvdId, id);
    return this.stream(s, async () => {
      const r = new ByteReader(body);
      const done: string[] = [];
      let stored = 0;
      // Trees at their paths and their pins are recorded in batches: one
      // synchronous commit (an fsync) per tree kept the event loop from
      // serving anyone else for seconds on a large upload. A parent checks
      // its subtrees against the batch not yet written too. Everything is
      // written before the answer, so the agent never counts on a tree the
      // catalog lacks; an interrupted stream loses at most a batch, which
      // the agent sends again.
      const pending: TreeAtPath[] = [];
      const pendingKeys = new Set<string>();
      let root: Promise<string | null> | undefined;
      const parentRoot = () => {
        root ??= s.parent
          ? this.repo.catalog.getSnapshot(s.parent as SnapshotId).then((p) => p?.tree ?? null)
          : Promise.resolve(null);
        return root;
      };
      const flushPending = async () => {
        if (!pending.length) return;
        const batch = pending.splice(0);
        pendingKeys.clear();
        await this.d.uploads.addTrees(s.id, batch);
        await this.repo.catalog.addPins(
          s.id,
          batch.map((t) => t.tree as string as BlobId),
        );
        // Let other requests in between batches.
        await new Promise((res) => setImmediate(res));
      };
      for (let i = 0; !(await r.atEnd()); i++) {
        const f = await readTreeFrame(r, this.limits.maxTreeFrame, 64 * 1024, i);
        if (r.consumed > this.limits.maxStreamBytes)
          throw new StrataError("TOO_LARGE", `tree stream exceeds ${this.limits.maxStreamBytes} bytes`);
        const tid = f.id.toString("hex");
        const plain =
          f.flags & FLAG_ZSTD
            ? boundedDecompress(f.payload, this.limits.maxTreeFrame, `tree ${tid}`)
            : f.payload;
        if (createHash("sha256").update(plain).digest("hex") !== tid)
          throw new StrataError("INVALID_ARGUMENT", `tree ${tid}: the content does not match its id`, {
            subject: tid,
          });
        let nodes: FsNode[];
        try {
          nodes = decodeTree(Buffer.from(plain), `tree ${tid}`);
        } catch (e) {
          throw new StrataError("INVALID_ARGUMENT", (e as Error).message, { subject: tid });
        }
        const segs = f.path.length ? splitPath(f.path) : [];
        const shown = `/${segs.map((x) => x.toString("utf8")).join("/")}`;
        try {
          for (const seg of segs) validateName(seg);
          for (const n of nodes) validateName(n.name);
        } catch (e) {
          throw new StrataError("UNSAFE_PATH", `tree ${tid} at ${shown}: ${(e as Error).message}`, {
            subject: tid,
          });
        }
        // The parent snapshot's version of this directory: what inherited
        // entries are checked against, and the base of a stored delta.
        let prev: Promise<TreeId | null> | undefined;
        const prevTree = () => {
          prev ??= this.parentTree(segs, parentRoot);
          return prev;
        };
        await this.checkOwnership(s, tid, shown, f.path, nodes, pendingKeys, prevTree);
        const at = { pathHash: pathHash(f.path), tree: tid as TreeId };
        pending.push(at);
        pendingKeys.add(treeKey(at));
        // Stored as a delta of that version when the repository finds it
        // worthwhile (repository-format.md, "Tree deltas"): an hourly upload
        // that changes a few files of a big directory stores the change, not
        // the listing again. Small trees never become deltas: no lookup. A
        // parent tree that cannot be read only costs a full tree.
        const base = plain.length >= TREE_DELTA_MIN ? await prevTree().catch(() => null) : null;
        if (await this.repo.saveTreeEncoded(tid as TreeId, plain, base)) stored++;
        done.push(tid);
        if (pending.length >= TREE_BATCH) await flushPending();
      }
      await flushPending();
      await this.repo.flush();
      await this.touch(s, { treesUploaded: done.length, bytesReceived: r.consumed });
      return { stored, ids: done };
    });
  }

  /**
   * The subset of `ids` the session owns: sent or proved in it, or sent to
   * the CVD's endpoint by the server in a layer apply (`sentToCvdHolder`).
   */
  private async owned(s: UploadSessionRecord, ids: BlobId[]): Promise<Set<BlobId>> {
    const owned = await this.repo.catalog.pinned(s.id, ids);
    if (owned.size === ids.length) return owned;
    const rest = ids.filter((c) => !owned.has(c));
    for (const c of await this.repo.catalog.pinned(sentToCvdHolder(s.cvdId), rest)) owned.add(c);
    return owned;
  }

  /** protocol.md, "Trees" steps 3–4: every chunk and subtree must be owned or inherited at this path. */
  private async checkOwnership(
    s: UploadSessionRecord,
    tid: string,
    shown: string,
    rawPath: Buffer,
    nodes: FsNode[],
    /** Trees of this stream not written to the catalog yet (`treeKey`). */
    pendingTrees: ReadonlySet<string>,
    /** The parent snapshot's tree at this path (`parentTree`), looked up once per frame. */
    prevTree: () => Promise<TreeId | null>,
  ): Promise<void> {
    const chunkIds = new Set<BlobId>();
    for (const n of nodes) for (const c of chunkIdsOf(n)) chunkIds.add(c);
    const ids = [...chunkIds];
    const owned = new Set<BlobId>();
    for (let i = 0; i < ids.length; i += MAX_BATCH)
      for (const c of await this.owned(s, ids.slice(i, i + MAX_BATCH))) owned.add(c);
    let parent: Map<string, FsNode> | null | undefined;
    const parentDir = async () => {
      if (parent === undefined) {
        const t = await prevTree();
        parent = t ? await this.dirOf(t) : null;
      }
      return parent;
    };
    const refuse = async (entry: FsNode, what: string, ref: string) => {
      await this.d.audit.record({
        actor: `cvd:${s.cvdId}`,
        action: "upload.not_possessed",
        object: `upload:${s.id}`,
        detail: { tree: tid, path: shown, entry: entry.name.toString("utf8"), ref },
        remoteAddr: "agent",
      });
      throw new StrataError(
        "NOT_POSSESSED",
        `tree ${tid} at ${shown}: entry ${entry.name.toString("utf8")} references ${what} ${ref}, which this upload neither sent nor proved nor inherits`,
        { subject: ref, hint: "send the chunk or prove possession with `have` first" },
      );
    };
    for (const n of nodes) {
      if (n.type === "file") {
        let inherited: Set<BlobId> | null = null;
        for (const c of chunkIdsOf(n)) {
          if (owned.has(c)) continue;
          if (!inherited) {
            const p = (await parentDir())?.get(n.name.toString("latin1"));
            inherited = new Set(p?.type === "file" ? [...chunkIdsOf(p)] : []);
          }
          if (!inherited.has(c)) await refuse(n, "chunk", c);
        }
      }
    }
    const dirs = nodes.filter((n) => n.type === "dir");
    if (dirs.length) {
      const childPath = (n: FsNode) =>
        rawPath.length ? Buffer.concat([rawPath, Buffer.from("/"), n.name]) : n.name;
      const children = dirs.map((n) => ({
        pathHash: pathHash(childPath(n)),
        tree: (n.subtree ?? "") as TreeId,
      }));
      const uploaded = await this.d.uploads.hasTrees(s.id, children);
      for (const [i, n] of dirs.entries()) {
        if (!n.subtree) continue;
        if (uploaded[i] || pendingTrees.has(treeKey(children[i]!))) continue;
        const p = (await parentDir())?.get(n.name.toString("latin1"));
        if (p?.type === "dir" && p.subtree === n.subtree) continue;
        await refuse(n, "tree", n.subtree);
      }
    }
  }

  async commit(
    cvdId: string,
    id: string,
    body: CommitRequest,
  ): Promise<{ snapshot: string; transaction: TransactionView }> {
    const prior = await this.session(cvdId, id, false);
    if (prior.state === "committed" && prior.snapshot) {
      // The response of an earlier commit was lost: answer it again.
      return { snapshot: prior.snapshot, transaction: transactionView(prior) };
    }
    const s = await this.session(cvdId, id);
    const root = checkId(body?.root, "root") as TreeId;
    if (typeof body.hostname !== "string" || body.hostname.length === 0 || body.hostname.length > 256)
      throw new StrataError("INVALID_ARGUMENT", "hostname must be a string of 1-256 characters");
    const tags = body.tags ?? [];
    if (
      !Array.isArray(tags) ||
      tags.length > 32 ||
      tags.some((t) => typeof t !== "string" || t.length > 128 || t.startsWith("cvd:"))
    )
      throw new StrataError(
        "INVALID_ARGUMENT",
        "tags must be at most 32 strings of at most 128 characters, not starting with cvd:",
      );
    return this.leased(async () => {
      const [atRoot] = await this.d.uploads.hasTrees(s.id, [{ pathHash: EMPTY_PATH_HASH, tree: root }]);
      let ok = atRoot === true;
      if (!ok && s.parent) ok = (await this.repo.catalog.getSnapshot(s.parent))?.tree === root;
      if (!ok)
        throw new StrataError(
          "NOT_POSSESSED",
          `root tree ${root} was not uploaded in session ${s.id} at the root`,
          {
            subject: root,
            hint: "upload the root tree (empty path) before committing",
          },
        );
      const now = this.d.clock.now();
      let time = new Date(body.time);
      if (Number.isNaN(time.getTime()))
        throw new StrataError("INVALID_ARGUMENT", "time must be an RFC 3339 time");
      // The endpoint's clock cannot move snapshots in or out of retention periods.
      const earliest = new Date(s.createdAt.getTime() - 86_400_000);
      if (time < earliest) time = earliest;
      if (time > now) time = now;
      const stats: SnapshotStats = { ...emptySnapshotStats() };
      for (const k of Object.keys(stats) as (keyof SnapshotStats)[]) {
        const v = body.stats?.[k];
        if (typeof v === "number" && Number.isFinite(v) && v >= 0) stats[k] = v;
      }
      const fresh = await this.d.uploads.getSession(s.id);
      stats.bytesAdded = fresh?.bytesReceived ?? 0;
      await this.repo.flush();
      const snap = await this.repo.saveSnapshot({
        time,
        hostname: body.hostname,
        paths: ["/"],
        tags: [cvdTag(cvdId), ...tags],
        tree: root,
        parent: s.parent,
        kind: s.kind,
        stats,
      });
      const errors = Array.isArray(body.errors) ? body.errors.slice(0, 1000) : [];
      const uniqueFiles =
        typeof body.uniqueFiles === "number" && Number.isFinite(body.uniqueFiles) ? body.uniqueFiles : null;
      await this.d.uploads.finish(s.id, "committed", now, snap.id, { stats, errors, uniqueFiles });
      await this.repo.catalog.removePins(s.id);
      // What an apply brought is in this snapshot now (its files are inherited by path from here on).
      await this.repo.catalog.removePins(sentToCvdHolder(cvdId));
      await this.applyRetention(cvdId).catch(() => {
        // Retention runs again after the next commit; the upload itself succeeded.
      });
      const done = (await this.d.uploads.getSession(s.id))!;
      return { snapshot: snap.id, transaction: transactionView(done) };
    });
  }

  /** Idempotent for aborted and expired sessions; a committed one is ALREADY_EXISTS. */
  /**
   * Forget the CVD's snapshots that its policy's retention counts no longer
   * keep (restic `forget` semantics, UTC periods). The newest snapshot is
   * always kept: it is the parent of the next upload. Space is freed by the
   * next prune. Returns the forgotten ids.
   */
  async applyRetention(cvdId: string): Promise<string[]> {
    const counts = await this.d.retentionOf?.(cvdId);
    if (!counts) return [];
    const snaps = await this.snapshotsOf(cvdId);
    // Safety snapshots (taken before a revert or a layer apply) stay for a
    // week, so the operation can be undone; so does what a queued or running
    // task is about to restore.
    const now = this.d.clock.now().getTime();
    const needed = new Set(await (this.d.pinnedByTasks?.(cvdId) ?? []));
    const remove = applyRetention(snaps, { last: 1, ...counts }).remove.filter(
      (r) =>
        !needed.has(r.id) &&
        !(
          (SAFETY_KINDS.includes(r.kind) || CAPTURE_KINDS.includes(r.kind)) &&
          now - r.time.getTime() < SAFETY_KEEP_MS
        ),
    );
    if (!remove.length) return [];
    const ids = remove.map((r) => r.id);
    await this.repo.removeSnapshots(ids);
    await this.d.audit.record({
      actor: "system",
      action: "cvd.retention",
      object: `cvd:${cvdId}`,
      detail: { forgotten: ids.length, kept: snaps.length - ids.length, counts },
      remoteAddr: "local",
    });
    return ids;
  }

  /**
   * What `policy` protects on a CVD, over the files of its newest snapshot:
   * counts and bytes per class (excluded, user area, machine area) and
   * samples with the deciding rule. The snapshot holds only what the CVD's
   * current policy protected, so a policy cannot be previewed on more.
   */
  async previewOnCvd(cvdId: string, policy: UploadPolicy): Promise<PolicyPreview & { snapshot: string }> {
    const snaps = await this.snapshotsOf(cvdId);
    const latest = snaps[snaps.length - 1];
    if (!latest)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no snapshot yet`, {
        subject: cvdId,
        hint: "a preview lists the files of the CVD's newest snapshot: wait for its first upload",
      });
    const compiled = compilePolicy(policy, { homes: [], agentStateDir: "/var/lib/strata-agent" });
    const b = new PolicyPreviewBuilder(compiled);
    const slash = Buffer.from("/");
    for await (const e of this.repo.walk(latest.tree)) {
      const n = e.node;
      b.add({
        path: Buffer.concat(e.rawPath.flatMap((seg) => [slash, seg])),
        type: n.type === "file" || n.type === "dir" || n.type === "symlink" ? n.type : "other",
        size: n.type === "file" ? n.size : 0,
      });
    }
    return { snapshot: latest.id, ...b.result() };
  }

  async abort(cvdId: string, id: string): Promise<void> {
    const s = await this.session(cvdId, id, false);
    if (s.state === "committed")
      throw new StrataError(
        "ALREADY_EXISTS",
        `upload session ${s.id} is committed (snapshot ${s.snapshot})`,
        {
          subject: s.id,
        },
      );
    if (s.state === "open") await this.d.uploads.finish(s.id, "aborted", this.d.clock.now(), null, null);
    await this.repo.catalog.removePins(s.id);
  }

  /** The transaction log of a CVD, newest first. */
  async transactions(cvdId: string, limit = 100): Promise<TransactionView[]> {
    return (await this.d.uploads.listSessions(cvdId, Math.min(Math.max(limit, 1), 1000))).map(
      transactionView,
    );
  }
}

/** The snapshots of a CVD as the fleet routes show them, oldest first. */
export async function snapshotSummaries(repo: Repository, cvdId: string): Promise<CvdSnapshotSummary[]> {
  return (await repo.catalog.listSnapshots({ tag: cvdTag(cvdId) })).map((s) => ({
    id: s.id,
    time: s.time.toISOString(),
    hostname: s.hostname,
    kind: s.kind,
    parent: s.parent,
    totalFiles: s.stats.totalFiles,
    totalBytes: s.stats.totalBytes,
  }));
}

function splitPath(p: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= p.length; i++) {
    if (i === p.length || p[i] === 0x2f) {
      out.push(p.subarray(start, i));
      start = i + 1;
    }
  }
  return out;
}

export function transactionView(s: UploadSessionRecord): TransactionView {
  const report = (s.report ?? null) as {
    stats?: Partial<SnapshotStats>;
    errors?: unknown[];
    uniqueFiles?: number | null;
  } | null;
  const st = report?.stats;
  return {
    id: s.id,
    cvd: s.cvdId,
    kind: s.kind,
    state: s.state,
    snapshot: s.snapshot,
    startedAt: s.createdAt.toISOString(),
    finishedAt: s.finishedAt?.toISOString() ?? null,
    durationMs: s.finishedAt ? s.finishedAt.getTime() - s.createdAt.getTime() : null,
    chunksSent: s.chunksSent,
    chunksProven: s.chunksProven,
    treesUploaded: s.treesUploaded,
    bytesSent: s.bytesReceived,
    retries: s.resumes,
    changedFiles: st ? (st.filesNew ?? 0) + (st.filesChanged ?? 0) : null,
    uniqueFiles: report?.uniqueFiles ?? null,
    errors: Array.isArray(report?.errors) ? report.errors.length : null,
  };
}
