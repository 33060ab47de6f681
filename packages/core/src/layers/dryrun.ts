/**
 * The package and account parts of the dry-run report (docs/design/layers.md,
 * "Dry-run report"): what an apply would do to the endpoint's packages, and
 * the problems that block it. Files, disk space and the OS release are
 * checked by the callers, which have the trees.
 */
import type { AccountClash } from "./accounts.js";
import {
  compareVersions,
  type DepAlternative,
  formatDependency,
  isInstalled,
  PackageIndex,
  packageDepends,
  packageKey,
  planPackages,
  selectsPackage,
  stanzaField,
} from "./dpkg.js";
import type { DryRunProblem, PackageStanza, PackageUpdate } from "./types.js";

export interface DryRunPackagesInput {
  /** The endpoint's dpkg status (live root, or its newest snapshot). */
  live: readonly PackageStanza[];
  /** The image's packages (merged manifest). */
  image: readonly PackageStanza[];
  /** Packages the applied image owned (`name` or `name:arch`). */
  previous: readonly string[];
  removedPackages: readonly string[];
  enforceRemove?: boolean;
  /** Absolute paths of the endpoint's `lib*.so.N` files. */
  liveLibs?: readonly string[];
  /** Absolute paths of the image's `lib*.so.N` files. */
  imageLibs?: readonly string[];
}

export interface DryRunPackagesResult {
  added: string[];
  updated: PackageUpdate[];
  removed: string[];
  userInstalled: string[];
  problems: DryRunProblem[];
}

/** A shared library package: its name starts with `lib`, or its section is `libs` (`oldlibs`, `*\/libs`). */
export function isLibraryPackage(p: PackageStanza): boolean {
  if (p.name.startsWith("lib")) return true;
  const section = stanzaField(p.stanza, "Section") ?? "";
  return /(^|\/)(old)?libs$/.test(section);
}

interface Soname {
  /** `dir/libfoo.so` */
  key: string;
  /** `libfoo.so` */
  stem: string;
  /** The version after `.so.`, e.g. `3` or `6.0` or `1.5.4`. */
  version: string;
  major: string;
  path: string;
}

function parseSoname(path: string): Soname | undefined {
  const m = /^(.*\/)(lib[^/]*?\.so)\.(\d+(?:\.\d+)*)$/.exec(path);
  if (!m) return undefined;
  return { key: m[1]! + m[2]!, stem: m[2]!, version: m[3]!, major: m[3]!.split(".")[0]!, path };
}

/**
 * Debian policy 8.1 names a library package after its SONAME: `libfoo.so.3`
 * → `libfoo3`, `libbz2.so.1.0` → `libbz2-1.0` (a hyphen when the name ends
 * in a digit), underscores become hyphens (`libgcc_s.so.1` → `libgcc-s1`).
 * One candidate per prefix of the version (`6`, `6.0`), since a file's name
 * may carry more of it than the SONAME does.
 */
function sonamePackageNames(s: Soname): string[] {
  const base = s.stem.slice(0, -".so".length).toLowerCase().replace(/_/g, "-");
  const parts = s.version.split(".");
  const out: string[] = [];
  for (let i = 1; i <= parts.length; i++) {
    const v = parts.slice(0, i).join(".");
    out.push(/\d$/.test(base) ? `${base}-${v}` : `${base}${v}`);
  }
  return out;
}

/** `libssl3t64` is `libssl3` after a transition: a lowercase suffix starting with a letter. */
const isPackageFor = (pkgName: string, candidates: readonly string[]): boolean =>
  candidates.some(
    (c) => pkgName === c || (pkgName.startsWith(c) && /^[a-z][a-z0-9]*$/.test(pkgName.slice(c.length))),
  );

/**
 * Packages: what the merge (`planPackages`) would do, and the blocking
 * problems:
 *
 * - **downgrade**: an image package older than the endpoint's installed
 *   one. Blocking when the endpoint's package is user-installed (not in
 *   `previous`) or a shared library (`isLibraryPackage`); otherwise listed.
 * - **missing-dependency**: a `Depends`/`Pre-Depends` of an installed image
 *   package that the installed packages after the merge (by name and
 *   version, or `Provides`) do not satisfy; and a dependency of a kept
 *   user-installed package that the endpoint satisfies now and the merge
 *   would break (the image drops or downgrades what it needs).
 * - **soname**: the endpoint has `DIR/libX.so.N`, the image has
 *   `DIR/libX.so.M` (M ≠ N) and not `.so.N` — the image replaces the
 *   library's major version — and a kept user-installed package depends on
 *   the endpoint's package of that SONAME (named by Debian policy, see
 *   `sonamePackageNames`), which the merge does not keep. Libraries no
 *   package is named after (e.g. in /usr/local) are not checked. The
 *   missing dependency this implies is reported once, as the soname.
 */
