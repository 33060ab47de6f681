#!/usr/bin/env node
// Strata vs restic vs borg, side by side on the same data, plus the floors
// (stat walk, sha256sum on both cores, tar | zstd -1). See docs/benchmarks.md.
//
//   node bench/run.mjs                       full run (data sets A and B)
//   node bench/run.mjs --sets=B --scale=0.02 quick run on small data
//   node bench/run.mjs --render=bench/out/results.json   re-print the tables
//
// Options (flag --name=value or env BENCH_NAME):
//   sets     A,B                  which data sets
//   tools    strata,restic,borg   which tools
//   scale    1                    scales the generated data (user data of A, file count of B)
//   debian   /work/main/.cache/debian-bookworm-minbase  Debian root for A ("none" to skip;
//            built with debootstrap into bench/out/ when the default is missing)
//   out      bench/out            where data, repositories, logs and results go
//   seed     1                    data seed
//   verify   1                    compare every restore with the source (rsync -c, untimed)
//   study    1                    run the chunk-size study on data set A
//   keep     0                    keep repositories and data after the run
//   init     (none)               extra `strata repo init` arguments, space-separated
//            (e.g. "--chunk-avg 131072"), to measure other repository parameters
//   mirror   (from apt's sources) Debian mirror for debootstrap
//   strata   head                 "head": benchmark a private build of the committed HEAD
//            (git archive into bench/out/strata-<sha>, node_modules linked, tsc -b), so
//            uncommitted work in the shared tree does not leak in; "live": this tree as is
// Needs root for dropping the page cache; without it the cache is warmed
// identically (tar of the data set to /dev/null) before every measured step.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { changeOnePercent, genSmallTree, genUserData, listFiles } from "./lib/data.mjs";
import {
  cachesDropped,
  createRunner,
  DEFAULT_DEBIAN,
  duBytes,
  ensureDebian as ensureDebianAt,
  log,
  machineInfo,
  opt,
  prepareStrata as prepareStrataAt,
  q,
  round,
  sh,
  tryOut,
} from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

const OUT = path.resolve(opt("out", path.join(here, "out")));
const SETS = opt("sets", "A,B").split(",").filter(Boolean);
const TOOLS = opt("tools", "strata,restic,borg").split(",").filter(Boolean);
const SCALE = Number(opt("scale", "1"));
const SEED = Number(opt("seed", "1"));
const DEBIAN = opt("debian", DEFAULT_DEBIAN);
const VERIFY = opt("verify", "1") !== "0";
const STUDY = opt("study", "1") !== "0";
const KEEP = opt("keep", "0") !== "0";
const INIT_ARGS = opt("init", "").split(" ").filter(Boolean);
const PASSWORD = "bench-password";
const STRATA_MODE = opt("strata", "head");
let STRATA_BIN = null; // set by prepareStrata()
const { measure, readLog } = createRunner(path.join(OUT, "logs"));
const prepareStrata = () => prepareStrataAt(STRATA_MODE, OUT);
const ensureDebian = () => (DEBIAN === "none" ? null : ensureDebianAt(DEBIAN, OUT, opt("mirror", "")));
const machine = () => machineInfo(OUT, STRATA_INFO);

// ---------------------------------------------------------------- tools

