import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { recoverPendingRestore, runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreKind } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import { closeTestRepo, copyTree, createTestRepo, diff, snapshotOf, testPolicy } from "./restore-helpers.js";
import { buildMediumRoot, driftMediumRoot } from "./restore-trees.js";

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), "restore-child.ts");

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

/** A small seeded PRNG: a failing run can be replayed from the printed seed. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

function child(
  args: Record<string, unknown>,
): Promise<{ code: number | null; signal: string | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ["--import", "tsx", CHILD, JSON.stringify(args)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    p.stdout.on("data", (b: Buffer) => {
      out += b;
    });
    p.stderr.on("data", (b: Buffer) => {
      err += b;
    });
    p.on("error", reject);
    p.on("exit", (code, signal) => resolve({ code, signal, out: out + err }));
  });
}

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

  const rand = prng(seed);
  const outcomes = { old: 0, new: 0 };
  const root = path.join(base, `root-${kind}`);
  for (let k = 0; k < kills; k++) {
    const killAt = 1 + Math.floor(rand() * total);
    rmSync(root, { recursive: true, force: true });
    copyTree(old, root);
    const stateDir = tmp("strata-state-");
    const res = await child({
      repo: path.join(base, "repo"),
      snapshotPath: v1,
      root,
      stateDir,
      kind,
      policy,
      killAt,
    });
    const where = `seed ${seed}, kill ${k} at step ${killAt}/${total}`;
    expect(res.signal, `${where}: ${res.out}`).toBe("SIGKILL");
    const pending = await recoverPendingRestore(stateDir, root);
    expect(pending.length, where).toBe(1);
    const asOld = diff(old, root);
    // recover writes a missing /etc/machine-id ("uninitialized") with the time of its run.
    const asNew = diff(fresh, root, kind === "recover" ? /^\.f\.\.t\.+ etc\/machine-id$/ : undefined);
    if (asOld.length && asNew.length) {
      throw new Error(
        `${where}: ${JSON.stringify(pending)} left a mix:\n vs old: ${asOld.slice(0, 8).join("\n")}\n vs new: ${asNew.slice(0, 8).join("\n")}`,
      );
    }
    outcomes[asOld.length === 0 ? "old" : "new"]++;
    // The old state only ever comes from rolling a stage back.
    if (asOld.length === 0) expect(pending[0]!.outcome, where).toBe("rolled-back");
  }
  // Kills landed on both sides of the commit.
  expect(outcomes.old).toBeGreaterThan(0);
  expect(outcomes.new).toBeGreaterThan(0);
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
