import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { repoRoot } from "./repo-root.js";

/**
 * A real Debian root (bookworm, minbase) used as an endpoint by the heavier
 * tests. Built once with debootstrap and cached under
 * `<repo root>/.cache/debian-bookworm-minbase` (gitignored). The cache is
 * built in a sibling temp dir and renamed into place, so an interrupted build
 * never leaves a half root that later runs would trust. A lock file keeps two
 * test processes from building at once; the loser waits for the winner.
 */

const SUITE = "bookworm";
const NAME = `debian-${SUITE}-minbase`;
/** A failed build is remembered this long so every test file does not retry a dead mirror. */
const FAILURE_TTL_MS = 10 * 60_000;
/** debootstrap of minbase takes a few minutes; give a slow mirror plenty of room. */
const BUILD_WAIT_MS = 30 * 60_000;

export interface DebianRootPaths {
  cacheDir: string;
  root: string;
  lock: string;
  failed: string;
  log: string;
}

export function debianRootPaths(): DebianRootPaths {
  const cacheDir = process.env.STRATA_CACHE_DIR ?? path.join(repoRoot(), ".cache");
  return {
    cacheDir,
    root: path.join(cacheDir, NAME),
    lock: path.join(cacheDir, `${NAME}.lock`),
    failed: path.join(cacheDir, `${NAME}.failed`),
    log: path.join(cacheDir, `${NAME}.log`),
  };
}

let memo: Promise<string | null> | undefined;
let skipReason: string | undefined;

/**
 * Why `debianRoot()` returned null, for `it.skipIf(...)` messages; undefined
 * when the root is available (or not yet asked for).
 */
export function debianRootSkipReason(): string | undefined {
  return skipReason;
}

/**
 * Path of the cached Debian root, building it on first use; null (see
 * `debianRootSkipReason`) when it cannot be had here: not root, no
 * debootstrap, STRATA_SKIP_DEBIAN=1, or the build failed (mirror unreachable).
 */
export function debianRoot(): Promise<string | null> {
  memo ??= resolveDebianRoot().then(
    (r) => {
      if (r.root === null) skipReason = r.reason;
      return r.root;
    },
    (e: unknown) => {
      skipReason = `building the Debian root failed: ${(e as Error).message}`;
      return null;
    },
  );
  return memo;
}

async function resolveDebianRoot(): Promise<{ root: string | null; reason?: string }> {
  const p = debianRootPaths();
  // A finished cache is usable by anyone, root or not (it is only read).
  if (isComplete(p.root)) return { root: p.root };
  if (process.env.STRATA_SKIP_DEBIAN === "1") return { root: null, reason: "STRATA_SKIP_DEBIAN=1" };
  if (process.getuid?.() !== 0)
    return { root: null, reason: "building a Debian root needs root (debootstrap)" };
  if (!hasCommand("debootstrap")) {
    return { root: null, reason: "debootstrap is not installed (apt-get install -y debootstrap)" };
  }
  const recent = await recentFailure(p.failed);
  if (recent) return { root: null, reason: recent };

  await mkdir(p.cacheDir, { recursive: true });
  const deadline = Date.now() + BUILD_WAIT_MS;
  for (;;) {
    if (isComplete(p.root)) return { root: p.root };
    if (await tryLock(p.lock)) {
      try {
        // Re-check under the lock: another process may have just finished.
        if (isComplete(p.root)) return { root: p.root };
        await build(p);
        return { root: p.root };
      } catch (e) {
        const reason = `debootstrap ${SUITE} failed (see ${p.log}): ${(e as Error).message}`;
        await writeFile(p.failed, reason);
        return { root: null, reason };
      } finally {
        await unlink(p.lock).catch(() => {});
      }
    }
    const failed = await recentFailure(p.failed);
    if (failed) return { root: null, reason: failed };
    if (Date.now() > deadline)
      return { root: null, reason: `timed out waiting for the build lock ${p.lock}` };
    await sleep(2000);
  }
}

/** The root is complete once renamed into place; usr/bin/dpkg guards against a foreign directory. */
function isComplete(root: string): boolean {
  return existsSync(path.join(root, "usr/bin/dpkg"));
}

function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

async function recentFailure(file: string): Promise<string | undefined> {
  try {
    const st = await stat(file);
    if (Date.now() - st.mtimeMs < FAILURE_TTL_MS) return await readFile(file, "utf8");
  } catch {
    // no marker: no recent failure
  }
  return undefined;
}

/**
 * Take the lock by exclusive create. A lock whose owner pid is gone (killed
 * build) is stale and is removed so the next attempt can take it.
 */
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

async function build(p: DebianRootPaths): Promise<void> {
  // Leftovers of killed builds: we hold the lock, so no one else is using them.
  for (const entry of await readdir(p.cacheDir)) {
    if (entry.startsWith(`.${NAME}.tmp-`)) await removeBuildDir(path.join(p.cacheDir, entry));
  }
  await rm(p.failed, { force: true });
  const tmp = path.join(p.cacheDir, `.${NAME}.tmp-${process.pid}`);
  const mirror = process.env.STRATA_DEBIAN_MIRROR ?? "http://deb.debian.org/debian";
  const log = await open(p.log, "w");
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn("debootstrap", ["--variant=minbase", SUITE, tmp, mirror], {
        stdio: ["ignore", log.fd, log.fd],
      });
      child.on("error", reject);
      child.on("exit", (code, signal) =>
        code === 0 ? resolve() : reject(new Error(`debootstrap exited with ${signal ?? code}`)),
      );
    });
  } catch (e) {
    await removeBuildDir(tmp);
    throw e;
  } finally {
    await log.close();
  }
  await rename(tmp, p.root);
}

/**
 * debootstrap mounts proc and sys inside the target while it runs; a killed
 * build can leave them mounted, and a recursive rm must never descend into
 * the host's /proc or /sys. Unmount (lazily) whatever is mounted below first.
 */
async function removeBuildDir(dir: string): Promise<void> {
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const below = mountinfo
    .split("\n")
    .map((line) => line.split(" ")[4])
    .filter((m): m is string => m !== undefined && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const m of below) spawnSync("umount", ["-l", m], { stdio: "ignore" });
  await rm(dir, { recursive: true, force: true });
}