function makeTools(set) {
  const dir = (tool, what) => path.join(OUT, what, `${set}-${tool}`);
  const tools = {
    strata: {
      version: () => STRATA_INFO.commit + (STRATA_INFO.dirty ? " + uncommitted changes" : ""),
      env: () => ({
        STRATA_REPO: dir("strata", "repos"),
        STRATA_PASSWORD: PASSWORD,
        STRATA_CACHE_DIR: dir("strata", "cache"),
      }),
      repo: () => dir("strata", "repos"),
      cache: () => dir("strata", "cache"),
      init: () => ["node", STRATA_BIN, "repo", "init", ...INIT_ARGS],
      backup: (data) => ["node", STRATA_BIN, "backup", data, "--json"],
      restore: (target) => ({ argv: ["node", STRATA_BIN, "restore", "latest", "--target", target] }),
      check: () => ["node", STRATA_BIN, "check", "--read-data"],
      parseBackup: (out) => {
        try {
          return JSON.parse(out).snapshot.stats;
        } catch {
          return null;
        }
      },
      stats: (env) => {
        try {
          return JSON.parse(
            execFileSync("node", [STRATA_BIN, "stats", "--json"], {
              env: { ...process.env, ...env },
              encoding: "utf8",
            }),
          );
        } catch {
          return null;
        }
      },
    },
    restic: {
      version: () => tryOut("restic version"),
      env: () => ({
        RESTIC_REPOSITORY: dir("restic", "repos"),
        RESTIC_PASSWORD: PASSWORD,
        RESTIC_CACHE_DIR: dir("restic", "cache"),
      }),
      repo: () => dir("restic", "repos"),
      cache: () => dir("restic", "cache"),
      init: () => ["restic", "init"],
      backup: (data) => ["restic", "backup", "--compression", "auto", "--json", data],
      restore: (target) => ({ argv: ["restic", "restore", "latest", "--target", target] }),
      check: () => ["restic", "check", "--read-data"],
      parseBackup: (out) => {
        const line = out
          .split("\n")
          .reverse()
          .find((l) => l.includes('"summary"'));
        try {
          return line ? JSON.parse(line) : null;
        } catch {
          return null;
        }
      },
      stats: () => null,
    },
    borg: {
      n: 0,
      version: () => tryOut("borg --version"),
      env: () => ({
        BORG_REPO: dir("borg", "repos"),
        BORG_PASSPHRASE: PASSWORD,
        BORG_BASE_DIR: dir("borg", "cache"),
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: "yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK: "yes",
      }),
      repo: () => dir("borg", "repos"),
      cache: () => dir("borg", "cache"),
      init: () => ["borg", "init", "-e", "repokey"],
      backup(data) {
        this.n++;
        return ["borg", "create", "--compression", "lz4", "--json", `::b${this.n}`, data];
      },
      restore(target) {
        return { argv: ["borg", "extract", `::b${this.n}`], cwd: target };
      },
      check: () => ["borg", "check", "--verify-data"],
      parseBackup: (out) => {
        try {
          return JSON.parse(out).archive.stats;
        } catch {
          return null;
        }
      },
      stats: () => null,
    },
  };
  return tools;
}

// ---------------------------------------------------------------- strata build

/** A private, frozen build of HEAD (see the `strata` option). Returns its root. */

// ---------------------------------------------------------------- data sets

function makeData(set) {
  const data = path.join(OUT, "data", set);
  rmSync(data, { recursive: true, force: true });
  mkdirSync(data, { recursive: true });
  const t0 = Date.now();
  const info = { path: data };
  if (set === "A") {
    const deb = ensureDebian();
    if (deb) {
      sh(`cp -a ${q(deb)} ${q(path.join(data, "debian"))}`);
      info.debianSource = deb;
    }
    const u = genUserData(path.join(data, "user"), SEED, SCALE);
    info.userFiles = u.files;
    info.userBytes = u.bytes;
    info.mustChange = u.large.filter((_, i) => i === 0 || i === 2 || i === 3).map((p) => `user/${p}`);
  } else if (set === "B") {
    const n = Math.max(100, Math.round(200_000 * SCALE));
    genSmallTree(data, SEED, n);
    info.mustChange = [];
  } else throw new Error(`unknown data set ${set}`);
  info.bytes = duBytes(data); // apparent size incl. directories
  info.regularFiles = Number(sh(`find ${q(data)} -type f | wc -l`));
  info.entries = Number(sh(`find ${q(data)} | wc -l`));
  info.fileBytes = Number(sh(`find ${q(data)} -type f -printf '%s\\n' | awk '{s+=$1} END {print s+0}'`));
  info.genSeconds = (Date.now() - t0) / 1000;
  log(
    `data set ${set}: ${info.regularFiles} files, ${(info.fileBytes / 1e6).toFixed(1)} MB in ${info.genSeconds} s`,
  );
  return info;
}

