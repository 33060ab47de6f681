import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, duBytes, isRoot, newEnv, ok, sh, strata, tmp } from "./helpers.js";

afterAll(cleanup);

describe("bad input gives a clear message and no damage", () => {
  it("missing repository", () => {
    const env = newEnv();
    const r = strata(env, "snapshots");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`no repository at ${env.repo}`);
    expect(r.stderr).toMatch(/hint: create one with `strata repo init/);
    expect(existsSync(env.repo)).toBe(false); // nothing created as a side effect
  });

  it("no repository or password configured", () => {
    const env = newEnv();
    const r = strata({ ...env, extra: { STRATA_REPO: "" } }, "snapshots");
    expect(r.stderr).toMatch(/no repository given[\s\S]*--repo DIR or set STRATA_REPO/);
    const p = strata({ ...env, password: "" }, "repo", "init");
    expect(p.stderr).toMatch(/no repository password given[\s\S]*STRATA_PASSWORD or pass --password-file/);
  });

  it("wrong password, and --json errors", () => {
    const env = newEnv();
    ok(env, "repo", "init");
    const r = strata({ ...env, password: "wrong" }, "snapshots");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`wrong password for the repository at ${env.repo}`);
    const j = strata({ ...env, password: "wrong" }, "snapshots", "--json");
    expect(JSON.parse(j.stdout).error.code).toBe("WRONG_PASSWORD");
    const pwfile = path.join(tmp(), "pw");
    writeFileSync(pwfile, `${env.password}\n`);
    ok({ ...env, password: "" }, "--password-file", pwfile, "snapshots");
  });

  it("corrupt config is named and the data stays intact", () => {
    const env = newEnv();
    ok(env, "repo", "init");
    const src = tmp();
    writeFileSync(path.join(src, "f"), "data");
    ok(env, "backup", src);
    const cfg = path.join(env.repo, "config");
    const good = readFileSync(cfg);
    const bad = Buffer.from(good);
    bad[20]! ^= 1;
    writeFileSync(cfg, bad);
    const r = strata(env, "snapshots");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`repository config at ${env.repo}/config is invalid`);
    expect(r.stderr).toMatch(/hint: restore the config object/);
    writeFileSync(cfg, good);
    expect(strata(env, "check", "--read-data").code).toBe(0);
  });

  it("init refuses to overwrite an existing repository", () => {
    const env = newEnv();
    ok(env, "repo", "init");
    const r = strata(env, "repo", "init");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("a repository already exists");
  });

  it("unknown snapshot, ambiguous prefix and bad ids are explained", () => {
    const env = newEnv();
    ok(env, "repo", "init");
    expect(strata(env, "ls", "latest").stderr).toMatch(/has no snapshots[\s\S]*strata backup/);
    expect(strata(env, "ls", "../../etc").stderr).toMatch(/is not a snapshot id/);
    expect(strata(env, "ls", "abcdef").stderr).toMatch(/no snapshot matches abcdef/);
  });

  it("forget without a keep rule refuses", () => {
    const env = newEnv();
    ok(env, "repo", "init");
    expect(strata(env, "forget").stderr).toMatch(/refusing to remove every snapshot/);
  });

  it("unreadable files are named, the rest is stored, exit code 3", () => {
    const src = tmp();
    mkdirSync(path.join(src, "sub"));
    writeFileSync(path.join(src, "ok.txt"), "fine");
    writeFileSync(path.join(src, "secret.txt"), "nope");
    chmodSync(path.join(src, "secret.txt"), 0);
    mkdirSync(path.join(src, "locked"));
    writeFileSync(path.join(src, "locked/inner"), "x");
    chmodSync(path.join(src, "locked"), 0);
    const env = newEnv();
    // As root permissions do not apply: run the backup as nobody instead.
    let extraArgs: string[] = [];
    if (isRoot) {
      for (const p of [src, path.dirname(env.repo)]) sh(`chown -R nobody:nogroup ${JSON.stringify(p)}`);
      chmodSync(path.dirname(src), 0o755);
      extraArgs = [];
    }
    const run = (...args: string[]) => {
      const cmd = [process.execPath, path.resolve("bin/strata.js"), ...args];
      const r = spawnSync(
        isRoot ? "setpriv" : cmd[0]!,
        isRoot ? ["--reuid=nobody", "--regid=nogroup", "--clear-groups", ...cmd] : cmd.slice(1),
        {
          encoding: "utf8",
          env: {
            ...process.env,
            STRATA_REPO: env.repo,
            STRATA_PASSWORD: env.password,
            STRATA_CACHE_DIR: env.cache,
            STRATA_SCRYPT_LOG_N: "12",
            HOME: "/nonexistent",
          },
        },
      );
      return { code: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    expect(run("repo", "init", ...extraArgs).code).toBe(0);
    const r = run("backup", src);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain(`${src}/secret.txt`);
    expect(r.stderr).toContain(`${src}/locked`);
    expect(r.stdout).toMatch(/could not be read/);
    const ls = run("ls", "latest", src);
    expect(ls.stdout).toContain(`${src}/ok.txt`);
    expect(ls.stdout).not.toContain("secret.txt");
    expect(run("check", "--read-data").code).toBe(0);
  });

  it("a file growing during backup is retried, then named, never stored torn", async () => {
    const src = tmp();
    writeFileSync(path.join(src, "stable"), "s".repeat(1000));
    const growing = path.join(src, "growing.log");
    writeFileSync(growing, Buffer.alloc(8 * 1024 * 1024, 1));
    const env = newEnv();
    ok(env, "repo", "init");
    // A writer appending continuously while the backup runs.
    const writer = spawn("bash", [
      "-c",
      `while true; do head -c 65536 /dev/zero >> ${JSON.stringify(growing)}; done`,
    ]);
    try {
      const r = strata(env, "backup", src, "--json");
      const out = JSON.parse(r.stdout);
      if (r.code === 3) {
        expect(out.errors[0].path).toBe(growing);
        expect(out.errors[0].message).toMatch(/changed while being read/);
      } else {
        // It may also have caught a quiet moment: then the stored copy must be whole.
        expect(r.code).toBe(0);
      }
      const ls = ok(env, "ls", "latest", src, "--json");
      const entry = ls.find((x: { path: string }) => x.path === growing);
      if (entry) expect(entry.size % 65536).toBe(0);
    } finally {
      writer.kill("SIGKILL");
    }
    expect(strata(env, "check", "--read-data").code).toBe(0);
  });

  it.skipIf(!isRoot)(
    "a full disk on the repository: clear message, check passes, the next backup completes",
    () => {
      const base = tmp();
      const mnt = path.join(base, "small");
      mkdirSync(mnt);
      sh(`mount -t tmpfs -o size=12m tmpfs ${JSON.stringify(mnt)}`);
      try {
        const env = { ...newEnv(), repo: path.join(mnt, "repo") };
        ok(env, "repo", "init");
        const src = path.join(base, "src");
        mkdirSync(src);
        sh(`head -c 40000000 /dev/urandom > ${JSON.stringify(path.join(src, "big"))}`);
        writeFileSync(path.join(src, "small"), "small");
        const r = strata(env, "backup", src);
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(/no space left while writing/);
        expect(r.stderr).toMatch(/hint: free space/);
        // On a disk left with no byte free, check cannot even take its lease in
        // the catalog: then it must say so (never report damage); else it passes.
        const c = strata(env, "check", "--read-data");
        if (c.code !== 0) expect(c.stderr).toMatch(/no space left while writing the catalog/);
        // Make room (a bigger disk) and try again.
        sh(`mount -o remount,size=80m ${JSON.stringify(mnt)}`);
        const again = ok(env, "backup", src, "--json");
        expect(again.errors).toEqual([]);
        expect(strata(env, "check", "--read-data").code).toBe(0);
        expect(duBytes(env.repo)).toBeGreaterThan(39_000_000);
      } finally {
        sh(`umount ${JSON.stringify(mnt)}`);
      }
    },
  );
});

describe("--help everywhere", () => {
  it("every command has --help", () => {
    const env = newEnv();
    for (const cmd of [
      [],
      ["repo", "init"],
      ["backup"],
      ["snapshots"],
      ["ls"],
      ["diff"],
      ["restore"],
      ["check"],
      ["forget"],
      ["prune"],
      ["stats"],
    ]) {
      const r = strata(env, ...cmd, "--help");
      expect(r.code, cmd.join(" ")).toBe(0);
      expect(r.stdout).toMatch(/Usage: strata/);
    }
  });
});
