/**
 * `strata collection`, `strata driver profile`, `strata layer rules` and
 * `strata cvd tag` against a real server on loopback, with three fake
 * endpoint roots whose DMI vendor, model and modaliases differ, enrolled by
 * the real agent; `strata agent run` sends changed facts to the server.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { openSqliteServerStore } from "@strata/catalog";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fakeRoot } from "../../../packages/agent/test/fixtures.js";
import { type Endpoint, Fleet } from "./fleet-harness.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-targeting-cli-"));
const fleet = new Fleet(dir);
const ok = (...args: string[]) => fleet.ok(...args);
const fails = async (...args: string[]) => {
  const r = await fleet.strata({}, ...args);
  expect(r.code, `${args.join(" ")}\n${r.stdout}`).toBe(1);
  return r.stderr;
};

const NVIDIA = "pci:v000010DEd00002520sv000017AAsd00003A58bc03sc00i00";
const INTEL_WIFI = "pci:v00008086d0000A0F0sv00008086sd00000244bc02sc80i00";

function machine(name: string, vendor: string, model: string, modaliases: string[]): Endpoint {
  const root = fakeRoot(path.join(dir, name), {
    hostname: name,
    machineId: Buffer.from(name.padEnd(16, "-")).toString("hex").slice(0, 32),
  });
  const put = (rel: string, text: string) => {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), text);
  };
  put("sys/class/dmi/id/sys_vendor", `${vendor}\n`);
  put("sys/class/dmi/id/product_name", `${model}\n`);
  for (const [i, m] of modaliases.entries()) put(`sys/bus/pci/devices/0000:00:0${i}.0/modalias`, `${m}\n`);
  return { name, root, state: path.join(dir, `state-${name}`) };
}

describe("strata collection / driver profile / layer rules / cvd tag", () => {
  const eps = [
    machine("lab-01", "LENOVO", "20XW0026GE", [NVIDIA, INTEL_WIFI]),
    machine("lab-02", "Dell Inc.", "XPS 13 9310", [INTEL_WIFI]),
    machine("office-01", "LENOVO", "21AH00FGGE", []),
  ];
  const cvd: Record<string, string> = {};

  beforeAll(async () => {
    await fleet.start();
    await fleet.enroll(eps);
    for (const ep of eps) cvd[ep.name] = (await ok("endpoints", "show", ep.endpointId!, "--json")).cvdId;
  });
  afterAll(async () => {
    await fleet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the agent reports DMI and modaliases at enrollment; endpoints show prints them", async () => {
    const e = await ok("endpoints", "show", eps[0]!.endpointId!, "--json");
    expect(e.facts).toMatchObject({
      dmi: { vendor: "LENOVO", model: "20XW0026GE" },
      modaliases: [NVIDIA, INTEL_WIFI],
    });
    expect(await ok("endpoints", "show", eps[0]!.endpointId!)).toContain(
      "hardware:    LENOVO 20XW0026GE (2 PCI/USB modaliases)",
    );
  });

  it("collections: dynamic by rule, static by hand, tags; --json and tables", async () => {
    const lab = await ok("collection", "create", "Lab", "--rule", "hostname=lab-*,os=debian 12", "--json");
    expect(lab.members).toEqual([cvd["lab-01"], cvd["lab-02"]].sort());
    const lenovo = await ok("collection", "create", "Lenovo", "--rule", "vendor=lenovo", "--json");
    expect(lenovo.members).toEqual([cvd["lab-01"], cvd["office-01"]].sort());
    expect(await ok("collection", "create", "Kiosks", "--rule", "tag=kiosk,tag=floor:3")).toMatch(
      /created collection Kiosks \(col_\S+\), dynamic, 0 member\(s\)/,
    );
    expect(await ok("cvd", "tag", cvd["office-01"]!, "kiosk", "floor:3")).toBe(
      `CVD ${cvd["office-01"]}: floor:3 kiosk\n`,
    );
    expect((await ok("collection", "show", "Kiosks", "--json")).members).toEqual([cvd["office-01"]]);
    expect(await ok("cvd", "tag", cvd["office-01"]!, "--remove", "kiosk", "--json")).toEqual({
      cvd: cvd["office-01"],
      tags: ["floor:3"],
    });
    expect(await ok("cvd", "tag", cvd["office-01"]!)).toBe(`CVD ${cvd["office-01"]}: floor:3\n`);
    expect((await ok("collection", "show", "Kiosks", "--json")).members).toEqual([]);

    await ok("collection", "create", "Pilot", "--member", cvd["lab-02"]!);
    expect(
      (await ok("collection", "add", "Pilot", cvd["office-01"]!, cvd["lab-01"]!, "--json")).members,
    ).toHaveLength(3);
    expect(await ok("collection", "remove", "Pilot", cvd["lab-01"]!, cvd["office-01"]!)).toBe(
      "collection Pilot has 1 member(s)\n",
    );
    const table = await ok("collection", "ls");
    expect(table).toMatch(/^NAME\s+ID\s+RULE\s+MEMBERS\n/);
    expect(table).toMatch(/\nLab\s+col_\S+\s+hostname=lab-\*,os=debian 12\s+2\n/);
    expect(table).toMatch(/\nPilot\s+col_\S+\s+static\s+1\n/);
    const shown = await ok("collection", "show", "Lenovo");
    expect(shown).toContain("kind:    dynamic, rule vendor=lenovo");
    expect(shown).toContain(`    ${cvd["office-01"]}\n`);
    // Mistakes, explained.
    expect(await fails("collection", "create", "Bad", "--rule", "colour=red")).toMatch(
      /"colour=red" is not KEY=VALUE with KEY one of hostname, os, vendor, model, tag/,
    );
    expect(await fails("collection", "add", "Lab", cvd["office-01"]!)).toMatch(
      /collection Lab is dynamic[\s\S]*hint: change the CVDs' tags/,
    );
    expect(await fails("collection", "show", "Nope")).toMatch(
      /collection Nope does not exist\n {2}hint: see `strata collection ls`/,
    );
    await ok("collection", "rm", "Pilot");
    expect((await ok("collection", "ls", "--json")).map((c: { name: string }) => c.name)).toEqual([
      "Kiosks",
      "Lab",
      "Lenovo",
    ]);
  });

  it("driver profiles: folders by layer name, rules any-of, edit changes the matching CVDs", async () => {
    // Driver folders are captured on a reference machine; here they are recorded in the server's catalog directly.
    const store = await openSqliteServerStore(path.join(fleet.data, "catalog.db"));
    try {
      for (const [id, name] of [
        ["lay_nvidia", "nvidia-535"],
        ["lay_iwlwifi", "iwlwifi-fw"],
      ] as const) {
        await store.layers.createLayer({ id, name, kind: "driver", description: "", createdAt: new Date() });
      }
    } finally {
      await store.close();
    }
    const p = await ok(
      "driver",
      "profile",
      "create",
      "gpu",
      "--folder",
      "nvidia-535",
      "--rule",
      "modalias=pci:v000010DEd*",
      "--rule",
      "vendor=Dell*,model=XPS*",
      "--json",
    );
    expect(p).toMatchObject({
      name: "gpu",
      folders: ["lay_nvidia"],
      cvds: [cvd["lab-01"], cvd["lab-02"]].sort(),
    });
    expect(p.rules).toEqual([{ modalias: "pci:v000010DEd*" }, { vendor: "Dell*", model: "XPS*" }]);
    const edited = await ok(
      "driver",
      "profile",
      "edit",
      "gpu",
      "--rule",
      "vendor=LENOVO,model=21AH*",
      "--folder",
      "nvidia-535",
      "iwlwifi-fw",
    );
    expect(edited).toBe(
      "updated driver profile gpu; it matches 1 CVD(s) now (their next apply brings the change)\n",
    );
    const shown = await ok("driver", "profile", "show", "gpu");
    expect(shown).toContain("folders: nvidia-535 (lay_nvidia), iwlwifi-fw (lay_iwlwifi)");
    expect(shown).toContain("    vendor=LENOVO,model=21AH*\n");
    expect(shown).toContain(`matches: 1 CVD(s)\n    ${cvd["office-01"]}\n`);
    expect(await ok("driver", "profile", "ls")).toMatch(
      /\ngpu\s+drv_\S+\s+nvidia-535,iwlwifi-fw\s+vendor=LENOVO,model=21AH\*\s+1\n/,
    );
    expect(await fails("driver", "profile", "create", "x", "--folder", "nope", "--rule", "vendor=*")).toMatch(
      /layer nope does not exist/,
    );
    expect(await fails("driver", "profile", "edit", "gpu")).toMatch(
      /nothing to change\n {2}hint: give --name, --folder or --rule/,
    );
    expect(await fails("driver", "profile", "create", "y", "--rule", "vendor=a,vendor=b")).toMatch(
      /vendor is given twice/,
    );
    await ok("driver", "profile", "rm", "gpu");
    expect(await ok("driver", "profile", "ls", "--json")).toEqual([]);
  });

  it("layer rules: shown, exported with --json, replaced with --set, bad files refused", async () => {
    const human = await ok("layer", "rules");
    expect(human).toMatch(/^layer rules \(the built-in defaults\)\n/);
    expect(human).toContain("    /etc/fstab\n");
    const r = await ok("layer", "rules", "--json");
    r.doNotOverride.push({ dir: "/etc/cups", pattern: "printers.conf" });
    const file = path.join(dir, "rules.json");
    writeFileSync(file, JSON.stringify(r));
    const set = await ok("layer", "rules", "--set", file, "--json");
    expect(set).toMatchObject({ isDefault: false, updatedBy: "user:admin" });
    expect(set.doNotOverride.at(-1)).toEqual({ dir: "/etc/cups", pattern: "printers.conf" });
    expect(await ok("layer", "rules")).toMatch(
      /^layer rules \(set by user:admin at \S+\)\n[\s\S]*\/etc\/cups {2}printers\.conf\n/,
    );
    writeFileSync(file, JSON.stringify({ doNotOverride: [{ dir: "etc" }], baseCapture: [] }));
    expect(await fails("layer", "rules", "--set", file)).toMatch(
      /invalid layer rules:[\s\S]*doNotOverride\[0\]/,
    );
    writeFileSync(file, "[1]");
    expect(await fails("layer", "rules", "--set", file)).toMatch(/is not a JSON object/);
    expect((await ok("layer", "rules", "--json")).doNotOverride).toEqual(set.doNotOverride);
  });

  it("`strata agent run` sends changed facts: a machine given a new board moves between collections and profiles", async () => {
    const ep = eps[1]!; // the Dell
    writeFileSync(path.join(ep.root, "sys/class/dmi/id/sys_vendor"), "LENOVO\n");
    writeFileSync(path.join(ep.root, "etc/hostname"), "office-02\n");
    const agent = await fleet.startAgent(ep);
    try {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const e = await ok("endpoints", "show", ep.endpointId!, "--json");
        if (e.facts.dmi?.vendor === "LENOVO") {
          expect(e.hostname).toBe("office-02");
          break;
        }
        if (Date.now() > deadline)
          throw new Error(`facts never arrived: ${JSON.stringify(e.facts)}\n${agent.log}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      await agent.stop();
    }
    expect((await ok("collection", "show", "Lab", "--json")).members).toEqual([cvd["lab-01"]]);
    expect((await ok("collection", "show", "Lenovo", "--json")).members).toEqual(
      [cvd["lab-01"], cvd["lab-02"], cvd["office-01"]].sort(),
    );
  });

  it("every group has --help", async () => {
    for (const args of [["collection"], ["driver", "profile"], ["layer"], ["cvd", "tag"]]) {
      const r = await fleet.strata({}, ...args, "--help");
      expect(r.code, args.join(" ")).toBe(0);
      expect(r.stdout).toContain("Usage: strata");
    }
  });
});
