/**
 * After an OS migration (docs/design/layers.md, "OS migration"): install
 * the new release's version of the packages the endpoint's user installed,
 * where the endpoint's own apt sources (the new base's sources.list, and
 * whatever the user added) provide them. The migration kept those packages
 * as they were: the old release's dpkg stanza, info files and files (no
 * layer owns them), so dpkg upgrades them as it would any installed
 * package — it runs their maintainer scripts and removes the files the new
 * version no longer ships.
 *
 * Runs `apt-get` inside the root (chroot when it is not `/`), without a
 * terminal: noninteractive debconf, configuration files the user changed
 * are kept (`--force-confold`, the package's default otherwise), nothing is
 * removed to make room (`--no-remove`), services are not started in a
 * chroot (a policy-rc.d for the time of the run), each apt command has a
 * time limit. Every package ends `reinstalled`, `unavailable` or `failed`
 * (with apt's message); a failure never undoes the migration.
 */
import { spawn } from "node:child_process";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import * as path from "node:path";
import {
  compareVersions,
  isInstalled,
  type PackageStanza,
  parseStatus,
  StrataError,
  stanzaField,
} from "@strata/core";
import type { ReinstallOutcome, ReinstallReport } from "@strata/protocol";

/** Per apt command (update, policy, install): a stalled mirror or a hanging maintainer script ends. */
export const REINSTALL_TIMEOUT_MS = 30 * 60_000;
/** How much of apt's output a failed package's message keeps (its last lines). */
const MESSAGE_BYTES = 2048;

export interface ReinstallOptions {
  root: string;
  /** The user-installed packages as the apply reported them (`name` or `name:arch`). */
  packages: readonly string[];
  /** apt's whole output is appended here (created 0600, its directory 0700). */
  logFile: string;
  /** Per apt command; default REINSTALL_TIMEOUT_MS. */
  timeoutMs?: number;
  signal?: AbortSignal;
  onProgress?: (p: { step: "repair" | "update" | "policy" | "install"; package?: string }) => void;
}

/** One package's versions in `apt-cache policy` output. */
export interface AptPolicy {
  installed: string | null;
  candidate: string | null;
  /** Each version with where it comes from (`/var/lib/dpkg/status` for the installed one). */
  versions: { version: string; sources: string[] }[];
}

const DPKG_STATUS_SOURCE = "/var/lib/dpkg/status";

/**
 * `apt-cache policy PKG…` (LC_ALL=C) by the name each block starts with
 * (`jq`, `libc6:i386`). Unknown packages have no block.
 */
export function parseAptPolicy(text: string): Map<string, AptPolicy> {
  const out = new Map<string, AptPolicy>();
  let cur: AptPolicy | null = null;
  let inTable = false;
  for (const line of text.split("\n")) {
    const head = /^(\S+):$/.exec(line);
    if (head) {
      cur = { installed: null, candidate: null, versions: [] };
      out.set(head[1]!, cur);
      inTable = false;
      continue;
    }
    if (!cur) continue;
    const field = /^ {2}(Installed|Candidate): (.*)$/.exec(line);
    if (field) {
      const v = field[2]!.trim();
      const value = v === "(none)" || v === "" ? null : v;
      if (field[1] === "Installed") cur.installed = value;
      else cur.candidate = value;
      continue;
    }
    if (/^ {2}Version table:/.test(line)) {
      inTable = true;
      continue;
    }
    if (!inTable) continue;
    const indent = /^ */.exec(line)![0].length;
    if (indent >= 8) {
      const src = /^\s+-?\d+ (.+)$/.exec(line);
      if (src && cur.versions.length) cur.versions[cur.versions.length - 1]!.sources.push(src[1]!.trim());
      continue;
    }
    const ver = /^\s*(?:\*\*\*\s+)?(\S+) -?\d+$/.exec(line);
    if (ver) cur.versions.push({ version: ver[1]!, sources: [] });
  }
  return out;
}

/**
 * `apt-cache showpkg PKG…` (LC_ALL=C): for each package, the packages that
 * provide it (its "Reverse Provides": name and version).
 */
