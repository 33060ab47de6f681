import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  FactsReporter,
  factsChanged,
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
    const root = fakeRoot(dir());
    const { rootFs, ...f } = gatherFacts({
      root,
      agentVersion: "0.1.0",
      agentStateDir: "/var/lib/strata-agent",
    });
    // The filesystem holding the root: what a layer apply may write there.
    expect(rootFs).toMatchObject({ path: root, blockSize: expect.any(Number) });
    expect(rootFs!.freeBytes).toBeGreaterThan(0);
    expect(rootFs!.totalBytes).toBeGreaterThanOrEqual(rootFs!.freeBytes);
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

  it("reads the DMI vendor and model and the PCI and USB modaliases under the root, each once, bounded", () => {
    const root = fakeRoot(dir());
    const put = (rel: string, text: string) => {
      mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
      writeFileSync(path.join(root, rel), text);
    };
    put("sys/class/dmi/id/sys_vendor", "LENOVO\n");
    put("sys/class/dmi/id/product_name", "20XW0026GE\n");
    put(
      "sys/bus/pci/devices/0000:00:02.0/modalias",
      "pci:v00008086d00009A49sv000017AAsd000022D8bc03sc00i00\n",
    );
    put(
      "sys/bus/pci/devices/0000:00:14.3/modalias",
      "pci:v00008086d0000A0F0sv00008086sd00000244bc02sc80i00\n",
    );
    // Two identical functions report one modalias; a device without one is skipped.
    put(
      "sys/bus/pci/devices/0000:00:1f.0/modalias",
      "pci:v00008086d0000A082sv000017AAsd000022D8bc06sc01i00\n",
    );
    put(
      "sys/bus/pci/devices/0000:00:1f.1/modalias",
      "pci:v00008086d0000A082sv000017AAsd000022D8bc06sc01i00\n",
    );
    mkdirSync(path.join(root, "sys/bus/pci/devices/0000:00:1f.2"), { recursive: true });
    put("sys/bus/usb/devices/1-3:1.0/modalias", "usb:v06CBp00FCd0000dcFFdsc10dpFFicFFisc00ip00in00\n");
    put("sys/bus/usb/devices/usb1/product", "xHCI Host Controller\n");
    const f = gatherFacts({ root });
    expect(f.dmi).toEqual({ vendor: "LENOVO", model: "20XW0026GE" });
    expect(f.modaliases).toEqual([
      "pci:v00008086d00009A49sv000017AAsd000022D8bc03sc00i00",
      "pci:v00008086d0000A0F0sv00008086sd00000244bc02sc80i00",
      "pci:v00008086d0000A082sv000017AAsd000022D8bc06sc01i00",
      "usb:v06CBp00FCd0000dcFFdsc10dpFFicFFisc00ip00in00",
    ]);
    // PCI devices come first when there are more than the protocol takes.
    for (let i = 0; i < 70; i++) {
      put(`sys/bus/usb/devices/2-${i}:1.0/modalias`, `usb:v1234p${i.toString(16).padStart(4, "0")}\n`);
    }
    const many = gatherFacts({ root }).modaliases ?? [];
    expect(many).toHaveLength(64);
    expect(many.slice(0, 3).every((m) => m.startsWith("pci:"))).toBe(true);
    // A root without /sys/class/dmi or /sys/bus reports neither.
    const bare = gatherFacts({ root: fakeRoot(dir()) });
    expect(bare.dmi).toBeUndefined();
    expect(bare.modaliases).toBeUndefined();
  });

  it("FactsReporter sends at the first report, then only when due and changed; a failed send is retried", async () => {
    const root = fakeRoot(dir());
    let now = 0;
    const sent: unknown[] = [];
    let fail = false;
    const r = new FactsReporter({
      gather: () => gatherFacts({ root }),
      send: async (f) => {
        if (fail) throw new Error("server down");
        sent.push(f);
      },
      everyMs: 1000,
      now: () => now,
    });
    expect(await r.report()).toBe(true);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ hostname: "web-1", machineId: "0f6b3c2a9d8e4f1a0b2c3d4e5f607182" });
    now = 999;
    expect(await r.report()).toBe(false); // not due
    now = 1000;
    expect(await r.report()).toBe(false); // due, unchanged
    writeFileSync(path.join(root, "etc/hostname"), "web-2\n");
    now = 1500;
    expect(await r.report()).toBe(false); // changed, but not due
    fail = true;
    now = 2000;
    await expect(r.report()).rejects.toThrow("server down");
    fail = false;
    now = 2001; // the failed send is tried again at once
    expect(await r.report()).toBe(true);
    expect(sent).toHaveLength(2);
    expect(sent[1]).toMatchObject({ hostname: "web-2" });
  });

  it("FactsReporter: a report while one is in flight waits for it and sends nothing itself", async () => {
    const root = fakeRoot(dir());
    const sent: unknown[] = [];
    let release = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const r = new FactsReporter({
      gather: () => gatherFacts({ root }),
      send: async (f) => {
        await gate;
        sent.push(f);
      },
    });
    const first = r.report();
    const second = r.report();
    release();
    expect(await first).toBe(true);
    expect(await second).toBe(false);
    expect(sent).toHaveLength(1);
  });

  it("counts a change of free space only when it is 1/64 of the filesystem or more", () => {
    const f = gatherFacts({ root: fakeRoot(dir()) });
    const fs = {
      path: "/",
      freeBytes: 64_000,
      totalBytes: 640_000,
      blockSize: 4096,
      at: "2026-11-26T10:00:00.000Z",
    };
    const at = (freeBytes: number, more: object = {}) => ({ ...f, rootFs: { ...fs, freeBytes, ...more } });
    expect(factsChanged(at(64_000), at(64_000 + 9_999, { at: "2026-11-26T11:00:00.000Z" }))).toBe(false);
    expect(factsChanged(at(64_000), at(64_000 - 10_000))).toBe(true);
    expect(factsChanged(at(64_000), at(64_000, { totalBytes: 1_280_000 }))).toBe(true);
    expect(factsChanged(at(64_000), { ...at(64_000), hostname: "other" })).toBe(true);
    const { rootFs: _gone, ...without } = f;
    expect(factsChanged(at(64_000), without)).toBe(true);
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
