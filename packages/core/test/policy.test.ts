import {
  type CompiledPolicy,
  compilePolicy,
  DEFAULT_RETENTION,
  defaultPolicy,
  exportPolicy,
  FACTORY_RULES,
  importPolicy,
  isStrataError,
  type PreviewEntry,
  parsePasswd,
  parseProcSwaps,
  parseRule,
  previewPolicy,
  previewPolicyAsync,
  type UploadPolicy,
  validatePolicy,
} from "@strata/core";
import { describe, expect, it } from "vitest";

const PASSWD = `root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
postgres:x:108:114:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
bob:x:1001:1001::/srv/users/bob:/bin/zsh
# a comment
+@netgroup::::::
carol:x:1002:1002::/home/carol/:/bin/bash
broken line
ghost:x:1003:1003::relative/home:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`;

const HOMES = parsePasswd(PASSWD);
const STATE = "/var/lib/strata-agent";

function compile(p: Partial<UploadPolicy> = {}, extra: { swapFiles?: string[] } = {}): CompiledPolicy {
  return compilePolicy(
    { ...defaultPolicy("p1", "Default"), ...p },
    { homes: HOMES, agentStateDir: STATE, ...extra },
  );
}

describe("parsePasswd / parseProcSwaps", () => {
  it("keeps root and human users' homes, drops system accounts and junk", () => {
    expect(HOMES).toEqual(["/home/alice", "/home/carol", "/root", "/srv/users/bob"]);
  });
  it("honours uidMin", () => {
    expect(parsePasswd(PASSWD, { uidMin: 100 })).toContain("/var/lib/postgresql");
  });
  it("lists swap files, not partitions, and decodes \\040", () => {
    const swaps = `Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/sda2                               partition\t2097148\t\t0\t\t-2
/mnt/big\\040disk/swap                  file\t\t1048572\t\t0\t\t-3
`;
    expect(parseProcSwaps(swaps)).toEqual(["/mnt/big disk/swap"]);
  });
});

describe("factory rules", () => {
  const c = compile();
  it.each([
    "/proc/1/status",
    "/sys/class/net/eth0",
    "/dev/sda",
    "/dev/pts/0",
    "/run/systemd/journal/socket",
    "/tmp/x",
    "/tmp/deep/er/file",
    "/var/tmp/systemd-private-1",
    "/var/cache/apt/archives/x.deb",
    "/swapfile",
    "/swap.img",
    `${STATE}`,
    `${STATE}/credential.json`,
    "/home/alice/.cache/mozilla/x",
    "/home/zed/.cache/pip/wheel", // a home not in passwd: /home/* covers it
    "/root/.cache/x",
    "/srv/users/bob/.cache/thumbnails/a.png", // a home outside /home, from passwd
  ])("excludes %s", (p) => {
    expect(c.classify(p)).toBe("excluded");
    expect(c.explain(p).by?.list).toBe("factory");
  });

  it.each(["/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/cache"])(
    "keeps the mount point %s itself but prunes its contents",
    (p) => {
      expect(c.classify(p)).toBe("machine");
      expect(c.shouldDescend(p)).toBe(false);
    },
  );

  it("keeps vim swap files, other caches and look-alikes", () => {
    expect(c.classify("/home/alice/notes.txt.swp")).toBe("user");
    expect(c.classify("/home/alice/.notes.txt.swp")).toBe("user");
    expect(c.classify("/home/alice/swapfile")).toBe("user");
    expect(c.classify("/var/lib/swapfile")).toBe("machine");
    expect(c.classify("/tmpfiles")).toBe("machine");
    expect(c.classify("/var/cached")).toBe("machine");
    expect(c.classify("/home/alice/.cache")).toBe("user");
    expect(c.classify("/home/alice/project/.cache/x")).toBe("user");
    expect(c.classify("/var/www/.cache/x")).toBe("machine"); // www-data is a system account
  });

  it("adds swap files from /proc/swaps", () => {
    const d = compile({}, { swapFiles: ["/data/swap0"] });
    expect(d.classify("/data/swap0")).toBe("excluded");
    expect(compile().classify("/data/swap0")).toBe("machine");
  });

  it("cannot be removed by the policy, by editing, or by an import", () => {
    const tampered = { ...defaultPolicy("p", "x"), factoryRules: [] as never[] };
    const c2 = compilePolicy(tampered, { homes: [], agentStateDir: STATE });
    expect(c2.classify("/proc/1")).toBe("excluded");
    expect(c2.policy.factoryRules).toBe(FACTORY_RULES);
    const doc = JSON.parse(exportPolicy(defaultPolicy("p", "x")));
    doc.policy.factoryRules = [];
    const r = importPolicy(JSON.stringify(doc));
    expect(r.errors).toEqual([]);
    expect(r.policy!.factoryRules).toBe(FACTORY_RULES);
    expect(Object.isFrozen(FACTORY_RULES) && Object.isFrozen(FACTORY_RULES[0])).toBe(true);
  });

  it("an unprotected exception does not rescue a factory path", () => {
    const d = compile({
      unprotectedExceptions: [{ dir: "/tmp/keep" }, { dir: "/home", pattern: "*/.cache/**" }],
    });
    expect(d.classify("/tmp/keep/x")).toBe("excluded");
    expect(d.classify("/home/alice/.cache/x")).toBe("excluded");
    expect(d.shouldDescend("/tmp")).toBe(false);
  });
});

