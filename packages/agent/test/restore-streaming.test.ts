import { existsSync, readdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import type { BlobId, ChunkerParams } from "@strata/core";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { ChunkRequest, RestoreSource, SourceTree, TreeRef } from "../src/restore/source.js";
import { cleanup, tmp } from "./helpers.js";
import {
  closeTestRepo,
  createTestRepo,
  diff,
  noise,
  put,
  settleDirs,
  snapshotOf,
  testPolicy,
} from "./restore-helpers.js";

/**
 * A real source whose chunk fetches wait until the test lets each one go:
 * a slow network, deterministically.
 */
class GatedSource implements RestoreSource {
  readonly requested: BlobId[][] = [];
  private readonly waiting: (() => void)[] = [];
  private wake: (() => void) | null = null;

  constructor(private readonly inner: LocalRestoreSource) {}
  get snapshot() {
    return this.inner.snapshot;
  }
  get chunker(): ChunkerParams {
    return this.inner.chunker;
  }
  get stats() {
    return this.inner.stats;
  }
  loadTree(ref: TreeRef, signal?: AbortSignal): Promise<SourceTree> {
    return this.inner.loadTree(ref, signal);
  }
  async fetchChunks(
    requests: ChunkRequest[],
    onChunk: (id: BlobId, plain: Buffer) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void> {
    await new Promise<void>((release) => {
      this.waiting.push(release);
      this.wake?.();
    });
    this.requested.push(requests.flatMap((r) => r.ids));
    return this.inner.fetchChunks(requests, onChunk, signal);
  }
  /** Let held fetch calls through, one at a time, until `until` settles. */
  async pump(until: Promise<unknown>): Promise<void> {
    let stop = false;
    const end = () => {
      stop = true;
      this.wake?.();
    };
    until.then(end, end);
    while (!stop) {
      const release = this.waiting.shift();
      if (release) {
        release();
        continue;
      }
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = null;
    }
  }
}

let repo: Repository;
let tree: string;
let src: LocalRestoreSource;
/** Chunk id → snapshot path of the file holding it. */
const owner = new Map<string, string>();

beforeAll(async () => {
  const base = tmp("strata-stream-");
  tree = path.join(base, "tree");
  for (let i = 0; i < 12; i++) put(tree, `etc/conf${i}`, noise(3000, i + 1));
  for (let i = 0; i < 12; i++) put(tree, `usr/lib/lib${i}.so`, noise(20_000, 100 + i));
  for (let i = 0; i < 40; i++) put(tree, `opt/app/part${String(i).padStart(2, "0")}`, noise(5000, 200 + i));
  for (let i = 0; i < 40; i++) put(tree, `home/alice/doc${String(i).padStart(2, "0")}`, noise(4000, 300 + i));
  put(tree, "home/alice/zz-last", noise(6000, 999));
  settleDirs(tree);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, tree);
  const snap = await repo.resolveSnapshot("latest");
  for await (const { path: p, node } of repo.walk(snap.tree)) {
    for (const c of node.content ?? []) if ("id" in c) owner.set(c.id, p.slice(tree.length));
  }
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await new Promise((r) => setImmediate(r));
  return done;
};

describe("streaming restore", () => {
  it("is usable once the minimal set is in place, then restores the machine area before the user area", async () => {
    const gated = new GatedSource(src);
    const root = tmp("strata-root-");
    const run = runRestore(gated, {
      root,
      stateDir: tmp("strata-state-"),
      id: "s1",
      kind: "full",
      policy: testPolicy(),
      streaming: true,
      batchLimits: { files: 10 },
    });
    await gated.pump(run.usable);
    expect(run.progress().usable).toBe(true);
    expect(readdirSync(path.join(root, "etc")).length).toBe(12);
    expect(readdirSync(path.join(root, "usr/lib")).length).toBe(12);
    expect(existsSync(path.join(root, "home/alice/doc00"))).toBe(false);
    expect(existsSync(path.join(root, "opt/app/part39"))).toBe(false);
    expect(await settled(run.done)).toBe(false);
    await gated.pump(run.done);
    const r = await run.done;
    expect(r.batches).toBeGreaterThan(6);
    expect(diff(tree, root)).toEqual([]);
    expect(run.progress()).toMatchObject({ totalFiles: 105, restoredFiles: 105 });
    // Machine area (opt) fetched before the user area (home).
    const order = gated.requested.flat().map((id) => owner.get(id) ?? "");
    const lastOpt = order.findLastIndex((p) => p.startsWith("/opt/"));
    const firstHome = order.findIndex((p) => p.startsWith("/home/"));
    expect(lastOpt).toBeLessThan(firstHome);
  });

  it("fetch(PATH) jumps the queue: the last-queued file is in place before the stream ends", async () => {
    const gated = new GatedSource(src);
    const root = tmp("strata-root-");
    const run = runRestore(gated, {
      root,
      stateDir: tmp("strata-state-"),
      id: "s2",
      kind: "full",
      policy: testPolicy(),
      streaming: true,
      batchLimits: { files: 10 },
    });
    await gated.pump(run.usable);
    const wanted = run.fetch("/home/alice/zz-last");
    await gated.pump(wanted);
    await wanted;
    expect(readFileSync(path.join(root, "home/alice/zz-last")).equals(noise(6000, 999))).toBe(true);
    expect(await settled(run.done)).toBe(false);
    expect(existsSync(path.join(root, "home/alice/doc39"))).toBe(false);
    await expect(run.fetch("/home/alice/missing")).rejects.toMatchObject({ code: "NOT_FOUND" });
    await gated.pump(run.done);
    await run.done;
    expect(diff(tree, root)).toEqual([]);
    // Asked again after the end: already there.
    await run.fetch("/opt/app/part00");
  });
});
