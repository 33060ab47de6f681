import { closeSync, lstatSync, openSync, writeSync } from "node:fs";
import * as path from "node:path";
import { openSqliteFileCache } from "@strata/catalog";
import type { FsNode } from "@strata/core";
import { native } from "@strata/fs";
import { Backup, type Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import { LocalRestoreSource } from "../src/restore/local-source.js";
import { SeedReader } from "../src/restore/seed.js";
import { fileCacheVouch } from "../src/restore/vouch.js";
import { cleanup, tmp } from "./helpers.js";
import { closeTestRepo, copyTree, createTestRepo, diff, testPolicy } from "./restore-helpers.js";
import { buildSmallRoot } from "./restore-trees.js";

/*
 * A revert right after the safety upload need not read every local file
 * again: the agent's file cache records each file's signature (dev, ino,
 * size, mtime, ctime) and chunk list. These tests fill a real SQLite file
 * cache with a real backup of a root and check what it vouches for.
 */

const KEY = "test.parent";
let repo: Repository;
let root: string;
let cacheFile: string;
let src: LocalRestoreSource;

beforeAll(async () => {
  const base = tmp("strata-vouch-");
  root = path.join(base, "root");
  buildSmallRoot(root);
  repo = await createTestRepo(path.join(base, "repo"));
  cacheFile = path.join(base, "files.db");
  const cache = openSqliteFileCache(cacheFile);
  try {
    const { snapshot } = await new Backup(repo, { paths: [root], threads: 1, fileCache: cache }).run();
    cache.setMeta(KEY, "S1");
    src = await LocalRestoreSource.open(repo, snapshot, { path: path.resolve(root) });
  } finally {
    cache.close();
  }
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

/** The snapshot's entry of `rel` (a file of the root). */
async function nodeOf(rel: string): Promise<FsNode> {
  let ref = src.snapshot.root;
  const segs = rel.split("/");
  for (const [i, seg] of segs.entries()) {
    const t = await src.loadTree(ref);
    const at = t.nodes.findIndex((n) => n.name.toString() === seg);
    if (i === segs.length - 1) return t.nodes[at]!;
    ref = t.subtrees[at]!;
  }
  throw new Error("unreachable");
}

describe("the file cache vouches for unchanged local files", () => {
  it("the engine takes vouched files as unchanged without reading them", async () => {
    const target = tmp("strata-root-");
    copyTree(root, target);
    const read = vi.spyOn(SeedReader.prototype, "sameContent");
    const asked: string[] = [];
    const r = await runRestore(src, {
      root: target,
      stateDir: tmp("strata-state-"),
      id: "v1",
      kind: "full",
      policy: testPolicy(),
      vouch: (abs) => {
        asked.push(abs.toString());
        return true;
      },
    }).done;
    read.mockRestore();
    expect(asked.length).toBeGreaterThan(3);
    expect(read).not.toHaveBeenCalled();
    expect(r.unchangedFiles).toBeGreaterThan(3);
    expect(r.vouchedFiles).toBe(asked.length);
    expect(diff(root, target, /(^| )(tmp|var\/cache)\/./)).toEqual([]);
    // Without a vouch the same restore reads them.
    const again = tmp("strata-root-");
    copyTree(root, again);
    const read2 = vi.spyOn(SeedReader.prototype, "sameContent");
    const r2 = await runRestore(src, {
      root: again,
      stateDir: tmp("strata-state-"),
      id: "v2",
      kind: "full",
      policy: testPolicy(),
    }).done;
    expect(read2).toHaveBeenCalled();
    expect(r2.vouchedFiles).toBe(0);
    read2.mockRestore();
  });
  it("a file whose signature and chunks are the cache's; not one changed behind its old mtime", async () => {
    const cache = openSqliteFileCache(cacheFile);
    try {
      expect(fileCacheVouch(cache, "another snapshot", KEY)).toBeNull();
      const vouch = fileCacheVouch(cache, "S1", KEY)!;
      const rel = "usr/bin/x";
      const abs = Buffer.from(path.join(root, rel));
      const node = await nodeOf(rel);
      expect(vouch(abs, lstatSync(abs, { bigint: true }), node)).toBe(true);
      // Another file's content is not this one's.
      expect(vouch(abs, lstatSync(abs, { bigint: true }), await nodeOf("etc/hostname"))).toBe(false);
      // Other bytes behind the same size and mtime: the ctime gives it away.
      const before = lstatSync(abs, { bigint: true });
      const fd = openSync(abs, "r+");
      writeSync(fd, Buffer.from("#"), 0, 1, 5);
      closeSync(fd);
      native.lutimens(abs, before.atimeNs, before.mtimeNs);
      const now = lstatSync(abs, { bigint: true });
      expect([now.size, now.mtimeNs, now.ino]).toEqual([before.size, before.mtimeNs, before.ino]);
      expect(vouch(abs, now, node)).toBe(false);
      // A file the cache does not know (an unlisted directory): nothing vouched.
      expect(vouch(Buffer.from(path.join(root, "nowhere/f")), now, node)).toBe(false);
    } finally {
      cache.close();
    }
  });
});
