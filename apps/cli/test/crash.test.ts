import { createHash } from "node:crypto";
import { once } from "node:events";
import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { rsyncItemize } from "@strata/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, duBytes, hasCommand, newEnv, ok, sh, spawnStrata, strata, tmp } from "./helpers.js";

afterAll(cleanup);

/** A tree of ~60 MB: many small files, some medium, a few large; partly compressible. */
function buildData(dir: string, seed: string, files = 1500): void {
  let n = 0;
  for (let d = 0; d < 30; d++) {
    const sub = path.join(dir, `d${d}`);
    mkdirSync(sub, { recursive: true });
    for (let f = 0; f < files / 30; f++, n++) {
      const size = n % 100 === 0 ? 2_000_000 : n % 10 === 0 ? 100_000 : 4000;
      const buf = Buffer.allocUnsafe(size);
      for (let i = 0; i < size; i += 32)
        createHash("sha256").update(`${seed}:${n}:${i}`).digest().copy(buf, i);
      if (n % 2 === 0) buf.fill(n % 251, 0, size >> 1); // half of them compress well
      writeFileSync(path.join(sub, `f${f}`), buf);
    }
  }
}

/** Kill `args` with SIGKILL after `ms`; resolves with its exit signal (null when it finished first). */
async function killAfter(
  env: ReturnType<typeof newEnv>,
  ms: number,
  ...args: string[]
): Promise<string | null> {
  const p = spawnStrata(env, ...args);
  const timer = setTimeout(() => p.kill("SIGKILL"), ms);
  const [code, signal] = (await once(p, "exit")) as [number | null, string | null];
  clearTimeout(timer);
  if (signal === null && code !== 0 && code !== 3)
    throw new Error(`strata ${args.join(" ")} failed with ${code}`);
  return signal;
}

/** Deterministic "random" moments spread over [0, span). */
const moments = (count: number, span: number, seed: number) =>
  Array.from({ length: count }, (_, i) =>
    Math.floor(((((Math.sin(seed + i * 12.9898) * 43758.5453) % 1) + 1) % 1) * span),
  );

describe("crash safety", () => {
  it.skipIf(!hasCommand("rsync"))(
    "SIGKILL at 20 moments during backup: check passes each time, the next backup completes and restores",
    async () => {
      const src = path.join(tmp(), "data");
      buildData(src, "crash");
      const env = newEnv();
      ok(env, "repo", "init");
      // Time a backup that re-reads everything but stores nothing new: the
      // shortest an attempt below can take. Kill moments are spread over it.
      ok(env, "backup", src, "--no-cache");
      const t0 = Date.now();
      ok(env, "backup", src, "--no-cache");
      const span = Math.max(300, Date.now() - t0);
      const env2 = newEnv();
      ok(env2, "repo", "init");
      let killed = 0;
      for (const [i, ms] of moments(20, span, 1).entries()) {
        // Change a few files between attempts so later backups have new data too.
        if (i % 5 === 4) writeFileSync(path.join(src, `d${i}`, "f1"), `changed ${i}`);
        // --no-cache: every attempt reads every file, so the kill lands mid-work
        // (resumption is still shown: stored chunks are not stored again).
        const sig = await killAfter(env2, ms, "backup", src, "--no-cache");
        if (sig) killed++;
        const c = strata(env2, "check", "--read-data", "--json");
        expect(c.code, `check after kill #${i} at ${ms} ms: ${c.stdout}`).toBe(0);
      }
      expect(killed).toBeGreaterThanOrEqual(10);
      const last = ok(env2, "backup", src, "--json");
      // Resumption: what earlier attempts stored is not stored again, so 20
      // interrupted attempts cost little more than one clean backup.
      expect(duBytes(path.join(env2.repo, "packs"))).toBeLessThan(duBytes(path.join(env.repo, "packs")) * 2);
      expect(last.errors).toEqual([]);
      const dst = path.join(tmp(), "r");
      ok(env2, "restore", `latest:${src}`, "--target", dst);
      expect(rsyncItemize(src, dst)).toBe("");
    },
    // Twenty kill rounds, each followed by check --read-data: slow on a busy machine.
    600_000,
  );

  it.skipIf(!hasCommand("rsync"))(
    "SIGKILL at 20 moments during prune: check passes each time and data stays restorable",
    async () => {
      const src = path.join(tmp(), "data");
      buildData(src, "prune", 600);
      const env = newEnv();
      ok(env, "repo", "init", "--json");
      // Several generations so prune has whole packs and partly used packs to handle.
      for (let g = 0; g < 4; g++) {
        buildData(path.join(src, `gen${g % 2}`), `gen${g}`, 300);
        ok(env, "backup", src);
      }
      ok(env, "forget", "--keep-last", "1");
      // Time a prune on a copy of this state: kill moments are spread over it.
      const copy = { ...env, repo: path.join(tmp(), "copy") };
      sh(`cp -a ${JSON.stringify(env.repo)} ${JSON.stringify(copy.repo)}`);
      const t0 = Date.now();
      ok(copy, "prune", "--grace", "0");
      // Later rounds have a little less garbage than this first state: aim
      // the kills at the first 60% of the measured time.
      const span = Math.max(200, Math.floor((Date.now() - t0) * 0.6));
      const before = duBytes(path.join(env.repo, "packs"));
      let killed = 0;
      let added = 0;
      const duBytesAdded = (b: { snapshot: { stats: { bytesAdded: number } } }) =>
        b.snapshot.stats.bytesAdded;
      // Until 20 prunes were really killed: a prune that finished before its
      // moment (a busy machine changes timings) shortens the next moments.
      const planned = moments(40, span, 7);
      let scale = 1;
      for (let i = 0; killed < 20 && i < planned.length; i++) {
        const ms = Math.floor(planned[i]! * scale);
        if (i > 0) {
          // New garbage each round, so every prune has work to be killed in.
          buildData(path.join(src, `gen${i % 2}`), `round${i}`, 240);
          added += duBytesAdded(ok(env, "backup", src, "--json"));
          ok(env, "forget", "--keep-last", "1");
        }
        if (await killAfter(env, ms, "prune", "--grace", "0")) killed++;
        else scale *= 0.6;
        const c = strata(env, "check", "--read-data", "--json");
        expect(c.code, `check after prune kill #${i} at ${ms} ms: ${c.stdout}`).toBe(0);
      }
      expect(killed).toBeGreaterThanOrEqual(20);
      // Twice: the second sweep deletes what the first doomed.
      ok(env, "prune", "--grace", "0");
      const last = ok(env, "prune", "--grace", "0", "--json");
      expect(last.packsWaiting).toBe(0);
      // Garbage of forgotten generations is gone despite the kills.
      expect(duBytes(path.join(env.repo, "packs"))).toBeLessThan(before + added);
      const dst = path.join(tmp(), "r");
      ok(env, "restore", `latest:${src}`, "--target", dst);
      expect(rsyncItemize(src, dst)).toBe("");
      const b = ok(env, "backup", src, "--json");
      expect(b.errors).toEqual([]);
    },
    // Twenty kill rounds, each followed by check --read-data: slow on a busy machine.
    600_000,
  );
});
