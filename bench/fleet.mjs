#!/usr/bin/env node
// Fleet scale: many simulated endpoints against one `strata server` on this
// machine, and one agent's upload throughput next to `restic backup` to a
// local repository on the same data. See docs/benchmarks.md ("Fleet").
//
//   node bench/fleet.mjs                          defaults below
//   node bench/fleet.mjs --endpoints=300 --rounds=3 --concurrency=8
//
// Options (flag --name=value or env BENCH_NAME):
//   endpoints    200     simulated endpoints (enrolled through the real API)
//   rounds       3       uploads per endpoint after its centralization
//   concurrency  8       uploads in flight at once (agents in this process)
//   files        30      files per endpoint tree (4-40 KiB, one changes per round)
//   throughput   1       also run the one-agent throughput comparison with restic
//   tpbytes      300     MB of data for the throughput comparison
//   out          bench/out/fleet
//
// Each simulated endpoint is a small directory tree with a few shared
// "system" files and its own files; every round changes one file. The
// agents are real uploadOnce runs (walk, chunk, proofs, frames over HTTPS
// with a pinned certificate) in this process, one worker thread each. The
// server is a separate process; its peak RSS is read from /proc.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { opt, startStrataServer, vmHWM } from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const N = Number(opt("endpoints", "200"));
const ROUNDS = Number(opt("rounds", "3"));
const CONC = Number(opt("concurrency", "8"));
const FILES = Number(opt("files", "30"));
const THROUGHPUT = opt("throughput", "1") === "1";
const TP_MB = Number(opt("tpbytes", "300"));
const OUT = path.resolve(opt("out", path.join(here, "out/fleet")));

const agent = await import(path.join(root, "packages/agent/dist/index.js"));
const core = await import(path.join(root, "packages/core/dist/index.js"));
const catalog = await import(path.join(root, "packages/catalog/dist/index.js"));
const protocol = await import(path.join(root, "packages/protocol/dist/index.js"));

const BIN = path.join(root, "bin/strata.js");
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const fmt = (n, d = 1) => n.toFixed(d);

const startServer = (dataDir) => startStrataServer(BIN, dataDir);

async function adminClient(srv) {
  const fetch = agent.pinnedFetch(srv.fingerprint);
  const anon = new protocol.StrataClient({ baseUrl: srv.url, fetch });
  const first = await anon.login({ user: "admin", password: srv.password });
  const c = anon.withToken(first.token);
  await c.changePassword(srv.password, "fleet benchmark passphrase 2026");
  const again = await anon.login({ user: "admin", password: "fleet benchmark passphrase 2026" });
  return anon.withToken(again.token);
}

function facts(i) {
  return {
    hostname: `sim-${i}`,
    machineId: i.toString(16).padStart(32, "0"),
    os: { id: "debian", versionId: "12", prettyName: "Debian GNU/Linux 12 (bookworm)" },
    kernel: "6.1.0-18-amd64",
    arch: "x86_64",
    cpu: { model: "simulated", count: 2 },
    memoryBytes: 2 ** 32,
    disks: [{ name: "vda", sizeBytes: 2 ** 36 }],
    macs: ["52:54:00:00:00:01"],
    agentVersion: agent.AGENT_VERSION,
    agentStateDir: "/var/lib/strata-agent",
  };
}

const shared = Array.from({ length: 5 }, () => randomBytes(32 * 1024));
function makeTree(dir, i) {
  mkdirSync(path.join(dir, "etc"), { recursive: true });
  mkdirSync(path.join(dir, "usr/lib"), { recursive: true });
  mkdirSync(path.join(dir, "home/user"), { recursive: true });
  writeFileSync(path.join(dir, "etc/hostname"), `sim-${i}\n`);
  for (const [k, b] of shared.entries()) writeFileSync(path.join(dir, `usr/lib/lib${k}.so`), b);
  for (let f = 0; f < FILES; f++)
    writeFileSync(path.join(dir, `home/user/f${f}`), randomBytes(4096 + ((i * 7 + f * 131) % 36) * 1024));
}

async function pool(items, n, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

// ---- scale ----------------------------------------------------------------
rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });
process.env.STRATA_SCRYPT_LOG_N ??= "15";
const srv = await startServer(path.join(OUT, "server"));
process.on("exit", () => srv.proc.kill("SIGKILL"));
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));
const admin = await adminClient(srv);
const tok = await admin.createEnrollmentToken({
  uses: Math.max(N, 1),
  autoApprove: true,
  expiresInMinutes: 600,
});
const policy = core.compilePolicy(core.defaultPolicy("pol_default", "Default"), {
  homes: ["/home/user"],
  agentStateDir: "/var/lib/strata-agent",
});
console.log(`server ${srv.url}; enrolling ${N} simulated endpoints (${FILES} files each)…`);
const eps = [];
const enrollStart = performance.now();
for (let i = 0; i < N; i++) {
  const c = agent.agentClient(srv.url, srv.fingerprint, tok.token);
  const r = await c.request(
    "POST",
    `${protocol.API_PREFIX}/enroll`,
    { facts: facts(i + 1) },
    { "idempotency-key": randomBytes(16).toString("hex") },
  );
  const dir = path.join(OUT, "eps", String(i));
  makeTree(dir, i);
  const self = await agent.agentClient(srv.url, srv.fingerprint, r.credential).agentSelf();
  eps.push({
    i,
    dir,
    cvd: self.cvd.id,
    parent: null,
    transport: agent.httpTransport(srv.url, srv.fingerprint, r.credential),
    cache: catalog.openSqliteFileCache(":memory:"),
  });
}
const enrollS = (performance.now() - enrollStart) / 1000;
console.log(`enrolled ${N} in ${fmt(enrollS)} s (${fmt(N / enrollS)}/s)`);

