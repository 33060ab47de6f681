#!/usr/bin/env node
// Layers (issue 5): an app layer (jq, installed with apt-get on a reference
// endpoint and captured) applied to N Debian endpoints by their agents, with
// the bytes each endpoint received and the time it took. See
// docs/benchmarks.md ("Layers (issue 5)").
//
//   node bench/layers.mjs                        50 endpoints, 10 agents at once (~15 minutes here)
//   node bench/layers.mjs --endpoints=5 --concurrency=2     a quick run
//   node bench/layers.mjs --render=bench/out/layers/results.json   re-print the tables
//
// Options (flag --name=value or env BENCH_NAME, e.g. BENCH_ENDPOINTS=5):
//   endpoints    50       endpoints the layer is applied to
//   concurrency  10       `strata agent run` processes at once (a pool: the next starts when one ends)
//   uploads      2        centralizations (`strata agent upload`) at once; a failed one is tried again
//                         (up to 3 times, counted: the server can stall past the agent's 10-s connect
//                         timeout, see docs/benchmarks.md)
//   copies       link     link: each endpoint root is `cp -al` of one prepared Debian root (plus its
//                         own identity and home, written fresh); copy: `cp -a` (real copies)
//   snooze       1        1: snooze each agent's scheduled uploads as soon as it answers (a snooze does
//                         not stop a task), so the agent runs the task and nothing else
//   reapply      1        1: apply the same image again on the first endpoint (what crosses the network
//                         when the endpoint already holds the layer)
//   debian       /work/main/.cache/debian-bookworm-minbase   (built with debootstrap when missing)
//   debs         .cache/debs-jq-bookworm   the jq, libjq1 and libonig5 .debs (apt-get download jq libjq1 libonig5)
//   out          bench/out/layers     roots, server, logs, results
//   strata       head     "head": a private build of the committed HEAD (see bench/run.mjs); "live": this tree
//   keep         0        keep the roots and the server after the run
//
// Steps:
//  1. OUT/template: a copy of the Debian root with a user `bench` (uid 1000)
//     in its account files; every regular file of it is hashed and stat'ed.
//     The reference endpoint OUT/ref is a real copy of it; each endpoint
//     OUT/ep/bench-NNN is `cp -al` of it (hard links: no data copied) with its
//     own /etc/machine-id, /etc/hostname and /home/bench files, written as new
//     files (never through a shared inode).
//  2. `strata server` (SQLite, OUT/server); the reference enrolls, centralizes
//     (`strata agent upload`), is marked reference (`strata cvd reference`);
//     `strata agent capture start`, `apt-get install` of the cached jq .debs in
//     its chroot (offline), `strata agent capture finish --name jq --label 1.6`.
//  3. The N endpoints enroll with one token (`strata tokens create --uses N
//     --auto-approve`) and centralize (`strata agent upload`, UPLOADS at once):
//     everything but their own few files is already on the server (the
//     reference holds the same Debian root), so they send almost nothing.
//  4. `strata collection create bench --rule hostname=bench-*`, `strata layer
//     assign --app jq --collection bench`, then `strata cvd apply CVD` for every
//     endpoint (server peak RSS is reset before this step).
//  5. The agents (`strata agent run`, at most CONCURRENCY at once) pick their
//     task up at start; each is stopped when its task has ended (polled through
//     the API). Measured: each task's result (bytesReceived, files), its times
//     (server clock: started → finished), the safety upload's share (the
//     pre-apply upload transaction), each agent's peak RSS (VmHWM), the
//     server's, the load average every 5 s.
//  6. Untimed checks on every endpoint: `chroot E jq --version` is jq-1.6,
//     `dpkg-query` says jq is installed, `chroot E dpkg --audit` prints nothing,
//     the home files and machine-id are unchanged; and the template: no shared
//     inode was changed in place (content, mode, owner, mtime), and how many of
//     them some endpoint replaced (its link count went down).
// Needs root (chroot, owners, device nodes), /usr/bin/time, cp, apt-get, dpkg.
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chownSync,
  closeSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { prng, randomBytesSeeded, textBytes } from "./lib/data.mjs";
import {
  DEFAULT_DEBIAN,
  duBytes,
  ensureDebian,
  loadAvg,
  log,
  machineInfo,
  opt,
  percentile,
  pool,
  prepareStrata,
  q,
  repoRoot,
  round,
  sh,
  startStrataServer,
  tryOut,
  vmHWM,
} from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.resolve(opt("out", path.join(here, "out", "layers")));
const N = Number(opt("endpoints", "50"));
const K = Number(opt("concurrency", "10"));
const UPLOADS = Number(opt("uploads", "2"));
const COPIES = opt("copies", "link");
const SNOOZE = opt("snooze", "1") !== "0";
const REAPPLY = opt("reapply", "1") !== "0";
const DEBIAN = opt("debian", DEFAULT_DEBIAN);
const DEBS = path.resolve(opt("debs", path.join(repoRoot, ".cache/debs-jq-bookworm")));
const STRATA_MODE = opt("strata", "head");
const KEEP = opt("keep", "0") !== "0";
const ADMIN_PW = "layers benchmark passphrase 2026";
const USER_UID = 1000;
const LOGS = path.join(OUT, "logs");

const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

let BIN = null;
const cliEnv = () => ({ ...process.env, STRATA_CREDENTIALS: path.join(OUT, "credentials.json") });
const secs = (a, b) => (a && b ? (Date.parse(b) - Date.parse(a)) / 1000 : null);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** CPU seconds (user + system) a running process has used so far, from /proc (clock ticks of 1/100 s). */
function cpuSeconds(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
}

