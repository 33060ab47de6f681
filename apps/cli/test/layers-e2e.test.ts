/**
 * Issue 5's "done when" 1–3, end to end over real HTTPS with the real agent
 * on debootstrapped Debian endpoints:
 * 1. an app layer captured by installing jq with apt-get inside a reference
 *    endpoint's chroot (offline, from a local .deb cache), assigned to an
 *    endpoint on another patch level of the same base: afterwards jq runs,
 *    dpkg says it is installed, `dpkg --audit` is clean, and the endpoint's
 *    own users, packages and files are unchanged;
 * 2. a base layer updated on the reference (jq added) reaches an endpoint
 *    with a user-installed package and user data: the update lands, the
 *    user's package and data survive, a do-not-override path keeps the
 *    endpoint's version;
 * 3. a provoked downgrade shows in the dry-run as blocking, and the apply
 *    is refused with the endpoint unchanged.
 */
import { randomBytes } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { debCache, debianRoot, debianRootSkipReason, rsyncCopy, rsyncItemize } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Endpoint, Fleet, installUserPackage } from "./fleet-harness.js";
import { isRoot, sh } from "./helpers.js";

const debian = await debianRoot();
const debs = await debCache("jq-bookworm", ["jq", "libjq1", "libonig5"]);
const reason = debianRootSkipReason() ?? debs.reason ?? (isRoot ? undefined : "needs root (chroot)");
const dir = mkdtempSync(path.join(tmpdir(), "strata-layers-e2e-"));
chmodSync(dir, 0o755);

/** Install the cached jq packages inside ROOT with apt-get, offline (the .debs are apt's archive cache). */
function aptInstallJq(root: string): void {
  const inRoot = path.join(root, "tmp/debs");
  mkdirSync(inRoot, { recursive: true });
  for (const f of debs.cache!.files) cpSync(f, path.join(inRoot, path.basename(f)));
  const files = debs.cache!.files.map((f) => `/tmp/debs/${path.basename(f)}`).join(" ");
  sh(
    `chroot ${root} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-download -o Dir::Cache::Archives=/tmp/debs ${files}`,
  );
}

const lines = (t: string) => t.split("\n").filter((l) => l.trim() !== "");

/** Lines of `rsync -n -i` from A to B outside the given paths (relative, regexp). */
function diffOutside(a: string, b: string, ignore: RegExp): string[] {
  return rsyncItemize(a, b)
    .split("\n")
    .filter((l) => l.trim() !== "" && !ignore.test(l));
}

