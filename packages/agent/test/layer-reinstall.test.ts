/**
 * After an OS migration the agent reinstalls the user's packages from the
 * endpoint's own apt sources (layers/reinstall.ts): on a real Debian root,
 * in a chroot, offline (a local flat repository inside the root). Each
 * package ends reinstalled, unavailable or failed with apt's message; dpkg
 * upgrades properly (files the new version dropped are gone); automatic
 * packages stay automatic; no policy-rc.d is left behind.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { aptRepo, buildDeb, debianRoot, debianRootSkipReason, rsyncCopy } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { availableVersion, parseAptPolicy, reinstallUserPackages } from "../src/layers/reinstall.js";

const POLICY = `hello-user:
  Installed: 1.0
  Candidate: 2.0
  Version table:
     2.0 500
        500 file:/srv/repo ./ Packages
 *** 1.0 100
        100 /var/lib/dpkg/status
quiet-user:
  Installed: 1.0
  Candidate: 1.0
  Version table:
 *** 1.0 100
        100 /var/lib/dpkg/status
jq:
  Installed: (none)
  Candidate: (none)
  Version table:
`;

describe("apt-cache policy", () => {
  it("finds the candidate a source other than the dpkg database provides", () => {
    const p = parseAptPolicy(POLICY);
    expect(p.get("hello-user")).toEqual({
      installed: "1.0",
      candidate: "2.0",
      versions: [
        { version: "2.0", sources: ["file:/srv/repo ./ Packages"] },
        { version: "1.0", sources: ["/var/lib/dpkg/status"] },
      ],
    });
    expect(availableVersion(p.get("hello-user"))).toBe("2.0");
    // Installed only: its one version comes from the status file.
    expect(availableVersion(p.get("quiet-user"))).toBeNull();
    expect(availableVersion(p.get("jq"))).toBeNull();
    expect(availableVersion(p.get("absent"))).toBeNull();
  });
});

const bookworm = await debianRoot("bookworm");
const reason =
  debianRootSkipReason("bookworm") ?? (process.getuid?.() === 0 ? undefined : "needs root (chroot)");
const dir = mkdtempSync(path.join(tmpdir(), "strata-reinstall-"));
chmodSync(dir, 0o755);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sh = (root: string, ...argv: string[]) =>
  execFileSync("chroot", [root, ...argv], {
    encoding: "utf8",
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
  });

describe.skipIf(reason !== undefined)(`reinstall on a Debian root (${reason ?? "chroot, offline"})`, () => {
  const root = path.join(dir, "root");
  beforeAll(() => {
    rsyncCopy(bookworm!, root);
    // What the endpoint's user installed on the old release.
    const old = path.join(root, "tmp/old");
    for (const d of [
      {
        name: "hello-user",
        version: "1.0",
        files: {
          "usr/local/bin/hello-user": "#!/bin/sh\necho hello-user 1.0\n",
          "usr/share/hello-user/old.txt": "only in 1.0\n",
        },
      },
      { name: "quiet-user", version: "1.0" },
      { name: "broken-user", version: "1.0" },
      { name: "dep-user", version: "1.0" },
      // A library the new release renames (64-bit time_t: libfoo1 → libfoo1t64), and a program using it.
      { name: "libfoo-user1", version: "1.0", files: { "usr/lib/libfoo-user.so.1": "libfoo 1.0\n" } },
      { name: "foo-app", version: "1.0", control: { Depends: "libfoo-user1" } },
      // Another, whose user needs exactly the old version: the rename would take that program away.
      { name: "libbar-user1", version: "1.0" },
      { name: "bar-app", version: "1.0", control: { Depends: "libbar-user1 (= 1.0)" } },
    ]) {
      const deb = buildDeb(old, d);
      sh(root, "dpkg", "-i", `/tmp/old/${path.basename(deb)}`);
    }
    rmSync(old, { recursive: true, force: true });
    sh(root, "apt-mark", "auto", "dep-user");
    // The new release's repository: hello-user 2.0 (drops old.txt), a broken-user 2.0 whose
    // dependency nobody has, dep-user 2.0; no quiet-user.
    aptRepo(path.join(root, "srv/repo"), [
      {
        name: "hello-user",
        version: "2.0",
        files: {
          "usr/local/bin/hello-user": "#!/bin/sh\necho hello-user 2.0\n",
          "usr/share/hello-user/new.txt": "new in 2.0\n",
        },
      },
      { name: "broken-user", version: "2.0", control: { Depends: "no-such-package (>= 1)" } },
      { name: "dep-user", version: "2.0" },
      // The rename, as Debian 13's t64 libraries are made (amd64: the old name is provided).
      {
        name: "libfoo-user1t64",
        version: "1.0t64",
        control: {
          Provides: "libfoo-user1 (= 1.0t64)",
          Replaces: "libfoo-user1",
          Breaks: "libfoo-user1 (<< 1.0t64)",
        },
        files: { "usr/lib/libfoo-user.so.1": "libfoo 1.0t64\n" },
      },
      {
        name: "libbar-user1t64",
        version: "1.0t64",
        control: {
          Provides: "libbar-user1 (= 1.0t64)",
          Replaces: "libbar-user1",
          Breaks: "libbar-user1 (<< 1.0t64)",
        },
      },
      // Provides quiet-user without replacing it: an alternative, not its successor.
      { name: "quiet-provider", version: "1.0", control: { Provides: "quiet-user" } },
    ]);
    writeFileSync(path.join(root, "etc/apt/sources.list"), "deb [trusted=yes] file:/srv/repo ./\n");
  }, 300_000);

  it("reinstalls what the sources provide, reports the rest, leaves dpkg healthy", async () => {
    const logFile = path.join(dir, "state/logs/reinstall-t1.log");
    const steps: string[] = [];
    const r = await reinstallUserPackages({
      root,
      packages: ["broken-user", "dep-user", "hello-user", "quiet-user"],
      logFile,
      onProgress: (p) => steps.push(p.package ? `${p.step}:${p.package}` : p.step),
    });
    expect(r.update.ok).toBe(true);
    const by = new Map(r.packages.map((p) => [p.name, p]));
    expect(by.get("hello-user")).toEqual({
      name: "hello-user",
      from: "1.0",
      outcome: "reinstalled",
      version: "2.0",
    });
    expect(by.get("dep-user")).toMatchObject({ outcome: "reinstalled", version: "2.0" });
    expect(by.get("quiet-user")).toMatchObject({ from: "1.0", outcome: "unavailable" });
    expect(by.get("broken-user")).toMatchObject({ from: "1.0", outcome: "failed" });
    expect(by.get("broken-user")!.message).toMatch(
      /broken-user : Depends: no-such-package \(>= 1\)[\s\S]*^E: /m,
    );
    // The whole transaction failed on broken-user: each package was tried alone.
    expect(steps).toContain("install:hello-user");

    const hello = sh(root, "dpkg", "-s", "hello-user");
    expect(hello).toMatch(/^Status: install ok installed$/m);
    expect(hello).toMatch(/^Version: 2\.0$/m);
    expect(sh(root, "/usr/local/bin/hello-user").trim()).toBe("hello-user 2.0");
    // dpkg upgraded it: the file 2.0 no longer ships is gone.
    expect(existsSync(path.join(root, "usr/share/hello-user/old.txt"))).toBe(false);
    expect(existsSync(path.join(root, "usr/share/hello-user/new.txt"))).toBe(true);
    expect(sh(root, "dpkg-query", "-W", "quiet-user")).toBe("quiet-user\t1.0\n");
    expect(sh(root, "dpkg-query", "-W", "broken-user")).toBe("broken-user\t1.0\n");
    expect(sh(root, "dpkg", "--audit").trim()).toBe("");
    // An automatic package stays automatic; hello-user was never automatic.
    const auto = sh(root, "apt-mark", "showauto").split("\n");
    expect(auto).toContain("dep-user");
    expect(auto).not.toContain("hello-user");
    expect(existsSync(path.join(root, "usr/sbin/policy-rc.d"))).toBe(false);
    const log = readFileSync(logFile, "utf8");
    expect(log).toMatch(/\$ apt-get .*update/);
    expect(log).toMatch(/no-such-package/);
    expect(r.log).toBe(logFile);

    // Again: everything is at the new release's version already.
    const again = await reinstallUserPackages({ root, packages: ["hello-user"], logFile });
    expect(again.packages).toEqual([
      {
        name: "hello-user",
        from: "2.0",
        outcome: "reinstalled",
        version: "2.0",
        message: expect.any(String),
      },
    ]);
  }, 300_000);

  it("maps a package the new release renamed (t64) to the one that Provides and Replaces it", async () => {
    const logFile = path.join(dir, "state/logs/reinstall-t64.log");
    const r = await reinstallUserPackages({ root, packages: ["libfoo-user1", "foo-app"], logFile });
    expect(r.packages).toEqual([
      {
        name: "libfoo-user1",
        from: "1.0",
        outcome: "reinstalled",
        version: "1.0t64",
        renamedTo: "libfoo-user1t64",
        message: "the new release renamed it libfoo-user1t64",
      },
      expect.objectContaining({ name: "foo-app", from: "1.0", outcome: "unavailable" }),
    ]);
    const t64 = sh(root, "dpkg", "-s", "libfoo-user1t64");
    expect(t64).toMatch(/^Status: install ok installed$/m);
    expect(t64).toMatch(/^Version: 1\.0t64$/m);
    expect(sh(root, "sh", "-c", "dpkg -s libfoo-user1 2>&1 || true")).not.toMatch(
      /^Status: install ok installed$/m,
    );
    expect(readFileSync(path.join(root, "usr/lib/libfoo-user.so.1"), "utf8")).toBe("libfoo 1.0t64\n");
    // The program that uses it stays: the successor provides the old name.
    expect(sh(root, "dpkg", "-s", "foo-app")).toMatch(/^Status: install ok installed$/m);
    expect(sh(root, "dpkg", "--audit").trim()).toBe("");

    // A rename that would remove another package is not done.
    const bar = await reinstallUserPackages({ root, packages: ["libbar-user1"], logFile });
    expect(bar.packages).toEqual([
      expect.objectContaining({ name: "libbar-user1", outcome: "failed", renamedTo: "libbar-user1t64" }),
    ]);
    expect(bar.packages[0]!.message).toMatch(/bar-app/);
    for (const p of ["libbar-user1", "bar-app"])
      expect(sh(root, "dpkg", "-s", p)).toMatch(/^Status: install ok installed$/m);
    expect(sh(root, "sh", "-c", "dpkg -s libbar-user1t64 2>&1 || true")).not.toMatch(/^Status: install/m);
  }, 300_000);

  it("a reinstall stopped with the agent leaves dpkg interrupted; the next run finishes it first", async () => {
    // slow-user 2.0's postinst waits for /tmp/slow-go: the agent stops while dpkg configures it.
    const old = path.join(root, "tmp/old");
    sh(root, "dpkg", "-i", `/tmp/old/${path.basename(buildDeb(old, { name: "slow-user", version: "1.0" }))}`);
    aptRepo(path.join(root, "srv/repo"), [
      {
        name: "slow-user",
        version: "2.0",
        scripts: {
          postinst: "#!/bin/sh\ntouch /tmp/slow-started\nwhile [ ! -e /tmp/slow-go ]; do sleep 0.1; done\n",
        },
      },
    ]);
    const logFile = path.join(dir, "state/logs/reinstall-t3.log");
    const ac = new AbortController();
    const run = reinstallUserPackages({ root, packages: ["slow-user"], logFile, signal: ac.signal });
    const started = path.join(root, "tmp/slow-started");
    for (let i = 0; !existsSync(started); i++) {
      if (i > 1200) throw new Error(`slow-user's postinst never ran:\n${readFileSync(logFile, "utf8")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    ac.abort(new Error("the agent stops"));
    await expect(run).rejects.toThrow("the agent stops");
    // apt, dpkg and the script were stopped with it; no policy-rc.d is left behind.
    expect(sh(root, "dpkg", "--audit")).toMatch(/slow-user/);
    expect(existsSync(path.join(root, "usr/sbin/policy-rc.d"))).toBe(false);

    // The resumed task: dpkg --configure -a first, then the reinstall (2.0 is in place by then).
    writeFileSync(path.join(root, "tmp/slow-go"), "");
    const again = await reinstallUserPackages({ root, packages: ["slow-user"], logFile });
    expect(again.repair).toEqual({ ok: true });
    expect(again.packages).toEqual([
      {
        name: "slow-user",
        from: "2.0",
        outcome: "reinstalled",
        version: "2.0",
        message: "the new release has the same version",
      },
    ]);
    expect(sh(root, "dpkg", "--audit").trim()).toBe("");
    expect(sh(root, "dpkg-query", "-W", "slow-user")).toBe("slow-user\t2.0\n");
  }, 300_000);

  it("a failing apt-get update fails every package, changing nothing", async () => {
    writeFileSync(path.join(root, "etc/apt/sources.list"), "deb [trusted=yes] file:/srv/no-such-repo ./\n");
    const r = await reinstallUserPackages({
      root,
      packages: ["quiet-user"],
      logFile: path.join(dir, "state/logs/reinstall-t2.log"),
    });
    expect(r.update.ok).toBe(false);
    expect(r.packages).toEqual([
      {
        name: "quiet-user",
        from: "1.0",
        outcome: "failed",
        message: expect.stringMatching(/^apt-get update failed: /),
      },
    ]);
    expect(sh(root, "dpkg-query", "-W", "quiet-user")).toBe("quiet-user\t1.0\n");
  }, 300_000);
});
