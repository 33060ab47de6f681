import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  gatherFacts,
  parseOsRelease,
  readCredential,
  readState,
  writeCredential,
  writeFileAtomic,
  writeState,
} from "../src/index.js";
import { fakeRoot } from "./fixtures.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "strata-agent-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const dir = () => path.join(tmp, `d${n++}`);

describe("facts", () => {
  it("reads hostname, machine id, OS, kernel, CPU, memory, disks and MACs from a root", () => {
    const f = gatherFacts({
      root: fakeRoot(dir()),
      agentVersion: "0.1.0",
      agentStateDir: "/var/lib/strata-agent",
    });
    expect(f).toEqual({
      hostname: "web-1",
      machineId: "0f6b3c2a9d8e4f1a0b2c3d4e5f607182",
      os: { id: "debian", versionId: "12", prettyName: "Debian GNU/Linux 12 (bookworm)" },
      kernel: "6.1.0-18-amd64",
      arch: os.machine(),
      cpu: { model: "Intel(R) Xeon(R) Gold 6130", count: 2 },
      memoryBytes: 8048132 * 1024,
      disks: [{ name: "sda", sizeBytes: 209715200 * 512, model: "QEMU HARDDISK" }],
      macs: ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"],
      agentVersion: "0.1.0",
      agentStateDir: "/var/lib/strata-agent",
    });
  });

  it("tolerates an empty root: what the kernel knows comes from node:os, the rest is left out", () => {
    const root = dir();
    mkdirSync(root);
    const f = gatherFacts({ root });
    expect(f.machineId).toBeNull();
    expect(f.hostname).toBe("localhost");
    expect(f.os).toBeUndefined();
    expect(f.kernel).toBe(os.release());
    expect(f.memoryBytes).toBe(os.totalmem());
    expect(f.disks).toEqual([]);
    expect(f.macs).toEqual([]);
  });

  it("rejects a malformed machine id and cuts oversized strings and lists to the protocol's bounds", () => {
    const root = fakeRoot(dir(), { machineId: "not-a-machine-id", hostname: "h".repeat(1000) });
    for (let i = 0; i < 70; i++) {
      mkdirSync(path.join(root, `sys/class/net/e${i}`), { recursive: true });
      writeFileSync(
        path.join(root, `sys/class/net/e${i}/address`),
        `02:00:00:00:00:${i.toString(16).padStart(2, "0")}\n`,
      );
    }
    const f = gatherFacts({ root });
    expect(f.machineId).toBeNull();
    expect(f.hostname).toHaveLength(256);
    expect(f.macs).toHaveLength(64);
  });

  it("parses os-release quoting", () => {
    expect(parseOsRelease('A="x \\"y\\""\nB=\'z\'\nC=plain\n# comment\nbad line')).toEqual({
      A: 'x "y"',
      B: "z",
      C: "plain",
    });
  });
});

describe("state directory", () => {
  it("is 0700; the credential 0600; state.json round-trips; writes leave no temporary files", () => {
    const d = path.join(dir(), "state");
    expect(readState(d)).toBeNull();
    expect(readCredential(d)).toBeNull();
    writeCredential(d, "sep_secret");
    writeState(d, {
      version: 1,
      serverUrl: "https://s:8640",
      fingerprint: "AB",
      endpointId: "ep_1",
      enrolledAt: "t",
    });
    expect(statSync(d).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(d, "credential")).mode & 0o777).toBe(0o600);
    expect(readCredential(d)).toBe("sep_secret");
    expect(readState(d)).toMatchObject({ endpointId: "ep_1", fingerprint: "AB" });
    writeCredential(d, "sep_other");
    expect(readCredential(d)).toBe("sep_other");
    expect(readdirSync(d).sort()).toEqual(["credential", "state.json"]);
  });

  it("tightens an existing, too open directory and refuses a state file it does not understand", () => {
    const d = dir();
    mkdirSync(d, { mode: 0o755 });
    writeCredential(d, "sep_x");
    expect(statSync(d).mode & 0o777).toBe(0o700);
    writeFileSync(path.join(d, "state.json"), "{not json");
    expect(() => readState(d)).toThrow(/cannot read/);
    writeFileSync(path.join(d, "state.json"), '{"version":2}');
    expect(() => readState(d)).toThrow(/does not understand|understands/);
  });

  it("an atomic write that fails leaves the old file whole", () => {
    const d = dir();
    mkdirSync(d);
    const f = path.join(d, "file");
    writeFileAtomic(f, "old", 0o600);
    mkdirSync(path.join(d, "sub"));
    expect(() => writeFileAtomic(path.join(d, "sub"), "new", 0o600)).toThrow(); // rename over a directory fails
    expect(readFileSync(f, "utf8")).toBe("old");
    expect(readdirSync(d).sort()).toEqual(["file", "sub"]);
  });
});
