// What the benchmarks share: options, shell helpers, the page-cache drop,
// timed runs under /usr/bin/time -v, a private build of Strata's HEAD, the
// Debian root, a `strata server` child process and the machine's description.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { connect, createServer } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root (bench/..). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const DEFAULT_DEBIAN = path.join(repoRoot, ".cache/debian-bookworm-minbase");

/** Option `name`: flag --name=value, else env BENCH_NAME, else `def`. */
export function opt(name, def) {
  const flag = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (flag) return flag.slice(name.length + 3);
  const env = process.env[`BENCH_${name.toUpperCase()}`];
  return env !== undefined && env !== "" ? env : def;
}

export const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
export const q = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
export function sh(cmd) {
  return execFileSync("bash", ["-c", cmd], { encoding: "utf8", maxBuffer: 64 << 20 }).trim();
}
export function tryOut(cmd) {
  try {
    return sh(cmd);
  } catch {
    return null;
  }
}
export const duBytes = (p) => (existsSync(p) ? Number(sh(`du -sb ${q(p)} | cut -f1`)) : 0);
export const round = (x, d = 2) => (x == null || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
export const loadAvg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);

let DROP = null; // true when the page cache can be dropped
/** Whether dropCaches could drop the page cache (null before the first call). */
export const cachesDropped = () => DROP;
/** Drop the page cache (root only); without root, read warmDir once instead so every step starts alike. */
export function dropCaches(warmDir) {
  spawnSync("sync");
  if (DROP !== false) {
    try {
      writeFileSync("/proc/sys/vm/drop_caches", "3");
      DROP = true;
      return;
    } catch {
      DROP = false;
      log("cannot drop the page cache: warming it identically before every step instead");
    }
  }
  if (warmDir) spawnSync("bash", ["-c", `tar -cf - -C ${q(warmDir)} . > /dev/null 2>&1`]);
}

/**
 * Timed runs whose stdout/stderr go to LOGS/<name>.out/.err. `measure` runs
 * argv under /usr/bin/time -v (after dropping the page cache unless noDrop)
 * and returns wall seconds, user/sys CPU, peak RSS (MB), exit code and the
 * load average before it.
 */
export function createRunner(logs) {
  mkdirSync(logs, { recursive: true });
  const measure = (name, argv, { env = {}, cwd, warmDir, noDrop = false } = {}) => {
    if (!noDrop) dropCaches(warmDir);
    const timeFile = path.join(logs, `${name}.time`);
    const outFd = openSync(path.join(logs, `${name}.out`), "w");
    const errFd = openSync(path.join(logs, `${name}.err`), "w");
    const load = loadAvg();
    const t0 = process.hrtime.bigint();
    const r = spawnSync("/usr/bin/time", ["-v", "-o", timeFile, ...argv], {
      cwd,
      env: { ...process.env, ...env },
      stdio: ["ignore", outFd, errFd],
    });
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    closeSync(outFd);
    closeSync(errFd);
    const tv = existsSync(timeFile) ? readFileSync(timeFile, "utf8") : "";
    const num = (re) => {
      const m = tv.match(re);
      return m ? Number(m[1]) : null;
    };
    const res = {
      wallS: round(wall, 3),
      userS: num(/User time \(seconds\): ([\d.]+)/),
      sysS: num(/System time \(seconds\): ([\d.]+)/),
      peakRssMB: round((num(/Maximum resident set size \(kbytes\): (\d+)/) ?? 0) / 1024, 1),
      exit: r.status,
      loadBefore: load,
    };
    const tag = res.exit === 0 ? "" : `  EXIT ${res.exit} (see ${path.join(logs, `${name}.err`)})`;
    log(`${name}: ${res.wallS.toFixed(2)} s, ${res.peakRssMB} MB RSS, cpu ${res.userS}+${res.sysS} s${tag}`);
    return res;
  };
  const readLog = (name, ext = "out") => {
    const p = path.join(logs, `${name}.${ext}`);
    return existsSync(p) ? readFileSync(p, "utf8") : "";
  };
  return { measure, readLog, logs };
}

/**
 * The Strata under test. "head": a private, frozen build of the committed
 * HEAD in OUT/strata-<sha> (git archive, node_modules linked, tsc -b), so
 * uncommitted work in the shared tree does not leak in; "live": this tree.
 * Returns { root, bin, commit, dirty }.
 */
