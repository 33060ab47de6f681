/**
 * Incremental uploads that follow a dirty set (docs/design/agent.md,
 * "Incremental uploads"): the agent's upload against the server's upload
 * service, on real files, a real repository and a real SQLite catalog.
 * Every hinted snapshot is compared with a full walk of the same state
 * (another CVD, no file cache): their root tree ids must be equal.
 */
import { chmodSync, linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { CACHE_PARENT, type DirtySet, type UploadResult, uploadOnce } from "@strata/agent";
import { openSqliteFileCache, type SqliteFileCache } from "@strata/catalog";
import { compilePolicy, defaultPolicy } from "@strata/core";
import { restore } from "@strata/repo";
import { cleanupTempDirs, makeTempDir, seededBytes } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type UploadHarness, uploadHarness } from "./upload-helpers.js";

process.env.STRATA_SCRYPT_LOG_N = "10";

const policy = compilePolicy(defaultPolicy("pol_1", "Default"), {
  homes: ["/home/alice"],
  agentStateDir: "/var/lib/strata-agent",
});

/** An endpoint with a deep user tree, a wide system area and areas the policy excludes. */
function buildEndpoint(root: string): void {
  for (const d of ["etc", "usr/lib", "home/alice/a/b/c/d", "tmp", "var/lib/strata-agent"])
    mkdirSync(path.join(root, d), { recursive: true });
  writeFileSync(path.join(root, "etc/hostname"), "ep\n");
  for (let i = 0; i < 30; i++) {
    mkdirSync(path.join(root, `usr/lib/pkg${i}`), { recursive: true });
    for (let j = 0; j < 5; j++)
      writeFileSync(path.join(root, `usr/lib/pkg${i}/f${j}`), seededBytes(1000 + j, `pkg${i}-${j}`));
  }
  for (const d of ["a", "a/b", "a/b/c", "a/b/c/d"])
    writeFileSync(path.join(root, "home/alice", d, "note.txt"), `note in ${d}\n`);
  writeFileSync(path.join(root, "home/alice/a/b/c/d/deep.bin"), seededBytes(300_000, "deep"));
  writeFileSync(path.join(root, "tmp/junk"), "scratch");
  writeFileSync(path.join(root, "var/lib/strata-agent/credential"), "sep_secret");
}

let dir: string;
let h: UploadHarness;
let root: string;
let cache: SqliteFileCache;
/** The last snapshot of cvd_a (the parent of the next upload). */
let parent: string | null = null;
let fullN = 0;

beforeAll(async () => {
  dir = await makeTempDir("strata-dirty-");
  h = await uploadHarness(dir);
  root = path.join(dir, "ep");
  buildEndpoint(root);
  cache = openSqliteFileCache(path.join(dir, "cache.db"));
});
afterAll(async () => {
  cache?.close();
  await h?.close();
  await cleanupTempDirs();
});

/** One upload of the endpoint into cvd_a with the file cache, following `dirty`. */
async function upload(dirty: DirtySet | null, extra: Partial<Parameters<typeof uploadOnce>[0]> = {}) {
  const r = await uploadOnce({
    transport: h.transport("cvd_a"),
    cvdId: "cvd_a",
    root,
    policy,
    parent,
    fileCache: cache,
    hostname: "ep",
    dirty,
    ...extra,
  });
  expect(r.errors).toEqual([]);
  parent = r.snapshot;
  return r;
}

/** The root tree a full walk of the endpoint as it is now gives (another CVD, no cache: nothing inherited). */
async function fullWalkRoot(): Promise<string> {
  const cvd = `cvd_full${fullN++}`;
  const r = await uploadOnce({ transport: h.transport(cvd), cvdId: cvd, root, policy, parent: null });
  expect(r.scan.full).toBe(true);
  return (await h.service.cvdSnapshot(cvd, r.snapshot)).tree;
}

async function rootOf(r: UploadResult): Promise<string> {
  return (await h.service.cvdSnapshot("cvd_a", r.snapshot)).tree;
}

const dirs = (...d: string[]): DirtySet => ({ kind: "dirs", dirs: d });

