/**
 * The server side of the restore protocol (docs/design/restore.md,
 * "Protocol"): restore sessions, trees served with grants, chunks served in
 * wire form, and a CVD's history.
 *
 * A session is opened by an endpoint for its own CVD or by a user with
 * `restore.run`, and is usable only by whoever opened it. Every tree is
 * reached through a grant the server issued (HMAC of the session and the
 * tree id under a key derived from the repository's master key, so every
 * node checks grants without shared state); every chunk must be named by a
 * file of a granted tree. Knowing a hash grants nothing, and a refusal
 * never says whether the chunk exists elsewhere.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { Readable } from "node:stream";
import type { RestoreCounters, RestoreSessionRecord, RestoreSessionStore } from "@strata/catalog";
import {
  type BlobId,
  type FsNode,
  type SnapshotId,
  StrataError,
  scanTree,
  TREE_DELTA,
  type TreeId,
} from "@strata/core";
import {
  type BrowseEntry,
  type BrowseQuery,
  type CvdBrowse,
  type CvdHistory,
  type HistoryEntry,
  type HistoryQuery,
  MAX_TREES_PER_REQUEST,
  type OpenRestoreRequest,
  type RestoreSessionInfo,
} from "@strata/protocol";
import {
  CHUNK_FRAME_HEADER,
  encodeJsonFrame,
  encodeTreeFrame,
  holdLease,
  type IndexEntry,
  type Lease,
  leaseHolder,
  packName,
  type Repository,
  SEAL_OVERHEAD,
  type SnapshotRecord,
  WireCodec,
  writeChunkFrameHeader,
} from "@strata/repo";
import type { AuditService } from "./audit-service.js";
import type { Caller, Clock } from "./context.js";
import { Lru } from "./lru.js";
import { cvdTag, sentToCvdHolder, type TransactionView } from "./upload-service.js";

/** Who opens and uses a session: an endpoint (its own CVD) or a user. */
export type RestoreActor = { endpointId: string; cvdId: string } | { caller: Caller };

export interface RestoreLimits {
  /** A session idle this long expires (restore.md: 1 hour). */
  sessionTtlMs: number;
  /** Chunk ids in one chunk request. */
  maxChunkIds: number;
  /** Trees in one tree batch request. */
  maxTreeIds: number;
  /** Snapshots one history page looks at. */
  maxHistorySnapshots: number;
  /** The node's shared lease for chunk streams is kept this long after the last one ends. */
  streamLeaseLingerMs: number;
}

export const DEFAULT_RESTORE_LIMITS: RestoreLimits = {
  sessionTtlMs: 3_600_000,
  maxChunkIds: 8192,
  maxTreeIds: MAX_TREES_PER_REQUEST,
  maxHistorySnapshots: 500,
  streamLeaseLingerMs: 2000,
};

export const GRANT_INFO = "strata restore grant";
const GRANT_LENGTH = 22;
const HEX64 = /^[0-9a-f]{64}$/;
const GRANT_RE = /^[A-Za-z0-9_-]{22}$/;
/** Blobs closer than this in a pack are read by one ranged read (as the local Restorer does). */
const RANGE_GAP = 256 * 1024;
const RANGE_MAX = 8 * 1024 * 1024;
/**
 * A session's counters and expiry are written to the catalog at most this
 * often: a write per tree request (a commit each) was the server's largest
 * cost in a restore. The answers in between are counted in memory.
 */
const TOUCH_DELAY_MS = 1000;
/** Chunk ids the restore service keeps of the trees it answered (about 25 MB of strings and set entries). */
const RESTORE_CHUNK_CACHE_IDS = 200_000;
/** Chunk frames are sent in writes of about this size (one TLS record run and one syscall each, not three per chunk). */
const SEND_BYTES = 256 * 1024;
/** A send buffer: SEND_BYTES and room for the frame that crosses it (larger ones get their own). */
const SEND_BUFFER = SEND_BYTES + 128 * 1024;

const actorName = (a: RestoreActor) =>
  "caller" in a ? `user:${a.caller.user.name}` : `endpoint:${a.endpointId}`;

function checkHex(id: unknown, what: string): string {
  if (typeof id !== "string" || !HEX64.test(id))
    throw new StrataError("INVALID_ARGUMENT", `${what} must be 64 lowercase hex characters`, {
      subject: String(id).slice(0, 80),
    });
  return id;
}

/** An absolute snapshot path as name segments; `.`, `..` and NUL are refused. */
export function parseSnapshotPath(p: unknown): Buffer[] {
  if (typeof p !== "string" || !p.startsWith("/") || p.length > 4096)
    throw new StrataError("INVALID_ARGUMENT", `path must be an absolute path (got ${JSON.stringify(p)})`, {
      hint: "e.g. /home/alice/docs",
    });
  const segs = p.split("/").filter((s) => s !== "");
  for (const s of segs) {
    if (s === "." || s === ".." || s.includes("\0"))
      throw new StrataError("INVALID_ARGUMENT", `path ${p} has a ${JSON.stringify(s)} segment`, {
        hint: "give the path as it is in the snapshot, without . or ..",
      });
  }
  return segs.map((s) => Buffer.from(s, "utf8"));
}

