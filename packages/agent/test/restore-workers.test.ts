import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
} from "node:fs";
import * as path from "node:path";
import { type BlobId, StrataError } from "@strata/core";
import { native } from "@strata/fs";
import { type Repository, RestorePool, WireCodec } from "@strata/repo";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { recoverPendingRestore, runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { ChunkRequest, RestoreSource } from "../src/restore/source.js";
import type { RestoreOptions } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import {
  closeTestRepo,
  copyTree,
  createTestRepo,
  diff,
  put,
  snapshotOf,
  testPolicy,
} from "./restore-helpers.js";
import { buildSmallRoot } from "./restore-trees.js";

/*
 * The engine's worker path (fetcher.ts): a source that hands chunks over in
 * wire form, as the server sends them, is verified and written by worker
 * threads. These tests give it a source over a real repository that encodes
 * every chunk in wire form (real zstd) and can spoil some, as a damaged or
 * hostile server would.
 */

let repo: Repository;
let v1: string;
let src: LocalRestoreSource;

beforeAll(async () => {
  const base = tmp("strata-restore-w-");
  v1 = path.join(base, "v1");
  buildSmallRoot(v1);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, v1);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});
afterEach(() => {
  vi.restoreAllMocks();
});

const sha = (s: string) => createHash("sha256").update(s).digest("hex") as BlobId;
/** The one chunk of /usr/bin/x. */
const X_CHUNK = sha("#!/bin/sh\necho x\n");

type Spoil = (id: BlobId, compressed: boolean, payload: Buffer) => { compressed: boolean; payload: Buffer };

/** `inner`'s snapshot, its chunks handed over in wire form (after `spoil`). */
function wireSource(inner: RestoreSource, spoil?: Spoil): RestoreSource & { frames: number } {
  const codec = new WireCodec();
  const s = {
    frames: 0,
    snapshot: inner.snapshot,
    chunker: inner.chunker,
    stats: inner.stats,
    loadTree: inner.loadTree.bind(inner),
    fetchChunks: inner.fetchChunks.bind(inner),
    async fetchChunkFrames(
      requests: ChunkRequest[],
      onFrame: (id: BlobId, compressed: boolean, payload: Buffer) => void | Promise<void>,
    ): Promise<void> {
      await inner.fetchChunks(requests, async (id, plain) => {
        const w = codec.encode(id, "data", plain);
        const out = spoil
          ? spoil(id, w.compressed, Buffer.from(w.data))
          : { compressed: w.compressed, payload: Buffer.from(w.data) };
        s.frames++;
        await onFrame(id, out.compressed, out.payload);
      });
    },
  };
  return s;
}

function opts(root: string, o: Partial<RestoreOptions>): RestoreOptions {
  return { root, stateDir: tmp("strata-state-"), id: "w1", kind: "full", policy: testPolicy(), ...o };
}

/** Descriptors this process holds on files below `dirs` (the stage lives there). */
function openFdsUnder(...dirs: string[]): string[] {
  const out: string[] = [];
  for (const fd of readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the directory's own descriptor, gone already
    }
    if (dirs.some((d) => target.startsWith(`${d}/`))) out.push(target);
  }
  return out;
}

/** A root that differs from v1 in /usr/bin/x (so the revert must fetch it) and elsewhere. */
function drifted(): string {
  const root = tmp("strata-root-");
  copyTree(v1, root);
  put(root, "usr/bin/x", "#!/bin/sh\necho changed\n", { mode: 0o755 });
  put(root, "usr/bin/newer", "installed after the snapshot\n");
  return root;
}