export function prepareStrata(mode, out) {
  const root = repoRoot;
  if (mode === "live") {
    if (!existsSync(path.join(root, "apps/cli/dist/main.js"))) sh(`cd ${q(root)} && npx tsc -b`);
    return {
      root,
      bin: path.join(root, "bin/strata.js"),
      commit: tryOut(`cd ${q(root)} && git rev-parse --short HEAD`),
      dirty: tryOut(`cd ${q(root)} && git status --porcelain --untracked-files=no | wc -l`) !== "0",
    };
  }
  const sha = sh(`cd ${q(root)} && git rev-parse HEAD`).slice(0, 12);
  const dir = path.join(out, `strata-${sha}`);
  if (!existsSync(path.join(dir, ".bench-built"))) {
    log(`building a private copy of Strata ${sha} in ${dir}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    sh(`cd ${q(root)} && git archive HEAD | tar -x -C ${q(dir)}`);
    // Third-party modules are shared (symlinked); the workspace links point into the copy.
    const nm = path.join(dir, "node_modules");
    mkdirSync(nm);
    for (const e of readdirSync(path.join(root, "node_modules"))) {
      if (e === "@strata") {
        mkdirSync(path.join(nm, e));
        for (const w of readdirSync(path.join(root, "node_modules", e)))
          symlinkSync(readlinkSync(path.join(root, "node_modules", e, w)), path.join(nm, e, w));
      } else symlinkSync(path.join(root, "node_modules", e), path.join(nm, e));
    }
    // The N-API addon is built at install time (not in git): build it from this commit's source,
    // since a copy of the tree's build may predate a native function HEAD calls.
    try {
      sh(`cd ${q(path.join(dir, "packages/fs"))} && npm run build:native --silent > native-build.log 2>&1`);
    } catch {
      log("cannot build the native addon (see packages/fs/native-build.log): copying this tree's build");
      sh(
        `cp -a ${q(path.join(root, "packages/fs/native/build"))} ${q(path.join(dir, "packages/fs/native/"))}`,
      );
    }
    sh(`cd ${q(dir)} && node ${q(path.join(root, "node_modules/typescript/bin/tsc"))} -b`);
    writeFileSync(path.join(dir, ".bench-built"), "");
  }
  return { root: dir, bin: path.join(dir, "bin/strata.js"), commit: sha, dirty: false };
}

/**
 * The Debian bookworm minbase root: `debian` when it holds one (or, if it is
 * not the default, any existing tree); else one built with debootstrap into
 * OUT (mirror: `mirror`, else the first Debian URI apt is configured with).
 */
export function ensureDebian(debian, out, mirrorOpt = "") {
  if (existsSync(path.join(debian, "etc/debian_version"))) return debian;
  if (debian !== DEFAULT_DEBIAN) {
    if (existsSync(debian)) return debian; // any tree (e.g. a subdirectory for quick runs)
    throw new Error(`no Debian root at ${debian}`);
  }
  const own = path.join(out, "debian-bookworm-minbase");
  if (existsSync(path.join(own, ".bench-complete"))) return own;
  log(`building ${own} with debootstrap (no ${DEFAULT_DEBIAN})`);
  rmSync(own, { recursive: true, force: true });
  const mirror =
    mirrorOpt ||
    tryOut(
      "grep -hoE '^(URIs: *|deb +)[a-z]+://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 | sed -E 's/^(URIs: *|deb +)//'",
    );
  if (!mirror) throw new Error("no Debian mirror: pass --mirror=URL");
  sh(`debootstrap --variant=minbase bookworm ${q(own)} ${q(mirror)} > ${q(`${own}.log`)} 2>&1`);
  writeFileSync(path.join(own, ".bench-complete"), "");
  return own;
}

export function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(a.port));
    });
  });
}

/**
 * Start `strata server` (SQLite in dataDir) on a free loopback port; its
 * stdout goes to a file, stderr to `stderr` (inherit by default). Resolves
 * once it prints the one-time admin password: { proc, url, password, fingerprint }.
 */
export async function startStrataServer(bin, dataDir, { stderr = "inherit", env = {} } = {}) {
  const port = await freePort();
  mkdirSync(dataDir, { recursive: true });
  const outFile = path.join(dataDir, "..", `${path.basename(dataDir)}.stdout`);
  const outFd = openSync(outFile, "w");
  const proc = spawn(
    process.execPath,
    [bin, "server", "--data", dataDir, "--listen", `127.0.0.1:${port}`, "--log-level", "warn"],
    { stdio: ["ignore", outFd, stderr], env: { ...process.env, ...env } },
  );
  closeSync(outFd);
  let exited = null;
  proc.once("exit", (code) => (exited = code));
  let out = "";
  while (!out.includes("shown only now")) {
    if (exited !== null)
      throw new Error(`strata server exited (${exited}) before it was ready; see ${outFile}`);
    await new Promise((r) => setTimeout(r, 50));
    out = readFileSync(outFile, "utf8");
  }
  const password = /one-time password\n\n {4}(\S+)/.exec(out)[1];
  const fingerprint = /fingerprint: (\S+)/.exec(out)[1];
  return { proc, url: `https://127.0.0.1:${port}`, password, fingerprint };
}

/** CPU seconds (user + system) a running process has used so far, from /proc (all its threads). */
export function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command (which may hold spaces): state is the 3rd field, utime the 14th.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(tryOut("getconf CLK_TCK") ?? 100);
    return (Number(f[11]) + Number(f[12])) / ticks;
  } catch {
    return null;
  }
}

