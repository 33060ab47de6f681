import { createHash } from "node:crypto";
import { closeSync, mkdirSync, openSync, writeSync } from "node:fs";
import * as path from "node:path";
import { debianRoot, debianRootSkipReason } from "@strata/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, duBytes, isRoot, newEnv, ok, sh, tmp } from "./helpers.js";

afterAll(cleanup);

/** Deterministic pseudo-random bytes (SHA-256 in counter mode). */
function fillDeterministic(file: string, size: number, seed: string, prefix?: Buffer): void {
  const fd = openSync(file, "w");
  try {
    if (prefix) writeSync(fd, prefix);
    const block = Buffer.allocUnsafe(1 << 20);
    let counter = 0;
    for (let off = 0; off < size; off += block.length) {
      for (let i = 0; i < block.length; i += 32) {
        createHash("sha256").update(`${seed}:${counter++}`).digest().copy(block, i);
      }
      writeSync(fd, block, 0, Math.min(block.length, size - off));
    }
  } finally {
    closeSync(fd);
  }
}

describe("deduplication", () => {
  it("inserting 100 bytes at the start of a 200 MiB file adds < 1% of the file", () => {
    const dir = tmp();
    const src = path.join(dir, "data");
    mkdirSync(src);
    const file = path.join(src, "big.bin");
    const size = 200 * 1024 * 1024;
    fillDeterministic(file, size, "dedup");
    const env = newEnv();
    ok(env, "repo", "init");
    ok(env, "backup", src);
    const before = duBytes(env.repo);
    fillDeterministic(file, size, "dedup", Buffer.alloc(100, 7));
    const b = ok(env, "backup", src, "--json");
    expect(b.snapshot.stats.filesChanged).toBe(1);
    const grown = duBytes(env.repo) - before;
    expect(grown).toBeLessThan(size * 0.01);
  });

  describe("a Debian root backed up twice under different paths", async () => {
    const root = await debianRoot();
    it.skipIf(!root || !isRoot)(`adds < 1% the second time (${debianRootSkipReason() ?? "root ok"})`, () => {
      const copy = path.join(tmp(), "debian-copy");
      sh(`cp -a ${JSON.stringify(root)} ${JSON.stringify(copy)}`);
      const env = newEnv();
      ok(env, "repo", "init");
      ok(env, "backup", root!);
      const first = duBytes(env.repo);
      ok(env, "backup", copy);
      const second = duBytes(env.repo);
      expect(second - first).toBeLessThan(first * 0.01);
    });
  });
});
