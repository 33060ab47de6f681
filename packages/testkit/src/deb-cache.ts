import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { open } from "node:fs/promises";
import path from "node:path";
import { cachedBuild } from "./cached-build.js";
import { repoRoot } from "./repo-root.js";

/**
 * A local cache of Debian packages (.deb files), so tests install real
 * packages with `apt-get` inside a chroot without a network at test time.
 * Downloaded once with the host's `apt-get download` (the host is Debian 12,
 * like the bookworm root the tests use) into
 * `<repo root>/.cache/debs-<name>` and shared by every later run.
 */
export interface DebCache {
  dir: string;
  /** Absolute paths of the .deb files, sorted. */
  files: string[];
}

export type DebCacheResult = { cache: DebCache; reason?: undefined } | { cache: null; reason: string };

const memo = new Map<string, Promise<DebCacheResult>>();

/** Packages `names` (exact names, with their listed dependencies), cached as `.cache/debs-<cacheName>`. */
export function debCache(cacheName: string, names: string[]): Promise<DebCacheResult> {
  let m = memo.get(cacheName);
  if (!m) {
    m = resolve(cacheName, names).catch((e: unknown) => ({
      cache: null,
      reason: `downloading ${names.join(", ")} failed: ${(e as Error).message}`,
    }));
    memo.set(cacheName, m);
  }
  return m;
}

function debsIn(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".deb"))
    .sort()
    .map((f) => path.join(dir, f));
}

async function resolve(cacheName: string, names: string[]): Promise<DebCacheResult> {
  const target = path.join(
    process.env.STRATA_TEST_CACHE_DIR ?? path.join(repoRoot(), ".cache"),
    `debs-${cacheName}`,
  );
  // Every name has its .deb: a finished cache.
  const isComplete = (dir: string) =>
    existsSync(dir) && names.every((n) => readdirSync(dir).some((f) => f.startsWith(`${n}_`)));
  if (isComplete(target)) return { cache: { dir: target, files: debsIn(target) } };
  if (process.env.STRATA_SKIP_DEBIAN === "1") return { cache: null, reason: "STRATA_SKIP_DEBIAN=1" };
  if (spawnSync("sh", ["-c", "command -v apt-get"], { stdio: "ignore" }).status !== 0)
    return { cache: null, reason: "apt-get is not installed (a Debian host is needed)" };
  const r = await cachedBuild({
    target,
    isComplete,
    build: async (tmp, logFile) => {
      const { mkdir } = await import("node:fs/promises");
      await mkdir(tmp, { recursive: true });
      const log = await open(logFile, "w");
      try {
        await new Promise<void>((res, rej) => {
          const child = spawn("apt-get", ["download", ...names], {
            cwd: tmp,
            stdio: ["ignore", log.fd, log.fd],
          });
          const timer = setTimeout(() => child.kill("SIGTERM"), 5 * 60_000);
          child.on("error", rej);
          child.on("exit", (code, signal) => {
            clearTimeout(timer);
            if (code === 0) res();
            else rej(new Error(`apt-get download exited with ${signal ?? code} (see ${logFile})`));
          });
        });
      } finally {
        await log.close();
      }
    },
  });
  if (r.path === null) return { cache: null, reason: r.reason };
  return { cache: { dir: r.path, files: debsIn(r.path) } };
}
