/**
 * The agent's half of a layer apply (docs/design/layers.md, "Apply"): from
 * the server's apply plan and the live root, compute the dry-run problems
 * that block, the structured files' new contents (dpkg status and the
 * account files, merged by entry with what the endpoint has), the removal
 * predicate the engine deletes by, and afterwards run the triggers the
 * layers recorded (ldconfig, update-alternatives, a removed kernel's
 * initramfs and postrm.d hooks, depmod, a new kernel's postinst.d hooks,
 * update-initramfs, update-grub, systemd daemon-reload) — and, right
 * before the engine commits, the prerm.d and preinst.d hooks of a kernel
 * the commit removes or adds (`kernelPreCommit`). The engine
 * (restore/engine.ts, kind `layer`) does the staged, journaled change of
 * the disk.
 */
import { spawn } from "node:child_process";
import {
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
} from "node:fs";
import * as path from "node:path";
import {
  type AccountLines,
  ALTERNATIVES_ADMIN_DIR,
  ALTERNATIVES_LINK_DIR,
  type AlternativeGroup,
  accountProblems,
  alternativeLinks,
  applyTriggers,
  BASE_CAPTURE_RULES,
  CAPTURE_NOISE_RULES,
  DEPMOD_OUTPUTS,
  depmodTargets,
  diskSpaceNeeded,
  diskSpaceProblem,
  dryRunPackages,
  globToRegExp,
  initramfsTargets,
  isAlternativeName,
  joinBytePaths,
  mergeAccounts,
  mergeInitramfsTargets,
  mergeStatus,
  parseAlternativeAdmin,
  parseStatus,
  ruleMatcher,
  StrataError,
  TRIGGER_ORDER,
  triggersFor,
} from "@strata/core";
import type {
  ApplyPlan,
  DryRunProblem,
  InitramfsTargets,
  LayerAlternatives,
  Trigger,
} from "@strata/protocol";
import { type RootFilesystem, rootFilesystem } from "../facts.js";
import { hasPendingRestore } from "../restore/engine.js";
import type { StagedOp } from "../restore/types.js";
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
  /** What runs once the files are in place: the image's triggers and those its removals need, in `TRIGGER_ORDER`. */
  triggers: Trigger[];
  /** What the triggers need besides the root (`runTriggers`). */
  triggerContext: TriggerContext;
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

  // Triggers: the image's, and what its removals need (a layer that went
  // away took libraries, units, a kernel, alternatives with it).
  const removable = removalPredicate(plan.removals, plan.removalsB64);
  // Every removal as a byte-path string, for what derives triggers from paths.
  const removals = joinBytePaths(plan.removals, plan.removalsB64);
  const liveAlternatives = readAlternatives(root);
  const alternativeRemovals = new Map<string, { name: string; path: string }>();
  for (const r of m.alternatives?.removed ?? []) alternativeRemovals.set(`${r.name}\n${r.path}`, r);
  for (const g of liveAlternatives.values())
    for (const c of g.choices)
      if (removable(Buffer.from(c.path, "utf8")) === true)
        alternativeRemovals.set(`${g.name}\n${c.path}`, { name: g.name, path: c.path });
  const recorded = applyTriggers(m.triggers, triggersFor(removals));
  const triggers = TRIGGER_ORDER.filter(
    (t) => recorded.includes(t) || (t === "update-alternatives" && alternativeRemovals.size > 0),
  );
  // Which kernels the endpoint gains or loses is known after the apply, by these.
  const kernelHooks = triggers.includes("kernel-postinst") || triggers.includes("kernel-postrm");
  const initramfs = mergeInitramfsTargets(
    m.initramfs ?? (m.triggers.includes("update-initramfs") ? { kernels: [], all: true } : null),
    initramfsTargets(removals),
  );
  // A layer captured before `depmod` was recorded has none: every kernel then.
  const depmod = mergeInitramfsTargets(
    m.depmod ?? (m.triggers.includes("depmod") ? { kernels: [], all: true } : null),
    depmodTargets(removals),
  );
  // The generic links of every group (the endpoint's and the layers') are
  // update-alternatives' to make: an apply neither writes nor deletes them.
  const links = alternativeLinks([...liveAlternatives.values(), ...(m.alternatives?.groups ?? [])]);

  return {
    literals,
    removable,
    // What base captures and app captures leave out (identity, logs,
    // caches, apt's and dpkg's own state, what triggers derive) is no
    // layer's to write or delete: it matters for enforce remove, which
    // deletes what no layer owns.
    doNotOverride: pathRules(
      ruleMatcher([...plan.doNotOverride, ...BASE_CAPTURE_RULES, ...CAPTURE_NOISE_RULES]),
      literals,
      links,
    ),
    problems,
    packages,
    userInstalled,
    accountsAdded,
    disk,
    triggers,
    triggerContext: {
      ...(m.alternatives?.groups.length || alternativeRemovals.size
        ? {
            alternatives: {
              groups: m.alternatives?.groups ?? [],
              removed: [...alternativeRemovals.values()],
            },
          }
        : {}),
      ...(initramfs && triggers.includes("update-initramfs") ? { initramfs } : {}),
      ...(depmod && triggers.includes("depmod") ? { depmod } : {}),
      ...(kernelHooks ? { kernelsBefore: rootKernels(root) } : {}),
      image: plan.image.id,
    },
  };
}

/**
 * `true` for a path in the removal set, "below" for a directory holding
 * one, false otherwise. The set is the plan's `removals` (paths whose bytes
 * are valid UTF-8) and `removalsB64` (the others, base64 of their bytes),
 * compared with snapshot paths byte for byte. Memory: the set and its
 * ancestors (bounded by the layers' sizes, not by the endpoint's).
 */