function floors(set, data) {
  const f = {};
  f.statWalk = measure(
    `${set}-floor-statwalk`,
    ["bash", "-c", `find ${q(data)} -printf '%i %s %T@ %C@\\n' > /dev/null`],
    { warmDir: data },
  );
  f.sha256 = measure(
    `${set}-floor-sha256`,
    ["bash", "-c", `find ${q(data)} -type f -print0 | xargs -0 -P2 -n 500 sha256sum > /dev/null`],
    {
      warmDir: data,
    },
  );
  f.tarZstd = measure(
    `${set}-floor-tarzstd`,
    ["bash", "-c", `tar -cf - -C ${q(data)} . | zstd -1 -T0 -q > /dev/null`],
    {
      warmDir: data,
    },
  );
  return f;
}

function verifyRestore(data, restored) {
  // Differences in content (checksum), perms, times, owners, links, devices, hard links.
  const r = spawnSync(
    "bash",
    [
      "-c",
      `rsync -n -i -c -rlptgoDH --numeric-ids --delete ${q(`${data}/`)} ${q(`${restored}/`)} | grep -v '^\\.d\\.\\.t\\.\\.\\.\\.\\.\\. \\./$' | head -n 1000`,
    ],
    { encoding: "utf8", maxBuffer: 64 << 20 },
  );
  const lines = r.stdout.split("\n").filter(Boolean);
  return { differences: lines.length, sample: lines.slice(0, 10) };
}

// ---------------------------------------------------------------- the run

function runSet(set, results) {
  log(`=== data set ${set}`);
  const info = makeData(set);
  const data = info.path;
  const res = { data: info, floors: null, change: null, tools: {}, study: null };
  results.sets[set] = res;
  const save = () => writeFileSync(path.join(OUT, "results.json"), JSON.stringify(results, null, 2));

  let study = null;
  if (set === "A" && STUDY) {
    log("chunk study: scanning version 1");
    const { ChunkStudy } = awaitStudy;
    study = new ChunkStudy(strataCore);
    study.scan(
      data,
      listFiles(data).map((f) => f.rel),
    );
  }

  res.floors = floors(set, data);
  save();

  const tools = makeTools(set);
  for (const t of TOOLS) {
    const tool = tools[t];
    const r = { version: tool.version() };
    res.tools[t] = r;
    rmSync(tool.repo(), { recursive: true, force: true });
    rmSync(tool.cache(), { recursive: true, force: true });
    mkdirSync(tool.cache(), { recursive: true });
    const env = tool.env();
    r.init = measure(`${set}-${t}-init`, tool.init(), { env, noDrop: true });
    r.backup1 = measure(`${set}-${t}-backup1`, tool.backup(data), { env, warmDir: data });
    r.backup1.report = tool.parseBackup(readLog(`${set}-${t}-backup1`));
    r.repoBytes1 = duBytes(tool.repo());
    r.backup2 = measure(`${set}-${t}-backup2`, tool.backup(data), { env, warmDir: data });
    r.backup2.report = tool.parseBackup(readLog(`${set}-${t}-backup2`));
    r.repoBytes2 = duBytes(tool.repo());
    save();
  }

  log(`changing 1% of the files of ${set}`);
  const ch = changeOnePercent(data, SEED, info.mustChange);
  res.change = {
    filesTotal: ch.filesTotal,
    files: ch.files,
    bytesChanged: ch.bytesChanged,
    ops: countOps(ch.changes),
  };
  writeFileSync(path.join(OUT, `changes-${set}.json`), JSON.stringify(ch, null, 1));
  if (study) {
    log("chunk study: scanning the changed files");
    study.rescan(
      data,
      ch.changes.map((c) => c.rel),
    );
    res.study = study.report();
  }
  save();

  for (const t of TOOLS) {
    const tool = tools[t];
    const r = res.tools[t];
    const env = tool.env();
    r.backup3 = measure(`${set}-${t}-backup3`, tool.backup(data), { env, warmDir: data });
    r.backup3.report = tool.parseBackup(readLog(`${set}-${t}-backup3`));
    r.repoBytes3 = duBytes(tool.repo());
    r.growthBytes = r.repoBytes3 - r.repoBytes2;
    r.cacheBytes = duBytes(tool.cache());
    r.stats = tool.stats(env);
    if (t === "strata" && r.stats) {
      const cat = duBytes(path.join(tool.repo(), "catalog.db"));
      r.catalogBytes = cat;
      r.catalogBytesPerEntry = Math.round(cat / Math.max(1, r.stats.chunks + r.stats.trees));
    }
    const target = path.join(OUT, "restore", `${set}-${t}`);
    rmSync(target, { recursive: true, force: true });
    mkdirSync(target, { recursive: true });
    const rs = tool.restore(target);
    r.restore = measure(`${set}-${t}-restore`, rs.argv, { env, cwd: rs.cwd, warmDir: data });
    if (VERIFY) {
      log(`verifying the ${t} restore`);
      r.verify = verifyRestore(data, path.join(target, data));
      if (r.verify.differences)
        log(`  ${r.verify.differences} differences, e.g. ${r.verify.sample.slice(0, 3).join(" | ")}`);
    }
    rmSync(target, { recursive: true, force: true });
    r.check = measure(`${set}-${t}-check`, tool.check(), { env, warmDir: data });
    save();
    if (!KEEP) rmSync(tool.repo(), { recursive: true, force: true });
  }
  if (!KEEP) rmSync(data, { recursive: true, force: true });
  save();
}

