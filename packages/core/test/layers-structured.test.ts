import {
  BASE_CAPTURE_RULES,
  CAPTURE_NOISE_RULES,
  compileRules,
  DEFAULT_DO_NOT_OVERRIDE,
  isStrataError,
  isStructuredPath,
  ruleMatcher,
  STRUCTURED_FILE_KINDS,
  STRUCTURED_FILES,
} from "@strata/core";
import { describe, expect, it } from "vitest";

describe("structured files", () => {
  it("lists the five files, their backups and status-old", () => {
    for (const p of [
      "/var/lib/dpkg/status",
      "/var/lib/dpkg/status-old",
      "/etc/passwd",
      "/etc/passwd-",
      "/etc/group-",
      "/etc/shadow",
      "/etc/gshadow-",
    ])
      expect(isStructuredPath(p)).toBe(true);
    for (const p of ["/etc/passwd.bak", "/etc", "/var/lib/dpkg/status.d", "/etc/subuid", "/var/lib/dpkg"])
      expect(isStructuredPath(p)).toBe(false);
    expect(STRUCTURED_FILES).toHaveLength(10);
    expect(Object.keys(STRUCTURED_FILE_KINDS).every((p) => isStructuredPath(p))).toBe(true);
  });
});

describe("rule lists", () => {
  const noise = ruleMatcher(CAPTURE_NOISE_RULES);
  const base = ruleMatcher(BASE_CAPTURE_RULES);
  const dno = ruleMatcher(DEFAULT_DO_NOT_OVERRIDE);

  it("capture noise covers logs, caches, dpkg bookkeeping and the structured files", () => {
    for (const p of [
      "/var/log/apt/history.log",
      "/var/cache/apt/pkgcache.bin",
      "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
      "/var/lib/apt/extended_states",
      "/var/lib/dpkg/lock",
      "/var/lib/dpkg/lock-frontend",
      "/var/lib/dpkg/triggers/File",
      "/var/lib/dpkg/status-old",
      "/var/lib/dpkg/status",
      "/etc/ld.so.cache",
      "/etc/shadow-",
      "/tmp/apt-key.x1",
    ])
      expect(noise(p), p).toBe(true);
  });

  it("capture noise keeps what an install really adds", () => {
    for (const p of [
      "/usr/bin/jq",
      "/var/lib/dpkg/info/jq.list",
      // A `lock*` name pattern would hide this package's dpkg files.
      "/var/lib/dpkg/info/lockfile-progs.list",
      "/var/lib/apt",
      "/var/log",
      "/etc/ld.so.conf.d/x86_64-linux-gnu.conf",
      "/etc/passwd.d/x",
    ])
      expect(noise(p), p).toBe(false);
  });

  it("base capture drops identity, logs and structured files but keeps the system", () => {
    for (const p of [
      "/etc/machine-id",
      "/var/lib/dbus/machine-id",
      "/etc/ssh/ssh_host_ed25519_key",
      "/etc/ssh/ssh_host_rsa_key.pub",
      "/etc/hostname",
      "/etc/hosts",
      "/var/log/syslog",
      "/var/tmp/x",
      "/var/backups/dpkg.status.0",
      "/etc/passwd",
    ])
      expect(base(p), p).toBe(true);
    for (const p of [
      "/etc/ssh/sshd_config",
      "/usr/bin/bash",
      "/etc/hosts.allow",
      "/var/log",
      "/etc/machine-info",
    ])
      expect(base(p), p).toBe(false);
  });

  it("do-not-override protects per-machine disk, network and boot config", () => {
    for (const p of [
      "/etc/fstab",
      "/etc/crypttab",
      "/boot/grub/grub.cfg",
      "/boot/efi/EFI/debian/grubx64.efi",
      "/etc/NetworkManager/system-connections/office.nmconnection",
      "/etc/ssh/ssh_host_ecdsa_key",
    ])
      expect(dno(p), p).toBe(true);
    for (const p of ["/etc/default/grub", "/boot/vmlinuz-6.1.0-13-amd64", "/etc/fstab.d", "/usr/bin/jq"])
      expect(dno(p), p).toBe(false);
  });

  it("ruleMatcher takes the string form and macros, and refuses bad rules", () => {
    const m = ruleMatcher(["/opt/**", "%anyuserhome%/.mozilla", "%agentstate%"], { homes: ["/srv/bob"] });
    expect(m("/opt/app/bin")).toBe(true);
    expect(m("/opt")).toBe(false);
    expect(m("/srv/bob/.mozilla/prefs.js")).toBe(true);
    expect(m("/home/alice/.mozilla")).toBe(true);
    // No agent state directory given: %agentstate% matches nothing.
    expect(m("/var/lib/strata-agent/cred")).toBe(false);
    const e = (() => {
      try {
        ruleMatcher([{ dir: "relative" }]);
      } catch (err) {
        return err;
      }
    })();
    expect(isStrataError(e, "INVALID_ARGUMENT")).toBe(true);
    expect((e as Error).message).toContain("rules[0].dir");
  });

  it("compileRules answers walker questions", () => {
    const c = compileRules(CAPTURE_NOISE_RULES);
    expect(c.coversBelow("/var/log")).toBe(true);
    expect(c.coversBelow("/var/lib/dpkg")).toBe(false);
    expect(c.mayMatchBelow("/var/lib")).toBe(true);
    expect(c.mayMatchBelow("/opt")).toBe(false);
    // depmod's index below each kernel's module tree: only that way is read.
    expect(c.mayMatchBelow("/usr/lib/modules")).toBe(true);
    expect(c.mayMatchBelow("/usr/lib/x86_64-linux-gnu")).toBe(false);
    expect(c.find("/var/lib/dpkg/lock")).toEqual({ dir: "/var/lib/dpkg/lock" });
  });
});
