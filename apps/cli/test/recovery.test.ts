/**
 * The recovery tool (docs/design/restore.md, "Recovery tool"): `strata
 * recovery build` writes one file; the file runs with a clean environment
 * from an empty directory — no node on PATH, no node_modules to find — and
 * leaves nothing behind in its temporary directory.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { pinnedFetch } from "@strata/agent";
import { StrataClient } from "@strata/protocol";
import { loadServerConfig, type RunningServer, startServer } from "@strata/server";
import { debianRoot, debianRootSkipReason, rsyncCopy, rsyncItemize } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRoot, type Run, strataAsync } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-recovery-"));
const tool = path.join(dir, "strata-recovery.run");
const empty = path.join(dir, "empty");
const toolTmp = path.join(dir, "tool-tmp");
mkdirSync(empty);
mkdirSync(toolTmp);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const debian = await debianRoot();
let built: {
  out: string;
  version: string;
  nodeVersion: string;
  bytes: number;
  contents: { path: string; bytes: number }[];
};

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

beforeAll(async () => {
  const r = await strataAsync(path.join(dir, "home"), {}, "recovery", "build", "--out", tool, "--json");
  expect(r.code, r.stderr).toBe(0);
  built = JSON.parse(r.stdout);
}, 120_000);

describe("strata recovery build", () => {
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

/** The CLI (admin side) with this file's HOME, so `strata login` credentials are its own. */
async function admin(env: Record<string, string>, ...args: string[]): Promise<string> {
  const r = await strataAsync(path.join(dir, "home"), { STRATA_PASSWORD: "", ...env }, ...args);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}
// biome-ignore lint/suspicious/noExplicitAny: parsed --json output
const json = async (...args: string[]): Promise<any> => JSON.parse(await admin({}, ...args, "--json"));

