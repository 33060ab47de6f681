import { execFileSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  constants as fsConstants,
  ftruncateSync,
  lstatSync,
  openSync,
  readlinkSync,
  writeSync,
} from "node:fs";
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { type FsNode, isStrataError } from "@strata/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  applyMetadata,
  createFile,
  createHardlink,
  createSpecial,
  createSymlink,
  dataRanges,
  finishFile,
  joinName,
  makeDir,
  native,
  readNode,
  setIdlePriority,
  validateName,
  writeAt,
} from "../src/index.js";

const isRoot = process.getuid?.() === 0;
const hasSetfacl = (() => {
  try {
    execFileSync("setfacl", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

let tmp: string;
let src: Buffer;
let dst: Buffer;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "strata-fs-"));
  await mkdir(path.join(tmp, "src"));
  await mkdir(path.join(tmp, "dst"));
  src = Buffer.from(path.join(tmp, "src"));
  dst = Buffer.from(path.join(tmp, "dst"));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const b = (s: string) => Buffer.from(s);

async function nodeAt(p: Buffer): Promise<FsNode> {
  const st = await lstat(p, { bigint: true });
  return readNode(p, Buffer.from(path.basename(p.toString("latin1")), "latin1"), st);
}

/** A VFS v2 capability blob for cap_net_bind_service=ep, built by hand so no setcap is needed. */
function capNetBindService(): Buffer {
  const cap = Buffer.alloc(20);
  cap.writeUInt32LE(0x02000001, 0); // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
  cap.writeUInt32LE(1 << 10, 4); // permitted: CAP_NET_BIND_SERVICE
  return cap;
}

function getfacl(p: string): string {
  return execFileSync("getfacl", ["--omit-header", "--absolute-names", "--numeric", p], { encoding: "utf8" });
}

/** Restore one non-directory node from `from` to `to` the way a restore does. */
async function restoreLeaf(from: Buffer, to: Buffer, node: FsNode): Promise<void> {
  if (node.type === "file") {
    const fd = await createFile(to);
    const content = await readFile(from);
    await writeAt(fd, content, 0);
    await finishFile(fd, node.size);
  } else if (node.type === "symlink") {
    await createSymlink(to, node.target!);
  } else {
    await createSpecial(to, node);
  }
  await applyMetadata(to, node);
}

describe("native addon", () => {
  it("throws Node-style errno errors naming the path", () => {
    const p = joinName(src, b("plain"));
    execFileSync("touch", [p.toString()]);
    let err: NodeJS.ErrnoException | undefined;
    try {
      native.lgetxattr(p, "user.missing");
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err?.code).toBe("ENODATA");
    expect(err?.syscall).toBe("lgetxattr");
    expect(err?.message).toContain(p.toString());
    expect(() => native.llistxattr(b(path.join(tmp, "nope")))).toThrow(/ENOENT.*nope/);
  });

  it("createFiles creates files in one job off the thread, never through a symlink, errno per file", async () => {
    const dir = path.join(tmp, "create-files");
    await mkdir(dir);
    const outside = path.join(tmp, "create-files-outside");
    await symlink(outside, path.join(dir, "trap"));
    await writeFile(path.join(dir, "exists"), "keep");
    const names = ["a", "trap", "exists", "missing/c", "b"];
    const results = await new Promise<Int32Array>((resolve) =>
      native.createFiles(
        names.map((n) => Buffer.from(path.join(dir, n))),
        [0o640, 0o600, 0o600, 0o600, 0o600],
        resolve,
      ),
    );
    const [a, trap, exists, missing, last] = [...results];
    expect({ trap, exists, missing }).toEqual({
      trap: -os.constants.errno.EEXIST,
      exists: -os.constants.errno.EEXIST,
      missing: -os.constants.errno.ENOENT,
    });
    expect(existsSync(outside)).toBe(false);
    expect(await readFile(path.join(dir, "exists"), "utf8")).toBe("keep");
    for (const fd of [a!, last!]) {
      expect(fd).toBeGreaterThanOrEqual(0);
      writeSync(fd, "written");
      closeSync(fd);
    }
    expect(await readFile(path.join(dir, "a"), "utf8")).toBe("written");
    expect(lstatSync(path.join(dir, "a")).mode & 0o777).toBe(0o640);
    expect(() => native.createFiles([Buffer.from("a\0b")], [0o600], () => {})).toThrow(/NUL/);
    expect(() => native.createFiles([Buffer.from("x")], [], () => {})).toThrow(/one number per path/);
  });

  it("createFiles also makes directories and symlinks, in order, so a file can go into a directory made before it", async () => {
    const dir = path.join(tmp, "create-entries");
    await mkdir(dir);
    const { S_IFDIR, S_IFLNK, S_IFREG } = fsConstants;
    const entries: [string, number, string?][] = [
      ["d", S_IFDIR | 0o700],
      ["d/e", S_IFDIR | 0o750],
      ["d/e/f", S_IFREG | 0o600],
      ["d/l", S_IFLNK | 0o777, "../../elsewhere"],
      ["d", S_IFDIR | 0o700],
      ["d/l", S_IFLNK | 0o777, "again"],
      ["gone/x", S_IFLNK | 0o777, "t"],
    ];
    const results = await new Promise<Int32Array>((resolve) =>
      native.createFiles(
        entries.map(([n]) => Buffer.from(path.join(dir, n))),
        entries.map(([, m]) => m),
        resolve,
        entries.map(([, , t]) => (t === undefined ? undefined : Buffer.from(t))),
      ),
    );
    const [d, e, f, l, again, lAgain, gone] = [...results];
    expect({ d, e, l, again, lAgain, gone }).toEqual({
      d: 0,
      e: 0,
      l: 0,
      again: -os.constants.errno.EEXIST,
      lAgain: -os.constants.errno.EEXIST,
      gone: -os.constants.errno.ENOENT,
    });
    expect(f).toBeGreaterThanOrEqual(0);
    closeSync(f!);
    expect(lstatSync(path.join(dir, "d/e")).isDirectory()).toBe(true);
    expect(lstatSync(path.join(dir, "d/e")).mode & 0o777).toBe(0o750 & ~process.umask());
    expect(lstatSync(path.join(dir, "d/e/f")).isFile()).toBe(true);
    expect(readlinkSync(path.join(dir, "d/l"))).toBe("../../elsewhere");
    expect(() => native.createFiles([Buffer.from(path.join(dir, "s"))], [S_IFLNK | 0o777], () => {})).toThrow(
      /needs its target/,
    );
    expect(() =>
      native.createFiles([Buffer.from(path.join(dir, "s"))], [fsConstants.S_IFIFO | 0o600], () => {}),
    ).toThrow(/a file, a directory or a symlink/);
    expect(() =>
      native.createFiles([Buffer.from(path.join(dir, "s"))], [S_IFLNK | 0o777], () => {}, [
        Buffer.from("a\0b"),
      ]),
    ).toThrow(/NUL/);
  });

  it("syncfsAsync flushes a directory's filesystem off the thread and answers the errno", async () => {
    const run = (p: string) => new Promise<number>((resolve) => native.syncfsAsync(p, resolve));
    await writeFile(path.join(tmp, "dirty"), "to disk");
    expect(await run(tmp)).toBe(0);
    expect(await run(path.join(tmp, "no-such-dir"))).toBe(os.constants.errno.ENOENT);
    expect(await run(path.join(tmp, "dirty"))).toBe(os.constants.errno.ENOTDIR);
    expect(() => native.syncfsAsync(tmp, undefined as never)).toThrow(/cb must be a function/);
  });

  it("lowers the I/O priority to idle", () => {
    expect(setIdlePriority()).toBe(true);
    const out = execFileSync("ionice", ["-p", String(process.pid)], { encoding: "utf8" });
    expect(out).toContain("idle");
  });
});

describe("xattrs", () => {
  it.skipIf(!isRoot)(
    "round-trip user.*, security.capability and POSIX ACLs through readNode/applyMetadata (needs root for security.* and chown)",
    async () => {
      const from = joinName(src, b("capfile"));
      await writeFile(from, "#!/bin/sh\n");
      native.lsetxattr(from, "user.comment", b("hello"));
      native.lsetxattr(from, "user.binary", Buffer.from([0, 1, 2, 255]));
      native.lsetxattr(from, "security.capability", capNetBindService());
      execFileSync("chown", ["12345:54321", from.toString()]);
      // chown dropped the capability; set it again as an installer would.
      native.lsetxattr(from, "security.capability", capNetBindService());
      if (hasSetfacl) execFileSync("setfacl", ["-m", "u:1000:rwx,g:2000:r,m::rwx", from.toString()]);
      execFileSync("chmod", ["4755", from.toString()]);

      const node = await nodeAt(from);
      const names = node.xattrs!.map((x) => x.name);
      expect(names).toEqual([...names].sort());
      expect(names).toContain("security.capability");
      expect(names).toContain("user.comment");
      if (hasSetfacl) expect(names).toContain("system.posix_acl_access");
      expect(node.mode).toBe(0o4755);
      expect(node.uid).toBe(12345);

      const to = joinName(dst, b("capfile"));
      await restoreLeaf(from, to, node);
      const back = await nodeAt(to);
      expect(back.xattrs).toEqual(node.xattrs);
      expect(back.mode).toBe(0o4755); // setuid survived the chown
      expect([back.uid, back.gid]).toEqual([12345, 54321]);
      expect(native.lgetxattr(to, "security.capability")).toEqual(capNetBindService());
      if (hasSetfacl) expect(getfacl(to.toString())).toBe(getfacl(from.toString()));
    },
  );

  it.skipIf(!hasSetfacl)("round-trips a directory's default ACL (setfacl missing)", async () => {
    const from = joinName(src, b("acldir"));
    await mkdir(from);
    execFileSync("setfacl", ["-m", "u:1000:rwx", "-d", "-m", "u:1000:rx,g::r", from.toString()]);
    const node = await nodeAt(from);
    expect(node.xattrs!.map((x) => x.name)).toEqual(["system.posix_acl_access", "system.posix_acl_default"]);

    const to = joinName(dst, b("acldir"));
    await makeDir(to);
    await applyMetadata(to, node);
    expect(getfacl(to.toString())).toBe(getfacl(from.toString()));
  });

  it.skipIf(!hasSetfacl)("removes an ACL inherited on restore that the node does not have", async () => {
    const parent = joinName(dst, b("inheriting"));
    await mkdir(parent);
    execFileSync("setfacl", ["-d", "-m", "u:1000:rwx", parent.toString()]);
    const to = joinName(parent, b("child"));
    const fd = await createFile(to);
    await finishFile(fd, 0);
    expect(native.llistxattr(to)).toContain("system.posix_acl_access");
    await applyMetadata(to, {
      name: b("child"),
      type: "file",
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
      size: 0,
    });
    expect(native.llistxattr(to)).not.toContain("system.posix_acl_access");
    expect(lstatSync(to).mode & 0o7777).toBe(0o644);
  });
});

describe("special files", () => {
  it("creates a fifo", async () => {
    const to = joinName(dst, b("fifo"));
    await createSpecial(to, { type: "fifo" });
    await applyMetadata(to, {
      name: b("fifo"),
      type: "fifo",
      mode: 0o640,
      uid: 0,
      gid: 0,
      mtimeNs: 5n,
      size: 0,
    });
    const node = await nodeAt(to);
    expect(node.type).toBe("fifo");
    expect(node.mode).toBe(0o640);
    expect(node.mtimeNs).toBe(5n);
  });

  it.skipIf(!isRoot)("creates a char device like /dev/null (mknod c 1 3 needs root)", async () => {
    const from = b("/dev/null");
    const node = await readNode(from, b("null"), await lstat(from, { bigint: true }));
    expect(node.type).toBe("chardev");
    expect(node.rdev).toBe((1 << 8) | 3);
    const to = joinName(dst, b("null"));
    await createSpecial(to, node);
    await applyMetadata(to, node);
    const back = await nodeAt(to);
    expect(back.type).toBe("chardev");
    expect(back.rdev).toBe(node.rdev);
    expect(back.mode).toBe(node.mode);
  });

  it("creates a socket node", async () => {
    const to = joinName(dst, b("sock"));
    await createSpecial(to, { type: "socket" });
    expect((await lstat(to)).isSocket()).toBe(true);
  });
});

describe("nanosecond mtimes", () => {
  const t = 1_700_000_000_123_456_789n;
  it.each(["file", "dir", "symlink"] as const)("round-trip on a %s", async (type) => {
    const p = joinName(dst, b(`ns-${type}`));
    if (type === "file") await finishFile(await createFile(p), 0);
    else if (type === "dir") await makeDir(p);
    else await createSymlink(p, b("/nonexistent/target"));
    await applyMetadata(p, { name: b("x"), type, mode: 0o750, uid: 0, gid: 0, mtimeNs: t, size: 0 });
    const st = await lstat(p, { bigint: true });
    expect(st.mtimeNs).toBe(t);
    if (type === "symlink") {
      const node = await nodeAt(p);
      expect(node.target).toEqual(b("/nonexistent/target"));
    }
  });
  it("handles times before the epoch", async () => {
    const p = joinName(dst, b("old"));
    await finishFile(await createFile(p), 0);
    native.lutimens(p, -1_500_000_000n, -1_500_000_000n);
    expect((await lstat(p, { bigint: true })).mtimeNs).toBe(-1_500_000_000n);
  });
});

describe("byte names", () => {
  it("reads and recreates a non-UTF-8 name exactly", async () => {
    const name = Buffer.from([0x66, 0xff, 0xfe]);
    const from = joinName(src, name);
    await writeFile(from, "x");
    const entries = await readdir(src, { encoding: "buffer" });
    expect(entries.some((e) => e.equals(name))).toBe(true);
    const node = await readNode(from, name, await lstat(from, { bigint: true }));
    expect(node.name).toEqual(name);

    const to = joinName(dst, name);
    await restoreLeaf(from, to, node);
    const out = await readdir(dst, { encoding: "buffer" });
    expect(out.some((e) => e.equals(name))).toBe(true);
  });

  it("keeps raw symlink target bytes", async () => {
    const target = Buffer.from([0x2e, 0x2e, 0x2f, 0xc3, 0x28, 0x0a]);
    const p = joinName(src, b("rawlink"));
    await symlink(target, p);
    expect((await nodeAt(p)).target).toEqual(target);
  });
});

describe("sparse files", () => {
  const MiB = 1024 * 1024;
  it("reports data extents and restores holes sparsely", async () => {
    const from = joinName(src, b("sparse"));
    const fd = openSync(from, "w");
    writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, MiB);
    writeSync(fd, Buffer.alloc(8192, 2), 0, 8192, 5 * MiB);
    ftruncateSync(fd, 16 * MiB);
    closeSync(fd);

    const rfd = openSync(from, "r");
    const ranges = dataRanges(rfd, 16 * MiB);
    closeSync(rfd);
    const covered = (off: number) => ranges.some(([o, l]) => off >= o && off < o + l);
    expect(covered(MiB)).toBe(true);
    expect(covered(5 * MiB + 8191)).toBe(true);
    expect(covered(0)).toBe(false);
    expect(covered(15 * MiB)).toBe(false);
    expect(ranges.reduce((n, [, l]) => n + l, 0)).toBeLessThan(MiB);

    const to = joinName(dst, b("sparse"));
    const wfd = await createFile(to);
    const data = await readFile(from);
    for (const [o, l] of ranges) await writeAt(wfd, data.subarray(o, o + l), o);
    await finishFile(wfd, 16 * MiB);
    const st = await lstat(to);
    expect(st.size).toBe(16 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);
    expect((await readFile(to)).equals(data)).toBe(true);
  });

  it("returns no ranges for an empty file and one range for a dense one", async () => {
    const p = joinName(src, b("dense"));
    await writeFile(p, Buffer.alloc(10000, 7));
    const fd = openSync(p, "r");
    expect(dataRanges(fd, 0)).toEqual([]);
    expect(dataRanges(fd, 10000)).toEqual([[0, 10000]]);
    closeSync(fd);
  });
});

describe("hard links", () => {
  it("records link identity only when nlink > 1, and recreates the link", async () => {
    const a = joinName(src, b("hl-a"));
    await writeFile(a, "shared");
    expect((await nodeAt(a)).link).toBeUndefined();
    execFileSync("ln", [a.toString(), joinName(src, b("hl-b")).toString()]);
    const node = await nodeAt(a);
    expect(node.link?.nlink).toBe(2);

    const ta = joinName(dst, b("hl-a"));
    const tb = joinName(dst, b("hl-b"));
    await restoreLeaf(a, ta, node);
    await createHardlink(tb, ta);
    const [sa, sb] = [await lstat(ta), await lstat(tb)];
    expect(sa.ino).toBe(sb.ino);
    expect(sa.nlink).toBe(2);
  });
});

describe("hostile snapshots", () => {
  it.each([
    ["empty", Buffer.alloc(0)],
    ["dot", b(".")],
    ["dotdot", b("..")],
    ["slash", b("a/b")],
    ["absolute", b("/etc")],
    ["NUL", Buffer.from([0x61, 0, 0x62])],
    ["256 bytes", Buffer.alloc(256, 0x61)],
  ])("validateName rejects %s", (_what, name) => {
    let err: unknown;
    try {
      validateName(name);
    } catch (e) {
      err = e;
    }
    expect(isStrataError(err, "UNSAFE_PATH")).toBe(true);
    expect((err as Error).message).toMatch(/refusing file name/);
  });

  it("validateName accepts odd but legal names", () => {
    for (const n of [b("..."), b(".hidden"), Buffer.alloc(255, 0x61), Buffer.from([0xff]), b("new\nline")]) {
      expect(() => validateName(n)).not.toThrow();
    }
  });

  it("createFile refuses to follow a pre-placed symlink", async () => {
    const outside = path.join(tmp, "outside-target");
    const trap = joinName(dst, b("trap"));
    await symlink(outside, trap);
    await expect(createFile(trap)).rejects.toMatchObject({ code: "UNSAFE_PATH" });
    expect(existsSync(outside)).toBe(false);
    // The dangling-symlink case above; an existing target must not be truncated either.
    await writeFile(outside, "keep");
    await expect(createFile(trap)).rejects.toMatchObject({ code: "UNSAFE_PATH" });
    expect(await readFile(outside, "utf8")).toBe("keep");
  });

  it("makeDir refuses a symlink to a directory and accepts a real one", async () => {
    const realDir = path.join(tmp, "elsewhere");
    await mkdir(realDir);
    const p = joinName(dst, b("dirtrap"));
    await symlink(realDir, p);
    await expect(makeDir(p)).rejects.toMatchObject({ code: "UNSAFE_PATH" });
    const ok = joinName(dst, b("realdir"));
    await makeDir(ok);
    await makeDir(ok);
  });

  it("createFile on an existing regular file is ALREADY_EXISTS", async () => {
    const p = joinName(dst, b("exists"));
    await writeFile(p, "x");
    await expect(createFile(p)).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
  });
});
