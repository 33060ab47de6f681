import { existsSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
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

let repo: Repository;
let v1: string;
let src: LocalRestoreSource;

beforeAll(async () => {
  const base = tmp("strata-restore-");
  v1 = path.join(base, "v1");
  buildSmallRoot(v1);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, v1);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

const EXCLUDED = /(^| )(tmp|var\/cache)\//;

function opts(root: string, o: Partial<RestoreOptions>): RestoreOptions {
  return { root, stateDir: tmp("strata-state-"), id: "t1", kind: "full", policy: testPolicy(), ...o };
}

describe("restore engine, small tree", () => {
  it("full restore onto an empty root gives the snapshot", async () => {
    const root = tmp("strata-root-");
    const run = runRestore(src, opts(root, { kind: "full" }));
    const r = await run.done;
    expect(r.errors).toEqual([]);
    expect(diff(v1, root, EXCLUDED)).toEqual([]);
  });
});
