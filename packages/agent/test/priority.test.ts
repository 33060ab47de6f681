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

describe.skipIf(process.getuid?.() !== 0)(
  "raisePriority (root: lowering a nice value needs CAP_SYS_NICE)",
  () => {
    it("raises every thread out of idle (SCHED_IDLE too), new threads inherit it, restore() goes back to idle", () => {
      const out = inChild(`
      import { lowerPriority, raisePriority, readPriorities } from ${JSON.stringify(pathToFileURL(DIST).href)};
      import { native } from "@strata/fs";
      import { Worker } from "node:worker_threads";
      import { pbkdf2 } from "node:crypto";
      import { promisify } from "node:util";
      await Promise.all([1, 2, 3, 4].map(() => promisify(pbkdf2)("pw", "salt", 1000, 32, "sha256")));
      // As under systemd's CPUSchedulingPolicy=idle, then as \`strata agent run\` lowers itself.
      native.schedSetAll(5);
      lowerPriority();
      const idle = readPriorities();
      const raised = raisePriority();
      const during = readPriorities();
      // A thread started while raised (the restore's worker) inherits normal priority.
      const w = new Worker("setInterval(() => {}, 1000)", { eval: true });
      await new Promise((r) => w.once("online", r));
      await new Promise((r) => setTimeout(r, 50));
      const withWorker = readPriorities();
      const back = raised.restore();
      const after = readPriorities();
      await w.terminate();
      console.log(JSON.stringify({ idle, raised: { threads: raised.threads, errors: raised.errors }, during, withWorker, back, after }));
    `) as {
        idle: { nice: number; ioClass: string; schedIdle: boolean }[];
        raised: { threads: number; errors: string[] };
        during: { nice: number; ioClass: string; schedIdle: boolean }[];
        withWorker: { tid: number; nice: number; ioClass: string; schedIdle: boolean }[];
        back: { threads: number; errors: string[] };
        after: { nice: number; ioClass: string; schedIdle: boolean }[];
      };
      expect(out.idle.every((t) => t.nice === 19 && t.ioClass === "idle" && t.schedIdle)).toBe(true);
      expect(out.raised.errors).toEqual([]);
      expect(out.during.length).toBeGreaterThanOrEqual(5);
      expect(out.during.every((t) => t.nice === 0 && t.ioClass === "best-effort" && !t.schedIdle)).toBe(true);
      expect(out.raised.threads).toBe(out.during.length);
      expect(out.withWorker.length).toBeGreaterThan(out.during.length);
      expect(out.withWorker.every((t) => t.nice === 0 && t.ioClass === "best-effort" && !t.schedIdle)).toBe(
        true,
      );
      expect(out.back.errors).toEqual([]);
      expect(out.after.every((t) => t.nice === 19 && t.ioClass === "idle" && t.schedIdle)).toBe(true);
    });
  },
);
