import { createHash } from "node:crypto";
import { type BlobId, chunkIdsOf, decodeTree, type FsNode, StrataError, type TreeId } from "@strata/core";
import { MAX_BATCH, type SnapshotRecord } from "./catalog.js";
import type { Repository } from "./repository.js";

/**
 * Mark every blob reachable from `snapshots` in the catalog's mark set. Each
 * tree is visited once (the mark set says which were seen), so the cost is
 * the number of distinct trees, and memory holds one path of the walk plus
 * one batch of ids. Throws naming the tree when one cannot be read: callers
 * that delete data must stop then.
 */
export async function markReachable(
  repo: Repository,
  snapshots: readonly SnapshotRecord[],
  onTree?: () => void,
): Promise<void> {
  const cat = repo.catalog;
  await cat.beginMark();
  let batch: BlobId[] = [];
  const flush = async () => {
    if (batch.length) await cat.mark(batch);
    batch = [];
  };
  const visit = async (id: TreeId, where: string): Promise<void> => {
    // "Visited" is its own mark: a tree marked only as a delta base (below)
    // is still walked when a snapshot reaches it.
    const fresh = await cat.mark([visitedMark(id)]);
    if (fresh.length === 0) return;
    let nodes: FsNode[];
    try {
      const t = await repo.loadTreeResolved(id);
      // The tree's blob, and the base its stored delta is rebuilt from:
      // a delta keeps its base alive (not what the base references).
      batch.push(id as string as BlobId, ...(t.bases as string[] as BlobId[]));
      nodes = decodeTree(t.bytes, `tree ${id}`);
    } catch (e) {
      throw new StrataError("DATA_CORRUPT", `cannot read tree ${id} (${where}): ${(e as Error).message}`, {
        subject: id,
        hint: "run `strata check --read-data` to see the damage",
      });
    }
    onTree?.();
    for (const n of nodes) {
      for (const c of chunkIdsOf(n)) {
        batch.push(c);
        if (batch.length >= MAX_BATCH) await flush();
      }
    }
    for (const n of nodes)
      if (n.type === "dir" && n.subtree) await visit(n.subtree, `${where}/${n.name.toString()}`);
  };
  for (const s of snapshots) await visit(s.tree, `snapshot ${s.id.slice(0, 8)}`);
  // Blobs pinned by open upload sessions are kept like a snapshot's: the
  // chunks a session possesses and the trees it uploaded (with what they reach).
  for await (const page of cat.listPins()) {
    const entries = await cat.lookupBlobs(page);
    for (const id of page) {
      const e = entries.get(id);
      if (e?.type === "tree") await visit(id as unknown as TreeId, `upload pin ${id.slice(0, 8)}`);
      else {
        batch.push(id);
        if (batch.length >= MAX_BATCH) await flush();
      }
    }
  }
  await flush();
}

/**
 * The mark that says "tree `id` was walked": an id no blob has (a hash of
 * the tree id under a label), so it never keeps a pack alive. The tree's
 * own id is marked as a blob, which a delta also does for its base.
 */
function visitedMark(id: TreeId): BlobId {
  return createHash("sha256").update(`strata:tree-walked:${id}`).digest("hex") as BlobId;
}
