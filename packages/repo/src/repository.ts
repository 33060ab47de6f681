import { createHash, hkdfSync, randomBytes } from "node:crypto";
import { hostname as osHostname } from "node:os";
import {
  applyTreeDelta,
  type BlobId,
  type ChunkerParams,
  DEFAULT_CHUNKER_PARAMS,
  decodeTree,
  encodeTree,
  encodeTreeDelta,
  type FsNode,
  type HashAlgorithm,
  isStrataError,
  type PackId,
  type SnapshotId,
  StrataError,
  type TreeId,
  treeDeltaBase,
  validateChunkerParams,
} from "@strata/core";
import { displayPath } from "@strata/fs";
import type { BlobStore } from "./blob-store.js";
import {
  type BlobType,
  type IndexEntry,
  MAX_BATCH,
  type RepoCatalog,
  type SnapshotRecord,
} from "./catalog.js";
import {
  type KeyFile,
  MasterKey,
  openSealed,
  openSealedInto,
  seal,
  unwrapMasterKey,
  wrapMasterKey,
} from "./crypto.js";
import {
  BlobCodec,
  type EncodedBlob,
  PackBuilder,
  packIdFromName,
  packName,
  parsePackHeader,
  storePack,
} from "./pack.js";

/** Stored sealed under the master key as the object `config`. */
export interface RepoConfig {
  version: 1;
  id: string;
  created: string;
  hash: HashAlgorithm;
  chunker: ChunkerParams;
  compression: { algorithm: "zstd"; level: number };
  /**
   * Packs are closed once they reach `targetSize` bytes: 16 MiB by default;
   * 1 KiB–64 MiB accepted (small values are for tests). The last pack of a
   * backup is smaller.
   */
  pack: { targetSize: number };
}

/**
 * zstd level of new repositories: 3. Level 6 stores 1.1% less on the
 * benchmark's data set A (64 KiB chunks) but took 3-4 s more CPU and
 * 1.5-2.3 s more wall time of its 10 s first backup (paired runs,
 * docs/benchmarks.md); 4 and 5 saved 0.03% and 0.6%. `repo init
 * --compression-level N` chooses another. The agent's wire form has its
 * own level (upload.ts).
 */
export const DEFAULT_COMPRESSION_LEVEL = 3;

export interface InitOptions {
  chunker?: Partial<ChunkerParams>;
  compressionLevel?: number;
  packTargetSize?: number;
}

export function validateConfig(c: unknown): string[] {
  const errs: string[] = [];
  const cfg = c as Partial<RepoConfig> | null;
  if (!cfg || typeof cfg !== "object") return ["config is not an object"];
  if (cfg.version !== 1) errs.push(`unsupported config version ${String(cfg.version)}`);
  if (typeof cfg.id !== "string" || !/^[0-9a-f]{32}$/.test(cfg.id)) errs.push("id must be 32 hex characters");
  if (cfg.hash !== "sha256") errs.push(`unsupported hash ${String(cfg.hash)}`);
  if (!cfg.chunker) errs.push("chunker parameters missing");
  else errs.push(...validateChunkerParams(cfg.chunker));
  if (cfg.compression?.algorithm !== "zstd" || !(cfg.compression.level >= 1 && cfg.compression.level <= 19))
    errs.push("compression must be zstd with level 1..19");
  if (!(cfg.pack && cfg.pack.targetSize >= 1024 && cfg.pack.targetSize <= 64 * 1024 * 1024))
    errs.push("pack.targetSize must be 1 KiB..64 MiB");
  return errs;
}

/**
 * A repository: config + keys + packs + snapshots in a BlobStore, with their
 * index in a RepoCatalog. Write order (see docs/design/repository-format.md):
 * a pack is durable in the store before its entries enter the catalog; a tree
 * is added only after every blob it references has been added to a pack; a
 * snapshot is written only after every pack holding its blobs is indexed.
 */