describe("chunks verified and written by worker threads", () => {
  it("a full restore onto an empty root through the workers gives the snapshot", async () => {
    const root = tmp("strata-root-");
    const s = wireSource(src);
    const r = await runRestore(s, opts(root, { workers: 2 })).done;
    expect(s.frames).toBeGreaterThan(0);
    expect(r.fetchedBytes).toBeGreaterThan(3 * 1024 * 1024);
    expect(diff(v1, root, /(^| )(tmp|var\/cache)\/./)).toEqual([]);
  });

  it("the workers close most files and set their times to the nanosecond; owner, mode and xattrs stay on this thread", async () => {
    const real = RestorePool.prototype.finish;
    const finished: string[] = [];
    vi.spyOn(RestorePool.prototype, "finish").mockImplementation(function (this: RestorePool, files) {
      for (const f of files) finished.push(path.basename(readlinkSync(`/proc/self/fd/${f.fd}`)));
      return real.call(this, files);
    });
    const root = tmp("strata-root-");
    const r = await runRestore(wireSource(src), opts(root, { workers: 2 })).done;
    expect(r.errors).toEqual([]);
    // Created with their mode and owner, without xattrs: only their times were left.
    expect(finished).toEqual(expect.arrayContaining(["x", "tool", "libbig.so", "notes.txt", "photo.jpg"]));
    // An xattr to set (hostname), a mode the creation cannot give (0444): finished here.
    expect(finished).not.toContain("hostname");
    expect(finished).not.toContain("machine-id");
    for (const rel of ["usr/bin/x", "usr/bin/tool", "etc/hostname", "etc/machine-id", "var/lib/sparse.img"]) {
      const want = lstatSync(path.join(v1, rel), { bigint: true });
      const got = lstatSync(path.join(root, rel), { bigint: true });
      expect({ rel, mtime: got.mtimeNs, mode: got.mode }).toEqual({
        rel,
        mtime: want.mtimeNs,
        mode: want.mode,
      });
    }
    expect(native.lgetxattr(Buffer.from(path.join(root, "etc/hostname")), "user.origin")?.toString()).toBe(
      "snapshot",
    );
    expect(diff(v1, root, /(^| )(tmp|var\/cache)\/./)).toEqual([]);
  });

  it("a file whose times a worker cannot set is reported and restored; one it cannot close fails the restore", async () => {
    const real = RestorePool.prototype.finish;
    const spoilX = (closed: boolean) =>
      vi.spyOn(RestorePool.prototype, "finish").mockImplementation(async function (this: RestorePool, files) {
        // Which file is /usr/bin/x, asked before the worker closes the descriptors.
        const i = files.findIndex((f) => path.basename(readlinkSync(`/proc/self/fd/${f.fd}`)) === "x");
        const problems = await real.call(this, files);
        return i < 0
          ? problems
          : [...problems, { index: i, closed, message: closed ? "setting times: EIO" : "closing: EIO" }];
      });
    spoilX(true);
    const root = tmp("strata-root-");
    const r = await runRestore(wireSource(src), opts(root, {})).done;
    expect(r.errors).toEqual([{ path: "/usr/bin/x", message: "metadata not restored: setting times: EIO" }]);
    expect(lstatSync(path.join(root, "usr/bin/x")).size).toBe(17); // its content is there
    vi.restoreAllMocks();

    spoilX(false);
    const empty = tmp("strata-root-");
    const stateDir = tmp("strata-state-");
    await expect(runRestore(wireSource(src), { ...opts(empty, {}), stateDir }).done).rejects.toMatchObject({
      code: "IO_ERROR",
      message: expect.stringContaining("/usr/bin/x: closing: EIO"),
    });
    expect(readdirSync(empty)).toEqual([]);
    expect(await recoverPendingRestore(stateDir, empty)).toEqual([{ outcome: "none" }]);
    expect(openFdsUnder(empty, stateDir)).toEqual([]);
  });

  it("the workers hand message buffers back, and the pool reuses them (no fresh memory per message)", async () => {
    const pool = new RestorePool(null, 1);
    try {
      const buf = pool.buffer(1000);
      expect(buf.length).toBeGreaterThanOrEqual(1024 * 1024);
      buf.write("marker", 0);
      await pool.run([{ buf, base: 0 }], [[]]);
      expect(buf.length).toBe(0); // moved to the worker and back into the pool
      const again = pool.buffer(1000);
      expect(again.subarray(0, 6).toString()).toBe("marker");
      expect(pool.buffer(1000).subarray(0, 6).toString()).not.toBe("marker"); // taken once
    } finally {
      await pool.close();
    }
  });

  it("a chunk that does not match its id is refused, names the file, and leaves the root as it was", async () => {
    const root = drifted();
    const before = tmp("strata-before-");
    copyTree(root, before);
    const stateDir = tmp("strata-state-");
    const s = wireSource(src, (id, compressed, payload) => {
      if (id !== X_CHUNK) return { compressed, payload };
      // Same length, other bytes: only the hash can tell.
      return { compressed: false, payload: Buffer.from("#!/bin/sh\nrm -rf /\n".slice(0, 17)) };
    });
    const err = await runRestore(s, { ...opts(root, {}), stateDir }).done.catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "DATA_CORRUPT" });
    expect((err as Error).message).toContain(X_CHUNK);
    expect((err as Error).message).toContain("/usr/bin/x");
    expect(diff(before, root)).toEqual([]);
    expect(await recoverPendingRestore(stateDir, root)).toEqual([{ outcome: "none" }]);
    expect(openFdsUnder(root, stateDir)).toEqual([]);
  });

  it("a chunk that does not decompress into its length is refused", async () => {
    const root = drifted();
    const before = tmp("strata-before-");
    copyTree(root, before);
    const s = wireSource(src, (id, compressed, payload) =>
      id === X_CHUNK
        ? { compressed: true, payload: Buffer.from("not zstd at all") }
        : { compressed, payload },
    );
    await expect(runRestore(s, opts(root, {})).done).rejects.toMatchObject({
      code: "DATA_CORRUPT",
      message: expect.stringContaining("/usr/bin/x"),
    });
    expect(diff(before, root)).toEqual([]);
  });

  it("a staged file the kernel refuses is reported by its snapshot path and left out; the rest is restored", async () => {
    // A state directory so deep that one staged name passes PATH_MAX (4,096 bytes) and a short
    // one does not: the stage is created off the main thread, the refusal must still be reported.
    const data = tmp("strata-long-");
    const long = "n".repeat(250);
    put(data, "d/short", "short file\n");
    put(data, `d/${long}`, "a file whose staged path is too long\n");
    // A directory and a symlink whose staged paths are too long: reported once each, what the
    // directory holds left out without a report of its own.
    const longDir = "m".repeat(250);
    put(data, `d/${longDir}/inner/file`, "never staged\n");
    symlinkSync("short", path.join(data, "d", `${longDir}/link`));
    symlinkSync("short", path.join(data, "d", "o".repeat(250)));
    put(data, "top", "top file\n");
    const s = await snapshotOf(repo, data);
    let stateDir = tmp("strata-state-");
    while (stateDir.length < 3900)
      stateDir = path.join(stateDir, "s".repeat(Math.min(200, 3900 - stateDir.length)));
    mkdirSync(stateDir, { recursive: true });
    const root = tmp("strata-root-");
    const r = await runRestore(wireSource(s), { ...opts(root, {}), stateDir }).done;
    expect(new Set(r.errors)).toEqual(
      new Set([
        {
          path: `/d/${longDir}`,
          message: expect.stringMatching(/^not restored: ENAMETOOLONG: .*, mkdir '\//),
        },
        { path: `/d/${long}`, message: expect.stringMatching(/^not restored: ENAMETOOLONG: .*, open '\//) },
        {
          path: `/d/${"o".repeat(250)}`,
          message: expect.stringMatching(/^not restored: ENAMETOOLONG: .*, symlink '\//),
        },
      ]),
    );
    expect(r.errors).toHaveLength(3);
    expect(readFileSync(path.join(root, "d/short"), "utf8")).toBe("short file\n");
    expect(readFileSync(path.join(root, "top"), "utf8")).toBe("top file\n");
    expect(existsSync(path.join(root, "d", long))).toBe(false);
    expect(readdirSync(path.join(root, "d"))).toEqual(["short"]);
    expect(diff(data, root, new RegExp(`${long}|${longDir}|${"o".repeat(250)}|(^| )d/$`))).toEqual([]);
    expect(openFdsUnder(root, stateDir)).toEqual([]);
  });

  it("a listing the source cannot deliver fails the restore: no directory is restored partly", async () => {
    const root = drifted();
    const before = tmp("strata-before-");
    copyTree(root, before);
    // /usr/bin's listing is damaged on the server; on an empty root /usr is staged whole.
    const damaged = (s: RestoreSource): RestoreSource => ({
      ...s,
      loadTree: async (ref) => {
        const t = await s.loadTree(ref);
        if (t.nodes.some((n) => n.name.toString() === "x"))
          throw new StrataError("DATA_CORRUPT", `tree ${ref.id} does not match its hash`, {
            subject: ref.id,
          });
        return t;
      },
    });
    for (const target of [root, tmp("strata-root-")]) {
      const stateDir = tmp("strata-state-");
      const was = readdirSync(target);
      await expect(
        runRestore(damaged(wireSource(src)), { ...opts(target, {}), stateDir }).done,
      ).rejects.toMatchObject({
        code: "DATA_CORRUPT",
        message: expect.stringContaining("does not match its hash"),
      });
      expect(readdirSync(target)).toEqual(was);
      expect(await recoverPendingRestore(stateDir, target)).toEqual([{ outcome: "none" }]);
      expect(openFdsUnder(target, stateDir)).toEqual([]);
    }
    expect(diff(before, root)).toEqual([]);
  });

  it.skipIf(process.getuid?.() !== 0)(
    "no inode left for a staged file (a full disk) fails the restore naming the file, and changes nothing",
    async (ctx) => {
      const data = tmp("strata-many-");
      for (let i = 0; i < 40; i++) put(data, `d/f${i}`, `file number ${i}\n`);
      const s = await snapshotOf(repo, data);
      const root = tmp("strata-root-");
      try {
        // Room for the workdir, the staged directory and a few files, not for 40.
        execFileSync("mount", ["-t", "tmpfs", "-o", "size=8m,nr_inodes=20", "tmpfs", root]);
      } catch (e) {
        ctx.skip(`cannot mount a tmpfs here (needs root): ${(e as Error).message}`);
        return;
      }
      try {
        put(root, "keep", "the old state\n");
        const stateDir = tmp("strata-state-");
        const err = await runRestore(wireSource(s), { ...opts(root, {}), stateDir }).done.catch(
          (e: unknown) => e,
        );
        expect(err).toMatchObject({
          code: "NO_SPACE",
          message: expect.stringMatching(/^cannot stage \/d\/f[0-9]+: ENOSPC/),
          hint: expect.stringContaining("free space"),
        });
        expect(readdirSync(root)).toEqual(["keep"]);
        expect(readFileSync(path.join(root, "keep"), "utf8")).toBe("the old state\n");
        expect(await recoverPendingRestore(stateDir, root)).toEqual([{ outcome: "none" }]);
        expect(openFdsUnder(root, stateDir)).toEqual([]);

        // The same with directories only: a subdirectory that cannot be made inside a staged one
        // fails the batch too (it is not "not restored" at its parent, which would be put partly).
        const dirs = tmp("strata-dirs-");
        for (let i = 0; i < 40; i++) mkdirSync(path.join(dirs, "d", `k${i}`), { recursive: true });
        const onlyDirs = await snapshotOf(repo, dirs);
        const state2 = tmp("strata-state-");
        await expect(
          runRestore(wireSource(onlyDirs), { ...opts(root, {}), stateDir: state2 }).done,
        ).rejects.toMatchObject({
          code: "NO_SPACE",
          message: expect.stringMatching(/^cannot stage \/d\/k[0-9]+: ENOSPC/),
        });
        expect(readdirSync(root)).toEqual(["keep"]);
        expect(await recoverPendingRestore(state2, root)).toEqual([{ outcome: "none" }]);
      } finally {
        execFileSync("umount", ["-l", root]);
      }
    },
  );

  it("a worker failure leaves the root at the old state, no stage and no descriptor behind", async () => {
    const root = drifted();
    const before = tmp("strata-before-");
    copyTree(root, before);
    const stateDir = tmp("strata-state-");
    const real = RestorePool.prototype.run;
    let calls = 0;
    vi.spyOn(RestorePool.prototype, "run").mockImplementation(function (this: RestorePool, ...a) {
      // The first message goes through (its files are written into the stage), the next fails.
      if (++calls === 2) return Promise.reject(new Error("restore worker exited with code 1"));
      return real.apply(this, a);
    });
    // Small fetch batches are not configurable: a bare root makes the whole snapshot one batch
    // of many messages, so the failure lands after some files were written.
    const empty = tmp("strata-root-");
    await expect(runRestore(wireSource(src), { ...opts(empty, {}), stateDir }).done).rejects.toThrow(
      /worker exited/,
    );
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(readdirSync(empty)).toEqual([]);
    expect(await recoverPendingRestore(stateDir, empty)).toEqual([{ outcome: "none" }]);
    expect(openFdsUnder(empty, stateDir)).toEqual([]);
    // The drifted root was never involved; a later run over it still works through the workers.
    vi.restoreAllMocks();
    await runRestore(wireSource(src), opts(root, {})).done;
    expect(diff(v1, root, /(^| )(tmp|var\/cache)\/./)).toEqual([]);
    expect(diff(before, v1, /(^| )(tmp|var\/cache)\/./).length).toBeGreaterThan(0);
  });
});