/** `strata ARGS` as a child process (not blocking this one): exit code, output, wall seconds. */
function cli(args, env = {}) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(process.execPath, [BIN, ...args], { env: { ...cliEnv(), ...env } });
    let stdout = "";
    let stderr = "";
    c.stdout.on("data", (d) => {
      stdout += d;
    });
    c.stderr.on("data", (d) => {
      stderr += d;
    });
    c.on("error", reject);
    c.on("close", (code) =>
      resolve({ code, stdout, stderr, wallS: Number(process.hrtime.bigint() - t0) / 1e9 }),
    );
  });
}

/** `strata ARGS` that must succeed; its parsed --json output, or its stdout. */
async function strata(args, env = {}) {
  const r = await cli(args, env);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}

/** Like strata(), with the wall time: { value, wallS }. */
async function timed(args) {
  const r = await cli(args);
  if (r.code !== 0) throw new Error(`strata ${args.join(" ")} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return { value: args.includes("--json") ? JSON.parse(r.stdout) : r.stdout, wallS: round(r.wallS, 3) };
}

// ---------------------------------------------------------------- roots

/** Replace a file by a new one (unlinked first: under `cp -al` the old inode is the template's). */
function writeFresh(p, data, mode = 0o644) {
  rmSync(p, { force: true });
  writeFileSync(p, data, { mode });
}

/** The endpoint's own identity and home files: their hashes (checked after the apply) and size. */
function personalize(root, name, i) {
  writeFresh(path.join(root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`, 0o444);
  writeFresh(path.join(root, "etc/hostname"), `${name}\n`);
  const home = path.join(root, "home/bench");
  rmSync(home, { recursive: true, force: true });
  mkdirSync(path.join(home, "docs"), { recursive: true });
  const r = prng(1000 + i);
  const files = {
    ".bashrc": Buffer.from(`# ${name}\nexport EDITOR=vi\n`),
    "docs/notes.txt": textBytes(8192 + i * 13, r),
    "docs/report.pdf": randomBytesSeeded(60_000 + i, "report", i),
    "photo.jpg": randomBytesSeeded(150_000 + i, "photo", i),
  };
  const hashes = {};
  let bytes = 0;
  for (const [rel, data] of Object.entries(files)) {
    bytes += data.length;
    writeFileSync(path.join(home, rel), data);
    hashes[`home/bench/${rel}`] = createHash("sha256").update(data).digest("hex");
  }
  for (const p of [home, path.join(home, "docs"), ...Object.keys(files).map((f) => path.join(home, f))])
    chownSync(p, USER_UID, USER_UID);
  hashes["etc/machine-id"] = createHash("sha256")
    .update(readFileSync(path.join(root, "etc/machine-id")))
    .digest("hex");
  return { hashes, bytes };
}

/**
 * Every non-directory entry of `dir` (directories are never shared by
 * `cp -al`): type, mode, owner, size, mtime, link count, and the content's
 * SHA-256 (regular files) or the target (symlinks). Read one file at a time.
 */
