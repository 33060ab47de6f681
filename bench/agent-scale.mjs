#!/usr/bin/env node
// One agent on a large endpoint (issue 3: "memory bounded on a 1M-file
// endpoint"): peak RSS of the agent and of the server while the agent
// centralizes N small files, uploads again with no change, and uploads
// after 1% of the files changed; plus what the agent's change watcher
// (packages/agent/src/watcher.ts, our inotify watcher) costs to watch the
// same tree, and @parcel/watcher (which it replaced) when --parcel names a
// copy of it. See docs/benchmarks.md ("Agent at 1M files").
//
//   nice -n 10 node bench/agent-scale.mjs                       N = 200,000 and 1,000,000
//   nice -n 10 node bench/agent-scale.mjs --sizes=20000 --keep=1
//
// Options (flag --name=value or env BENCH_NAME):
//   sizes    200000,1000000   file counts, one full run each (tree, server, agent)
//   perdir   2000             files per leaf directory (leaves grouped 20 per parent)
//   steps    centralize,nochange,change,watch
//   out      bench/out/agent-scale   trees, server data, agent state, results.json
//   keep     0                1: keep the generated trees and data (default: deleted at the end)
//   strata   bin/strata.js of this tree (build it first: npx tsc -b); another tree's for a paired run
//   agentnode                 node options for the agent's process only, e.g.
//                             "--max-old-space-size=64 --heapsnapshot-near-heap-limit=1" to show
//                             that its live heap is bounded (snapshots land in OUT)
//   parcel                   directory of an @parcel/watcher install to measure as well
//                            (e.g. another checkout's node_modules/@parcel/watcher)
//   heapprobe 0               1: the agent's threads log their live heap after a forced GC every
//                             3 s to OUT/heap-N-STEP.txt (bench/lib/heap-probe.cjs)
//
// The tree is ROOT/srv/data/dAAA/eBB/fNNNNNNN: files of 20-2,000 bytes, one in
// five a copy of one of 997 shared contents (so dedup shows), the rest
// unique. The server is `strata server` (SQLite, loopback) in its own
// process; the endpoint is enrolled with `strata agent enroll` and a token
// (auto-approve) made through the API; every upload is `strata agent upload
// --json` in its own process under /usr/bin/time (peak RSS = "%M", worker
// threads included). The server's peak RSS is reset before each step
// (/proc/PID/clear_refs) and read after it (VmHWM); its CPU from
// /proc/PID/stat. Run the whole script under `nice` on a shared machine:
// memory and bytes are what it measures; times are noisy.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { duBytes, log, machineInfo, opt, repoRoot, startStrataServer, vmHWM } from "./lib/harness.mjs";

const SIZES = opt("sizes", "200000,1000000").split(",").map(Number);
const PER_DIR = Number(opt("perdir", "2000"));
const STEPS = new Set(opt("steps", "centralize,nochange,change,watch").split(","));
const OUT = path.resolve(opt("out", path.join(repoRoot, "bench/out/agent-scale")));
const KEEP = opt("keep", "0") === "1";
const BIN = path.resolve(opt("strata", path.join(repoRoot, "bin/strata.js")));
const AGENT_NODE = opt("agentnode", "").split(" ").filter(Boolean);
const HEAP_PROBE = opt("heapprobe", "0") === "1";
const PARCEL = opt("parcel", "");
const protocol = await import(path.join(repoRoot, "packages/protocol/dist/index.js"));
const agentPkg = await import(path.join(repoRoot, "packages/agent/dist/index.js"));

const MB = (b) => Math.round((b / 2 ** 20) * 10) / 10;
const SHARED = Array.from({ length: 997 }, (_, i) => randomBytes(20 + ((i * 7919) % 1981)));

/** File i's directory (relative to the tree root) and name. */
function place(i) {
  const leaf = Math.floor(i / PER_DIR);
  const dir = `srv/data/d${String(Math.floor(leaf / 20)).padStart(3, "0")}/e${String(leaf % 20).padStart(2, "0")}`;
  return { dir, name: `f${String(i).padStart(7, "0")}` };
}

