/**
 * `strata autoassign`, `strata endpoints approve --by-rules` and the remote
 * `strata endpoints sync|snooze` against a real server on loopback, with
 * small endpoint roots enrolled by the real agent, and `strata agent run`
 * (real uploads) obeying the administrator through agent/self.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fakeRoot } from "../../../packages/agent/test/fixtures.js";
import { type Endpoint, Fleet } from "./fleet-harness.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-autoassign-cli-"));
const fleet = new Fleet(dir);
const ok = (...args: string[]) => fleet.ok(...args);
const fails = async (...args: string[]) => {
  const r = await fleet.strata({}, ...args);
  expect(r.code, `${args.join(" ")}\n${r.stdout}`).toBe(1);
  return r.stderr;
};

function machine(name: string): Endpoint {
  const root = fakeRoot(path.join(dir, name), {
    hostname: name,
    machineId: Buffer.from(name.padEnd(16, "-")).toString("hex").slice(0, 32),
  });
  return { name, root, state: path.join(dir, `state-${name}`) };
}

async function enroll(ep: Endpoint, token: { token: string; serverFingerprint: string }): Promise<string> {
  const e = await ok(
    "agent",
    "enroll",
    "--server",
    fleet.server.url,
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
  return e.state;
}

describe("strata autoassign / endpoints approve --by-rules / endpoints sync|snooze", () => {
  const lab = machine("lab-01");
  const kiosk = machine("lab-kiosk-1");
  const office = machine("office-01");

  beforeAll(async () => {
    await fleet.start();
    for (const name of ["Lab", "Kiosk", "Office"]) {
      const f = path.join(dir, `${name}.json`);
      writeFileSync(f, JSON.stringify({ name, intervalMinutes: 240 }));
      await ok("policy", "create", "--file", f, "--json");
    }
  });
  afterAll(async () => {
    await fleet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("rules in order give enrolling endpoints their CVD; a non-matching one stays pending until approve --by-rules", async () => {
    const r1 = await ok(
      "autoassign",
      "create",
      "lab",
      "--rule",
      "hostname=lab-*",
      "--policy",
      "Lab",
      "--tag",
      "lab",
      "--json",
    );
    expect(r1).toMatchObject({ name: "lab", position: 1, policy: "Lab", tags: ["lab"] });
    await ok(
      "autoassign",
      "create",
      "kiosk",
      "--rule",
      "hostname=lab-kiosk-*,os='debian 12'",
      "--policy",
      "Kiosk",
      "--before",
      "lab",
      "--json",
    );
    expect((await ok("autoassign", "ls", "--json")).map((r: { name: string }) => r.name)).toEqual([
      "kiosk",
      "lab",
    ]);
    const human = await ok("autoassign", "ls");
    expect(human).toMatch(/1\s+kiosk\s+hostname=lab-kiosk-\*,os='debian 12'\s+Kiosk/);
    expect(await fails("autoassign", "create", "bad", "--rule", "tag=x")).toMatch(/KEY=VALUE/);

    const token = await ok("tokens", "create", "--uses", "3", "--json");
    expect(token.autoAssign).toBe(true);
    expect(await enroll(lab, token)).toBe("active");
    expect(await enroll(kiosk, token)).toBe("active");
    expect(await enroll(office, token)).toBe("pending");
    const cvdOf = async (ep: Endpoint) => (await ok("endpoints", "show", ep.endpointId!, "--json")).cvdId;
    expect(await ok("cvd", "show", await cvdOf(lab), "--json")).toMatchObject({
      policy: "Lab",
      tags: ["lab"],
    });
    expect(await ok("cvd", "show", await cvdOf(kiosk), "--json")).toMatchObject({
      policy: "Kiosk",
      tags: [],
    });

    const t = await ok("autoassign", "test", office.endpointId!, "--json");
    expect(t).toMatchObject({ match: null, facts: { hostname: "office-01", os: "debian 12" } });
    expect(await ok("autoassign", "test", "--facts", "hostname=LAB-7")).toMatch(/first match: lab/);
    await ok("autoassign", "create", "office", "--rule", "hostname=office-*", "--policy", "Office", "--json");
    const by = await ok("endpoints", "approve", "--by-rules", "--json");
    expect(by.approved).toEqual([
      expect.objectContaining({ endpoint: office.endpointId, rule: "office", policy: "Office" }),
    ]);
    expect(await ok("cvd", "show", await cvdOf(office), "--json")).toMatchObject({ policy: "Office" });
    expect(await ok("endpoints", "approve", "--by-rules")).toMatch(/no endpoint approved/);
    await ok("autoassign", "rm", "office");
    expect(await fails("autoassign", "show", "office")).toMatch(/does not exist/);
    expect(await fails("policy", "delete", "Lab")).toMatch(/auto-assignment rule/);
  });

  it("autoassign edit changes a rule in place: id kept, fields one by one or the whole condition, moved; CVDs it made stay", async () => {
    const was = await ok("autoassign", "show", "kiosk", "--json");
    expect(was.position).toBe(1);
    const e1 = await ok(
      "autoassign",
      "edit",
      "kiosk",
      "--os",
      "debian 1*",
      "--tag",
      "kiosk",
      "--last",
      "--json",
    );
    expect(e1).toEqual({
      ...was,
      position: 2,
      rule: { hostname: "lab-kiosk-*", os: "debian 1*" },
      tags: ["kiosk"],
    });
    const human = await ok(
      "autoassign",
      "edit",
      was.id,
      "--unset",
      "os",
      "--name",
      "kiosks",
      "--before",
      "lab",
    );
    expect(human).toMatch(
      /updated rule kiosks \(aar_.*\), evaluated 1\. of the rules: hostname=lab-kiosk-\* → policy Kiosk, tags kiosk/,
    );
    expect(human).toMatch(/CVDs it already made keep their policy and tags/);
    expect(
      await ok("autoassign", "edit", "kiosks", "--rule", "hostname=kiosk-*,model=K*", "--json"),
    ).toMatchObject({
      id: was.id,
      rule: { hostname: "kiosk-*", model: "K*" },
    });
    const e4 = await ok(
      "autoassign",
      "edit",
      "kiosks",
      "--no-tags",
      "--policy",
      "Lab",
      "--vendor",
      "acme",
      "--json",
    );
    expect(e4).toMatchObject({
      tags: [],
      policy: "Lab",
      rule: { hostname: "kiosk-*", model: "K*", vendor: "acme" },
    });
    expect((await ok("autoassign", "ls", "--json")).map((r: { id: string }) => r.id)).toEqual([
      was.id,
      expect.any(String),
    ]);
    // The CVD the rule gave lab-kiosk-1 keeps the policy it had.
    const kioskCvd = (await ok("endpoints", "show", kiosk.endpointId!, "--json")).cvdId;
    expect(await ok("cvd", "show", kioskCvd, "--json")).toMatchObject({ policy: "Kiosk", tags: [] });
    const audit = await ok("audit", "--limit", "10", "--json");
    expect(audit.filter((e: { action: string }) => e.action === "autoassign.update")).toHaveLength(4);

    // Refused, with a hint; nothing changes.
    const nothing = await fails("autoassign", "edit", "kiosks");
    expect(nothing).toMatch(/nothing to change/);
    expect(nothing).toMatch(/hint: give --name, --rule/);
    expect(await fails("autoassign", "edit", "kiosks", "--rule", "hostname=x", "--os", "y")).toMatch(
      /replaces the whole condition/,
    );
    expect(await fails("autoassign", "edit", "kiosks", "--tag", "a", "--no-tags")).toMatch(/contradict/);
    expect(await fails("autoassign", "edit", "kiosks", "--before", "lab", "--last")).toMatch(/contradict/);
    expect(await fails("autoassign", "edit", "kiosks", "--unset", "tags")).toMatch(/not a condition field/);
    expect(
      await fails(
        "autoassign",
        "edit",
        "kiosks",
        "--unset",
        "hostname",
        "--unset",
        "model",
        "--unset",
        "vendor",
      ),
    ).toMatch(/at least one of hostname/);
    expect(await fails("autoassign", "edit", "kiosks", "--name", "lab")).toMatch(/already exists/);
    expect(await fails("autoassign", "edit", "kiosks", "--policy", "Nope")).toMatch(/does not exist/);
    expect(await fails("autoassign", "edit", "nope", "--last")).toMatch(/does not exist/);
    expect(await ok("autoassign", "show", "kiosks", "--json")).toEqual(e4);
  });

  it("a recovery token (--no-autoassign) leaves its endpoint pending, even by the rules", async () => {
    const token = await ok("tokens", "create", "--no-autoassign", "--json");
    expect(token.autoAssign).toBe(false);
    const spare = machine("lab-99");
    expect(await enroll(spare, token)).toBe("pending");
    const by = await ok("endpoints", "approve", "--by-rules", spare.endpointId!, "--json");
    expect(by.pending[0].reason).toMatch(/excludes the rules/);
    expect((await ok("endpoints", "show", spare.endpointId!, "--json")).state).toBe("pending");
  });

  it("`strata endpoints sync` and `snooze` reach a running agent through agent/self; `endpoints show` tells", async () => {
    const agent = await fleet.startAgent(lab, { STRATA_AGENT_POLL_SECONDS: "5" });
    try {
      const first = await agent.waitFor((s) => s?.lastUpload?.result === "ok", "the first upload");
      // Interval 240 min: nothing is due now but what the administrator asks.
      const asked = await ok("endpoints", "sync", lab.endpointId!, "--json");
      expect(asked.remote).toMatchObject({ sync: "pending", syncRequestedBy: "user:admin" });
      // (The agent may already be uploading: "waiting for the agent" is not asserted here; the server suite does.)
      const synced = await agent.waitFor(
        (s) => s?.lastUpload?.result === "ok" && s.lastUpload.startedAt !== first.lastUpload.startedAt,
        "the upload the administrator asked for",
        120_000,
      );
      expect(Date.parse(synced.lastUpload.startedAt)).toBeGreaterThanOrEqual(
        Date.parse(asked.remote.syncRequestedAt),
      );
      const shown = await ok("endpoints", "show", lab.endpointId!, "--json");
      expect(shown.remote.sync).toBe("done");
      expect(await ok("endpoints", "show", lab.endpointId!)).toMatch(/sync now:\s+done/);

      const z = await ok("endpoints", "snooze", lab.endpointId!, "2h", "--json");
      const until = z.remote.snoozedUntil;
      expect(Date.parse(until) - Date.now()).toBeGreaterThan(119 * 60_000);
      const snoozed = await agent.waitFor(
        (s) => s?.snoozedUntil === until,
        "the administrator's snooze",
        120_000,
      );
      expect(snoozed.activity).toBe("snoozed");
      expect(await ok("endpoints", "show", lab.endpointId!)).toMatch(/snoozed:\s+until .* \(by user:admin;/);
      await ok("endpoints", "snooze", lab.endpointId!, "--resume");
      const resumed = await agent.waitFor((s) => s?.snoozedUntil === null, "the resume", 120_000);
      expect(resumed.activity).toBe("idle");
      expect(await fails("endpoints", "snooze", lab.endpointId!, "25h")).toMatch(/1 to 1440 minutes|at most/);
      expect(await fails("endpoints", "snooze", lab.endpointId!)).toMatch(/DURATION, or --resume/);
      expect(await fails("endpoints", "sync", "ep_nothere")).toMatch(/does not exist/);
      const audit = (await ok("audit", "--limit", "50", "--json")).filter(
        (e: { object: string }) => e.object === `endpoint:${lab.endpointId}`,
      );
      expect(audit.slice(0, 3).map((e: { action: string }) => e.action)).toEqual([
        "endpoint.resume",
        "endpoint.snooze",
        "endpoint.sync",
      ]);
    } finally {
      await agent.stop();
    }
  });

  it("every new command has --help", async () => {
    for (const args of [
      ["autoassign"],
      ["autoassign", "create"],
      ["autoassign", "edit"],
      ["autoassign", "test"],
      ["endpoints", "sync"],
      ["endpoints", "snooze"],
    ]) {
      const r = await fleet.strata({}, ...args, "--help");
      expect(r.code, args.join(" ")).toBe(0);
      expect(r.stdout).toContain("Usage: strata");
    }
    const edit = (await fleet.strata({}, "autoassign", "edit", "--help")).stdout;
    for (const flag of [
      "--name",
      "--rule",
      "--hostname",
      "--os",
      "--vendor",
      "--model",
      "--unset",
      "--policy",
      "--tag",
      "--no-tags",
      "--before",
      "--last",
    ])
      expect(edit).toContain(flag);
  });
});
