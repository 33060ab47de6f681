#!/usr/bin/env node
// Restore from the server (issue 4): a full restore of a Debian root plus
// user data into an empty directory, by Strata (administrator's
// restore-file of "/", and a recover task run by a replacement endpoint's
// agent) next to `restic restore` from a local repository of the same data;
// then the bytes a system-only revert moves after a 1% change of the
// machine area. See docs/benchmarks.md ("Restore (issue 4)").
//
//   node bench/restore.mjs                     full run (~5 minutes here)
//   node bench/restore.mjs --scale=0.1         smaller user data (the Debian root stays whole)
//   node bench/restore.mjs --render=bench/out/restore/results.json   re-print the tables
//
// Options (flag --name=value or env BENCH_NAME, e.g. BENCH_SCALE=0.1):
//   scale      1        scales the generated user data (~320 MB at 1; bench/lib/data.mjs, data set A's)
//   seed       1        data and change seed
//   debian     /work/main/.cache/debian-bookworm-minbase   (built with debootstrap when missing)
//   out        bench/out/restore    data, server, repositories, logs, results
//   strata     head     "head": a private build of the committed HEAD (see bench/run.mjs); "live": this tree
//   streaming  0        1: the recover task streams (minimal set first); 0: --no-streaming
//   keep       0        keep data, server and restores after the run
//   repeat     1        full restores by restore-file and by restic, interleaved, N times each;
//                       the tables show the median (every run is in results.json); only the
//                       first of each is compared with rsync
//
// Steps, all on the same data (OUT/data/src: the Debian root and the user
// data under /home/bench), in this order:
//  1. `strata server` (SQLite, OUT/server); endpoint E1 (root OUT/e1, a copy
//     of the data; auto-approving token) centralizes with `strata agent upload`;
//     restic backs up the same files (the policy's excluded paths left out).
//  2. Full restores into empty directories, page cache dropped before each,
//     each compared with the data by `rsync -aHAX --checksum --dry-run
//     --itemize-changes --delete` (untimed):
//     a. `strata cvd restore-file CVD / --snapshot S0 --to DIR` (administrator);
//     c. `restic restore latest --target DIR`.
//  3. 1% of E1's machine-area files change (appends and in-place edits,
//     bench/lib/data.mjs `changeOnePercent`); `strata agent upload`; then
//     `strata cvd revert CVD --snapshot S0` runs in `strata agent run` of E1:
//     its result's bytesReceived against the size of the protected area.
//  2b. (last, because recover disables E1) a replacement endpoint E2 with an
//     empty root enrolls (token without auto-approve); `strata cvd recover CVD
//     --endpoint E2 --snapshot S0 --no-streaming` runs in `strata agent run` of E2.
// Needs root (page cache drop, owners, device nodes) and restic, rsync, /usr/bin/time.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { changeOnePercent, genUserData } from "./lib/data.mjs";
import {
  cachesDropped,
  cpuSeconds,
  createRunner,
  DEFAULT_DEBIAN,
  dropCaches,
  duBytes,
  ensureDebian,
  loadAvg,
  log,
  machineInfo,
  opt,
  prepareStrata,
  q,
  round,
  sh,
  snoozeAgent,
  startStrataServer,
  tryOut,
  vmHWM,
  waitForLine,
} from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.resolve(opt("out", path.join(here, "out", "restore")));
const SCALE = Number(opt("scale", "1"));
const SEED = Number(opt("seed", "1"));
const DEBIAN = opt("debian", DEFAULT_DEBIAN);
const STRATA_MODE = opt("strata", "head");
const STREAMING = opt("streaming", "0") === "1";
const KEEP = opt("keep", "0") !== "0";
const REPEAT = Math.max(1, Number(opt("repeat", "1")) || 1);
const USER = "bench";
const PASSWORD = "bench-password";
const ADMIN_PW = "restore benchmark passphrase 2026";

const { measure, readLog } = createRunner(path.join(OUT, "logs"));
const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

let BIN = null;
const cliEnv = () => ({ STRATA_CREDENTIALS: path.join(OUT, "credentials.json") });