export function parseReverseProvides(text: string): Map<string, { name: string; version: string }[]> {
  const out = new Map<string, { name: string; version: string }[]>();
  let cur: { name: string; version: string }[] | null = null;
  let inList = false;
  for (const line of text.split("\n")) {
    const head = /^Package: (\S+)$/.exec(line);
    if (head) {
      cur = [];
      out.set(head[1]!, cur);
      inList = false;
      continue;
    }
    if (!cur) continue;
    if (/^Reverse Provides:/.test(line)) {
      inList = true;
      continue;
    }
    if (!inList) continue;
    const m = /^(\S+) (\S+)/.exec(line);
    if (!m || line.endsWith(":")) inList = false;
    else cur.push({ name: m[1]!, version: m[2]! });
  }
  return out;
}

/** The package names a relation field lists (`a (>= 1) | b:any, c` → a, b, c). */
export function relationNames(field: string | null): string[] {
  if (!field) return [];
  return field
    .split(/[,|]/)
    .map((r) => r.trim().split(/[\s(:]/)[0]!)
    .filter((n) => n !== "");
}

/**
 * Packages the new release renamed (Debian 13's 64-bit time_t transition:
 * `libfoo1` → `libfoo1t64`): for each of `names`, the one package of the
 * endpoint's sources that both Provides it and Replaces it — the form a
 * Debian rename takes (a package that only Provides it is an alternative,
 * not its successor). `showpkg` is `apt-cache showpkg NAMES…`, `show` runs
 * `apt-cache show --no-all-versions` on the candidates (their candidate
 * stanzas). A name with no successor, or with several, is left out.
 */
export function renamedPackages(
  names: readonly string[],
  showpkg: string,
  showCandidates: string,
): Map<string, string> {
  const provides = parseReverseProvides(showpkg);
  const replaces = new Map<string, string[]>();
  for (const stanza of showCandidates.split(/\n\s*\n/)) {
    const name = stanzaField(stanza, "Package");
    if (name) replaces.set(name, relationNames(stanzaField(stanza, "Replaces")));
  }
  const out = new Map<string, string>();
  for (const n of names) {
    const succ = [...new Set((provides.get(n) ?? []).map((p) => p.name))].filter(
      (c) => c !== n && replaces.get(c)?.includes(n),
    );
    if (succ.length === 1) out.set(n, succ[0]!);
  }
  return out;
}

/** The candidate version when a source other than the dpkg database has it; null otherwise. */
export function availableVersion(p: AptPolicy | undefined): string | null {
  if (!p?.candidate) return null;
  const v = p.versions.find((x) => x.version === p.candidate);
  return v?.sources.some((s) => s !== DPKG_STATUS_SOURCE) ? p.candidate : null;
}

/** The environment apt runs in: no terminal, no questions, C locale (its output is parsed), a clean PATH. */
const APT_ENV: Record<string, string> = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: "/root",
  LC_ALL: "C",
  LANG: "C",
  TERM: "dumb",
  DEBIAN_FRONTEND: "noninteractive",
  DEBCONF_NONINTERACTIVE_SEEN: "true",
  APT_LISTCHANGES_FRONTEND: "none",
  APT_LISTBUGS_FRONTEND: "none",
  UCF_FORCE_CONFFOLD: "1",
  // needrestart only lists: the packages' own scripts restart their services.
  NEEDRESTART_MODE: "l",
};

/** Options of every apt-get run: wait for another apt's lock a while, no pty progress in the log. */
const APT_OPTS = ["-q", "-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Use-Pty=0"];
const INSTALL_OPTS = [
  "-y",
  "--no-remove",
  "-o",
  "Dpkg::Options::=--force-confdef",
  "-o",
  "Dpkg::Options::=--force-confold",
];

/** policy-rc.d(8) that forbids starting services: a chroot has no init to start them under. */
const POLICY_RC_D = "/usr/sbin/policy-rc.d";
const POLICY_RC_D_TEXT =
  "#!/bin/sh\n# strata: no services start while packages are reinstalled in a chroot\nexit 101\n";

