#!/usr/bin/env node
// Peak RSS and repository size of Strata next to restic, on the benchmark's
// data sets A and B (bench/lib/data.mjs): the two goals that memory and
// bytes decide, measured without the 17-minute bench/run.mjs. Memory and
// size are stable on a busy machine; the times printed are not.
//
//   node bench/rss.mjs                      both sets, strata (this tree) and restic
//   node bench/rss.mjs --sets=B --steps=backup --tools=strata
//   node bench/rss.mjs --scale=0.1          small data for a quick look
//
// Options (flag --name=value or env BENCH_NAME):
//   sets     A,B                 data sets
//   tools    strata,restic       tools to run; restic's results are cached in
//                                out/restic-<set>.json and reused unless --restic=run
//   steps    backup,restore,check
//   scale    1                   as in bench/run.mjs
//   debian   /work/main/.cache/debian-bookworm-minbase (or $STRATA_TEST_CACHE_DIR/…)
//   out      bench/out/rss       data (kept between runs), repositories, logs
//   strata   bin/strata.js of this tree (build it first: npx tsc -b)
//
// Steps per tool: init, backup, a no-change backup, repository size
// (du -sb, Strata's catalog.db included), restore into an empty target,
// check --read-data. Peak RSS is /usr/bin/time -v's "Maximum resident set
// size" (Strata's worker threads are in its one process).
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { genSmallTree, genUserData } from "./lib/data.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");

function opt(name, def) {
  const flag = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (flag) return flag.slice(name.length + 3);
  const env = process.env[`BENCH_${name.toUpperCase()}`];
  return env !== undefined && env !== "" ? env : def;
}

const OUT = path.resolve(opt("out", path.join(here, "out", "rss")));
const SETS = opt("sets", "A,B").split(",").filter(Boolean);
const TOOLS = opt("tools", "strata,restic").split(",").filter(Boolean);
const STEPS = new Set(opt("steps", "backup,restore,check").split(",").filter(Boolean));
const SCALE = Number(opt("scale", "1"));
const RESTIC = opt("restic", "cached");
const STRATA_BIN = path.resolve(opt("strata", path.join(root, "bin/strata.js")));
const cacheRoot = process.env.STRATA_TEST_CACHE_DIR || "/work/main/.cache";
const DEBIAN = opt("debian", path.join(cacheRoot, "debian-bookworm-minbase"));
const PASSWORD = "bench-password";

const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const q = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
const sh = (cmd) => execFileSync("bash", ["-c", cmd], { encoding: "utf8", maxBuffer: 64 << 20 }).trim();
const duBytes = (p) => (existsSync(p) ? Number(sh(`du -sb ${q(p)} | cut -f1`)) : 0);

/** Generate the data set once; later runs reuse it (the marker names the scale). */
function dataSet(set) {
  const dir = path.join(OUT, "data", `${set}-${SCALE}`);
  const marker = path.join(dir, ".complete");
  if (existsSync(marker)) return dir;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  log(`generating data set ${set} (scale ${SCALE}) in ${dir}`);
  if (set === "A") {
    if (existsSync(path.join(DEBIAN, "etc/debian_version")))
      sh(`cp -a ${q(DEBIAN)} ${q(path.join(dir, "debian"))}`);
    else log(`no Debian root at ${DEBIAN}: data set A is the user data only`);
    genUserData(path.join(dir, "user"), 1, SCALE);
  } else if (set === "B") {
    genSmallTree(dir, 1, Math.max(100, Math.round(200_000 * SCALE)));
  } else throw new Error(`unknown data set ${set}`);
  writeFileSync(marker, "");
  return dir;
}

function measure(name, argv, env, cwd) {
  const logs = path.join(OUT, "logs");
  mkdirSync(logs, { recursive: true });
  const timeFile = path.join(logs, `${name}.time`);
  const outFd = openSync(path.join(logs, `${name}.out`), "w");
  const errFd = openSync(path.join(logs, `${name}.err`), "w");
  const t0 = process.hrtime.bigint();
  const r = spawnSync("/usr/bin/time", ["-v", "-o", timeFile, ...argv], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", outFd, errFd],
  });
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  closeSync(outFd);
  closeSync(errFd);
  const tv = existsSync(timeFile) ? readFileSync(timeFile, "utf8") : "";
  const m = tv.match(/Maximum resident set size \(kbytes\): (\d+)/);
  const rssMB = m ? Number(m[1]) / 1024 : null;
  const tag = r.status === 0 ? "" : `  EXIT ${r.status} (see ${path.join(logs, `${name}.err`)})`;
  log(
    `${name}: ${rssMB?.toFixed(1)} MB peak RSS, ${wallS.toFixed(1)} s (not comparable: busy machine)${tag}`,
  );
  if (r.status !== 0) throw new Error(`${name} failed`);
  return { rssMB, wallS };
}