export class Repository {
  /**
   * Chunks and trees go to separate packs (as in restic): damage to a data
   * pack then never hides which files it affects, and check/prune read tree
   * packs only.
   */
  private builders: Record<BlobType, PackBuilder>;
  private builderIds: Record<BlobType, Set<BlobId>> = { chunk: new Set(), tree: new Set() };
  /** Ids added to packs not yet indexed: known for dedup, not yet in the catalog. */
  private readonly pending = new Set<BlobId>();
  private flushChain: Promise<void> = Promise.resolve();
  private flushesPending = 0;
  private flushError: unknown = null;
  readonly codec: BlobCodec;
  /** Statistics of this process's writes. */
  readonly written = { blobs: 0, storedBytes: 0, packs: 0 };

  private constructor(
    readonly store: BlobStore,
    readonly catalog: RepoCatalog,
    readonly key: MasterKey,
    readonly config: RepoConfig,
  ) {
    this.codec = new BlobCodec(key, config.compression.level);
    this.builders = { chunk: this.newPackBuilder(), tree: this.newPackBuilder() };
  }

  /**
   * Packs stream to a temporary object of the store when it offers one, so
   * an open pack costs its entry list, not its 16 MiB of blobs.
   */
  /** True when open packs stream to a temporary object (`addEncoded` keeps no blob bytes). */
  get streamsPacks(): boolean {
    return !!this.store.createTemp;
  }

  newPackBuilder(): PackBuilder {
    const store = this.store;
    return new PackBuilder(store.createTemp ? () => store.createTemp!() : undefined);
  }

  static async init(
    store: BlobStore,
    catalog: RepoCatalog,
    password: Buffer,
    opts: InitOptions = {},
  ): Promise<Repository> {
    if (await store.stat("config")) {
      throw new StrataError("ALREADY_EXISTS", `a repository already exists at ${store.location}`, {
        hint: "use it as it is, or choose an empty directory",
      });
    }
    const config: RepoConfig = {
      version: 1,
      id: randomBytes(16).toString("hex"),
      created: new Date().toISOString(),
      hash: "sha256",
      // A random gear seed per repository: cut points of known content can't
      // be predicted from outside (fingerprinting). Dedup is per repository.
      chunker: { ...DEFAULT_CHUNKER_PARAMS, gearSeed: randomBytes(16).toString("hex"), ...opts.chunker },
      compression: { algorithm: "zstd", level: opts.compressionLevel ?? DEFAULT_COMPRESSION_LEVEL },
      pack: { targetSize: opts.packTargetSize ?? 16 * 1024 * 1024 },
    };
    const errs = validateConfig(config);
    if (errs.length)
      throw new StrataError("INVALID_ARGUMENT", `invalid repository settings: ${errs.join("; ")}`);
    const master = MasterKey.generate();
    const kf = await wrapMasterKey(master, password, osHostname());
    const kfBytes = Buffer.from(JSON.stringify(kf));
    // Key first, config last: a repository "exists" once config is written,
    // and by then it can be opened.
    await store.put(`keys/${createHash("sha256").update(kfBytes).digest("hex")}`, kfBytes);
    await store.put("config", seal(master, Buffer.from(JSON.stringify(config))));
    await catalog.setMeta("repo.id", config.id);
    return new Repository(store, catalog, master, config);
  }

