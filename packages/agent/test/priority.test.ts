import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../dist/priority.js");

/**
 * Run in a child process: lowering priority cannot be undone without
 * privileges, and the test runner's own process must not be slowed.
 */
function inChild(script: string): unknown {
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe("lowerPriority", () => {
  it("puts every thread, the thread pool's too, at nice 19 in the idle I/O class", () => {
    const out = inChild(`
      import { lowerPriority, readPriorities } from ${JSON.stringify(pathToFileURL(DIST).href)};
      import { readFileSync } from "node:fs";
      import { pbkdf2 } from "node:crypto";
      import { promisify } from "node:util";
      // Start libuv's pool threads first: they must be reached too.
      await Promise.all([1, 2, 3, 4].map(() => promisify(pbkdf2)("pw", "salt", 1000, 32, "sha256")));
      const before = readPriorities();
      const result = lowerPriority();
      const after = readPriorities();
      const stat = readFileSync("/proc/self/stat", "latin1");
      const processNice = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
      console.log(JSON.stringify({ before, result, after, processNice }));
    `) as {
      before: { nice: number; ioClass: string }[];
      result: { threads: number; errors: string[] };
      after: { tid: number; nice: number; ioClass: string }[];
      processNice: number;
    };
    // The test would prove nothing if the child started idle already.
    expect(out.before.some((t) => t.nice !== 19 || t.ioClass !== "idle")).toBe(true);
    expect(out.result.errors).toEqual([]);
    // main thread + 4 pool threads at least
    expect(out.after.length).toBeGreaterThanOrEqual(5);
    expect(out.after.every((t) => t.nice === 19 && t.ioClass === "idle")).toBe(true);
    expect(out.result.threads).toBe(out.after.length);
    expect(out.processNice).toBe(19);
  });
});