const latencies = [];
const commitLat = [];
async function uploadRound(kind) {
  const t0 = performance.now();
  await pool(eps, CONC, async (ep) => {
    if (kind !== "centralize")
      writeFileSync(path.join(ep.dir, `home/user/f${(kind * 3) % FILES}`), randomBytes(8192));
    const s = performance.now();
    const transport = {
      json: async (m, p, b) => {
        const c0 = performance.now();
        const r = await ep.transport.json(m, p, b);
        if (p.endsWith("/commit")) commitLat.push(performance.now() - c0);
        return r;
      },
      frames: (p, b, n) => ep.transport.frames(p, b, n),
    };
    const r = await agent.uploadOnce({
      transport,
      cvdId: ep.cvd,
      root: ep.dir,
      policy,
      parent: ep.parent,
      fileCache: ep.cache,
      threads: 1,
      hostname: `sim-${ep.i}`,
    });
    ep.parent = r.snapshot;
    latencies.push(performance.now() - s);
  });
  return (performance.now() - t0) / 1000;
}
const central = await uploadRound("centralize");
console.log(`centralized ${N} in ${fmt(central)} s`);
latencies.length = 0;
commitLat.length = 0;
let upTime = 0;
for (let r = 1; r <= ROUNDS; r++) upTime += await uploadRound(r);
const uploads = N * ROUNDS;
const perSec = uploads / upTime;
const serverRss = vmHWM(srv.proc.pid);
const scale = {
  endpoints: N,
  rounds: ROUNDS,
  concurrency: CONC,
  uploadsPerSec: perSec,
  endpointsAtHourly: Math.floor(perSec * 3600),
  uploadP50Ms: pct(latencies, 50),
  uploadP99Ms: pct(latencies, 99),
  commitP50Ms: pct(commitLat, 50),
  commitP99Ms: pct(commitLat, 99),
  serverPeakRssMB: serverRss / 2 ** 20,
};
console.log(
  `\nincremental uploads: ${uploads} in ${fmt(upTime)} s = ${fmt(perSec)} uploads/s → ${scale.endpointsAtHourly} endpoints at an hourly interval` +
    `\nupload latency p50 ${fmt(scale.uploadP50Ms, 0)} ms, p99 ${fmt(scale.uploadP99Ms, 0)} ms; commit p50 ${fmt(scale.commitP50Ms, 0)} ms, p99 ${fmt(scale.commitP99Ms, 0)} ms` +
    `\nserver peak RSS ${fmt(scale.serverPeakRssMB, 0)} MB (agents and server share ${os.availableParallelism()} cores)`,
);
for (const ep of eps) ep.cache.close();

// ---- one agent vs restic ------------------------------------------------------
let throughput = null;
if (THROUGHPUT) {
  const data = path.join(OUT, "tp-data");
  mkdirSync(path.join(data, "home/user"), { recursive: true });
  mkdirSync(path.join(data, "etc"), { recursive: true });
  writeFileSync(path.join(data, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
  const per = 4 * 2 ** 20;
  for (let k = 0; k < Math.ceil((TP_MB * 2 ** 20) / per); k++) {
    // Half compressible (text-like), half random, as user data is.
    const b =
      k % 2
        ? randomBytes(per)
        : Buffer.from(
            randomBytes(per / 8)
              .toString("base64")
              .repeat(6)
              .slice(0, per),
          );
    writeFileSync(path.join(data, "home/user", `file${k}`), b);
  }
  execFileSync("sync");
  const c = await admin.createEnrollmentToken({ uses: 1, autoApprove: true });
  const state = path.join(OUT, "tp-state");
  await agent.enrollEndpoint({
    server: srv.url,
    token: c.token,
    fingerprint: srv.fingerprint,
    root: data,
    stateDir: state,
    log: () => {},
  });
  const t0 = performance.now();
  const r = await agent.protectOnce({ stateDir: state, root: data });
  const strataS = (performance.now() - t0) / 1000;
  const repo = path.join(OUT, "restic-repo");
  const env = { ...process.env, RESTIC_PASSWORD: "bench", RESTIC_REPOSITORY: repo };
  execFileSync("restic", ["init", "--repository-version", "2"], { env, stdio: "ignore" });
  const t1 = performance.now();
  execFileSync("restic", ["backup", "--compression", "auto", "-q", data], { env, stdio: "ignore" });
  const resticS = (performance.now() - t1) / 1000;
  throughput = { mb: TP_MB, strataS, resticS, ratio: strataS / resticS, bytesSent: r.bytesSent };
  console.log(
    `\none agent, first upload of ${TP_MB} MB over HTTPS: ${fmt(strataS, 2)} s; restic backup to a local repository: ${fmt(resticS, 2)} s; strata/restic ${fmt(strataS / resticS, 2)}`,
  );
}

srv.proc.kill("SIGTERM");
const result = {
  machine: { cpus: os.cpus()[0]?.model, cores: os.availableParallelism(), memGB: os.totalmem() / 2 ** 30 },
  scale,
  throughput,
};
writeFileSync(path.join(OUT, "results.json"), `${JSON.stringify(result, null, 2)}\n`);
console.log(`\nresults: ${path.join(OUT, "results.json")}`);
process.exit(0);