const TOOL_DEFS = {
  strata: (repo, cache) => ({
    env: { STRATA_REPO: repo, STRATA_PASSWORD: PASSWORD, STRATA_CACHE_DIR: cache },
    init: ["node", STRATA_BIN, "repo", "init"],
    backup: (data) => ["node", STRATA_BIN, "backup", data, "--json"],
    restore: (t) => ["node", STRATA_BIN, "restore", "latest", "--target", t],
    check: ["node", STRATA_BIN, "check", "--read-data"],
  }),
  restic: (repo, cache) => ({
    env: { RESTIC_REPOSITORY: repo, RESTIC_PASSWORD: PASSWORD, RESTIC_CACHE_DIR: cache },
    init: ["restic", "init"],
    backup: (data) => ["restic", "backup", "--compression", "auto", "--json", data],
    restore: (t) => ["restic", "restore", "latest", "--target", t],
    check: ["restic", "check", "--read-data"],
  }),
};

function runTool(set, tool, data) {
  const cachedFile = path.join(OUT, `${tool}-${set}-${SCALE}.json`);
  const steps = [...STEPS].sort().join(",");
  if (tool === "restic" && RESTIC === "cached" && existsSync(cachedFile)) {
    const c = JSON.parse(readFileSync(cachedFile, "utf8"));
    if (c.steps === steps) {
      log(`${set} restic: cached results (${cachedFile}; --restic=run to measure again)`);
      return c;
    }
  }
  const repo = path.join(OUT, "repos", `${set}-${tool}`);
  const cache = path.join(OUT, "cache", `${set}-${tool}`);
  const target = path.join(OUT, "restore", `${set}-${tool}`);
  for (const d of [repo, cache, target]) rmSync(d, { recursive: true, force: true });
  mkdirSync(cache, { recursive: true });
  const t = TOOL_DEFS[tool](repo, cache);
  const res = { steps, rss: {}, wall: {} };
  const step = (name, argv, cwd) => {
    const m = measure(`${set}-${tool}-${name}`, argv, t.env, cwd);
    res.rss[name] = m.rssMB;
    res.wall[name] = m.wallS;
  };
  step("init", t.init);
  if (STEPS.has("backup") || STEPS.has("restore") || STEPS.has("check")) {
    step("backup", t.backup(data));
    step("backup2", t.backup(data));
    res.repoBytes = duBytes(repo);
    if (tool === "strata") res.catalogBytes = duBytes(path.join(repo, "catalog.db"));
  }
  if (STEPS.has("restore")) {
    mkdirSync(target, { recursive: true });
    step("restore", t.restore(target));
    rmSync(target, { recursive: true, force: true });
  }
  if (STEPS.has("check")) step("check", t.check);
  if (tool === "restic") writeFileSync(cachedFile, JSON.stringify(res, null, 2));
  return res;
}

const results = {};
for (const set of SETS) {
  const data = dataSet(set);
  results[set] = {};
  for (const tool of TOOLS) results[set][tool] = runTool(set, tool, data);
}

const mb = (b) => (b / 1e6).toFixed(1);
const ratio = (a, b) => (a != null && b ? (a / b).toFixed(2) : "–");
console.log(`\nPeak RSS (MB) and repository size, scale ${SCALE}; Strata ${STRATA_BIN}`);
for (const set of SETS) {
  const s = results[set].strata;
  const r = results[set].restic;
  console.log(`\n${set}:`);
  console.log("| step | strata | restic | strata/restic |");
  console.log("| --- | ---: | ---: | ---: |");
  const names = [...new Set([...Object.keys(s?.rss ?? {}), ...Object.keys(r?.rss ?? {})])].filter(
    (n) => n !== "init",
  );
  for (const n of names) {
    console.log(
      `| ${n} | ${s?.rss[n]?.toFixed(0) ?? "–"} | ${r?.rss[n]?.toFixed(0) ?? "–"} | ${ratio(s?.rss[n], r?.rss[n])} |`,
    );
  }
  const maxS = s ? Math.max(...names.map((n) => s.rss[n] ?? 0)) : null;
  const maxR = r ? Math.max(...names.map((n) => r.rss[n] ?? 0)) : null;
  console.log(
    `| peak, any step | ${maxS?.toFixed(0) ?? "–"} | ${maxR?.toFixed(0) ?? "–"} | ${ratio(maxS, maxR)} |`,
  );
  if (s?.repoBytes || r?.repoBytes) {
    const cat = s?.catalogBytes ? ` (catalog.db ${mb(s.catalogBytes)})` : "";
    console.log(
      `| repository MB | ${s ? mb(s.repoBytes) : "–"}${cat} | ${r ? mb(r.repoBytes) : "–"} | ${ratio(s?.repoBytes, r?.repoBytes)} |`,
    );
  }
}
writeFileSync(path.join(OUT, "last.json"), JSON.stringify(results, null, 2));