function inodeManifest(dir) {
  const out = new Map();
  const walk = (rel) => {
    for (const name of readdirSync(path.join(dir, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(dir, r);
      const st = lstatSync(p);
      if (st.isDirectory()) {
        walk(r);
        continue;
      }
      const e = {
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        size: st.size,
        mtimeMs: st.mtimeMs,
        nlink: st.nlink,
        ino: st.ino,
      };
      if (st.isFile()) e.sha256 = createHash("sha256").update(readFileSync(p)).digest("hex");
      else if (st.isSymbolicLink()) e.target = readlinkSync(p);
      out.set(r, e);
    }
  };
  walk("");
  return out;
}

/** The template after the run against before: entries changed in place (a violation) and entries some endpoint stopped sharing. */
function compareTemplate(before, after) {
  const changed = [];
  const unshared = [];
  for (const [rel, b] of before) {
    const a = after.get(rel);
    if (!a) {
      changed.push({ path: rel, what: "missing from the template" });
      continue;
    }
    const diff = ["mode", "uid", "gid", "size", "mtimeMs", "ino", "sha256", "target"].filter(
      (k) => b[k] !== a[k],
    );
    if (diff.length) changed.push({ path: rel, what: diff.join(",") });
    if (a.nlink < b.nlink) unshared.push({ path: rel, before: b.nlink, after: a.nlink });
  }
  for (const rel of after.keys())
    if (!before.has(rel)) changed.push({ path: rel, what: "new in the template" });
  return { entries: before.size, changed, unshared };
}

/** A command in ROOT's chroot (no shell, a plain PATH): its output (stdout and stderr, trimmed), or null when it fails. */
function inChroot(root, argv) {
  const r = spawnSync("chroot", [root, ...argv], {
    encoding: "utf8",
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C" },
  });
  return r.status === 0 ? `${r.stdout}${r.stderr}`.trim() : null;
}

/** Install the cached jq packages in ROOT's chroot with apt-get, offline (the .debs are apt's archive cache). */
function aptInstallJq(root) {
  const debs = readdirSync(DEBS).filter((f) => f.endsWith(".deb"));
  for (const n of ["jq_", "libjq1_", "libonig5_"])
    if (!debs.some((f) => f.startsWith(n))) throw new Error(`no ${n}*.deb in ${DEBS}`);
  mkdirSync(path.join(root, "tmp/debs"), { recursive: true });
  for (const f of debs) cpSync(path.join(DEBS, f), path.join(root, "tmp/debs", f));
  const files = debs.map((f) => `/tmp/debs/${f}`).join(" ");
  return sh(
    `chroot ${q(root)} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-download -o Dir::Cache::Archives=/tmp/debs ${files} 2>&1`,
  );
}

// ---------------------------------------------------------------- agents

/**
 * Start the endpoint's `strata agent run`, snooze its scheduled uploads,
 * wait (polling the API) for its task to end, then stop it. Times: the
 * server's (task started → finished) and this process's wall clock.
 */
async function runAgent(ep, taskId, admin, label = "agent") {
  const t0 = Date.now();
  const agentStartedAt = new Date(t0).toISOString();
  const fd = openSync(path.join(LOGS, `${label}-${ep.name}.err`), "w");
  const proc = spawn(process.execPath, [BIN, "agent", "run", "--state", ep.state], {
    env: cliEnv(),
    stdio: ["ignore", fd, fd],
  });
  closeSync(fd);
  children.add(proc);
  const exited = new Promise((r) => proc.once("exit", r));
  let snoozed = null;
  if (SNOOZE)
    (async () => {
      for (let i = 0; i < 600 && proc.exitCode === null; i++) {
        const r = await cli(["agent", "snooze", "2h", "--state", ep.state, "--json"]);
        if (r.code === 0) {
          snoozed = (Date.now() - t0) / 1000;
          return;
        }
        await sleep(100);
      }
    })();
  let task;
  for (;;) {
    task = await admin.getTask(taskId);
    if (["done", "failed", "cancelled"].includes(task.state)) break;
    if (proc.exitCode !== null)
      throw new Error(`the agent of ${ep.name} exited (${proc.exitCode}); see logs`);
    if (Date.now() - t0 > 30 * 60_000) throw new Error(`task ${taskId} of ${ep.name} did not end in 30 min`);
    await sleep(250);
  }
  const wallS = (Date.now() - t0) / 1000;
  const peak = vmHWM(proc.pid);
  const cpuS = cpuSeconds(proc.pid);
  proc.kill("SIGTERM");
  await exited;
  children.delete(proc);
  const agentLog = readFileSync(path.join(LOGS, `${label}-${ep.name}.err`), "utf8");
  if (task.state !== "done")
    log(`${ep.name}: task ${taskId} ended ${task.state}: ${JSON.stringify(task.error)}`);
  return {
    task: taskId,
    state: task.state,
    error: task.error ?? null,
    createdAt: task.createdAt,
    agentStartedAt,
    startedAt: task.startedAt,
    finishedAt: task.finishedAt,
    taskS: secs(task.startedAt, task.finishedAt),
    agentStartToClaimS: secs(agentStartedAt, task.startedAt),
    agentStartToDoneS: secs(agentStartedAt, task.finishedAt),
    wallS: round(wallS, 3),
    snoozedAfterS: snoozed === null ? null : round(snoozed, 2),
    scheduledUploadStarted: /upload starts/.test(agentLog),
    agentPeakRssMB: round(peak / 2 ** 20, 1),
    agentCpuS: cpuS,
    result: task.result ?? null,
  };
}

/**
 * The server's responsiveness: GET /healthz every 500 ms, one at a time
 * (one keep-alive connection). A slow answer means its event loop was
 * blocked; `worst(fromMs, toMs)` is the slowest answer started in a window.
 */
function healthProbe(url, fetchFn) {
  const samples = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const t = Date.now();
      let ok = true;
      try {
        await (await fetchFn(`${url}/healthz`)).text();
      } catch {
        ok = false;
      }
      samples.push({ t, ms: Date.now() - t, ok });
      await sleep(500);
    }
  })();
  return {
    worst(from = 0, to = Number.POSITIVE_INFINITY) {
      const w = samples.filter((x) => x.t >= from && x.t <= to);
      if (!w.length) return null;
      const slow = w.reduce((a, b) => (b.ms > a.ms ? b : a));
      return {
        samples: w.length,
        maxMs: slow.ms,
        at: new Date(slow.t).toISOString(),
        over1s: w.filter((x) => x.ms > 1000).length,
        failed: w.filter((x) => !x.ok).length,
      };
    },
    async stop() {
      stopped = true;
      await loop;
    },
  };
}

/** What the CVD's transactions say about one apply task: its safety upload and the image's restore session. */
async function taskTransactions(admin, cvd, t) {
  const tx = await admin.cvdTransactions(cvd);
  const within = (x) => x.startedAt >= t.startedAt && (!t.finishedAt || x.startedAt <= t.finishedAt);
  const safety = tx.filter((x) => x.kind === "pre-apply" && within(x));
  const restore = tx.filter((x) => x.kind === "restore" && within(x));
  const safetyEnd =
    safety
      .map((x) => x.finishedAt)
      .sort()
      .at(-1) ?? null;
  return {
    safetyUploadS: safety.reduce((s, x) => s + (x.durationMs ?? 0), 0) / 1000,
    startToSafetyDoneS: secs(t.startedAt, safetyEnd),
    safetyBytesSent: safety.reduce((s, x) => s + (x.bytesSent ?? 0), 0),
    restoreSessions: restore.length,
    restoreBytesSent: restore.reduce((s, x) => s + (x.bytesSent ?? 0), 0),
  };
}

// ---------------------------------------------------------------- the run

