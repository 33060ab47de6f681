/**
 * Shared by the crash tests (restore-crash, layer-crash): run a restore in a
 * child process (restore-child.ts) and kill -9 it at chosen steps.
 */
import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import { recoverPendingRestore } from "../src/restore/engine.js";
import { tmp } from "./helpers.js";
import { copyTree, diff } from "./restore-helpers.js";

/** A small seeded PRNG: a failing run can be replayed from the printed seed. */
export function prng(seed: number): () => number {
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

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), "restore-child.ts");

/** Run one restore in a child process (restore-child.ts, whose ChildArgs `args` are). */
export function runChild(
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
 * kill -9 a restore (restore-child.ts with `args(killAt)`) at `kills` random
 * steps of `total`, each time onto a fresh copy of `old` at `root`, then
 * recoverPendingRestore: the root must equal, by rsync, exactly `old` or
 * `fresh` (the state of an uninterrupted run; lines matching `ignoreNew`
 * do not count against it, lines matching `ignore` against neither). Kills must land on both sides of the commit.
 */
export async function killLoop(o: {
  old: string;
  fresh: string;
  root: string;
  total: number;
  kills: number;
  seed: number;
  args: (killAt: number, stateDir: string) => Record<string, unknown>;
  ignoreNew?: RegExp;
  /** Lines that count against neither state. */
  ignore?: RegExp;
}): Promise<void> {
  const rand = prng(o.seed);
  const outcomes = { old: 0, new: 0 };
  for (let k = 0; k < o.kills; k++) {
    const killAt = 1 + Math.floor(rand() * o.total);
    rmSync(o.root, { recursive: true, force: true });
    copyTree(o.old, o.root);
    const stateDir = tmp("strata-state-");
    const res = await runChild(o.args(killAt, stateDir));
    const where = `seed ${o.seed}, kill ${k} at step ${killAt}/${o.total}`;
    expect(res.signal, `${where}: ${res.out}`).toBe("SIGKILL");
    const pending = await recoverPendingRestore(stateDir, o.root);
    expect(pending.length, where).toBe(1);
    const asOld = diff(o.old, o.root, o.ignore);
    const asNew = diff(o.fresh, o.root, o.ignoreNew).filter((l) => !o.ignore?.test(l));
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