describe("macros", () => {
  it("%anyuserhome% expands to every home, from passwd and /home/*", () => {
    const c = compile({ unprotected: [{ dir: "%anyuserhome%/Downloads", pattern: "*.iso" }] });
    for (const home of ["/home/alice", "/home/carol", "/home/zed", "/root", "/srv/users/bob"]) {
      expect(c.classify(`${home}/Downloads/debian.iso`)).toBe("excluded");
      expect(c.classify(`${home}/Downloads/sub/dir/debian.iso`)).toBe("excluded");
      expect(c.classify(`${home}/Downloads/notes.txt`)).not.toBe("excluded");
      expect(c.classify(`${home}/debian.iso`)).not.toBe("excluded");
    }
    expect(c.classify("/var/lib/postgresql/Downloads/x.iso")).toBe("machine");
  });
  it("%anyuserhome% in the user area makes out-of-/home homes user data", () => {
    const c = compile({ userArea: [{ dir: "%anyuserhome%" }] });
    expect(c.classify("/srv/users/bob/thesis.tex")).toBe("user");
    expect(c.classify("/srv/users")).toBe("machine");
    expect(c.classify("/srv/other/x")).toBe("machine");
    // default user area knows nothing of /srv/users/bob
    expect(compile().classify("/srv/users/bob/thesis.tex")).toBe("machine");
  });
  it("%agentstate% names the state directory", () => {
    const c = compilePolicy(
      { ...defaultPolicy("p", "x"), unprotectedExceptions: [{ dir: "%agentstate%" }] },
      { homes: [], agentStateDir: "/opt/strata/state" },
    );
    expect(c.classify("/opt/strata/state/db")).toBe("excluded");
    expect(c.classify("/opt/strata/bin/agent")).toBe("machine");
  });
});