async function run() {
  const started = new Date().toISOString();
  const loadStart = loadAvg();
  const othersAtStart = Number(tryOut("pgrep -fc 'vitest|tsc -b' || true") ?? 0);
  if (loadStart[0] >= 1.5) log(`load average ${loadStart[0]}: the machine is busy, times will be noisy`);
  const STRATA = prepareStrata(STRATA_MODE, path.join(here, "out"));
  BIN = STRATA.bin;
  log(`Strata under test: ${STRATA.commit}${STRATA.dirty ? " + uncommitted changes" : ""} at ${STRATA.root}`);
  const agentLib = await import(path.join(STRATA.root, "packages/agent/dist/index.js"));
  const protocol = await import(path.join(STRATA.root, "packages/protocol/dist/index.js"));
  const labelFlag = (await cli(["agent", "capture", "finish", "--help"])).stdout.includes("--label")
    ? "--label"
    : null;

  for (const d of ["template", "ref", "ep", "state", "server", "server.stdout", "logs"])
    rmSync(path.join(OUT, d), { recursive: true, force: true });
  rmSync(path.join(OUT, "credentials.json"), { force: true });
  mkdirSync(path.join(OUT, "state"), { recursive: true });
  mkdirSync(path.join(OUT, "ep"), { recursive: true });
  mkdirSync(LOGS, { recursive: true });

  const results = {
    started,
    config: {
      endpoints: N,
      concurrency: K,
      uploads: UPLOADS,
      copies: COPIES,
      snooze: SNOOZE,
      reapply: REAPPLY,
      debian: DEBIAN,
      strata: STRATA_MODE,
    },
    loadStart,
    othersAtStart,
    machine: machineInfo(OUT, { commit: STRATA.commit, dirty: STRATA.dirty }),
    load: {},
  };
  const save = () => writeFileSync(path.join(OUT, "results.json"), JSON.stringify(results, null, 2));
  save();

  // ---- 1. the template, the reference and the endpoints' roots
  const deb = ensureDebian(DEBIAN, OUT, opt("mirror", ""));
  const template = path.join(OUT, "template");
  sh(`cp -a ${q(deb)} ${q(template)}`);
  // The user of every machine (the same uid everywhere, as a base install would make it).
  for (const [f, line] of [
    ["etc/passwd", "bench:x:1000:1000:Bench:/home/bench:/bin/bash\n"],
    ["etc/group", "bench:x:1000:\n"],
    ["etc/shadow", "bench:*:20000:0:99999:7:::\n"],
    ["etc/gshadow", "bench:!::\n"],
  ])
    writeFileSync(path.join(template, f), readFileSync(path.join(template, f), "utf8") + line);
  mkdirSync(path.join(template, "home"), { recursive: true });
  const ref = { name: "ref-jq", root: path.join(OUT, "ref"), state: path.join(OUT, "state", "ref-jq") };
  sh(`cp -a ${q(template)} ${q(ref.root)}`);
  personalize(ref.root, ref.name, 0);

  let t0 = Date.now();
  const eps = [];
  for (let i = 1; i <= N; i++) {
    const name = `bench-${String(i).padStart(3, "0")}`;
    const root = path.join(OUT, "ep", name);
    sh(`cp ${COPIES === "copy" ? "-a" : "-al"} ${q(template)} ${q(root)}`);
    const own = personalize(root, name, i);
    eps.push({ name, root, state: path.join(OUT, "state", name), own: own.hashes, ownBytes: own.bytes });
  }
  const templateBytes = duBytes(template);
  results.roots = {
    copies: COPIES,
    debian: deb,
    makeS: round((Date.now() - t0) / 1000, 2),
    templateBytes,
    ownBytesP50: percentile(
      eps.map((ep) => ep.ownBytes),
      50,
    ),
    templateEntries: Number(sh(`find ${q(template)} | wc -l`)),
    // du counts an inode once across its arguments: what the N roots cost on disk beside the template.
    endpointsExtraBytes:
      Number(sh(`du -sbc ${q(template)} ${q(path.join(OUT, "ep"))} | tail -1 | cut -f1`)) - templateBytes,
  };
  log(
    `${N} endpoint roots (${COPIES === "copy" ? "cp -a" : "cp -al"}) in ${results.roots.makeS} s; ${(results.roots.endpointsExtraBytes / 1e6).toFixed(1)} MB beside the ${(templateBytes / 1e6).toFixed(1)} MB template`,
  );
  t0 = Date.now();
  const templateBefore = inodeManifest(template);
  log(
    `template: ${templateBefore.size} non-directory entries hashed in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
  );
  save();

  // ---- 2. server, reference, capture of jq
  const serverErr = openSync(path.join(LOGS, "server.err"), "w");
  const srv = await startStrataServer(BIN, path.join(OUT, "server"), { stderr: serverErr });
  children.add(srv.proc);
  closeSync(serverErr);
  await strata(["login", "--server", srv.url, "--user", "admin", "--fingerprint", srv.fingerprint], {
    STRATA_PASSWORD: srv.password,
  });
  await strata(["users", "passwd"], { STRATA_CURRENT_PASSWORD: srv.password, STRATA_PASSWORD: ADMIN_PW });
  const creds = JSON.parse(readFileSync(path.join(OUT, "credentials.json"), "utf8"));
  const admin = new protocol.StrataClient({
    baseUrl: srv.url,
    token: creds.servers[srv.url].token,
    fetch: agentLib.pinnedFetch(srv.fingerprint),
  });
  const probe = healthProbe(srv.url, agentLib.pinnedFetch(srv.fingerprint));
  const enroll = (ep, token) =>
    strata([
      "agent",
      "enroll",
      "--server",
      srv.url,
      "--token",
      token,
      "--fingerprint",
      srv.fingerprint,
      "--root",
      ep.root,
      "--state",
      ep.state,
      "--json",
    ]).then((e) => {
      ep.endpointId = e.endpointId;
    });
  /**
   * `strata agent upload`, tried again (up to 3 times) when it fails: the
   * agent's scheduled uploads retry the same way, and a failed attempt is
   * counted and its error kept.
   */
  const upload = async (ep, kind = "centralize") => {
    const failures = [];
    for (;;) {
      const r = await cli(["agent", "upload", "--state", ep.state, "--json"]);
      if (r.code === 0) {
        const u = JSON.parse(r.stdout);
        ep.cvd = u.cvdId;
        return {
          name: ep.name,
          kind,
          wallS: round(r.wallS, 3),
          snapshot: u.snapshot,
          bytesSent: u.bytesSent,
          chunksProven: u.chunksProven,
          treesSent: u.treesSent,
          files: u.stats.totalFiles,
          failures,
        };
      }
      failures.push({ wallS: round(r.wallS, 3), error: (r.stdout || r.stderr).trim().slice(0, 500) });
      log(`${ep.name}: upload attempt ${failures.length} failed: ${failures.at(-1).error.slice(0, 200)}`);
      if (failures.length >= 3) throw new Error(`strata agent upload of ${ep.name} failed 3 times`);
    }
  };

  {
    const tok = await strata(["tokens", "create", "--auto-approve", "--json"]);
    await enroll(ref, tok.token);
    const up = await upload(ref);
    await strata(["cvd", "reference", ref.cvd, "--json"]);
    const start = await timed(["agent", "capture", "start", "--state", ref.state, "--json"]);
    t0 = Date.now();
    writeFileSync(path.join(LOGS, "apt-install.out"), aptInstallJq(ref.root));
    const aptS = (Date.now() - t0) / 1000;
    const finish = await timed([
      "agent",
      "capture",
      "finish",
      "--state",
      ref.state,
      "--name",
      "jq",
      ...(labelFlag ? [labelFlag, "1.6"] : []),
      "--json",
    ]);
    const cap = finish.value;
    writeFileSync(path.join(LOGS, "capture-finish.json"), JSON.stringify(cap, null, 2));
    results.reference = {
      centralize: up,
      captureStartS: start.wallS,
      aptInstallS: round(aptS, 2),
      captureFinishS: finish.wallS,
      layer: cap.layer.id,
      version: cap.version.version,
      label: cap.version.label,
      stats: cap.version.stats,
      diffCounts: cap.diff.counts,
      os: cap.version.os,
    };
    log(
      `layer jq v${cap.version.version} (${cap.version.label}): ${cap.version.stats.files} files, ${cap.version.stats.bytes} bytes, ${cap.version.stats.packages} packages (${JSON.stringify(cap.diff.counts)})`,
    );
    save();
  }

  // ---- 3. enrollment and centralization of the N endpoints
  {
    results.load.beforeEnroll = loadAvg();
    const tok = await strata(["tokens", "create", "--uses", String(N), "--auto-approve", "--json"]);
    t0 = Date.now();
    await pool(eps, 4, (ep) => enroll(ep, tok.token));
    const enrollS = (Date.now() - t0) / 1000;
    log(`enrolled ${N} endpoints in ${enrollS.toFixed(1)} s`);
    results.load.beforeCentralize = loadAvg();
    t0 = Date.now();
    const centralizeFrom = t0;
    const cpu0 = cpuSeconds(srv.proc.pid);
    const ups = [];
    await pool(eps, UPLOADS, async (ep) => {
      ups.push(await upload(ep));
    });
    const allS = (Date.now() - t0) / 1000;
    ups.sort((a, b) => a.name.localeCompare(b.name));
    results.centralize = {
      enrollS: round(enrollS, 2),
      wallS: round(allS, 2),
      uploads: ups,
      bytesSentTotal: ups.reduce((s, u) => s + u.bytesSent, 0),
      bytesSentP50: percentile(
        ups.map((u) => u.bytesSent),
        50,
      ),
      bytesSentMax: Math.max(...ups.map((u) => u.bytesSent)),
      failedAttempts: ups.reduce((n, u) => n + u.failures.length, 0),
      serverCpuS: round(cpuSeconds(srv.proc.pid) - cpu0, 1),
      chunksProvenP50: percentile(
        ups.map((u) => u.chunksProven),
        50,
      ),
      treesSentP50: percentile(
        ups.map((u) => u.treesSent),
        50,
      ),
      uploadP50S: percentile(
        ups.map((u) => u.wallS),
        50,
      ),
      uploadP99S: percentile(
        ups.map((u) => u.wallS),
        99,
      ),
      serverPeakRssMB: round(vmHWM(srv.proc.pid) / 2 ** 20, 1),
      serverStall: probe.worst(centralizeFrom, Date.now()),
    };
    log(
      `centralized ${N} in ${allS.toFixed(1)} s: sent ${(results.centralize.bytesSentTotal / 1e6).toFixed(2)} MB in all (p50 ${results.centralize.bytesSentP50} bytes each)`,
    );
    save();
  }

  // ---- 4. collection, assignment, one dry-run, the apply tasks
  let resetOk = true;
  try {
    // Peak RSS from here on: clear_refs 5 resets VmHWM (Linux ≥ 4.0).
    writeFileSync(`/proc/${srv.proc.pid}/clear_refs`, "5");
  } catch {
    resetOk = false;
  }
  const byCvd = new Map(eps.map((ep) => [ep.cvd, ep]));
  {
    const col = await strata(["collection", "create", "bench", "--rule", "hostname=bench-*", "--json"]);
    const show = await strata(["collection", "show", "bench", "--json"]);
    const members = show.members ?? [];
    if (members.length !== N || !members.every((c) => byCvd.has(c)))
      throw new Error(
        `collection bench has ${members.length} members, not the ${N} endpoints: ${JSON.stringify(show)}`,
      );
    const asg = await strata(["layer", "assign", "--app", "jq", "--collection", "bench", "--json"]);
    const dry = await timed(["cvd", "dry-run", eps[0].cvd, "--json"]);
    writeFileSync(path.join(LOGS, "dry-run.json"), JSON.stringify(dry.value, null, 2));
    results.load.beforeQueue = loadAvg();
    const qcpu0 = cpuSeconds(srv.proc.pid);
    t0 = Date.now();
    await pool(eps, 2, async (ep) => {
      ep.task = (await strata(["cvd", "apply", ep.cvd, "--json"])).id;
    });
    const queueS = (Date.now() - t0) / 1000;
    results.assign = {
      collection: col.id ?? col.name ?? "bench",
      members: members.length,
      assignment: asg.id ?? null,
      dryRun: {
        wallS: dry.wallS,
        blocked: dry.value.blocked,
        files: dry.value.files,
        packages: dry.value.packages.added,
        bytesToWrite: dry.value.bytesToWrite,
        problems: dry.value.problems,
      },
      queueS: round(queueS, 2),
      queueServerCpuS: round(cpuSeconds(srv.proc.pid) - qcpu0, 1),
    };
    log(
      `assigned jq to collection bench (${members.length} CVDs); ${N} apply tasks queued in ${queueS.toFixed(1)} s`,
    );
    save();
  }

  // ---- 5. the agents run their tasks, CONCURRENCY at a time
  {
    results.load.beforeApply = loadAvg();
    const samples = [];
    const cpu0 = cpuSeconds(srv.proc.pid);
    const sampler = setInterval(() => samples.push(loadAvg()[0]), 5000);
    t0 = Date.now();
    const startedAt = new Date(t0).toISOString();
    let done = 0;
    await pool(eps, K, async (ep) => {
      ep.apply = await runAgent(ep, ep.task, admin);
      done++;
      if (done % 10 === 0 || done === N)
        log(`${done}/${N} applies ended (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    });
    const wallS = (Date.now() - t0) / 1000;
    clearInterval(sampler);
    for (const ep of eps) Object.assign(ep.apply, await taskTransactions(admin, ep.cvd, ep.apply));
    const a = eps.map((ep) => ep.apply);
    const ok = a.filter((x) => x.state === "done");
    const val = (f) => ok.map(f).filter((x) => x != null);
    const bytes = val((x) => x.result?.bytesReceived);
    const layerBytes = results.reference.stats.bytes;
    const sumTask = val((x) => x.taskS).reduce((s, x) => s + x, 0);
    const sumSafety = val((x) => x.startToSafetyDoneS).reduce((s, x) => s + x, 0);
    results.apply = {
      startedAt,
      serverStall: probe.worst(t0, t0 + wallS * 1000),
      serverCpuS: round(cpuSeconds(srv.proc.pid) - cpu0, 1),
      wallS: round(wallS, 2),
      firstStartToLastEndS: secs(
        a.map((x) => x.startedAt).sort()[0],
        a
          .map((x) => x.finishedAt)
          .sort()
          .at(-1),
      ),
      done: ok.length,
      failed: a.length - ok.length,
      bytesReceivedTotal: bytes.reduce((s, x) => s + x, 0),
      bytesReceivedMin: Math.min(...bytes),
      bytesReceivedP50: percentile(bytes, 50),
      bytesReceivedMax: Math.max(...bytes),
      restoreBytesSentTotal: val((x) => x.restoreBytesSent).reduce((s, x) => s + x, 0),
      layerBytes,
      nTimesLayerBytes: N * layerBytes,
      taskP50S: percentile(
        val((x) => x.taskS),
        50,
      ),
      taskP99S: percentile(
        val((x) => x.taskS),
        99,
      ),
      taskMaxS: Math.max(...val((x) => x.taskS)),
      agentStartToDoneP50S: percentile(
        val((x) => x.agentStartToDoneS),
        50,
      ),
      agentStartToDoneP99S: percentile(
        val((x) => x.agentStartToDoneS),
        99,
      ),
      agentStartToClaimP50S: percentile(
        val((x) => x.agentStartToClaimS),
        50,
      ),
      safetyUploadP50S: percentile(
        val((x) => x.safetyUploadS),
        50,
      ),
      startToSafetyDoneP50S: percentile(
        val((x) => x.startToSafetyDoneS),
        50,
      ),
      safetyShare: sumTask ? sumSafety / sumTask : null,
      safetyBytesSentTotal: val((x) => x.safetyBytesSent).reduce((s, x) => s + x, 0),
      agentCpuP50S: percentile(
        val((x) => x.agentCpuS),
        50,
      ),
      agentCpuTotalS: round(
        val((x) => x.agentCpuS).reduce((s, x) => s + x, 0),
        1,
      ),
      agentPeakRssP50MB: percentile(
        val((x) => x.agentPeakRssMB),
        50,
      ),
      agentPeakRssMaxMB: Math.max(...val((x) => x.agentPeakRssMB)),
      scheduledUploadsStarted: a.filter((x) => x.scheduledUploadStarted).length,
      putOpsP50: percentile(
        val((x) => x.result?.putOps),
        50,
      ),
      filesP50: percentile(
        val((x) => x.result?.files),
        50,
      ),
      loadDuring: samples.length
        ? {
            min: Math.min(...samples),
            mean: round(samples.reduce((s, x) => s + x, 0) / samples.length, 2),
            max: Math.max(...samples),
          }
        : null,
      endpoints: eps.map((ep) => ({ name: ep.name, cvd: ep.cvd, ...ep.apply })),
    };
    const ap = results.apply;
    log(
      `${ok.length}/${N} applies done in ${wallS.toFixed(1)} s; received ${(ap.bytesReceivedTotal / 1e6).toFixed(2)} MB in all (N × layer: ${(ap.nTimesLayerBytes / 1e6).toFixed(2)} MB); task p50 ${ap.taskP50S} s, p99 ${ap.taskP99S} s`,
    );
    save();
  }

  // ---- the same image again on the first endpoint: what crosses the network when it is there
  if (REAPPLY) {
    const ep = eps[0];
    const id = (await strata(["cvd", "apply", ep.cvd, "--json"])).id;
    const r = await runAgent(ep, id, admin, "reapply");
    Object.assign(r, await taskTransactions(admin, ep.cvd, r));
    results.reapply = { name: ep.name, ...r };
    log(`re-apply on ${ep.name}: ${r.state}, ${r.result?.bytesReceived} bytes received, ${r.taskS} s`);
  }
  await probe.stop();
  results.serverStallWholeRun = probe.worst();
  results.serverPeakRssApplyMB = resetOk ? round(vmHWM(srv.proc.pid) / 2 ** 20, 1) : null;
  results.serverPeakRssResetOk = resetOk;
  srv.proc.kill("SIGTERM");
  await new Promise((r) => srv.proc.once("exit", r));
  children.delete(srv.proc);
  save();

  // ---- 6. untimed checks: every endpoint, and the template's shared inodes
  const checksFrom = Date.now();
  const checks = [];
  for (const ep of eps) {
    const c = { name: ep.name };
    c.jqVersion = inChroot(ep.root, ["jq", "--version"]);
    c.dpkgStatus = inChroot(ep.root, ["dpkg-query", "-W", `-f=\${Status}`, "jq"]);
    c.dpkgAudit = inChroot(ep.root, ["dpkg", "--audit"]);
    c.ownChanged = Object.entries(ep.own)
      .filter(([rel, h]) => {
        const p = path.join(ep.root, rel);
        return !existsSync(p) || createHash("sha256").update(readFileSync(p)).digest("hex") !== h;
      })
      .map(([rel]) => rel);
    c.ok =
      c.jqVersion === "jq-1.6" &&
      c.dpkgStatus === "install ok installed" &&
      c.dpkgAudit === "" &&
      !c.ownChanged.length;
    checks.push(c);
  }
  const bad = checks.filter((c) => !c.ok);
  results.checks = {
    endpoints: checks.length,
    ok: checks.length - bad.length,
    bad,
    wallS: round((Date.now() - checksFrom) / 1000, 1),
  };
  log(
    `checks: ${checks.length - bad.length}/${checks.length} endpoints run jq-1.6 with a clean dpkg --audit and their own files intact`,
  );
  const tc = compareTemplate(templateBefore, inodeManifest(template));
  results.template = {
    entries: tc.entries,
    changedInPlace: tc.changed.length,
    changedSample: tc.changed.slice(0, 20),
    unshared: tc.unshared.length,
    unsharedSample: tc.unshared.slice(0, 20),
  };
  log(
    `template: ${tc.changed.length} of ${tc.entries} entries changed in place${
      tc.changed.length
        ? ` (e.g. ${tc.changed
            .slice(0, 3)
            .map((c) => `${c.path} ${c.what}`)
            .join("; ")})`
        : ""
    }; ${tc.unshared.length} replaced on some endpoint (${tc.unshared
      .slice(0, 5)
      .map((u) => u.path)
      .join(", ")})`,
  );

  results.finished = new Date().toISOString();
  save();
  const stamp = started.replace(/[:.]/g, "-");
  writeFileSync(path.join(OUT, `results-${stamp}.json`), JSON.stringify(results, null, 2));
  const table = render(results, true);
  writeFileSync(path.join(OUT, "results.md"), `${table}\n`);
  console.log(table);
  log(`results: ${path.join(OUT, "results.json")}, ${path.join(OUT, "results.md")}`);
  if (!KEEP)
    for (const d of ["template", "ref", "ep", "server"])
      rmSync(path.join(OUT, d), { recursive: true, force: true });
}