interface Run {
  code: number | null;
  /** The last MESSAGE_BYTES × 4 of stdout and stderr together. */
  tail: string;
  stdout: string;
  timedOut: boolean;
}

class AptRunner {
  private readonly live: boolean;
  private readonly log: number;

  constructor(private readonly o: ReinstallOptions) {
    this.live = path.resolve(o.root) === "/";
    mkdirSync(path.dirname(o.logFile), { recursive: true, mode: 0o700 });
    this.log = openSync(o.logFile, "a", 0o600);
  }

  close(): void {
    closeSync(this.log);
  }

  note(text: string): void {
    writeSync(this.log, text.endsWith("\n") ? text : `${text}\n`);
  }

  /** Run `argv` in the root; stdout kept whole only when `keepStdout` (apt-cache's answer). */
  run(argv: string[], keepStdout = false): Promise<Run> {
    const cmd = this.live ? argv : ["chroot", this.o.root, ...argv];
    this.note(
      `\n$ ${argv.join(" ")}    # ${new Date().toISOString()}${this.live ? "" : ` in ${this.o.root}`}`,
    );
    const signal = this.o.signal;
    signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      // Its own process group: a timeout or a cancel stops dpkg and the scripts it runs too.
      const child = spawn(cmd[0]!, cmd.slice(1), {
        stdio: ["ignore", "pipe", "pipe"],
        env: APT_ENV,
        detached: true,
      });
      let tail = "";
      let stdout = "";
      let timedOut = false;
      let killTimer: NodeJS.Timeout | undefined;
      const add = (b: Buffer, isStdout: boolean) => {
        writeSync(this.log, b);
        const s = b.toString("utf8");
        if (isStdout && keepStdout) stdout += s;
        tail = (tail + s).slice(-MESSAGE_BYTES * 4);
      };
      child.stdout.on("data", (b: Buffer) => add(b, true));
      child.stderr.on("data", (b: Buffer) => add(b, false));
      const stop = () => {
        try {
          if (child.pid) process.kill(-child.pid, "SIGTERM");
        } catch {}
        killTimer = setTimeout(() => {
          try {
            if (child.pid) process.kill(-child.pid, "SIGKILL");
          } catch {}
        }, 30_000);
        killTimer.unref();
      };
      const timer = setTimeout(() => {
        timedOut = true;
        stop();
      }, this.o.timeoutMs ?? REINSTALL_TIMEOUT_MS);
      const onAbort = () => stop();
      signal?.addEventListener("abort", onAbort, { once: true });
      child.on("error", (e) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve({ code: null, tail: e.message, stdout: "", timedOut: false });
      });
      child.on("close", (code, sig) => {
        clearTimeout(timer);
        if (killTimer) clearTimeout(killTimer);
        signal?.removeEventListener("abort", onAbort);
        this.note(`# exited with ${sig ?? code}`);
        if (signal?.aborted) return reject(signal.reason);
        resolve({ code, tail, stdout, timedOut });
      });
    });
  }
}

/**
 * apt's message from a run's output: the unmet dependencies it lists,
 * dpkg's errors (with their indented detail) and its E:/W: lines; its last
 * lines when it printed none of those.
 */
function messageOf(r: Run, timeoutMs: number): string {
  if (r.timedOut)
    return `apt did not finish within ${Math.round(timeoutMs / 60_000)} min and was stopped; the package database may need \`dpkg --configure -a\``;
  const lines = r.tail.split("\n").map((l) => l.trimEnd());
  const picked: string[] = [];
  let inDpkg = false;
  for (const l of lines) {
    if (/^dpkg: /.test(l)) inDpkg = true;
    else if (!/^ /.test(l)) inDpkg = false;
    if (
      inDpkg ||
      /^(E|W): /.test(l) ||
      /^ +\S+ : (Pre-)?Depends|^ +\S+ : (Conflicts|Breaks)/.test(l) ||
      /^ {10,}\S/.test(l)
    )
      picked.push(l);
  }
  const text = (picked.length ? picked : lines.filter((l) => l.trim() !== "").slice(-12)).join("\n");
  const out = text.length > MESSAGE_BYTES ? `…${text.slice(-MESSAGE_BYTES)}` : text;
  return out || `exited with ${r.code ?? "an error"}`;
}