describe("rules and precedence", () => {
  it("parses the string form at the first wildcard segment", () => {
    expect(parseRule("/var/log/*.gz")).toEqual({ dir: "/var/log", pattern: "*.gz" });
    expect(parseRule("/home/*/.cache/**")).toEqual({ dir: "/home", pattern: "*/.cache/**" });
    expect(parseRule("/opt/app/")).toEqual({ dir: "/opt/app" });
    expect(parseRule("/*.iso")).toEqual({ dir: "/", pattern: "*.iso" });
  });

  it("a name pattern matches at any depth; a path pattern is anchored; ** crosses segments", () => {
    const c = compile({
      unprotected: [
        "/var/log/*.gz",
        { dir: "/srv", pattern: "*/build" },
        { dir: "/opt", pattern: "**/node_modules" },
      ],
    });
    expect(c.classify("/var/log/syslog.2.gz")).toBe("excluded");
    expect(c.classify("/var/log/apt/history.log.1.gz")).toBe("excluded");
    expect(c.classify("/var/log/syslog")).toBe("machine");
    expect(c.classify("/srv/app/build/out.o")).toBe("excluded");
    expect(c.classify("/srv/app/src/build/out.o")).toBe("machine");
    expect(c.classify("/opt/a/b/node_modules/x/index.js")).toBe("excluded");
    expect(c.classify("/opt/node_modules_docs")).toBe("machine");
  });

  it("a rule on a directory covers the directory and its contents", () => {
    const c = compile({ unprotected: [{ dir: "/var/lib/docker" }] });
    expect(c.classify("/var/lib/docker")).toBe("excluded");
    expect(c.classify("/var/lib/docker/overlay2/abc/diff/etc/passwd")).toBe("excluded");
    expect(c.classify("/var/lib/dockerd")).toBe("machine");
    expect(c.classify("/var/lib")).toBe("machine");
  });

  it("unprotected exceptions carve files back, and only from the unprotected list", () => {
    const c = compile({
      unprotected: [{ dir: "/var/log" }, { dir: "/home", pattern: "*/Videos" }],
      unprotectedExceptions: [{ dir: "/var/log/audit" }, { dir: "/home/alice/Videos/keep" }],
    });
    expect(c.classify("/var/log/syslog")).toBe("excluded");
    expect(c.classify("/var/log/audit/audit.log")).toBe("machine");
    expect(c.explain("/var/log/audit/audit.log").excepted?.list).toBe("unprotectedExceptions");
    expect(c.classify("/home/alice/Videos/cat.mp4")).toBe("excluded");
    expect(c.classify("/home/alice/Videos/keep/wedding.mp4")).toBe("user"); // back in the user area
    expect(c.classify("/home/bob/Videos/keep/wedding.mp4")).toBe("excluded");
  });

  it("user-area exceptions make machine data, never excluded data", () => {
    const c = compile({
      userAreaExceptions: [{ dir: "/home/shared-app" }, { dir: "%anyuserhome%", pattern: ".ssh" }],
    });
    expect(c.classify("/home/alice/doc.odt")).toBe("user");
    expect(c.classify("/home/shared-app/bin/run")).toBe("machine");
    expect(c.classify("/home/alice/.ssh/id_ed25519")).toBe("machine");
    expect(c.explain("/home/alice/.ssh/id_ed25519")).toMatchObject({
      class: "machine",
      excepted: { list: "userAreaExceptions" },
    });
    expect(c.classify("/root/x")).toBe("user");
    expect(c.classify("/home")).toBe("machine");
    expect(c.classify("/etc/passwd")).toBe("machine");
  });

  it("unprotected beats the user area", () => {
    const c = compile({ unprotected: [{ dir: "/home/alice/VMs" }] });
    expect(c.classify("/home/alice/VMs/win.qcow2")).toBe("excluded");
    expect(c.explain("/home/alice/VMs/win.qcow2").by).toEqual({
      list: "unprotected",
      rule: { dir: "/home/alice/VMs" },
    });
  });

  it("default unprotected area: trash, crash dumps, apt lists", () => {
    const c = compile();
    expect(c.classify("/home/alice/.local/share/Trash/files/old.txt")).toBe("excluded");
    expect(c.classify("/var/crash/core.1")).toBe("excluded");
    expect(c.classify("/var/lib/apt/lists/deb.debian.org_InRelease")).toBe("excluded");
    expect(c.classify("/var/lib/apt/extended_states")).toBe("machine");
  });

  it("takes byte paths; non-UTF-8 bytes match wildcards only", () => {
    const c = compile({ unprotected: [{ dir: "/data", pattern: "*.tmp" }] });
    const bytes = Buffer.concat([Buffer.from("/data/caf"), Buffer.from([0xe9]), Buffer.from(".tmp")]);
    expect(c.classify(bytes)).toBe("excluded");
    expect(c.classify(Buffer.from("/home/alice/x"))).toBe("user");
  });

  it("rejects bad rules built in code at compile time", () => {
    try {
      compile({ unprotected: [{ dir: "var/log" }] });
      expect.unreachable();
    } catch (e) {
      expect(isStrataError(e, "INVALID_ARGUMENT")).toBe(true);
      expect((e as Error).message).toContain("unprotected[0]");
    }
  });
});

