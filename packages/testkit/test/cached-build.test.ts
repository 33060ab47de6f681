import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { cachedBuild, cleanupTempDirs, makeTempDir } from "../src/index.js";

const execFileAsync = promisify(execFile);
const child = fileURLToPath(new URL("./fixtures/cached-build-child.ts", import.meta.url));

afterAll(cleanupTempDirs);

const isComplete = (dir: string) => existsSync(path.join(dir, "done"));

describe("cachedBuild", () => {
  it("builds once when two processes ask at the same time", async () => {
    const dir = await makeTempDir("strata-cached-");
    const target = path.join(dir, "thing");
    const counter = path.join(dir, "builds");
    const run = () => execFileAsync(process.execPath, ["--import", "tsx", child, target, counter]);
    const [a, b] = await Promise.all([run(), run()]);
    expect(JSON.parse(a.stdout)).toEqual({ path: target });
    expect(JSON.parse(b.stdout)).toEqual({ path: target });
    expect((await readFile(counter, "utf8")).trim().split("\n")).toHaveLength(1);
    // No lock or temp dir left behind.
    expect((await readdir(dir)).sort()).toEqual(["builds", "thing"]);
  });

  it("takes over a stale lock and clears a killed build's leftovers", async () => {
    const dir = await makeTempDir("strata-cached-");
    const target = path.join(dir, "thing");
    await writeFile(`${target}.lock`, "2147483646"); // no such pid
    await mkdir(path.join(dir, ".thing.tmp-2147483646"));
    await writeFile(path.join(dir, ".thing.tmp-2147483646", "half"), "");
    const r = await cachedBuild({
      target,
      isComplete,
      pollMs: 10,
      build: async (tmp) => {
        await mkdir(tmp);
        await writeFile(path.join(tmp, "done"), "");
      },
    });
    expect(r).toEqual({ path: target });
    expect(await readdir(dir)).toEqual(["thing"]);
  });

  it("remembers a failure instead of rebuilding, and never trusts a half result", async () => {
    const dir = await makeTempDir("strata-cached-");
    const target = path.join(dir, "thing");
    let builds = 0;
    const spec = {
      target,
      isComplete,
      build: async (tmp: string) => {
        builds++;
        await mkdir(tmp);
        throw new Error("mirror unreachable");
      },
    };
    const r1 = await cachedBuild(spec);
    expect(r1.path).toBeNull();
    expect(r1.reason).toMatch(/mirror unreachable/);
    const r2 = await cachedBuild(spec);
    expect(r2.reason).toMatch(/mirror unreachable/);
    expect(builds).toBe(1);
    expect(existsSync(target)).toBe(false);
    expect((await readdir(dir)).filter((f) => f.includes(".tmp-"))).toEqual([]);

    const r3 = await cachedBuild({
      ...spec,
      failureTtlMs: 0,
      build: async (tmp: string) => void (await mkdir(tmp)),
    });
    expect(r3.reason).toMatch(/incomplete/);
    expect(existsSync(target)).toBe(false);
  });
});