function countOps(changes) {
  const m = {};
  for (const c of changes) m[c.op] = (m[c.op] ?? 0) + 1;
  return m;
}

// ---------------------------------------------------------------- report

const fmtS = (x) => (x == null ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const fmtMB = (b) => (b == null ? "–" : (b / 1e6).toFixed(b < 1e7 ? 2 : 1));
const ratio = (a, b) => (a == null || b == null || b === 0 ? null : a / b);
const fmtR = (r) => (r == null ? "–" : r.toFixed(2));

const METRICS = [
  ["first backup (s)", (t) => t.backup1?.wallS, "time"],
  ["no-change backup (s)", (t) => t.backup2?.wallS, "time"],
  ["backup after 1% change (s)", (t) => t.backup3?.wallS, "time"],
  ["full restore (s)", (t) => t.restore?.wallS, "time"],
  ["check, read all data (s)", (t) => t.check?.wallS, "time"],
  ["repository size (MB)", (t) => t.repoBytes3, "bytes"],
  ["growth from 1% change (MB)", (t) => t.growthBytes, "bytes"],
  ["peak RSS, any step (MB)", (t) => peakRss(t), "rss"],
  ["peak RSS, first backup (MB)", (t) => t.backup1?.peakRssMB, "rss"],
  ["CPU of first backup, user+sys (s)", (t) => cpu(t.backup1), "time"],
  ["client cache size (MB)", (t) => t.cacheBytes, "bytes"],
];
const peakRss = (t) =>
  Math.max(...["backup1", "backup2", "backup3", "restore", "check"].map((k) => t[k]?.peakRssMB ?? 0));
const cpu = (m) => (m?.userS == null ? null : round(m.userS + m.sysS, 2));

export function render(results) {
  const out = [];
  for (const [set, s] of Object.entries(results.sets)) {
    const d = s.data;
    out.push(
      `### Data set ${set}: ${d.regularFiles} files (${d.entries} entries), ${fmtMB(d.fileBytes)} MB; 1% change: ${s.change?.files} files, ${s.change?.bytesChanged} bytes changed (${JSON.stringify(s.change?.ops ?? {})})`,
      "",
    );
    const tools = Object.keys(s.tools);
    const hasR = tools.includes("restic");
    const hasB = tools.includes("borg");
    out.push(
      `| metric | ${tools.join(" | ")} |${hasR ? " strata/restic |" : ""}${hasB ? " strata/borg |" : ""}`,
    );
    out.push(`|---|${tools.map(() => "---:|").join("")}${hasR ? "---:|" : ""}${hasB ? "---:|" : ""}`);
    for (const [label, f, kind] of METRICS) {
      const v = tools.map((t) => f(s.tools[t]));
      const fmt = kind === "bytes" ? fmtMB : kind === "rss" ? (x) => (x == null ? "–" : x.toFixed(0)) : fmtS;
      const st = s.tools.strata ? f(s.tools.strata) : null;
      out.push(
        `| ${label} | ${v.map(fmt).join(" | ")} |${hasR ? ` ${fmtR(ratio(st, f(s.tools.restic)))} |` : ""}${hasB ? ` ${fmtR(ratio(st, f(s.tools.borg)))} |` : ""}`,
      );
    }
    const fl = s.floors;
    const st = s.tools.strata;
    out.push(
      "",
      `Floors on ${set}: stat walk ${fmtS(fl.statWalk.wallS)} s, sha256sum (2 procs) ${fmtS(fl.sha256.wallS)} s, tar \\| zstd -1 -T0 ${fmtS(fl.tarZstd.wallS)} s.`,
    );
    if (st) {
      out.push(
        `Strata first backup / tar|zstd -1 = ${fmtR(ratio(st.backup1?.wallS, fl.tarZstd.wallS))}; first backup / sha256sum = ${fmtR(ratio(st.backup1?.wallS, fl.sha256.wallS))}; no-change backup / stat walk = ${fmtR(ratio(st.backup2?.wallS, fl.statWalk.wallS))}.`,
      );
    }
    const bad = tools.filter((t) => s.tools[t].verify?.differences);
    out.push(
      VERIFY_NOTE(s),
      bad.length
        ? `Restore differences: ${bad.map((t) => `${t}: ${s.tools[t].verify.differences} (${s.tools[t].verify.sample.slice(0, 3).join("; ")})`).join(" · ")}`
        : "",
      "",
    );
  }
  out.push(renderGoals(results));
  const a = results.sets.A;
  if (a?.study) {
    const per = a.tools.strata?.catalogBytesPerEntry ?? 100;
    out.push(
      "",
      "### Chunk-size study (data set A, two versions)",
      "",
      formatStudyTable(a.study, a.change.bytesChanged, per),
    );
  }
  return out.join("\n");
}
const VERIFY_NOTE = (s) =>
  Object.values(s.tools).some((t) => t.verify)
    ? `Restores verified with rsync -c: ${Object.entries(s.tools)
        .map(
          ([k, t]) =>
            `${k} ${t.verify ? (t.verify.differences ? `${t.verify.differences} differences` : "identical") : "not verified"}`,
        )
        .join(", ")}.`
    : "";

function formatStudyTable(rows, bytesChanged, per) {
  const MB = (b) => (b / 1e6).toFixed(2);
  const k = (n) => (n >= 1048576 ? `${n / 1048576}M` : `${n / 1024}K`);
  const lines = [
    `| avg (min/max) | chunks | unique chunks | unique MB (raw / zstd-3) | growth: new chunks | growth MB (raw / zstd-3) | growth ÷ bytes changed | chunk index entries after | est. catalog MB (${per} B/entry) |`,
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.label} (${k(r.minSize)}/${k(r.maxSize)}) | ${r.chunks} | ${r.uniqueChunks} | ${MB(r.uniqueRawBytes)} / ${MB(r.uniqueStoredBytes)} | ${r.growthChunks} | ${MB(r.growthRawBytes)} / ${MB(r.growthStoredBytes)} | ${Math.round(r.growthRawBytes / Math.max(1, bytesChanged))}× | ${r.totalUniqueChunks} | ${MB(r.totalUniqueChunks * per)} |`,
    );
  }
  return lines.join("\n");
}

function renderGoals(results) {
  const rows = [];
  const add = (goal, pass, detail) =>
    rows.push(`| ${goal} | ${pass == null ? "n/a" : pass ? "PASS" : "FAIL"} | ${detail} |`);
  for (const [set, s] of Object.entries(results.sets)) {
    const S = s.tools.strata;
    if (!S) continue;
    const R = s.tools.restic;
    const B = s.tools.borg;
    const timeRows = METRICS.filter(([, , k]) => k === "time").slice(0, 5);
    for (const [label, f] of timeRows) {
      for (const [name, o] of [
        ["restic", R],
        ["borg", B],
      ]) {
        if (!o) continue;
        const r = ratio(f(S), f(o));
        add(`${set}: ${label.replace(" (s)", "")} ≤ 1.0× ${name}`, r != null && r <= 1.0, `${fmtR(r)}×`);
      }
    }
    if (R) {
      const rs = ratio(S.repoBytes3, R.repoBytes3);
      add(
        `${set}: repository size ≤ restic's`,
        rs != null && rs <= 1,
        `${fmtMB(S.repoBytes3)} vs ${fmtMB(R.repoBytes3)} MB (${fmtR(rs)}×)`,
      );
      const rr = ratio(peakRss(S), peakRss(R));
      add(
        `${set}: peak RSS ≤ 2× restic's`,
        rr != null && rr <= 2,
        `${peakRss(S).toFixed(0)} vs ${peakRss(R).toFixed(0)} MB (${fmtR(rr)}×)`,
      );
      const rg = ratio(S.growthBytes, R.growthBytes);
      add(
        `${set}: growth from 1% change ≤ 0.5× restic's`,
        rg != null && rg <= 0.5,
        `${fmtMB(S.growthBytes)} vs ${fmtMB(R.growthBytes)} MB (${fmtR(rg)}×)`,
      );
    }
    const ft = ratio(S.backup1?.wallS, s.floors.tarZstd.wallS);
    add(
      `${set}: first backup ≤ 2× tar \\| zstd -1`,
      ft != null && ft <= 2,
      `${fmtS(S.backup1?.wallS)} vs ${fmtS(s.floors.tarZstd.wallS)} s (${fmtR(ft)}×)`,
    );
    if (set === "B") {
      const fs = ratio(S.backup2?.wallS, s.floors.statWalk.wallS);
      add(
        "B: no-change backup ≤ 3× stat walk",
        fs != null && fs <= 3,
        `${fmtS(S.backup2?.wallS)} vs ${fmtS(s.floors.statWalk.wallS)} s (${fmtR(fs)}×)`,
      );
    }
  }
  return ["### Goals", "", "| goal | result | measured |", "|---|---|---|", ...rows].join("\n");
}