describe.skipIf(!debian || !isRoot)(
  `the tool against a server on loopback (${debianRootSkipReason() ?? (isRoot ? "" : "needs root")})`,
  () => {
    let server: RunningServer;
    const opPassword = path.join(dir, "operator.pw");
    const lost = { root: path.join(dir, "lost"), state: path.join(dir, "lost-state"), endpoint: "", cvd: "" };
    const op = () => ["--server", server.url, "--user", "operator", "--password-file", opPassword];

    beforeAll(async () => {
      server = await startServer(
        loadServerConfig({
          flags: { data: path.join(dir, "server"), listen: "127.0.0.1:0", logLevel: "warn" },
          env: {},
        }),
        { logStream: { write: () => true } },
      );
      await admin(
        { STRATA_PASSWORD: server.adminPassword! },
        "login",
        "--server",
        server.url,
        "--user",
        "admin",
      );
      await admin(
        { STRATA_CURRENT_PASSWORD: server.adminPassword!, STRATA_PASSWORD: "a long new secret phrase" },
        "users",
        "passwd",
      );
      writeFileSync(opPassword, "a helpdesk secret phrase\n");
      await admin(
        {},
        "users",
        "create",
        "operator",
        "--role",
        "Protection Manager",
        "--no-must-change",
        "--password-file",
        opPassword,
      );
      // The machine that will be lost: a Debian system that centralized into its CVD.
      rsyncCopy(debian!, lost.root);
      writeFileSync(path.join(lost.root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
      writeFileSync(path.join(lost.root, "etc/hostname"), "ws-lost\n");
      mkdirSync(path.join(lost.root, "home/alice"), { recursive: true });
      writeFileSync(path.join(lost.root, "home/alice/thesis.txt"), "chapter one\n".repeat(1000));
      // A bootable machine has GRUB; its SSH host keys are its own (never restored onto another).
      mkdirSync(path.join(lost.root, "boot/grub"), { recursive: true });
      writeFileSync(path.join(lost.root, "boot/grub/grub.cfg"), "set default=0\n");
      mkdirSync(path.join(lost.root, "etc/ssh"), { recursive: true });
      writeFileSync(path.join(lost.root, "etc/ssh/sshd_config"), "PermitRootLogin no\n");
      writeFileSync(path.join(lost.root, "etc/ssh/ssh_host_ed25519_key"), "the lost machine's key\n", {
        mode: 0o600,
      });
      const token = await json("tokens", "create", "--auto-approve");
      const e = await json(
        "agent",
        "enroll",
        "--server",
        server.url,
        "--token",
        token.token,
        "--fingerprint",
        token.serverFingerprint,
        "--root",
        lost.root,
        "--state",
        lost.state,
      );
      lost.endpoint = e.endpointId;
      const up = await json("agent", "upload", "--state", lost.state);
      expect(up.errors).toEqual([]);
      lost.cvd = up.cvdId;
    }, 900_000);
    afterAll(async () => {
      await server?.close();
    });

    it("list-cvds: the operator sees the CVD with its hostname, last snapshot and size", async () => {
      const r = await runTool(["list-cvds", ...op(), "--fingerprint", server.fingerprint, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const list = JSON.parse(r.stdout);
      expect(list).toHaveLength(1);
      expect(list[0]).toMatchObject({
        id: lost.cvd,
        hostname: "ws-lost",
        endpointId: lost.endpoint,
        endpointState: "active",
        snapshots: 1,
      });
      expect(list[0].latest.totalBytes).toBeGreaterThan(50_000_000);
      const human = await runTool(["list-cvds", ...op()]);
      expect(human.code, human.stderr).toBe(0);
      expect(human.stdout).toMatch(new RegExp(`${lost.cvd}\\s+ws-lost\\s+\\d{4}-`));
      // Not a terminal and no --fingerprint: trusted on first use, and said so.
      expect(human.stderr).toContain(`the server presents the certificate SHA256 ${server.fingerprint}`);
      expect(human.stderr).toContain("trusting it on first use");
    });

    it("on a terminal, asks for what no flag gives: server, the certificate's confirmation, user, password", async () => {
      // script(1) gives the tool a pseudo-terminal; each answer is typed once its question shows.
      const dialog: [string, string][] = [
        ["server (https://HOST:8640): ", server.url],
        ["is it the server's?", "y"],
        ["operator user name: ", "operator"],
        ["password of operator@", "a helpdesk secret phrase"],
      ];
      const r = await new Promise<Run>((resolve) => {
        const p = spawn("script", ["-qfec", `sh ${tool} list-cvds`, "/dev/null"], {
          cwd: empty,
          env: { PATH: "/usr/bin:/bin", TMPDIR: toolTmp, TERM: "dumb" },
          stdio: ["pipe", "pipe", "pipe"],
        });
        let out = "";
        let seen = 0;
        p.stdout.on("data", (d) => {
          out += d;
          const step = dialog[0];
          if (step && out.indexOf(step[0], seen) >= 0) {
            seen = out.indexOf(step[0], seen) + step[0].length;
            dialog.shift();
            p.stdin.write(`${step[1]}\r`);
          }
        });
        p.on("close", (code) => resolve({ code: code ?? -1, stdout: out, stderr: "" }));
      });
      expect(r.code, r.stdout).toBe(0);
      expect(dialog).toEqual([]);
      expect(r.stdout).toContain(`the server presents the certificate SHA256 ${server.fingerprint}`);
      expect(r.stdout).not.toContain("a helpdesk secret phrase"); // not echoed
      expect(r.stdout).toMatch(new RegExp(`${lost.cvd}\\s+ws-lost`));
    });

    it("refuses a wrong password and a certificate that is not the pinned one, saying what to do", async () => {
      const wrong = path.join(dir, "wrong.pw");
      writeFileSync(wrong, "not it\n");
      const r = await runTool([
        "list-cvds",
        "--server",
        server.url,
        "--user",
        "operator",
        "--password-file",
        wrong,
      ]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/password/i);
      const pin = await runTool(["list-cvds", ...op(), "--fingerprint", "AB".repeat(32)]);
      expect(pin.code).toBe(1);
      expect(pin.stderr).toContain("is not the pinned one");
    });

    it("restore: the built tool restores the CVD into an empty disk, leaves the agent's state there, and says what is left", async () => {
      const token = await json("tokens", "create");
      const target = path.join(dir, "new-disk");
      mkdirSync(path.join(target, "lost+found"), { recursive: true });
      const args = [
        "restore",
        ...op(),
        "--fingerprint",
        server.fingerprint,
        "--token",
        token.token,
        "--cvd",
        "ws-lost",
        "--target",
        target,
      ];
      const r = await runTool([...args, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout);

      // The agent's enrolled state, as the agent keeps it, for the restored system's first boot.
      const state = path.join(target, "var/lib/strata-agent");
      expect(statSync(state).mode & 0o777).toBe(0o700);
      expect(statSync(path.join(state, "credential")).mode & 0o777).toBe(0o600);
      const saved = JSON.parse(readFileSync(path.join(state, "state.json"), "utf8"));
      expect(saved).toMatchObject({ serverUrl: server.url, fingerprint: server.fingerprint, root: "/" });
      expect(report).toMatchObject({
        endpointId: saved.endpointId,
        cvd: { id: lost.cvd },
        disabledEndpoint: lost.endpoint,
      });
      const ep = await json("endpoints", "show", saved.endpointId);
      expect(ep).toMatchObject({ state: "active", cvdId: lost.cvd, hostname: "ws-lost" });
      expect(ep.machineId).not.toBe(readFileSync(path.join(lost.root, "etc/machine-id"), "utf8").trim());
      expect((await json("endpoints", "show", lost.endpoint)).state).toBe("disabled");
      // The engine left no journal or stage behind.
      const journals = path.join(state, "restore");
      expect(existsSync(journals) ? readdirSync(journals) : []).toEqual([]);

      // The system works: its own dpkg runs in it.
      const dpkg = spawnSync("chroot", [target, "dpkg", "--version"], { encoding: "utf8" });
      expect(dpkg.status, dpkg.stderr).toBe(0);
      expect(dpkg.stdout).toContain("Debian");
      for (const sub of ["usr", "home", "boot"])
        expect(rsyncItemize(path.join(lost.root, sub), path.join(target, sub))).toBe("");
      // Identity files are the device's: a first-boot machine id, no copy of the lost machine's host key.
      expect(readFileSync(path.join(target, "etc/machine-id"), "utf8")).toBe("uninitialized\n");
      expect(existsSync(path.join(target, "etc/ssh/ssh_host_ed25519_key"))).toBe(false);
      expect(readFileSync(path.join(target, "etc/ssh/sshd_config"), "utf8")).toBe("PermitRootLogin no\n");

      // The closing report: what was restored, and the commands left, tailored to this system.
      expect(report.restore.files).toBeGreaterThan(1000);
      const step = (id: string) => report.steps.find((x: { id: string }) => x.id === id);
      expect(step("mount").commands).toContain(`mount --bind /dev ${target}/dev`);
      expect(step("bootloader").commands.join("\n")).toMatch(
        new RegExp(
          `chroot ${target} grub-install (/dev/\\S+|--target=x86_64-efi .*) && chroot ${target} update-grub`,
        ),
      );
      expect(step("ssh-host-keys").commands).toEqual([`chroot ${target} ssh-keygen -A`]);
      // The restore was the new endpoint's own recover task, finished.
      const creds = JSON.parse(readFileSync(path.join(dir, "home/.config/strata/credentials.json"), "utf8"));
      const adminApi = new StrataClient({
        baseUrl: server.url,
        token: creds.servers[server.url].token,
        fetch: pinnedFetch(server.fingerprint),
      });
      expect(await adminApi.getTask(report.task)).toMatchObject({
        kind: "recover",
        state: "done",
        cvd: lost.cvd,
        endpoint: saved.endpointId,
      });

      // Run again: it continues as the same endpoint, with no token, and the target stays as it is.
      const again = await runTool([
        ...args.filter((a) => a !== token.token && a !== "--token"),
        "--force",
        "--json",
      ]);
      expect(again.code, again.stderr).toBe(0);
      expect(JSON.parse(again.stdout).endpointId).toBe(saved.endpointId);
      expect(rsyncItemize(path.join(lost.root, "usr"), path.join(target, "usr"))).toBe("");
      const human = await runTool([...args.filter((a) => a !== token.token && a !== "--token"), "--force"]);
      expect(human.code, human.stderr).toBe(0);
      expect(human.stdout).toContain(`restored ws-lost (CVD ${lost.cvd}`);
      expect(human.stdout).toContain("grub-install");
      expect(human.stdout).toContain("ssh-keygen -A");
      expect(readdirSync(toolTmp)).toEqual([]);
    }, 600_000);
  },
);