describe("shouldDescend", () => {
  it("prunes directories whose whole subtree is excluded", () => {
    const c = compile({ unprotected: [{ dir: "/var/lib/docker" }, { dir: "/srv/scratch", pattern: "*" }] });
    expect(c.shouldDescend("/proc")).toBe(false);
    expect(c.shouldDescend("/proc/1")).toBe(false);
    expect(c.shouldDescend(STATE)).toBe(false);
    expect(c.shouldDescend("/home/alice/.cache")).toBe(false);
    expect(c.shouldDescend("/home/alice/.cache/mozilla")).toBe(false);
    expect(c.shouldDescend("/var/lib/docker")).toBe(false);
    expect(c.shouldDescend("/srv/scratch")).toBe(false);
    expect(c.classify("/srv/scratch")).toBe("machine");
  });
  it("descends where something protected may lie", () => {
    const c = compile({
      unprotected: [{ dir: "/var/log" }, { dir: "/data", pattern: "*.tmp" }],
      unprotectedExceptions: [{ dir: "/var/log/audit" }],
    });
    expect(c.shouldDescend("/")).toBe(true);
    expect(c.shouldDescend("/var")).toBe(true);
    expect(c.shouldDescend("/var/log")).toBe(true); // audit lies below
    expect(c.shouldDescend("/var/log/audit")).toBe(true);
    expect(c.shouldDescend("/var/log/apt")).toBe(false);
    expect(c.shouldDescend("/data")).toBe(true); // only *.tmp is excluded
    expect(c.shouldDescend("/data/x.tmp")).toBe(false);
    expect(c.shouldDescend("/home/alice")).toBe(true);
  });
  it("never prunes a directory that holds a protected path (checked by brute force)", () => {
    const c = compile({
      unprotected: [
        { dir: "/var/log" },
        { dir: "/home", pattern: "*/Videos" },
        { dir: "/", pattern: "*.iso" },
      ],
      unprotectedExceptions: [{ dir: "/var/log/audit" }, { dir: "/home/alice/Videos", pattern: "keep*" }],
    });
    const paths = [
      "/var/log/audit/a",
      "/var/log/syslog",
      "/home/alice/Videos/keep.mp4",
      "/home/alice/Videos/x.mp4",
      "/home/bob/Videos/keep.mp4",
      "/tmp/a/b",
      "/proc/1/fd/3",
      "/srv/x.iso/inner",
      "/home/alice/.cache/a/b",
    ];
    for (const p of paths) {
      const segs = p.split("/").slice(1);
      for (let i = 0; i < segs.length; i++) {
        const dir = `/${segs.slice(0, i).join("/")}`;
        if (!c.shouldDescend(dir)) expect(c.classify(p), `${dir} pruned but ${p} protected`).toBe("excluded");
      }
    }
    expect(c.shouldDescend("/home/alice/Videos")).toBe(true);
    expect(c.shouldDescend("/home/bob/Videos")).toBe(false);
  });
});

