import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { buildHostileTree, debianRoot, debianRootSkipReason, rsyncItemize } from "@strata/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, hasCommand, isRoot, newEnv, ok, strata, tmp } from "./helpers.js";

afterAll(cleanup);

const canRsync = hasCommand("rsync");

describe("fidelity: backup and restore reproduce the tree exactly", () => {
  it.skipIf(!canRsync)(
    "hostile tree (non-UTF-8, newlines, 255-byte names, deep nesting, hardlinks, sparse 2 GiB, setuid, xattrs, ACLs, capabilities, devices, fifos, symlinks)",
    async () => {
      const src = path.join(tmp(), "hostile");
      await buildHostileTree(src);
      const env = newEnv();
      ok(env, "repo", "init");
      const b = ok(env, "backup", src, "--json");
      expect(b.errors).toEqual([]);
      const dst = path.join(tmp(), "restored");
      ok(env, "restore", `latest:${src}`, "--target", dst);
      expect(rsyncItemize(src, dst)).toBe("");
      // The sparse file stays sparse: 2 GiB logical, a few MiB allocated.
      const sparse = spawnSync("bash", ["-c", `find ${JSON.stringify(dst)} -size +1G -printf '%s %b\\n'`], {
        encoding: "utf8",
      }).stdout.trim();
      const [size, blocks] = sparse.split(" ").map(Number);
      expect(size).toBeGreaterThanOrEqual(2 ** 31);
      expect(blocks! * 512).toBeLessThan(64 * 1024 * 1024);
    },
  );

  it.skipIf(!canRsync)(
    "a second backup of the unchanged tree reads nothing and restores identically",
    async () => {
      const src = path.join(tmp(), "small");
      mkdirSync(path.join(src, "d"), { recursive: true });
      writeFileSync(path.join(src, "d/f"), "x".repeat(100000));
      const env = newEnv();
      ok(env, "repo", "init");
      ok(env, "backup", src);
      const second = ok(env, "backup", src, "--json");
      expect(second.snapshot.stats.bytesRead).toBe(0);
      expect(second.snapshot.stats.filesUnchanged).toBe(1);
      const dst = path.join(tmp(), "r");
      ok(env, "restore", `latest:${src}`, "--target", dst);
      expect(rsyncItemize(src, dst)).toBe("");
    },
  );

  it("restore of the whole snapshot recreates absolute paths under the target; --include selects", async () => {
    const src = path.join(tmp(), "inc");
    mkdirSync(path.join(src, "a"), { recursive: true });
    mkdirSync(path.join(src, "b"), { recursive: true });
    writeFileSync(path.join(src, "a/one"), "1");
    writeFileSync(path.join(src, "b/two"), "2");
    const env = newEnv();
    ok(env, "repo", "init");
    ok(env, "backup", src);
    const dst = tmp();
    ok(env, "restore", "latest", "--target", dst, "--include", `${src}/a`);
    expect(readdirSync(path.join(dst, src))).toEqual(["a"]);
    expect(existsSync(path.join(dst, src, "a/one"))).toBe(true);
  });

  it.skipIf(!canRsync || !hasCommand("setfacl"))(
    "restore into a target with a default ACL leaves no inherited ACL behind (rsync or setfacl missing)",
    () => {
      const src = path.join(tmp(), "acl-src");
      mkdirSync(path.join(src, "d/e"), { recursive: true });
      writeFileSync(path.join(src, "d/f"), "f");
      writeFileSync(path.join(src, "d/e/g"), "g");
      writeFileSync(path.join(src, "own"), "o");
      expect(spawnSync("setfacl", ["-m", "u:1234:r", path.join(src, "own")]).status).toBe(0);
      const env = newEnv();
      ok(env, "repo", "init");
      ok(env, "backup", src);
      // Everything created in the target would inherit user 4321's entry.
      const dst = tmp();
      expect(spawnSync("setfacl", ["-d", "-m", "u:4321:rwx", dst]).status).toBe(0);
      ok(env, "restore", `latest:${src}`, "--target", dst);
      expect(rsyncItemize(src, dst)).toBe("");
      const below = ["d", "own"].map((n) => path.join(dst, n));
      const acls = spawnSync("getfacl", ["-R", "-p", ...below], { encoding: "utf8" }).stdout;
      expect(acls).toContain("user:1234:r--");
      expect(acls).not.toContain("4321");
    },
  );

  it("restore never writes through a symlink already in the target", () => {
    const src = path.join(tmp(), "s");
    mkdirSync(path.join(src, "etc"), { recursive: true });
    writeFileSync(path.join(src, "etc/passwd"), "restored");
    const env = newEnv();
    ok(env, "repo", "init");
    ok(env, "backup", src);
    const outside = tmp();
    const dst = tmp();
    symlinkSync(outside, path.join(dst, "etc"));
    ok(env, "restore", `latest:${src}`, "--target", dst);
    expect(readdirSync(outside)).toEqual([]);
    expect(existsSync(path.join(dst, "etc/passwd"))).toBe(true);
  });
});

describe("fidelity: a real Debian root", async () => {
  const root = await debianRoot();
  it.skipIf(!root || !canRsync || !isRoot)(
    `backs up and restores a debootstrapped bookworm that still runs (${debianRootSkipReason() ?? "root ok"})`,
    () => {
      const env = newEnv();
      ok(env, "repo", "init");
      const b = ok(env, "backup", root!, "--json");
      expect(b.errors).toEqual([]);
      expect(b.snapshot.stats.totalFiles).toBeGreaterThan(5000);
      const dst = path.join(tmp(), "debian");
      ok(env, "restore", `latest:${root}`, "--target", dst);
      expect(rsyncItemize(root!, dst)).toBe("");
      const dpkg = spawnSync("chroot", [dst, "dpkg", "--version"], { encoding: "utf8" });
      expect(dpkg.status, dpkg.stderr).toBe(0);
      expect(dpkg.stdout).toMatch(/Debian 'dpkg' package management program/);
      const apt = spawnSync("chroot", [dst, "apt-get", "--version"], { encoding: "utf8" });
      expect(apt.status, apt.stderr).toBe(0);
      expect(apt.stdout).toMatch(/^apt /);
      expect(strata(env, "check", "--read-data").code).toBe(0);
    },
  );
});
