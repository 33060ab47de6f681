import { spawnSync } from "node:child_process";
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * Build an expensive directory once per machine and share it between test
 * processes. The build runs in a sibling temp dir that is renamed into place
 * only when complete, so a killed build never leaves a half result that later
 * runs would trust. An exclusive lock file (holding the builder's pid) keeps
 * two processes from building at once; the others wait. A lock whose pid is
 * dead is stale and taken over. A failure is remembered for a while so that
 * every test file does not retry, say, an unreachable mirror.
 */
export interface CachedBuildSpec {
  /** Where the finished directory lives. */
  target: string;
  /** Whether `target` holds a finished build (checked before and after locking). */
  isComplete(target: string): boolean;
  /** Create and fill `tmp` (it does not exist yet), writing progress to `log`; throw on failure. */
  build(tmp: string, log: string): Promise<void>;
  /** How long a failure is trusted before building again. Default 10 minutes. */
  failureTtlMs?: number;
  /** How long to wait for another process's build. Default 30 minutes. */
  waitMs?: number;
  /** Lock polling interval. Default 2 s. */
  pollMs?: number;
}

export type CachedBuildResult = { path: string; reason?: undefined } | { path: null; reason: string };

export function cachedBuildFiles(target: string): {
  lock: string;
  failed: string;
  log: string;
  tmpPrefix: string;
} {
  const dir = path.dirname(target);
  const name = path.basename(target);
  return {
    lock: path.join(dir, `${name}.lock`),
    failed: path.join(dir, `${name}.failed`),
    log: path.join(dir, `${name}.log`),
    tmpPrefix: `.${name}.tmp-`,
  };
}

export async function cachedBuild(spec: CachedBuildSpec): Promise<CachedBuildResult> {
  const { target } = spec;
  if (spec.isComplete(target)) return { path: target };
  const files = cachedBuildFiles(target);
  const ttl = spec.failureTtlMs ?? 10 * 60_000;
  const recent = await recentFailure(files.failed, ttl);
  if (recent) return { path: null, reason: recent };

  await mkdir(path.dirname(target), { recursive: true });
  const deadline = Date.now() + (spec.waitMs ?? 30 * 60_000);
  for (;;) {
    if (spec.isComplete(target)) return { path: target };
    if (await tryLock(files.lock)) {
      try {
        // Another process may have finished between our check and the lock.
        if (spec.isComplete(target)) return { path: target };
        await buildInto(spec, files);
        return { path: target };
      } catch (e) {
        const reason = `building ${target} failed (log: ${files.log}): ${(e as Error).message}`;
        await writeFile(files.failed, reason);
        return { path: null, reason };
      } finally {
        await unlink(files.lock).catch(() => {});
      }
    }
    const failed = await recentFailure(files.failed, ttl);
    if (failed) return { path: null, reason: failed };
    if (Date.now() > deadline)
      return { path: null, reason: `timed out waiting for the build lock ${files.lock}` };
    await sleep(spec.pollMs ?? 2000);
  }
}

async function buildInto(spec: CachedBuildSpec, files: ReturnType<typeof cachedBuildFiles>): Promise<void> {
  const dir = path.dirname(spec.target);
  // Leftovers of killed builds: we hold the lock, so nobody else is using them.
  for (const entry of await readdir(dir)) {
    if (entry.startsWith(files.tmpPrefix)) await removeBuildDir(path.join(dir, entry));
  }
  await rm(files.failed, { force: true });
  // A target that exists but is not complete (foreign or damaged) is replaced.
  await removeBuildDir(spec.target);
  const tmp = path.join(dir, `${files.tmpPrefix}${process.pid}`);
  try {
    await spec.build(tmp, files.log);
  } catch (e) {
    await removeBuildDir(tmp);
    throw e;
  }
  if (!spec.isComplete(tmp)) {
    await removeBuildDir(tmp);
    throw new Error("the build finished but its result is incomplete");
  }
  await rename(tmp, spec.target);
}

async function recentFailure(file: string, ttl: number): Promise<string | undefined> {
  try {
    const st = await stat(file);
    if (Date.now() - st.mtimeMs < ttl) return await readFile(file, "utf8");
  } catch {
    // no marker: no recent failure
  }
  return undefined;
}

/** Take the lock by exclusive create; clear it if its owner is dead, for the next attempt. */
async function tryLock(lock: string): Promise<boolean> {
  try {
    const fh = await open(lock, "wx");
    await fh.writeFile(String(process.pid));
    await fh.close();
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  const owner = Number.parseInt(await readFile(lock, "utf8").catch(() => ""), 10);
  // An empty lock may be one just created and not yet written: only a dead pid is stale.
  if (!Number.isNaN(owner) && !pidAlive(owner)) await unlink(lock).catch(() => {});
  return false;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Remove a build directory. debootstrap mounts proc and sys inside its target
 * while it runs; a killed build can leave them mounted, and a recursive rm
 * must never descend into the host's /proc or /sys. Unmount (lazily)
 * whatever is mounted below first.
 */
export async function removeBuildDir(dir: string): Promise<void> {
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const below = mountinfo
    .split("\n")
    .map((line) => line.split(" ")[4])
    .filter((m): m is string => m !== undefined && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const m of below) spawnSync("umount", ["-l", m], { stdio: "ignore" });
  await rm(dir, { recursive: true, force: true });
}
