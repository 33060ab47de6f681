import type { FsNode, TreeId } from "@strata/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TreeAhead } from "../src/restore/ahead.js";
import { runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreSource, SourceTree, TreeRef } from "../src/restore/source.js";
import { cleanup, tmp } from "./helpers.js";
import { closeTestRepo, createTestRepo, diff, snapshotOf, testPolicy } from "./restore-helpers.js";
import { buildSmallRoot } from "./restore-trees.js";

/*
 * Listings read ahead of the walk (ahead.ts): with a source that loads
 * many trees per request, the walk's listings come in a few batches, in
 * the walk's order, and a failed batch fails only the walk that needs it.
 */

const dirNode = (name: string, subtree: string): FsNode => ({
  name: Buffer.from(name),
  type: "dir",
  mode: 0o755,
  uid: 0,
  gid: 0,
  mtimeNs: 0n,
  size: 0,
  subtree: subtree as TreeId,
});

/** An in-memory snapshot of directories only: `root` holds `wide` dirs of `deep` dirs each. */
function fakeSource(wide: number, deep: number) {
  const trees = new Map<string, SourceTree>();
  const add = (id: string, kids: string[]) =>
    trees.set(id, {
      nodes: kids.map((k) => dirNode(k, `${id}/${k}`)),
      subtrees: kids.map((k) => ({ id: `${id}/${k}` as TreeId })),
    });
  const top = Array.from({ length: wide }, (_, i) => `d${String(i).padStart(3, "0")}`);
  add("r", top);
  for (const t of top) {
    const kids = Array.from({ length: deep }, (_, i) => `e${i}`);
    add(`r/${t}`, kids);
    for (const k of kids) add(`r/${t}/${k}`, []);
  }
  const calls: string[][] = [];
  const failing = new Set<string>();
  let inFlight = 0;
  let maxInFlight = 0;
  const get = (ref: TreeRef) => {
    const t = trees.get(ref.id);
    if (!t) throw new Error(`no tree ${ref.id}`);
    return t;
  };
  const source = {
    snapshot: { id: "s", time: "", root: { id: "r" as TreeId } },
    chunker: {} as RestoreSource["chunker"],
    stats: { bytesReceived: 0, chunksReceived: 0 },
    maxTrees: 256,
    async loadTree(ref: TreeRef) {
      calls.push([ref.id]);
      await Promise.resolve();
      return get(ref);
    },
    async loadTrees(refs: TreeRef[], onTree: (i: number, t: SourceTree) => void) {
      calls.push(refs.map((r) => r.id));
      maxInFlight = Math.max(maxInFlight, ++inFlight);
      try {
        for (const [i, r] of refs.entries()) {
          await new Promise((res) => setImmediate(res));
          if (failing.has(r.id)) throw new Error(`batch with ${r.id} failed`);
          onTree(i, get(r));
        }
      } finally {
        inFlight--;
      }
    },
    async fetchChunks() {},
  } satisfies RestoreSource;
  return { source, calls, failing, maxInFlight: () => maxInFlight, trees };
}

/** The planner's use of TreeAhead: depth first, listing ahead, forgetting on the way out. */
async function walk(ahead: TreeAhead, ref: TreeRef, seen: string[]): Promise<void> {
  const t = await ahead.load(ref);
  seen.push(ref.id);
  const subs = t.subtrees.filter((s): s is TreeRef => !!s);
  ahead.ahead(subs);
  try {
    for (const s of subs) await walk(ahead, s, seen);
  } finally {
    ahead.forget(subs);
  }
}

describe("listings read ahead in batches", () => {
  it("a walk of 1,101 listings takes about a tenth as many requests, none over 64 trees, two in flight", async () => {
    const f = fakeSource(100, 10);
    const seen: string[] = [];
    await walk(new TreeAhead(f.source), f.source.snapshot.root, seen);
    expect(seen).toHaveLength(f.trees.size);
    expect(new Set(seen).size).toBe(f.trees.size);
    // About one request per middle directory (its 10 listings come together), not one per listing.
    expect(f.calls.length).toBeLessThan(f.trees.size / 8);
    expect(Math.max(...f.calls.map((c) => c.length))).toBeLessThanOrEqual(64);
    expect(f.maxInFlight()).toBeLessThanOrEqual(3); // two ahead, plus one the walk waits for
    // Depth-first order: the first batch after the root's listing starts with the root's first entries.
    expect(f.calls[1]![0]).toBe("r/d000");
  });

  it("a failed batch fails the walk where it needs a listing of it, not before", async () => {
    const f = fakeSource(20, 2);
    f.failing.add("r/d015/e1");
    const ahead = new TreeAhead(f.source);
    const seen: string[] = [];
    await expect(walk(ahead, f.source.snapshot.root, seen)).rejects.toThrow(/failed/);
    expect(seen).toContain("r/d000/e1");
    expect(seen).not.toContain("r/d019");
  });

  it("a source without loadTrees is asked one listing per request", async () => {
    const f = fakeSource(30, 3);
    const { loadTrees: _batch, ...single } = f.source;
    const seen: string[] = [];
    await walk(new TreeAhead(single), f.source.snapshot.root, seen);
    expect(seen).toHaveLength(f.trees.size);
    expect(f.calls.every((c) => c.length === 1)).toBe(true);
  });
});

describe("the engine with a batching source", () => {
  let repo: Awaited<ReturnType<typeof createTestRepo>>;
  let v1: string;
  let src: LocalRestoreSource;
  beforeAll(async () => {
    const base = tmp("strata-restore-ahead-");
    v1 = `${base}/v1`;
    buildSmallRoot(v1);
    repo = await createTestRepo(`${base}/repo`);
    src = await snapshotOf(repo, v1);
  });
  afterAll(async () => {
    await closeTestRepo(repo);
    cleanup();
  });

  it("restores the snapshot with most listings fetched in batches", async () => {
    let single = 0;
    const batches: number[] = [];
    const s: RestoreSource = {
      snapshot: src.snapshot,
      chunker: src.chunker,
      stats: src.stats,
      loadTree: (ref, signal) => {
        single++;
        return src.loadTree(ref, signal);
      },
      async loadTrees(refs, onTree, signal) {
        batches.push(refs.length);
        for (const [i, r] of refs.entries()) onTree(i, await src.loadTree(r, signal));
      },
      fetchChunks: (reqs, onChunk, signal) => src.fetchChunks(reqs, onChunk, signal),
    };
    const root = tmp("strata-root-");
    const r = await runRestore(s, {
      root,
      stateDir: tmp("strata-state-"),
      id: "a1",
      kind: "full",
      policy: testPolicy(),
    }).done;
    expect(r.errors).toEqual([]);
    expect(diff(v1, root, /(^| )(tmp|var\/cache)\/./)).toEqual([]);
    const viaBatches = batches.reduce((a, b) => a + b, 0);
    expect(viaBatches).toBeGreaterThan(single);
    expect(batches.some((n) => n > 1)).toBe(true);
  });
});
