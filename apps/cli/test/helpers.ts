import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const BIN = path.join(ROOT, "bin/strata.js");
export const isRoot = process.getuid?.() === 0;

export interface Env {
  repo: string;
  cache: string;
  password: string;
  extra?: Record<string, string>;
}

const tmps: string[] = [];
export function tmp(prefix = "strata-it-"): string {
  const d = mkdtempSync(path.join(tmpdir(), prefix));
  tmps.push(d);
  return d;
}
export function cleanup(): void {
  for (const d of tmps.splice(0)) rmSync(d, { recursive: true, force: true });
}

export function newEnv(): Env {
  const base = tmp();
  return { repo: path.join(base, "repo"), cache: path.join(base, "cache"), password: "correct horse" };
}

function envOf(e: Env): NodeJS.ProcessEnv {
  return {
    ...process.env,
    STRATA_REPO: e.repo,
    STRATA_PASSWORD: e.password,
    STRATA_CACHE_DIR: e.cache,
    // Tests open repositories many times: a cheaper (still memory-hard) KDF.
    STRATA_SCRYPT_LOG_N: "12",
    ...e.extra,
  };
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export function strata(e: Env, ...args: string[]): Run {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: envOf(e),
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Run and require exit 0, returning stdout (parsed when --json is given). */
// biome-ignore lint/suspicious/noExplicitAny: parsed --json output is checked by each test
export function ok(e: Env, ...args: string[]): any {
  const r = strata(e, ...args);
  if (r.code !== 0)
    throw new Error(`strata ${args.join(" ")} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}

export function spawnStrata(e: Env, ...args: string[]): ChildProcess {
  return spawn(process.execPath, [BIN, ...args], { env: envOf(e), stdio: ["ignore", "pipe", "pipe"] });
}

export function sh(cmd: string, opts: { cwd?: string } = {}): string {
  const r = spawnSync("bash", ["-c", cmd], { encoding: "utf8", cwd: opts.cwd, maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${cmd} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

export function hasCommand(c: string): boolean {
  return spawnSync("bash", ["-c", `command -v ${c}`]).status === 0;
}

export function duBytes(dir: string): number {
  return Number(sh(`du -sb ${JSON.stringify(dir)} | cut -f1`).trim());
}

/**
 * The CLI as a child process, asynchronously (for tests whose server runs
 * in this process), with HOME at `home` and no inherited credentials file.
 */
export function strataAsync(home: string, env: Record<string, string>, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, HOME: home, XDG_CONFIG_HOME: "", STRATA_CREDENTIALS: "", ...env },
    });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
