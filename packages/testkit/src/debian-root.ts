import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { open } from "node:fs/promises";
import path from "node:path";
import { cachedBuild } from "./cached-build.js";
import { repoRoot } from "./repo-root.js";

/**
 * A real Debian root (bookworm, minbase) used as an endpoint by the heavier
 * tests. Built once with debootstrap and cached under
 * `<repo root>/.cache/debian-bookworm-minbase` (gitignored; STRATA_TEST_CACHE_DIR
 * moves it). See `cachedBuild` for how interrupted and parallel builds are
 * kept safe. STRATA_DEBIAN_MIRROR overrides the mirror; STRATA_SKIP_DEBIAN=1
 * skips the tests that need it.
 */

/** Suites tests may ask for: bookworm (Debian 12) is the default endpoint; trixie (13) is the OS-migration target. */
export type DebianSuite = "bookworm" | "trixie";
/** A minbase debootstrap takes about a minute on a good link. */
const BUILD_TIMEOUT_MS = 20 * 60_000;

/** Where the cached root of `suite` lives (whether or not it has been built yet). */
export function debianRootPath(suite: DebianSuite = "bookworm"): string {
  return path.join(
    process.env.STRATA_TEST_CACHE_DIR ?? path.join(repoRoot(), ".cache"),
    `debian-${suite}-minbase`,
  );
}

const memo = new Map<DebianSuite, Promise<string | null>>();
const skipReasons = new Map<DebianSuite, string | undefined>();

/**
 * Why `debianRoot(suite)` returned null, for skip messages; undefined when the
 * root is available (or not yet asked for).
 */
export function debianRootSkipReason(suite: DebianSuite = "bookworm"): string | undefined {
  return skipReasons.get(suite);
}

/**
 * Path of the cached Debian root of `suite`, building it on first use; null
 * (see `debianRootSkipReason`) when it cannot be had here: not root, no
 * debootstrap, STRATA_SKIP_DEBIAN=1, or the build failed (mirror unreachable).
 */
export function debianRoot(suite: DebianSuite = "bookworm"): Promise<string | null> {
  let m = memo.get(suite);
  if (!m) {
    m = resolveDebianRoot(suite).then(
      (r) => {
        skipReasons.set(suite, r.reason);
        return r.path;
      },
      (e: unknown) => {
        skipReasons.set(suite, `building the Debian ${suite} root failed: ${(e as Error).message}`);
        return null;
      },
    );
    memo.set(suite, m);
  }
  return m;
}

async function resolveDebianRoot(
  suite: DebianSuite,
): Promise<{ path: string | null; reason?: string | undefined }> {
  const target = debianRootPath(suite);
  // A finished cache is usable by anyone, root or not: tests only read it.
  if (isComplete(target)) return { path: target };
  if (process.env.STRATA_SKIP_DEBIAN === "1") return { path: null, reason: "STRATA_SKIP_DEBIAN=1" };
  if (process.getuid?.() !== 0)
    return { path: null, reason: "building a Debian root needs root (debootstrap)" };
  if (spawnSync("sh", ["-c", "command -v debootstrap"], { stdio: "ignore" }).status !== 0) {
    return { path: null, reason: "debootstrap is not installed (apt-get install -y debootstrap)" };
  }
  return cachedBuild({ target, isComplete, build: (tmp, log) => debootstrap(suite, tmp, log) });
}

/** usr/bin/dpkg marks a finished root, and guards against a foreign directory of the same name. */
function isComplete(root: string): boolean {
  return existsSync(path.join(root, "usr/bin/dpkg"));
}

async function debootstrap(suite: DebianSuite, tmp: string, logFile: string): Promise<void> {
  const mirror = process.env.STRATA_DEBIAN_MIRROR ?? "http://deb.debian.org/debian";
  const log = await open(logFile, "w");
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn("debootstrap", ["--variant=minbase", suite, tmp, mirror], {
        stdio: ["ignore", log.fd, log.fd],
      });
      // A stalled mirror must not hang the test run forever.
      const timer = setTimeout(() => child.kill("SIGTERM"), BUILD_TIMEOUT_MS);
      child.on("error", reject);
      child.on("exit", (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new Error(`debootstrap exited with ${signal ?? code}`));
      });
    });
  } finally {
    await log.close();
  }
}
