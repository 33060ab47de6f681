/**
 * Restores from the administrator's side over real HTTPS on loopback: an
 * endpoint enrolls (auto-approved) and uploads twice; the administrator
 * reads the folder's history, queues a revert and follows the task through
 * the CLI while a "agent" claims and reports it; RemoteRestoreSource reads
 * the snapshot back over the pinned connection with a user's token and
 * with the endpoint's credential.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { endpointClient, RemoteRestoreSource, type TreeRef } from "@strata/agent";
import { loadServerConfig, type RunningServer, startServer } from "@strata/server";
import { startTcpProxy } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fakeRoot } from "../../../packages/agent/test/fixtures.js";
import { BIN, type Run, strataAsync } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-restore-cli-"));
const NEW_PW = "a long new secret phrase";
const home = path.join(dir, "home");

function strata(...args: string[]): Promise<Run> {
  return strataAsync(home, {}, ...args);
}
// biome-ignore lint/suspicious/noExplicitAny: parsed --json output is checked by each assertion
async function ok(...args: string[]): Promise<any> {
  const r = await strata(...args);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}

/** `strata agent run` of an enrolled endpoint, its stderr collected, until `stop`. */
function agentRun(stateDir: string, ...args: string[]) {
  const child = spawn(process.execPath, [BIN, "agent", "run", "--state", stateDir, ...args], {
    env: { ...process.env, HOME: home, XDG_CONFIG_HOME: "", STRATA_CREDENTIALS: "" },
  });
  const run = {
    log: "",
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("close", r));
    },
  };
  child.stderr.on("data", (d) => {
    run.log += d;
  });
  return run;
}

