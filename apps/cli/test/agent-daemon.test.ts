/**
 * `strata agent run` as a process, driven through the CLI like a user
 * would. The upload is the no-op test hook (STRATA_AGENT_TEST_UPLOAD=noop,
 * see apps/cli/src/commands/agent.ts): this tests the service and its
 * commands, not the upload.
 */
import type { ChildProcess } from "node:child_process";
import { lstatSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, type Env, newEnv, type Run, spawnStrata, strata, tmp } from "./helpers.js";

afterAll(cleanup);

// biome-ignore lint/suspicious/noExplicitAny: --json output, checked field by field
function json(r: Run): any {
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Poll `strata agent status --json` until `check` holds; fail after `ms`. */
// biome-ignore lint/suspicious/noExplicitAny: status JSON
async function statusUntil(e: Env, state: string, what: string, check: (s: any) => boolean, ms = 60_000) {
  const deadline = Date.now() + ms;
  let last: Run | undefined;
  for (;;) {
    last = strata(e, "agent", "status", "--state", state, "--json");
    if (last.code === 0) {
      const s = JSON.parse(last.stdout);
      if (check(s)) return s;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; last: ${last.code} ${last.stdout} ${last.stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function exited(p: ChildProcess): Promise<number | null> {
  return new Promise((r) => {
    if (p.exitCode !== null) r(p.exitCode);
    else p.once("exit", (code) => r(code));
  });
}

describe("strata agent run / status / sync-now / snooze / resume", () => {
  it("has help for every subcommand", () => {
    const top = strata(newEnv(), "agent", "--help");
    expect(top.code).toBe(0);
    for (const c of ["run", "status", "sync-now", "snooze", "resume"]) {
      expect(top.stdout).toContain(c);
      const h = strata(newEnv(), "agent", c, "--help");
      expect(h.code).toBe(0);
      expect(h.stdout).toContain("--state <dir>");
    }
    expect(strata(newEnv(), "agent", "snooze", "--help").stdout).toMatch(/30m, 2h/);
  });

  it("runs, uploads, and obeys sync-now, snooze and resume; SIGTERM stops it", async () => {
    const e = newEnv();
    const state = path.join(tmp(), "agent-state");
    const agent = spawnStrata(
      { ...e, extra: { STRATA_AGENT_TEST_UPLOAD: "noop" } },
      "agent",
      "run",
      "--state",
      state,
    );
    let stderr = "";
    agent.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    try {
      // Nothing uploaded before: the first upload runs at start.
      const first = await statusUntil(
        e,
        state,
        "the first upload",
        (s) => s.lastUpload?.summary?.upload === 1,
      );
      expect(first).toMatchObject({
        running: true,
        state: "active",
        activity: "idle",
        consecutiveFailures: 0,
      });
      const next = Date.parse(first.nextUploadAt) - Date.parse(first.lastSuccessAt);
      expect(next).toBe(60 * 60_000);
      expect(lstatSync(path.join(state, "control.sock")).mode & 0o777).toBe(0o600);
      const human = strata(e, "agent", "status", "--state", state);
      expect(human.code).toBe(0);
      expect(human.stdout).toMatch(/last upload: ok at/);
      expect(human.stdout).toMatch(/next: +next upload at .*\(in 60 min\)/);

      const sync = json(strata(e, "agent", "sync-now", "--state", state, "--json"));
      expect(sync.outcome).toBe("starting");
      const second = await statusUntil(
        e,
        state,
        "the second upload",
        (s) => s.lastUpload?.summary?.upload === 2,
      );

      const before = Date.now();
      const snooze = json(strata(e, "agent", "snooze", "30m", "--state", state, "--json"));
      expect(snooze.outcome).toBe("snoozed");
      const until = Date.parse(snooze.status.snoozedUntil);
      expect(until).toBeGreaterThanOrEqual(before + 30 * 60_000 - 1000);
      expect(until).toBeLessThanOrEqual(Date.now() + 30 * 60_000);
      // A snooze shorter than the time to the next upload does not move it.
      expect(snooze.status.nextUploadAt).toBe(second.nextUploadAt);
      const longer = json(strata(e, "agent", "snooze", "2h", "--state", state, "--json"));
      expect(longer.status.nextUploadAt).toBe(longer.status.snoozedUntil);
      const snooze2 = json(strata(e, "agent", "snooze", "30m", "--state", state, "--json"));
      expect(snooze2.status.snoozedUntil).not.toBe(longer.status.snoozedUntil);
      const snoozed = strata(e, "agent", "status", "--state", state);
      expect(snoozed.stdout).toMatch(/snoozed: +until .*strata agent resume/);
      expect(snoozed.stdout).toMatch(/next: +snoozed until .*; next upload at .*\(in 60 min\)/);
      // It survives in status.json, for the next start.
      expect(JSON.parse(readFileSync(path.join(state, "status.json"), "utf8")).snoozedUntil).toBe(
        snooze2.status.snoozedUntil,
      );

      // sync-now during a snooze: one upload, the snooze stays.
      const during = strata(e, "agent", "sync-now", "--state", state);
      expect(during.code).toBe(0);
      expect(during.stdout).toMatch(/upload starting now/);
      expect(during.stdout).toMatch(/stays in effect/);
      const third = await statusUntil(
        e,
        state,
        "the third upload",
        (s) => s.lastUpload?.summary?.upload === 3,
      );
      expect(third.snoozedUntil).toBe(snooze2.status.snoozedUntil);

      const resume = strata(e, "agent", "resume", "--state", state);
      expect(resume.code).toBe(0);
      expect(resume.stdout).toMatch(/^snooze ended; next upload at/);
      const resumed = json(strata(e, "agent", "status", "--state", state, "--json"));
      expect(resumed.snoozedUntil).toBeNull();
      expect(resumed.activity).toBe("idle");

      for (const bad of ["0", "soon", "2d"]) {
        const r = strata(e, "agent", "snooze", bad, "--state", state);
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(/strata: error: /);
      }
      expect(strata(e, "agent", "snooze", "2d", "--state", state).stderr).toMatch(/at most 24 h/);
    } finally {
      agent.kill("SIGTERM");
    }
    expect(await exited(agent)).toBe(0);
    expect(stderr).toMatch(/stopping \{"signal":"SIGTERM"\}/);
    const after = JSON.parse(readFileSync(path.join(state, "status.json"), "utf8"));
    expect([after.running, after.activity]).toEqual([false, "stopped"]);

    const gone = strata(e, "agent", "status", "--state", state);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/the strata agent is not running/);
    expect(gone.stderr).toContain("is `strata agent run` running? check `systemctl status strata-agent`");
    const goneJson = strata(e, "agent", "sync-now", "--state", state, "--json");
    expect(goneJson.code).toBe(1);
    expect(JSON.parse(goneJson.stdout).error.code).toBe("NOT_FOUND");
  });

  it("refuses an unknown test mode", () => {
    const e = newEnv();
    const r = strata(
      { ...e, extra: { STRATA_AGENT_TEST_UPLOAD: "real" } },
      "agent",
      "run",
      "--state",
      path.join(tmp(), "s"),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the only test mode is "noop"/);
  });
});
