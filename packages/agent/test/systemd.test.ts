import { spawnSync } from "node:child_process";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, tmp } from "./helpers.js";

const UNITS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../dist/systemd");
const units = ["strata-agent.service", "strata-server.service"];
const hasAnalyze = spawnSync("systemd-analyze", ["--version"]).status === 0;

afterAll(cleanup);

/** The unit's settings, section by section (last value wins, as for systemd). */
function parseUnit(text: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) {
      section = m[1] as string;
      out[section] ??= {};
    } else {
      const i = line.indexOf("=");
      (out[section] as Record<string, string>)[line.slice(0, i)] = line.slice(i + 1);
    }
  }
  return out;
}

describe("systemd units", () => {
  it("run the agent idle, restarted on failure, in its state directory", () => {
    const u = parseUnit(readFileSync(path.join(UNITS, "strata-agent.service"), "utf8"));
    expect(u.Service).toMatchObject({
      ExecStart: "/usr/local/bin/strata agent run --state /var/lib/strata-agent",
      Nice: "19",
      IOSchedulingClass: "idle",
      CPUSchedulingPolicy: "idle",
      Restart: "on-failure",
      StateDirectory: "strata-agent",
      StateDirectoryMode: "0700",
      // Reads the whole filesystem: no user switch, home readable, DAC bypass for reading.
      ProtectHome: "read-only",
    });
    expect(u.Service?.User).toBeUndefined();
    expect(u.Service?.CapabilityBoundingSet).toContain("CAP_DAC_READ_SEARCH");
    expect(u.Service?.InaccessiblePaths).toBeUndefined();
    expect(u.Install?.WantedBy).toBe("multi-user.target");
  });

  it("run the server as its own user in its data directory, without capabilities", () => {
    const u = parseUnit(readFileSync(path.join(UNITS, "strata-server.service"), "utf8"));
    expect(u.Service).toMatchObject({
      User: "strata",
      ExecStart: "/usr/local/bin/strata server --data /var/lib/strata",
      StateDirectory: "strata",
      Restart: "on-failure",
      CapabilityBoundingSet: "",
      NoNewPrivileges: "yes",
      ProtectSystem: "strict",
      ProtectHome: "yes",
    });
  });

  it.skipIf(!hasAnalyze)("pass systemd-analyze verify without a warning", () => {
    // verify insists that ExecStart's binary exists: point it at a stand-in.
    const dir = tmp();
    const bin = path.join(dir, "strata");
    writeFileSync(bin, "#!/bin/sh\n");
    chmodSync(bin, 0o755);
    const files = units.map((name) => {
      const f = path.join(dir, name);
      writeFileSync(f, readFileSync(path.join(UNITS, name), "utf8").replaceAll("/usr/local/bin/strata", bin));
      return f;
    });
    const r = spawnSync("systemd-analyze", ["verify", ...files], { encoding: "utf8", cwd: dir });
    const ours = `${r.stdout}\n${r.stderr}`.split("\n").filter((l) => l.includes("strata-"));
    expect(ours).toEqual([]);
    expect(r.status).toBe(0);
  });
  if (!hasAnalyze) it.skip("systemd-analyze verify: skipped, systemd-analyze is not installed", () => {});
});