describe("incremental uploads following the dirty set", () => {
  let fullStats: UploadResult["stats"];

  it("the first upload walks everything, whatever the set says", async () => {
    const r = await upload(dirs());
    expect(r.scan).toMatchObject({ full: true, reason: "the first upload walks everything", dirtyDirs: 0 });
    // Every directory but those the policy keeps empty (/tmp) was listed.
    expect(r.scan.dirsRead).toBeGreaterThan(35);
    fullStats = r.stats;
    expect(cache.getMeta(CACHE_PARENT)).toBe(r.snapshot);
  });

  it("(a) a file changed deep down: only its directory is listed, and the tree is a full walk's", async () => {
    writeFileSync(path.join(root, "home/alice/a/b/c/d/note.txt"), "changed deep down\n");
    const r = await upload(dirs("/home/alice/a/b/c/d"));
    expect(r.scan).toMatchObject({ full: false, reason: null, dirtyDirs: 1, dirsRead: 1 });
    // The directory's own subdirectories: none. Its ancestors' other children were reused without a stat.
    expect(r.stats).toMatchObject({
      filesChanged: 1,
      filesNew: 0,
      filesUnchanged: fullStats.totalFiles - 1,
      totalFiles: fullStats.totalFiles,
      dirs: fullStats.dirs,
    });
    expect(r.stats.totalBytes).toBe(fullStats.totalBytes - "note in a/b/c/d\n".length + 18);
    // d and its six ancestors (c, b, a, alice, home, the root) changed; nothing else was sent as a tree.
    expect(r.treesSent).toBe(7);
    expect(await rootOf(r)).toBe(await fullWalkRoot());
    // The snapshot restores with the change.
    const snap = await h.service.cvdSnapshot("cvd_a", r.snapshot);
    const out = path.join(dir, "restore-a");
    await restore(h.server.repo, snap, { target: out });
    expect(readFileSync(path.join(out, "home/alice/a/b/c/d/note.txt"), "utf8")).toBe("changed deep down\n");
    expect(readFileSync(path.join(out, "usr/lib/pkg7/f3")).equals(seededBytes(1003, "pkg7-3"))).toBe(true);
  });

  it("an empty set commits the parent's tree without listing a directory", async () => {
    const before = parent;
    const r = await upload(dirs());
    expect(r.scan).toMatchObject({ full: false, dirsRead: 0 });
    expect(r.treesSent).toBe(0);
    expect(r.chunksSent).toBe(0);
    expect(await rootOf(r)).toBe((await h.service.cvdSnapshot("cvd_a", before!)).tree);
  });

  it("(b) a file in a new subdirectory: the new directories are walked, the rest reused", async () => {
    mkdirSync(path.join(root, "home/alice/new/sub"), { recursive: true });
    writeFileSync(path.join(root, "home/alice/new/sub/fresh.txt"), "a new file\n");
    // As the watcher reports it: each created entry makes its parent dirty.
    const r = await upload(dirs("/home/alice", "/home/alice/new", "/home/alice/new/sub"));
    expect(r.scan).toMatchObject({ full: false, dirtyDirs: 3, dirsRead: 3 });
    expect(r.stats).toMatchObject({ filesNew: 1, filesChanged: 0, totalFiles: fullStats.totalFiles + 1 });
    expect(r.stats.dirs).toBe(fullStats.dirs + 2);
    expect(await rootOf(r)).toBe(await fullWalkRoot());
    // The parent's directory alone is enough: what it did not have is walked whole.
    writeFileSync(path.join(root, "home/alice/new/sub/fresh2.txt"), "another\n");
    mkdirSync(path.join(root, "home/alice/new2/x"), { recursive: true });
    writeFileSync(path.join(root, "home/alice/new2/x/y.txt"), "why\n");
    const r2 = await upload(dirs("/home/alice", "/home/alice/new/sub"));
    expect(r2.scan).toMatchObject({ full: false, dirsRead: 4 }); // alice, new/sub, new2, new2/x
    expect(r2.stats.filesNew).toBe(2);
    expect(await rootOf(r2)).toBe(await fullWalkRoot());
  });

  it("(c) a removed directory: its parent is listed, nothing below it is looked for", async () => {
    rmSync(path.join(root, "home/alice/a/b"), { recursive: true });
    const r = await upload(
      dirs("/home/alice/a", "/home/alice/a/b", "/home/alice/a/b/c", "/home/alice/a/b/c/d"),
    );
    expect(r.scan).toMatchObject({ full: false, dirsRead: 1 });
    expect(r.stats.totalFiles).toBe(fullStats.totalFiles + 3 - 4);
    expect(r.stats.dirs).toBe(fullStats.dirs + 4 - 3);
    expect(await rootOf(r)).toBe(await fullWalkRoot());
    // A directory's own metadata: its parent is dirty (the watcher's contract).
    chmodSync(path.join(root, "usr/lib/pkg3"), 0o700);
    const r2 = await upload(dirs("/usr/lib"));
    expect(r2.scan).toMatchObject({ full: false, dirsRead: 1 });
    expect(r2.scan.dirsReused).toBe(30);
    expect(await rootOf(r2)).toBe(await fullWalkRoot());
  });

  it("(d) walks everything when the set cannot be trusted, and says why", async () => {
    writeFileSync(path.join(root, "etc/hostname"), "ep2\n");
    const overflow = await upload({ kind: "full", reason: "watcher error: Events were dropped" });
    expect(overflow.scan).toMatchObject({ full: true, reason: "watcher error: Events were dropped" });
    expect(overflow.scan.dirsRead).toBeGreaterThan(35);
    // A safety snapshot before a risky operation.
    const safety = await upload(dirs("/etc"), { kind: "pre-restore" });
    expect(safety.scan).toMatchObject({ full: true, reason: "a pre-restore snapshot walks everything" });
    // Another policy version, or a new home: what is protected changed.
    const policyChange = await upload(dirs("/etc"), { policyKey: "another policy" });
    expect(policyChange.scan.reason).toMatch(/policy/);
    expect(policyChange.scan.full).toBe(true);
    const back = await upload(dirs("/etc"), { policyKey: "another policy" });
    expect(back.scan.full).toBe(false);
    // The parent is not the last snapshot this agent committed (an older one, a server-side one).
    const older = await upload(dirs("/etc"), { parent: overflow.snapshot, policyKey: "another policy" });
    expect(older.scan).toMatchObject({
      full: true,
      reason: "the parent snapshot is not the last one this agent committed",
    });
    // The periodic full walk.
    const periodic = await upload(dirs("/etc"), { policyKey: "another policy", fullWalkEveryMs: 3_600_000 });
    expect(periodic.scan.full).toBe(false); // the last full walk was just now
    const due = await upload(dirs("/etc"), { policyKey: "another policy", fullWalkEveryMs: 0 });
    expect(due.scan).toMatchObject({ full: true, reason: "the periodic full walk is due (every 0 min)" });
    // No set at all (`strata agent upload`).
    const oneOff = await upload(null, { policyKey: "another policy" });
    expect(oneOff.scan).toMatchObject({ full: true, reason: "no list of changes was given" });
    expect(await rootOf(oneOff)).toBe(await fullWalkRoot());
  });

  it("(d) a hard link among the changes: its other names are elsewhere, so the walk starts over in full", async () => {
    const o = { policyKey: "another policy" };
    // A link in /home/alice to a file in /usr/lib: /usr/lib/pkg5 is not dirty, but its file's link count changed.
    linkSync(path.join(root, "usr/lib/pkg5/f1"), path.join(root, "home/alice/linked"));
    const r = await upload(dirs("/home/alice"), o);
    expect(r.scan.full).toBe(true);
    expect(r.scan.reason).toMatch(/hard-linked/);
    expect(r.scan.dirsRead).toBeGreaterThan(35);
    expect(await rootOf(r)).toBe(await fullWalkRoot());
    // Removing it: the listed directory's cache row had a hard-linked file.
    rmSync(path.join(root, "home/alice/linked"));
    const r2 = await upload(dirs("/home/alice"), o);
    expect(r2.scan.full).toBe(true);
    expect(r2.scan.reason).toMatch(/hard-linked/);
    expect(await rootOf(r2)).toBe(await fullWalkRoot());
    // Hard links elsewhere do not matter to a change here.
    writeFileSync(path.join(root, "home/alice/new/sub/fresh.txt"), "changed again\n");
    const r3 = await upload(dirs("/home/alice/new/sub"), o);
    expect(r3.scan).toMatchObject({ full: false, dirsRead: 1 });
    expect(await rootOf(r3)).toBe(await fullWalkRoot());
  });

  it("(d) a cache that no longer describes the parent (an upload that failed midway): walks everything", async () => {
    const o = { policyKey: "another policy" };
    writeFileSync(path.join(root, "home/alice/new/sub/fresh.txt"), "changed once more\n");
    // The upload's commit fails: the walk rewrote the rows of the changed directories and their ancestors.
    const failing = h.transport("cvd_a", (what) => {
      if (what.endsWith("/commit")) throw new Error("connection reset");
    });
    await expect(
      uploadOnce({
        transport: failing,
        cvdId: "cvd_a",
        root,
        policy,
        parent,
        fileCache: cache,
        dirty: dirs("/home/alice/new/sub"),
        ...o,
      }),
    ).rejects.toThrow(/connection reset/);
    const r = await upload(dirs("/home/alice/new/sub"), o);
    expect(r.scan.full).toBe(true);
    expect(r.scan.reason).toMatch(/file cache does not hold the parent snapshot's tree/);
    expect(await rootOf(r)).toBe(await fullWalkRoot());
    // And the next one follows its set again.
    writeFileSync(path.join(root, "home/alice/new/sub/fresh.txt"), "and again\n");
    const r2 = await upload(dirs("/home/alice/new/sub"), o);
    expect(r2.scan).toMatchObject({ full: false, dirsRead: 1 });
    expect(await rootOf(r2)).toBe(await fullWalkRoot());
  });

  it("changes under areas the policy excludes are ignored without listing their parents", async () => {
    const o = { policyKey: "another policy" };
    mkdirSync(path.join(root, "home/alice/.cache/thumbs"), { recursive: true });
    writeFileSync(path.join(root, "home/alice/.cache/thumbs/t1"), "x");
    const first = await upload(dirs("/home/alice", "/home/alice/.cache", "/home/alice/.cache/thumbs"), o);
    expect(first.scan.full).toBe(false);
    writeFileSync(path.join(root, "home/alice/.cache/thumbs/t2"), "y");
    const r = await upload(dirs("/home/alice/.cache/thumbs"), o);
    expect(r.scan).toMatchObject({ full: false, dirsRead: 0 });
    expect(r.treesSent).toBe(0);
    expect(await rootOf(r)).toBe(await fullWalkRoot());
  });
});
