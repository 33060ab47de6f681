/**
 * The agent's half of a layer apply before the engine runs
 * (layers/apply.ts): merged structured files from the live root, the
 * removal predicate, the paths no layer may touch, and the dry-run
 * problems that block.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { blockedError, prepareLayerApply, removalPredicate, runTriggers } from "../src/layers/apply.js";
import { applyPlanOf } from "./fixtures.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-layer-prepare-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const stanza = (name: string, version: string, extra = "") =>
  `Package: ${name}\nStatus: install ok installed\nPriority: optional\nSection: utils\nInstalled-Size: 10\nMaintainer: T <t@example.org>\nArchitecture: amd64\nVersion: ${version}\n${extra}Description: ${name}\n`;

function root(name: string, status: string): string {
  const r = path.join(dir, name);
  mkdirSync(path.join(r, "var/lib/dpkg"), { recursive: true });
  mkdirSync(path.join(r, "etc"), { recursive: true });
  writeFileSync(path.join(r, "var/lib/dpkg/status"), status);
  writeFileSync(
    path.join(r, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
  );
  writeFileSync(path.join(r, "etc/group"), "root:x:0:\nalice:x:1000:\n");
  writeFileSync(
    path.join(r, "etc/shadow"),
    "root:*:19000:0:99999:7:::\nalice:$y$secret:19000:0:99999:7:::\n",
  );
  return r;
}

const plan = applyPlanOf;

const jq = {
  name: "jq",
  arch: "amd64",
  version: "1.6-2.1",
  stanza: stanza("jq", "1.6-2.1", "Depends: libc6\n").trimEnd(),
};

describe("prepareLayerApply", () => {
  it("merges the layer's packages and accounts into the endpoint's own files", () => {
    const r = root("merge", `${stanza("libc6", "2.36-9")}\n${stanza("userpkg", "1.0")}\n`);
    const p = prepareLayerApply(
      plan({
        packages: [jq],
        accounts: {
          passwd: ["_jq:x:998:998::/nonexistent:/usr/sbin/nologin"],
          group: ["_jq:x:998:"],
          shadow: ["_jq:!:19000::::::"],
          gshadow: [],
        },
      }),
      r,
    );
    const status = p.literals.get("/var/lib/dpkg/status")!.toString();
    expect(status).toMatch(/^Package: jq$/m);
    expect(status).toMatch(/^Package: userpkg$/m);
    expect(status).toMatch(/^Package: libc6$/m);
    expect(p.packages.added).toEqual(["jq"]);
    expect(p.userInstalled).toContain("userpkg");
    const passwd = p.literals.get("/etc/passwd")!.toString();
    // The endpoint's lines stay verbatim, the layer's new user is added.
    expect(passwd).toBe(
      "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n_jq:x:998:998::/nonexistent:/usr/sbin/nologin\n",
    );
    expect(p.literals.get("/etc/shadow")!.toString()).toMatch(/^alice:\$y\$secret:/m);
    expect(p.literals.get("/etc/shadow")!.toString()).toMatch(/^_jq:!:/m);
    // gshadow does not exist on the endpoint and gets no lines: not created.
    expect(p.literals.has("/etc/gshadow")).toBe(false);
    expect(blockedError(p.problems)).toBeNull();
  });

  it("writes nothing when the endpoint already has what the layer brings", () => {
    const r = root("same", `${stanza("jq", "1.6-2.1", "Depends: libc6\n")}\n${stanza("libc6", "2.36-9")}\n`);
    const p = prepareLayerApply(plan({ packages: [jq] }), r);
    expect([...p.literals.keys()]).toEqual([]);
  });

  it("blocks a downgrade of a package the endpoint's user installed, naming it", () => {
    const r = root("down", `${stanza("jq", "1.7-1", "Depends: libc6\n")}\n${stanza("libc6", "2.36-9")}\n`);
    const p = prepareLayerApply(plan({ packages: [jq] }), r);
    const err = blockedError(p.problems);
    expect(err?.code).toBe("CONFLICT");
    expect(err?.message).toMatch(/jq/);
    expect(p.problems.find((x) => x.kind === "downgrade")?.subject).toBe("jq");
  });

  it("blocks an account whose new name takes an id the endpoint uses", () => {
    const r = root("clash", "");
    const p = prepareLayerApply(
      plan({ accounts: { passwd: ["svc:x:1000:1000::/srv:/bin/sh"], group: [], shadow: [], gshadow: [] } }),
      r,
    );
    expect(blockedError(p.problems)?.message).toMatch(/svc/);
  });

  it("refuses enforce remove without a base layer: it would delete the operating system", () => {
    const r = root("nobase", stanza("libc6", "2.36-9"));
    expect(
      blockedError(prepareLayerApply(plan({ packages: [jq] }, { enforce: "remove" }), r).problems)?.message,
    ).toMatch(/base layer/);
    // With a base (here: its libc6), the same apply is fine: libc6 is the image's now.
    const libc6 = {
      name: "libc6",
      arch: "amd64",
      version: "2.36-9",
      stanza: stanza("libc6", "2.36-9").trimEnd(),
    };
    const withBase = prepareLayerApply(
      plan({ packages: [jq, libc6] }, { enforce: "remove", hasBase: true }),
      r,
    );
    expect(blockedError(withBase.problems)).toBeNull();
  });

  it("blocks an apply that does not fit on the root's filesystem, before anything changes", () => {
    const r = root("disk", stanza("libc6", "2.36-9"));
    const MiB = 1024 * 1024;
    const space = (freeBytes: number) => ({
      space: { path: r, freeBytes, totalBytes: 10_000 * MiB, blockSize: 4096, at: new Date().toISOString() },
    });
    const big = plan({ packages: [jq] }, { bytesToWrite: 900 * MiB, filesToWrite: 100 });
    const needed = 900 * MiB + 100 * 4096 + 64 * MiB;
    const fits = prepareLayerApply(big, r, space(needed));
    expect(fits.disk).toEqual({ path: r, freeBytes: needed, neededBytes: needed });
    expect(blockedError(fits.problems)).toBeNull();
    const tight = prepareLayerApply(big, r, space(needed - 1));
    const err = blockedError(tight.problems);
    expect(err?.code).toBe("CONFLICT");
    expect(err?.message).toMatch(/not enough disk space: needs 964\.4 MiB .* free on the filesystem of /);
    expect(tight.problems.find((x) => x.kind === "disk-space")?.subject).toBe(r);
    // The real filesystem (statfs) when none is injected; no estimate in the plan, no check.
    expect(prepareLayerApply(big, r).disk?.freeBytes).toBeGreaterThan(0);
    expect(prepareLayerApply(plan({ packages: [jq] }), r, space(0)).disk).toBeNull();
  });

  it("never writes identity, logs, caches or do-not-override paths, but always the structured files", () => {
    const r = root("dno", stanza("libc6", "2.36-9"));
    const p = prepareLayerApply(plan({ packages: [jq] }), r);
    const b = (s: string) => Buffer.from(s);
    expect(p.doNotOverride(b("/etc/fstab"))).toBe(true);
    expect(p.doNotOverride(b("/etc/hostname"))).toBe(true);
    expect(p.doNotOverride(b("/etc/machine-id"))).toBe(true);
    expect(p.doNotOverride(b("/var/log/syslog"))).toBe(true);
    expect(p.doNotOverride(b("/var/lib/dpkg/status"))).toBe(false);
    expect(p.doNotOverride(b("/usr/bin/jq"))).toBe(false);
    expect(p.doNotOverride(b("/etc/motd"))).toBe(false);
  });
});

describe("removalPredicate", () => {
  it("says true for a removed path, below for its ancestors, false elsewhere", () => {
    const f = removalPredicate(["/usr/share/old/file", "/opt/x/", "/"]);
    const b = (s: string) => Buffer.from(s);
    expect(f(b("/usr/share/old/file"))).toBe(true);
    expect(f(b("/opt/x"))).toBe(true);
    // Not listed, so not the layers' (the server lists every path below a removed directory):
    // a file the user put into /opt/x is kept.
    expect(f(b("/opt/x/y/z"))).toBe(false);
    expect(f(b("/opt/xy"))).toBe(false);
    expect(f(b("/usr/share/old"))).toBe("below");
    expect(f(b("/usr"))).toBe("below");
    expect(f(b("/usr/bin"))).toBe(false);
    expect(f(b("/usr/share/old/file2"))).toBe(false);
    // "/" is never removable: a plan cannot empty the machine.
    expect(f(b("/"))).toBe(false);
  });

  it("matches names that are not UTF-8 by their bytes (removalsB64)", () => {
    const name = Buffer.from([0x2f, 0x6f, 0x70, 0x74, 0x2f, 0xe9]); // "/opt/é" in latin1
    // A lossy UTF-8 string cannot name it: the predicate does not invent a match.
    expect(removalPredicate([name.toString("utf8")])(name)).toBe(false);
    // Its bytes in base64 do, and its directory is "below"; the UTF-8 é is another name.
    const f = removalPredicate(["/opt/é"], [Buffer.concat([name, Buffer.from("/x")]).toString("base64")]);
    expect(f(Buffer.concat([name, Buffer.from("/x")]))).toBe(true);
    expect(f(name)).toBe("below");
    expect(f(Buffer.from("/opt/é"))).toBe(true);
    expect(f(Buffer.from("/opt/é/x"))).toBe(false);
  });
});

describe("runTriggers", () => {
  it("runs ldconfig inside a chroot root and reports a failure without throwing", async () => {
    // The fixture root has no ldconfig: the trigger fails, and says so.
    const r = root("trig", "");
    const out = await runTriggers(r, ["ldconfig", "systemd-daemon-reload"]);
    expect(out).toHaveLength(1);
    expect(out[0]!.trigger).toBe("ldconfig");
    expect(out[0]!.ok).toBe(false);
    expect(out[0]!.output).not.toBe("");
    expect(readFileSync(path.join(r, "etc/passwd"), "utf8")).toMatch(/alice/);
  });
});
