import { existsSync, mkdirSync, readdirSync } from "node:fs";
import * as path from "node:path";
import { openSqliteCatalog } from "@strata/catalog";
import type { FsNode, TreeId } from "@strata/core";
import { DirBlobStore, emptySnapshotStats, Repository } from "@strata/repo";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, newEnv, ok, strata, tmp } from "./helpers.js";

afterAll(cleanup);

const base = { mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, size: 0 };

/**
 * A snapshot written by a hostile or broken client: names with '/', '..',
 * '.', NUL and an absolute symlink, plus an entry that tries to descend
 * through a symlink. Restore must refuse each, name it, and write nothing
 * outside the target.
 */
describe("restore of a hostile snapshot", () => {
  it("never writes outside --target and names every refused entry", async () => {
    const env = newEnv();
    ok(env, "repo", "init");
    const outside = tmp("strata-outside-");
    process.env.STRATA_SCRYPT_LOG_N = "12";
    const catalog = await openSqliteCatalog(path.join(env.repo, "catalog.db"));
    const repo = await Repository.open(new DirBlobStore(env.repo), catalog, Buffer.from(env.password));
    const data = Buffer.from("owned");
    const { createHash } = await import("node:crypto");
    const id = createHash("sha256").update(data).digest("hex") as never;
    await repo.saveBlob(id, "chunk", data);
    const file = (name: string | Buffer): FsNode => ({
      ...base,
      name: Buffer.isBuffer(name) ? name : Buffer.from(name),
      type: "file",
      size: data.length,
      content: [{ id, len: data.length }],
    });
    const inner: TreeId = await repo.saveTree([file("payload")]);
    const relOutside = path.relative("/", outside);
    const nodes: FsNode[] = [
      file(Buffer.from([0x2e, 0x2e, 0x2f, 0x2e, 0x2e, 0x2f, 0x78])), // "../../x"
      file(".."),
      file(`../${relOutside}/escaped`),
      file(Buffer.from("a\0b")),
      { ...base, name: Buffer.from("evil-dir"), type: "dir", mode: 0o755, subtree: inner },
      { ...base, name: Buffer.from("link"), type: "symlink", mode: 0o777, target: Buffer.from(outside) },
      file(`link/${"x"}`),
      file(`/${relOutside}/abs`),
    ].sort((a, b) => Buffer.compare(a.name, b.name));
    const root = await repo.saveTree(nodes);
    await repo.saveSnapshot({
      time: new Date(),
      hostname: "evil",
      paths: ["/"],
      tags: [],
      tree: root,
      parent: null,
      kind: "backup",
      stats: emptySnapshotStats(),
    });
    await repo.close();
    await catalog.close();

    const target = path.join(tmp(), "t");
    mkdirSync(target);
    const r = strata(env, "restore", "latest", "--target", target);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/not restored: refusing file name/);
    expect(r.stderr).toContain("/..");
    expect(r.stderr).toContain("/a\\x00b");
    expect(readdirSync(outside)).toEqual([]);
    expect(existsSync(path.join(path.dirname(target), "x"))).toBe(false);
    // The safe entries were restored: the symlink as a symlink, the directory with its file.
    expect(readdirSync(target).sort()).toEqual(["evil-dir", "link"]);
    expect(readdirSync(path.join(target, "evil-dir"))).toEqual(["payload"]);
  });
});