export function dryRunPackages(input: DryRunPackagesInput): DryRunPackagesResult {
  const plan = planPackages(input.live, input.image, {
    previous: input.previous,
    removedPackages: input.removedPackages,
    enforceRemove: input.enforceRemove ?? false,
  });
  const problems: DryRunProblem[] = [];
  const liveByKey = new Map(input.live.map((p) => [packageKey(p), p]));
  const installedAfter = plan.result.filter(isInstalled);
  const after = new PackageIndex(installedAfter);
  const before = new PackageIndex(input.live.filter(isInstalled));
  const previousOwns = (p: PackageStanza) => input.previous.some((s) => selectsPackage(s, p));

  // Downgrades.
  for (const img of input.image) {
    const live = liveByKey.get(packageKey(img));
    if (!live || !isInstalled(live) || !isInstalled(img)) continue;
    if (compareVersions(img.version, live.version) >= 0) continue;
    const user = !previousOwns(live);
    const lib = isLibraryPackage(live);
    const fix = `capture the layer again with ${img.name} ${live.version} or newer`;
    problems.push({
      kind: "downgrade",
      blocking: user || lib,
      subject: img.name,
      message: user
        ? `${img.name}: the image has ${img.version}, older than ${live.version} that the endpoint's user installed; ${fix}, or remove ${img.name} from the endpoint first`
        : lib
          ? `${img.name} is a shared library: going back from ${live.version} to the image's ${img.version} can break programs built against the newer one; ${fix}`
          : `${img.name} goes back from ${live.version} to the image's ${img.version}`,
    });
  }

  // Kept user-installed packages (installed), and what they depend on.
  const kept = input.live.filter((p) => plan.keptKeys.has(packageKey(p)) && isInstalled(p));
  const keptNames = new Set(kept.map((p) => p.name));
  const depsOf = new Map(kept.map((p) => [p, packageDepends(p)]));

  // Sonames the image replaces.
  const covered = new Set<string>(); // `${user}\0${library package}`
  const liveSonames = (input.liveLibs ?? []).map(parseSoname).filter((s) => s !== undefined);
  const imageMajors = new Map<string, Set<string>>();
  for (const s of (input.imageLibs ?? []).map(parseSoname))
    if (s) imageMajors.set(s.key, (imageMajors.get(s.key) ?? new Set()).add(s.major));
  const seen = new Set<string>();
  const sonameProblems: DryRunProblem[] = [];
  for (const s of [...liveSonames].sort(
    (a, b) => a.path.length - b.path.length || (a.path < b.path ? -1 : 1),
  )) {
    const majors = imageMajors.get(s.key);
    if (!majors || majors.has(s.major) || seen.has(`${s.key}.${s.major}`)) continue;
    seen.add(`${s.key}.${s.major}`);
    const candidates = sonamePackageNames(s);
    const libPkgs = input.live.filter(
      (p) => isInstalled(p) && isPackageFor(p.name, candidates) && !keptNames.has(p.name),
    );
    for (const lib of libPkgs) {
      const users = kept.filter((u) => depsOf.get(u)!.some((g) => g.some((d) => d.name === lib.name)));
      if (users.length === 0) continue;
      for (const u of users) covered.add(`${u.name}\0${lib.name}`);
      const now = [...majors].sort().map((m) => `${s.stem}.${m}`);
      const userNames = users.map((u) => u.name).join(", ");
      sonameProblems.push({
        kind: "soname",
        blocking: true,
        subject: s.path,
        message: `${s.path} (package ${lib.name}) is replaced by ${now.join(", ")} in the image, but ${userNames} (installed on the endpoint, kept) ${users.length > 1 ? "depend" : "depends"} on ${lib.name}; add ${lib.name} to a layer, or upgrade or remove ${userNames} on the endpoint first`,
      });
    }
  }
  problems.push(...sonameProblems);

  // Dependencies.
  const missing = new Set<string>();
  const pushMissing = (p: PackageStanza, group: readonly DepAlternative[], message: string) => {
    const key = `${p.name}\0${formatDependency(group)}`;
    if (missing.has(key)) return;
    missing.add(key);
    problems.push({ kind: "missing-dependency", blocking: true, subject: p.name, message });
  };
  for (const img of input.image) {
    if (!isInstalled(img)) continue;
    for (const group of packageDepends(img))
      if (!after.satisfiesAny(group))
        pushMissing(
          img,
          group,
          `${img.name} (in the image) depends on ${formatDependency(group)}, which neither the image nor the packages kept on the endpoint provide; add it to a layer (install it during the capture) or install it on the endpoint`,
        );
  }
  for (const u of kept)
    for (const group of depsOf.get(u)!) {
      if (group.some((d) => covered.has(`${u.name}\0${d.name}`))) continue;
      if (!before.satisfiesAny(group) || after.satisfiesAny(group)) continue;
      pushMissing(
        u,
        group,
        `${u.name} (installed on the endpoint, kept) depends on ${formatDependency(group)}, which the image removes or replaces with a version that does not satisfy it; add it to a layer, or remove ${u.name} from the endpoint (or apply with --enforce remove)`,
      );
    }

  const order = ["downgrade", "soname", "missing-dependency"];
  problems.sort(
    (a, b) =>
      order.indexOf(a.kind) - order.indexOf(b.kind) ||
      (a.subject < b.subject ? -1 : a.subject > b.subject ? 1 : 0),
  );
  return {
    added: plan.added,
    updated: plan.updated,
    removed: plan.removed,
    userInstalled: plan.userInstalled,
    problems,
  };
}