describe("validatePolicy", () => {
  it("fills defaults", () => {
    const { policy, errors } = validatePolicy({ name: "Laptops" });
    expect(errors).toEqual([]);
    expect(policy).toMatchObject({
      id: "",
      version: 1,
      intervalMinutes: 60,
      retention: DEFAULT_RETENTION,
      bandwidthLimitKBps: 0,
      userArea: [{ dir: "/home", pattern: "*" }, { dir: "/root" }],
    });
    expect(DEFAULT_RETENTION).toEqual({ hourly: 24, daily: 14, weekly: 8, monthly: 12 });
  });

  it("normalizes string rules to objects", () => {
    const { policy } = validatePolicy({ name: "x", unprotected: ["/var/log/*.gz", "/opt/big/"] });
    expect(policy!.unprotected).toEqual([{ dir: "/var/log", pattern: "*.gz" }, { dir: "/opt/big" }]);
  });

  it("reports every error at once, with field paths", () => {
    const { policy, errors } = validatePolicy({
      id: 7,
      unprotected: [
        { dir: "/ok" },
        { dir: "var/log" },
        { dir: "/var/log", pattern: "[abc" },
        { dir: "/a/../etc" },
        { dir: "/a", pattern: "" },
        { dir: "%nohome%/x" },
        { dir: "/home/**/x" },
        { dir: "/a", pattern: "../b" },
        { dir: "/a", colour: "red" },
        "relative/*.gz",
        42,
      ],
      userAreaExceptions: "nope",
      intervalMinutes: -5,
      retention: { hourly: -1, daily: 1.5, yearly: 3 },
      bandwidthLimitKBps: -1,
      extra: true,
    });
    expect(policy).toBeUndefined();
    const lines = errors.map((e) => `${e.path}: ${e.message}`);
    expect(lines).toEqual(
      expect.arrayContaining([
        "extra: unknown field",
        "id: must be a string",
        "name: required",
        expect.stringMatching(/^unprotected\[1\]\.dir: must be absolute/),
        "unprotected[2].pattern: unbalanced [",
        "unprotected[3].dir: '..' segment is not allowed",
        expect.stringMatching(/^unprotected\[4\]\.pattern: empty pattern/),
        expect.stringMatching(/^unprotected\[5\]\.dir: unknown macro %nohome%/),
        "unprotected[6].dir: ** is only allowed in the pattern",
        "unprotected[7].pattern: '..' segment is not allowed",
        "unprotected[8].colour: unknown field",
        expect.stringMatching(/^unprotected\[9\]: must be absolute/),
        expect.stringMatching(/^unprotected\[10\]: must be a rule object/),
        "userAreaExceptions: must be an array of rules",
        "intervalMinutes: must not be negative (-5)",
        "retention.hourly: must not be negative (-1)",
        "retention.daily: must be an integer",
        "retention.yearly: unknown field",
        "bandwidthLimitKBps: must not be negative (-1)",
      ]),
    );
    expect(errors.some((e) => e.path.startsWith("unprotected[0]"))).toBe(false);
    expect(errors).toHaveLength(19);
  });

  it("rejects a retention that keeps nothing, and empty character classes", () => {
    const { errors } = validatePolicy({
      name: "x",
      retention: { hourly: 0, daily: 0, weekly: 0, monthly: 0 },
      unprotected: [
        { dir: "/a", pattern: "[]x" },
        { dir: "/a", pattern: "[!]" },
        { dir: "/a", pattern: "[a/b]" },
      ],
    });
    expect(errors.map((e) => e.path)).toEqual([
      "unprotected[0].pattern",
      "unprotected[1].pattern",
      "unprotected[2].pattern",
      "retention",
    ]);
  });

  it("rejects a non-object", () => {
    expect(validatePolicy([]).errors).toEqual([{ path: "", message: "a policy must be a JSON object" }]);
  });
});

