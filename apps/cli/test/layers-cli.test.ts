/**
 * `strata layer` and the layer commands of `strata cvd` against a real
 * server on loopback, with small fake endpoint roots enrolled and uploaded
 * by the real agent: reference marking, base capture, listings, assignment,
 * the dry-run report (a blocking downgrade), an apply task; --json and
 * tables; mistakes explained.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fakeRoot } from "../../../packages/agent/test/fixtures.js";
import { type Endpoint, Fleet } from "./fleet-harness.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-layers-cli-"));
const fleet = new Fleet(dir);
const ok = (...args: string[]) => fleet.ok(...args);
const run = (...args: string[]) => fleet.strata({}, ...args);

const stanza = (name: string, version: string) =>
  `Package: ${name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: ${version}\nDescription: ${name}\n`;

function machine(name: string, jq: string): Endpoint {
  const root = fakeRoot(path.join(dir, name), {
    hostname: name,
    machineId: `${name.padEnd(8, "0")}`
      .repeat(4)
      .slice(0, 32)
      .replace(/[^0-9a-f]/g, "a"),
  });
  const put = (rel: string, text: string) => {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), text);
  };
  put("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n");
  put("var/lib/dpkg/status", `${stanza("base-files", "12.4")}\n${stanza("jq", jq)}\n`);
  put("usr/bin/jq", `jq ${jq}\n`);
  put("home/alice/notes.txt", `notes on ${name}\n`);
  return { name, root, state: path.join(dir, `state-${name}`) };
}

describe("strata layer / cvd reference, layers, dry-run, apply", () => {
  const ref = machine("ref-01", "1.6-2.1");
  const a = machine("pc-01", "1.7-1");

  beforeAll(async () => {
    await fleet.start();
    await fleet.enroll([ref, a]);
    await fleet.upload(ref);
    await fleet.upload(a);
  }, 120_000);
  afterAll(async () => {
    await fleet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("--help for every command", async () => {
    for (const args of [
      ["layer", "--help"],
      ["layer", "capture-base", "--help"],
      ["layer", "assign", "--help"],
      ["cvd", "reference", "--help"],
      ["cvd", "layers", "--help"],
      ["cvd", "dry-run", "--help"],
      ["cvd", "apply", "--help"],
      ["cvd", "migrate", "--help"],
    ]) {
      const r = await run(...args);
      expect(r.code, args.join(" ")).toBe(0);
      expect(r.stdout).toContain("Usage: strata");
    }
    const migrate = (await run("cvd", "migrate", "--help")).stdout;
    expect(migrate).toContain("--reinstall-user-packages");
    expect(migrate).toMatch(/reinstalled, unavailable or failed/);
    expect((await run("layer", "--help")).stdout).toMatch(
      /list\|ls[\s\S]*show[\s\S]*capture-base[\s\S]*assign[\s\S]*rules/,
    );
  });

  it("reference, capture-base, ls, show, assign, layers, dry-run and apply", async () => {
    expect(await ok("layer", "ls")).toMatch(/^no layers yet/);
    const refused = await run("layer", "capture-base", "--name", "debian", "--cvd", ref.cvd!);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/is not a reference CVD[\s\S]*strata cvd reference/);
    expect(await ok("cvd", "reference", ref.cvd!)).toBe(`CVD ${ref.cvd} is a reference CVD\n`);
    expect(await ok("cvd", "reference", ref.cvd!, "--off", "--json")).toEqual({
      cvd: ref.cvd,
      reference: false,
    });
    await ok("cvd", "reference", ref.cvd!);

    expect(
      await ok("layer", "capture-base", "--name", "debian", "--cvd", ref.cvd!, "--label", "12.8"),
    ).toMatch(
      /^captured debian version 1 \(12\.8\) from CVD cvd_\S+ snapshot [0-9a-f]{16}: \d+ files, .+, 2 packages, debian 12\n$/,
    );
    const v2 = await ok("layer", "capture-base", "--name", "debian", "--cvd", ref.cvd!, "--json");
    expect(v2.version).toMatchObject({ version: 2, label: "2", os: { id: "debian", versionId: "12" } });

    const table = await ok("layer", "ls");
    expect(table).toMatch(/^NAME\s+KIND\s+VERSIONS\s+NEWEST\s+OS\s+FILES\s+SIZE\s+CREATED\n/);
    expect(table).toMatch(/\ndebian\s+base\s+2\s+2 \(2\)\s+debian 12\s+\d+\s+/);
    expect((await ok("layer", "list", "--json")).map((l: { name: string }) => l.name)).toEqual(["debian"]);
    const shown = await ok("layer", "show", "debian");
    expect(shown).toContain("kind:        base");
    expect(shown).toMatch(/\n1\s+12\.8\s+debian 12\s+\d+\s+.+\s+2\s+cvd_/);
    expect((await ok("layer", "show", v2.layer.id, "--json")).versions).toHaveLength(2);

    const asg = await ok("layer", "assign", "--base", "debian@1", "--cvd", a.cvd!, "--json");
    expect(asg).toMatchObject({
      target: { kind: "cvd", id: a.cvd },
      base: { layer: v2.layer.id, version: 1 },
      apps: [],
    });
    const layers = await ok("cvd", "layers", a.cvd!);
    expect(layers).toContain("base:        debian@1");
    expect(layers).toContain(`apply it with \`strata cvd apply ${a.cvd}\``);
    const info = await ok("cvd", "layers", a.cvd!, "--json");
    expect(info.targetImage).toMatch(/^[0-9a-f]{64}$/);

    // pc-01's user installed jq 1.7: the base's 1.6 would go back: blocking, exit status 1.
    const dry = await run("cvd", "dry-run", a.cvd!);
    expect(dry.code).toBe(1);
    expect(dry.stdout).toMatch(/PROBLEM\s+BLOCKING\s+SUBJECT\s+MESSAGE\n/);
    expect(dry.stdout).toMatch(/downgrade\s+yes\s+jq\s+/);
    expect(dry.stdout).toContain("blocked: an apply would fail");
    // The endpoint's free space, as its agent reported it at enrollment, and what the apply needs.
    expect(dry.stdout).toMatch(/^ {2}disk: +needs \S+ \S+, \S+ \S+ free of \S+ \S+ on \/\S+ \(reported /m);
    const dryJson = await run("cvd", "dry-run", a.cvd!, "--json");
    expect(dryJson.code).toBe(1);
    const dryReport = JSON.parse(dryJson.stdout);
    expect(dryReport).toMatchObject({ blocked: true, image: info.targetImage });
    expect(dryReport.disk.freeBytes).toBeGreaterThan(0);
    expect(dryReport.problems.filter((p: { kind: string }) => p.kind === "disk-space")).toEqual([]);

    const queued = await ok("cvd", "apply", a.cvd!, "--enforce", "keep");
    expect(queued).toMatch(
      /^queued task task_\S+: apply of image [0-9a-f]{16} to CVD cvd_\S+ on endpoint ep_\S+\n/,
    );
    const id = /task (task_\S+):/.exec(queued)![1]!;
    const t = await ok("task", "show", id, "--json");
    expect(t).toMatchObject({
      kind: "apply",
      state: "queued",
      params: { image: info.targetImage, enforce: "keep" },
    });
    expect(await ok("task", "show", id)).toContain(`image:     ${info.targetImage} (enforce keep)`);
    await ok("task", "cancel", id);
  });

  it("mistakes are explained", async () => {
    const bad = await run("layer", "assign", "--base", "debian@x", "--cvd", a.cvd!);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--base debian@x is not LAYER or LAYER@VERSION");
    const both = await run("layer", "assign", "--base", "debian", "--cvd", a.cvd!, "--collection", "Lab");
    expect(both.stderr).toContain("give --cvd or --collection");
    const nope = await run("layer", "assign", "--app", "nope", "--cvd", a.cvd!);
    expect(nope.code).toBe(1);
    expect(nope.stderr).toMatch(/layer nope does not exist\n {2}hint: see `strata layer ls`/);
    const kind = await run("layer", "assign", "--app", "debian", "--cvd", a.cvd!);
    expect(kind.stderr).toContain("layer debian is a base layer, not an app layer");
    const enforce = await run("cvd", "apply", a.cvd!, "--enforce", "sometimes");
    expect(enforce.stderr).toContain("--enforce sometimes is not keep or remove");
    expect((await run("layer", "show", "nope")).code).toBe(1);
  });

  it("a refused migration says why and leaves the CVD's assignment as it was", async () => {
    // pc-01 has debian@1 assigned (previous test) but never applied: a
    // migration would leave the old release's files behind, so the server
    // refuses it, and the CLI puts back the assignment it had replaced.
    const before = await ok("cvd", "layers", a.cvd!, "--json");
    expect(before.effective.base).toMatchObject({ version: 1 });
    const r = await run("cvd", "migrate", a.cvd!, "--base", "debian@2");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `CVD ${a.cvd} runs no base layer applied by Strata: a migration would leave its old release's files behind`,
    );
    expect(r.stderr).toMatch(/hint: capture the release it runs as a base layer, assign and apply it/);
    const after = await ok("cvd", "layers", a.cvd!, "--json");
    // Assigned again (a new assignment record), with the same layers.
    const layersOf = (e: { target: unknown; base: unknown; apps: unknown }) => ({
      target: e.target,
      base: e.base,
      apps: e.apps,
    });
    expect(layersOf(after.effective)).toEqual(layersOf(before.effective));
    expect(after.targetImage).toBe(before.targetImage);
    expect(
      (await ok("task", "ls", "--cvd", a.cvd!, "--json")).filter(
        (t: { state: string }) => t.state === "queued",
      ),
    ).toEqual([]);
    const noBase = await run("cvd", "migrate", a.cvd!);
    expect(noBase.code).toBe(1);
    expect(noBase.stderr).toMatch(/give the new release's base layer with --base[\s\S]*strata layer ls/);
  });
});
