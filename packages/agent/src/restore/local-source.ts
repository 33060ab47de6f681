import type { BlobId, ChunkerParams, FsNode, TreeId } from "@strata/core";
import { StrataError, shortId } from "@strata/core";
import { type IndexEntry, type Repository, readBlobs, type SnapshotRecord } from "@strata/repo";
import type { ChunkRequest, RestoreSource, SourceStats, SourceTree, TreeRef } from "./source.js";

export interface LocalSourceOptions {
  /**
   * Restore this directory of the snapshot (absolute, e.g. the path a
   * `Backup` of /srv/root recorded) instead of the snapshot's root. Its own
   * entry becomes `snapshot.node`, so the restored root gets its metadata.
   */
  path?: string;
}

/**
 * A RestoreSource over a repository opened in this process (tests, and
 * `strata restore` against a local repository). Grants are ignored: whoever
 * holds the repository's password may read all of it. Trees come from the
 * repository (the codec checks each hash); chunks are read pack by pack with
 * ranged reads (`readBlobs`), each checked by the codec before `onChunk`.
 */
export class LocalRestoreSource implements RestoreSource {
  readonly stats: SourceStats = { bytesReceived: 0, chunksReceived: 0 };
  readonly chunker: ChunkerParams;

  private constructor(
    private readonly repo: Repository,
    readonly snapshot: { id: string; time: string; root: TreeRef; node?: FsNode },
  ) {
    this.chunker = repo.config.chunker;
  }

  /** `snapshot`: a record, or "latest", an id or a unique id prefix. */
  static async open(
    repo: Repository,
    snapshot: SnapshotRecord | string,
    opts: LocalSourceOptions = {},
  ): Promise<LocalRestoreSource> {
    const rec = typeof snapshot === "string" ? await repo.resolveSnapshot(snapshot) : snapshot;
    let tree: TreeId = rec.tree;
    let node: FsNode | undefined;
    const segs = (opts.path ?? "/").split("/").filter(Boolean);
    let walked = "";
    for (const seg of segs) {
      const nodes = await repo.loadTree(tree);
      const want = Buffer.from(seg);
      walked += `/${seg}`;
      const n = nodes.find((x) => x.name.equals(want));
      if (n?.type !== "dir" || !n.subtree) {
        throw new StrataError(
          "NOT_FOUND",
          `${walked} is ${n ? "not a directory" : "not"} in snapshot ${shortId(rec.id)}`,
          { subject: walked, hint: "list the snapshot with `strata ls SNAPSHOT`" },
        );
      }
      tree = n.subtree;
      node = n;
    }
    return new LocalRestoreSource(repo, {
      id: rec.id,
      time: rec.time.toISOString(),
      root: { id: tree },
      ...(node ? { node } : {}),
    });
  }

  async loadTree(ref: TreeRef, signal?: AbortSignal): Promise<SourceTree> {
    signal?.throwIfAborted();
    const nodes = await this.repo.loadTree(ref.id);
    return { nodes, subtrees: nodes.map((n) => (n.subtree ? { id: n.subtree } : undefined)) };
  }

  async fetchChunks(
    requests: ChunkRequest[],
    onChunk: (id: BlobId, plain: Buffer) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void> {
    const ids = [...new Set(requests.flatMap((r) => r.ids))];
    if (!ids.length) return;
    signal?.throwIfAborted();
    const index = await this.repo.lookup(ids);
    const wants: { entry: IndexEntry }[] = [];
    const failed: string[] = [];
    for (const id of ids) {
      const entry = index.get(id);
      if (entry) wants.push({ entry });
      else failed.push(`${id} (not in the index)`);
    }
    await readBlobs(this.repo, wants, async (w, plain, error) => {
      signal?.throwIfAborted();
      if (!plain) {
        failed.push(`${w.entry.id} (${error?.message ?? "unreadable"})`);
        return;
      }
      this.stats.chunksReceived++;
      await onChunk(w.entry.id, plain);
    });
    if (failed.length) {
      throw new StrataError(
        "DATA_CORRUPT",
        `${failed.length} chunk(s) of snapshot ${shortId(this.snapshot.id)} cannot be read: ${failed.slice(0, 5).join(", ")}${failed.length > 5 ? ", …" : ""}`,
        {
          subject: failed[0]!.split(" ")[0]!,
          hint: "run `strata check --read-data` on the repository; restore another snapshot meanwhile",
        },
      );
    }
  }
}
