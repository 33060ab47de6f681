import { execFileSync } from "node:child_process";
import { lstat, readdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { native } from "@strata/fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildHostileTree, cleanupTempDirs, makeTempDir, rsyncCopy, rsyncItemize } from "../src/index.js";

const isRoot = process.getuid?.() === 0;
const GiB = 1024 ** 3;

let src: string;
let copy: string;
beforeAll(async () => {
  const tmp = await makeTempDir("strata-hostile-");
  src = path.join(tmp, "src");
  copy = path.join(tmp, "copy");
  await buildHostileTree(src);
  rsyncCopy(src, copy);
});
afterAll(cleanupTempDirs);

describe("buildHostileTree", () => {
  it("has byte names, deep nesting and long names", async () => {
    const names = await readdir(path.join(src, "names"), { encoding: "buffer" });
    expect(names.some((n) => n.equals(Buffer.from([0x66, 0xff, 0xfe])))).toBe(true);
    expect(names.some((n) => n.includes(0x0a))).toBe(true);
    expect(names.filter((n) => n.length === 255)).toHaveLength(3);
    const bottom = path.join(src, "deep", ...Array(200).fill("d"), "bottom");
    expect((await lstat(bottom)).isFile()).toBe(true);
  });

  it("has hard links, a sparse 2 GiB file, special files and symlinks", async () => {
    const orig = await lstat(path.join(src, "links/a/original"));
    expect(orig.nlink).toBe(3);
    expect((await lstat(path.join(src, "links/b/second-name"))).ino).toBe(orig.ino);
    const big = await lstat(path.join(src, "sparse/big.img"));
    expect(big.size).toBe(2 * GiB);
    expect(big.blocks * 512).toBeLessThan(64 * 1024 * 1024);
    expect((await lstat(path.join(src, "special/fifo"))).isFIFO()).toBe(true);
    expect((await lstat(path.join(src, "special/socket"))).isSocket()).toBe(true);
    expect((await lstat(path.join(src, "symlinks/loop-a"))).isSymbolicLink()).toBe(true);
    expect((await lstat(path.join(src, "modes/setuid"))).mode & 0o7777).toBe(0o4755);
    expect((await lstat(path.join(src, "modes/sticky"))).mode & 0o7777).toBe(0o1777);
  });

  it("has xattrs, ACLs and nanosecond times", async () => {
    expect(native.llistxattr(Buffer.from(path.join(src, "xattrs/file")))).toContain("user.binary");
    expect(native.llistxattr(Buffer.from(path.join(src, "acl/dir")))).toEqual(
      expect.arrayContaining(["system.posix_acl_access", "system.posix_acl_default"]),
    );
    const st = await lstat(path.join(src, "deep"), { bigint: true });
    expect(st.mtimeNs % 1_000_000_000n).not.toBe(0n);
  });

  it.skipIf(!isRoot)("has root-only items: capability, char device, odd owners (needs root)", async () => {
    expect(native.llistxattr(Buffer.from(path.join(src, "caps/bind-low-ports")))).toContain(
      "security.capability",
    );
    const dev = await lstat(path.join(src, "special/null"));
    expect(dev.isCharacterDevice()).toBe(true);
    expect(dev.rdev).toBe((1 << 8) | 3);
    const owned = await lstat(path.join(src, "owners/link"));
    expect([owned.uid, owned.gid]).toEqual([12345, 54321]);
  });
});

describe("rsyncItemize", () => {
  it("finds an rsync -aHAX copy identical", () => {
    expect(rsyncItemize(src, copy)).toBe("");
  });

  it("reports a changed xattr, an extra file and a changed mtime", async () => {
    native.lsetxattr(Buffer.from(path.join(copy, "xattrs/file")), "user.comment", Buffer.from("changed"));
    let out = rsyncItemize(src, copy);
    expect(out).not.toBe("");
    expect(out).toContain("xattrs/file");

    await writeFile(path.join(copy, "empty/extra"), "");
    out = rsyncItemize(src, copy);
    expect(out).toMatch(/deleting\s+empty\/extra/);

    execFileSync("touch", ["-h", "-d", "@1", path.join(copy, "symlinks/dangling")]);
    expect(rsyncItemize(src, copy)).toContain("symlinks/dangling");
  });
});
