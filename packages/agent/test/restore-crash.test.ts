import { rmSync } from "node:fs";
import * as path from "node:path";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { recoverPendingRestore, runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreKind } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import { killLoop, prng, runChild } from "./restore-crash-helpers.js";
import { closeTestRepo, copyTree, createTestRepo, diff, snapshotOf, testPolicy } from "./restore-helpers.js";
import { buildMediumRoot, driftMediumRoot } from "./restore-trees.js";

let base: string;
let repo: Repository;
let v1: string;
let old: string;
let src: LocalRestoreSource;

beforeAll(async () => {
  base = tmp("strata-crash-");
  v1 = path.join(base, "v1");
  buildMediumRoot(v1);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, v1);
  old = path.join(base, "old");
  copyTree(v1, old);
  driftMediumRoot(old);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

/**
 * kill -9 at random steps of a restore (staging, commit, apply, cleanup),
 * then recoverPendingRestore: the root must equal, by rsync, exactly the
 * old state or the new one.
 */
async function crashLoop(kind: RestoreKind, kills: number, seed: number): Promise<void> {
  const policy = kind === "system";
  // The new state and the number of steps of an uninterrupted run.
  const fresh = path.join(base, `new-${kind}`);
  copyTree(old, fresh);
  let total = 0;
  const r = await runRestore(src, {
    root: fresh,
    stateDir: tmp("strata-state-"),
    id: "full-run",
    kind,
    ...(policy ? { policy: testPolicy() } : {}),
    onStep: (s) => {
      total = s.n;
    },
  }).done;
  expect(r.errors).toEqual([]);
  // system keeps the user area; recover keeps the device's identity files.
  const kept = policy
    ? /(^| )home\/alice\//
    : kind === "recover"
      ? /etc\/(machine-id|ssh\/ssh_host_)/
      : undefined;
  expect(diff(v1, fresh, kept)).toEqual([]);
  expect(diff(old, fresh).length).toBeGreaterThan(100);
  expect(total).toBeGreaterThan(200);

  await killLoop({
    old,
    fresh,
    root: path.join(base, `root-${kind}`),
    total,
    kills,
    seed,
    args: (killAt, stateDir) => ({
      repo: path.join(base, "repo"),
      snapshotPath: v1,
      root: path.join(base, `root-${kind}`),
      stateDir,
      kind,
      policy,
      killAt,
    }),
    // recover writes a missing /etc/machine-id ("uninitialized") with the time of its run.
    ...(kind === "recover" ? { ignoreNew: /^\.f\.\.t\.+ etc\/machine-id$/ } : {}),
  });
}

describe("restore survives kill -9", () => {
  it("full: at 12 random steps, the root is the old or the new state after recovery", async () => {
    await crashLoop("full", 12, 20251126);
  }, 180_000);

  it("system: at 10 random steps, the root is the old or the new state after recovery", async () => {
    await crashLoop("system", 10, 4242);
  }, 180_000);

  it("recover: at 6 random steps, the root is the old or the new state after recovery", async () => {
    await crashLoop("recover", 6, 777);
  }, 180_000);

  it("files: at 8 random steps, the destination is the old or the new state after recovery", async () => {
    // The destination already holds an older copy of what is restored, and
    // a file of its own that `files` must never delete.
    const oldTo = path.join(base, "old-to");
    copyTree(path.join(old, "etc"), path.join(oldTo, "etc"));
    copyTree(path.join(old, "opt/app"), path.join(oldTo, "app"));
    copyTree(path.join(old, "usr/share/newpkg"), path.join(oldTo, "etc/newpkg"));
    const paths = ["/etc", "/opt/app", "/home/alice/big.bin"];
    const fresh = path.join(base, "new-to");
    copyTree(oldTo, fresh);
    let total = 0;
    const r = await runRestore(src, {
      root: "/",
      stateDir: tmp("strata-state-"),
      id: "full-run",
      kind: "files",
      paths,
      to: fresh,
      onStep: (s) => {
        total = s.n;
      },
    }).done;
    expect(r.errors).toEqual([]);
    // `files` deletes nothing: what only the destination had stays.
    expect(
      diff(path.join(v1, "etc"), path.join(fresh, "etc"), /^\*deleting +(newpkg\/.*|conf\d+\/newer)$/),
    ).toEqual([]);
    expect(diff(path.join(v1, "opt/app"), path.join(fresh, "app"), /(^| )\.\/$/)).toEqual([]);
    expect(diff(oldTo, fresh).length).toBeGreaterThan(50);
    expect(total).toBeGreaterThan(100);
    await killLoop({
      old: oldTo,
      fresh,
      root: path.join(base, "root-files"),
      total,
      kills: 8,
      seed: 31337,
      args: (killAt, stateDir) => ({
        repo: path.join(base, "repo"),
        snapshotPath: v1,
        root: "/",
        stateDir,
        kind: "files",
        policy: false,
        paths,
        to: path.join(base, "root-files"),
        killAt,
      }),
      // The destination's own time moves with the stage made in it; it is not the snapshot's.
      ignore: /^\.d\.\.t\.+ \.\/$/,
    });
  }, 180_000);

  it("recover, streaming in small batches: a kill leaves whole batches, and the restarted task ends at the new state", async () => {
    const stream = { minimalSet: ["/etc"], files: 40, bytes: 256 * 1024 };
    const streamOpts = {
      kind: "recover" as const,
      streaming: true,
      minimalSet: stream.minimalSet,
      batchLimits: { files: stream.files, bytes: stream.bytes },
    };
    const identity = /etc\/(machine-id|ssh\/ssh_host_)/;
    const fresh = path.join(base, "new-stream");
    copyTree(old, fresh);
    let total = 0;
    const r = await runRestore(src, {
      ...streamOpts,
      root: fresh,
      stateDir: tmp("strata-state-"),
      id: "full-run",
      onStep: (s) => {
        total = s.n;
      },
    }).done;
    expect(r.errors).toEqual([]);
    expect(r.batches).toBeGreaterThan(10);
    expect(diff(v1, fresh, identity)).toEqual([]);

    // An itemized line's path (rsync prints 11 flag columns, a space, the path).
    const pathsOf = (lines: string[]) => new Set(lines.map((l) => l.slice(12)));
    const ignoreNew = /^\.f\.\.t\.+ etc\/machine-id$/;
    const root = path.join(base, "root-stream");
    const rand = prng(424242);
    let between = 0;
    for (let k = 0; k < 8; k++) {
      const killAt = 1 + Math.floor(rand() * total);
      const where = `kill ${k} at step ${killAt}/${total}`;
      rmSync(root, { recursive: true, force: true });
      copyTree(old, root);
      const stateDir = tmp("strata-state-");
      const res = await runChild({
        repo: path.join(base, "repo"),
        snapshotPath: v1,
        root,
        stateDir,
        kind: "recover",
        policy: false,
        streaming: stream,
        killAt,
      });
      expect(res.signal, `${where}: ${res.out}`).toBe("SIGKILL");
      await recoverPendingRestore(stateDir, root);
      // Each batch is atomic: every file is as it was or as the snapshot has
      // it, never torn (directories are filled entry by entry across batches).
      const vsOld = pathsOf(diff(old, root));
      const vsNew = pathsOf(diff(fresh, root, ignoreNew));
      const torn = [...vsOld].filter((p) => vsNew.has(p) && !p.endsWith("/"));
      expect(torn, where).toEqual([]);
      if (vsOld.size && vsNew.size) between++;
      // Started again, the task finds the batches already applied and finishes.
      const again = await runRestore(src, { ...streamOpts, root, stateDir, id: "again" }).done;
      expect(again.errors, where).toEqual([]);
      expect(diff(fresh, root, ignoreNew), where).toEqual([]);
    }
    // Kills landed mid-stream, with some batches applied and others not.
    expect(between).toBeGreaterThan(0);
  }, 300_000);
});
