import { spawnSync } from "node:child_process";
import { StrataError } from "@strata/core";

/** rsync flags of the Fidelity invariant, plus --delete so extra entries in `dst` count as differences. */
export const RSYNC_CHECK_FLAGS = [
  "-aHAX",
  "--checksum",
  "--dry-run",
  "--itemize-changes",
  "--numeric-ids",
  "--delete",
];

/**
 * What rsync would change to make `dst` equal `src`, one itemized line per
 * difference (content, size, mtime, mode, owner, ACL, xattr, hard links,
 * device numbers, extra or missing entries). Empty means identical. Both
 * directories get a trailing slash so rsync compares their contents rather
 * than nesting `src` inside `dst`.
 */
export function rsyncItemize(src: string, dst: string): string {
  const r = spawnSync("rsync", [...RSYNC_CHECK_FLAGS, withSlash(src), withSlash(dst)], {
    encoding: "buffer",
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error) {
    throw new StrataError(
      "IO_ERROR",
      `running rsync to compare ${src} with ${dst} failed: ${r.error.message}`,
      {
        subject: src,
        cause: r.error,
        hint: "install rsync (apt-get install -y rsync)",
      },
    );
  }
  if (r.status !== 0) {
    throw new StrataError(
      "IO_ERROR",
      `rsync comparing ${src} with ${dst} exited with ${r.status ?? r.signal}: ${r.stderr.toString().trim()}`,
      { subject: src },
    );
  }
  return r.stdout.toString("latin1");
}

/**
 * Copy `src` to `dst` with every attribute rsync knows (-aHAX, numeric ids,
 * holes kept sparse). For tests: the reference a restore is compared to.
 */
export function rsyncCopy(src: string, dst: string): void {
  const r = spawnSync("rsync", ["-aHAX", "--numeric-ids", "--sparse", withSlash(src), withSlash(dst)], {
    encoding: "utf8",
  });
  if (r.error || r.status !== 0) {
    throw new StrataError(
      "IO_ERROR",
      `rsync copy of ${src} to ${dst} failed: ${r.error?.message ?? r.stderr.trim()}`,
      {
        subject: src,
      },
    );
  }
}

function withSlash(dir: string): string {
  return dir.endsWith("/") ? dir : `${dir}/`;
}