// ---------------------------------------------------------------- main

let awaitStudy = null;
let strataCore = null;
let STRATA_INFO = null;

async function main() {
  const renderFrom = opt("render", "");
  if (renderFrom) {
    console.log(render(JSON.parse(readFileSync(renderFrom, "utf8"))));
    return;
  }
  mkdirSync(OUT, { recursive: true });
  STRATA_INFO = prepareStrata();
  STRATA_BIN = STRATA_INFO.bin;
  log(
    `Strata under test: ${STRATA_INFO.commit}${STRATA_INFO.dirty ? " + uncommitted changes" : ""} at ${STRATA_INFO.root}`,
  );
  if (STUDY && SETS.includes("A")) {
    awaitStudy = await import("./chunk-study.mjs");
    strataCore = await import(path.join(STRATA_INFO.root, "packages/core/dist/index.js"));
  }
  const results = {
    started: new Date().toISOString(),
    config: {
      sets: SETS,
      tools: TOOLS,
      scale: SCALE,
      seed: SEED,
      debian: DEBIAN,
      verify: VERIFY,
      strata: STRATA_MODE,
    },
    machine: machine(),
    sets: {},
  };
  for (const set of SETS) runSet(set, results);
  results.finished = new Date().toISOString();
  results.pageCache = cachesDropped()
    ? "dropped before every measured step (sync; echo 3 > /proc/sys/vm/drop_caches)"
    : "warmed identically (tar of the data set) before every step";
  const file = path.join(OUT, "results.json");
  writeFileSync(file, JSON.stringify(results, null, 2));
  const stamp = results.started.replace(/[:.]/g, "-");
  writeFileSync(path.join(OUT, `results-${stamp}.json`), JSON.stringify(results, null, 2));
  const table = render(results);
  writeFileSync(path.join(OUT, "results.md"), `${table}\n`);
  console.log(table);
  log(`results: ${file}, ${path.join(OUT, "results.md")}`);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
