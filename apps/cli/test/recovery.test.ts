/**
 * The recovery tool (docs/design/restore.md, "Recovery tool"): `strata
 * recovery build` writes one file; the file runs with a clean environment
 * from an empty directory — no node on PATH, no node_modules to find — and
 * leaves nothing behind in its temporary directory.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Run, strataAsync } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-recovery-"));
const tool = path.join(dir, "strata-recovery.run");
const empty = path.join(dir, "empty");
const toolTmp = path.join(dir, "tool-tmp");
mkdirSync(empty);
mkdirSync(toolTmp);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The built file, as on a bare live system: env -i PATH=/usr/bin:/bin, cwd an empty directory. */
function runTool(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn("sh", [tool, ...args], {
      cwd: empty,
      env: { PATH: "/usr/bin:/bin", TMPDIR: toolTmp, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe("strata recovery build", () => {
  // biome-ignore lint/suspicious/noExplicitAny: parsed --json output
  let built: any;
  beforeAll(async () => {
    const r = await strataAsync(path.join(dir, "home"), {}, "recovery", "build", "--out", tool, "--json");
    expect(r.code, r.stderr).toBe(0);
    built = JSON.parse(r.stdout);
  }, 120_000);

  it("writes one executable file: a sh header, then node, the bundle and the addons, gzip'd", () => {
    expect(built.out).toBe(tool);
    expect(statSync(tool).mode & 0o111).toBe(0o111);
    expect(readFileSync(tool).subarray(0, 10).toString()).toBe("#!/bin/sh\n");
    const names = built.contents.map((c: { path: string }) => c.path);
    expect(names).toEqual(
      expect.arrayContaining([
        "node",
        "dist/recovery.mjs",
        "native/build/Release/strata_fs.node",
        "node_modules/zstd-napi/build/Release/binding.node",
        "node_modules/undici/index.js",
      ]),
    );
    // The catalog's SQLite addon is not needed to recover a machine.
    expect(names.some((n: string) => n.includes("better-sqlite3"))).toBe(false);
    // The node binary dominates; the rest is small, and compression works.
    const total = built.contents.reduce((s: number, c: { bytes: number }) => s + c.bytes, 0);
    expect(built.bytes).toBeLessThan(total * 0.6);
    expect(built.bytes).toBe(statSync(tool).size);
  });

  it("runs --help and version with no node, no npm, no repository around, and cleans up", async () => {
    const help = await runTool(["--help"]);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toContain("restore [options]");
    expect(help.stdout).toContain("list-cvds [options]");
    const restoreHelp = await runTool(["restore", "--help"]);
    expect(restoreHelp.code, restoreHelp.stderr).toBe(0);
    for (const flag of [
      "--server",
      "--token",
      "--user",
      "--password-file",
      "--cvd",
      "--snapshot",
      "--target",
    ])
      expect(restoreHelp.stdout).toContain(flag);
    const v = await runTool(["version", "--json"]);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout)).toEqual({
      version: built.version,
      node: built.nodeVersion,
      platform: "linux",
      arch: process.arch,
    });
    const human = await runTool(["version"]);
    expect(human.stdout).toMatch(/^strata-recovery\.run \d+\.\d+\.\d+ \(node v\d+/);
    expect(readdirSync(toolTmp)).toEqual([]);
    expect(readdirSync(empty)).toEqual([]);
  });

  it("passes the program's exit status on, and errors say what to do", async () => {
    const bad = await runTool(["no-such-command"]);
    expect(bad.code).toBe(2);
    // Not a terminal: a missing answer is an error naming the flag.
    const r = await runTool(["list-cvds"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no server given");
    expect(r.stderr).toContain("--server");
    const root = await runTool([
      "restore",
      "--server",
      "https://127.0.0.1:1",
      "--fingerprint",
      "00".repeat(32),
      "--target",
      "/",
    ]);
    expect(root.code).toBe(1);
    expect(root.stderr).toContain("the live system's own root");
    expect(readdirSync(toolTmp)).toEqual([]);
  });
});