export function removalPredicate(
  removals: readonly string[],
  removalsB64: readonly string[] = [],
): (snapPath: Buffer) => boolean | "below" {
  const exact = new Set<string>();
  const ancestors = new Set<string>();
  // Keys are the exact bytes as latin1 strings (one character per byte).
  const keys = [
    ...removals.map((r) => Buffer.from(r, "utf8").toString("latin1")),
    ...removalsB64.map((b) => Buffer.from(b, "base64").toString("latin1")),
  ];
  for (const key of keys) {
    const k = key.replace(/\/+$/, "");
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

/**
 * Rules over UTF-8 paths (and exact paths) as a predicate over snapshot
 * paths; the structured files (literals) are always ours.
 */
function pathRules(
  match: (p: string) => boolean,
  literals: Map<string, Buffer>,
  exact: Set<string> = new Set(),
): (snapPath: Buffer) => boolean {
  return (snapPath) => {
    if (literals.has(snapPath.toString("latin1"))) return false;
    const p = snapPath.toString("utf8");
    return exact.has(p) || match(p);
  };
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

export function savePendingTriggers(
  stateDir: string,
  id: string,
  triggers: readonly Trigger[],
  context: TriggerContext = {},
): void {
  const { stateDir: _dir, ...ctx } = context;
  const f = path.join(stateDir, PENDING_TRIGGERS);
  // An earlier apply's triggers still waiting for the restart run with these (one restart combines them).
  let all: readonly Trigger[] = triggers;
  try {
    const was = JSON.parse(readFileSync(f, "utf8")) as { triggers?: Trigger[]; context?: TriggerContext };
    all = TRIGGER_ORDER.filter((t) => triggers.includes(t) || (was.triggers ?? []).includes(t));
    const a = was.context?.alternatives;
    if (a) {
      const removed = new Map(
        [...a.removed, ...(ctx.alternatives?.removed ?? [])].map((r) => [`${r.name}\n${r.path}`, r]),
      );
      // The newest image is the state to reach: its groups; the removals of both.
      ctx.alternatives = { groups: ctx.alternatives?.groups ?? [], removed: [...removed.values()] };
    }
    const i = mergeInitramfsTargets(was.context?.initramfs, ctx.initramfs);
    if (i) ctx.initramfs = i;
    const d = mergeInitramfsTargets(was.context?.depmod, ctx.depmod);
    if (d) ctx.depmod = d;
    // The kernels before the first of them: what the restart's files are compared with.
    if (was.context?.kernelsBefore) ctx.kernelsBefore = was.context.kernelsBefore;
  } catch {
    // None waiting.
  }
  writeFileAtomic(f, `${JSON.stringify({ id, triggers: all, context: ctx })}\n`, 0o600);
}

/**
 * At start, after `recoverPendingRestore`: run the triggers a deferred
 * apply left (the files are in place now), then forget them. Returns what
 * ran (empty when nothing was pending).
 */
export async function runPendingTriggers(stateDir: string, root: string): Promise<TriggerRun[]> {
  const f = path.join(stateDir, PENDING_TRIGGERS);
  let saved: { id: string; triggers: Trigger[]; context?: TriggerContext };
  try {
    saved = JSON.parse(readFileSync(f, "utf8"));
  } catch {
    return [];
  }
  // Only once its journal is gone (rolled forward or back): a restore still pending keeps them.
  if (hasPendingRestore(stateDir)) return [];
  const out = await runTriggers(root, saved.triggers ?? [], { ...saved.context, stateDir });
  rmSync(f, { force: true });
  return out;
}

/**
 * What runs before the commit (`kernelPreCommit`): the /etc/kernel/prerm.d
 * hooks of a kernel the apply removes, the preinst.d hooks of one it adds.
 */
export type KernelPreHook = "kernel-prerm" | "kernel-preinst";

export interface TriggerRun {
  trigger: Trigger | KernelPreHook;
  ok: boolean;
  /** What the commands printed (at most 4 KiB), or why the trigger was skipped. */
  output: string;
  /** Not run: its tool is not installed in the root (`output` says which). */
  skipped?: true;
}

/** What the triggers need besides the root (docs/design/layers.md, "Triggers"). */
export interface TriggerContext {
  /**
   * `update-alternatives`: the groups to register the image's alternatives
   * into, and the alternatives to remove once their path is gone (the
   * layers removed them, or the apply removed their path).
   */
  alternatives?: LayerAlternatives;
  /** `update-initramfs`: whose initramfs to rebuild (default: every kernel of the root). */
  initramfs?: InitramfsTargets;
  /** `depmod`: whose module index to rebuild (default: every kernel with a module tree in the root). */
  depmod?: InitramfsTargets;
  /**
   * `kernel-postinst`, `kernel-postrm`: the kernels (/boot/vmlinuz-VER) the
   * root had before the apply; those there now and not then were added, those
   * then and not now removed. None: the hooks run for no kernel.
   */
  kernelsBefore?: string[];
  /** The image applied: an initramfs built for it is not built again by a later apply of the same image. */
  image?: string;
  /** The agent's state directory (what the triggers remember between applies); none: nothing is remembered. */
  stateDir?: string;
}

/**
 * Run what the layers recorded after their files landed, in the root
 * (chroot for a root other than /), in `TRIGGER_ORDER`: `ldconfig`;
 * `update-alternatives` (`runAlternatives`); `kernel-postrm`
 * (`runKernelPostrm`: a removed kernel's initramfs and postrm.d hooks);
 * `depmod` (`runDepmod`); `kernel-postinst` (`runKernelPostinst`: a new
 * kernel's postinst.d hooks, DKMS); `update-initramfs` (`runInitramfs`);
 * `update-grub` (`runUpdateGrub`, also when update-initramfs made a kernel
 * its first initramfs or a kernel came or went: GRUB lists only the kernels
 * and initramfs it finds); `systemctl daemon-reload` only on a live system
 * (a chroot has no running systemd). A trigger whose tool the root lacks is
 * skipped with a note; a failing one is reported, not fatal: the files are
 * in place.
 */
export async function runTriggers(
  root: string,
  triggers: readonly Trigger[],
  ctx: TriggerContext = {},
): Promise<TriggerRun[]> {
  const live = path.resolve(root) === "/";
  const out: TriggerRun[] = [];
  // GRUB's menu changes with a new initramfs, a new kernel, a removed one.
  let menuChanged = false;
  for (const t of TRIGGER_ORDER) {
    if (!triggers.includes(t) && !(t === "update-grub" && menuChanged)) continue;
    let r: StepResult | null = null;
    if (t === "ldconfig") r = stepOf(await run(live ? ["ldconfig"] : ["chroot", root, "ldconfig"]));
    else if (t === "update-alternatives") r = await runAlternatives(root, ctx);
    else if (t === "kernel-postrm" || t === "kernel-postinst") {
      r = t === "kernel-postrm" ? await runKernelPostrm(root, ctx) : await runKernelPostinst(root, ctx);
      if (r) menuChanged = true;
    } else if (t === "depmod") r = await runDepmod(root, ctx);
    else if (t === "update-initramfs") {
      const i = await runInitramfs(root, ctx);
      if (i?.created === true) menuChanged = true;
      r = i && { ok: i.ok, output: i.output, ...(i.skipped ? { skipped: i.skipped } : {}) };
    } else if (t === "update-grub") r = await runUpdateGrub(root);
    else if (t === "systemd-daemon-reload" && live) r = stepOf(await run(["systemctl", "daemon-reload"]));
    if (r) out.push({ trigger: t, ...r });
  }
  return out;
}

/** One trigger's outcome (`TriggerRun` without its name). */
type StepResult = { ok: boolean; output: string; skipped?: true };

/** A command's outcome as a trigger's. */
const stepOf = (r: { ok: boolean; output: string }): StepResult => ({ ok: r.ok, output: r.output });

/** A trigger not run because the root lacks its tool: reported, not failed. */
const skipped = (output: string): StepResult => ({ ok: true, output, skipped: true });

/** Kernel versions as /boot names them (no path separators, not `.` or `..`). */
const kernelName = (v: string) => v.length > 0 && !v.includes("/") && v !== "." && v !== "..";

/** The kernel versions with a module tree in the root (/lib/modules/VER or /usr/lib/modules/VER). */
export function rootModuleTrees(root: string): string[] {
  const out = new Set<string>();
  for (const d of ["lib/modules", "usr/lib/modules"]) {
    try {
      for (const e of readdirSync(path.join(root, d), { withFileTypes: true }))
        if (e.isDirectory()) out.add(e.name);
    } catch {
      // None there.
    }
  }
  return [...out].sort();
}

/**
 * Rebuild the module index (modules.dep, aliases, symbols) of the kernels
 * whose module tree the layers changed, or of every kernel with a module
 * tree in the root (`all`): `depmod -a VER` with the root's own depmod. A
 * version whose tree is not in the root (a kernel the apply removed) is
 * skipped. Skipped with a note when kmod is not installed in the root; null
 * when there is nothing to index.
 */
export async function runDepmod(root: string, ctx: TriggerContext): Promise<StepResult | null> {
  const t = ctx.depmod ?? { kernels: [], all: true };
  const versions = new Set(t.kernels);
  if (t.all) for (const v of rootModuleTrees(root)) versions.add(v);
  const present = [...versions]
    .filter(kernelName)
    .filter((v) => existsIn(root, `/lib/modules/${v}`) || existsIn(root, `/usr/lib/modules/${v}`))
    .sort();
  if (!present.length) return null;
  const bin = rootFile(root, ["/usr/sbin/depmod", "/sbin/depmod"]);
  if (!bin) return skipped(`depmod is not installed in the root (kmod): not run for ${present.join(", ")}`);
  let ok = true;
  const output: string[] = [];
  for (const v of present) {
    const r = await run(inRoot(root, [bin, "-a", v]));
    if (!r.ok) ok = false;
    if (r.output) output.push(`depmod -a ${v}: ${r.output}`);
  }
  return { ok, output: output.join("\n").slice(0, 4096) };
}

/**
 * `update-grub` with the root's own (a new or removed kernel, or a new
 * initramfs, changes GRUB's menu). Skipped with a note when GRUB is not
 * installed in the root (a minimal chroot, a machine booted otherwise).
 */
export async function runUpdateGrub(root: string): Promise<StepResult> {
  const bin = rootFile(root, ["/usr/sbin/update-grub", "/sbin/update-grub"]);
  if (!bin) return skipped("update-grub is not installed in the root (no GRUB): not run");
  return stepOf(await run(inRoot(root, [bin])));
}

/** A command of the root: argv run there (chroot unless the root is /). */
const inRoot = (root: string, argv: string[]) =>
  path.resolve(root) === "/" ? argv : ["chroot", root, ...argv];

/**
 * The first of `candidates` (absolute paths in the root) that exists there,
 * or null. A symlink counts without being followed: its target is the
 * root's (kmod's /sbin/depmod → /bin/kmod), not the host's.
 */
function rootFile(root: string, candidates: string[]): string | null {
  return candidates.find((c) => existsIn(root, c)) ?? null;
}

/** `p` (absolute in the root) exists, itself (a symlink counts; it is not followed). */
function existsIn(root: string, p: string): boolean {
  try {
    lstatSync(path.join(root, p));
    return true;
  } catch {
    return false;
  }
}

/** The root's alternatives groups by name; files that are not administrative files are left out. */
export function readAlternatives(root: string): Map<string, AlternativeGroup> {
  const out = new Map<string, AlternativeGroup>();
  const dir = path.join(root, ALTERNATIVES_ADMIN_DIR);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names.sort()) {
    if (!isAlternativeName(name) || name.endsWith(".dpkg-tmp")) continue;
    let current: string | null = null;
    try {
      current = readlinkSync(path.join(root, ALTERNATIVES_LINK_DIR, name));
    } catch {
      // No link: update-alternatives makes it.
    }
    try {
      out.set(name, parseAlternativeAdmin(name, readFileSync(path.join(dir, name), "utf8"), current));
    } catch {
      // Not an administrative file (a directory, a stray file): not a group.
    }
  }
  return out;
}

/** Manual choices the layers made on this endpoint (so a newer layer's choice replaces them). */
const ALTERNATIVES_STATE = "alternatives.json";

/**
 * Register the layers' alternatives with the root's own update-alternatives,
 * by dpkg's rules (what the packages' maintainer scripts would have done on
 * the endpoint): first `--remove NAME PATH` for each alternative to remove
 * whose path is gone; then `--install LINK NAME PATH PRIORITY [--slave …]`
 * for each alternative of the layers whose path exists (a group in auto
 * mode gets the best priority; one in manual mode keeps its choice); then
 * `--set NAME PATH` where a layer chose by hand — unless the endpoint chose
 * by hand itself (its manual mode on a choice no layer made). Null when
 * there is nothing to do.
 */
export async function runAlternatives(
  root: string,
  ctx: TriggerContext,
): Promise<{ ok: boolean; output: string } | null> {
  const a = ctx.alternatives;
  if (!a || (!a.groups.length && !a.removed.length)) return null;
  const bin = rootFile(root, ["/usr/bin/update-alternatives", "/usr/sbin/update-alternatives"]);
  if (!bin) return { ok: false, output: "update-alternatives is not installed in the root" };
  const stateFile = ctx.stateDir ? path.join(ctx.stateDir, ALTERNATIVES_STATE) : null;
  let ours: Record<string, string> = {};
  try {
    if (stateFile) ours = JSON.parse(readFileSync(stateFile, "utf8")).manual ?? {};
  } catch {
    // None yet.
  }
  const before = readAlternatives(root);
  const cmds: string[][] = [];
  const notes: string[] = [];
  for (const r of a.removed)
    if (!existsIn(root, r.path) && before.get(r.name)?.choices.some((c) => c.path === r.path))
      cmds.push(["--remove", r.name, r.path]);
  const sets: { name: string; path: string }[] = [];
  for (const g of a.groups) {
    for (const c of g.choices) {
      if (!existsIn(root, c.path)) {
        notes.push(`${c.path} is not on the endpoint: not registered in ${g.name}`);
        continue;
      }
      const argv = ["--install", g.link, g.name, c.path, String(c.priority)];
      for (const sl of g.slaves) {
        const sp = c.slaves[sl.name];
        if (sp) argv.push("--slave", sl.link, sl.name, sp);
      }
      cmds.push(argv);
    }
    if (!g.manual) continue;
    const was = before.get(g.name);
    const endpointChose = was?.mode === "manual" && was.current !== ours[g.name];
    if (!endpointChose && existsIn(root, g.manual)) {
      cmds.push(["--set", g.name, g.manual]);
      sets.push({ name: g.name, path: g.manual });
    }
  }
  let ok = true;
  const output: string[] = [...notes];
  for (const argv of cmds) {
    const r = await run(inRoot(root, [bin, ...argv]));
    if (!r.ok) {
      ok = false;
      output.push(`update-alternatives ${argv.slice(0, 3).join(" ")}: ${r.output}`);
      continue;
    }
    if (argv[0] === "--set") ours[argv[1]!] = argv[2]!;
  }
  if (stateFile && sets.length) {
    try {
      writeFileAtomic(stateFile, `${JSON.stringify({ manual: ours })}\n`, 0o600);
    } catch {
      // Best effort: without it a newer layer's choice may not replace this one.
    }
  }
  return { ok, output: output.join("\n").slice(0, 4096) };
}

/** The kernel versions of the root: those with an image /boot/vmlinuz-VER. */
export function rootKernels(root: string): string[] {
  try {
    return readdirSync(path.join(root, "boot"))
      .filter((n) => n.startsWith("vmlinuz-") && n.length > 8)
      .map((n) => n.slice(8))
      .sort();
  } catch {
    return [];
  }
}

/** Kernels whose initramfs was built after an apply of an image (STATE/initramfs.json). */
const INITRAMFS_STATE = "initramfs.json";

/**
 * Rebuild the root's initramfs of the kernels the layers touched (or of
 * every kernel of the root, when they touched initramfs-tools' configuration,
 * hooks or firmware): `update-initramfs -u -k VER` when /boot/initrd.img-VER
 * exists, `-c -k VER` when it does not (a kernel a layer brought: its
 * reference's initramfs is never in a layer). A version without
 * /boot/vmlinuz-VER on the endpoint is skipped. Null when initramfs-tools
 * is not installed in the root, or nothing is to be built. An initramfs
 * built after an apply of the same image (and still there) is not built
 * again.
 */
export async function runInitramfs(
  root: string,
  ctx: TriggerContext,
): Promise<(StepResult & { created?: boolean }) | null> {
  const t = ctx.initramfs ?? { kernels: [], all: true };
  const versions = new Set(t.kernels);
  if (t.all) for (const v of rootKernels(root)) versions.add(v);
  const bin = rootFile(root, ["/usr/sbin/update-initramfs", "/sbin/update-initramfs"]);
  if (!bin) {
    const named = [...versions].filter((v) => kernelName(v) && existsIn(root, `/boot/vmlinuz-${v}`));
    return named.length
      ? skipped(
          `update-initramfs is not installed in the root (initramfs-tools): not run for ${named.sort().join(", ")}`,
        )
      : null;
  }
  const stateFile = ctx.stateDir ? path.join(ctx.stateDir, INITRAMFS_STATE) : null;
  let done = new Set<string>();
  try {
    const s = stateFile ? JSON.parse(readFileSync(stateFile, "utf8")) : null;
    if (s && ctx.image && s.image === ctx.image) done = new Set(s.kernels);
  } catch {
    // None yet.
  }
  let ok = true;
  let ran = false;
  let created = false;
  const output: string[] = [];
  for (const v of [...versions].sort()) {
    if (!kernelName(v) || !existsIn(root, `/boot/vmlinuz-${v}`)) continue;
    const has = existsIn(root, `/boot/initrd.img-${v}`);
    if (has && done.has(v)) continue;
    ran = true;
    const r = await run(inRoot(root, [bin, has ? "-u" : "-c", "-k", v]));
    if (r.ok) {
      done.add(v);
      if (!has) created = true;
    } else {
      ok = false;
      done.delete(v);
    }
    if (r.output) output.push(`update-initramfs ${has ? "-u" : "-c"} -k ${v}: ${r.output}`);
  }
  if (!ran) return null;
  if (stateFile && ctx.image) {
    try {
      writeFileAtomic(
        stateFile,
        `${JSON.stringify({ image: ctx.image, kernels: [...done].sort() })}\n`,
        0o600,
      );
    } catch {
      // Best effort: the next apply of this image builds them again.
    }
  }
  return { ok, output: output.join("\n").slice(0, 4096), ...(created ? { created } : {}) };
}

/** Debian's kernel hook directories (kernel-handbook, "Kernel hooks"). */
export const KERNEL_PREINST_DIR = "/etc/kernel/preinst.d";
export const KERNEL_PRERM_DIR = "/etc/kernel/prerm.d";
export const KERNEL_POSTINST_DIR = "/etc/kernel/postinst.d";
export const KERNEL_POSTRM_DIR = "/etc/kernel/postrm.d";
/**
 * Hooks Strata does not run from those directories: it runs what they do
 * itself, in its own order and once for all kernels (initramfs-tools' hook
 * is `update-initramfs`, grub2's `zz-update-grub` is `update-grub`).
 */
export const KERNEL_HOOKS_OURS: ReadonlySet<string> = new Set(["initramfs-tools", "zz-update-grub"]);
/** run-parts(8)'s names (without --lsbsysinit): others (`dkms.dpkg-old`, `x.sh`) are not run. */
const RUN_PARTS_NAME = /^[A-Za-z0-9_-]+$/;

/**
 * `abs` (absolute in the root) as a host path with every symlink resolved
 * inside the root (an absolute target is the root's, not the host's), or
 * null when it does not resolve (dangling, a loop).
 */
function resolveInRoot(root: string, abs: string): string | null {
  const todo = abs.split("/").filter((c) => c && c !== ".");
  const done: string[] = [];
  let hops = 0;
  while (todo.length) {
    const c = todo.shift()!;
    if (c === "..") {
      done.pop();
      continue;
    }
    const host = path.join(root, ...done, c);
    let link: string;
    try {
      if (!lstatSync(host).isSymbolicLink()) {
        done.push(c);
        continue;
      }
      link = readlinkSync(host);
    } catch {
      return null;
    }
    if (++hops > 40) return null;
    if (link.startsWith("/")) done.length = 0;
    todo.unshift(...link.split("/").filter((x) => x && x !== "."));
  }
  return path.join(root, ...done);
}

/**
 * The hooks of `dir` (absolute in the root) that run-parts(8) would run, less
 * `KERNEL_HOOKS_OURS`, as absolute paths in the root: names of letters,
 * digits, `_` and `-`; regular files (a symlink counts by its target, in the
 * root) with an execute bit; in byte order (run-parts' in the C locale).
 */
export function kernelHooks(root: string, dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(path.join(root, dir));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const n of names) {
    if (!RUN_PARTS_NAME.test(n) || KERNEL_HOOKS_OURS.has(n)) continue;
    const host = resolveInRoot(root, `${dir}/${n}`);
    try {
      const st = host ? statSync(host) : null;
      if (st?.isFile() && (st.mode & 0o111) !== 0) out.push(`${dir}/${n}`);
    } catch {
      // Gone meanwhile: not run.
    }
  }
  return out.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

/** The kernels the apply added or removed (`kernelsBefore` against /boot now); null without `kernelsBefore`. */
function kernelChanges(root: string, ctx: TriggerContext): { added: string[]; removed: string[] } | null {
  if (!ctx.kernelsBefore) return null;
  const before = new Set(ctx.kernelsBefore.filter(kernelName));
  const now = new Set(rootKernels(root));
  return {
    added: [...now].filter((v) => !before.has(v)).sort(kernelVersionCmp),
    removed: [...before].filter((v) => !now.has(v)).sort(kernelVersionCmp),
  };
}

/** What `runHooks` is told to do besides running every hook. */
interface HookRunOptions {
  /** `run-parts --exit-on-error`: stop at the first failing hook (the hooks before the commit). */
  stopOnError?: boolean;
  /** Hooks (`HOOK VER`) that ran to success before the agent stopped: not run again. */
  done?: ReadonlySet<string>;
  /** Told each hook (`HOOK VER`) that exited 0. */
  onDone?: (key: string) => void;
}

/**
 * Run the hooks of `dir` for `v` the way Debian's kernel packages do
 * (`DEB_MAINT_PARAMS=PARAMS run-parts --report --arg=VER
 * --arg=/boot/vmlinuz-VER DIR`), in the root, each hook on its own, each
 * listed with its exit status and what it printed. After the files changed
 * every hook runs even when one before it failed (nothing runs them again
 * later: the kernel is no longer new at the next apply); before the commit
 * (`stopOnError`) the first failure stops them, as `--exit-on-error` does.
 */
async function runHooks(
  root: string,
  dir: string,
  v: string,
  params: string,
  o: HookRunOptions = {},
): Promise<{ ok: boolean; output: string[]; ran: boolean }> {
  const hooks = kernelHooks(root, dir);
  let ok = true;
  const output: string[] = [];
  for (const h of hooks) {
    const argv = [h, v, `/boot/vmlinuz-${v}`];
    const key = `${h} ${v}`;
    if (o.done?.has(key)) {
      output.push(`${argv.join(" ")}: ran before the agent stopped, not run again`);
      continue;
    }
    const r = await run(inRoot(root, argv), { DEB_MAINT_PARAMS: params });
    output.push(
      `${argv.join(" ")}${r.ok ? "" : ` failed (${r.status})`}${r.printed ? `: ${r.printed}` : ""}`,
    );
    if (r.ok) o.onDone?.(key);
    else {
      ok = false;
      if (o.stopOnError) break;
    }
  }
  return { ok, output, ran: hooks.length > 0 };
}

const ourHooks = [...KERNEL_HOOKS_OURS].join(", ");

/**
 * A kernel the apply brought (its /boot/vmlinuz-VER was not on the endpoint
 * before), for each in version order: the default links point at it
 * (`updateKernelLinks install`), then the root's /etc/kernel/postinst.d
 * hooks run for it, less `KERNEL_HOOKS_OURS` — DKMS builds its modules for
 * the new kernel there. Skipped with a note when the links are unchanged
 * (or not wanted) and the directory has no other hook; null when no kernel
 * was added.
 */
export async function runKernelPostinst(root: string, ctx: TriggerContext): Promise<StepResult | null> {
  const added = kernelChanges(root, ctx)?.added ?? [];
  if (!added.length) return null;
  let ok = true;
  let ran = false;
  const output: string[] = [];
  for (const v of added) {
    const l = await updateKernelLinks(root, "install", v);
    if (!l.ok) ok = false;
    output.push(...l.output);
    const r = await runHooks(root, KERNEL_POSTINST_DIR, v, "configure");
    if (!r.ok) ok = false;
    ran ||= r.ran;
    output.push(...r.output);
  }
  if (!ran && !output.length)
    return skipped(
      `no hook in ${KERNEL_POSTINST_DIR} besides ${ourHooks} (Strata runs those itself): none run for ${added.join(", ")}`,
    );
  return { ok, output: output.join("\n").slice(0, 4096) };
}

/**
 * A kernel the apply removed (its /boot/vmlinuz-VER is gone), as its
 * package's postrm (remove, then purge) would: the default links leave it
 * (`updateKernelLinks remove`); its initramfs goes (`update-initramfs -d -k
 * VER` with the root's initramfs-tools, else /boot/initrd.img-VER is
 * deleted: no apply deletes an endpoint-derived file); the root's
 * /etc/kernel/postrm.d hooks run for it, less `KERNEL_HOOKS_OURS`; then
 * depmod's files of its module tree go, and the tree when that leaves it
 * empty (`purgeModuleTree`). Skipped with a note when there was nothing to
 * do; null when no kernel was removed.
 */
export async function runKernelPostrm(root: string, ctx: TriggerContext): Promise<StepResult | null> {
  const removed = kernelChanges(root, ctx)?.removed ?? [];
  if (!removed.length) return null;
  let ok = true;
  const output: string[] = [];
  const bin = rootFile(root, ["/usr/sbin/update-initramfs", "/sbin/update-initramfs"]);
  let ran = false;
  for (const v of removed) {
    const l = await updateKernelLinks(root, "remove", v);
    if (!l.ok) ok = false;
    output.push(...l.output);
    const initrd = `/boot/initrd.img-${v}`;
    if (existsIn(root, initrd)) {
      if (bin) {
        const r = await run(inRoot(root, [bin, "-d", "-k", v]));
        if (!r.ok) ok = false;
        if (r.output || !r.ok)
          output.push(
            `update-initramfs -d -k ${v}${r.ok ? "" : ` failed (${r.status})`}${r.printed ? `: ${r.printed}` : ""}`,
          );
      } else {
        try {
          rmSync(path.join(root, initrd), { force: true });
          output.push(`${initrd} deleted (no initramfs-tools in the root)`);
        } catch (e) {
          ok = false;
          output.push(`cannot delete ${initrd}: ${(e as Error).message}`);
        }
      }
    }
    const r = await runHooks(root, KERNEL_POSTRM_DIR, v, "remove");
    if (!r.ok) ok = false;
    ran ||= r.ran;
    output.push(...r.output);
    const p = purgeModuleTree(root, v);
    if (!p.ok) ok = false;
    output.push(...p.output);
  }
  if (!ran && !output.length)
    return skipped(
      `no initramfs and no hook in ${KERNEL_POSTRM_DIR} besides ${ourHooks}: nothing run for ${removed.join(", ")}`,
    );
  return { ok, output: output.join("\n").slice(0, 4096) };
}

/** depmod's output files by name (core `DEPMOD_OUTPUTS`). */
const DEPMOD_OUTPUT_NAMES = DEPMOD_OUTPUTS.map((g) => globToRegExp(g));

/**
 * What a kernel package's purge does to the module tree of a kernel that
 * is gone: depmod's files (`DEPMOD_OUTPUTS`: endpoint-derived, so the
 * apply left them) are deleted from /lib/modules/VER and
 * /usr/lib/modules/VER (one directory when /lib is /usr/lib), then the
 * directory when it is empty. A tree holding anything else (modules no
 * layer removed: the user's, DKMS's when no prerm hook took them) stays,
 * and the report says so.
 */
export function purgeModuleTree(root: string, v: string): { ok: boolean; output: string[] } {
  const output: string[] = [];
  let ok = true;
  if (!kernelName(v)) return { ok, output };
  const seen = new Set<string>();
  for (const d of [`/lib/modules/${v}`, `/usr/lib/modules/${v}`]) {
    const host = resolveInRoot(root, d);
    if (!host || seen.has(host)) continue;
    seen.add(host);
    let names: string[];
    try {
      if (!lstatSync(host).isDirectory()) continue;
      names = readdirSync(host);
    } catch {
      continue;
    }
    const gone: string[] = [];
    for (const n of names.sort()) {
      if (!DEPMOD_OUTPUT_NAMES.some((re) => re.test(n))) continue;
      try {
        if (lstatSync(path.join(host, n)).isDirectory()) continue;
        unlinkSync(path.join(host, n));
        gone.push(n);
      } catch (e) {
        ok = false;
        output.push(`cannot delete ${d}/${n}: ${(e as Error).message}`);
      }
    }
    if (gone.length) output.push(`${d}: depmod's files deleted (${gone.join(", ")})`);
    try {
      rmdirSync(host);
      output.push(`${d} deleted (empty)`);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOTEMPTY" || code === "EEXIST")
        output.push(`${d} kept: it holds files no layer removed (${readdirSync(host).sort().join(", ")})`);
      else {
        ok = false;
        output.push(`cannot delete ${d}: ${(e as Error).message}`);
      }
    }
  }
  return { ok, output };
}

/** linux-base's program that keeps the default kernel links. */
export const LINUX_UPDATE_SYMLINKS = "/usr/bin/linux-update-symlinks";

/**
 * Point the default kernel links (/vmlinuz, /vmlinuz.old, /initrd.img,
 * /initrd.img.old — in /boot with `link_in_boot`) at the newest kernels,
 * as a kernel package's postinst (`install`) and postrm (`remove`) do: the
 * root's own `linux-update-symlinks CHANGE VER /boot/vmlinuz-VER` (linux-base)
 * when it is there, else `kernelLinksUpdate`, Strata's port of it (a layer
 * that removed a kernel may have removed linux-base with it; dpkg would
 * have removed the kernel first). What either printed, one line each.
 */
export async function updateKernelLinks(
  root: string,
  change: "install" | "remove",
  v: string,
): Promise<{ ok: boolean; output: string[] }> {
  const image = `/boot/vmlinuz-${v}`;
  if (existsIn(root, LINUX_UPDATE_SYMLINKS)) {
    const r = await run(inRoot(root, [LINUX_UPDATE_SYMLINKS, change, v, image]));
    const head = `linux-update-symlinks ${change} ${v} ${image}`;
    if (!r.ok)
      return { ok: false, output: [`${head} failed (${r.status})${r.printed ? `: ${r.printed}` : ""}`] };
    return { ok: true, output: r.printed ? r.printed.split("\n").map((l) => `${head}: ${l}`) : [] };
  }
  try {
    return { ok: true, output: kernelLinksUpdate(root, change, v, image) };
  } catch (e) {
    return { ok: false, output: [`the kernel links for ${v}: ${(e as Error).message}`] };
  }
}

/** /etc/kernel-img.conf as linux-base reads it (kernel-img.conf(5)): only what the links need. */
function kernelImgConf(root: string): { doSymlinks: boolean; imageDest: string } {
  const conf = { doSymlinks: true, imageDest: "/", linkInBoot: false };
  const text = readRootFile(root, "/etc/kernel-img.conf") ?? "";
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "");
    const m = /^\s*(\w+)\s*=\s*(.*)/.exec(line);
    if (!m) continue;
    const name = m[1]!.toLowerCase();
    const value = m[2]!;
    const bool = /^(?:no|false|0)\s*$/i.test(value)
      ? false
      : /^(?:yes|true|1)\s*$/i.test(value)
        ? true
        : null;
    if (name === "do_symlinks" && bool !== null) conf.doSymlinks = bool;
    else if (name === "link_in_boot" && bool !== null) conf.linkInBoot = bool;
    else if (name === "image_dest") conf.imageDest = /^(\S*)/.exec(value)![1]!;
  }
  return { doSymlinks: conf.doSymlinks, imageDest: conf.linkInBoot ? "/boot" : conf.imageDest };
}

