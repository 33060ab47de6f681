/**
 * A fleet for end-to-end tests, as a user would build one: a real server on
 * loopback (HTTPS), an administrator logged in through the CLI, endpoints
 * that are copies of the debootstrapped Debian root with a user (alice,
 * uid 1000) and her files, enrolled and uploaded with the real agent.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, chownSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { type Clock, loadServerConfig, type RunningServer, startServer } from "@strata/server";
import { rsyncCopy } from "@strata/testkit";
import { BIN, type Run, sh, strataAsync } from "./helpers.js";

export const ADMIN_PW = "a long new secret phrase";
export const ALICE_UID = 1000;

export interface Endpoint {
  name: string;
  root: string;
  state: string;
  endpointId?: string;
  cvd?: string;
}

export class Fleet {
  server!: RunningServer;
  readonly data: string;
  readonly home: string;

  constructor(readonly dir: string) {
    this.data = path.join(dir, "server");
    this.home = path.join(dir, "home");
  }

  /** `clock`: the server's (agents' commit times are clamped to it, retention counts by it). */
  async start(clock?: Clock): Promise<void> {
    this.server = await startServer(
      loadServerConfig({ flags: { data: this.data, listen: "127.0.0.1:0", logLevel: "warn" }, env: {} }),
      { logStream: { write: () => true }, clock },
    );
    const login = await this.strata(
      { STRATA_PASSWORD: this.server.adminPassword! },
      "login",
      "--server",
      this.server.url,
      "--user",
      "admin",
    );
    if (login.code !== 0) throw new Error(`login: ${login.stderr}`);
    const pw = await this.strata(
      { STRATA_CURRENT_PASSWORD: this.server.adminPassword!, STRATA_PASSWORD: ADMIN_PW },
      "users",
      "passwd",
    );
    if (pw.code !== 0) throw new Error(`passwd: ${pw.stderr}`);
  }

  async close(): Promise<void> {
    await this.server?.close();
  }

  strata(env: Record<string, string>, ...args: string[]): Promise<Run> {
    return strataAsync(this.home, env, ...args);
  }

  /** Run the CLI as the administrator; require exit 0; parse --json output. */
  // biome-ignore lint/suspicious/noExplicitAny: parsed --json output is checked by each assertion
  async ok(...args: string[]): Promise<any> {
    const r = await this.strata({ STRATA_PASSWORD: "" }, ...args);
    if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
    if (!args.includes("--json")) return r.stdout;
    try {
      return JSON.parse(r.stdout);
    } catch (e) {
      throw new Error(
        `strata ${args.join(" ")} printed no single JSON document (${(e as Error).message}):\n${r.stdout}`,
      );
    }
  }

  /**
   * A copy of the Debian root with an identity of its own, a user alice
   * (uid 1000) with documents, and scratch data the factory rules exclude.
   */
  makeEndpoint(name: string, debian: string): Endpoint {
    const root = path.join(this.dir, name);
    rsyncCopy(debian, root);
    writeFileSync(path.join(root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
    writeFileSync(path.join(root, "etc/hostname"), `${name}\n`);
    mkdirSync(path.join(root, "etc/ssh"), { recursive: true });
    writeFileSync(path.join(root, "etc/ssh/ssh_host_ed25519_key"), `key of ${name}\n`, { mode: 0o600 });
    appendFileSync(path.join(root, "etc/passwd"), "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n");
    appendFileSync(path.join(root, "etc/group"), "alice:x:1000:\n");
    const home = path.join(root, "home/alice");
    mkdirSync(path.join(home, "docs"), { recursive: true });
    for (let i = 0; i < 6; i++)
      writeFileSync(path.join(home, `docs/report-${i}.pdf`), randomBytes(200_000 + i));
    writeFileSync(path.join(home, "docs/notes.txt"), `notes of ${name}\n`.repeat(2000));
    writeFileSync(path.join(home, "photo.jpg"), randomBytes(1_500_000));
    chownTree(home, ALICE_UID, ALICE_UID);
    mkdirSync(path.join(root, "tmp"), { recursive: true });
    writeFileSync(path.join(root, "tmp/scratch"), randomBytes(100_000));
    return { name, root, state: path.join(this.dir, `state-${name}`) };
  }

  async enroll(eps: Endpoint[]): Promise<void> {
    const token = await this.ok("tokens", "create", "--uses", String(eps.length), "--auto-approve", "--json");
    for (const ep of eps) {
      const e = await this.ok(
        "agent",
        "enroll",
        "--server",
        this.server.url,
        "--token",
        token.token,
        "--fingerprint",
        token.serverFingerprint,
        "--root",
        ep.root,
        "--state",
        ep.state,
        "--json",
      );
      ep.endpointId = e.endpointId;
    }
  }

  // biome-ignore lint/suspicious/noExplicitAny: upload summary JSON
  async upload(ep: Endpoint): Promise<any> {
    const r = await this.ok("agent", "upload", "--state", ep.state, "--json");
    ep.cvd = r.cvdId;
    return r;
  }

  /** Poll a task until `pred` holds (tasks have no push channel); a failed or cancelled task throws. */
  // biome-ignore lint/suspicious/noExplicitAny: task JSON
  async waitTask(id: string, pred: (t: any) => boolean, what: string): Promise<any> {
    const deadline = Date.now() + 600_000;
    let unreachable = 0;
    for (;;) {
      // A poll that could not reach the server (a loaded test machine) is tried again, a few times.
      const r = await this.strata({ STRATA_PASSWORD: "" }, "task", "show", id, "--json");
      if (r.code !== 0 && /"IO_ERROR"/.test(r.stdout + r.stderr) && ++unreachable <= 3) continue;
      if (r.code !== 0) throw new Error(`strata task show ${id} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
      const t = JSON.parse(r.stdout);
      if (pred(t)) return t;
      if (t.state === "failed" || t.state === "cancelled")
        throw new Error(`${what}: task ${id} ended ${t.state}: ${JSON.stringify(t.error)}`);
      if (Date.now() > deadline) throw new Error(`${what}: ${JSON.stringify(t)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** `strata agent run` for the endpoint, resolved once its status says it is active. */
  async startAgent(ep: Endpoint, extraEnv: Record<string, string> = {}): Promise<RunningAgent> {
    const child = spawn(process.execPath, [BIN, "agent", "run", "--state", ep.state], {
      env: { ...process.env, HOME: this.home, ...extraEnv },
      stdio: ["ignore", "ignore", "pipe"],
    });
    const agent = new RunningAgent(this, ep, child);
    await agent.waitFor((s) => s?.running && s.state === "active", "agent never became ready");
    return agent;
  }
}

export class RunningAgent {
  log = "";
  constructor(
    readonly fleet: Fleet,
    readonly ep: Endpoint,
    readonly child: ChildProcess,
  ) {
    child.stderr?.on("data", (d) => {
      this.log += d;
    });
  }

  // biome-ignore lint/suspicious/noExplicitAny: status JSON
  async status(): Promise<any> {
    const r = await this.fleet.strata({}, "agent", "status", "--state", this.ep.state, "--json");
    return r.code === 0 ? JSON.parse(r.stdout) : null;
  }

  /** Poll the agent's status until `pred` holds (the agent offers no push channel). */
  // biome-ignore lint/suspicious/noExplicitAny: status JSON
  async waitFor(pred: (s: any) => boolean, what: string, timeoutMs = 300_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status();
      if (pred(s)) return s;
      if (this.child.exitCode !== null) throw new Error(`${what}: the agent exited\n${this.log}`);
      if (Date.now() > deadline) throw new Error(`${what}:\n${JSON.stringify(s)}\n${this.log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await new Promise((r) => this.child.once("exit", r));
  }
}

export function chownTree(p: string, uid: number, gid: number): void {
  chownSync(p, uid, gid);
  for (const e of readdirSync(p, { withFileTypes: true })) {
    const q = path.join(p, e.name);
    if (e.isDirectory()) chownTree(q, uid, gid);
    else chownSync(q, uid, gid);
  }
}

/** A real (tiny) Debian package (built in DIR) the endpoint's user installs with dpkg: not any layer's. */
export function installUserPackage(dir: string, root: string, name: string, version: string): void {
  const pkg = path.join(dir, `pkg-${name}`);
  mkdirSync(path.join(pkg, "DEBIAN"), { recursive: true });
  mkdirSync(path.join(pkg, "usr/local/bin"), { recursive: true });
  writeFileSync(
    path.join(pkg, "DEBIAN/control"),
    `Package: ${name}\nVersion: ${version}\nArchitecture: all\nMaintainer: Test <t@example.org>\nDescription: a package the user installed\n`,
  );
  writeFileSync(path.join(pkg, `usr/local/bin/${name}`), `#!/bin/sh\necho ${name} ${version}\n`, {
    mode: 0o755,
  });
  const deb = path.join(root, `tmp/${name}.deb`);
  sh(`dpkg-deb --root-owner-group --build ${pkg} ${deb} >/dev/null`);
  sh(`chroot ${root} dpkg -i /tmp/${name}.deb >/dev/null`);
}