/** Peak RSS (bytes) of a running process so far, from /proc. */
export function vmHWM(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The machine and tool versions, for results.json and docs/benchmarks.md. */
export function machineInfo(out, strata) {
  const get = (c) => tryOut(c);
  return {
    cpu: get("lscpu | sed -n 's/^Model name: *//p'"),
    cpus: os.cpus().length,
    lscpu: get("lscpu"),
    memTotalGiB: round(os.totalmem() / 2 ** 30, 1),
    kernel: os.release(),
    disk: get(`df -hT ${q(out)} | tail -1`),
    blockDevices: get("lsblk -d -o NAME,SIZE,ROTA,TYPE 2>/dev/null"),
    node: process.version,
    restic: get("restic version"),
    borg: get("borg --version"),
    zstd: get("zstd --version"),
    tar: get("tar --version | head -1"),
    rsync: get("rsync --version | head -1"),
    strata,
  };
}

/** Run fn over items with at most n calls in flight; resolves when all are done (the first error rejects). */
export async function pool(items, n, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(n, items.length)) }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i], i);
      }
    }),
  );
}

/** Nearest-rank percentile p (0–100) of xs (null when empty): p99 of 50 values is the largest. */
export function percentile(xs, p) {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!s.length) return null;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/**
 * One request to a running agent's control socket (newline-delimited JSON,
 * packages/agent/src/control.ts), sent from this process: a `strata agent …`
 * CLI process would compete with the agent for the CPU while it restores.
 * The answer, or null when nothing answers (not started yet).
 */
export function agentControl(stateDir, req) {
  return new Promise((resolve) => {
    const sock = connect(path.join(stateDir, "control.sock"));
    let buf = "";
    const done = (v) => {
      sock.destroy();
      resolve(v);
    };
    sock.on("error", () => done(null));
    sock.on("close", () => done(null));
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("data", (d) => {
      buf += d;
      const i = buf.indexOf("\n");
      if (i < 0) return;
      try {
        done(JSON.parse(buf.slice(0, i)));
      } catch {
        done(null);
      }
    });
  });
}

/**
 * Snooze the agent's scheduled uploads as soon as its control socket
 * answers (asked every 25 ms from this process).
 */
export async function snoozeAgent(stateDir, ms = 2 * 3600 * 1000) {
  for (let i = 0; i < 2400; i++) {
    const r = await agentControl(stateDir, { cmd: "snooze", ms });
    if (r?.ok) return;
    await new Promise((res) => setTimeout(res, 25));
  }
  throw new Error(`the agent of ${stateDir} never answered on its control socket`);
}

/**
 * Wait until `file` (an agent's log) has a line matching `re`; read every
 * 50 ms by this process (no `strata task show --wait` process beside the
 * agent). Rejects after `timeoutMs`.
 */
export async function waitForLine(file, re, timeoutMs = 15 * 60 * 1000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const text = existsSync(file) ? readFileSync(file, "utf8") : "";
    const m = text.split("\n").find((l) => re.test(l));
    if (m) return m;
    if (Date.now() > end) throw new Error(`no line matching ${re} in ${file} after ${timeoutMs / 1000} s`);
    await new Promise((res) => setTimeout(res, 50));
  }
}
