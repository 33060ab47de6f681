import { type BigIntStats, existsSync } from "node:fs";
import type { FsNode } from "@strata/core";
import { cachedFiles, type FileCache } from "@strata/repo";
import { fileCachePath } from "../protect.js";
import { CACHE_PARENT } from "../upload.js";

/** Whether the root file at `abs` (lstat'ed as `st`) is known to hold `node`'s content. */
export type Vouch = (abs: Buffer, st: BigIntStats, node: FsNode) => boolean;

/**
 * A vouch from the agent's file cache (restore.md, "Engine decisions"):
 * the cache records, per directory, each file's signature (device, inode,
 * size, mtime, ctime) and the chunk list its content had when it was last
 * read (or inherited under the same signature). A root file whose lstat
 * still shows that signature, and whose recorded chunk list is the
 * snapshot's, is unchanged without reading it: the trust an upload already
 * places in the cache. Only rows of completed runs count, and only when the
 * cache was committed as `snapshot` (the safety upload just made). Null when
 * the cache cannot vouch at all.
 */
export function fileCacheVouch(cache: FileCache, snapshot: string, parentKey: string): Vouch | null {
  if (cache.getMeta(parentKey) !== snapshot) return null;
  const gen = cache.completedGen();
  if (gen <= 0) return null;
  let dir: Buffer | null = null;
  let files: ReturnType<typeof cachedFiles> = null;
  return (abs, st, node) => {
    const cut = abs.lastIndexOf(0x2f);
    if (cut < 0 || !st.isFile()) return false;
    const parent = cut === 0 ? abs.subarray(0, 1) : abs.subarray(0, cut);
    if (!dir?.equals(parent)) {
      dir = Buffer.from(parent);
      files = cachedFiles(cache, dir, gen);
    }
    const e = files?.get(abs.subarray(cut + 1).toString("latin1"));
    if (e?.node.type !== "file") return false;
    const s = e.sig;
    if (s.dev !== st.dev || s.ino !== st.ino || s.size !== st.size) return false;
    if (s.mtimeNs !== st.mtimeNs || s.ctimeNs !== st.ctimeNs) return false;
    return samePieces(e.node, node);
  };
}

function samePieces(a: FsNode, b: FsNode): boolean {
  if (a.size !== b.size) return false;
  const pa = a.content ?? [];
  const pb = b.content ?? [];
  if (pa.length !== pb.length) return false;
  for (let i = 0; i < pa.length; i++) {
    const x = pa[i]!;
    const y = pb[i]!;
    if ("hole" in x || "hole" in y) {
      if (!("hole" in x && "hole" in y) || x.hole !== y.hole) return false;
    } else if (x.id !== y.id || x.len !== y.len) return false;
  }
  return true;
}

/**
 * The agent's own file cache as a vouch for a restore right after the
 * upload that committed `snapshot` (a revert's safety upload); null when
 * there is no cache or it was not committed as that snapshot. `close` it
 * after the restore.
 */
export async function agentCacheVouch(
  stateDir: string,
  snapshot: string,
): Promise<{ vouch: Vouch; close(): void } | null> {
  const file = fileCachePath(stateDir);
  if (!existsSync(file)) return null;
  // Loaded on use: the catalog (SQLite) is not needed by every command that loads the agent.
  const { openSqliteFileCache } = await import("@strata/catalog");
  const cache = openSqliteFileCache(file);
  const vouch = fileCacheVouch(cache, snapshot, CACHE_PARENT);
  if (!vouch) {
    cache.close();
    return null;
  }
  return { vouch, close: () => cache.close() };
}