// ---------------------------------------------------------------- report

const fmtS = (x) => (x == null ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const fmtMB = (b) => (b == null ? "–" : (b / 1e6).toFixed(b < 1e7 ? 2 : 1));
const fmtKB = (b) => (b == null ? "–" : `${(b / 1e3).toFixed(1)} kB`);
const stall = (w) =>
  w
    ? `${fmtS(w.maxMs / 1000)} s (${w.over1s} of ${w.samples} answers over 1 s${w.failed ? `, ${w.failed} failed` : ""})`
    : "–";
const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(1)}%`);

export function render(r, detail = false) {
  const out = [];
  const ref = r.reference;
  const c = r.centralize;
  const a = r.apply;
  out.push(
    `${r.config.endpoints} endpoints (${r.roots?.copies === "copy" ? "cp -a" : "cp -al"} of one Debian root, ${fmtMB(r.roots?.templateBytes)} MB, ${r.roots?.templateEntries} entries; the ${r.config.endpoints} roots cost ${fmtMB(r.roots?.endpointsExtraBytes)} MB beside it), ${r.config.concurrency} agents at once. Load average at the start ${r.loadStart.join(" ")}; during the applies ${a?.loadDuring ? `${a.loadDuring.min}–${a.loadDuring.max} (mean ${a.loadDuring.mean})` : "–"}.`,
    "",
  );
  if (ref)
    out.push(
      `Layer jq v${ref.version} (${ref.label}): ${ref.stats.files} files, ${fmtMB(ref.stats.bytes)} MB (stats.bytes), ${ref.stats.packages} packages; diff ${JSON.stringify(ref.diffCounts)}. Reference: centralization ${fmtS(ref.centralize.wallS)} s (${fmtMB(ref.centralize.bytesSent)} MB sent), capture start ${fmtS(ref.captureStartS)} s, apt-get install ${fmtS(ref.aptInstallS)} s, capture finish ${fmtS(ref.captureFinishS)} s.`,
      "",
    );
  if (c)
    out.push(
      `Enrollment of ${r.config.endpoints} (one token, 4 at once): ${fmtS(c.enrollS)} s. Centralization (${r.config.uploads} at once): ${fmtS(c.wallS)} s, upload p50 ${fmtS(c.uploadP50S)} s, p99 ${fmtS(c.uploadP99S)} s${c.failedAttempts ? ` (${c.failedAttempts} failed attempts tried again)` : ""}; sent ${fmtMB(c.bytesSentTotal)} MB in all, p50 ${fmtKB(c.bytesSentP50)}, max ${fmtKB(c.bytesSentMax)} per endpoint (their own home files, ${fmtKB(r.roots?.ownBytesP50)}, and ${c.treesSentP50 ?? "–"} trees; ${c.chunksProvenP50 ?? "–"} chunks proved rather than sent). Server CPU: ${fmtS(c.serverCpuS)} s (${fmtS(c.serverCpuS == null ? null : c.serverCpuS / r.config.endpoints)} s per endpoint). Server peak RSS until then: ${c.serverPeakRssMB} MB; its slowest answer to GET /healthz meanwhile ${stall(c.serverStall)}.`,
      "",
    );
  if (a) {
    const ratio = a.nTimesLayerBytes ? a.bytesReceivedTotal / a.nTimesLayerBytes : null;
    out.push(
      "| apply of the jq layer | value |",
      "|---|---|",
      `| endpoints done / failed | ${a.done} / ${a.failed} |`,
      `| wall time, all applies (first agent start → last task end) | ${fmtS(a.wallS)} s |`,
      `| queueing the ${r.config.endpoints} tasks (\`strata cvd apply\`, 2 at once) | ${fmtS(r.assign?.queueS)} s (server CPU ${fmtS(r.assign?.queueServerCpuS)} s) |`,
      `| per task, started → finished (server): p50 / p99 / max | ${fmtS(a.taskP50S)} / ${fmtS(a.taskP99S)} / ${fmtS(a.taskMaxS)} s |`,
      `| per agent, process start → task finished: p50 / p99 | ${fmtS(a.agentStartToDoneP50S)} / ${fmtS(a.agentStartToDoneP99S)} s (start → claim p50 ${fmtS(a.agentStartToClaimP50S)} s) |`,
      `| safety upload (pre-apply transaction) p50; task start → safety upload done p50 | ${fmtS(a.safetyUploadP50S)} s; ${fmtS(a.startToSafetyDoneP50S)} s |`,
      `| safety upload's share of the task time (sum over tasks) | ${pct(a.safetyShare)} |`,
      `| safety uploads sent, all endpoints | ${fmtMB(a.safetyBytesSentTotal)} MB |`,
      `| received per endpoint (result.bytesReceived): min / p50 / max | ${fmtKB(a.bytesReceivedMin)} / ${fmtKB(a.bytesReceivedP50)} / ${fmtKB(a.bytesReceivedMax)} |`,
      `| received, all endpoints | ${fmtMB(a.bytesReceivedTotal)} MB |`,
      `| N × the layer's size (stats.bytes ${fmtKB(a.layerBytes)}) | ${fmtMB(a.nTimesLayerBytes)} MB (received / that = ${ratio == null ? "–" : ratio.toFixed(2)}) |`,
      `| server's restore sessions sent, all endpoints | ${fmtMB(a.restoreBytesSentTotal)} MB |`,
      `| files put per endpoint (p50) / files in the image (p50) | ${a.putOpsP50 ?? "–"} / ${a.filesP50 ?? "–"} |`,
      `| agent CPU (user + system, process start → stop): p50 per agent / all agents | ${fmtS(a.agentCpuP50S)} s / ${fmtS(a.agentCpuTotalS)} s |`,
      `| agent peak RSS p50 / max | ${a.agentPeakRssP50MB} / ${a.agentPeakRssMaxMB} MB |`,
      `| server CPU during the applies | ${fmtS(a.serverCpuS)} s |`,
      `| server peak RSS, queueing + applies${r.reapply ? " + re-apply" : ""} | ${r.serverPeakRssApplyMB ?? "–"} MB |`,
      `| server's slowest answer to GET /healthz (every 0.5 s) during the applies | ${stall(a.serverStall)} |`,
      `| scheduled uploads the agents started (snooze ${r.config.snooze ? "on" : "off"}) | ${a.scheduledUploadsStarted} |`,
    );
    if (r.reapply)
      out.push(
        `| same image again on ${r.reapply.name}: received, task time | ${fmtKB(r.reapply.result?.bytesReceived)}, ${fmtS(r.reapply.taskS)} s (${r.reapply.state}) |`,
      );
    if (r.checks)
      out.push(
        `| jq-1.6, installed, \`dpkg --audit\` clean, own files intact | ${r.checks.ok} of ${r.checks.endpoints} endpoints |`,
      );
    if (r.template)
      out.push(
        `| template entries changed in place (shared inodes) | ${r.template.changedInPlace} of ${r.template.entries}${
          r.template.changedInPlace
            ? ` (${r.template.changedSample
                .slice(0, 3)
                .map((x) => `${x.path}: ${x.what}`)
                .join("; ")})`
            : ""
        } |`,
        `| template entries some endpoint replaced (link count down) | ${r.template.unshared}${
          r.template.unshared
            ? ` (${r.template.unsharedSample
                .slice(0, 6)
                .map((x) => `/${x.path}`)
                .join(", ")})`
            : ""
        } |`,
      );
    if (r.checks?.bad.length)
      out.push(
        "",
        ...r.checks.bad.slice(0, 10).map((b) => `Check failed on ${b.name}: ${JSON.stringify(b)}`),
      );
    if (detail) {
      out.push(
        "",
        "| endpoint | state | task (s) | agent start → done (s) | safety upload (s) | received (kB) | files put | agent RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        ...a.endpoints.map(
          (e) =>
            `| ${e.name} | ${e.state} | ${fmtS(e.taskS)} | ${fmtS(e.agentStartToDoneS)} | ${fmtS(e.safetyUploadS)} | ${e.result?.bytesReceived == null ? "–" : (e.result.bytesReceived / 1e3).toFixed(1)} | ${e.result?.putOps ?? "–"} | ${e.agentPeakRssMB} |`,
        ),
      );
    }
  }
  return out.join("\n");
}

// ---------------------------------------------------------------- main

const renderFrom = opt("render", "");
if (renderFrom) console.log(render(JSON.parse(readFileSync(renderFrom, "utf8")), opt("detail", "0") === "1"));
else
  run().then(
    () => process.exit(0),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