  static async open(store: BlobStore, catalog: RepoCatalog, password: Buffer): Promise<Repository> {
    const cfgStat = await store.stat("config");
    if (!cfgStat) {
      throw new StrataError("REPO_NOT_FOUND", `no repository at ${store.location}`, {
        hint: "create one with `strata repo init`, or point --repo / STRATA_REPO at an existing repository",
        subject: store.location,
      });
    }
    let master: MasterKey | null = null;
    let sawKey = false;
    for await (const k of store.list("keys/")) {
      sawKey = true;
      let kf: KeyFile;
      try {
        kf = JSON.parse((await store.get(k.name)).toString("utf8")) as KeyFile;
      } catch {
        continue; // a damaged key file must not hide a good one
      }
      master = await unwrapMasterKey(kf, password).catch(() => null);
      if (master) break;
    }
    if (!sawKey) {
      throw new StrataError("REPO_CORRUPT", `repository at ${store.location} has no key files`, {
        hint: "restore the keys/ directory from a copy of the repository",
      });
    }
    if (!master) {
      throw new StrataError("WRONG_PASSWORD", `wrong password for the repository at ${store.location}`, {
        hint: "check STRATA_PASSWORD or --password-file",
      });
    }
    const raw = openSealed(master, await store.get("config"));
    let config: unknown = null;
    try {
      config = raw ? JSON.parse(raw.toString("utf8")) : null;
    } catch {
      config = null;
    }
    const errs = raw ? validateConfig(config) : ["config fails authentication (damaged)"];
    if (errs.length) {
      throw new StrataError(
        "CONFIG_INVALID",
        `repository config at ${store.location}/config is invalid: ${errs.join("; ")}`,
        {
          hint: "restore the config object from a copy of the repository; packs and snapshots are unchanged",
        },
      );
    }
    const repo = new Repository(store, catalog, master, config as RepoConfig);
    const known = await catalog.getMeta("repo.id");
    if (known && known !== repo.config.id) {
      throw new StrataError(
        "CONFIG_INVALID",
        `catalog belongs to repository ${known}, not ${repo.config.id}`,
      );
    }
    if (!known) {
      // A new or lost catalog: rebuild it from the store (packs carry their
      // own index, snapshots are objects).
      repo.catalogIsNew = true;
      await catalog.setMeta("repo.id", repo.config.id);
    }
    return repo;
  }

  private catalogIsNew = false;

  /**
   * Rebuild a new (empty or lost) catalog from the store: every pack is
   * indexed from its header and every snapshot object is added. Returns
   * what was added.
   */
  async syncCatalog(): Promise<{ packs: number; snapshots: number }> {
    let packs = 0;
    let snapshots = 0;
    // Only a new catalog is filled from the store: a snapshot object without
    // a row in an existing catalog is the leftover of an interrupted forget.
    if (!this.catalogIsNew) return { packs, snapshots };
    packs = (await this.adoptOrphanPacks()).length;
    for await (const obj of this.store.list("snapshots/")) {
      const id = obj.name.slice("snapshots/".length) as SnapshotId;
      if (!/^[0-9a-f]{64}$/.test(id) || (await this.catalog.getSnapshot(id))) continue;
      try {
        await this.catalog.addSnapshot(await this.loadSnapshotObject(id));
        snapshots++;
      } catch {
        // A damaged snapshot object is reported by check, not fatal here.
      }
    }
    this.catalogIsNew = false;
    return { packs, snapshots };
  }

  // ---- blobs ------------------------------------------------------------

  /** The subset of ids already stored (indexed, or in a pack being written). */
  async hasBlobs(ids: readonly BlobId[]): Promise<Set<BlobId>> {
    const out = new Set<BlobId>();
    const ask: BlobId[] = [];
    for (const id of ids) {
      if (this.pending.has(id)) out.add(id);
      else ask.push(id);
    }
    for (let i = 0; i < ask.length; i += MAX_BATCH) {
      for (const id of await this.catalog.hasBlobs(ask.slice(i, i + MAX_BATCH))) out.add(id);
    }
    return out;
  }

  isPending(id: BlobId): boolean {
    return this.pending.has(id);
  }

  /** Reserve ids for writing: returns those not stored and not reserved yet, and reserves them. */
  async reserve(ids: readonly BlobId[]): Promise<Set<BlobId>> {
    // Back-pressure: while two finished packs wait to be written, new work
    // waits too, so a slow store cannot make packs pile up in memory.
    while (this.flushesPending >= 2 && !this.flushError) await this.flushChain;
    const unique = [...new Set(ids)].filter((id) => !this.pending.has(id));
    const have = await this.hasBlobs(unique);
    const need = new Set<BlobId>();
    for (const id of unique) {
      if (!have.has(id) && !this.pending.has(id)) {
        this.pending.add(id);
        need.add(id);
      }
    }
    return need;
  }

  /** Give back reservations that will not be written (the job failed). */
  release(ids: Iterable<BlobId>): void {
    for (const id of ids)
      if (!this.builderIds.chunk.has(id) && !this.builderIds.tree.has(id)) this.pending.delete(id);
  }