const shownPath = (segs: Buffer[]) => `/${segs.map((s) => s.toString("utf8")).join("/")}`;

export interface TreeBatchBody {
  trees: { id: string; grant: string }[];
}

export interface ChunkRequestBody {
  requests: { tree: string; grant: string; ids: string[] }[];
}

/** A frame stream answer: the HTTP layer sends it as application/vnd.strata.frames. */
export interface FrameStream {
  stream: Readable;
}

export class RestoreService {
  private readonly limits: RestoreLimits;
  private readonly grantKey: Buffer;
  /**
   * Chunk ids named by the files of a tree (trees are immutable: cached by
   * id), noted when the tree is answered: a restore asks for a tree's chunks
   * after its listing, with up to 256 listings read ahead and 5,000 files
   * of chunk requests collected or in flight, so the tree is rarely read and
   * decoded a second time. Bounded by ids too (RESTORE_CHUNK_CACHE_IDS): one
   * directory's tree may name 200,000 chunks.
   */
  private readonly fileChunks = new Lru<Set<string>>(1024, {
    maxWeight: RESTORE_CHUNK_CACHE_IDS,
    weigh: (s) => s.size,
  });
  /** Compresses trees rebuilt from deltas for the wire (stored full trees go as stored). */
  private readonly wireCodec = new WireCodec(3);
  /** Sessions known to be an endpoint's on a layer image (a session's snapshot never changes). */
  private readonly imageSessions = new Lru<boolean>(256);
  /** Counters and expiry not yet written to the catalog, by session (see TOUCH_DELAY_MS). */
  private readonly touches = new Map<string, { add: RestoreCounters; at: Date; expiresAt: Date }>();
  private touchTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly d: {
      repo: Repository;
      sessions: RestoreSessionStore;
      clock: Clock;
      audit: AuditService;
      limits?: Partial<RestoreLimits>;
      /**
       * The layer images an endpoint may open for its CVD (docs/design/layers.md,
       * "Apply"): the target image first, then those of its open apply tasks.
       */
      imagesOf?: (cvdId: string) => Promise<string[]>;
    },
  ) {
    this.limits = { ...DEFAULT_RESTORE_LIMITS, ...d.limits };
    this.grantKey = d.repo.deriveKey(GRANT_INFO);
  }

  private get repo() {
    return this.d.repo;
  }

  /** `base64url(HMAC-SHA256(K, session ‖ tree id bytes))[0..22]`. */
  grant(session: string, tree: string): string {
    return createHmac("sha256", this.grantKey)
      .update(session, "utf8")
      .update(Buffer.from(tree, "hex"))
      .digest("base64url")
      .slice(0, GRANT_LENGTH);
  }

  private checkGrant(session: string, tree: string, grant: unknown): void {
    if (typeof grant !== "string" || !GRANT_RE.test(grant))
      throw new StrataError("INVALID_ARGUMENT", `grant must be ${GRANT_LENGTH} base64url characters`);
    const want = Buffer.from(this.grant(session, tree));
    if (!timingSafeEqual(want, Buffer.from(grant)))
      throw new StrataError(
        "PERMISSION_DENIED",
        `the grant does not open tree ${tree} in session ${session}`,
        {
          subject: tree,
          hint: "use the grant the server sent with the tree's parent (or with the session)",
        },
      );
  }

  private expiry(): Date {
    return new Date(this.d.clock.now().getTime() + this.limits.sessionTtlMs);
  }

  /** Snapshots of a CVD, oldest first. */
  private snapshotsOf(cvdId: string): Promise<SnapshotRecord[]> {
    return this.repo.catalog.listSnapshots({ tag: cvdTag(cvdId) });
  }

  /** `latest`, a full id or a unique prefix, among the CVD's snapshots only. */
  async resolveSnapshot(cvdId: string, ref: string | undefined): Promise<SnapshotRecord> {
    return pickSnapshot(newestFirst(await this.snapshotsOf(cvdId)), ref, cvdId);
  }

  /** `snapshot` (`latest` by default, an id or a unique prefix) or `at`, not both. */
  private chosenSnapshot(cvdId: string, q: { snapshot?: string; at?: string }): Promise<SnapshotRecord> {
    if (q.at !== undefined && q.snapshot !== undefined)
      throw new StrataError("INVALID_ARGUMENT", "give snapshot or at, not both");
    return q.at !== undefined ? this.snapshotAt(cvdId, q.at) : this.resolveSnapshot(cvdId, q.snapshot);
  }

  /** The CVD's newest snapshot taken at or before `at`. */
  async snapshotAt(cvdId: string, at: string): Promise<SnapshotRecord> {
    const t = new Date(at);
    if (Number.isNaN(t.getTime()))
      throw new StrataError("INVALID_ARGUMENT", `${JSON.stringify(at)} is not a time`, {
        hint: "e.g. 2026-11-20T09:00:00Z",
      });
    const found = newestFirst(await this.snapshotsOf(cvdId)).find((s) => s.time.getTime() <= t.getTime());
    if (!found)
      throw new StrataError(
        "NOT_FOUND",
        `CVD ${cvdId} has no snapshot taken at or before ${t.toISOString()}`,
        {
          subject: at,
          hint: "list the snapshots with `strata cvd snapshots CVD`, or give a later --at",
        },
      );
    return found;
  }

  /**
   * `{ image: true }`: the CVD's target image, or with `snapshot` (an id or
   * a unique prefix) one of the images its open apply tasks name. Only the
   * CVD's own endpoint opens them; anything else is NOT_FOUND.
   */
  private async imageSnapshot(
    actor: RestoreActor,
    cvdId: string,
    b: OpenRestoreRequest,
  ): Promise<SnapshotRecord> {
    if ("caller" in actor)
      throw new StrataError("PERMISSION_DENIED", "layer image sessions are opened by the CVD's endpoint", {
        hint: "open a session on one of the CVD's snapshots instead",
      });
    if (b.at !== undefined) throw new StrataError("INVALID_ARGUMENT", "give image or at, not both");
    const allowed = [...new Set((await this.d.imagesOf?.(cvdId)) ?? [])];
    const ref = b.snapshot ?? allowed[0];
    const id = ref === undefined ? undefined : allowed.filter((x) => x.startsWith(ref));
    const snap = id?.length === 1 ? await this.repo.catalog.getSnapshot(id[0] as SnapshotId) : null;
    if (snap?.kind !== "image")
      throw new StrataError(
        "NOT_FOUND",
        b.snapshot === undefined
          ? `CVD ${cvdId} has no layer image`
          : `CVD ${cvdId} has no layer image ${b.snapshot}`,
        {
          subject: b.snapshot ?? cvdId,
          hint: "an administrator assigns layers (`strata layer assign`) and queues an apply (`strata cvd apply`)",
        },
      );
    return snap;
  }

  /** Walk `segs` from `tree`; the last node found and the tree holding it. */
  private async walkPath(
    root: TreeId,
    segs: Buffer[],
    snap: string,
  ): Promise<{ tree: TreeId; node: FsNode | null }> {
    let tree = root;
    let node: FsNode | null = null;
    for (let i = 0; i < segs.length; i++) {
      const parentTree = tree;
      const nodes = await this.repo.loadTree(tree);
      const n = nodes.find((x) => x.name.equals(segs[i]!));
      const here = shownPath(segs.slice(0, i + 1));
      if (!n)
        throw new StrataError("NOT_FOUND", `${here} is not in snapshot ${snap.slice(0, 12)}`, {
          subject: here,
          hint: "see which snapshots hold it with `strata cvd history CVD FOLDER`",
        });
      if (n.type === "dir" && n.subtree) {
        tree = n.subtree;
        node = null;
        continue;
      }
      if (i !== segs.length - 1)
        throw new StrataError("NOT_FOUND", `${here} is not a directory in snapshot ${snap.slice(0, 12)}`, {
          subject: here,
        });
      return { tree: parentTree, node: n };
    }
    return { tree, node };
  }

  /** Open a restore session (the caller's access to the CVD is checked by the route). */
  async open(actor: RestoreActor, cvdId: string, body: OpenRestoreRequest): Promise<RestoreSessionInfo> {
    const b = body ?? {};
    // The restore looks up every tree and chunk it asks for: the index in the page cache first.
    void this.repo.catalog.warm?.();
    const segs = b.path === undefined ? [] : parseSnapshotPath(b.path);
    const snap = b.image ? await this.imageSnapshot(actor, cvdId, b) : await this.chosenSnapshot(cvdId, b);
    await this.expireStale().catch(() => {
      // Expiry runs again at the next open and on the server's timer.
    });
    const { tree, node } = await this.walkPath(snap.tree, segs, snap.id);
    const now = this.d.clock.now();
    const rec: RestoreSessionRecord = {
      id: `rs_${randomBytes(16).toString("base64url")}`,
      cvdId,
      snapshot: snap.id,
      root: tree,
      path: segs.length ? shownPath(segs) : null,
      openedBy: actorName(actor),
      state: "open",
      createdAt: now,
      updatedAt: now,
      expiresAt: this.expiry(),
      closedAt: null,
      bytesSent: 0,
      chunksSent: 0,
      treesSent: 0,
    };
    await this.d.sessions.createRestoreSession(rec);
    if ("caller" in actor) {
      await this.d.audit.by(actor.caller, "restore.open", `cvd:${cvdId}`, {
        session: rec.id,
        snapshot: snap.id,
        path: rec.path ?? "/",
      });
    }
    const c = this.repo.config.chunker;
    return {
      session: rec.id,
      snapshot: { id: snap.id, time: snap.time.toISOString() },
      chunker: { ...c },
      root: { id: tree, grant: this.grant(rec.id, tree) },
      ...(node
        ? {
            node: {
              name: node.name.toString("utf8"),
              nameB64: node.name.toString("base64"),
              type: node.type,
            },
          }
        : {}),
      path: rec.path ?? "/",
      expiresAt: rec.expiresAt.toISOString(),
    };
  }

  /** Close open sessions idle past their expiry. */
  async expireStale(): Promise<number> {
    await this.flushTouches();
    const now = this.d.clock.now();
    const stale = await this.d.sessions.expiredRestoreSessions(now);
    for (const s of stale) await this.d.sessions.closeRestoreSession(s.id, "expired", now);
    return stale.length;
  }

  /** The session, if `actor` opened it and it is open; NOT_FOUND for anyone else's. */
  private async session(actor: RestoreActor, id: string, mustBeOpen = true): Promise<RestoreSessionRecord> {
    const s = typeof id === "string" && id.length <= 64 ? await this.d.sessions.getRestoreSession(id) : null;
    if (!s || s.openedBy !== actorName(actor) || ("cvdId" in actor && s.cvdId !== actor.cvdId))
      throw new StrataError("NOT_FOUND", `restore session ${String(id).slice(0, 64)} does not exist`, {
        subject: String(id).slice(0, 64),
      });
    const pending = this.touches.get(s.id);
    if (pending) s.expiresAt = pending.expiresAt;
    if (!mustBeOpen) return s;
    if (s.state === "open" && s.expiresAt < this.d.clock.now()) {
      await this.flushTouches(s.id).catch(() => {});
      await this.d.sessions.closeRestoreSession(s.id, "expired", this.d.clock.now());
      s.state = "expired";
    }
    if (s.state !== "open")
      throw new StrataError("SESSION_EXPIRED", `restore session ${s.id} is ${s.state}`, {
        subject: s.id,
        hint: "open a new session with POST /cvds/{cvd}/restores",
      });
    return s;
  }

  /**
   * Count an answer and push the session's expiry on. Kept in memory and
   * written within TOUCH_DELAY_MS (and before the session is closed or its
   * counters are listed), so a restore of thousands of trees costs a write
   * a second, not one per tree.
   */
  private touch(s: RestoreSessionRecord, add: Partial<RestoreCounters>): void {
    const t = this.touches.get(s.id) ?? {
      add: { bytesSent: 0, chunksSent: 0, treesSent: 0 },
      at: s.updatedAt,
      expiresAt: s.expiresAt,
    };
    t.add.bytesSent += add.bytesSent ?? 0;
    t.add.chunksSent += add.chunksSent ?? 0;
    t.add.treesSent += add.treesSent ?? 0;
    t.at = this.d.clock.now();
    t.expiresAt = this.expiry();
    this.touches.set(s.id, t);
    if (!this.touchTimer) {
      this.touchTimer = setTimeout(() => {
        this.touchTimer = null;
        this.flushTouches().catch(() => {
          // written again at the next flush
        });
      }, TOUCH_DELAY_MS);
      this.touchTimer.unref();
    }
  }

  /** Write the counters kept in memory (of one session, or all). */
  async flushTouches(id?: string): Promise<void> {
    const ids = id === undefined ? [...this.touches.keys()] : this.touches.has(id) ? [id] : [];
    for (const sid of ids) {
      const t = this.touches.get(sid)!;
      this.touches.delete(sid);
      try {
        await this.d.sessions.touchRestoreSession(sid, t.at, t.expiresAt, t.add);
      } catch (e) {
        // Keep them for the next flush (merged with anything counted meanwhile).
        const now = this.touches.get(sid);
        if (now) {
          now.add.bytesSent += t.add.bytesSent;
          now.add.chunksSent += t.add.chunksSent;
          now.add.treesSent += t.add.treesSent;
        } else this.touches.set(sid, t);
        throw e;
      }
    }
  }

  private async loadEntry(id: string, what: string): Promise<IndexEntry> {
    const e = (await this.repo.catalog.lookupBlobs([id as BlobId])).get(id as BlobId);
    if (!e) throw new StrataError("NOT_FOUND", `${what} ${id} is not in the repository`, { subject: id });
    return e;
  }

  /**
   * `GET /restores/:session/trees/:tree?grant=G`: one tree frame (the
   * tree's encoding in wire form), then a JSON frame `{ grants }` with, for
   * each entry in order, the grant of its subtree (null for non-directories).
   */
  async tree(actor: RestoreActor, sessionId: string, treeId: string, grant: unknown): Promise<Buffer> {
    const s = await this.session(actor, sessionId);
    checkHex(treeId, "tree id");
    this.checkGrant(s.id, treeId, grant);
    const e = await this.loadEntry(treeId, "tree");
    const out = await this.treeAnswer(s.id, treeId, e);
    this.touch(s, { treesSent: 1, bytesSent: out.length });
    return out;
  }

  /**
   * `POST /restores/:session/trees {trees: [{id, grant}]}`: several trees
   * in one round trip (a restore lists every directory, and a request per
   * listing cost both sides more than the listing). Every grant is checked
   * and every tree looked up before a byte is sent; then, in the order
   * asked, each tree's frames as `GET …/trees/:tree` answers them, one
   * tree in memory at a time.
   */
  async trees(actor: RestoreActor, sessionId: string, body: TreeBatchBody): Promise<FrameStream> {
    const s = await this.session(actor, sessionId);
    const list = body?.trees;
    if (!Array.isArray(list) || list.length === 0)
      throw new StrataError("INVALID_ARGUMENT", "trees must be a non-empty array of { id, grant }");
    if (list.length > this.limits.maxTreeIds)
      throw new StrataError("TOO_LARGE", `more than ${this.limits.maxTreeIds} trees in one request`, {
        hint: "split the request",
      });
    for (const [i, t] of list.entries()) checkHex(t?.id, `trees[${i}].id`);
    for (const t of list) this.checkGrant(s.id, t.id, t.grant);
    const ids = [...new Set(list.map((t) => t.id))] as BlobId[];
    const found = await this.repo.catalog.lookupBlobs(ids);
    for (const id of ids) {
      if (!found.has(id))
        throw new StrataError("NOT_FOUND", `tree ${id} is not in the repository`, { subject: id });
    }
    const entries = list.map((t) => found.get(t.id as BlobId)!);
    const self = this;
    async function* answers(): AsyncGenerator<Buffer> {
      let bytes = 0;
      let sent = 0;
      try {
        for (const [i, e] of entries.entries()) {
          const out = await self.treeAnswer(s.id, list[i]!.id, e);
          bytes += out.length;
          sent++;
          yield out;
        }
      } finally {
        self.touch(s, { treesSent: sent, bytesSent: bytes });
      }
    }
    return { stream: Readable.from(answers(), { objectMode: false, highWaterMark: 1024 * 1024 }) };
  }

  /** A tree's answer: its frame (wire form, or rebuilt in full from a delta) and its subtrees' grants. */
  private async treeAnswer(session: string, treeId: string, e: IndexEntry): Promise<Buffer> {
    const stored = await this.repo.store.getRange(packName(e.packId), e.offset, e.length);
    const plain = this.repo.codec.decode(e, stored, { treeDelta: true });
    let wire: { body: Buffer; compressed: boolean };
    let full: Buffer;
    if (plain[0] === TREE_DELTA) {
      // Stored as a delta (of the parent snapshot's version, or by a local backup):
      // agents always get the full tree, rebuilt and hash-checked, in the
      // wire form a stored full tree would have (zstd when worth it).
      full = await this.repo.readEntry(e);
      const w = this.wireCodec.encode(e.id, "tree", full);
      wire = { body: w.data, compressed: w.compressed };
    } else {
      full = plain;
      wire = this.repo.openWire(e, stored);
    }
    // Scanned, not decoded: no node objects per entry, only what the answer and the chunk requests need.
    const scan = scanTree(full, `tree ${treeId}`);
    this.fileChunks.set(treeId, scan.chunks);
    const grants = scan.subtrees.map((sub) => (sub ? this.grant(session, sub) : null));
    return Buffer.concat([
      ...encodeTreeFrame(Buffer.from(treeId, "hex"), Buffer.alloc(0), wire.compressed, wire.body),
      encodeJsonFrame({ grants }),
    ]);
  }

  private async chunksOfTree(tree: string): Promise<Set<string>> {
    const hit = this.fileChunks.get(tree);
    if (hit) return hit;
    const set: Set<string> = scanTree(await this.repo.loadTreeBytes(tree as TreeId), `tree ${tree}`).chunks;
    this.fileChunks.set(tree, set);
    return set;
  }

  /** The node's shared repository lease for chunk streams (see holdStreamLease). */
  private streamLease: { lease: Promise<Lease>; users: number; timer: NodeJS.Timeout | null } | null = null;

  /**
   * Chunk streams read packs under a shared repository lease, so prune
   * cannot delete them meanwhile. One lease serves every stream of this
   * node and is kept `streamLeaseLingerMs` after the last one ends: a
   * restore asks for chunks in ~100 requests, and taking and releasing a
   * lease for each (two catalog transactions) was a tenth of the server's
   * time. Returns the stream's release (idempotent).
   */
  private async holdStreamLease(): Promise<() => void> {
    for (let attempt = 0; ; attempt++) {
      let h = this.streamLease;
      if (!h) {
        const lease = holdLease(this.repo.catalog, "repo", leaseHolder("restore-serve"), "shared");
        const fresh = { lease, users: 0, timer: null as NodeJS.Timeout | null };
        lease.catch(() => {
          if (this.streamLease === fresh) this.streamLease = null;
        });
        this.streamLease = h = fresh;
      }
      const held = h;
      held.users++;
      if (held.timer) {
        clearTimeout(held.timer);
        held.timer = null;
      }
      const unuse = () => {
        held.users--;
        if (this.streamLease === held) this.streamLease = null;
      };
      let lease: Lease;
      try {
        lease = await held.lease; // LOCKED while a prune holds the repository
      } catch (e) {
        unuse();
        throw e;
      }
      try {
        lease.check();
      } catch (e) {
        // A heartbeat failed: the lease may be gone. Give it up and take a new one (once).
        unuse();
        if (held.users === 0) void lease.release().catch(() => {});
        if (attempt === 0) continue;
        throw e;
      }
      let done = false;
      return () => {
        if (done) return;
        done = true;
        held.users--;
        if (held.users > 0) return;
        const drop = () => {
          held.timer = null;
          if (held.users > 0) return;
          if (this.streamLease === held) this.streamLease = null;
          void lease.release().catch(() => {});
        };
        if (this.limits.streamLeaseLingerMs <= 0) return drop();
        held.timer = setTimeout(drop, this.limits.streamLeaseLingerMs);
        held.timer.unref();
      };
    }
  }

  /** Give back the stream lease now if no stream uses it (the server is stopping). */
  async releaseStreamLease(): Promise<void> {
    const h = this.streamLease;
    if (!h || h.users > 0) return;
    if (h.timer) clearTimeout(h.timer);
    this.streamLease = null;
    await h.lease.then((l) => l.release()).catch(() => {});
  }

  /**
   * `POST /restores/:session/chunks`: every grant is checked and every id
   * must be named by a file of its tree before a byte is read; then the
   * chunks are read pack by pack in offset order (ranged reads of up to
   * 8 MiB) and streamed as chunk frames in wire form (compressed, not
   * sealed) as they are read. A chunk the repository cannot deliver
   * (missing, damaged) is left out: the receiver names what it lacks.
   */
  async chunks(actor: RestoreActor, sessionId: string, body: ChunkRequestBody): Promise<FrameStream> {
    const s = await this.session(actor, sessionId);
    const reqs = body?.requests;
    if (!Array.isArray(reqs) || reqs.length === 0)
      throw new StrataError("INVALID_ARGUMENT", "requests must be a non-empty array of { tree, grant, ids }");
    let total = 0;
    for (const [i, r] of reqs.entries()) {
      checkHex(r?.tree, `requests[${i}].tree`);
      if (!Array.isArray(r.ids) || r.ids.length === 0)
        throw new StrataError(
          "INVALID_ARGUMENT",
          `requests[${i}].ids must be a non-empty array of chunk ids`,
        );
      total += r.ids.length;
      if (total > this.limits.maxChunkIds)
        throw new StrataError("TOO_LARGE", `more than ${this.limits.maxChunkIds} chunk ids in one request`, {
          hint: "split the request",
        });
      for (const [j, id] of r.ids.entries()) checkHex(id, `requests[${i}].ids[${j}]`);
    }
    // Grants first, then membership: nothing is looked up in the index
    // before every id is known to be named by a granted tree.
    for (const r of reqs) this.checkGrant(s.id, r.tree, r.grant);
    const wanted = new Set<string>();
    for (const r of reqs) {
      const named = await this.chunksOfTree(r.tree);
      for (const id of r.ids) {
        if (!named.has(id))
          throw new StrataError("NOT_FOUND", `chunk ${id} is not named by a file of tree ${r.tree}`, {
            subject: id,
            hint: "ask for a chunk with the tree whose file names it",
          });
        wanted.add(id);
      }
    }
    const release = await this.holdStreamLease();
    let entries: IndexEntry[];
    try {
      entries = [...(await this.repo.lookup([...wanted] as BlobId[])).values()];
    } catch (e) {
      release();
      throw e;
    }
    entries.sort((a, b) => (a.packId === b.packId ? a.offset - b.offset : a.packId < b.packId ? -1 : 1));
    const sentTo = (await this.isImageSession(s).catch(() => false)) ? sentToCvdHolder(s.cvdId) : null;
    const stream = Readable.from(
      this.serve(s, entries, async () => release(), sentTo),
      {
        objectMode: false,
        highWaterMark: 1024 * 1024,
      },
    );
    return { stream };
  }

  /** The session is a layer image's, opened by the CVD's endpoint (an apply's download). */
  private async isImageSession(s: RestoreSessionRecord): Promise<boolean> {
    if (!s.openedBy.startsWith("endpoint:")) return false;
    const hit = this.imageSessions.get(s.id);
    if (hit !== undefined) return hit;
    const image = (await this.repo.catalog.getSnapshot(s.snapshot))?.kind === "image";
    this.imageSessions.set(s.id, image);
    return image;
  }

  /**
   * Stream `entries`; with `sentTo`, the ids sent are pinned for that holder
   * (`sentToCvdHolder`: the CVD owns what the server sent it in an apply).
   */
  private async *serve(
    s: RestoreSessionRecord,
    entries: IndexEntry[],
    release: () => Promise<void>,
    sentTo: string | null = null,
  ): AsyncGenerator<Buffer> {
    let bytes = 0;
    let chunks = 0;
    const sent: BlobId[] = [];
    // Frames are built in place: each blob is decrypted straight into the
    // send buffer after its header, and pack ranges are read into one
    // reused buffer (no plaintext copy per blob, no 8 MiB range garbage).
    const store = this.repo.store;
    let rangeBuf: Buffer | null = null;
    let out = Buffer.allocUnsafe(SEND_BUFFER);
    let pos = 0;
    try {
      const spans = [...ranges(entries)];
      // Every range of this answer is read in order below, each after the one before is sent: ask
      // the disk for all of them now, so a cold pack is read while the earlier ranges stream.
      if (store.readAhead) {
        for (const range of spans) {
          const first = range[0]!;
          void store.readAhead(packName(first.packId), first.offset, spanLength(range));
        }
      }
      for (const range of spans) {
        const first = range[0]!;
        const len = spanLength(range);
        let buf: Buffer | null = null;
        try {
          if (store.getRangeInto) {
            if (!rangeBuf || rangeBuf.length < len) rangeBuf = Buffer.allocUnsafe(Math.max(len, 1024 * 1024));
            buf = await store.getRangeInto(packName(first.packId), first.offset, len, rangeBuf);
          } else buf = await store.getRange(packName(first.packId), first.offset, len);
        } catch {
          buf = null; // blob by blob below, so one bad read loses only its blobs
        }
        for (const e of range) {
          const need = CHUNK_FRAME_HEADER + Math.max(0, e.length - SEAL_OVERHEAD);
          if (pos + need > out.length) {
            if (pos) yield out.subarray(0, pos);
            out = Buffer.allocUnsafe(Math.max(SEND_BUFFER, need));
            pos = 0;
          }
          let n: number;
          try {
            const stored = buf
              ? buf.subarray(e.offset - first.offset, e.offset - first.offset + e.length)
              : await store.getRange(packName(e.packId), e.offset, e.length);
            n = this.repo.openWireInto(e, stored, out, pos + CHUNK_FRAME_HEADER);
            writeChunkFrameHeader(out, pos, e.id, n, e.compressed);
          } catch {
            continue; // the receiver reports what it lacks
          }
          chunks++;
          if (sentTo) sent.push(e.id);
          pos += CHUNK_FRAME_HEADER + n;
          bytes += CHUNK_FRAME_HEADER + n;
          if (pos >= SEND_BYTES) {
            // The stream holds what it was given: the next frames go to a new buffer.
            yield out.subarray(0, pos);
            out = Buffer.allocUnsafe(SEND_BUFFER);
            pos = 0;
          }
        }
      }
      if (pos) yield out.subarray(0, pos);
    } finally {
      // Under the lease: pinned before prune could look at them. Best effort:
      // without the pins the next upload proves these chunks instead.
      if (sentTo && sent.length) await this.repo.catalog.addPins(sentTo, sent).catch(() => {});
      await release().catch(() => {});
      this.touch(s, { chunksSent: chunks, bytesSent: bytes });
    }
  }

  /** `DELETE /restores/:session`: idempotent. */
  async close(actor: RestoreActor, sessionId: string): Promise<void> {
    const s = await this.session(actor, sessionId, false);
    await this.flushTouches(s.id);
    if (s.state === "open") await this.d.sessions.closeRestoreSession(s.id, "closed", this.d.clock.now());
  }

  /** The CVD's restore sessions as transactions (kind `restore`), newest first. */
  async transactions(cvdId: string, limit = 100): Promise<TransactionView[]> {
    await this.flushTouches();
    return (await this.d.sessions.listRestoreSessions(cvdId, limit)).map(restoreTransactionView);
  }

  /**
   * The entries of one folder of one of the CVD's snapshots (`latest`, an id
   * or prefix, or the newest at or before `at`), in name order, at most
   * `limit`. Nothing is opened or counted: it reads trees only.
   */
  async browse(cvdId: string, q: BrowseQuery): Promise<CvdBrowse> {
    const segs = parseSnapshotPath(q?.path ?? "/");
    const snap = await this.chosenSnapshot(cvdId, q);
    const limit = Math.min(Math.max(Number(q.limit ?? 1000) || 1000, 1), 10_000);
    const { tree, node } = await this.walkPath(snap.tree as TreeId, segs, snap.id);
    if (node)
      throw new StrataError(
        "INVALID_ARGUMENT",
        `${shownPath(segs)} is a ${node.type} in snapshot ${snap.id.slice(0, 12)}, not a folder`,
        { subject: shownPath(segs), hint: "restore it with `strata cvd restore-file CVD PATH --to DIR`" },
      );
    const nodes = await this.repo.loadTree(tree);
    return {
      cvd: cvdId,
      snapshot: { id: snap.id, time: snap.time.toISOString() },
      path: shownPath(segs),
      entries: nodes.slice(0, limit).map(browseEntry),
      total: nodes.length,
      truncated: nodes.length > limit,
    };
  }

  /**
   * For the folder `path`, every entry across a page of the CVD's snapshots
   * (newest first) with the snapshots holding it. Trees are cached by id
   * while walking: snapshots share most of them.
   */
  async history(cvdId: string, q: HistoryQuery): Promise<CvdHistory> {
    const segs = parseSnapshotPath(q?.path);
    const limit = Math.min(Math.max(Number(q.limit ?? 50) || 50, 1), this.limits.maxHistorySnapshots);
    const all = newestFirst(await this.snapshotsOf(cvdId));
    let start = 0;
    if (q.before) {
      const i = all.findIndex((x) => x.id === q.before);
      if (i < 0)
        throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no snapshot ${q.before}`, { subject: q.before });
      start = i + 1;
    }
    const page = all.slice(start, start + limit);
    const trees = new Lru<FsNode[]>(256);
    const load = async (id: TreeId) => {
      const hit = trees.get(id);
      if (hit) return hit;
      const nodes = await this.repo.loadTree(id);
      trees.set(id, nodes);
      return nodes;
    };
    /** The folder's tree id under a snapshot's root (null: absent or not a directory), by root tree. */
    const folderOf = new Map<string, TreeId | null>();
    const entries = new Map<string, HistoryEntry & { raw: Buffer; seen: Set<string> }>();
    const snapshots: CvdHistory["snapshots"] = [];
    for (const [i, snap] of page.entries()) {
      let folder = folderOf.get(snap.tree);
      if (folder === undefined) {
        folder = snap.tree;
        for (const seg of segs) {
          const n: FsNode | undefined = (await load(folder)).find((x) => x.name.equals(seg));
          if (n?.type !== "dir" || !n.subtree) {
            folder = null;
            break;
          }
          folder = n.subtree;
        }
        folderOf.set(snap.tree, folder);
      }
      snapshots.push({ id: snap.id, time: snap.time.toISOString(), present: folder !== null });
      if (folder === null) continue;
      for (const n of await load(folder)) {
        const key = n.name.toString("latin1");
        let e = entries.get(key);
        if (!e) {
          e = {
            raw: n.name,
            name: n.name.toString("utf8"),
            nameB64: n.name.toString("base64"),
            type: n.type,
            size: n.type === "file" ? n.size : 0,
            mtime: nsToIso(n.mtimeNs),
            present: [],
            lastSeen: snap.id,
            firstSeen: snap.id,
            versions: 0,
            seen: new Set(),
          };
          entries.set(key, e);
        }
        e.present.push(i);
        e.firstSeen = snap.id;
        e.seen.add(`${n.type}:${n.size}:${n.mtimeNs}`);
      }
    }
    const list = [...entries.values()]
      .sort((a, b) => Buffer.compare(a.raw, b.raw))
      .map(({ raw: _raw, seen, ...e }) => ({ ...e, versions: seen.size }));
    const end = start + page.length;
    return {
      cvd: cvdId,
      path: shownPath(segs),
      snapshots,
      entries: list,
      next: end < all.length && page.length ? page[page.length - 1]!.id : null,
    };
  }
}

/** One folder of one snapshot, for `GET /cvds/:cvd/browse` (see RestoreService.browse). */
function browseEntry(n: FsNode): BrowseEntry {
  return {
    name: n.name.toString("utf8"),
    nameB64: n.name.toString("base64"),
    type: n.type,
    size: n.type === "file" ? n.size : 0,
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    mtime: nsToIso(n.mtimeNs),
    ...(n.type === "symlink" && n.target ? { target: n.target.toString("utf8") } : {}),
  };
}

function nsToIso(ns: bigint): string | null {
  const ms = Number(ns / 1_000_000n);
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

/**
 * The snapshot `ref` names in a CVD's list (newest first): `latest` (the
 * default), a full id or a unique prefix; NOT_FOUND, AMBIGUOUS or
 * INVALID_ARGUMENT otherwise.
 */
export function pickSnapshot<T extends { id: string }>(
  newestFirst: T[],
  ref: string | undefined,
  cvdId: string,
): T {
  const r = ref ?? "latest";
  if (r === "latest") {
    const last = newestFirst[0];
    if (!last)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no snapshot yet`, {
        subject: cvdId,
        hint: "wait for the endpoint's first upload",
      });
    return last;
  }
  if (!/^[0-9a-f]{4,64}$/.test(r))
    throw new StrataError("INVALID_ARGUMENT", `${JSON.stringify(r)} is not a snapshot id`, {
      hint: "use latest, a snapshot id or a unique prefix of one (`strata cvd snapshots CVD`)",
    });
  const found = newestFirst.filter((s) => s.id.startsWith(r));
  if (found.length === 0)
    throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no snapshot ${r}`, {
      subject: r,
      hint: "list them with `strata cvd snapshots CVD`",
    });
  if (found.length > 1)
    throw new StrataError("AMBIGUOUS", `${r} matches ${found.length} snapshots of CVD ${cvdId}`, {
      subject: r,
      hint: "give more characters of the id",
    });
  return found[0]!;
}

/** Newest first (time, then id). */
function newestFirst(snaps: SnapshotRecord[]): SnapshotRecord[] {
  return [...snaps].sort((a, b) =>
    b.time.getTime() !== a.time.getTime() ? b.time.getTime() - a.time.getTime() : a.id < b.id ? 1 : -1,
  );
}

/** Entries (sorted by pack and offset) grouped into ranged reads. */
/** Bytes from a range's first blob to the end of its last. */
function spanLength(range: IndexEntry[]): number {
  const first = range[0]!;
  const last = range[range.length - 1]!;
  return last.offset + last.length - first.offset;
}

function* ranges(entries: IndexEntry[]): Generator<IndexEntry[]> {
  let cur: IndexEntry[] = [];
  for (const e of entries) {
    const first = cur[0];
    const last = cur[cur.length - 1];
    if (
      first &&
      last &&
      e.packId === first.packId &&
      e.offset <= last.offset + last.length + RANGE_GAP &&
      e.offset + e.length - first.offset <= RANGE_MAX
    ) {
      cur.push(e);
      continue;
    }
    if (cur.length) yield cur;
    cur = [e];
  }
  if (cur.length) yield cur;
}

export function restoreTransactionView(s: RestoreSessionRecord): TransactionView {
  return {
    id: s.id,
    cvd: s.cvdId,
    kind: "restore",
    state: s.state,
    snapshot: s.snapshot as SnapshotId,
    startedAt: s.createdAt.toISOString(),
    finishedAt: s.closedAt?.toISOString() ?? null,
    durationMs: s.closedAt ? s.closedAt.getTime() - s.createdAt.getTime() : null,
    chunksSent: s.chunksSent,
    chunksProven: 0,
    treesUploaded: 0,
    bytesSent: s.bytesSent,
    retries: 0,
    changedFiles: null,
    uniqueFiles: null,
    errors: null,
    openedBy: s.openedBy,
    treesSent: s.treesSent,
    path: s.path ?? "/",
  };
}
