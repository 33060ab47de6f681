import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
} from "node:fs";
import * as path from "node:path";
import type { FsNode, TreeId } from "@strata/core";
import { emptySnapshotStats, type Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreKind, RestoreOptions } from "../src/restore/types.js";
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

let base: string;
let repo: Repository;
let v1: string;
let src: LocalRestoreSource;
let hostile: LocalRestoreSource;
let outside: string;

const base0 = { mode: 0o644, uid: 0, gid: 0, mtimeNs: 1_700_000_000_000_000_000n, size: 0 };

beforeAll(async () => {
  base = tmp("strata-hostile-");
  v1 = path.join(base, "v1");
  buildSmallRoot(v1);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, v1);
  outside = path.join(base, "outside");
  put(outside, "precious", "must survive\n");

  // A snapshot written by a compromised endpoint, encoded by hand.
  const data = Buffer.from("owned\n");
  const id = createHash("sha256").update(data).digest("hex") as never;
  await repo.saveBlob(id, "chunk", data);
  const file = (name: string | Buffer): FsNode => ({
    ...base0,
    name: Buffer.isBuffer(name) ? name : Buffer.from(name),
    type: "file",
    size: data.length,
    content: [{ id, len: data.length }],
  });
  const rel = path.relative("/", outside);
  const inner: TreeId = await repo.saveTree([file(Buffer.from([0x2e, 0x2e])), file("payload")]);
  const nodes: FsNode[] = [
    file(Buffer.from("../../escaped")),
    file(".."),
    file("."),
    file(`../${rel}/precious`),
    file(Buffer.from("nul\0name")),
    file(`/${rel}/abs`),
    file(Buffer.alloc(300, "n")),
    file("ok"),
    { ...base0, name: Buffer.from("dir"), type: "dir", mode: 0o755, subtree: inner },
    { ...base0, name: Buffer.from("link"), type: "symlink", mode: 0o777, target: Buffer.from(outside) },
    file("link/through"),
  ].sort((a, b) => Buffer.compare(a.name, b.name));
  const root = await repo.saveTree(nodes);
  const snap = await repo.saveSnapshot({
    time: new Date(),
    hostname: "evil",
    paths: ["/"],
    tags: [],
    tree: root,
    parent: null,
    kind: "backup",
    stats: emptySnapshotStats(),
  });
  hostile = await LocalRestoreSource.open(repo, snap);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

function expectOutsideIntact(): void {
  expect(readdirSync(outside)).toEqual(["precious"]);
  expect(readFileSync(path.join(outside, "precious"), "utf8")).toBe("must survive\n");
  expect(existsSync(path.join(path.dirname(base), "escaped"))).toBe(false);
}

function opts(root: string, kind: RestoreKind, o: Partial<RestoreOptions> = {}): RestoreOptions {
  return { root, stateDir: tmp("strata-state-"), id: "h", kind, ...o };
}

describe("hostile snapshots and roots never make a restore write outside its root", () => {
  for (const kind of ["full", "files"] as const) {
    it(`${kind}: names with '..', '/', NUL, dots or 300 bytes are refused and named; the rest is restored`, async () => {
      const root = path.join(tmp("strata-root-"), "r");
      mkdirSync(root);
      const errors: string[] = [];
      const r = await runRestore(
        hostile,
        opts(root, kind, {
          ...(kind === "files" ? { paths: ["/ok", "/dir", "/link"], to: root } : {}),
          onError: (e) => errors.push(`${e.path}: ${e.message}`),
        }),
      ).done;
      expect(r.errors.length).toBeGreaterThanOrEqual(kind === "files" ? 1 : 8);
      if (kind === "full") {
        expect(errors.join("\n")).toMatch(/refusing file name "\.\."/);
        expect(errors.join("\n")).toMatch(/contains '\/'/);
        expect(errors.join("\n")).toMatch(/NUL/);
      }
      expect(readdirSync(root).sort()).toEqual(["dir", "link", "ok"]);
      expect(readdirSync(path.join(root, "dir"))).toEqual(["payload"]);
      expect(lstatSync(path.join(root, "link")).isSymbolicLink()).toBe(true);
      expectOutsideIntact();
    });
  }

  for (const kind of ["full", "system"] as const) {
    it(`${kind}: a root whose /etc (and /usr/bin/tool) is a symlink to outside gets them replaced, not followed`, async () => {
      const root = tmp("strata-root-");
      copyTree(v1, root);
      rmSync(path.join(root, "etc"), { recursive: true });
      symlinkSync(outside, path.join(root, "etc"));
      rmSync(path.join(root, "usr/bin/tool"));
      symlinkSync(path.join(outside, "precious"), path.join(root, "usr/bin/tool"));
      const r = await runRestore(src, opts(root, kind, { policy: testPolicy() })).done;
      expect(r.errors).toEqual([]);
      expect(lstatSync(path.join(root, "etc")).isDirectory()).toBe(true);
      expect(diff(v1, root, /(^| )(tmp|var\/cache)\/./)).toEqual([]);
      expectOutsideIntact();
    });
  }

  it("a directory swapped for a symlink after planning is refused with UNSAFE_PATH naming it; the rest is applied", async () => {
    const root = tmp("strata-root-");
    copyTree(v1, root);
    rmSync(path.join(root, "usr/share/fifo"));
    put(root, "etc/hostname", "drifted\n");
    let swapped = false;
    const run = runRestore(
      src,
      opts(root, "full", {
        policy: testPolicy(),
        onProgress: (p) => {
          if (p.phase === "applying" && !swapped) {
            swapped = true;
            renameSync(path.join(root, "usr/share"), path.join(root, "usr/share.moved"));
            symlinkSync(outside, path.join(root, "usr/share"));
          }
        },
      }),
    );
    await expect(run.done).rejects.toMatchObject({
      code: "UNSAFE_PATH",
      subject: expect.stringContaining("usr/share"),
    });
    expect(swapped).toBe(true);
    expectOutsideIntact();
    expect(readFileSync(path.join(root, "etc/hostname"), "utf8")).toBe("web-1\n");
    expect(lstatSync(path.join(root, "usr/share")).isSymbolicLink()).toBe(true);
  });
});
