import type { BlobId, ChunkerParams, FsNode, TreeId } from "@strata/core";

/**
 * Where a restore reads a snapshot from (docs/design/restore.md, "Sources").
 * The engine (engine.ts) only ever sees this interface, so the same code
 * restores from a local repository (tests, `strata restore` later), from the
 * server over HTTPS (RemoteRestoreSource), or through the agent's user socket
 * (single files for an unprivileged user).
 */

/**
 * A tree the caller may read, with the capability that lets it. A local
 * source ignores `grant`; the server issues one per tree it serves
 * (HMAC of the restore session and the tree id), so knowing a tree or chunk
 * id grants nothing.
 */
export interface TreeRef {
  id: TreeId;
  grant?: string;
}

export interface SourceTree {
  nodes: FsNode[];
  /** `subtrees[i]` is the ref of `nodes[i]`'s subtree (directories only). */
  subtrees: (TreeRef | undefined)[];
}

export interface ChunkRequest {
  /** The tree whose files name `ids` (the grant is checked against it). */
  tree: TreeRef;
  ids: BlobId[];
}

export interface SourceStats {
  /** Bytes received over the network (0 for a local source). */
  bytesReceived: number;
  chunksReceived: number;
  /** Requests repeated after a network failure (a remote source). */
  retries?: number;
}

export interface RestoreSource {
  /**
   * The snapshot restored. `node`, when the source knows it, is the entry
   * of the restored directory itself (its mode, owner, times, xattrs): the
   * engine gives the root those (a source over a sub-path of a snapshot
   * knows it; a whole endpoint snapshot records no entry for `/`).
   */
  readonly snapshot: { id: string; time: string; root: TreeRef; node?: FsNode };
  /** The repository's chunker parameters, so seed files are cut the same way. */
  readonly chunker: ChunkerParams;
  readonly stats: SourceStats;
  /** Load one tree; its hash is verified before it is returned. */
  loadTree(ref: TreeRef, signal?: AbortSignal): Promise<SourceTree>;
  /**
   * Optional: several trees in one round trip (the remote source: one
   * request instead of one per directory). `onTree(i, tree)` sees each of
   * `refs` in order, verified as `loadTree` verifies it, as it arrives;
   * any failure rejects (the trees not yet seen are not delivered).
   * `maxTrees` is the most a call may ask for.
   */
  loadTrees?(
    refs: TreeRef[],
    onTree: (i: number, tree: SourceTree) => void,
    signal?: AbortSignal,
  ): Promise<void>;
  readonly maxTrees?: number;
  /**
   * Fetch chunks, in any order; each chunk's SHA-256 is checked before
   * `onChunk` sees its plaintext. Ids the source cannot deliver reject the
   * promise with a StrataError naming them (after delivering the others).
   */
  fetchChunks(
    requests: ChunkRequest[],
    onChunk: (id: BlobId, plain: Buffer) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void>;
  /**
   * Optional, for the engine's worker threads: the same chunks as received,
   * in wire form (`compressed`: zstd) and NOT verified: the caller must
   * decompress into the length the snapshot names and check the SHA-256
   * before using a byte (the restore workers do, before they write). A
   * chunk not asked for is refused here; ids not delivered reject as in
   * `fetchChunks`.
   */
  fetchChunkFrames?(
    requests: ChunkRequest[],
    onFrame: (id: BlobId, compressed: boolean, payload: Buffer) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void>;
  close?(): Promise<void>;
}