/** Kernel versions compared as linux-base's `version_cmp` (numbers as numbers, `-rc`/`-trunk` first). */
export function kernelVersionCmp(a: string, b: string): number {
  const split = (v: string) => v.match(/\d+|-?[^-\d]*/g)?.filter((c) => c !== "") ?? [];
  const l = split(a);
  const r = split(b);
  for (let i = 0; ; i++) {
    const x = l[i];
    const y = r[i];
    const xPre = x !== undefined && /^-(?:rc|trunk)$/.test(x);
    const yPre = y !== undefined && /^-(?:rc|trunk)$/.test(y);
    if (xPre || yPre) {
      if (!yPre) return -1;
      if (!xPre) return 1;
    }
    if (x === undefined || y === undefined) return x === undefined ? (y === undefined ? 0 : -1) : 1;
    if (/^\d/.test(x) && /^\d/.test(y)) {
      const d = Number.parseInt(x, 10) - Number.parseInt(y, 10);
      if (d) return d < 0 ? -1 : 1;
    } else if (x !== y) return x < y ? -1 : 1;
  }
}

/**
 * linux-update-symlinks (linux-base 4.x, `update_all`) over `root`: the
 * kernels of /boot ordered by version, with CHANGE's kernel taken out
 * (`remove`) or put last (`install`: the kernel just installed is the
 * default); the kernels the links point at now (when they still exist) move
 * up, the current default last; the last becomes /vmlinuz and /initrd.img,
 * the one before it /vmlinuz.old and /initrd.img.old (the same kernel when
 * there is one). An initrd link goes when its kernel has no
 * /boot/initrd.img-VER (a kernel just installed gets its link anyway: its
 * initramfs is built later). No kernel left: the links go. Links are
 * relative, made under a temporary name and renamed into place; one that
 * is right already is left alone. Returns linux-update-symlinks' messages.
 */