  /** Add an encoded blob (already reserved) to the open pack. */
  addEncoded(b: EncodedBlob): void {
    this.throwIfFlushFailed();
    this.pending.add(b.id);
    this.builderIds[b.type].add(b.id);
    this.builders[b.type].add(b);
    this.written.blobs++;
    this.written.storedBytes += b.data.length;
    if (this.builders[b.type].bytes >= this.config.pack.targetSize) {
      // A tree pack may only follow the data packs its trees reference.
      if (b.type === "tree") this.rotate("chunk");
      this.rotate(b.type);
    }
  }

  /** Encode and store a blob unless already stored; returns true when written. */
  async saveBlob(id: BlobId, type: BlobType, plain: Uint8Array): Promise<boolean> {
    const need = await this.reserve([id]);
    if (!need.has(id)) return false;
    this.addEncoded(this.codec.encode(id, type, plain));
    return true;
  }

  /**
   * Store a blob whose body is already in its stored form before sealing:
   * zstd-compressed (`compressed`) or raw. The caller has checked that the
   * body decodes to `rawLength` bytes hashing to `id` (the upload service
   * keeps an agent's compressed frame instead of compressing again).
   */
  async saveBody(
    id: BlobId,
    type: BlobType,
    body: Uint8Array,
    compressed: boolean,
    rawLength: number,
  ): Promise<boolean> {
    const need = await this.reserve([id]);
    if (!need.has(id)) return false;
    this.addEncoded({ id, type, data: seal(this.key, body), rawLength, compressed });
    return true;
  }

  async saveTree(nodes: readonly FsNode[]): Promise<TreeId> {
    const enc = encodeTree(nodes);
    const id = createHash("sha256").update(enc).digest("hex") as TreeId;
    await this.saveBlob(id, "tree", enc);
    return id;
  }

  /**
   * Store tree `id` (its full encoding `enc`) unless already stored. With
   * `prev`, the same directory's tree in an earlier snapshot, it is stored
   * as a delta when that is worth it (see `treeDeltaFor`), otherwise full.
   * Returns true when written.
   */
  async saveTreeEncoded(id: TreeId, enc: Buffer, prev: TreeId | null): Promise<boolean> {
    const need = await this.reserve([id]);
    if (!need.has(id)) return false;
    let plain = enc;
    if (prev && enc.length >= TREE_DELTA_MIN) {
      // A few at a time: each holds its previous and base trees.
      await this.deltaSlots.acquire();
      try {
        plain = (await this.treeDeltaFor(id, enc, prev)) ?? enc;
      } catch {
        plain = enc; // a damaged or vanished previous tree only costs a full tree
      } finally {
        this.deltaSlots.release();
      }
    }
    this.addEncoded(this.codec.encode(id, "tree", plain));
    return true;
  }

  private readonly deltaSlots = new Slots(4);

  /**
   * A delta for tree `id` against the base of `prev`: `prev` itself when it
   * is stored full, or the full tree `prev` is a delta of (deltas stay one
   * level deep, so a reader loads at most one extra blob). Null when the
   * base is not stored full in an active pack (a backup references only
   * blobs it found active, see Pruning), or when the delta is not smaller
   * than half the full encoding.
   */
  private async treeDeltaFor(id: TreeId, enc: Buffer, prev: TreeId): Promise<Buffer | null> {
    if (prev === id) return null;
    const pe = (await this.catalog.lookupBlobs([prev])).get(prev);
    if (pe?.type !== "tree") return null;
    const prevStored = await this.readStored(pe);
    const baseId = treeDeltaBase(prevStored, `tree ${prev}`) ?? prev;
    if (baseId === id || !(await this.hasBlobs([baseId])).has(baseId)) return null;
    let base = prevStored;
    if (baseId !== prev) {
      const be = (await this.catalog.lookupBlobs([baseId])).get(baseId);
      if (be?.type !== "tree") return null;
      base = await this.readStored(be);
      if (treeDeltaBase(base, `tree ${baseId}`) !== null) return null;
    }
    const delta = encodeTreeDelta(baseId, base, enc);
    return delta.length * 2 <= enc.length ? delta : null;
  }

