import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import * as path from "node:path";
import { native } from "@strata/fs";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fetchFilesFor, recoverPendingRestore, runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreOptions } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import {
  closeTestRepo,
  copyTree,
  createTestRepo,
  diff,
  put,
  snapshotOf,
  testPolicy,
} from "./restore-helpers.js";
import { buildSmallRoot } from "./restore-trees.js";

let repo: Repository;
let v1: string;
let src: LocalRestoreSource;

beforeAll(async () => {
  const base = tmp("strata-restore-");
  v1 = path.join(base, "v1");
  buildSmallRoot(v1);
  repo = await createTestRepo(path.join(base, "repo"));
  src = await snapshotOf(repo, v1);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

const hasSetfacl = spawnSync("setfacl", ["--version"]).status === 0;

/** Paths no kind writes (excluded by the default policy). */
const EXCLUDED = /(^| )(tmp|var\/cache)\/./;
const HOME = /(^| )(home\/alice|root)\//;

function opts(root: string, o: Partial<RestoreOptions>): RestoreOptions {
  return { root, stateDir: tmp("strata-state-"), id: "t1", kind: "full", policy: testPolicy(), ...o };
}

/** v1, then changed the ways an endpoint drifts from its snapshot. */
function drifted(): string {
  const root = tmp("strata-root-");
  copyTree(v1, root);
  // Corrupt content behind an unchanged size and mtime.
  const passwd = path.join(root, "etc/passwd");
  const st = lstatSync(passwd, { bigint: true });
  const text = readFileSync(passwd);
  text[0] = "R".charCodeAt(0);
  writeFileSync(passwd, text);
  native.lutimens(Buffer.from(passwd), st.mtimeNs, st.mtimeNs);
  chmodSync(path.join(root, "etc/hostname"), 0o600);
  rmSync(path.join(root, "usr/bin/x"));
  put(root, "usr/bin/newer", "installed after the snapshot\n");
  put(root, "usr/lib/newer/lib.so", "a newer directory\n");
  put(root, "home/alice/newer.txt", "written after the snapshot\n");
  put(root, "home/alice/notes.txt", "alice's notes, edited\n");
  put(root, "tmp/keep", "excluded: never touched\n");
  rmSync(path.join(root, "etc/ssh"), { recursive: true });
  writeFileSync(path.join(root, "etc/ssh"), "a file where a directory was\n");
  return root;
}

describe("restore engine, small tree", () => {
  it("full onto an empty root gives the snapshot, sparse files sparse, excluded paths unwritten", async () => {
    const root = tmp("strata-root-");
    const o = opts(root, { kind: "full" });
    const run = runRestore(src, o);
    const r = await run.done;
    await run.usable;
    expect(r.errors).toEqual([]);
    expect(diff(v1, root, EXCLUDED)).toEqual([]);
    expect(existsSync(path.join(root, "tmp/scratch"))).toBe(false);
    expect(statSync(path.join(root, "tmp")).mode & 0o7777).toBe(statSync(path.join(v1, "tmp")).mode & 0o7777);
    expect(statSync(path.join(root, "var/lib/sparse.img")).blocks * 512).toBeLessThan(1024 * 1024);
    expect(run.progress()).toMatchObject({ phase: "done", totalFiles: r.files, restoredFiles: r.files });
    // Nothing of the restore's own state is left.
    expect(readdirSync(path.join(o.stateDir, "restore"))).toEqual([]);
  });

  it.skipIf(!hasSetfacl)(
    "a stage with a default ACL (inherited from the state directory): restored objects carry only the snapshot's ACLs (needs setfacl)",
    async () => {
      const root = tmp("strata-root-");
      const o = opts(root, { kind: "full" });
      mkdirSync(o.stateDir, { recursive: true });
      execFileSync("setfacl", ["-d", "-m", "u:4321:rwx", o.stateDir]);
      const run = runRestore(src, o);
      const r = await run.done;
      expect(r.errors).toEqual([]);
      // rsync -aHAX compares ACLs: an inherited u:4321 entry would show on every object.
      expect(diff(v1, root, EXCLUDED)).toEqual([]);
      expect(native.llistxattr(Buffer.from(path.join(root, "etc/hostname")))).not.toContain(
        "system.posix_acl_access",
      );
    },
  );

  it.skipIf(process.geteuid?.() !== 0)(
    "a setgid state directory (the stage's new files get its group): owners and modes still match the snapshot (needs root)",
    async () => {
      const root = tmp("strata-root-");
      const o = opts(root, { kind: "full" });
      mkdirSync(o.stateDir, { recursive: true });
      chownSync(o.stateDir, 0, 4321);
      chmodSync(o.stateDir, 0o2755);
      const r = await runRestore(src, o).done;
      expect(r.errors).toEqual([]);
      // rsync -aHAX compares owners, groups and modes: a skipped chown would show as "g".
      expect(diff(v1, root, EXCLUDED)).toEqual([]);
      expect(statSync(path.join(root, "etc/hostname")).gid).toBe(statSync(path.join(v1, "etc/hostname")).gid);
    },
  );

  it("full repairs every kind of drift and deletes newer files, excluded ones kept", async () => {
    const root = drifted();
    expect(diff(v1, root, EXCLUDED).length).toBeGreaterThan(5);
    const o = opts(root, { kind: "full" });
    const r = await runRestore(src, o).done;
    expect(r.errors).toEqual([]);
    expect(diff(v1, root, EXCLUDED)).toEqual([]);
    expect(readFileSync(path.join(root, "tmp/keep"), "utf8")).toContain("never touched");
    expect(r.deleted).toBeGreaterThanOrEqual(3);
    expect(readdirSync(path.join(o.stateDir, "restore"))).toEqual([]);
    // Unchanged files were not rewritten: the big library kept its inode.
    const again = await runRestore(src, { ...o, id: "t2" }).done;
    expect(again.putOps + again.deleted + again.metaOps).toBe(0);
    expect(again.unchangedFiles).toBe(again.files);
  });

  it("system restores the machine area only: the user area and excluded paths are untouched", async () => {
    const root = drifted();
    const r = await runRestore(src, opts(root, { kind: "system" })).done;
    expect(r.errors).toEqual([]);
    expect(diff(v1, root, new RegExp(`${EXCLUDED.source}|${HOME.source}`))).toEqual([]);
    expect(existsSync(path.join(root, "usr/bin/newer"))).toBe(false);
    expect(existsSync(path.join(root, "usr/bin/x"))).toBe(true);
    expect(readFileSync(path.join(root, "etc/passwd"), "utf8")).toMatch(/^root:/);
    expect(readFileSync(path.join(root, "home/alice/newer.txt"), "utf8")).toContain("after the snapshot");
    expect(readFileSync(path.join(root, "home/alice/notes.txt"), "utf8")).toContain("edited");
    expect(readFileSync(path.join(root, "tmp/keep"), "utf8")).toContain("never touched");
  });

  it("system onto a root without the user area creates /home but nothing below it", async () => {
    const root = tmp("strata-root-");
    await runRestore(src, opts(root, { kind: "system" })).done;
    expect(readdirSync(path.join(root, "home"))).toEqual([]);
    expect(existsSync(path.join(root, "root"))).toBe(false);
    expect(diff(v1, root, new RegExp(`${EXCLUDED.source}|${HOME.source}|(^| )root/$|home/alice/$`))).toEqual(
      [],
    );
  });

  it("recover keeps the device's machine-id and SSH host keys", async () => {
    const root = tmp("strata-root-");
    put(root, "etc/machine-id", "deadbeefdeadbeefdeadbeefdeadbeef\n");
    put(root, "etc/ssh/ssh_host_ed25519_key", "the device's own key\n", { mode: 0o600 });
    put(root, "etc/ssh/ssh_host_rsa_key", "the device's rsa key\n", { mode: 0o600 });
    const r = await runRestore(src, opts(root, { kind: "recover" })).done;
    expect(r.errors).toEqual([]);
    expect(readFileSync(path.join(root, "etc/machine-id"), "utf8")).toBe(
      "deadbeefdeadbeefdeadbeefdeadbeef\n",
    );
    expect(readFileSync(path.join(root, "etc/ssh/ssh_host_ed25519_key"), "utf8")).toBe(
      "the device's own key\n",
    );
    expect(readFileSync(path.join(root, "etc/ssh/ssh_host_rsa_key"), "utf8")).toBe("the device's rsa key\n");
    expect(readFileSync(path.join(root, "etc/ssh/sshd_config"), "utf8")).toBe("PermitRootLogin no\n");
    expect(
      diff(v1, root, new RegExp(`${EXCLUDED.source}|machine-id|ssh_host_|(^| )etc/(ssh/)?$|(^| )\\./$`)),
    ).toEqual([]);
  });

  it("recover onto an empty disk writes machine-id 'uninitialized' and no host keys", async () => {
    const root = tmp("strata-root-");
    await runRestore(src, opts(root, { kind: "recover" })).done;
    expect(readFileSync(path.join(root, "etc/machine-id"), "utf8")).toBe("uninitialized\n");
    expect(statSync(path.join(root, "etc/machine-id")).mode & 0o7777).toBe(0o444);
    expect(existsSync(path.join(root, "etc/ssh/ssh_host_ed25519_key"))).toBe(false);
    expect(existsSync(path.join(root, "etc/ssh/sshd_config"))).toBe(true);
  });

  it("files writes the given paths under `to` by their own names and deletes nothing", async () => {
    const to = tmp("strata-to-");
    put(to, "ssh/extra", "already there\n");
    const r = await runRestore(
      src,
      opts("/", {
        kind: "files",
        paths: ["/etc/ssh", "/usr/bin/tool", "/usr/lib/libbig.so.1"],
        to,
        policy: undefined,
      }),
    ).done;
    expect(r.errors).toEqual([]);
    expect(readFileSync(path.join(to, "ssh/extra"), "utf8")).toBe("already there\n");
    rmSync(path.join(to, "ssh/extra"));
    expect(diff(path.join(v1, "etc/ssh"), path.join(to, "ssh"), /(^| )\.\/$/)).toEqual([]);
    expect(readFileSync(path.join(to, "tool")).equals(readFileSync(path.join(v1, "usr/bin/tool")))).toBe(
      true,
    );
    expect(lstatSync(path.join(to, "libbig.so.1")).isSymbolicLink()).toBe(true);
    await expect(
      runRestore(src, opts("/", { kind: "files", paths: ["/etc/nope"], to, policy: undefined })).done,
    ).rejects.toMatchObject({ code: "NOT_FOUND" });
  });

  it("a failure before the commit leaves the root as it was and no restore state", async () => {
    const root = drifted();
    const before = tmp("strata-before-");
    copyTree(root, before);
    const stateDir = tmp("strata-state-");
    const stop = new Error("stop");
    await expect(
      runRestore(src, {
        ...opts(root, { kind: "full" }),
        stateDir,
        onStep: (s) => {
          if (s.phase === "commit") throw stop;
        },
      }).done,
    ).rejects.toBe(stop);
    expect(diff(before, root)).toEqual([]);
    expect(await recoverPendingRestore(stateDir, root)).toEqual([{ outcome: "none" }]);
  });
});

describe("seeds", () => {
  it("a revert after changing ~1% of a tree fetches under 3% of its bytes", async () => {
    const base = tmp("strata-seeds-");
    const tree = path.join(base, "tree");
    const { noise } = await import("./restore-helpers.js");
    for (let i = 0; i < 40; i++) put(tree, `data/f${i}.bin`, noise(256 * 1024 + i * 1000, 100 + i));
    put(tree, "data/large.img", noise(8 * 1024 * 1024, 7));
    const total = 40 * 256 * 1024 + 8 * 1024 * 1024;
    const r2 = await createTestRepo(path.join(base, "repo"));
    try {
      const s = await snapshotOf(r2, tree);
      const root = tmp("strata-root-");
      copyTree(tree, root);
      // ~1%: an insertion in the middle of the large file (shifts everything after it), one small file rewritten.
      const large = readFileSync(path.join(root, "data/large.img"));
      writeFileSync(
        path.join(root, "data/large.img"),
        Buffer.concat([
          large.subarray(0, 3_000_000),
          Buffer.from("inserted bytes"),
          large.subarray(3_000_000),
        ]),
      );
      writeFileSync(path.join(root, "data/f3.bin"), noise(100 * 1024, 999));
      const r = await runRestore(s, opts(root, { kind: "full", policy: undefined })).done;
      expect(diff(tree, root)).toEqual([]);
      expect(r.fetchedBytes).toBeLessThan(total * 0.03);
      expect(r.seededBytes).toBeGreaterThan(8 * 1024 * 1024 * 0.9);
      expect(r.unchangedFiles).toBe(39);
    } finally {
      await closeTestRepo(r2);
    }
  });
});

describe("files as a non-root process", () => {
  it.skipIf(process.getuid?.() !== 0)(
    "restores into a directory the user owns, without owners or privileged xattrs, and says so",
    async () => {
      const { spawnSync } = await import("node:child_process");
      const { chownSync } = await import("node:fs");
      const { fileURLToPath } = await import("node:url");
      const base = tmp("strata-nonroot-");
      chmodSync(base, 0o755);
      const r3 = await createTestRepo(path.join(base, "repo"));
      const tree = path.join(base, "tree");
      put(tree, "home/alice/notes.txt", "notes\n");
      put(tree, "home/alice/docs/report.txt", "report\n", { mode: 0o640 });
      native.lsetxattr(Buffer.from(path.join(tree, "home/alice/notes.txt")), "user.tag", Buffer.from("x"));
      native.lsetxattr(
        Buffer.from(path.join(tree, "home/alice/notes.txt")),
        "trusted.secret",
        Buffer.from("y"),
      );
      await snapshotOf(r3, tree);
      await r3.flush();
      execFileSync("chmod", ["-R", "a+rX", base]);
      const to = path.join(base, "to");
      const state = path.join(base, "state");
      for (const d of [to, state]) {
        mkdirSync(d);
        chownSync(d, 65534, 65534);
      }
      const child = path.join(path.dirname(fileURLToPath(import.meta.url)), "restore-child.ts");
      const res = spawnSync(
        process.execPath,
        [
          "--import",
          "tsx",
          child,
          JSON.stringify({
            repo: path.join(base, "repo"),
            snapshotPath: tree,
            root: "/",
            stateDir: state,
            kind: "files",
            policy: false,
            paths: ["/home/alice"],
            to,
            uid: 65534,
          }),
        ],
        { encoding: "utf8" },
      );
      await closeTestRepo(r3);
      expect(res.status, res.stderr).toBe(0);
      const out = JSON.parse(res.stdout) as { result: { errors: { path: string; message: string }[] } };
      expect(out.result.errors.map((e) => e.message).join("\n")).toMatch(
        /trusted\.secret|metadata not fully/,
      );
      expect(readFileSync(path.join(to, "alice/docs/report.txt"), "utf8")).toBe("report\n");
      expect(statSync(path.join(to, "alice/docs/report.txt")).uid).toBe(65534);
      expect(statSync(path.join(to, "alice/docs/report.txt")).mode & 0o777).toBe(0o640);
      expect(native.lgetxattr(Buffer.from(path.join(to, "alice/notes.txt")), "user.tag").toString()).toBe(
        "x",
      );
      expect(readdirSync(path.join(state, "restore"))).toEqual([]);
    },
  );
});

describe("a root spanning two filesystems", () => {
  it.skipIf(process.getuid?.() !== 0)(
    "stages /home on its own filesystem (a tmpfs) and leaves no workdir behind",
    async (ctx) => {
      const root = tmp("strata-root-");
      mkdirSync(path.join(root, "home"));
      try {
        execFileSync("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", path.join(root, "home")]);
      } catch (e) {
        ctx.skip(`cannot mount a tmpfs here: ${(e as Error).message}`);
        return;
      }
      try {
        put(root, "home/alice/newer.txt", "newer\n");
        const seen: string[] = [];
        const o = opts(root, {
          kind: "full",
          onStep: (s) => {
            if (s.phase === "commit") seen.push(...readdirSync(path.join(root, "home")));
          },
        });
        const r = await runRestore(src, o).done;
        expect(r.errors).toEqual([]);
        // The stage of /home's filesystem was at its top, inside the root.
        expect(seen).toContain(".strata-restore-t1");
        expect(readdirSync(path.join(root, "home"))).toEqual(["alice"]);
        expect(diff(v1, root, new RegExp(`${EXCLUDED.source}|(^| )home/$`))).toEqual([]);
      } finally {
        execFileSync("umount", ["-l", path.join(root, "home")]);
      }
    },
  );
});

describe("chunk requests", () => {
  it("cover 1,024 files under a generous descriptor limit, fewer under a low one", () => {
    expect(fetchFilesFor(524288)).toBe(1024);
    expect(fetchFilesFor(Number.POSITIVE_INFINITY)).toBe(1024);
    expect(fetchFilesFor(20000)).toBe(1000);
    // Five requests of staged files stay within a quarter of a 1,024 limit.
    expect(fetchFilesFor(1024) * 5).toBeLessThanOrEqual(256);
    expect(fetchFilesFor(64)).toBe(16);
    expect(fetchFilesFor(null)).toBe(256);
  });
});
