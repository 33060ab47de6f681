import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { openSqliteCatalog } from "@strata/catalog";
import type { TreeId } from "@strata/core";
import { type BlobId, DirBlobStore, packName, Repository } from "@strata/repo";
import { rsyncCopy, rsyncItemize } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cleanup, duBytes, type Env, newEnv, ok, strata, tmp } from "./helpers.js";

afterAll(cleanup);

const DIRS = 12;
const dirName = (i: number) => `d${String(i).padStart(2, "0")}`;
const fileName = (j: number) => `f${String(j).padStart(3, "0")}`;

/**
 * Three snapshots of 12 directories of 100 small files (plus a small
 * directory): between them one file per directory changes (and one is
 * added, one removed), so every directory's tree changes by one entry.
 * References of the first two states are kept for comparing restores.
 */
function setup() {
  const src = tmp();
  for (let i = 0; i < DIRS; i++) {
    mkdirSync(path.join(src, dirName(i)));
    for (let j = 0; j < 100; j++)
      writeFileSync(
        path.join(src, dirName(i), fileName(j)),
        `directory ${i} file ${j}\n`.repeat(1 + (j % 5)),
      );
  }
  mkdirSync(path.join(src, "small"));
  writeFileSync(path.join(src, "small", "a"), "a");
  const env = newEnv();
  ok(env, "repo", "init");
  const s1 = ok(env, "backup", src, "--json").snapshot.id as string;
  const ref1 = tmp();
  rsyncCopy(src, ref1);

  const change = (round: number) => {
    for (let i = 0; i < DIRS; i++)
      writeFileSync(path.join(src, dirName(i), fileName(50)), `edited ${round}\n`);
    writeFileSync(path.join(src, dirName(0), `new${round}`), "inserted");
    rmSync(path.join(src, dirName(1), fileName(round)));
    writeFileSync(path.join(src, "small", "a"), `a${round}`);
  };
  change(1);
  const packsBefore = duBytes(path.join(env.repo, "packs"));
  const s2 = ok(env, "backup", src, "--json").snapshot.id as string;
  const growth = duBytes(path.join(env.repo, "packs")) - packsBefore;
  const ref2 = tmp();
  rsyncCopy(src, ref2);
  change(2);
  const s3 = ok(env, "backup", src, "--json").snapshot.id as string;
  return { env, src, s1, s2, s3, ref1, ref2, growth };
}

/** The repository, opened in this process between CLI runs. */
async function withRepo<T>(env: Env, f: (repo: Repository) => Promise<T>): Promise<T> {
  process.env.STRATA_SCRYPT_LOG_N = "12";
  const catalog = await openSqliteCatalog(path.join(env.repo, "catalog.db"));
  const store = new DirBlobStore(env.repo);
  try {
    const repo = await Repository.open(store, catalog, Buffer.from(env.password));
    return await f(repo);
  } finally {
    // Its cached read handles too: a pack the next CLI run prunes stays open otherwise.
    await store.close();
    await catalog.close();
  }
}

/** Each directory of `src` in a snapshot: its tree id. */
async function dirTrees(repo: Repository, snapshot: string, src: string): Promise<Map<string, TreeId>> {
  const snap = await repo.resolveSnapshot(snapshot);
  const out = new Map<string, TreeId>();
  for await (const { path: p, node } of repo.walk(snap.tree)) {
    if (node.type === "dir" && node.subtree && p.startsWith(`${src}/`))
      out.set(p.slice(src.length + 1), node.subtree);
  }
  return out;
}

describe("changed directories are stored as deltas of their previous tree", () => {
  let ctx: ReturnType<typeof setup>;
  beforeAll(() => {
    ctx = setup();
  });

  it("a one-entry change costs about one entry, not the whole listing; deltas stay one level deep", async () => {
    const { env, src, s1, s2, s3, growth } = ctx;
    await withRepo(env, async (repo) => {
      const t1 = await dirTrees(repo, s1, src);
      const t2 = await dirTrees(repo, s2, src);
      const t3 = await dirTrees(repo, s3, src);
      let fullBytes = 0;
      for (let i = 0; i < DIRS; i++) fullBytes += (await repo.loadTreeBytes(t2.get(dirName(i))!)).length;
      // Full trees of the changed directories would take more than a third of
      // their raw size (32-byte chunk ids do not compress); the whole growth
      // (new chunks, deltas, the small trees, pack headers) is far less.
      expect(fullBytes).toBeGreaterThan(90_000);
      expect(growth).toBeLessThan(fullBytes / 5);
      expect(growth).toBeGreaterThan(0);
      for (let i = 0; i < DIRS; i++) {
        const d = dirName(i);
        // Every directory changed, each new tree is a delta of the first snapshot's (stored full).
        expect(t2.get(d)).not.toBe(t1.get(d));
        expect(await repo.storedTreeBase(t1.get(d)!)).toBeNull();
        expect(await repo.storedTreeBase(t2.get(d)!)).toBe(t1.get(d));
        // The third version's previous one is a delta: it is a delta of the same full base.
        expect(await repo.storedTreeBase(t3.get(d)!)).toBe(t1.get(d));
      }
      // Small listings stay full.
      expect(await repo.storedTreeBase(t2.get("small")!)).toBeNull();
    });
  });

  it("restores every snapshot byte for byte; ls and diff read delta trees", () => {
    const { env, src, s1, s2, ref1, ref2 } = ctx;
    for (const [s, ref] of [
      [s1, ref1],
      [s2, ref2],
    ] as const) {
      const dst = tmp();
      ok(env, "restore", `${s}:${src}`, "--target", dst);
      expect(rsyncItemize(ref, dst)).toBe("");
    }
    const d = ok(env, "diff", s1.slice(0, 8), s2.slice(0, 8), "--json");
    const byPath = Object.fromEntries(
      d.map((c: { change: string; path: string }) => [c.path.slice(src.length), c.change]),
    );
    expect(byPath["/d07/f050"]).toBe("M");
    expect(byPath["/d00/new1"]).toBe("+");
    expect(byPath["/d01/f001"]).toBe("-");
    expect(byPath["/d07/f049"]).toBeUndefined();
    const ls = ok(env, "ls", s2.slice(0, 8), `${src}/d01`, "--json");
    const names = ls.map((e: { path: string }) => path.basename(e.path));
    expect(names).toHaveLength(99);
    expect(names).not.toContain("f001");
    expect(ok(env, "check", "--read-data", "--json").ok).toBe(true);
  });
});