/** Account id clashes (`mergeAccounts`) as blocking problems. */
export function accountProblems(clashes: readonly AccountClash[]): DryRunProblem[] {
  return clashes.map((c) => {
    const what = c.file === "passwd" ? "user" : "group";
    const id = c.file === "passwd" ? "uid" : "gid";
    return {
      kind: "account-clash",
      blocking: true,
      subject: `${c.file}:${c.name}`,
      message: `${what} ${c.name}: the image adds it with ${id} ${c.id}, which the endpoint already uses for ${what} ${c.holder}; give ${c.holder} another ${id} on the endpoint (and chown its files), or capture the layer again on a reference with a free ${id}`,
    };
  });
}

/**
 * Space an apply keeps free on the root's filesystem beyond what it
 * writes: the journal, directories, the structured files, and room for
 * the system to go on running (logs, apt's lists) while it applies.
 */
export const DISK_RESERVE_BYTES = 64 * 1024 * 1024;
/** Block size assumed when the filesystem's is unknown (the server's dry-run). */
export const DEFAULT_BLOCK_SIZE = 4096;

export interface DiskSpaceInput {
  /** Bytes of the new and changed files (the dry-run's `bytesToWrite`). */
  bytesToWrite: number;
  /** How many files those are: each may take up to one more block than its size. */
  filesToWrite: number;
  /** Bytes available to the agent on the filesystem holding the root (statfs `f_bavail` × `f_bsize`). */
  freeBytes: number;
  /** The filesystem's block size; default DEFAULT_BLOCK_SIZE. */
  blockSize?: number;
  /** The root the space is measured on, for the message. */
  path: string;
}

/**
 * What an apply needs free before it starts: staging writes every new and
 * changed file beside the root before the commit (the old ones stay until
 * the commit's renames), so `bytesToWrite`, each file rounded up by one
 * block, plus DISK_RESERVE_BYTES.
 */
export function diskSpaceNeeded(
  o: Pick<DiskSpaceInput, "bytesToWrite" | "filesToWrite" | "blockSize">,
): number {
  return o.bytesToWrite + o.filesToWrite * (o.blockSize ?? DEFAULT_BLOCK_SIZE) + DISK_RESERVE_BYTES;
}

/** A blocking `disk-space` problem when the apply needs more than is free; null otherwise. */
export function diskSpaceProblem(o: DiskSpaceInput): DryRunProblem | null {
  const needed = diskSpaceNeeded(o);
  if (needed <= o.freeBytes) return null;
  return {
    kind: "disk-space",
    blocking: true,
    subject: o.path,
    message: `not enough disk space: needs ${sizeText(needed)} (${sizeText(o.bytesToWrite)} of files to stage, with a reserve of ${sizeText(needed - o.bytesToWrite)}), ${sizeText(o.freeBytes)} free on the filesystem of ${o.path}; free ${sizeText(needed - o.freeBytes)} or more there, then apply again`,
  };
}

/** Bytes for people: `512 B`, `1.5 MiB`. */
function sizeText(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}