  private rotate(type: BlobType): void {
    const builder = this.builders[type];
    const ids = this.builderIds[type];
    this.builders[type] = this.newPackBuilder();
    this.builderIds[type] = new Set();
    if (builder.count === 0) return;
    this.flushesPending++;
    this.flushChain = this.flushChain.then(async () => {
      if (this.flushError) {
        await builder.discard();
        return;
      }
      try {
        const p = builder.finish(this.key);
        // Durable before indexed (a crash in between leaves an orphan pack).
        await storePack(this.store, p);
        await this.catalog.addPack(
          {
            id: p.id,
            size: p.size,
            blobCount: p.entries.length,
            createdAt: new Date(),
            state: "active",
            doomedAt: null,
          },
          p.entries,
        );
        this.written.packs++;
        for (const id of ids) this.pending.delete(id);
      } catch (e) {
        this.flushError = e;
        await builder.discard();
      } finally {
        this.flushesPending--;
      }
    });
  }

  private throwIfFlushFailed(): void {
    if (this.flushError) throw this.flushError;
  }

  /** Write the open pack and wait until every pack is indexed. */
  async flush(): Promise<void> {
    this.rotate("chunk");
    this.rotate("tree");
    await this.flushChain;
    this.throwIfFlushFailed();
  }

  /** Packs not finished yet (bytes buffered in memory). */
  get bufferedBytes(): number {
    return this.builders.chunk.bytes + this.builders.tree.bytes;
  }

  async lookup(ids: readonly BlobId[]): Promise<Map<BlobId, IndexEntry>> {
    const out = new Map<BlobId, IndexEntry>();
    for (let i = 0; i < ids.length; i += MAX_BATCH) {
      for (const [k, v] of await this.catalog.lookupBlobs(ids.slice(i, i + MAX_BATCH))) out.set(k, v);
    }
    return out;
  }

  /**
   * A blob's plaintext. A tree comes back in full (version 1) form, hashed
   * against its id, also when it is stored as a delta.
   */
  async readEntry(e: IndexEntry): Promise<Buffer> {
    if (e.type === "tree")
      return (await this.resolveTree(e.id as string as TreeId, await this.readStored(e), 0)).bytes;
    const stored = await this.store.getRange(packName(e.packId), e.offset, e.length);
    return this.codec.decode(e, stored);
  }

  /** A blob's stored plaintext: for a tree, its full encoding (hash-checked) or a delta (not yet). */
  private async readStored(e: IndexEntry): Promise<Buffer> {
    const stored = await this.store.getRange(packName(e.packId), e.offset, e.length);
    return this.codec.decode(e, stored, { treeDelta: e.type === "tree" });
  }

  /**
   * The full encoding of tree `id` from its stored plaintext, and the trees
   * it was rebuilt from (its delta base, and in the rare case below, the
   * base's base). Writers keep deltas one level deep; a reader follows up
   * to MAX_DELTA_CHAIN levels, because a base whose pack was doomed can be
   * stored again, as a delta, by a backup that ran meanwhile, and that copy
   * then takes over the index entry. Every failure is DATA_CORRUPT naming
   * the tree (and its base).
   */
  private async resolveTree(
    id: TreeId,
    stored: Buffer,
    depth: number,
    uncached = false,
  ): Promise<ResolvedTree> {
    const what = `tree ${id}`;
    const baseId = treeDeltaBase(stored, what);
    if (!baseId) return { bytes: stored, bases: [] };
    if (depth >= MAX_DELTA_CHAIN)
      throw new StrataError(
        "DATA_CORRUPT",
        `${what}: its chain of delta bases is longer than ${MAX_DELTA_CHAIN}`,
        {
          subject: id,
        },
      );
    let base = uncached ? undefined : this.baseCache.get(baseId);
    if (!base) {
      try {
        const be = (await this.catalog.lookupBlobs([baseId as string as BlobId])).get(
          baseId as string as BlobId,
        );
        if (!be) throw new StrataError("NOT_FOUND", "it is not in the index", { subject: baseId });
        base = await this.resolveTree(baseId, await this.readStored(be), depth + 1, uncached);
      } catch (e) {
        throw new StrataError(
          "DATA_CORRUPT",
          `${what} is stored as a delta of tree ${baseId}, which cannot be read: ${(e as Error).message}`,
          { subject: id, cause: e },
        );
      }
      this.baseCache.set(baseId, base);
    }
    const bytes = applyTreeDelta(stored, base.bytes, what);
    if (createHash("sha256").update(bytes).digest("hex") !== id)
      throw new StrataError("DATA_CORRUPT", `${what}: its delta does not rebuild the tree (hash mismatch)`, {
        subject: id,
      });
    return { bytes, bases: [baseId, ...base.bases] };
  }