/** A package of the dpkg status by `name` or `name:arch`. */
function findInstalled(status: readonly PackageStanza[], label: string): PackageStanza | undefined {
  const [name, arch] = label.split(":");
  return status.find((p) => p.name === name && (arch === undefined || p.arch === arch) && isInstalled(p));
}

function readStatus(root: string): PackageStanza[] {
  try {
    return parseStatus(readFileSync(path.join(root, "var/lib/dpkg/status"), "latin1"));
  } catch (e) {
    throw new StrataError("IO_ERROR", `cannot read the dpkg status under ${root}: ${(e as Error).message}`, {
      subject: root,
    });
  }
}

/**
 * Reinstall `o.packages` from the root's apt sources (see the file's
 * comment). Throws only when the task is cancelled (`o.signal`); every other
 * trouble is in the report (the migration it follows is done: it must
 * still be reported as such).
 */
export async function reinstallUserPackages(o: ReinstallOptions): Promise<ReinstallReport> {
  try {
    return await reinstall(o);
  } catch (e) {
    if (o.signal?.aborted) throw e;
    const message = `the reinstall stopped: ${(e as Error).message}`;
    return {
      update: { ok: false, message },
      packages: o.packages.map((name) => ({ name, from: "", outcome: "failed", message })),
      log: o.logFile,
    };
  }
}

