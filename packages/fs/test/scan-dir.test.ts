import { execFileSync } from "node:child_process";
import {
  closeSync,
  ftruncateSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { native, scanDir, tuneMemory } from "../src/index.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "strata-scandir-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("scanDir: a directory's entries with their lstat in one call", () => {
  it("gives exactly what readdir and lstat give, for every kind of entry", () => {
    const d = path.join(dir, "kinds");
    mkdirSync(path.join(d, "sub"), { recursive: true });
    writeFileSync(path.join(d, "file"), "hello");
    linkSync(path.join(d, "file"), path.join(d, "hard")); // nlink 2
    symlinkSync("does-not-exist", path.join(d, "dangling"));
    execFileSync("mkfifo", [path.join(d, "fifo")]);
    // A sparse file beyond 4 GiB and an mtime before 1970 (negative nanoseconds).
    const fd = openSync(path.join(d, "huge"), "w");
    ftruncateSync(fd, 5 * 2 ** 30);
    closeSync(fd);
    utimesSync(path.join(d, "huge"), new Date(-86_400_000), new Date(-86_400_000 + 1234));
    const weird = Buffer.from([0x6e, 0xff, 0x0a, 0x6d]); // non-UTF-8, with a newline
    writeFileSync(Buffer.concat([Buffer.from(`${d}/`), weird]), "w");

    const got = scanDir(Buffer.from(d));
    const names = got.map((e) => e.name.toString("latin1")).sort();
    expect(names).toEqual(
      ["dangling", "fifo", "file", "hard", "huge", "sub", weird.toString("latin1")].sort(),
    );
    for (const e of got) {
      expect(e.error).toBeNull();
      const want = lstatSync(Buffer.concat([Buffer.from(`${d}/`), e.name]), { bigint: true });
      const st = e.st!;
      for (const f of [
        "dev",
        "ino",
        "mode",
        "nlink",
        "uid",
        "gid",
        "rdev",
        "size",
        "mtimeNs",
        "ctimeNs",
      ] as const)
        expect([e.name.toString("latin1"), f, st[f]]).toEqual([e.name.toString("latin1"), f, want[f]]);
      expect(st.isDirectory()).toBe(want.isDirectory());
      expect(st.isFile()).toBe(want.isFile());
      expect(st.isSymbolicLink()).toBe(want.isSymbolicLink());
    }
    const huge = got.find((e) => e.name.toString() === "huge")!.st!;
    expect(huge.size).toBe(5n * 2n ** 30n);
    expect(huge.mtimeNs).toBe(-86_400_000_000_000n + 1_234_000_000n);
  });

  it("lists an empty directory as nothing and a large one completely", () => {
    const empty = path.join(dir, "empty");
    mkdirSync(empty);
    expect(scanDir(Buffer.from(empty))).toEqual([]);
    const many = path.join(dir, "many");
    mkdirSync(many);
    for (let i = 0; i < 3000; i++) writeFileSync(path.join(many, `f${i}-${"x".repeat(i % 200)}`), "");
    const got = scanDir(Buffer.from(many));
    expect(got).toHaveLength(3000);
    expect(new Set(got.map((e) => e.name.toString())).size).toBe(3000);
  });

  it("throws a Node-style error naming the directory it cannot read", () => {
    const missing = path.join(dir, "missing");
    expect(() => scanDir(Buffer.from(missing))).toThrow(expect.objectContaining({ code: "ENOENT" }));
    expect(() => scanDir(Buffer.from(missing))).toThrow(/missing/);
    const file = path.join(dir, "plain");
    writeFileSync(file, "");
    expect(() => scanDir(Buffer.from(file))).toThrow(expect.objectContaining({ code: "ENOTDIR" }));
  });
});

describe("tuneMemory: glibc allocator settings at start", () => {
  it("applies on glibc (Debian) and rejects values that are not numbers", () => {
    expect(tuneMemory({})).toBe(true);
    expect(tuneMemory({ MALLOC_ARENA_MAX: "4" })).toBe(true); // the environment's value wins: nothing to set
    expect(() => native.mallocTune("2" as unknown as number, 0, 0)).toThrow(/numbers/);
  });
});

describe("trimMemory: freed heap pages go back to the kernel", () => {
  it("releases the free pages in the middle of an arena that free() alone keeps", () => {
    // 64 KiB buffers come from the malloc heap (below the mmap threshold);
    // a small one kept after each leaves the freed ones as holes that glibc
    // does not return by itself.
    const addon = new URL("../native/build/Release/strata_fs.node", import.meta.url).pathname;
    const script = `
      const native = require(${JSON.stringify(addon)});
      const rss = () => Number(require("node:fs").readFileSync("/proc/self/statm", "utf8").split(" ")[1]) * 4096;
      let big = [], small = [];
      for (let i = 0; i < 3000; i++) { big.push(Buffer.allocUnsafeSlow(65536).fill(1)); small.push(Buffer.allocUnsafeSlow(4096).fill(2)); }
      big = null; gc(); gc();
      const before = rss();
      const released = native.mallocTrim();
      const after = rss();
      process.stdout.write(JSON.stringify({ released, freed: before - after, keep: small.length }));`;
    const out = execFileSync(process.execPath, ["--expose-gc", "-e", script], { encoding: "utf8" });
    const r = JSON.parse(out) as { released: boolean; freed: number; keep: number };
    expect(r.keep).toBe(3000);
    expect(r.released).toBe(true);
    expect(r.freed).toBeGreaterThan(100 * 1024 * 1024); // of the ~190 MB freed
  });
});
