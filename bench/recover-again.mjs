#!/usr/bin/env node
// Repeat the recover step of bench/restore.mjs against a kept run
// (`--keep=1`): a fresh endpoint with an empty root (but for its own
// /etc/machine-id) enrolls, `strata cvd recover CVD --endpoint E --snapshot
// S0 --no-streaming` is queued, `strata agent run` of it runs the task.
// Also, with --what=file, `strata cvd restore-file CVD / --to DIR`.
// For interleaved A/B runs and CPU profiles of the agent (docs/design/restore.md,
// "Tasks": priority). Prints one JSON line: task times (started → done is the
// agent's run), the agent's CPU and peak RSS, its log with times from its start.
//
//   node bench/recover-again.mjs --out=DIR [--what=recover|file] [--prof=DIR] [--strace=FILE] [--verify=1] [--remove=0]
//
// The server of the kept run must be running (this script starts it, on the
// port the credentials name, when it is not answering; --stop=1 stops it at the end).
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { dropCaches, opt, snoozeAgent, vmHWM, waitForLine } from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.resolve(opt("out", path.join(here, "out", "restore")));
const WHAT = opt("what", "recover");
const PROF = opt("prof", "");
const STRACE = opt("strace", "");
// --remove=0 keeps the restored root: on ext4 without a journal, creating inodes right after
// 22,000 were removed is several times dearer (see bench/restore.mjs), which skews the next run.
const REMOVE = opt("remove", "1") !== "0";
const BIN = path.resolve(opt("bin", path.join(here, "..", "bin", "strata.js")));
const env = { ...process.env, STRATA_CREDENTIALS: path.join(OUT, "credentials.json") };
delete env.NODE_OPTIONS;

