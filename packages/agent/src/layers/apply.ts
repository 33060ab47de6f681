/**
 * The agent's half of a layer apply (docs/design/layers.md, "Apply"): from
 * the server's apply plan and the live root, compute the dry-run problems
 * that block, the structured files' new contents (dpkg status and the
 * account files, merged by entry with what the endpoint has), the removal
 * predicate the engine deletes by, and afterwards run the triggers the
 * layers recorded. The engine (restore/engine.ts, kind `layer`) does the
 * staged, journaled change of the disk.
 */
import { spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import * as path from "node:path";
import {
  type AccountLines,
  accountProblems,
  BASE_CAPTURE_RULES,
  CAPTURE_NOISE_RULES,
  diskSpaceNeeded,
  diskSpaceProblem,
  dryRunPackages,
  mergeAccounts,
  mergeStatus,
  parseStatus,
  ruleMatcher,
  StrataError,
} from "@strata/core";
import type { ApplyPlan, DryRunProblem, Trigger } from "@strata/protocol";
import { type RootFilesystem, rootFilesystem } from "../facts.js";
import { hasPendingRestore } from "../restore/engine.js";
import { writeFileAtomic } from "../state.js";

/** The structured files, by role, as paths below the root. */
export const DPKG_STATUS_FILE = "/var/lib/dpkg/status";
export const ACCOUNT_FILES: Record<keyof AccountLines, string> = {
  passwd: "/etc/passwd",
  group: "/etc/group",
  shadow: "/etc/shadow",
  gshadow: "/etc/gshadow",
};

/** A file under the root as text; "" when it does not exist (a fresh root has no shadow yet). */
function readRootFile(root: string, abs: string): string | null {
  try {
    return readFileSync(path.join(root, abs), "latin1");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new StrataError("IO_ERROR", `cannot read ${abs} under ${root}: ${(e as Error).message}`, {
      subject: abs,
    });
  }
}

const lines = (text: string | null): string[] => (text ?? "").split("\n").filter((l) => l.length > 0);

export interface PreparedApply {
  /** Absolute path (latin1) → new content, for the engine's `literals`. */
  literals: Map<string, Buffer>;
  removable: (snapPath: Buffer) => boolean | "below";
  doNotOverride: (snapPath: Buffer) => boolean;
  problems: DryRunProblem[];
  packages: { added: string[]; updated: { name: string; from: string; to: string }[]; removed: string[] };
  userInstalled: string[];
  accountsAdded: string[];
  /** The root's filesystem and what the apply needs there (null: the plan has no estimate, or statfs failed). */
  disk: { path: string; freeBytes: number; neededBytes: number } | null;
}

export interface PrepareOptions {
  /** The root's filesystem (default: statfs of the root now); tests inject one. */
  space?: RootFilesystem | null;
}

/**
 * Everything the engine needs besides the source. Blocking problems are
 * returned, not thrown: the caller fails the task with them.
 */
export function prepareLayerApply(plan: ApplyPlan, root: string, o: PrepareOptions = {}): PreparedApply {
  const m = plan.manifest;
  const enforceRemove = plan.enforce === "remove";
  const literals = new Map<string, Buffer>();
  const problems: DryRunProblem[] = [];
  if (enforceRemove && plan.hasBase !== true)
    problems.push({
      kind: "os-mismatch",
      blocking: true,
      subject: plan.image.id,
      message:
        "enforce remove needs a base layer in the image: without one it would delete the operating system",
    });

  // dpkg status: only when a layer brings packages (or removes some), so
  // an image of files only (a driver folder) leaves the database alone.
  const liveStatus = readRootFile(root, DPKG_STATUS_FILE);
  let packages: PreparedApply["packages"] = { added: [], updated: [], removed: [] };
  let userInstalled: string[] = [];
  if (m.packages.length || m.removedPackages.length || plan.previousPackages.length) {
    const dry = dryRunPackages({
      live: parseStatus(liveStatus ?? ""),
      image: m.packages,
      previous: plan.previousPackages,
      removedPackages: m.removedPackages,
      enforceRemove,
    });
    problems.push(...dry.problems);
    const merged = mergeStatus(liveStatus ?? "", m.packages, {
      previous: plan.previousPackages,
      removedPackages: m.removedPackages,
      enforceRemove,
    });
    packages = { added: merged.added, updated: merged.updated, removed: merged.removed };
    userInstalled = merged.userInstalled;
    if (merged.text !== (liveStatus ?? ""))
      literals.set(DPKG_STATUS_FILE, Buffer.from(merged.text, "latin1"));
  }

  // Accounts: the endpoint's lines stay; the layers' new names are added.
  const a = m.accounts;
  let accountsAdded: string[] = [];
  if (a.passwd.length || a.group.length || a.shadow.length || a.gshadow.length) {
    const liveText = {} as Record<keyof AccountLines, string | null>;
    const live = {} as AccountLines;
    for (const k of Object.keys(ACCOUNT_FILES) as (keyof AccountLines)[]) {
      liveText[k] = readRootFile(root, ACCOUNT_FILES[k]);
      live[k] = lines(liveText[k]);
    }
    const merged = mergeAccounts(live, a);
    problems.push(...accountProblems(merged.clashes));
    accountsAdded = merged.added;
    for (const k of Object.keys(ACCOUNT_FILES) as (keyof AccountLines)[]) {
      const text = merged.files[k].length ? `${merged.files[k].join("\n")}\n` : "";
      // A file the endpoint lacks is created only when it gets lines.
      if (liveText[k] === null && text === "") continue;
      if (text !== (liveText[k] ?? "")) literals.set(ACCOUNT_FILES[k], Buffer.from(text, "latin1"));
    }
  }

  // Disk space: staging writes every new and changed file before the
  // commit, so an apply that cannot fit is refused before it starts.
  let disk: PreparedApply["disk"] = null;
  const space = o.space === undefined ? rootFilesystem(root) : o.space;
  if (space && plan.bytesToWrite !== undefined) {
    const need = {
      bytesToWrite: plan.bytesToWrite,
      filesToWrite: plan.filesToWrite ?? 0,
      blockSize: space.blockSize,
    };
    disk = { path: space.path, freeBytes: space.freeBytes, neededBytes: diskSpaceNeeded(need) };
    const p = diskSpaceProblem({ ...need, freeBytes: space.freeBytes, path: space.path });
    if (p) problems.push(p);
  }

  return {
    literals,
    removable: removalPredicate(plan.removals),
    // What base captures and app captures leave out (identity, logs,
    // caches, apt's and dpkg's own state) is no layer's to write or delete:
    // it matters for enforce remove, which deletes what no layer owns.
    doNotOverride: pathRules(
      ruleMatcher([...plan.doNotOverride, ...BASE_CAPTURE_RULES, ...CAPTURE_NOISE_RULES]),
      literals,
    ),
    problems,
    packages,
    userInstalled,
    accountsAdded,
    disk,
  };
}

/** A snapshot path (bytes) as the strings the protocol carries (UTF-8 names; others by latin1). */
const keyOf = (p: string) => Buffer.from(p, "utf8").toString("latin1");

/**
 * `true` for a path in the removal set, "below" for a directory holding
 * one, false otherwise. Memory: the set and its ancestors (bounded by the
 * layers' sizes, not by the endpoint's).
 */
export function removalPredicate(removals: string[]): (snapPath: Buffer) => boolean | "below" {
  const exact = new Set<string>();
  const ancestors = new Set<string>();
  for (const r of removals) {
    const k = keyOf(r.replace(/\/+$/, ""));
    if (!k.startsWith("/") || k === "/") continue;
    exact.add(k);
    for (let i = k.lastIndexOf("/"); i > 0; i = k.lastIndexOf("/", i - 1)) ancestors.add(k.slice(0, i));
  }
  return (snapPath) => {
    const p = snapPath.toString("latin1");
    if (exact.has(p)) return true;
    // The server lists every path below a removed directory, so a path it
    // does not list is not the layers' (a file the user put in there): kept,
    // and with it its directory (the engine asks entry by entry).
    return ancestors.has(p) ? "below" : false;
  };
}

/** Rules over UTF-8 paths as a predicate over snapshot paths; the structured files (literals) are always ours. */
function pathRules(
  match: (p: string) => boolean,
  literals: Map<string, Buffer>,
): (snapPath: Buffer) => boolean {
  return (snapPath) => !literals.has(snapPath.toString("latin1")) && match(snapPath.toString("utf8"));
}

/** Blocking problems as one error naming them all, with what to do. */
export function blockedError(problems: DryRunProblem[]): StrataError | null {
  const blocking = problems.filter((p) => p.blocking);
  if (!blocking.length) return null;
  return new StrataError(
    "CONFLICT",
    `the layers cannot be applied: ${blocking.map((p) => p.message).join("; ")}`,
    {
      subject: blocking[0]!.subject,
      hint: "see `strata cvd dry-run CVD`; change the assignment or the endpoint, then apply again",
    },
  );
}

/** Triggers of an apply staged for the next start (`--at-restart`), run after its roll-forward. */
const PENDING_TRIGGERS = "pending-triggers.json";

export function savePendingTriggers(stateDir: string, id: string, triggers: readonly Trigger[]): void {
  writeFileAtomic(path.join(stateDir, PENDING_TRIGGERS), `${JSON.stringify({ id, triggers })}\n`, 0o600);
}

/**
 * At start, after `recoverPendingRestore`: run the triggers a deferred
 * apply left (the files are in place now), then forget them. Returns what
 * ran (empty when nothing was pending).
 */
export async function runPendingTriggers(stateDir: string, root: string): Promise<TriggerRun[]> {
  const f = path.join(stateDir, PENDING_TRIGGERS);
  let saved: { id: string; triggers: Trigger[] };
  try {
    saved = JSON.parse(readFileSync(f, "utf8"));
  } catch {
    return [];
  }
  // Only once its journal is gone (rolled forward or back): a restore still pending keeps them.
  if (hasPendingRestore(stateDir)) return [];
  const out = await runTriggers(root, saved.triggers ?? []);
  rmSync(f, { force: true });
  return out;
}

export interface TriggerRun {
  trigger: Trigger;
  ok: boolean;
  output: string;
}

/**
 * Run what the layers recorded after their files landed: `ldconfig` in the
 * root (chroot for a root other than /), `systemctl daemon-reload` only on
 * a live system (a chroot has no running systemd). A failing trigger is
 * reported, not fatal: the files are in place.
 */
export async function runTriggers(root: string, triggers: readonly Trigger[]): Promise<TriggerRun[]> {
  const live = path.resolve(root) === "/";
  const out: TriggerRun[] = [];
  for (const t of triggers) {
    let cmd: string[] | null = null;
    if (t === "ldconfig") cmd = live ? ["ldconfig"] : ["chroot", root, "ldconfig"];
    else if (t === "systemd-daemon-reload" && live) cmd = ["systemctl", "daemon-reload"];
    if (!cmd) continue;
    out.push({ trigger: t, ...(await run(cmd)) });
  }
  return out;
}

function run(cmd: string[]): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    const add = (b: Buffer) => {
      if (output.length < 4096) output += b.toString("utf8");
    };
    child.stdout.on("data", add);
    child.stderr.on("data", add);
    child.on("error", (e) => resolve({ ok: false, output: e.message }));
    child.on("exit", (code, signal) =>
      resolve({
        ok: code === 0,
        output: output.trim() || (code === 0 ? "" : `exited with ${signal ?? code}`),
      }),
    );
  });
}
