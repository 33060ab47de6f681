import { mkdirSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { cleanup, newEnv, ok, sh, strata, tmp } from "./helpers.js";

afterAll(cleanup);

/**
 * Two directories backed up in separate snapshots so that each lands in its
 * own pack: damaging one pack must name exactly the files in it, and leave
 * the other restorable.
 */
function setup() {
  const base = tmp();
  const a = path.join(base, "alpha");
  const b = path.join(base, "beta");
  mkdirSync(a);
  mkdirSync(b);
  writeFileSync(path.join(a, "a1.bin"), sh("head -c 300000 /dev/urandom | base64"));
  writeFileSync(path.join(b, "b1.bin"), sh("head -c 300000 /dev/urandom | base64"));
  const env = newEnv();
  ok(env, "repo", "init");
  const sa = ok(env, "backup", a, "--json").snapshot.id as string;
  const sb = ok(env, "backup", b, "--json").snapshot.id as string;
  const packs = listPacks(env.repo);
  // The pack that holds alpha's data is the older one: find it via the catalog.
  const stats = ok(env, "check", "--read-data", "--json");
  expect(stats.ok).toBe(true);
  return { env, a, b, sa, sb, packs };
}

function listPacks(repo: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(path.join(repo, "packs")))
    for (const f of readdirSync(path.join(repo, "packs", d))) out.push(path.join(repo, "packs", d, f));
  return out.sort(
    (x, y) => Number(sh(`stat -c %Y%N ${x} >/dev/null; stat -c %W ${x}`)) - Number(sh(`stat -c %W ${y}`)),
  );
}

/** The pack holding alpha's file: the one whose damage is traced to a1.bin. */
function packOf(env: ReturnType<typeof newEnv>, packs: string[], file: string): string {
  for (const p of packs) {
    const saved = readFileSync(p);
    truncateSync(p, 0);
    const r = strata(env, "check", "--json");
    writeFileSync(p, saved);
    const rep = JSON.parse(r.stdout);
    if (rep.affected.some((x: { path: string }) => x.path.endsWith(file))) return p;
  }
  throw new Error(`no pack holds ${file}`);
}

describe("check names damage; undamaged data still restores", () => {
  let ctx: ReturnType<typeof setup>;
  beforeEach(() => {
    ctx = setup();
  });

  for (const kind of ["flip one byte", "truncate", "delete"] as const) {
    it(`${kind} in a pack: check reports the pack, the snapshot and the file`, () => {
      const { env, a, b, sa, sb, packs } = ctx;
      const victim = packOf(env, packs, "a1.bin");
      const packId = path.basename(victim);
      if (kind === "flip one byte") {
        const buf = readFileSync(victim);
        buf[1000]! ^= 0x40;
        writeFileSync(victim, buf);
      } else if (kind === "truncate") truncateSync(victim, Math.floor(readFileSync(victim).length / 2));
      else rmSync(victim);
      const r = strata(env, "check", "--read-data", "--json");
      expect(r.code).toBe(1);
      const rep = JSON.parse(r.stdout);
      expect(rep.ok).toBe(false);
      expect(JSON.stringify(rep.errors)).toContain(packId);
      const hit = rep.affected.filter((x: { path: string }) => x.path.endsWith("/a1.bin"));
      expect(hit.length).toBeGreaterThan(0);
      expect(hit.map((x: { snapshot: string }) => x.snapshot)).toContain(sa);
      expect(rep.affected.some((x: { path: string }) => x.path.endsWith("/b1.bin"))).toBe(false);
      // Human output names them too.
      const human = strata(env, "check", "--read-data").stdout;
      expect(human).toContain(packId);
      expect(human).toMatch(new RegExp(`damaged: snapshot ${sa.slice(0, 8)} file .*a1\\.bin`));
      // Undamaged beta restores fine.
      const dst = tmp();
      ok(env, "restore", `${sb}:${b}`, "--target", dst);
      expect(readFileSync(path.join(dst, "b1.bin")).equals(readFileSync(path.join(b, "b1.bin")))).toBe(true);
      // Restoring damaged alpha fails loudly, naming the file.
      const bad = strata(env, "restore", `${sa}:${a}`, "--target", tmp());
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toMatch(/a1\.bin/);
    });
  }
});

describe("check traces damage in a directory that recurs", () => {
  // The same directory (same tree id) at /a/c, /b/c and /c: check marks a
  // directory's subdirectories in one batch and visits each tree once, where
  // it is first met — here inside /a, before the /c beside it. The damage
  // must still be named at every path.
  it("names the damaged file at every path the shared tree appears", () => {
    const base = tmp();
    const root = path.join(base, "root");
    const content = sh("head -c 200000 /dev/urandom | base64");
    for (const d of ["a/c", "b/c", "c"]) {
      mkdirSync(path.join(root, d), { recursive: true });
      writeFileSync(path.join(root, d, "f.bin"), content);
      sh(`touch -d '2024-01-02 03:04:05' ${path.join(root, d, "f.bin")}`);
    }
    const env = newEnv();
    ok(env, "repo", "init");
    const snap = ok(env, "backup", root, "--json").snapshot.id as string;
    const victim = packOf(env, listPacks(env.repo), "f.bin");
    rmSync(victim);
    const r = strata(env, "check", "--json");
    expect(r.code).toBe(1);
    const rep = JSON.parse(r.stdout);
    const paths = rep.affected
      .filter((x: { snapshot: string }) => x.snapshot === snap)
      .map((x: { path: string }) => x.path.slice(x.path.indexOf("/root/") + "/root".length))
      .sort();
    expect(paths).toEqual(["/a/c/f.bin", "/b/c/f.bin", "/c/f.bin"]);
  });
});