export function kernelLinksUpdate(
  root: string,
  change: "install" | "remove",
  v: string,
  image: string,
): string[] {
  const conf = kernelImgConf(root);
  if (!conf.doSymlinks) return [];
  const dir = conf.imageDest.replace(/\/*$/, "/");
  const stem = ["mips", "mipsel", "mips64el", "ppc", "ppc64"].includes(process.arch) ? "vmlinux" : "vmlinuz";
  const out: string[] = [];
  type Entry = { version: string; image: string; initrd?: string };
  let names: string[] = [];
  try {
    names = readdirSync(path.join(root, "boot"));
  } catch {
    // No /boot: no kernel.
  }
  const sorted: Entry[] = names
    .filter((n) => /^vmlinu[xz]-/.test(n) && !n.endsWith(".sig"))
    .sort()
    .map((n) => ({ version: n.slice("vmlinuz-".length), image: `/boot/${n}` }))
    .sort((a, b) => kernelVersionCmp(a.version, b.version));
  for (const e of sorted) {
    try {
      if (statSync(path.join(root, "boot", `initrd.img-${e.version}`)).isFile())
        e.initrd = `/boot/initrd.img-${e.version}`;
    } catch {
      // No initramfs.
    }
  }
  const mine: Entry = { version: v, image, initrd: `/boot/initrd.img-${v}` };
  const at = sorted.findIndex((e) => kernelVersionCmp(v, e.version) <= 0);
  if (at >= 0 && kernelVersionCmp(v, sorted[at]!.version) === 0) sorted.splice(at, 1);
  const promote = (link: string) => {
    let target: string;
    try {
      target = readlinkSync(path.join(root, link));
    } catch {
      return;
    }
    const abs = path.posix.resolve(path.posix.dirname(link), target);
    const i = sorted.findIndex((e) => e.image === abs);
    if (i >= 0) sorted.push(...sorted.splice(i, 1));
  };
  promote(`${dir}${stem}.old`);
  promote(`${dir}${stem}`);
  if (change === "install") sorted.push(mine);
  const link = (source: string, dest: string) => {
    const rel = path.posix.relative(path.posix.dirname(dest), source);
    const host = path.join(root, dest);
    try {
      if (readlinkSync(host) === rel) return;
    } catch {
      // Not a link yet.
    }
    const tmp = `${host}.${process.pid}${Date.now() % 1_000_000}`;
    symlinkSync(rel, tmp);
    try {
      renameSync(tmp, host);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw new Error(`cannot create or replace ${dest}: ${(e as Error).message}`);
    }
    out.push(`I: ${dest} is now a symlink to ${rel}`);
  };
  const unlink = (dest: string) => {
    try {
      unlinkSync(path.join(root, dest));
    } catch {
      // Not there (as linux-update-symlinks, which ignores it).
    }
  };
  if (!sorted.length) {
    out.push("W: Last kernel image has been removed, so removing the default symlinks");
    for (const n of [`${stem}.old`, "initrd.img.old", stem, "initrd.img"]) unlink(`${dir}${n}`);
    return out;
  }
  const old = sorted[sorted.length >= 2 ? sorted.length - 2 : sorted.length - 1]!;
  const cur = sorted[sorted.length - 1]!;
  link(old.image, `${dir}${stem}.old`);
  if (old.initrd) link(old.initrd, `${dir}initrd.img.old`);
  else unlink(`${dir}initrd.img.old`);
  link(cur.image, `${dir}${stem}`);
  if (cur.initrd) link(cur.initrd, `${dir}initrd.img`);
  else unlink(`${dir}initrd.img`);
  return out;
}

/** STATE/kernel-hooks-ID.json: what the hooks before an apply's commit did, until its task is reported. */
const kernelHooksFile = (stateDir: string, id: string) => path.join(stateDir, `kernel-hooks-${id}.json`);

/** The kernel hooks an apply runs before its commit (the engine's `layer.watch` and `layer.beforeCommit`). */
export interface KernelPreCommit {
  /**
   * The kernels before the apply, for the triggers after it: the root's
   * when `prepareLayerApply` looked, or — when an earlier run of the same
   * task was stopped (kill -9 too) after its hooks ran — the kernels that
   * run saw, so a commit it made before stopping still runs the postinst.d
   * and postrm.d hooks of the kernels it added and removed.
   */
  kernelsBefore: string[];
  /** /boot and the kernel images in it: what the engine tells `beforeCommit`. */
  watch: (snapPath: Buffer) => boolean;
  /**
   * From the staged operations: the kernels the commit removes and adds.
   * Runs /etc/kernel/prerm.d (`DEB_MAINT_PARAMS=remove`) for each removed
   * one, then /etc/kernel/preinst.d (`DEB_MAINT_PARAMS=install`) for each
   * added one, each hook with VER and /boot/vmlinuz-VER, by run-parts' rules
   * (`kernelHooks`). A failing hook stops them and throws CONFLICT: the apply
   * is not committed (Debian aborts the removal or the installation then).
   */
  beforeCommit: (ops: StagedOp[]) => Promise<void>;
  /** What ran (`kernel-prerm`, `kernel-preinst`: only those with a hook), once `beforeCommit` did. */
  runs: TriggerRun[];
}

/**
 * The hooks before the commit of apply `id`, or null when the apply involves
 * no kernel image (`ctx.kernelsBefore` unset: no kernel trigger). Each hook
 * that exits 0 is recorded in STATE/kernel-hooks-ID.json, with the kernels
 * before the apply, before the next one runs: a later run of the same task
 * (after a stop or a kill -9 before the commit, which leaves the old files)
 * does not run it again and reports it so; a hook killed while running runs
 * again (Debian's maintainer scripts are meant to be run again). The file
 * goes with `forgetKernelPreCommit` once the task is reported.
 */
export function kernelPreCommit(
  root: string,
  ctx: TriggerContext,
  o: { stateDir: string; id: string },
): KernelPreCommit | null {
  if (!ctx.kernelsBefore) return null;
  const file = kernelHooksFile(o.stateDir, o.id);
  let saved: { before?: string[]; done?: string[] } = {};
  try {
    saved = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    // A first run.
  }
  const kernelsBefore = Array.isArray(saved.before) ? saved.before : ctx.kernelsBefore;
  const done = new Set(Array.isArray(saved.done) ? saved.done : []);
  const save = () =>
    writeFileAtomic(file, `${JSON.stringify({ before: kernelsBefore, done: [...done].sort() })}\n`, 0o600);
  const runs: TriggerRun[] = [];
  return {
    kernelsBefore,
    watch: (p) => {
      const s = p.toString("utf8");
      return s === "/boot" || KERNEL_IMAGE_PATH.test(s);
    },
    beforeCommit: async (ops) => {
      const now = rootKernels(root);
      const after = kernelsAfter(now, ops);
      const removed = now.filter((v) => !after.has(v)).sort(kernelVersionCmp);
      const added = [...after].filter((v) => !now.includes(v) && kernelName(v)).sort(kernelVersionCmp);
      if (!removed.length && !added.length) return;
      save();
      const steps: [KernelPreHook, string, string[], string][] = [
        ["kernel-prerm", KERNEL_PRERM_DIR, removed, "remove"],
        ["kernel-preinst", KERNEL_PREINST_DIR, added, "install"],
      ];
      for (const [trigger, dir, versions, params] of steps) {
        let ok = true;
        let ran = false;
        const output: string[] = [];
        for (const v of versions) {
          const r = await runHooks(root, dir, v, params, {
            stopOnError: true,
            done,
            onDone: (key) => {
              done.add(key);
              save();
            },
          });
          ran ||= r.ran;
          output.push(...r.output);
          if (!r.ok) {
            ok = false;
            break;
          }
        }
        if (!ran) continue;
        const text = output.join("\n").slice(0, 4096);
        runs.push({ trigger, ok, output: text });
        if (!ok)
          throw new StrataError(
            "CONFLICT",
            `a kernel hook failed before the apply's commit; nothing was committed, the endpoint keeps its files (what the hooks changed stays): ${text}`,
            {
              subject: dir,
              hint: `fix or remove the failing hook in ${dir} on the endpoint, then apply again (to run them by hand: run-parts --report --arg=VER --arg=/boot/vmlinuz-VER ${dir})`,
            },
          );
      }
    },
    runs,
  };
}

/** The task of apply `id` is reported: its record of the hooks before the commit goes. */
export function forgetKernelPreCommit(stateDir: string, id: string): void {
  rmSync(kernelHooksFile(stateDir, id), { force: true });
}

/** A kernel image path: /boot/vmlinuz-VER. */
const KERNEL_IMAGE_PATH = /^\/boot\/vmlinuz-([^/]+)$/;

/** The kernels (/boot/vmlinuz-VER) once the staged operations `ops` are committed, from those of the root now. */
function kernelsAfter(now: readonly string[], ops: readonly StagedOp[]): Set<string> {
  const after = new Set(now);
  for (const op of ops) {
    const p = op.path.toString("utf8");
    if (p === "/boot") {
      // The whole directory goes, or is replaced by the staged one.
      after.clear();
      if (op.op === "put" && op.staged) {
        try {
          for (const n of readdirSync(op.staged.toString("utf8")))
            if (n.startsWith("vmlinuz-") && n.length > 8) after.add(n.slice(8));
        } catch {
          // Not a directory: no kernel.
        }
      }
      continue;
    }
    const v = KERNEL_IMAGE_PATH.exec(p)?.[1];
    if (v === undefined) continue;
    if (op.op === "del") after.delete(v);
    else after.add(v);
  }
  return after;
}

function run(
  cmd: string[],
  env?: NodeJS.ProcessEnv,
): Promise<{ ok: boolean; output: string; printed: string; status: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd[0]!, cmd.slice(1), {
      stdio: ["ignore", "pipe", "pipe"],
      ...(env ? { env: { ...process.env, ...env } } : {}),
    });
    let output = "";
    const add = (b: Buffer) => {
      if (output.length < 4096) output += b.toString("utf8");
    };
    child.stdout.on("data", add);
    child.stderr.on("data", add);
    child.on("error", (e) =>
      resolve({ ok: false, output: e.message, printed: e.message, status: "not started" }),
    );
    child.on("exit", (code, signal) =>
      resolve({
        ok: code === 0,
        output: output.trim() || (code === 0 ? "" : `exited with ${signal ?? code}`),
        printed: output.trim(),
        status: signal ? `killed by ${signal}` : `exit ${code}`,
      }),
    );
  });
}