async function reinstall(o: ReinstallOptions): Promise<ReinstallReport> {
  const timeoutMs = o.timeoutMs ?? REINSTALL_TIMEOUT_MS;
  const report: ReinstallReport = { update: { ok: true }, packages: [], log: o.logFile };
  if (!o.packages.length) return report;

  const apt = new AptRunner(o);
  const live = path.resolve(o.root) === "/";
  const policyRcD = path.join(o.root, POLICY_RC_D);
  let wrotePolicy = false;
  try {
    // apt's working directories: caches are not in snapshots, so a restored root may lack them.
    for (const d of ["var/lib/apt/lists/partial", "var/cache/apt/archives/partial"])
      mkdirSync(path.join(o.root, d), { recursive: true });
    if (!live && !existsSync(policyRcD)) {
      mkdirSync(path.dirname(policyRcD), { recursive: true });
      const fd = openSync(policyRcD, "wx", 0o755);
      writeSync(fd, POLICY_RC_D_TEXT);
      closeSync(fd);
      chmodSync(policyRcD, 0o755);
      wrotePolicy = true;
    }

    // A dpkg interrupted earlier (an agent stopped during an earlier reinstall: apt and
    // dpkg were stopped with it) is finished first: apt refuses to work until it is.
    const audit = await apt.run(["dpkg", "--audit"], true);
    if (audit.stdout.trim() !== "") {
      o.onProgress?.({ step: "repair" });
      const fix = await apt.run(["dpkg", "--force-confdef", "--force-confold", "--configure", "-a"]);
      report.repair = fix.code === 0 ? { ok: true } : { ok: false, message: messageOf(fix, timeoutMs) };
    }

    // What the user had, as dpkg says now. One that is not installed (a repair above that
    // could not configure it) is reported, not reinstalled.
    const before = readStatus(o.root);
    const from = new Map<string, string>();
    const outcomes = new Map<string, ReinstallOutcome>();
    for (const label of o.packages) {
      const p = findInstalled(before, label);
      if (p) from.set(label, p.version);
      else {
        const [name, arch] = label.split(":");
        const any = before.find((x) => x.name === name && (arch === undefined || x.arch === arch));
        outcomes.set(label, {
          name: label,
          from: any?.version ?? "",
          outcome: "failed",
          message: `dpkg does not have it installed (${any ? stanzaField(any.stanza, "Status") : "not in its database"})${report.repair?.message ? `: ${report.repair.message}` : ""}`,
        });
      }
    }
    const labels = [...from.keys()];
    const all = () => o.packages.map((l) => outcomes.get(l)!);
    if (!labels.length) {
      report.packages = all();
      return report;
    }

    o.onProgress?.({ step: "update" });
    const upd = await apt.run(["apt-get", ...APT_OPTS, "update"]);
    if (upd.code !== 0) {
      const message = `apt-get update failed: ${messageOf(upd, timeoutMs)}`;
      report.update = { ok: false, message };
      for (const name of labels)
        outcomes.set(name, { name, from: from.get(name)!, outcome: "failed", message });
      report.packages = all();
      return report;
    }
    // A source that could not be fetched is a warning: its packages count as unavailable (or
    // come from the lists it had), the others go on.
    const warnings = upd.tail
      .split("\n")
      .filter((l) => /^W: /.test(l))
      .join("\n");
    if (warnings) report.update.message = warnings.slice(-MESSAGE_BYTES);

    o.onProgress?.({ step: "policy" });
    const pol = await apt.run(["apt-cache", "policy", ...labels], true);
    const policies = pol.code === 0 ? parseAptPolicy(pol.stdout) : new Map<string, AptPolicy>();
    const want: { label: string; version: string }[] = [];
    const missing: string[] = [];
    for (const label of labels) {
      const was = from.get(label)!;
      if (pol.code !== 0) {
        outcomes.set(label, {
          name: label,
          from: was,
          outcome: "failed",
          message: `apt-cache policy failed: ${messageOf(pol, timeoutMs)}`,
        });
        continue;
      }
      const p = policies.get(label) ?? policies.get(label.split(":")[0]!);
      const version = availableVersion(p);
      if (version === null) {
        missing.push(label);
        outcomes.set(label, {
          name: label,
          from: was,
          outcome: "unavailable",
          message: "no apt source of the endpoint provides it (kept as it is)",
        });
      } else if (compareVersions(version, was) < 0) {
        outcomes.set(label, {
          name: label,
          from: was,
          outcome: "unavailable",
          message: `the endpoint's apt sources have ${version}, older than the installed ${was} (kept as it is)`,
        });
      } else want.push({ label, version });
    }

    if (want.length) {
      // apt marks what it is asked to install as manually installed: the ones that were
      // automatic (dependencies) are marked so again afterwards.
      const autoRun = await apt.run(["apt-mark", "showauto"], true);
      const auto = new Set(autoRun.code === 0 ? autoRun.stdout.split("\n").map((l) => l.trim()) : []);
      const install = (list: { label: string; version: string }[]) =>
        apt.run([
          "apt-get",
          ...APT_OPTS,
          ...INSTALL_OPTS,
          "install",
          ...list.map((w) => `${w.label}=${w.version}`),
        ]);
      o.onProgress?.({ step: "install" });
      const all = await install(want);
      const failed = new Map<string, string>();
      if (all.code !== 0) {
        // One transaction failed: each package alone, to tell which cannot be installed and why.
        for (const w of want) {
          o.onProgress?.({ step: "install", package: w.label });
          const one = await install([w]);
          if (one.code !== 0) failed.set(w.label, messageOf(one, timeoutMs));
        }
      }
      const after = readStatus(o.root);
      for (const w of want) {
        const now = findInstalled(after, w.label);
        const was = from.get(w.label)!;
        if (failed.has(w.label) || !now || now.version !== w.version)
          outcomes.set(w.label, {
            name: w.label,
            from: was,
            outcome: "failed",
            message:
              failed.get(w.label) ??
              (now
                ? `apt finished, but ${now.version} is installed, not ${w.version}`
                : "apt finished, but it is not installed"),
          });
        else
          outcomes.set(w.label, {
            name: w.label,
            from: was,
            outcome: "reinstalled",
            version: now.version,
            ...(now.version === was ? { message: "the new release has the same version" } : {}),
          });
      }
      const reAuto = want
        .map((w) => w.label)
        .filter(
          (l) => (auto.has(l) || auto.has(l.split(":")[0]!)) && outcomes.get(l)?.outcome === "reinstalled",
        );
      if (reAuto.length) await apt.run(["apt-mark", "auto", ...reAuto]);
    }
    // Renamed by the new release (libfoo1 → libfoo1t64): its successor replaces it.
    if (missing.length) await reinstallRenamed(apt, missing, from, outcomes, timeoutMs, o);
    report.packages = all();
    return report;
  } finally {
    if (wrotePolicy) rmSync(policyRcD, { force: true });
    apt.close();
  }
}

