import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import { cleanup, tmp } from "./helpers.js";
import { killLoop } from "./restore-crash-helpers.js";
import {
  closeTestRepo,
  copyTree,
  createTestRepo,
  diff,
  type LayerSpec,
  layerOptions,
  noise,
  put,
  settleDirs,
  snapshotOf,
  testPolicy,
} from "./restore-helpers.js";
import { buildMediumRoot } from "./restore-trees.js";

const T1 = 1_710_000_000_000_000_000n;

let base: string;
let repo: Repository;
/** The endpoint before the apply. */
let old: string;
/** A sparse image: changed and new files, metadata changes, a user-area path it must not write. */
let img: string;
let src: LocalRestoreSource;

const SPEC: LayerSpec = {
  removable: [
    // A whole directory (and everything in it), …
    "/usr/share/pkg20",
    ...Array.from({ length: 50 }, (_, f) => `/usr/share/pkg20/file${f}`),
    // … some files of a directory the image lacks (it stays, with its own time), …
    ...Array.from({ length: 10 }, (_, f) => `/usr/share/pkg21/file${f}`),
    // … and files of directories the image has.
    "/usr/share/pkg0/file1",
    "/usr/share/pkg1/file1",
  ],
  literals: {
    // The root's file, new content: the root's metadata, the run's time.
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n_app:x:998:998::/nonexistent:/usr/sbin/nologin\n",
    // Nowhere yet: 0644 root:root, the run's time.
    "/etc/group": "root:x:0:\n_app:x:998:\n",
    // The image has the entry: its metadata.
    "/var/lib/dpkg/status": "Package: app\nStatus: install ok installed\nVersion: 2\n",
  },
};

beforeAll(async () => {
  base = tmp("strata-layer-crash-");
  old = path.join(base, "old");
  buildMediumRoot(old);
  put(old, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
  put(old, "var/lib/dpkg/status", "Package: app\nStatus: install ok installed\nVersion: 1\n");
  put(old, "usr/local/bin/mine", "installed by the user\n", { mode: 0o755 });
  settleDirs(old);

  img = path.join(base, "img");
  for (let d = 0; d < 5; d++) {
    // Changed files in directories the endpoint has (puts seeded from the old files).
    for (let f = 0; f < 50; f += 5)
      put(img, `usr/share/pkg${d}/file${f}`, noise(900 + f, 90_000 + d * 50 + f), { t: T1 });
    // New directories, staged whole.
    for (let f = 0; f < 50; f++)
      put(img, `usr/share/newapp${d}/file${f}`, noise(400 + f * 10, 95_000 + d * 50 + f), { t: T1 });
  }
  // Same content, other mode and time: metadata only.
  for (let f = 0; f < 20; f++) {
    const rel = `etc/conf30/file${f}`;
    put(img, rel, readFileSync(path.join(old, rel)), { mode: 0o600, t: T1 });
  }
  put(img, "var/lib/dpkg/status", "image's status: the literal replaces it\n", { mode: 0o644, t: T1 });
  // The user area: never written by a layer.
  put(img, "home/alice/dir35/file0", "a layer must not write this\n", { t: T1 });
  settleDirs(img, T1);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, img);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

/** Literal files written with the run's time: between two runs only their mtime differs. */
const NOW_LITERALS = /^\.f\.\.t\.+ etc\/(passwd|group)$/;

describe("a layer apply survives kill -9", () => {
  it("at 14 random steps (staging, commit, puts, dels, literals, metas, cleanup): the root is the old or the new state after recovery", async () => {
    // The new state and the number of steps of an uninterrupted run.
    const fresh = path.join(base, "new");
    copyTree(old, fresh);
    let total = 0;
    const r = await runRestore(src, {
      root: fresh,
      stateDir: tmp("strata-state-"),
      id: "full-run",
      kind: "layer",
      policy: testPolicy(),
      layer: layerOptions(SPEC),
      onStep: (s) => {
        total = s.n;
      },
    }).done;
    expect(r.errors).toEqual([]);
    // Every kind of operation is in the run.
    expect(r.putOps).toBeGreaterThan(50);
    expect(r.deleted).toBe(1 + 10 + 2);
    expect(r.metaOps).toBeGreaterThan(20);
    expect(total).toBeGreaterThan(200);
    expect(existsSync(path.join(fresh, "usr/share/pkg20"))).toBe(false);
    expect(
      readFileSync(path.join(fresh, "home/alice/dir35/file0")).equals(
        readFileSync(path.join(old, "home/alice/dir35/file0")),
      ),
    ).toBe(true);
    expect(readFileSync(path.join(fresh, "var/lib/dpkg/status"), "utf8")).toContain("Version: 2");
    expect(readFileSync(path.join(fresh, "usr/local/bin/mine"), "utf8")).toBe("installed by the user\n");
    expect(diff(old, fresh).length).toBeGreaterThan(100);

    await killLoop({
      old,
      fresh,
      root: path.join(base, "root"),
      total,
      kills: 14,
      seed: 31337,
      args: (killAt, stateDir) => ({
        repo: path.join(base, "repo"),
        snapshotPath: img,
        snapshot: src.snapshot.id,
        root: path.join(base, "root"),
        stateDir,
        kind: "layer",
        policy: true,
        layer: SPEC,
        killAt,
      }),
      ignoreNew: NOW_LITERALS,
    });
  }, 300_000);
});