  /** Full trees used as delta bases, recently used, bounded by bytes (readers walk many trees). */
  private readonly baseCache = new ByteLru<ResolvedTree>(8 * 1024 * 1024, (t) => t.bytes.length);

  /**
   * A stored blob as the wire carries it (docs/design/protocol.md): opened
   * but not decompressed, with its flag. The receiver decompresses and
   * checks the hash; a blob that fails authentication here is DATA_CORRUPT.
   */
  openWire(e: IndexEntry, stored: Uint8Array): { body: Buffer; compressed: boolean } {
    const body = openSealed(this.key, stored);
    if (!body)
      throw new StrataError(
        "DATA_CORRUPT",
        `blob ${e.id} in pack ${e.packId} fails authentication (damaged)`,
        {
          subject: e.id,
        },
      );
    return { body, compressed: e.compressed };
  }

  /**
   * `openWire` into the caller's buffer at `offset` (room for
   * `stored.length − SEAL_OVERHEAD` bytes): the wire body's length.
   */
  openWireInto(e: IndexEntry, stored: Uint8Array, out: Buffer, offset: number): number {
    const n = openSealedInto(this.key, stored, out, offset);
    if (n < 0)
      throw new StrataError(
        "DATA_CORRUPT",
        `blob ${e.id} in pack ${e.packId} fails authentication (damaged)`,
        {
          subject: e.id,
        },
      );
    return n;
  }

  /**
   * A 32-byte key for one purpose, derived from the master key with HKDF
   * (SHA-256, the repository id as salt, `info` naming the purpose): every
   * server node holding the repository derives the same key, and a derived
   * key reveals nothing of the master key or of keys for other purposes.
   */
  deriveKey(info: string): Buffer {
    return Buffer.from(hkdfSync("sha256", this.key.key, Buffer.from(this.config.id, "hex"), info, 32));
  }

  async loadBlob(id: BlobId): Promise<Buffer> {
    const e = (await this.catalog.lookupBlobs([id])).get(id);
    if (!e) throw new StrataError("NOT_FOUND", `blob ${id} is not in the index`, { subject: id });
    return this.readEntry(e);
  }

  async loadTree(id: TreeId): Promise<FsNode[]> {
    return decodeTree(await this.loadTreeBytes(id), `tree ${id}`);
  }

  /** How tree `id` is stored: the tree its delta is against, or null when it is stored full. */
  async storedTreeBase(id: TreeId): Promise<TreeId | null> {
    const bid = id as string as BlobId;
    const e = (await this.catalog.lookupBlobs([bid])).get(bid);
    if (!e) throw new StrataError("NOT_FOUND", `blob ${id} is not in the index`, { subject: id });
    return treeDeltaBase(await this.readStored(e), `tree ${id}`);
  }

  /** Tree `id` in its full (version 1) encoding, hash-checked, however it is stored. */
  async loadTreeBytes(id: TreeId): Promise<Buffer> {
    return (await this.loadTreeResolved(id)).bytes;
  }

  /**
   * Tree `id` in full, with the trees its stored form depends on (its delta
   * base; empty when it is stored full): what keeps it readable, which
   * prune must keep too. `uncached`: bases are read from the store, not
   * from the cache of recently used ones (check verifies what is stored).
   */
  async loadTreeResolved(id: TreeId, opts?: { uncached?: boolean }): Promise<ResolvedTree> {
    const bid = id as string as BlobId;
    const e = (await this.catalog.lookupBlobs([bid])).get(bid);
    if (!e) throw new StrataError("NOT_FOUND", `blob ${id} is not in the index`, { subject: id });
    if (e.type !== "tree")
      throw new StrataError("DATA_CORRUPT", `tree ${id} is indexed as a chunk`, { subject: id });
    return this.resolveTree(id, await this.readStored(e), 0, opts?.uncached);
  }