/**
 * The unavailable packages the new release renamed (`renamedPackages`):
 * each successor is installed at its candidate version in place of the
 * old package, one transaction each (`apt-get install NEW=VER OLD-`: the
 * successor Breaks the old name, so the old package must go in the same
 * transaction, which `--no-remove` would refuse). apt is asked first with
 * `-s`: when it would remove anything but the old package, nothing is
 * done and the package is reported failed with the list.
 */
async function reinstallRenamed(
  apt: AptRunner,
  labels: readonly string[],
  from: ReadonlyMap<string, string>,
  outcomes: Map<string, ReinstallOutcome>,
  timeoutMs: number,
  o: ReinstallOptions,
): Promise<void> {
  const base = (l: string) => l.split(":")[0]!;
  const names = [...new Set(labels.map(base))];
  const showpkg = await apt.run(["apt-cache", "showpkg", ...names], true);
  if (showpkg.code !== 0) return;
  const candidates = [
    ...new Set([...parseReverseProvides(showpkg.stdout).values()].flat().map((p) => p.name)),
  ];
  if (!candidates.length) return;
  const show = await apt.run(["apt-cache", "show", "--no-all-versions", ...candidates], true);
  if (show.code !== 0) return;
  const renamed = renamedPackages(names, showpkg.stdout, show.stdout);
  if (!renamed.size) return;
  const pol = await apt.run(["apt-cache", "policy", ...new Set(renamed.values())], true);
  const policies = pol.code === 0 ? parseAptPolicy(pol.stdout) : new Map<string, AptPolicy>();
  const autoRun = await apt.run(["apt-mark", "showauto"], true);
  const auto = new Set(autoRun.code === 0 ? autoRun.stdout.split("\n").map((l) => l.trim()) : []);
  for (const label of labels) {
    const succ = renamed.get(base(label));
    const version = succ ? availableVersion(policies.get(succ)) : null;
    if (!succ || !version) continue;
    const was = from.get(label)!;
    const arch = label.includes(":") ? `:${label.split(":")[1]}` : "";
    const target = `${succ}${arch}`;
    const args = ["install", `${target}=${version}`, `${label}-`];
    const opts = INSTALL_OPTS.filter((x) => x !== "--no-remove");
    o.onProgress?.({ step: "install", package: label });
    const sim = await apt.run(["apt-get", ...APT_OPTS, ...opts, "-s", ...args], true);
    const removes = [...sim.stdout.matchAll(/^Remv (\S+)/gm)].map((m) => m[1]!);
    const others = removes.filter((r) => base(r) !== base(label));
    let message: string | null = null;
    if (sim.code !== 0) message = messageOf(sim, timeoutMs);
    else if (others.length)
      message = `installing ${target}, which replaces it, would remove ${others.join(", ")}: not done`;
    else {
      const r = await apt.run(["apt-get", ...APT_OPTS, ...opts, ...args]);
      if (r.code !== 0) message = messageOf(r, timeoutMs);
    }
    const now = findInstalled(readStatus(o.root), target);
    if (message === null && now?.version === version) {
      outcomes.set(label, {
        name: label,
        from: was,
        outcome: "reinstalled",
        version: now.version,
        renamedTo: target,
        message: `the new release renamed it ${succ}`,
      });
      if (auto.has(label) || auto.has(base(label))) await apt.run(["apt-mark", "auto", target]);
    } else
      outcomes.set(label, {
        name: label,
        from: was,
        outcome: "failed",
        renamedTo: target,
        message: message ?? `apt finished, but ${target} ${version} is not installed`,
      });
  }
}
