/**
 * The fleet end to end over real HTTPS on loopback: an administrator creates
 * an enrollment token, an agent enrolls a fake root into a temporary state
 * directory, the administrator approves it, and the agent sees itself
 * active with its policy. The server's log is captured and searched for
 * secrets.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { endpointClient } from "@strata/agent";
import { loadServerConfig, type RunningServer, startServer } from "@strata/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fakeRoot } from "../../../packages/agent/test/fixtures.js";
import { type Run, strataAsync } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-fleet-"));
const NEW_PW = "a long new secret phrase";

function strata(env: Record<string, string>, ...args: string[]): Promise<Run> {
  return strataAsync(path.join(dir, "home"), env, ...args);
}

/** Run and require exit 0; parse stdout when --json is given. */
// biome-ignore lint/suspicious/noExplicitAny: parsed --json output is checked by each assertion
async function ok(...args: string[]): Promise<any> {
  const r = await strata({}, ...args);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}

describe("strata tokens → agent enroll → endpoints approve → agent/self", () => {
  let server: RunningServer;
  const logs: string[] = [];

  beforeAll(async () => {
    server = await startServer(
      loadServerConfig({
        flags: { data: path.join(dir, "server"), listen: "127.0.0.1:0", logLevel: "trace" },
        env: {},
      }),
      { logStream: { write: (s: string) => logs.push(s) } },
    );
    const login = await strata(
      { STRATA_PASSWORD: server.adminPassword! },
      "login",
      "--server",
      server.url,
      "--user",
      "admin",
    );
    expect(login.code, login.stderr).toBe(0);
    const pw = await strata(
      { STRATA_CURRENT_PASSWORD: server.adminPassword!, STRATA_PASSWORD: NEW_PW },
      "users",
      "passwd",
    );
    expect(pw.code, pw.stderr).toBe(0);
  });
  afterAll(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("enrolls a fake root with trust on first use, is approved, and sees its policy; secrets stay out of the log", async () => {
    const t = await ok("tokens", "create", "--uses", "2", "--expires", "2h", "--json");
    expect(t.token).toMatch(/^set_/);
    expect(t.serverFingerprint).toBe(server.fingerprint);
    expect(t.enrollCommand).toBe(
      `strata agent enroll --server ${server.url} --token ${t.token} --fingerprint ${server.fingerprint}`,
    );
    const human = await ok("tokens", "create", "--expires", "30m");
    expect(human).toMatch(
      /on the endpoint, as root, run:\n\n {4}strata agent enroll --server https:\/\/127\.0\.0\.1:\d+ --token set_\S+ --fingerprint [0-9A-F:]{95}\n/,
    );

    const root = fakeRoot(path.join(dir, "root"));
    const state = path.join(dir, "state");
    const e = await strata(
      {},
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
    expect(e.code, e.stderr).toBe(0);
    expect(e.stderr).toContain(`trusting the server certificate on first use: SHA256 ${server.fingerprint}`);
    const enrolled = JSON.parse(e.stdout);
    expect(enrolled).toMatchObject({
      state: "pending",
      fingerprint: server.fingerprint,
      trustedOnFirstUse: true,
    });
    const id = enrolled.endpointId as string;

    // The state directory: 0700, credential 0600, the pin recorded.
    expect(statSync(state).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(state, "credential")).mode & 0o777).toBe(0o600);
    const credential = readFileSync(path.join(state, "credential"), "utf8").trim();
    expect(credential).toMatch(/^sep_[A-Za-z0-9_-]{43}$/);
    expect(JSON.parse(readFileSync(path.join(state, "state.json"), "utf8"))).toMatchObject({
      serverUrl: server.url,
      fingerprint: server.fingerprint,
      endpointId: id,
    });
    // Enrolled once: a second enroll into the same state is refused without --force.
    const again = await strata(
      {},
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
    );
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("already enrolled");
    expect(again.stderr).toContain("--force");
    // A wrong pin is refused before the token is sent.
    const wrong = await strata(
      {},
      "agent",
      "enroll",
      "--server",
      server.url,
      "--token",
      t.token,
      "--root",
      root,
      "--state",
      path.join(dir, "state2"),
      "--fingerprint",
      `SHA256:${"00".repeat(32)}`,
    );
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("is not the pinned one");

    // Pending: agent/self says so.
    expect((await endpointClient(state).agentSelf()).state).toBe("pending");
    const pending = await ok("endpoints", "list", "--state", "pending", "--json");
    expect(pending.map((x: { id: string }) => x.id)).toEqual([id]);
    const shown = await ok("endpoints", "show", id);
    expect(shown).toContain("hostname:    web-1");
    expect(shown).toContain("Debian GNU/Linux 12 (bookworm)");
    expect(shown).toContain(`strata endpoints approve ${id}`);

    // A policy of our own, then approve with it.
    const policyFile = path.join(dir, "laptops.json");
    writeFileSync(policyFile, JSON.stringify({ name: "Laptops", intervalMinutes: 30 }));
    await ok("policy", "create", "--file", policyFile);
    const approved = await ok("endpoints", "approve", id, "--policy", "Laptops", "--json");
    expect(approved).toMatchObject({ id, state: "active" });
    const self = await endpointClient(state).agentSelf();
    expect(self).toMatchObject({
      endpointId: id,
      state: "active",
      cvd: {
        id: approved.cvdId,
        latestSnapshot: null,
        policy: { name: "Laptops", version: 1, intervalMinutes: 30 },
      },
    });
    expect(await ok("cvd", "list", "--json")).toMatchObject([
      { id: approved.cvdId, endpointId: id, hostname: "web-1", policy: "Laptops" },
    ]);
    expect(await ok("cvd", "snapshots", approved.cvdId)).toContain("has no snapshots yet");

    // Export, edit, update; the stale export is refused with a hint; set-policy; delete in use is refused.
    const exported = path.join(dir, "export.json");
    await ok("policy", "export", "Laptops", "--output", exported);
    const doc = JSON.parse(readFileSync(exported, "utf8"));
    doc.policy.intervalMinutes = 120;
    writeFileSync(exported, JSON.stringify(doc));
    expect(await ok("policy", "update", "Laptops", "--file", exported, "--json")).toMatchObject({
      version: 2,
      intervalMinutes: 120,
    });
    const stale = await strata({}, "policy", "update", "Laptops", "--file", exported);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toMatch(/at version 2; this edit is of version 1[\s\S]*hint: export it again/);
    // `policy edit` opens the export in $EDITOR (here a script that edits it) and saves the next version.
    const editor = path.join(dir, "edit-interval.sh");
    writeFileSync(editor, `#!/bin/sh\nsed -i 's/"intervalMinutes": *120/"intervalMinutes": 45/' "$1"\n`, {
      mode: 0o755,
    });
    expect(await strata({ EDITOR: editor, VISUAL: "" }, "policy", "edit", "Laptops", "--json")).toMatchObject(
      {
        code: 0,
      },
    );
    expect(await ok("policy", "show", "Laptops", "--json")).toMatchObject({
      version: 3,
      intervalMinutes: 45,
    });
    const same = await strata({ EDITOR: "true", VISUAL: "" }, "policy", "edit", "Laptops");
    expect([same.code, same.stdout]).toEqual([0, "policy Laptops unchanged\n"]);
    const broken = path.join(dir, "break-json.sh");
    writeFileSync(broken, `#!/bin/sh\necho '{ not json' > "$1"\n`, { mode: 0o755 });
    const bad = await strata({ EDITOR: broken, VISUAL: "" }, "policy", "edit", "Laptops");
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/not JSON[\s\S]*hint: fix \S+ and run `strata policy edit Laptops --file/);
    const failing = await strata({ EDITOR: "false", VISUAL: "" }, "policy", "edit", "Laptops");
    expect(failing.code).toBe(1);
    expect(failing.stderr).toContain("the policy is unchanged");
    expect((await ok("policy", "show", "Laptops", "--json")).version).toBe(3);
    await ok("policy", "import", "--file", exported, "--name", "Laptops copy");
    await ok("cvd", "set-policy", approved.cvdId, "Laptops copy");
    expect((await endpointClient(state).agentSelf()).cvd?.policy.name).toBe("Laptops copy");
    const del = await strata({}, "policy", "delete", "Laptops copy");
    expect(del.code).toBe(1);
    expect(del.stderr).toContain("in use by 1 CVD(s)");
    expect(del.stderr).toContain("hint:");
    await ok("policy", "delete", "Laptops");
    expect((await ok("policy", "list", "--json")).map((p: { name: string }) => p.name)).toEqual([
      "Default",
      "Laptops copy",
    ]);

    // Tokens: listed without secrets, revoked.
    const list = await ok("tokens", "list", "--json");
    expect(JSON.stringify(list)).not.toContain("set_");
    await ok("tokens", "revoke", t.id);
    expect((await ok("tokens", "list", "--json")).find((x: { id: string }) => x.id === t.id).status).toBe(
      "revoked",
    );

    // Disable: the agent learns it, and its CVD is kept.
    await ok("endpoints", "disable", id);
    expect(await endpointClient(state).agentSelf()).toMatchObject({ state: "disabled", cvd: null });
    expect(await ok("endpoints", "show", id, "--json")).toMatchObject({
      state: "disabled",
      cvdId: approved.cvdId,
    });

    // Nothing secret in the server's log.
    const log = logs.join("");
    expect(log).toContain('"reqId"');
    for (const secret of [
      t.token,
      human.match(/set_\S+/)?.[0] ?? "set_",
      credential,
      NEW_PW,
      server.adminPassword!,
    ]) {
      expect(log).not.toContain(secret);
    }
  });

  it("explains what to do next when something is missing or wrong", async () => {
    const noToken = await strata(
      {},
      "agent",
      "enroll",
      "--server",
      server.url,
      "--state",
      path.join(dir, "s3"),
    );
    expect(noToken.stderr).toMatch(/no enrollment token given\n {2}hint: pass --token/);
    const badToken = await strata(
      {},
      "agent",
      "enroll",
      "--server",
      server.url,
      "--token",
      `set_${"x".repeat(43)}`,
      "--state",
      path.join(dir, "s4"),
      "--root",
      fakeRoot(path.join(dir, "root4")),
    );
    expect(badToken.code).toBe(1);
    expect(badToken.stderr).toMatch(/refused the enrollment[\s\S]*hint: .*strata tokens create/);
    const noMachineId = await strata(
      {},
      "agent",
      "enroll",
      "--server",
      server.url,
      "--token",
      `set_${"x".repeat(43)}`,
      "--state",
      path.join(dir, "s5"),
      "--root",
      fakeRoot(path.join(dir, "root5"), { machineId: null }),
    );
    expect(noMachineId.stderr).toMatch(/no machine id[\s\S]*systemd-machine-id-setup/);
    const unknown = await strata({}, "endpoints", "approve", "ep_doesnotexist");
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(
      /endpoint ep_doesnotexist does not exist\n {2}hint: see `strata endpoints list`/,
    );
    const expires = await strata({}, "tokens", "create", "--expires", "soon");
    expect(expires.stderr).toMatch(/soon is not a duration\n {2}hint: use e\.g\. 30m, 24h or 7d/);
    for (const group of ["tokens", "endpoints", "cvd", "policy"]) {
      const help = await strata({}, group, "--help");
      expect(help.code).toBe(0);
      expect(help.stdout).toContain("Commands:");
    }
  });
});
