/**
 * Issue 3's faults, over real HTTPS through a fault-injecting TCP proxy:
 * kill -9 the server mid-upload, then the agent mid-upload, then cut the
 * connection. Each time the next `strata agent upload` resumes the same
 * session: acknowledged chunks are not sent again (total bytes through the
 * proxy stay below the data plus one stream per fault, where restarting
 * from scratch would send ~2.5x the data), the upload completes, the
 * snapshot restores byte-exact, and `strata check --read-data` passes on
 * the server's data.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { rsyncItemize, startTcpProxy, type TcpProxy } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, hasCommand, type Run, strataAsync } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-faults-"));
const home = path.join(dir, "home");
const data = path.join(dir, "server");
const ep = path.join(dir, "endpoint");
const state = path.join(dir, "state");
const FILES = 12;
const FILE_BYTES = 10 * 1024 * 1024;
const TOTAL = FILES * FILE_BYTES;
const STREAM = 16 * 1024 * 1024;

function strata(env: Record<string, string>, ...args: string[]): Promise<Run> {
  return strataAsync(home, { STRATA_SCRYPT_LOG_N: "12", ...env }, ...args);
}
// biome-ignore lint/suspicious/noExplicitAny: parsed --json output is checked by each assertion
async function ok(...args: string[]): Promise<any> {
  const r = await strata({}, ...args);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(typeof a === "object" && a ? a.port : 0));
    });
  });
}

/** Wait for a condition, polling; fails with `what` at the deadline. */
async function until(what: string, cond: () => boolean, ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface ServerProc {
  proc: ChildProcess;
  out: string;
}
async function startServerProc(port: number): Promise<ServerProc> {
  const proc = spawn(
    process.execPath,
    [BIN, "server", "--data", data, "--listen", `127.0.0.1:${port}`, "--log-level", "warn"],
    {
      env: { ...process.env, HOME: home, STRATA_SCRYPT_LOG_N: "12" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const s: ServerProc = { proc, out: "" };
  proc.stdout!.on("data", (d) => (s.out += d));
  proc.stderr!.on("data", () => {});
  await until("the server to listen", () => s.out.includes("listening on"));
  return s;
}
const exited = (p: ChildProcess) =>
  new Promise<number | null>((r) =>
    p.exitCode !== null || p.signalCode ? r(p.exitCode) : p.once("exit", (c) => r(c)),
  );

describe.skipIf(!hasCommand("rsync"))(
  "uploads survive a killed server, a killed agent and a cut connection",
  () => {
    let server: ServerProc;
    let port = 0;
    let proxy: TcpProxy;

    beforeAll(async () => {
      mkdirSync(home, { recursive: true });
      for (const d of ["etc", "home/alice/video", "usr/share/data"])
        mkdirSync(path.join(ep, d), { recursive: true });
      writeFileSync(path.join(ep, "etc/hostname"), "laptop-7\n");
      writeFileSync(path.join(ep, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
      for (let i = 0; i < FILES; i++)
        writeFileSync(
          path.join(ep, i % 2 ? "home/alice/video" : "usr/share/data", `f${i}`),
          randomBytes(FILE_BYTES),
        );
      port = await freePort();
      server = await startServerProc(port);
      await until("the one-time password", () => server.out.includes("shown only now"));
      const pw = /one-time password\n\n {4}(\S+)/.exec(server.out)?.[1];
      expect(pw).toBeTruthy();
      const login = await strata(
        { STRATA_PASSWORD: pw! },
        "login",
        "--server",
        `https://127.0.0.1:${port}`,
        "--user",
        "admin",
      );
      expect(login.code, login.stderr).toBe(0);
      const np = await strata(
        { STRATA_CURRENT_PASSWORD: pw!, STRATA_PASSWORD: "a long new secret phrase" },
        "users",
        "passwd",
      );
      expect(np.code, np.stderr).toBe(0);
      proxy = await startTcpProxy(port);
      const t = await ok("tokens", "create", "--auto-approve", "--json");
      const e = await ok(
        "agent",
        "enroll",
        "--server",
        `https://127.0.0.1:${proxy.port}`,
        "--token",
        t.token,
        "--fingerprint",
        t.serverFingerprint,
        "--root",
        ep,
        "--state",
        state,
        "--json",
      );
      expect(e.state).toBe("active");
    }, 300_000);
    afterAll(async () => {
      await proxy?.close();
      server?.proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    });

    it("resumes after each fault without resending what was acknowledged, then restores and checks clean", async () => {
      const agentUpload = () =>
        spawn(process.execPath, [BIN, "agent", "upload", "--state", state, "--json"], {
          env: { ...process.env, HOME: home },
          stdio: ["ignore", "pipe", "pipe"],
        });
      // 1. kill -9 the server once 40 MB went through.
      let agent = agentUpload();
      await until("40 MB uploaded", () => proxy.upstreamBytes > 40 * 1024 * 1024);
      server.proc.kill("SIGKILL");
      expect(await exited(agent)).not.toBe(0);
      await exited(server.proc);
      server = await startServerProc(port);
      // 2. kill -9 the agent once 30 MB more went through.
      let mark = proxy.upstreamBytes;
      agent = agentUpload();
      await until("30 MB more uploaded", () => proxy.upstreamBytes > mark + 30 * 1024 * 1024);
      agent.kill("SIGKILL");
      await exited(agent);
      // 3. cut the connection after 25 MB more.
      mark = proxy.upstreamBytes;
      proxy.cutAfter(25 * 1024 * 1024);
      const cut = await strata({}, "agent", "upload", "--state", state, "--json");
      expect(cut.code, cut.stdout + cut.stderr).not.toBe(0);
      expect(proxy.cuts).toBeGreaterThan(0);
      // 4. the upload completes.
      const done = await ok("agent", "upload", "--state", state, "--json");
      expect(done.resumed).toBe(true);
      expect(done.errors).toEqual([]);
      // Restarting from scratch each time would have sent ~2.5x the data; a resumed
      // session loses at most the stream in flight at each fault.
      expect(proxy.upstreamBytes).toBeLessThan(TOTAL + 3 * (STREAM + 2 * 1024 * 1024));
      const tx = await ok("cvd", "transactions", done.cvdId, "--json");
      expect(tx[0]).toMatchObject({ state: "committed", snapshot: done.snapshot });
      expect(tx[0].retries).toBeGreaterThanOrEqual(2);
      const pwFile = path.join(data, "repository.password");
      const target = path.join(dir, "restored");
      await ok(
        "restore",
        "--repo",
        data,
        "--password-file",
        pwFile,
        `${done.snapshot}:/home`,
        "--target",
        target,
      );
      expect(rsyncItemize(path.join(ep, "home"), target)).toBe("");
      const chk = await ok("check", "--repo", data, "--password-file", pwFile, "--read-data", "--json");
      expect(chk.ok).toBe(true);
    }, 900_000);
  },
);
