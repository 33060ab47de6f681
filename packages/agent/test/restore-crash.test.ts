import * as path from "node:path";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreKind } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import { killLoop } from "./restore-crash-helpers.js";
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
});