describe("export / import", () => {
  it("round-trips", () => {
    const p: UploadPolicy = {
      ...defaultPolicy("pol-1", "Engineering laptops"),
      version: 4,
      unprotected: [{ dir: "%anyuserhome%/VMs" }, { dir: "/var/log", pattern: "*.gz" }],
      unprotectedExceptions: [{ dir: "/var/log/audit" }],
      userArea: [{ dir: "%anyuserhome%" }, { dir: "/srv/projects" }],
      userAreaExceptions: [{ dir: "%anyuserhome%", pattern: ".ssh" }],
      intervalMinutes: 30,
      retention: { hourly: 12, daily: 7, weekly: 4, monthly: 6 },
      bandwidthLimitKBps: 2048,
    };
    const text = exportPolicy(p);
    const doc = JSON.parse(text);
    expect(doc.format).toBe("strata-upload-policy");
    expect(doc.schemaVersion).toBe(1);
    const back = importPolicy(text);
    expect(back.errors).toEqual([]);
    expect(back.policy).toEqual(p);
    expect(exportPolicy(back.policy!)).toBe(text);
  });

  it("names errors inside the document and refuses newer schema versions", () => {
    expect(importPolicy("{not json").errors[0]!.message).toMatch(/^not JSON/);
    const r = importPolicy(
      JSON.stringify({
        format: "strata-upload-policy",
        schemaVersion: 2,
        policy: { name: "x", unprotected: [{ dir: "rel" }] },
      }),
    );
    expect(r.policy).toBeUndefined();
    expect(r.errors.map((e) => e.path)).toEqual(["schemaVersion", "policy.unprotected[0].dir"]);
    expect(r.errors[0]!.message).toContain("newer");
  });
});

describe("previewPolicy", () => {
  const listing: PreviewEntry[] = [
    { path: "/", type: "dir", size: 0 },
    { path: "/etc", type: "dir", size: 0 },
    { path: "/etc/hostname", type: "file", size: 6 },
    { path: "/etc/passwd", type: "file", size: 1200 },
    { path: "/proc", type: "dir", size: 0 },
    { path: "/proc/1", type: "dir", size: 0 },
    { path: "/proc/1/status", type: "file", size: 900 },
    { path: "/tmp", type: "dir", size: 0 },
    { path: "/tmp/big.bin", type: "file", size: 5_000_000 },
    { path: "/home", type: "dir", size: 0 },
    { path: "/home/alice", type: "dir", size: 0 },
    { path: "/home/alice/thesis.tex", type: "file", size: 40_000 },
    { path: "/home/alice/link", type: "symlink", size: 0 },
    { path: "/home/alice/.cache", type: "dir", size: 0 },
    { path: "/home/alice/.cache/blob", type: "file", size: 700_000 },
    { path: "/home/alice/VMs", type: "dir", size: 0 },
    { path: "/home/alice/VMs/win.qcow2", type: "file", size: 20_000_000 },
  ];
  const c = compile({ unprotected: [{ dir: "/home/alice/VMs" }] });

  it("counts entries and bytes per class and samples topmost exclusions with reasons", () => {
    const r = previewPolicy(c, listing, { sampleSize: 3 });
    expect(r.counts.machine).toEqual({ files: 2, dirs: 5, other: 0, bytes: 1206 });
    expect(r.counts.user).toEqual({ files: 1, dirs: 2, other: 1, bytes: 40_000 });
    expect(r.counts.excluded).toEqual({ files: 4, dirs: 2, other: 0, bytes: 25_700_900 });
    expect(r.prunedDirs).toBe(5); // /proc, /proc/1, /tmp, /home/alice/.cache, /home/alice/VMs
    expect(r.samples.excluded.map((s) => [s.path, s.reason])).toEqual([
      ["/proc/1", "factory: /proc/**"],
      ["/tmp/big.bin", "factory: /tmp/**"],
      ["/home/alice/.cache/blob", "factory: %anyuserhome%/.cache/**"],
    ]);
    expect(r.samples.user.map((s) => s.path)).toEqual([
      "/home/alice",
      "/home/alice/thesis.tex",
      "/home/alice/link",
    ]);
    expect(r.samples.user[1]!.reason).toBe("userArea: /home/*");
  });

  it("the async variant agrees", async () => {
    async function* gen() {
      for (const e of listing) yield e;
    }
    expect(await previewPolicyAsync(c, gen())).toEqual(previewPolicy(c, listing));
  });
});