  // ---- packs --------------------------------------------------------------

  async readPackHeader(id: PackId, size?: number): Promise<IndexEntry[]> {
    const name = packName(id);
    const sz = size ?? (await this.store.stat(name))?.size;
    if (sz === undefined) throw new StrataError("NOT_FOUND", `pack ${id} is missing`, { subject: id });
    return parsePackHeader(this.key, id, sz, (off, len) => this.store.getRange(name, off, len));
  }

  /**
   * The index entries that point into pack `id`, found from its `header`
   * (`readPackHeader`): the header's ids are looked up in batches and only
   * entries the index places in this pack are kept — a blob the index
   * places elsewhere (first writer wins, a doomed copy re-stored) is not
   * this pack's. Ordered by offset. The catalog has no pack→entries index
   * (migration 0009); this is how a pack's entries are found without
   * scanning it. An index entry into the pack that its header does not list
   * cannot come from addPack or moveBlobs and is not returned: check finds
   * those by count (`packUsage`).
   */
  async indexedEntries(id: PackId, header: readonly IndexEntry[]): Promise<IndexEntry[]> {
    const ids = [...new Set(header.map((h) => h.id))];
    const out: IndexEntry[] = [];
    for (let i = 0; i < ids.length; i += MAX_BATCH) {
      for (const e of (await this.catalog.lookupBlobs(ids.slice(i, i + MAX_BATCH))).values())
        if (e.packId === id) out.push(e);
    }
    return out.sort((a, b) => a.offset - b.offset);
  }

  /**
   * Index packs present in the store but not in the catalog (a backup killed
   * after writing a pack and before indexing it). Damaged ones are reported
   * and skipped. Returns the ids adopted.
   */
  async adoptOrphanPacks(onError?: (id: PackId, e: unknown) => void): Promise<PackId[]> {
    const known = new Set<string>();
    for await (const p of this.catalog.listPacks()) known.add(p.id);
    const adopted: PackId[] = [];
    for await (const obj of this.store.list("packs/")) {
      const id = packIdFromName(obj.name);
      if (!id || known.has(id)) continue;
      try {
        const entries = await this.readPackHeader(id, obj.size);
        await this.catalog.addPack(
          {
            id,
            size: obj.size,
            blobCount: entries.length,
            createdAt: new Date(),
            state: "active",
            doomedAt: null,
          },
          entries,
        );
        adopted.push(id);
      } catch (e) {
        onError?.(id, e);
      }
    }
    return adopted;
  }

  // ---- snapshots ------------------------------------------------------------

  async saveSnapshot(rec: Omit<SnapshotRecord, "id">): Promise<SnapshotRecord> {
    await this.flush();
    const body = Buffer.from(JSON.stringify(snapshotToJson(rec)));
    const id = createHash("sha256").update(body).digest("hex") as SnapshotId;
    await this.store.put(`snapshots/${id}`, seal(this.key, body));
    const full = { ...rec, id };
    await this.catalog.addSnapshot(full);
    return full;
  }

  async loadSnapshotObject(id: SnapshotId): Promise<SnapshotRecord> {
    const sealed = await this.store.get(`snapshots/${id}`);
    const plain = openSealed(this.key, sealed);
    if (!plain) throw new StrataError("DATA_CORRUPT", `snapshot ${id} fails authentication`, { subject: id });
    if (createHash("sha256").update(plain).digest("hex") !== id) {
      throw new StrataError("DATA_CORRUPT", `snapshot ${id} does not match its id`, { subject: id });
    }
    return { ...snapshotFromJson(JSON.parse(plain.toString("utf8"))), id };
  }