function generate(tree, n) {
  const marker = path.join(tree, ".generated");
  if (existsSync(marker) && readFileSync(marker, "utf8") === String(n)) return;
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(path.join(tree, "etc"), { recursive: true });
  writeFileSync(path.join(tree, "etc/hostname"), `scale-${n}\n`);
  writeFileSync(path.join(tree, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
  let last = "";
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const { dir, name } = place(i);
    if (dir !== last) {
      mkdirSync(path.join(tree, dir), { recursive: true });
      last = dir;
    }
    const body =
      i % 5 === 0
        ? SHARED[(i / 5) % SHARED.length]
        : Buffer.concat([Buffer.from(`${i}\n`), randomBytes(12 + ((i * 2654435761) % 1981))]);
    writeFileSync(path.join(tree, dir, name), body);
    if (i % 100_000 === 99_999) log(`  ${i + 1} files written`);
  }
  writeFileSync(marker, String(n));
  log(`generated ${n} files in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

/** Append to 1% of the files (every 100th, offset so the shared copies are included). */
function changeOnePercent(tree, n) {
  let files = 0;
  let bytes = 0;
  for (let i = 37; i < n; i += 100) {
    const { dir, name } = place(i);
    const add = Buffer.from(`changed ${Date.now()} ${i}\n`);
    writeFileSync(path.join(tree, dir, name), add, { flag: "a" });
    files++;
    bytes += add.length;
  }
  return { files, bytes };
}

function cpuSeconds(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks at 100 Hz
  } catch {
    return 0;
  }
}

function resetHWM(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
  } catch {}
}

/** Run `strata ARGS` under /usr/bin/time: { out, wall, user, sys, rss }. */
function strata(args, { json = true, node = [], env = {} } = {}) {
  const timeFile = path.join(OUT, "time.txt");
  const r = spawnSync(
    "/usr/bin/time",
    [
      "-o",
      timeFile,
      "-f",
      "%e %U %S %M",
      process.execPath,
      ...node,
      BIN,
      ...args,
      ...(json ? ["--json"] : []),
    ],
    { cwd: OUT, encoding: "utf8", maxBuffer: 1 << 30, env: { ...process.env, ...env } },
  );
  if (r.status !== 0 && r.status !== 3)
    throw new Error(`strata ${args.join(" ")} exited ${r.status}: ${r.stderr.slice(-2000)}`);
  const [wall, user, sys, rssKb] = readFileSync(timeFile, "utf8")
    .trim()
    .split("\n")
    .pop()
    .split(" ")
    .map(Number);
  return { out: r.stdout, wall, cpu: user + sys, rss: rssKb * 1024 };
}

/** Where a watch probe reads its numbers, in the child process (after a GC). */
const PROBE = `
    const fs = require("node:fs");
    const inotifyWatches = () => {
      let watches = 0;
      for (const fd of fs.readdirSync("/proc/self/fdinfo")) {
        try { watches += fs.readFileSync("/proc/self/fdinfo/" + fd, "utf8").split("\\n").filter((l) => l.startsWith("inotify wd:")).length; } catch {}
      }
      return watches;
    };
    const hwm = () => Number(/VmHWM:\\s+(\\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"))[1]) * 1024;`;

/** Start the agent's ChangeWatcher on the tree in a child process: its RSS, inotify watches and own tables. */
function measureWatcher(tree) {
  const script = `${PROBE}
    import(${JSON.stringify(path.join(repoRoot, "packages/agent/dist/index.js"))}).then(async ({ ChangeWatcher }) => {
      global.gc?.();
      const rss0 = process.memoryUsage().rss;
      const t0 = performance.now();
      const w = await ChangeWatcher.start({ roots: [${JSON.stringify(tree)}] });
      const ms = performance.now() - t0;
      global.gc?.();
      const out = { watches: inotifyWatches(), startMs: ms, rssBefore: rss0, rss: process.memoryUsage().rss, hwm: hwm(), tableBytes: w.stats().bytes };
      await w.close();
      console.log(JSON.stringify(out));
    });`;
  return JSON.parse(execFileSync(process.execPath, ["--expose-gc", "-e", script], { encoding: "utf8" }));
}

/** Subscribe @parcel/watcher (the watcher the agent used before) to the tree in a child process. */
function measureParcel(tree) {
  const script = `${PROBE}
    const w = require(${JSON.stringify(path.resolve(PARCEL))});
    global.gc?.();
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    w.subscribe(${JSON.stringify(tree)}, () => {}, {}).then(async (sub) => {
      const ms = performance.now() - t0;
      global.gc?.();
      const out = { watches: inotifyWatches(), startMs: ms, rssBefore: rss0, rss: process.memoryUsage().rss, hwm: hwm() };
      await sub.unsubscribe();
      console.log(JSON.stringify(out));
    });`;
  return JSON.parse(execFileSync(process.execPath, ["--expose-gc", "-e", script], { encoding: "utf8" }));
}

async function runSize(n) {
  const dir = path.join(OUT, String(n));
  const tree = path.join(dir, "tree");
  const state = path.join(dir, "agent-state");
  log(`== ${n} files`);
  generate(tree, n);
  const dirs = Math.ceil(n / PER_DIR);
  const result = { files: n, leafDirs: dirs, treeBytes: duBytes(tree), steps: {} };

  rmSync(path.join(dir, "server"), { recursive: true, force: true });
  rmSync(state, { recursive: true, force: true });
  const srv = await startStrataServer(BIN, path.join(dir, "server"), {
    env: { STRATA_SCRYPT_LOG_N: "15" },
  });
  const pid = srv.proc.pid;
  try {
    const anon = new protocol.StrataClient({
      baseUrl: srv.url,
      fetch: agentPkg.pinnedFetch(srv.fingerprint),
    });
    const first = await anon.login({ user: "admin", password: srv.password });
    await anon.withToken(first.token).changePassword(srv.password, "agent scale benchmark passphrase");
    const admin = anon.withToken(
      (await anon.login({ user: "admin", password: "agent scale benchmark passphrase" })).token,
    );
    const tok = await admin.createEnrollmentToken({ uses: 1, autoApprove: true, expiresInMinutes: 600 });
    strata(
      [
        "agent",
        "enroll",
        "--server",
        srv.url,
        "--token",
        tok.token,
        "--fingerprint",
        srv.fingerprint,
        "--root",
        tree,
        "--state",
        state,
      ],
      { json: false },
    );
    result.serverStartRss = vmHWM(pid);

    const upload = (name) => {
      resetHWM(pid);
      const c0 = cpuSeconds(pid);
      const probe = ["--expose-gc", "-r", path.join(repoRoot, "bench/lib/heap-probe.cjs")];
      const t = strata(["agent", "upload", "--state", state], {
        node: HEAP_PROBE ? [...AGENT_NODE, ...probe] : AGENT_NODE,
        env: HEAP_PROBE ? { STRATA_HEAP_PROBE: path.join(OUT, `heap-${n}-${name}.txt`) } : {},
      });
      const j = JSON.parse(t.out);
      const step = {
        wallS: t.wall,
        agentCpuS: Math.round(t.cpu * 10) / 10,
        agentPeakRssMB: MB(t.rss),
        serverCpuS: Math.round((cpuSeconds(pid) - c0) * 10) / 10,
        serverPeakRssMB: MB(vmHWM(pid)),
        files: j.stats.totalFiles,
        filesNewOrChanged: j.stats.filesNew + j.stats.filesChanged,
        bytesRead: j.stats.bytesRead,
        bytesSent: j.bytesSent,
        chunksSent: j.chunksSent,
        chunksProven: j.chunksProven,
        treesSent: j.treesSent,
        errors: j.errors.length,
        fileCacheMB: MB(duBytes(path.join(state, "cache"))),
        serverDataMB: MB(duBytes(path.join(dir, "server"))),
      };
      result.steps[name] = step;
      log(`  ${name}: ${JSON.stringify(step)}`);
    };
    if (STEPS.has("centralize")) upload("centralize");
    if (STEPS.has("nochange")) upload("nochange");
    if (STEPS.has("change")) {
      result.changed = changeOnePercent(tree, n);
      upload("change");
    }
  } finally {
    srv.proc.kill("SIGTERM");
    await new Promise((r) => srv.proc.once("exit", r));
  }
  if (STEPS.has("watch")) {
    result.watcher = measureWatcher(tree);
    log(`  watcher: ${JSON.stringify(result.watcher)}`);
    if (PARCEL) {
      result.parcel = measureParcel(tree);
      log(`  @parcel/watcher: ${JSON.stringify(result.parcel)}`);
    }
  }
  if (!KEEP) rmSync(dir, { recursive: true, force: true });
  return result;
}

mkdirSync(OUT, { recursive: true });
const results = { machine: machineInfo(OUT, BIN), loadavgStart: os.loadavg(), sizes: [] };
for (const n of SIZES) {
  results.sizes.push(await runSize(n));
  writeFileSync(path.join(OUT, "results.json"), `${JSON.stringify(results, null, 2)}\n`);
}
results.loadavgEnd = os.loadavg();
writeFileSync(path.join(OUT, "results.json"), `${JSON.stringify(results, null, 2)}\n`);

console.log(
  "\nfiles      step        wall s  agent CPU s  agent RSS MB  server CPU s  server RSS MB  sent MB  cache MB",
);
for (const s of results.sizes)
  for (const [name, st] of Object.entries(s.steps))
    console.log(
      `${String(s.files).padEnd(10)} ${name.padEnd(11)} ${String(st.wallS).padStart(6)}  ${String(st.agentCpuS).padStart(11)}  ${String(st.agentPeakRssMB).padStart(12)}  ${String(st.serverCpuS).padStart(12)}  ${String(st.serverPeakRssMB).padStart(13)}  ${String(MB(st.bytesSent)).padStart(7)}  ${String(st.fileCacheMB).padStart(8)}`,
    );
const watchLine = (name, w) =>
  `${name} ${w.watches} inotify watches, RSS ${MB(w.rss)} MB (${MB(w.rssBefore)} MB before), start ${Math.round(w.startMs)} ms${w.tableBytes === undefined ? "" : `, own tables ${MB(w.tableBytes)} MB`}`;
for (const s of results.sizes) {
  if (s.watcher) console.log(`${s.files} files: ${watchLine("ChangeWatcher", s.watcher)}`);
  if (s.parcel) console.log(`${s.files} files: ${watchLine("@parcel/watcher", s.parcel)}`);
}
console.log(`results: ${path.join(OUT, "results.json")}`);