describe("strata cvd history | revert | task, and RemoteRestoreSource over HTTPS", () => {
  let server: RunningServer;
  const root = path.join(dir, "root");
  const state = path.join(dir, "state");
  let cvd = "";
  const snaps: string[] = [];
  // Over the largest chunk (1 MiB): at least two chunks whatever the content (the cut test needs them).
  const big = randomBytes(1_500_000);

  // The server's clock runs three days behind, so the agents' commit times are clamped to it and
  // two uploads an artificial two hours apart land in different retention hours (both are kept).
  let offset = -3 * 86_400_000;
  beforeAll(async () => {
    server = await startServer(
      loadServerConfig({
        flags: { data: path.join(dir, "server"), listen: "127.0.0.1:0", logLevel: "warn" },
        env: {},
      }),
      { logStream: { write: () => true }, clock: { now: () => new Date(Date.now() + offset) } },
    );
    const login = await strataAsync(
      home,
      { STRATA_PASSWORD: server.adminPassword! },
      "login",
      "--server",
      server.url,
      "--user",
      "admin",
    );
    expect(login.code, login.stderr).toBe(0);
    const pw = await strataAsync(
      home,
      { STRATA_CURRENT_PASSWORD: server.adminPassword!, STRATA_PASSWORD: NEW_PW },
      "users",
      "passwd",
    );
    expect(pw.code, pw.stderr).toBe(0);
    fakeRoot(root);
    mkdirSync(path.join(root, "home/alice/docs"), { recursive: true });
    writeFileSync(path.join(root, "home/alice/docs/report.odt"), big);
    writeFileSync(path.join(root, "home/alice/docs/draft.txt"), "draft\n");
    const t = await ok("tokens", "create", "--auto-approve", "--json");
    await ok(
      "agent",
      "enroll",
      "--server",
      server.url,
      "--token",
      t.token,
      "--root",
      root,
      "--state",
      state,
      "--json",
    );
    snaps.push((await ok("agent", "upload", "--state", state, "--json")).snapshot);
    unlinkSync(path.join(root, "home/alice/docs/draft.txt"));
    offset += 2 * 3_600_000;
    snaps.push((await ok("agent", "upload", "--state", state, "--json")).snapshot);
    cvd = (await endpointClient(state).agentSelf()).cvd!.id;
  }, 120_000);
  afterAll(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("history shows the deleted draft in the older snapshot only", async () => {
    const h = await ok("cvd", "history", cvd, "/home/alice/docs", "--json");
    expect(h.snapshots.map((s: { id: string }) => s.id)).toEqual([snaps[1], snaps[0]]);
    const draft = h.entries.find((e: { name: string }) => e.name === "draft.txt");
    expect(draft).toMatchObject({ present: [1], lastSeen: snaps[0] });
    const text = await ok("cvd", "history", cvd, "/home/alice/docs");
    expect(text).toMatch(/draft\.txt\s+file\s+6 B\s+1\/2\s+[0-9a-f]{12}/);
    expect(text).toMatch(/report\.odt\s+file\s+1\.43 MiB\s+2\/2\s+latest/);
    const bad = await strata("cvd", "history", cvd, "relative/path");
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("path");
  });

  it("browse lists a folder of the latest or an older snapshot, like ls -l", async () => {
    const latest = await ok("cvd", "browse", cvd, "latest", "/home/alice/docs", "--json");
    expect(latest.snapshot.id).toBe(snaps[1]);
    expect(latest.entries.map((e: { name: string }) => e.name)).toEqual(["report.odt"]);
    const old = await ok("cvd", "browse", cvd, snaps[0]!.slice(0, 10), "/home/alice/docs", "--json");
    expect(old.entries.map((e: { name: string }) => e.name)).toEqual(["draft.txt", "report.odt"]);
    const text = await ok("cvd", "browse", cvd, snaps[0]!, "/home/alice/docs");
    expect(text).toMatch(/^\/home\/alice\/docs in snapshot [0-9a-f]{12} .*: 2 entries$/m);
    expect(text).toMatch(/^-rw-r--r--\s+\d+\s+\d+\s+6 B\s+\S+\s+draft\.txt$/m);
    // The root by default; folders end in a slash.
    expect(await ok("cvd", "browse", cvd, "latest")).toMatch(/^d[rwx-]{9}\s.*\shome\/$/m);
    const file = await strata("cvd", "browse", cvd, "latest", "/home/alice/docs/report.odt");
    expect(file.code).toBe(1);
    expect(file.stderr).toMatch(/not a folder/);
    expect(file.stderr).toContain("restore-file");
    const rel = await strata("cvd", "browse", cvd, "latest", "home");
    expect(rel.code).toBe(1);
    expect(rel.stderr).toContain("absolute");
  });

  it("revert → task list/show with progress → cancel; the endpoint sees, claims and reports it", async () => {
    const t = await ok("cvd", "revert", cvd, "--snapshot", snaps[0]!.slice(0, 10), "--json");
    expect(t).toMatchObject({ kind: "system", state: "queued", params: { snapshot: snaps[0] } });
    const human = await strata("cvd", "revert", cvd);
    expect(human.code).toBe(1);
    expect(human.stderr).toContain("already has task");
    const agent = endpointClient(state);
    expect((await agent.agentSelf()).tasks).toEqual([{ id: t.id, kind: "system", state: "queued" }]);
    await agent.startAgentTask(t.id);
    await agent.reportTaskProgress(t.id, {
      phase: "applying",
      restoredBytes: 512,
      totalBytes: 1024,
      restoredFiles: 3,
      totalFiles: 9,
      usable: true,
    });
    const list = await ok("task", "list", "--cvd", cvd, "--json");
    expect(list.map((x: { id: string }) => x.id)).toEqual([t.id]);
    const shown = await ok("task", "show", t.id);
    expect(shown).toContain("state:     running");
    expect(shown).toContain("50% 512 B / 1.00 KiB, 3 / 9 files, applying, usable");
    const table = await ok("task", "list");
    expect(table).toMatch(new RegExp(`${t.id}\\s+system\\s+running\\s+${cvd}.*50% usable`));
    const c = await ok("task", "cancel", t.id, "--json");
    expect(c.state).toBe("cancelled");
    expect((await agent.reportTaskProgress(t.id, { restoredBytes: 600 })).state).toBe("cancelled");
    const waited = await strata("task", "show", t.id, "--wait");
    expect(waited.code).toBe(1);
    expect(waited.stderr).toContain(`task ${t.id} cancelled`);
    // With --json, one document (the task, saying why) and exit 1.
    const waitedJson = await strata("task", "show", t.id, "--wait", "--json");
    expect(waitedJson.code).toBe(1);
    expect(JSON.parse(waitedJson.stdout)).toMatchObject({ id: t.id, state: "cancelled" });
    // A finished task answers --wait at once with its details.
    const t2 = await ok("cvd", "revert", cvd, "--full", "--json");
    await agent.startAgentTask(t2.id);
    await agent.finishAgentTask(t2.id, { result: { files: 9, safetySnapshot: "s" } });
    const done = await ok("task", "show", t2.id, "--wait", "--json");
    expect(done).toMatchObject({ kind: "full", state: "done", result: { files: 9 } });
    expect((await strata("task", "show", "task_nothere")).code).toBe(1);
  });

  it("RemoteRestoreSource reads the snapshot over pinned HTTPS with a user's token and with the endpoint's credential", async () => {
    const creds = JSON.parse(readFileSync(path.join(home, ".config/strata/credentials.json"), "utf8"));
    const entry = creds.servers[creds.current];
    const user = await RemoteRestoreSource.forUser(
      { url: creds.current, fingerprint: entry.fingerprint, token: entry.token },
      cvd,
      { path: "/home/alice/docs/report.odt", snapshot: snaps[0]! },
    );
    const endpoint = await RemoteRestoreSource.forEndpoint(state, cvd, { path: "/home/alice/docs" });
    for (const src of [user, endpoint]) {
      const t = await src.loadTree(src.snapshot.root);
      const i = t.nodes.findIndex((n) => n.name.toString() === "report.odt");
      const node = t.nodes[i]!;
      const parts = new Map<string, Buffer>();
      const ids = (node.content ?? []).flatMap((c) => ("id" in c ? [c.id] : []));
      await src.fetchChunks(
        [{ tree: src.snapshot.root as TreeRef, ids }],
        (id, plain) => void parts.set(id, plain),
      );
      const content = Buffer.concat(ids.map((id) => parts.get(id)!));
      expect(content.equals(big)).toBe(true);
      expect(src.stats.bytesReceived).toBeGreaterThan(big.length);
      await src.close();
    }
    expect(user.info.node).toMatchObject({ name: "report.odt", type: "file" });
    const tx = await ok("cvd", "transactions", cvd, "--json");
    const restores = tx.filter((t: { kind: string }) => t.kind === "restore");
    expect(restores.map((t: { openedBy: string }) => t.openedBy).sort()).toEqual([
      expect.stringMatching(/^endpoint:ep_/),
      "user:admin",
    ]);
    expect(restores.every((t: { state: string }) => t.state === "closed")).toBe(true);
  });

  it("a restore survives answers cut mid-stream: only what did not arrive is asked again; a server gone for good fails naming the attempts", async () => {
    const creds = JSON.parse(readFileSync(path.join(home, ".config/strata/credentials.json"), "utf8"));
    const entry = creds.servers[creds.current];
    const proxy = await startTcpProxy(Number(new URL(server.url).port));
    try {
      const src = await RemoteRestoreSource.forUser(
        { url: `https://127.0.0.1:${proxy.port}`, fingerprint: entry.fingerprint, token: entry.token },
        cvd,
        { path: "/home/alice/docs", snapshot: snaps[0]! },
      );
      src.retryDelaysMs = [20, 20, 20];
      // The tree listing's answer is cut at its first bytes: asked again.
      proxy.cutDownstreamAfter(1);
      const trees: { nodes: { name: Buffer }[] }[] = [];
      await src.loadTrees([src.snapshot.root, src.snapshot.root], (i, t) => {
        trees[i] = t;
      });
      expect(trees.map((t) => t.nodes.map((n) => n.name.toString()).sort())).toEqual([
        ["draft.txt", "report.odt"],
        ["draft.txt", "report.odt"],
      ]);
      expect(proxy.cuts).toBeGreaterThan(0);
      expect(src.stats.retries).toBe(1);
      const t = await src.loadTree(src.snapshot.root);
      const node = t.nodes.find((n) => n.name.toString() === "report.odt")!;
      const ids = (node.content ?? []).flatMap((c) => ("id" in c ? [c.id] : []));
      expect(new Set(ids).size).toBeGreaterThan(1);
      // The chunks' answer (≈1.5 MB) is cut after 40 kB: what arrived is kept, the rest asked again.
      const cutsBefore = proxy.cuts;
      proxy.cutDownstreamAfter(40_000);
      const parts = new Map<string, Buffer>();
      const seen: string[] = [];
      await src.fetchChunks([{ tree: src.snapshot.root as TreeRef, ids }], (id, plain) => {
        seen.push(id);
        parts.set(id, plain);
      });
      expect(proxy.cuts).toBeGreaterThan(cutsBefore);
      expect(src.stats.retries).toBe(2);
      expect(seen.length).toBe(new Set(ids).size); // each chunk delivered once
      expect(Buffer.concat(ids.map((id) => parts.get(id)!)).equals(big)).toBe(true);
      // The caller's own failure is never retried.
      const mine = await src
        .fetchChunks([{ tree: src.snapshot.root as TreeRef, ids: ids.slice(0, 1) }], () => {
          throw new Error("disk full (the caller's)");
        })
        .catch((e: Error) => e);
      expect(String(mine)).toContain("disk full (the caller's)");
      expect(src.stats.retries).toBe(2);
      // Gone for good: every attempt refused, then a clear error.
      await proxy.close();
      const err = await src
        .fetchChunks([{ tree: src.snapshot.root as TreeRef, ids: ids.slice(0, 1) }], () => {})
        .catch((e: Error) => e);
      expect(String(err)).toMatch(/cannot reach .*\(1 chunks; 4 attempts\)/);
      expect(src.stats.retries).toBe(5);
    } finally {
      await proxy.close();
    }
  });

  it("restore-file writes a file of the latest or an older snapshot (--snapshot, --at) into a directory", async () => {
    const to = path.join(dir, "out");
    const r = await strata(
      "cvd",
      "restore-file",
      cvd,
      "/home/alice/docs/report.odt",
      "--to",
      to,
      "--snapshot",
      snaps[0]!,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(path.join(to, "report.odt")).equals(big)).toBe(true);
    // --at picks the newest snapshot at or before a time: the draft is only in the older one.
    const older = new Date(Date.now() - 3 * 86_400_000 + 3_600_000).toISOString();
    const r2 = await ok(
      "cvd",
      "restore-file",
      cvd,
      "/home/alice/docs/draft.txt",
      "--to",
      to,
      "--at",
      older,
      "--json",
    );
    expect(r2).toMatchObject({ files: 1, snapshot: snaps[0] });
    expect(readFileSync(path.join(to, "draft.txt"), "utf8")).toBe("draft\n");
    expect(readdirSync(to).sort()).toEqual(["draft.txt", "report.odt"]);
    const missing = await strata("cvd", "restore-file", cvd, "/home/alice/docs/draft.txt", "--to", to);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("is not in snapshot");
    const both = await strata(
      "cvd",
      "restore-file",
      cvd,
      "/x",
      "--to",
      to,
      "--snapshot",
      "abcd",
      "--at",
      "2026-01-01",
    );
    expect(both.code).toBe(1);
    expect(both.stderr).toContain("not both");
  });
  it("strata agent run claims a queued full revert: safety upload, restore, done; the deleted draft is back", async () => {
    const before = readFileSync(path.join(root, "home/alice/docs/report.odt"));
    writeFileSync(path.join(root, "home/alice/docs/new.txt"), "made after the snapshot\n");
    const t = await ok("cvd", "revert", cvd, "--full", "--snapshot", snaps[0]!, "--json");
    const agent = agentRun(state);
    try {
      const done = await strata("task", "show", t.id, "--wait", "--json");
      expect(done.code, `${done.stdout}\n${done.stderr}\n${agent.log}`).toBe(0);
      const task = JSON.parse(done.stdout);
      expect(task).toMatchObject({ state: "done", kind: "full", result: { snapshot: snaps[0], errors: 0 } });
      expect(task.result.safetySnapshot).toMatch(/^[0-9a-f]{64}$/);
      expect(readFileSync(path.join(root, "home/alice/docs/draft.txt"), "utf8")).toBe("draft\n");
      expect(readFileSync(path.join(root, "home/alice/docs/report.odt")).equals(before)).toBe(true);
      // A full revert deletes what the snapshot lacks (the safety snapshot had it).
      expect(existsSync(path.join(root, "home/alice/docs/new.txt"))).toBe(false);
      // Only a recover leaves idle priority (agent.md, "Priority").
      expect(agent.log).not.toContain("normal priority");
    } finally {
      await agent.stop();
    }
  });

  // Last: a recover gives the CVD to the new endpoint (the first one stops being its owner).
  it("strata agent run of a replacement endpoint runs its recover at normal priority, then idle again", async () => {
    const root2 = path.join(dir, "root2");
    const state2 = path.join(dir, "state2");
    mkdirSync(path.join(root2, "etc"), { recursive: true });
    writeFileSync(path.join(root2, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
    const tok = await ok("tokens", "create", "--json");
    const e = await ok(
      "agent",
      "enroll",
      "--server",
      server.url,
      "--token",
      tok.token,
      "--root",
      root2,
      "--state",
      state2,
      "--json",
    );
    const t = await ok(
      "cvd",
      "recover",
      cvd,
      "--endpoint",
      e.endpointId,
      "--snapshot",
      snaps[0]!,
      "--no-streaming",
      "--json",
    );
    const agent = agentRun(state2, "--json");
    try {
      const done = await strata("task", "show", t.id, "--wait", "--json");
      expect(done.code, `${done.stdout}\n${done.stderr}\n${agent.log}`).toBe(0);
      expect(JSON.parse(done.stdout)).toMatchObject({
        state: "done",
        kind: "recover",
        result: { errors: 0 },
      });
      expect(readFileSync(path.join(root2, "home/alice/docs/draft.txt"), "utf8")).toBe("draft\n");
      const lines = agent.log
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { msg: string; threads?: number });
      const msgs = lines.map((l) => l.msg);
      const up = msgs.indexOf("recover runs at normal priority");
      const starts = msgs.indexOf("task starts");
      const back = msgs.indexOf("back to idle priority");
      expect(up, agent.log).toBeGreaterThanOrEqual(0);
      expect(back, agent.log).toBeGreaterThan(up);
      expect(up).toBeGreaterThan(starts);
      if (process.getuid?.() === 0) {
        // Root may lower a nice value: every thread was raised, and every thread went back.
        expect(lines[up]!.threads).toBeGreaterThan(0);
        expect(lines[back]!.threads).toBeGreaterThan(0);
        expect(agent.log).not.toContain("cannot raise priority");
      }
    } finally {
      await agent.stop();
    }
  });
});