describe("prune and check with delta trees", () => {
  it("forgetting the snapshot that stored the bases keeps them: check passes, later snapshots restore", async () => {
    const { env, src, s1, s2, ref1, ref2 } = setup();
    // d02 goes back to its first state: its tree is the base of its deltas
    // again, now reached as a tree by a snapshot (its files must stay too).
    rsyncCopy(path.join(ref1, "d02"), path.join(src, "d02"));
    const s4 = ok(env, "backup", src, "--json").snapshot.id as string;
    const ref4 = tmp();
    rsyncCopy(src, ref4);
    const res = ok(env, "forget", "--keep-last", "3", "--json");
    expect(JSON.stringify(res.remove)).toContain(s1);
    expect(res.remove).toHaveLength(1);
    // Repack every pack with an unused byte, then delete what was doomed (grace 0).
    const p1 = ok(env, "prune", "--grace", "0", "--max-unused", "0", "--json");
    expect(p1.packsDoomed).toBeGreaterThan(0);
    ok(env, "prune", "--grace", "0");
    const rep = ok(env, "check", "--read-data", "--json");
    expect(rep.errors).toEqual([]);
    expect(rep.ok).toBe(true);
    for (const [s, ref] of [
      [s2, ref2],
      [s4, ref4],
    ] as const) {
      const dst = tmp();
      ok(env, "restore", `${s}:${src}`, "--target", dst);
      expect(rsyncItemize(ref, dst)).toBe("");
    }
    await withRepo(env, async (repo) => {
      const t2 = await dirTrees(repo, s2, src);
      const base = await repo.storedTreeBase(t2.get("d03")!);
      expect(base).not.toBeNull();
      // The base is no snapshot's tree any more, and still stored.
      expect((await repo.lookup([base as string as BlobId])).size).toBe(1);
      expect((await dirTrees(repo, s4, src)).get("d02")).toBe(await repo.storedTreeBase(t2.get("d02")!));
    });
  });

  it("a damaged base is reported under every snapshot and path whose tree depends on it", async () => {
    const { env, src, s1, s2, s3 } = setup();
    const { base, victim, offset } = await withRepo(env, async (repo) => {
      const t2 = await dirTrees(repo, s2, src);
      const base = (await repo.storedTreeBase(t2.get("d05")!))!;
      const e = (await repo.lookup([base as string as BlobId])).get(base as string as BlobId)!;
      return { base, victim: path.join(env.repo, packName(e.packId)), offset: e.offset + 20 };
    });
    const buf = readFileSync(victim);
    buf[offset]! ^= 0x10;
    writeFileSync(victim, buf);
    for (const args of [
      ["check", "--json"],
      ["check", "--read-data", "--json"],
    ]) {
      const r = strata(env, ...args);
      expect(r.code).toBe(1);
      const rep = JSON.parse(r.stdout);
      const hits = rep.affected.filter((a: { path: string }) => a.path === `${src}/d05`);
      expect(hits.map((a: { snapshot: string }) => a.snapshot).sort()).toEqual([s1, s2, s3].sort());
      // The dependents' problem names the damaged base.
      expect(
        hits.filter(
          (a: { snapshot: string; problem: string }) => a.snapshot !== s1 && a.problem.includes(base),
        ),
      ).toHaveLength(2);
      // Other directories are intact.
      expect(rep.affected.some((a: { path: string }) => a.path.startsWith(`${src}/d06`))).toBe(false);
      if (args.includes("--read-data")) expect(JSON.stringify(rep.damagedBlobs)).toContain(base);
    }
    const bad = strata(env, "restore", `${s3}:${src}`, "--target", tmp());
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain(base);
  });
});
