import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

const created = new Set<string>();

/** A fresh directory under os.tmpdir(); remembered so `cleanupTempDirs` can remove it. */
export async function makeTempDir(prefix = "strata-"): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  created.add(dir);
  return dir;
}

/** Remove one directory tree (immutable files aside, nothing a test creates survives `rm -rf`). */
export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  created.delete(dir);
}

/**
 * Remove every directory made by `makeTempDir` in this process. Call from
 * `afterAll`; set STRATA_KEEP_TMP=1 to keep them for post-mortem.
 */
export async function cleanupTempDirs(): Promise<void> {
  if (process.env.STRATA_KEEP_TMP === "1") return;
  await Promise.all([...created].map((d) => removeDir(d)));
}