/** Run `strata ARGS` (not timed); its parsed --json output, or its stdout. */
function strata(args, env = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, ...cliEnv(), ...env },
    encoding: "utf8",
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0)
    throw new Error(`strata ${args.join(" ")} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}

/** `strata agent run` for a state directory, its log in logs/NAME.err. */
function startAgent(name, state) {
  const fd = openSync(path.join(OUT, "logs", `${name}.err`), "w");
  const proc = spawn(process.execPath, [BIN, "agent", "run", "--state", state], {
    env: { ...process.env, ...cliEnv() },
    stdio: ["ignore", fd, fd],
  });
  closeSync(fd);
  children.add(proc);
  const exited = new Promise((r) => proc.once("exit", r));
  return {
    proc,
    async stop() {
      const peak = vmHWM(proc.pid);
      proc.kill("SIGTERM");
      await exited;
      children.delete(proc);
      return peak;
    },
  };
}

/** Queue a task with `strata cvd revert|recover …`; the task as the server answers. */
const queueTask = (args) => strata([...args, "--json"]);

/**
 * Start the endpoint's agent for a queued task, wait for the task's end,
 * stop the agent. Times are the server's (created → started → finished)
 * and the wall clock from the agent's start. The agent's uploads are
 * snoozed as soon as its control socket answers: a snooze does not stop a
 * task; it stops the upload the agent would start after it, whose commit
 * (in the same hour) would let retention forget the snapshot the next step
 * restores. Snooze and wait are done from this process (`snoozeAgent`,
 * `waitForLine` on the agent's log): a `strata agent snooze` or `strata task
 * show --wait` process beside the agent took CPU from it while it restored.
 */
async function runQueued(name, task, state) {
  const t0 = Date.now();
  const agentStartedAt = new Date(t0).toISOString();
  const agent = startAgent(`${name}-agent`, state);
  await snoozeAgent(state);
  await waitForLine(path.join(OUT, "logs", `${name}-agent.err`), /task (done|failed|aborted)/);
  const wallS = (Date.now() - t0) / 1000;
  const agentPeakRss = await agent.stop();
  // The task as the server has it: its end state, times and result.
  const done = strata(["task", "show", task.id, "--json"]);
  writeFileSync(path.join(OUT, "logs", `${name}-task.json`), JSON.stringify(done, null, 2));
  if (!["done", "failed", "cancelled"].includes(done.state))
    throw new Error(`task ${task.id} did not end (${done.state}): see logs/${name}-agent.err`);
  if (done.state !== "done")
    log(`task ${task.id} ended ${done.state}: ${JSON.stringify(done.error)} (see logs/${name}-agent.err)`);
  const secs = (a, b) => (a && b ? (Date.parse(b) - Date.parse(a)) / 1000 : null);
  const res = {
    task: done.id,
    state: done.state,
    createdAt: done.createdAt,
    agentStartedAt,
    startedAt: done.startedAt,
    finishedAt: done.finishedAt,
    createdToDoneS: secs(done.createdAt, done.finishedAt),
    startedToDoneS: secs(done.startedAt, done.finishedAt),
    agentStartToDoneS: secs(agentStartedAt, done.finishedAt),
    wallS: round(wallS, 3),
    agentPeakRssMB: round(agentPeakRss / 2 ** 20, 1),
    result: done.result ?? null,
    error: done.error ?? null,
  };
  log(
    `${name}: task ${res.state}, created → done ${res.createdToDoneS} s, agent start → done ${res.agentStartToDoneS} s, started → done ${res.startedToDoneS} s`,
  );
  return res;
}

// ---------------------------------------------------------------- data

/** Classify every entry of a root with the CVD's (default) policy: files and bytes per class, and the excluded tops. */
function survey(rootDir, policy) {
  const per = {
    machine: { files: 0, bytes: 0 },
    user: { files: 0, bytes: 0 },
    excluded: { files: 0, bytes: 0 },
  };
  const excludedTops = [];
  const classOf = new Map();
  const seen = new Set();
  const walk = (rel) => {
    for (const name of readdirSync(path.join(rootDir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(path.join(rootDir, r));
      const cls = policy.classify(`/${r}`);
      if (cls === "excluded") {
        excludedTops.push(r);
        per.excluded.bytes += st.isDirectory() ? duBytes(path.join(rootDir, r)) : st.size;
        continue;
      }
      if (st.isDirectory()) walk(r);
      else if (st.isFile()) {
        classOf.set(r, cls);
        if (seen.has(st.ino)) continue; // a hard link: counted once, as du does
        seen.add(st.ino);
        per[cls].files++;
        per[cls].bytes += st.size;
      }
    }
  };
  walk("");
  return { per, excludedTops, classOf };
}

/** rsync patterns are globs: escape their wildcards so each names one path. */
const literal = (p) => p.replace(/[*?[\]\\]/g, (c) => `\\${c}`);

/** Differences between the data and a restore (content by checksum, metadata, ACLs, xattrs, hard links). */
/** Seconds `sync -f DIR` takes: what a restore left in the page cache to write (nothing after Strata's). */
function syncSeconds(dir) {
  const t0 = process.hrtime.bigint();
  spawnSync("sync", ["-f", dir]);
  return round(Number(process.hrtime.bigint() - t0) / 1e9, 3);
}

function verify(name, src, restored, excludeFile) {
  const r = spawnSync(
    "bash",
    [
      "-c",
      `rsync -aHAX --checksum --dry-run --itemize-changes --delete --numeric-ids --exclude-from=${q(excludeFile)} ${q(`${src}/`)} ${q(`${restored}/`)}`,
    ],
    { encoding: "utf8", maxBuffer: 256 << 20 },
  );
  // The top directory's own times are not a restore's to set ("./").
  const lines = r.stdout.split("\n").filter((l) => l && !/^\.d\.\.t[. ]*\.\/$/.test(l));
  writeFileSync(path.join(OUT, "logs", `${name}-verify.txt`), `${r.stdout}${r.stderr}`);
  const res = { differences: lines.length, sample: lines.slice(0, 10), rsyncExit: r.status };
  log(
    `${name}: ${res.differences ? `${res.differences} differences, e.g. ${res.sample.slice(0, 3).join(" | ")}` : "identical"}`,
  );
  return res;
}

// ---------------------------------------------------------------- the run

async function run() {
  const started = new Date().toISOString();
  const loadStart = loadAvg();
  if (loadStart[0] >= 1.5) log(`load average ${loadStart[0]}: the machine is busy, times will be noisy`);
  const STRATA = prepareStrata(STRATA_MODE, path.join(here, "out"));
  BIN = STRATA.bin;
  log(`Strata under test: ${STRATA.commit}${STRATA.dirty ? " + uncommitted changes" : ""} at ${STRATA.root}`);
  const core = await import(path.join(STRATA.root, "packages/core/dist/index.js"));
  const policy = core.compilePolicy(core.defaultPolicy("pol_default", "Default"), {
    homes: [`/home/${USER}`, "/root"],
    agentStateDir: "/var/lib/strata-agent",
  });

  for (const d of ["data", "server", "e1", "e2", "state", "restic", "restore", "server.stdout"])
    rmSync(path.join(OUT, d), { recursive: true, force: true });
  rmSync(path.join(OUT, "credentials.json"), { force: true });
  mkdirSync(path.join(OUT, "state"), { recursive: true });
  mkdirSync(path.join(OUT, "restore"), { recursive: true });

  // ---- data: the Debian root plus user data under /home/bench
  const src = path.join(OUT, "data", "src");
  mkdirSync(path.dirname(src), { recursive: true });
  const deb = ensureDebian(DEBIAN, OUT, opt("mirror", ""));
  sh(`cp -a ${q(deb)} ${q(src)}`);
  // A machine has an id (debootstrap leaves none; enrollment needs one).
  writeFileSync(path.join(src, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`, { mode: 0o444 });
  const u = genUserData(path.join(src, "home", USER), SEED, SCALE);
  const info = survey(src, policy);
  const data = {
    debian: deb,
    userFiles: u.files,
    userBytes: u.bytes,
    classes: info.per,
    protectedFiles: info.per.machine.files + info.per.user.files,
    protectedBytes: info.per.machine.bytes + info.per.user.bytes,
    duBytes: duBytes(src),
    excludedTops: info.excludedTops.length,
  };
  log(
    `data: machine ${info.per.machine.files} files ${(info.per.machine.bytes / 1e6).toFixed(1)} MB, user ${info.per.user.files} files ${(info.per.user.bytes / 1e6).toFixed(1)} MB, excluded ${(info.per.excluded.bytes / 1e6).toFixed(1)} MB`,
  );
  const excludeFile = path.join(OUT, "excludes.rsync");
  writeFileSync(excludeFile, info.excludedTops.map((r) => `/${literal(r)}\n`).join(""));
  const resticExcludes = path.join(OUT, "excludes.restic");
  writeFileSync(resticExcludes, info.excludedTops.map((r) => `${literal(path.join(src, r))}\n`).join(""));
  const e1 = path.join(OUT, "e1");
  sh(`cp -a ${q(src)} ${q(e1)}`);

  const results = {
    started,
    config: { scale: SCALE, seed: SEED, debian: DEBIAN, strata: STRATA_MODE, streaming: STREAMING },
    loadStart,
    machine: machineInfo(OUT, { commit: STRATA.commit, dirty: STRATA.dirty }),
    data,
  };
  const save = () => writeFileSync(path.join(OUT, "results.json"), JSON.stringify(results, null, 2));
  save();

  // ---- 1. server, E1, centralization
  const serverErr = openSync(path.join(OUT, "logs", "server.err"), "w");
  const srv = await startStrataServer(BIN, path.join(OUT, "server"), { stderr: serverErr });
  children.add(srv.proc);
  closeSync(serverErr);
  strata(["login", "--server", srv.url, "--user", "admin", "--fingerprint", srv.fingerprint], {
    STRATA_PASSWORD: srv.password,
  });
  strata(["users", "passwd"], { STRATA_CURRENT_PASSWORD: srv.password, STRATA_PASSWORD: ADMIN_PW });
  const enroll = (name, root, autoApprove) => {
    const t = strata(["tokens", "create", ...(autoApprove ? ["--auto-approve"] : []), "--json"]);
    const state = path.join(OUT, "state", name);
    const e = strata([
      "agent",
      "enroll",
      "--server",
      srv.url,
      "--token",
      t.token,
      "--fingerprint",
      srv.fingerprint,
      "--root",
      root,
      "--state",
      state,
      "--json",
    ]);
    return { id: e.endpointId, state, root };
  };
  const E1 = enroll("e1", e1, true);
  const central = measure(
    "centralize",
    [process.execPath, BIN, "agent", "upload", "--state", E1.state, "--json"],
    {
      env: cliEnv(),
    },
  );
  const up0 = JSON.parse(readLog("centralize"));
  const S0 = up0.snapshot;
  const cvd = up0.cvdId;
  results.centralize = { ...central, snapshot: S0, cvd, stats: up0.stats, bytesSent: up0.bytesSent };
  log(
    `centralized: snapshot ${S0.slice(0, 12)} of ${cvd}, ${up0.stats.totalFiles} files, sent ${up0.bytesSent} bytes`,
  );

  const restic = {
    RESTIC_REPOSITORY: path.join(OUT, "restic", "repo"),
    RESTIC_PASSWORD: PASSWORD,
    RESTIC_CACHE_DIR: path.join(OUT, "restic", "cache"),
  };
  const haveRestic = tryOut("restic version") !== null;
  if (haveRestic) {
    measure("restic-init", ["restic", "init", "--repository-version", "2"], { env: restic, noDrop: true });
    results.resticBackup = measure(
      "restic-backup",
      ["restic", "backup", "--compression", "auto", "--exclude-file", resticExcludes, src],
      { env: restic },
    );
  } else log("no restic on PATH: its restore is skipped");
  save();

  // ---- 2a. administrator's restore-file of "/" and 2c. restic restore from the local
  // repository, interleaved REPEAT times (a busy or shared machine moves single runs by 20%)
  const full = {};
  results.full = full;
  const fileRuns = [];
  const resticRuns = [];
  // Restored trees are removed only after the last restore: on ext4 without a journal (this
  // machine's root) creating an inode skips inodes freed in the last minutes (recently_deleted),
  // and 22,000 of them made the next restore's file creation several times dearer — whichever
  // tool came right after a removal paid for it.
  const spent = [];
  for (let i = 0; i < REPEAT; i++) {
    const suffix = REPEAT > 1 ? `-${i + 1}` : "";
    {
      const to = path.join(OUT, "restore", `files${suffix}`);
      mkdirSync(to);
      const serverCpu0 = cpuSeconds(srv.proc.pid);
      const m = measure(
        `restore-file${suffix}`,
        [process.execPath, BIN, "cvd", "restore-file", cvd, "/", "--snapshot", S0, "--to", to, "--json"],
        { env: cliEnv() },
      );
      const serverCpu1 = cpuSeconds(srv.proc.pid);
      let r = null;
      try {
        r = JSON.parse(readLog(`restore-file${suffix}`));
      } catch {}
      fileRuns.push({
        ...m,
        // The server works for this restore on the same machine: its CPU counts too.
        serverCpuS: serverCpu0 == null || serverCpu1 == null ? null : round(serverCpu1 - serverCpu0, 2),
        syncS: syncSeconds(to),
        files: r?.files ?? null,
        bytes: r?.bytes ?? null,
        bytesReceived: r?.bytesReceived ?? null,
        errors: r?.errors?.length ?? null,
        ...(i === 0 ? { verify: verify("restore-file", src, to, excludeFile) } : {}),
      });
      if (!KEEP || i > 0) spent.push(to);
    }
    if (haveRestic) {
      const to = path.join(OUT, "restore", `restic${suffix}`);
      mkdirSync(to);
      const m = measure(`restic-restore${suffix}`, ["restic", "restore", "latest", "--target", to], {
        env: restic,
      });
      resticRuns.push({
        ...m,
        // restic returns before its files are on disk; Strata's restore ends with them durable.
        syncS: syncSeconds(to),
        ...(i === 0 ? { verify: verify("restic-restore", src, path.join(to, src), excludeFile) } : {}),
      });
      if (!KEEP || i > 0) spent.push(to);
    }
    log(
      `full restore ${i + 1}/${REPEAT}: restore-file ${fileRuns[i].wallS} s${haveRestic ? `, restic ${resticRuns[i].wallS} s` : ""}`,
    );
  }
  // The median run stands for the tool (its own numbers, the first run's verification).
  const median = (runs) => {
    const sorted = [...runs].sort((a, b) => a.wallS - b.wallS);
    const durable = runs.map((r) => round(r.wallS + (r.syncS ?? 0), 3)).sort((a, b) => a - b);
    return {
      ...sorted[(sorted.length - 1) >> 1],
      verify: runs[0].verify,
      runs: runs.map((r) => r.wallS),
      // Restore, then sync -f of the target: the time until the restored files are on disk.
      durableS: durable[(durable.length - 1) >> 1],
    };
  };
  full.restoreFile = median(fileRuns);
  if (haveRestic) full.restic = median(resticRuns);
  save();

  // ---- 3. system revert after a 1% change of the machine area
  {
    const ch = changeOnePercent(e1, SEED, [], (rel) => info.classOf.get(rel) === "machine");
    const ops = {};
    for (const c of ch.changes) ops[c.op] = (ops[c.op] ?? 0) + 1;
    const tops = {};
    for (const c of ch.changes) tops[c.rel.split("/")[0]] = (tops[c.rel.split("/")[0]] ?? 0) + 1;
    writeFileSync(path.join(OUT, "changes.json"), JSON.stringify(ch, null, 1));
    log(
      `changed ${ch.files} of ${ch.filesTotal} machine-area files, ${ch.bytesChanged} bytes (${JSON.stringify(tops)})`,
    );
    // Queued first: an open task's snapshot is never forgotten, and the upload below commits in
    // the same hour as S0, which retention would otherwise forget (one snapshot per hour).
    const task = queueTask(["cvd", "revert", cvd, "--snapshot", S0]);
    const up = measure(
      "upload-after-change",
      [process.execPath, BIN, "agent", "upload", "--state", E1.state, "--json"],
      { env: cliEnv() },
    );
    const up1 = JSON.parse(readLog("upload-after-change"));
    dropCaches();
    const t = await runQueued("revert", task, E1.state);
    const tx = strata(["cvd", "transactions", cvd, "--json"]);
    const restoreTx = tx.filter(
      (x) => x.kind === "restore" && x.openedBy?.startsWith("endpoint:") && x.startedAt >= t.createdAt,
    );
    const uploadTx = tx.filter(
      (x) => x.kind !== "restore" && Date.parse(x.startedAt) >= Date.parse(t.agentStartedAt),
    );
    const restoreStartedAt = restoreTx.map((x) => x.startedAt).sort()[0] ?? null;
    results.revert = {
      change: { files: ch.files, filesTotal: ch.filesTotal, bytesChanged: ch.bytesChanged, ops, tops },
      upload: { ...up, snapshot: up1.snapshot, bytesSent: up1.bytesSent },
      ...t,
      bytesReceived: t.result?.bytesReceived ?? null,
      restoreTransactions: restoreTx,
      restoreTxBytes: restoreTx.reduce((s, x) => s + x.bytesSent, 0),
      safetyUploadTxBytes: uploadTx.reduce((s, x) => s + x.bytesSent, 0),
      safetyUploadS:
        restoreStartedAt && t.startedAt
          ? (Date.parse(restoreStartedAt) - Date.parse(t.startedAt)) / 1000
          : null,
      restorePhaseS:
        restoreStartedAt && t.finishedAt
          ? (Date.parse(t.finishedAt) - Date.parse(restoreStartedAt)) / 1000
          : null,
      verify: verify("revert", src, e1, excludeFile),
    };
    save();
  }

  // ---- 2b. recover onto a replacement endpoint with an empty root (last: it disables E1),
  // REPEAT times, each onto a new one (the CVD moves on each time), roots removed at the end
  {
    const runs = [];
    for (let i = 0; i < REPEAT; i++) {
      const suffix = REPEAT > 1 ? `-${i + 1}` : "";
      // The replacement device: an empty disk but for its own identity (enrollment reads /etc/machine-id).
      const e2 = path.join(OUT, `e2${suffix}`);
      mkdirSync(path.join(e2, "etc"), { recursive: true });
      writeFileSync(path.join(e2, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`, { mode: 0o444 });
      const E2 = enroll(`e2${suffix}`, e2, false);
      dropCaches();
      const snaps = strata(["cvd", "snapshots", cvd, "--json"]);
      if (!snaps.some((x) => x.id === S0)) throw new Error(`snapshot ${S0} was forgotten before the recover`);
      const task = queueTask([
        "cvd",
        "recover",
        cvd,
        "--endpoint",
        E2.id,
        "--snapshot",
        S0,
        ...(STREAMING ? [] : ["--no-streaming"]),
      ]);
      const t = await runQueued(`recover${suffix}`, task, E2.state);
      runs.push({
        ...t,
        bytesReceived: t.result?.bytesReceived ?? null,
        ...(i === 0 ? { verify: verify("recover", src, e2, excludeFile) } : {}),
      });
      if (!KEEP || i > 0) spent.push(e2);
      log(`recover ${i + 1}/${REPEAT}: task created → done ${t.createdToDoneS} s`);
    }
    // The median run stands for the recover (its own numbers, the first run's verification).
    const sorted = [...runs].sort((x, y) => x.createdToDoneS - y.createdToDoneS);
    full.recover = {
      ...sorted[(sorted.length - 1) >> 1],
      verify: runs[0].verify,
      runs: runs.map((x) => x.createdToDoneS),
    };
    save();
  }
  for (const d of spent) rmSync(d, { recursive: true, force: true });

  results.serverPeakRssMB = round(vmHWM(srv.proc.pid) / 2 ** 20, 1);
  srv.proc.kill("SIGTERM");
  await new Promise((r) => srv.proc.once("exit", r));
  children.delete(srv.proc);
  results.finished = new Date().toISOString();
  results.pageCache = cachesDropped()
    ? "dropped before every restore (sync; echo 3 > /proc/sys/vm/drop_caches)"
    : "warmed identically (tar of the data set) before every step";
  save();
  const stamp = started.replace(/[:.]/g, "-");
  writeFileSync(path.join(OUT, `results-${stamp}.json`), JSON.stringify(results, null, 2));
  const table = render(results);
  writeFileSync(path.join(OUT, "results.md"), `${table}\n`);
  console.log(table);
  log(`results: ${path.join(OUT, "results.json")}, ${path.join(OUT, "results.md")}`);
  if (!KEEP)
    for (const d of ["data", "e1", "server", "restic", "restore"])
      rmSync(path.join(OUT, d), { recursive: true, force: true });
}

// ---------------------------------------------------------------- report

const fmtS = (x) => (x == null ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const fmtMB = (b) => (b == null ? "–" : (b / 1e6).toFixed(b < 1e7 ? 2 : 1));
const ratio = (a, b) => (a == null || b == null || b === 0 ? null : a / b);
const fmtR = (r) => (r == null ? "–" : r.toFixed(2));
const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(2)}%`);
const verdict = (v) => (!v ? "not verified" : v.differences ? `${v.differences} differences` : "identical");

export function render(r) {
  const d = r.data;
  const out = [];
  out.push(
    `Data: ${d.protectedFiles} protected files, ${fmtMB(d.protectedBytes)} MB (machine area ${d.classes.machine.files} files, ${fmtMB(d.classes.machine.bytes)} MB; user area ${d.classes.user.files} files, ${fmtMB(d.classes.user.bytes)} MB); ${fmtMB(d.classes.excluded.bytes)} MB excluded by the policy (and left out of restic's backup). Centralization: ${fmtS(r.centralize?.wallS)} s${r.resticBackup ? `; restic backup: ${fmtS(r.resticBackup.wallS)} s` : ""}.`,
    "",
  );
  const f = r.full ?? {};
  const rs = f.restic?.wallS ?? null;
  out.push(
    "| full restore into an empty directory | time (s) | strata/restic | CPU (s) | peak RSS (MB) | received (MB) | verified (rsync -c) |",
    "|---|---:|---:|---:|---:|---:|---|",
  );
  const cpu = (m) => (m?.userS == null ? "–" : fmtS(m.userS + m.sysS));
  if (f.restoreFile)
    out.push(
      `| strata cvd restore-file CVD / (admin, HTTPS) | ${fmtS(f.restoreFile.wallS)} | ${fmtR(ratio(f.restoreFile.wallS, rs))} | ${cpu(f.restoreFile)}${f.restoreFile.serverCpuS != null ? ` + ${fmtS(f.restoreFile.serverCpuS)} server` : ""} | ${f.restoreFile.peakRssMB?.toFixed(0)} | ${fmtMB(f.restoreFile.bytesReceived)} | ${verdict(f.restoreFile.verify)} |`,
    );
  if (f.recover)
    out.push(
      `| strata cvd recover → agent of an empty endpoint (task created → done${r.config.streaming ? ", streaming" : ", --no-streaming"}) | ${fmtS(f.recover.createdToDoneS)} | ${fmtR(ratio(f.recover.createdToDoneS, rs))} | | ${f.recover.agentPeakRssMB?.toFixed(0)} | ${fmtMB(f.recover.bytesReceived)} | ${verdict(f.recover.verify)} |`,
      `| … of which the agent's run (task started → done) | ${fmtS(f.recover.startedToDoneS)} | ${fmtR(ratio(f.recover.startedToDoneS, rs))} | | | | |`,
    );
  if (f.restic)
    out.push(
      `| restic restore latest (local repository) | ${fmtS(rs)} | 1.00 | ${cpu(f.restic)} | ${f.restic.peakRssMB?.toFixed(0)} | – | ${verdict(f.restic.verify)} |`,
    );
  if (f.restic?.durableS != null)
    out.push(
      `| restic restore, then \`sync -f\` (its files on disk, as Strata's restore ends) | ${fmtS(f.restic.durableS)} | ${fmtR(ratio(f.restoreFile?.durableS ?? f.restoreFile?.wallS, f.restic.durableS))} (restore-file + sync) | | | | |`,
    );
  if (f.restoreFile?.runs?.length > 1)
    out.push(
      "",
      `Median of ${f.restoreFile.runs.length} interleaved runs each (s): restore-file ${f.restoreFile.runs.map(fmtS).join(", ")}${f.restic?.runs ? `; restic ${f.restic.runs.map(fmtS).join(", ")}` : ""}${f.recover?.runs?.length > 1 ? `; recover (created → done, after the revert) ${f.recover.runs.map(fmtS).join(", ")}` : ""}.`,
    );
  const diffs = Object.entries(f).filter(([, v]) => v.verify?.differences);
  if (diffs.length)
    out.push("", ...diffs.map(([k, v]) => `Differences (${k}): ${v.verify.sample.slice(0, 5).join("; ")}`));
  const v = r.revert;
  if (v) {
    const frac = ratio(v.bytesReceived, d.protectedBytes);
    out.push(
      "",
      `| system revert after a 1% change of the machine area | value |`,
      "|---|---|",
      `| changed | ${v.change.files} of ${v.change.filesTotal} machine-area files, ${v.change.bytesChanged} bytes (${JSON.stringify(v.change.ops)}; ${JSON.stringify(v.change.tops)}) |`,
      `| upload of the change | ${fmtS(v.upload.wallS)} s, ${fmtMB(v.upload.bytesSent)} MB sent |`,
      `| agent started → task done | ${fmtS(v.agentStartToDoneS)} s (task started → done ${fmtS(v.startedToDoneS)} s: safety upload ${fmtS(v.safetyUploadS)} s, restore ${fmtS(v.restorePhaseS)} s) |`,
      `| received by the agent (result.bytesReceived) | ${fmtMB(v.bytesReceived)} MB = **${pct(frac)}** of the protected area (${fmtMB(d.protectedBytes)} MB), ${pct(ratio(v.bytesReceived, d.classes.machine.bytes))} of the machine area |`,
      `| restore transactions' bytesSent | ${fmtMB(v.restoreTxBytes)} MB |`,
      `| safety upload sent | ${fmtMB(v.safetyUploadTxBytes)} MB |`,
      `| files put / unchanged | ${v.result?.putOps ?? "–"} / ${v.result?.unchangedFiles ?? "–"} |`,
      `| E1 after the revert vs the data (rsync -c) | ${verdict(v.verify)} |`,
    );
  }
  out.push("", `Server peak RSS over the run: ${r.serverPeakRssMB ?? "–"} MB.`, "", renderGoals(r));
  return out.join("\n");
}

function renderGoals(r) {
  const rows = [];
  const add = (goal, pass, detail) =>
    rows.push(`| ${goal} | ${pass == null ? "n/a" : pass ? "PASS" : "FAIL"} | ${detail} |`);
  const f = r.full ?? {};
  const rs = f.restic?.wallS ?? null;
  for (const [label, s] of [
    ["full restore (restore-file) ≤ 1.0× restic", f.restoreFile?.wallS],
    ["full restore (recover task) ≤ 1.0× restic", f.recover?.createdToDoneS],
  ]) {
    const x = ratio(s, rs);
    add(label, x == null ? null : x <= 1, `${fmtS(s)} vs ${fmtS(rs)} s (${fmtR(x)}×)`);
  }
  const v = r.revert;
  const frac = v ? ratio(v.bytesReceived, r.data.protectedBytes) : null;
  add(
    "revert after 1% change transfers < 3% of the machine",
    frac == null ? null : frac < 0.03,
    `${fmtMB(v?.bytesReceived)} of ${fmtMB(r.data.protectedBytes)} MB (${pct(frac)})`,
  );
  return ["| goal | result | measured |", "|---|---|---|", ...rows].join("\n");
}

// ---------------------------------------------------------------- main

const renderFrom = opt("render", "");
if (renderFrom) console.log(render(JSON.parse(readFileSync(renderFrom, "utf8"))));
else
  run().then(
    () => process.exit(0),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
