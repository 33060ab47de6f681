import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { dropCache } from "@strata/fs";
import { DirBlobStore } from "@strata/repo";
import { afterAll, describe, expect, it } from "vitest";
import { runBlobStoreContract } from "./blob-store-contract.js";

const dirs: string[] = [];
const fresh = () => {
  const d = mkdtempSync(path.join(tmpdir(), "strata-store-"));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

runBlobStoreContract("DirBlobStore", async () => new DirBlobStore(fresh()));

/** Pages of `file` in the page cache (fincore, util-linux). */
function resident(file: string): number {
  const r = spawnSync("fincore", ["--noheadings", "--output", "PAGES", file], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`fincore ${file}: ${r.stderr || r.error}`);
  return Number(r.stdout.trim());
}
const noFincore = spawnSync("fincore", ["--version"]).error
  ? "fincore (util-linux) is not installed"
  : undefined;

describe("DirBlobStore specifics", () => {
  it.skipIf(noFincore)(
    `readAhead reads the range into the page cache, and ignores a missing object ${noFincore ? `(skipped: ${noFincore})` : ""}`,
    async (ctx) => {
      const dir = fresh();
      const s = new DirBlobStore(dir);
      await s.put("packs/cc/c", randomBytes(4 << 20));
      const file = path.join(dir, "packs/cc/c");
      const fd = openSync(file, "r");
      dropCache(fd); // put wrote it durably: its pages are clean and can go
      closeSync(fd);
      if (resident(file) !== 0) ctx.skip(`the filesystem of ${dir} keeps its pages in memory (tmpfs)`);
      await s.readAhead("packs/cc/missing", 0, 10); // resolves: the read of it will fail
      // The kernel adds the pages to the cache when it submits the reads, before they complete; but
      // advice is advice: while the disk is busy (other test files run in parallel) it may skip it,
      // so it is given again until it is taken (a store that never gives it fails after 5 s).
      const deadline = Date.now() + 5000;
      await s.readAhead("packs/cc/c", 1 << 20, 2 << 20);
      while (resident(file) === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
        await s.readAhead("packs/cc/c", 1 << 20, 2 << 20);
      }
      const pages = resident(file);
      expect(pages).toBeGreaterThanOrEqual(512); // the 2 MiB asked for
      expect(pages).toBeLessThan(1024); // not the whole 4 MiB file
      expect((await s.getRange("packs/cc/c", 1 << 20, 16)).length).toBe(16);
      await s.close();
    },
  );

  it("a deleted or unopenable object leaves the read-handle cache; a name put again is read anew and cached once", async () => {
    const s = new DirBlobStore(fresh());
    await s.put("packs/aa/a", Buffer.from("first"));
    expect((await s.getRange("packs/aa/a", 0, 5)).toString()).toBe("first");
    expect(s.openHandles).toEqual(["packs/aa/a"]);
    await s.delete("packs/aa/a");
    expect(s.openHandles).toEqual([]);
    await s.put("packs/aa/a", Buffer.from("again"));
    expect((await s.getRange("packs/aa/a", 0, 5)).toString()).toBe("again");
    expect(s.openHandles).toEqual(["packs/aa/a"]);
    await expect(s.getRange("packs/aa/missing", 0, 1)).rejects.toThrow(/missing/);
    await Promise.resolve();
    expect(s.openHandles).toEqual(["packs/aa/a"]);
    // 64 other objects read: "a" is the oldest and goes; nothing evicts twice.
    for (let i = 0; i < 64; i++) {
      await s.put(`packs/bb/${i}`, Buffer.from(`b${i}`));
      await s.getRange(`packs/bb/${i}`, 0, 2);
    }
    expect(s.openHandles).toHaveLength(64);
    expect(new Set(s.openHandles).size).toBe(64);
    expect(s.openHandles).not.toContain("packs/aa/a");
    await s.close();
  });

  it("leaves no temporary files behind and writes files readable only by the owner", async () => {
    const root = fresh();
    const s = new DirBlobStore(root);
    await s.put("packs/aa/x", Buffer.alloc(100));
    expect(readdirSync(path.join(root, "packs/aa"))).toEqual(["x"]);
  });

  it("temporary objects live as .tmp-* files in the root and leave nothing behind", async () => {
    const root = fresh();
    const s = new DirBlobStore(root);
    const t = s.createTemp();
    t.write(Buffer.alloc(10, 1));
    const tmp = readdirSync(root).filter((n) => n.startsWith(".tmp-"));
    expect(tmp).toHaveLength(1);
    expect(statSync(path.join(root, tmp[0]!)).mode & 0o777).toBe(0o600);
    await t.commit("packs/aa/y");
    expect(readdirSync(root).filter((n) => n.startsWith(".tmp-"))).toEqual([]);
    expect(readdirSync(path.join(root, "packs/aa"))).toEqual(["y"]);
    const dropped = s.createTemp();
    dropped.write(Buffer.alloc(3));
    await dropped.abort();
    expect(readdirSync(root).filter((n) => n.startsWith(".tmp-"))).toEqual([]);
    // A crash leaves a temporary file: sweepTemporary removes old ones.
    s.createTemp().write(Buffer.alloc(3));
    expect(await s.sweepTemporary(new Date(Date.now() + 1000))).toBe(1);
  });
});