  /** "latest", a full id, or a unique id prefix. */
  async resolveSnapshot(ref: string): Promise<SnapshotRecord> {
    if (ref === "latest") {
      const all = await this.catalog.listSnapshots();
      const last = all[all.length - 1];
      if (!last)
        throw new StrataError("NOT_FOUND", "the repository has no snapshots", {
          hint: "run `strata backup PATH` first",
        });
      return last;
    }
    if (!/^[0-9a-f]{1,64}$/.test(ref)) {
      throw new StrataError("INVALID_ARGUMENT", `${JSON.stringify(ref)} is not a snapshot id`, {
        hint: "use `latest`, a snapshot id or a unique prefix of one (see `strata snapshots`)",
      });
    }
    const found = await this.catalog.findSnapshots(ref);
    if (found.length === 0) {
      throw new StrataError("NOT_FOUND", `no snapshot matches ${ref}`, {
        subject: ref,
        hint: "list them with `strata snapshots`",
      });
    }
    if (found.length > 1) {
      throw new StrataError("AMBIGUOUS", `${ref} matches ${found.length} snapshots`, {
        subject: ref,
        hint: "give more characters of the id",
      });
    }
    return found[0]!;
  }

  async removeSnapshots(ids: readonly SnapshotId[]): Promise<void> {
    // Catalog first: a crash in between leaves an object that check reports
    // and that `rebuild` would resurrect — never a catalog row without data.
    await this.catalog.removeSnapshots(ids);
    for (const id of ids) await this.store.delete(`snapshots/${id}`);
  }

  /** Walk the tree from `tree`, visiting nodes depth-first with their paths. */
  async *walk(tree: TreeId, prefix = ""): AsyncGenerator<{ path: string; node: FsNode; rawPath: Buffer[] }> {
    yield* this.walkRaw(tree, prefix, []);
  }

  private async *walkRaw(
    tree: TreeId,
    prefix: string,
    raw: Buffer[],
  ): AsyncGenerator<{ path: string; node: FsNode; rawPath: Buffer[] }> {
    const nodes = await this.loadTree(tree);
    for (const node of nodes) {
      const path = `${prefix}/${displayPath(node.name)}`;
      const rp = [...raw, node.name];
      yield { path, node, rawPath: rp };
      if (node.type === "dir" && node.subtree) yield* this.walkRaw(node.subtree, path, rp);
    }
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      await this.store.close();
    }
  }
}

/** A tree's full encoding and the trees it was rebuilt from (delta bases). */
export interface ResolvedTree {
  bytes: Buffer;
  bases: TreeId[];
}

/** Trees smaller than this (full encoding) are always stored full. */
export const TREE_DELTA_MIN = 1024;
/** Delta links a reader follows (writers make one; see resolveTree). */
const MAX_DELTA_CHAIN = 4;

/** At most `n` holders at a time; the others wait in order. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(n: number) {
    this.free = n;
  }
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

/** A least-recently-used map bounded by the total size of its values. */
class ByteLru<V> {
  private readonly map = new Map<string, V>();
  private bytes = 0;
  constructor(
    private readonly limit: number,
    private readonly sizeOf: (v: V) => number,
  ) {}
  get(k: string): V | undefined {
    const v = this.map.get(k);
    if (v !== undefined) {
      this.map.delete(k);
      this.map.set(k, v);
    }
    return v;
  }
  set(k: string, v: V): void {
    const size = this.sizeOf(v);
    if (size > this.limit / 4) return;
    const old = this.map.get(k);
    if (old !== undefined) {
      this.bytes -= this.sizeOf(old);
      this.map.delete(k);
    }
    this.map.set(k, v);
    this.bytes += size;
    for (const [key, val] of this.map) {
      if (this.bytes <= this.limit) break;
      this.map.delete(key);
      this.bytes -= this.sizeOf(val);
    }
  }
}

export function snapshotToJson(s: Omit<SnapshotRecord, "id">): Record<string, unknown> {
  return { ...s, time: s.time.toISOString() };
}
export function snapshotFromJson(j: Record<string, unknown>): Omit<SnapshotRecord, "id"> {
  return { ...(j as unknown as SnapshotRecord), time: new Date(j.time as string) };
}

export { isStrataError };