describe.skipIf(reason !== undefined)(`layers end to end (${reason ?? "Debian 12, apt, chroot"})`, () => {
  const fleet = new Fleet(dir);
  let ref: Endpoint;
  let ws: Endpoint;
  let ws2: Endpoint;
  let base1 = 0;

  beforeAll(async () => {
    await fleet.start();
    ref = fleet.makeEndpoint("ref", debian!);
    ws = fleet.makeEndpoint("ws", debian!);
    ws2 = fleet.makeEndpoint("ws2", debian!);
    // ws runs another patch level of the same base: its own base-files version.
    const st = path.join(ws.root, "var/lib/dpkg/status");
    writeFileSync(
      st,
      readFileSync(st, "utf8").replace(
        /(Package: base-files\n(?:.+\n)*?Version: )(.+)\n/,
        (_m, a: string, v: string) => `${a}${v}+patch1\n`,
      ),
    );
    // ws2's user installed software of her own, and keeps her own fstab.
    installUserPackage(dir, ws2.root, "hello-user", "1.0");
    writeFileSync(path.join(ws2.root, "etc/fstab"), "# ws2's own disks\nUUID=1234 / ext4 defaults 0 1\n");
    await fleet.enroll([ref, ws, ws2]);
    for (const ep of [ref, ws, ws2]) await fleet.upload(ep);
    await fleet.ok("cvd", "reference", ref.cvd!, "--json");
  }, 900_000);

  afterAll(async () => {
    await fleet.close();
    sh(`rm -rf ${dir}`);
  });

  it("captures a base layer from the reference CVD without its user area or identity", async () => {
    const r = await fleet.ok("layer", "capture-base", "--name", "debian12", "--cvd", ref.cvd!, "--json");
    base1 = r.version.version;
    expect(r.layer.kind).toBe("base");
    expect(r.version.os).toEqual({ id: "debian", versionId: "12" });
    // Every dpkg stanza of the reference is in the manifest; no file of /home is in the tree.
    const show = await fleet.ok("layer", "show", "debian12", "--json");
    expect(show.versions.at(-1).stats.packages).toBeGreaterThan(80);
    const ls = await fleet.ok("layer", "ls", "--json");
    expect(ls.map((l: { name: string }) => l.name)).toContain("debian12");
  }, 300_000);

  it("1. captures jq installed with apt-get and applies it to another endpoint", async () => {
    await fleet.ok("agent", "capture", "start", "--state", ref.state, "--json");
    aptInstallJq(ref.root);
    const cap = await fleet.ok(
      "agent",
      "capture",
      "finish",
      "--state",
      ref.state,
      "--name",
      "jq",
      "--label",
      "1.6",
      "--json",
    );
    expect(cap.layer.kind).toBe("app");
    expect(cap.diff.added).toEqual(expect.arrayContaining(["/usr/bin/jq"]));
    expect(cap.version.stats.packages).toBe(3);
    // Logs, caches and apt's own state are not part of the layer.
    expect(
      cap.diff.added.concat(cap.diff.changed).filter((p: string) => /^\/var\/(log|cache)\//.test(p)),
    ).toEqual([]);

    const before = path.join(dir, "ws-before");
    rsyncCopy(ws.root, before);
    await fleet.ok("layer", "assign", "--app", "jq", "--cvd", ws.cvd!, "--json");
    const dry = await fleet.ok("cvd", "dry-run", ws.cvd!, "--json");
    expect(dry.blocked).toBe(false);
    expect(dry.packages.added.sort()).toEqual(["jq", "libjq1", "libonig5"]);

    const task = await fleet.ok("cvd", "apply", ws.cvd!, "--json");
    expect(task.kind).toBe("apply");
    const agent = await fleet.startAgent(ws);
    const done = await fleet.waitTask(task.id, (t) => t.state === "done", "apply jq");
    await agent.stop();

    expect(sh(`chroot ${ws.root} jq --version`).trim()).toBe("jq-1.6");
    expect(sh(`chroot ${ws.root} dpkg -s jq`)).toMatch(/Status: install ok installed/);
    expect(sh(`chroot ${ws.root} dpkg --audit`).trim()).toBe("");
    // The endpoint's own patch level, users and files are kept.
    expect(sh(`chroot ${ws.root} dpkg-query -W -f '\${Version}' base-files`)).toMatch(/\+patch1$/);
    expect(readFileSync(path.join(ws.root, "etc/passwd"), "utf8")).toMatch(/^alice:x:1000:1000:/m);
    expect(diffOutside(path.join(before, "home"), path.join(ws.root, "home"), /^$/)).toEqual([]);
    expect(readFileSync(path.join(ws.root, "etc/machine-id"))).toEqual(
      readFileSync(path.join(before, "etc/machine-id")),
    );
    // The chunks of jq came from the server; the safety snapshot was taken first.
    expect(done.result.safetySnapshot).toMatch(/^[0-9a-f]{64}$/);
    expect(done.result.bytesReceived).toBeGreaterThan(0);
  }, 900_000);

  it("3. a provoked downgrade is blocking in the dry-run and the apply is refused", async () => {
    // The user of ws2 runs a newer libonig5 than the layer's (a stanza says so).
    const st = path.join(ws2.root, "var/lib/dpkg/status");
    const orig = readFileSync(st, "utf8");
    appendFileSync(
      st,
      "\nPackage: libonig5\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 600\nMaintainer: Test <t@example.org>\nArchitecture: amd64\nMulti-Arch: same\nVersion: 6.9.9-1\nDescription: regular expressions library\n",
    );
    try {
      await provokedDowngrade();
    } finally {
      writeFileSync(st, orig);
      await fleet.upload(ws2);
    }
  }, 900_000);

  async function provokedDowngrade(): Promise<void> {
    await fleet.upload(ws2);
    await fleet.ok("layer", "assign", "--app", "jq", "--cvd", ws2.cvd!, "--json");
    // A blocked dry-run exits 1 (scripts gate an apply on it) and still prints the report.
    const r = await fleet.strata({}, "cvd", "dry-run", ws2.cvd!, "--json");
    expect(r.code).toBe(1);
    const dry = JSON.parse(r.stdout);
    expect(dry.blocked).toBe(true);
    expect(dry.problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ kind: "downgrade", blocking: true, subject: "libonig5" }),
      ]),
    );
    const before = path.join(dir, "ws2-before");
    rsyncCopy(ws2.root, before);
    const task = await fleet.ok("cvd", "apply", ws2.cvd!, "--json");
    const agent = await fleet.startAgent(ws2);
    await expect(fleet.waitTask(task.id, (t) => t.state === "done", "blocked apply")).rejects.toThrow(
      /CONFLICT.*libonig5/s,
    );
    await agent.stop();
    // Nothing changed on the endpoint but what the agent keeps for itself.
    expect(diffOutside(before, ws2.root, /^$/)).toEqual([]);
    expect(existsSync(path.join(ws2.root, "usr/bin/jq"))).toBe(false);
  }

  it("2. a base layer update lands on an endpoint and keeps its user package, data and do-not-override paths", async () => {
    // ws2 gets the base as captured first (it owns the OS from now on).
    await fleet.ok("layer", "assign", "--base", `debian12@${base1}`, "--cvd", ws2.cvd!, "--json");
    let task = await fleet.ok("cvd", "apply", ws2.cvd!, "--json");
    let agent = await fleet.startAgent(ws2);
    const d1 = await fleet.waitTask(task.id, (t) => t.state === "done", "apply base v1");
    await agent.stop();
    // ws2 holds every file of the base already: next to nothing crosses the network.
    expect(d1.result.bytesReceived).toBeLessThan(1_000_000);
    expect(sh(`chroot ${ws2.root} dpkg -s hello-user`)).toMatch(/Status: install ok installed/);

    // The reference gets jq (a newer base) and another fstab; a new base version is captured.
    writeFileSync(path.join(ref.root, "etc/fstab"), "# the reference's disks\n");
    writeFileSync(path.join(ref.root, "etc/motd"), "Welcome to the new base\n");
    await fleet.upload(ref);
    const v2 = await fleet.ok("layer", "capture-base", "--name", "debian12", "--cvd", ref.cvd!, "--json");
    expect(v2.version.version).toBe(base1 + 1);

    const before = path.join(dir, "ws2-before-v2");
    rsyncCopy(ws2.root, before);
    writeFileSync(path.join(ws2.root, "home/alice/new-today.txt"), randomBytes(5000));
    await fleet.ok("layer", "assign", "--base", "debian12", "--cvd", ws2.cvd!, "--json");
    // At the reboot point: staged and committed now, on disk at the agent's next start.
    task = await fleet.ok("cvd", "apply", ws2.cvd!, "--at-restart", "--json");
    agent = await fleet.startAgent(ws2);
    const d2 = await fleet.waitTask(task.id, (t) => t.state === "done", "apply base v2");
    await agent.stop();
    expect(d2.result.pending).toBe(true);
    expect(existsSync(path.join(ws2.root, "usr/bin/jq"))).toBe(false);
    agent = await fleet.startAgent(ws2);
    await agent.stop();
    // Rolled forward at start, then ldconfig ran (jq finds libjq.so.1 through the linker cache).
    expect(agent.log).toMatch(/pending restore checked.*rolled-forward.*ldconfig/);
    // Only what ws2 lacks crossed the network: jq and its libraries (~1.2 MB unpacked), not the base.
    expect(d2.result.bytesReceived).toBeGreaterThan(100_000);
    expect(d2.result.bytesReceived).toBeLessThan(3_000_000);

    expect(sh(`chroot ${ws2.root} jq --version`).trim()).toBe("jq-1.6");
    expect(readFileSync(path.join(ws2.root, "etc/motd"), "utf8")).toBe("Welcome to the new base\n");
    expect(sh(`chroot ${ws2.root} dpkg -s hello-user`)).toMatch(/Status: install ok installed/);
    expect(sh(`chroot ${ws2.root} hello-user`).trim()).toBe("hello-user 1.0");
    expect(sh(`chroot ${ws2.root} dpkg --audit`).trim()).toBe("");
    expect(readFileSync(path.join(ws2.root, "etc/fstab"), "utf8")).toMatch(/ws2's own disks/);
    expect(readFileSync(path.join(ws2.root, "etc/passwd"), "utf8")).toMatch(/^alice:x:1000:1000:/m);
    expect(existsSync(path.join(ws2.root, "home/alice/new-today.txt"))).toBe(true);
    expect(
      diffOutside(
        path.join(before, "home"),
        path.join(ws2.root, "home"),
        /new-today\.txt|^\.d\S* \.\/$|alice\/$/,
      ),
    ).toEqual([]);
  }, 900_000);
  it("enforce repairs drift: keep leaves user-installed software, remove takes it away", async () => {
    const r = ws2.root;
    rmSync(path.join(r, "usr/bin/jq"));
    writeFileSync(path.join(r, "etc/motd"), "drifted\n");
    mkdirSync(path.join(r, "opt/tool-x"), { recursive: true });
    writeFileSync(path.join(r, "opt/tool-x/run"), "#!/bin/sh\n", { mode: 0o755 });
    const homeBefore = path.join(dir, "ws2-home-enforce");
    rsyncCopy(path.join(r, "home"), homeBefore);

    let task = await fleet.ok("cvd", "apply", ws2.cvd!, "--enforce", "keep", "--json");
    let agent = await fleet.startAgent(ws2);
    await fleet.waitTask(task.id, (t) => t.state === "done", "enforce keep");
    await agent.stop();
    expect(sh(`chroot ${r} jq --version`).trim()).toBe("jq-1.6");
    expect(readFileSync(path.join(r, "etc/motd"), "utf8")).toBe("Welcome to the new base\n");
    expect(existsSync(path.join(r, "opt/tool-x/run"))).toBe(true);
    expect(sh(`chroot ${r} dpkg -s hello-user`)).toMatch(/Status: install ok installed/);

    const dry = await fleet.ok("cvd", "dry-run", ws2.cvd!, "--enforce", "remove", "--json");
    expect(dry.packages.removed).toContain("hello-user");
    task = await fleet.ok("cvd", "apply", ws2.cvd!, "--enforce", "remove", "--json");
    agent = await fleet.startAgent(ws2);
    await fleet.waitTask(task.id, (t) => t.state === "done", "enforce remove");
    await agent.stop();
    expect(existsSync(path.join(r, "opt/tool-x"))).toBe(false);
    expect(existsSync(path.join(r, "usr/local/bin/hello-user"))).toBe(false);
    expect(sh(`chroot ${r} dpkg-query -W hello-user 2>&1 || true`)).toMatch(/no packages found/);
    expect(sh(`chroot ${r} dpkg --audit`).trim()).toBe("");
    // The user area is sacred, whatever the enforcement.
    expect(lines(rsyncItemize(homeBefore, path.join(r, "home")))).toEqual([]);
    expect(readFileSync(path.join(r, "etc/fstab"), "utf8")).toMatch(/ws2's own disks/);
  }, 900_000);
});