function strata(args, extra = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: { ...env, ...extra },
    encoding: "utf8",
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0)
    throw new Error(`strata ${args.join(" ")} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return args.includes("--json") ? JSON.parse(r.stdout) : r.stdout;
}
const cpuOf = (pid) => {
  // utime + stime of the process and its reaped children, in seconds (USER_HZ 100)
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "latin1");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
};

const creds = JSON.parse(readFileSync(path.join(OUT, "credentials.json"), "utf8"));
const url = JSON.stringify(creds).match(/https:\/\/127\.0\.0\.1:\d+/)[0];
let server = null;
let fingerprint = null;
const probe = () =>
  spawnSync(process.execPath, [BIN, "cvd", "list", "--json"], { env, encoding: "utf8" }).status === 0;
if (!probe()) {
  const port = url.split(":")[2];
  const outFile = path.join(OUT, "server-again.stdout");
  const fd = openSync(outFile, "w");
  server = spawn(
    process.execPath,
    [
      BIN,
      "server",
      "--data",
      path.join(OUT, "server"),
      "--listen",
      `127.0.0.1:${port}`,
      "--log-level",
      opt("server-log", "warn"),
    ],
    {
      stdio: ["ignore", fd, fd],
      env,
      detached: true,
    },
  );
  closeSync(fd);
  for (let i = 0; i < 200 && !probe(); i++) await new Promise((r) => setTimeout(r, 100));
  writeFileSync(path.join(OUT, "server-again.pid"), String(server.pid));
  console.error(`started the server (pid ${server.pid}) on ${port}`);
}
fingerprint = /fingerprint: (\S+)/.exec(readFileSync(path.join(OUT, "server.stdout"), "utf8"))?.[1];
const cvds = strata(["cvd", "list", "--json"]);
const cvd = cvds[0].id;
const snaps = strata(["cvd", "snapshots", cvd, "--json"]);
const S0 = JSON.parse(readFileSync(path.join(OUT, "results.json"), "utf8")).centralize.snapshot;
if (!snaps.some((s) => s.id === S0)) throw new Error(`S0 ${S0} is gone`);
const n = `${Date.now().toString(36)}`;
const res = { what: WHAT, load: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ") };

if (WHAT === "file") {
  const to = path.join(OUT, "again", `file-${n}`);
  mkdirSync(to, { recursive: true });
  dropCaches();
  const t0 = Date.now();
  const args = [
    ...(PROF ? ["--cpu-prof", `--cpu-prof-dir=${PROF}`] : []),
    BIN,
    "cvd",
    "restore-file",
    cvd,
    "/",
    "--snapshot",
    S0,
    "--to",
    to,
    "--json",
  ];
  const r = spawnSync("/usr/bin/time", ["-f", "%U %S %M", process.execPath, ...args], {
    env,
    encoding: "utf8",
    maxBuffer: 64 << 20,
  });
  res.wallS = (Date.now() - t0) / 1000;
  const [u, s, m] = r.stderr.trim().split("\n").pop().split(" ").map(Number);
  res.cpuS = +(u + s).toFixed(2);
  res.rssMB = Math.round(m / 1024);
  res.status = r.status;
  try {
    const out = JSON.parse(r.stdout);
    res.files = out.files;
    res.errors = out.errors?.length;
    if (out.errors?.length) res.firstError = out.errors[0];
  } catch {
    res.stdout = r.stdout.slice(-2000);
    res.stderr = r.stderr.slice(0, 3000);
  }
  if (REMOVE) rmSync(to, { recursive: true, force: true });
  else res.kept = to;
} else {
  const root = path.join(OUT, "again", `e-${n}`);
  mkdirSync(path.join(root, "etc"), { recursive: true });
  writeFileSync(path.join(root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`, { mode: 0o444 });
  const state = path.join(OUT, "again", `state-${n}`);
  const tok = strata(["tokens", "create", "--json"]);
  const e = strata([
    "agent",
    "enroll",
    "--server",
    url,
    "--token",
    tok.token,
    "--fingerprint",
    fingerprint,
    "--root",
    root,
    "--state",
    state,
    "--json",
  ]);
  dropCaches();
  const task = strata([
    "cvd",
    "recover",
    cvd,
    "--endpoint",
    e.endpointId,
    "--snapshot",
    S0,
    "--no-streaming",
    "--json",
  ]);
  const t0 = Date.now();
  const logFd = openSync(path.join(OUT, "again", `agent-${n}.err`), "w");
  const nodeArgs = [
    ...(PROF ? ["--cpu-prof", `--cpu-prof-dir=${PROF}`] : []),
    BIN,
    "agent",
    "run",
    "--state",
    state,
    "--json",
  ];
  const cmd = STRACE ? "strace" : process.execPath;
  const args = STRACE ? ["-c", "-f", "-o", STRACE, process.execPath, ...nodeArgs] : nodeArgs;
  const agent = spawn(cmd, args, { env, stdio: ["ignore", logFd, logFd] });
  closeSync(logFd);
  const exited = new Promise((r) => agent.once("exit", r));
  // Snooze and wait from this process: CLI processes beside the agent would take CPU from the restore.
  await snoozeAgent(state);
  await waitForLine(path.join(OUT, "again", `agent-${n}.err`), /task (done|failed|aborted)/);
  res.wallS = (Date.now() - t0) / 1000;
  const pid = STRACE
    ? Number(spawnSync("pgrep", ["-P", String(agent.pid)], { encoding: "utf8" }).stdout.trim())
    : agent.pid;
  res.cpuS = cpuOf(pid);
  res.rssMB = Math.round(vmHWM(pid) / 2 ** 20);
  agent.kill("SIGTERM");
  if (STRACE) process.kill(pid, "SIGTERM");
  await exited;
  const done = strata(["task", "show", task.id, "--json"]);
  const secs = (a, b) => (Date.parse(b) - Date.parse(a)) / 1000;
  res.state = done.state;
  res.createdToDoneS = secs(done.createdAt, done.finishedAt);
  res.startedToDoneS = secs(done.startedAt, done.finishedAt);
  res.engineMs = done.result?.durationMs;
  res.files = done.result?.files;
  res.agentT0 = new Date(t0).toISOString();
  res.log = readFileSync(path.join(OUT, "again", `agent-${n}.err`), "utf8")
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l))
    .map((l) => `${((Date.parse(l.time) - t0) / 1000).toFixed(3)} ${l.msg}`);
  res.task = { createdAt: done.createdAt, startedAt: done.startedAt, finishedAt: done.finishedAt };
  if (opt("verify", "0") !== "0") {
    const v = spawnSync(
      "bash",
      [
        "-c",
        `rsync -aHAX --checksum --dry-run --itemize-changes --delete --numeric-ids --exclude-from=${OUT}/excludes.rsync ${OUT}/data/src/ ${root}/ | grep -v '^\\.d\\.\\.t[. ]*\\./$' | head`,
      ],
      { encoding: "utf8" },
    );
    res.verify = v.stdout.trim();
  }
  if (REMOVE) {
    rmSync(root, { recursive: true, force: true });
    rmSync(state, { recursive: true, force: true });
  } else res.kept = root;
}
console.log(JSON.stringify(res));
if (server && opt("stop", "0") !== "0") process.kill(server.pid, "SIGTERM");
process.exit(0);
