/**
 * dpkg's database as data: version comparison (deb-version(7)), the status
 * file's stanzas, `Depends:` relations, and the diff and merge of status
 * files that layer capture and apply use (docs/design/layers.md).
 *
 * Pure: strings in, data out. Package selectors in `previous` and
 * `removedPackages` lists are `name` (every architecture of that package) or
 * `name:arch` (that architecture only).
 */
import { StrataError } from "../errors.js";
import type { PackageStanza, PackageUpdate } from "./types.js";

// ---------------------------------------------------------------------------
// Versions

export interface DebianVersion {
  epoch: number;
  upstream: string;
  /** "" when the version has no `-revision` (which compares equal to "0"). */
  revision: string;
}

/**
 * Split a version into epoch, upstream version and revision as dpkg does:
 * the epoch is the number before the first `:`, the revision follows the
 * last `-`. Lenient (no validation): a malformed version still compares.
 */
export function parseVersion(version: string): DebianVersion {
  let v = version.trim();
  let epoch = 0;
  const colon = v.indexOf(":");
  if (colon >= 0) {
    const e = v.slice(0, colon);
    epoch = /^\d+$/.test(e) ? Number(e) : 0;
    v = v.slice(colon + 1);
  }
  const dash = v.lastIndexOf("-");
  if (dash >= 0) return { epoch, upstream: v.slice(0, dash), revision: v.slice(dash + 1) };
  return { epoch, upstream: v, revision: "" };
}

const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isAlpha = (c: number): boolean => (c >= 65 && c <= 90) || (c >= 97 && c <= 122);

/** dpkg's `order()`: `~` first, then end of string and digits, letters, then everything else. */
function order(c: number): number {
  if (Number.isNaN(c) || isDigit(c)) return 0;
  if (isAlpha(c)) return c;
  if (c === 126 /* ~ */) return -1;
  return c + 256;
}

/** dpkg's `verrevcmp()`: compares one upstream version or revision. */
function verrevcmp(a: string, b: string): number {
  let i = 0;
  let j = 0;
  const at = (s: string, k: number): number => (k < s.length ? s.charCodeAt(k) : Number.NaN);
  while (i < a.length || j < b.length) {
    let firstDiff = 0;
    while ((i < a.length && !isDigit(at(a, i))) || (j < b.length && !isDigit(at(b, j)))) {
      const ac = order(at(a, i));
      const bc = order(at(b, j));
      if (ac !== bc) return ac - bc;
      i++;
      j++;
    }
    while (at(a, i) === 48) i++;
    while (at(b, j) === 48) j++;
    while (isDigit(at(a, i)) && isDigit(at(b, j))) {
      if (!firstDiff) firstDiff = at(a, i) - at(b, j);
      i++;
      j++;
    }
    if (isDigit(at(a, i))) return 1;
    if (isDigit(at(b, j))) return -1;
    if (firstDiff) return firstDiff;
  }
  return 0;
}

/**
 * Compare two Debian versions exactly as dpkg does (deb-version(7)):
 * -1, 0 or 1. Epochs compare numerically; upstream version and revision
 * compare by alternating non-digit parts (`~` before everything, even the
 * end; letters before other characters) and digit runs (numerically, of any
 * length). A missing revision equals `0`.
 */
export function compareVersions(a: string, b: string): number {
  const va = parseVersion(a);
  const vb = parseVersion(b);
  if (va.epoch !== vb.epoch) return va.epoch < vb.epoch ? -1 : 1;
  const r = verrevcmp(va.upstream, vb.upstream) || verrevcmp(va.revision, vb.revision);
  return Math.sign(r);
}

export type VersionRelation = "<<" | "<=" | "=" | ">=" | ">>";

/** `version relation constraint`, e.g. `satisfiesRelation("2.36-9", ">=", "2.34")`. */
export function satisfiesRelation(version: string, relation: VersionRelation, constraint: string): boolean {
  const c = compareVersions(version, constraint);
  switch (relation) {
    case "<<":
      return c < 0;
    case "<=":
      return c <= 0;
    case "=":
      return c === 0;
    case ">=":
      return c >= 0;
    case ">>":
      return c > 0;
  }
}

// ---------------------------------------------------------------------------
// Stanzas

/**
 * Split a dpkg status (or `available`, or control) file into stanzas. A
 * stanza ends at an empty line; continuation lines start with a space or a
 * tab. Each stanza's text is kept byte for byte, without its line
 * terminator and without the blank line that ends it. `arch` is the
 * `Architecture` field ("" when absent), `version` the `Version` field ("").
 * Throws INVALID_ARGUMENT for a stanza without `Package` or a line that is
 * neither a field nor a continuation: a merge must never drop a stanza it
 * could not read.
 */
export function parseStatus(text: string): PackageStanza[] {
  const out: PackageStanza[] = [];
  const lines = text.split("\n");
  // A final "\n" leaves one empty element: not a line.
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  let cur: string[] = [];
  let startLine = 0;
  const flush = () => {
    if (cur.length === 0) return;
    out.push(toPackage(cur.join("\n"), startLine));
    cur = [];
  };
  lines.forEach((line, i) => {
    if (line === "" || line === "\r") {
      flush();
      return;
    }
    if (cur.length === 0) {
      if (/^[ \t]/.test(line)) {
        if (line.trim() === "") return; // whitespace between stanzas
        throw new StrataError(
          "INVALID_ARGUMENT",
          `dpkg status: line ${i + 1}: continuation line outside a stanza`,
          {
            subject: `line ${i + 1}`,
            hint: "the file is not a dpkg status file, or it is damaged; check it with `dpkg --audit`",
          },
        );
      }
      startLine = i + 1;
    }
    if (!/^[ \t]/.test(line) && !/^[^:\s][^:]*:/.test(line))
      throw new StrataError(
        "INVALID_ARGUMENT",
        `dpkg status: line ${i + 1}: not a field: ${line.slice(0, 80)}`,
        {
          subject: `line ${i + 1}`,
          hint: "the file is not a dpkg status file, or it is damaged; check it with `dpkg --audit`",
        },
      );
    cur.push(line);
  });
  flush();
  return out;
}

function toPackage(stanza: string, line: number): PackageStanza {
  const name = stanzaField(stanza, "Package");
  if (!name)
    throw new StrataError("INVALID_ARGUMENT", `dpkg status: stanza at line ${line} has no Package field`, {
      subject: `line ${line}`,
      hint: "the file is not a dpkg status file, or it is damaged; check it with `dpkg --audit`",
    });
  return {
    name,
    arch: stanzaField(stanza, "Architecture") ?? "",
    version: stanzaField(stanza, "Version") ?? "",
    stanza,
  };
}

/**
 * The value of `field` (case-insensitive) in one stanza, or null. As dpkg
 * keeps it: the first line's value trimmed, then each continuation line
 * as is (with its leading space), joined by "\n"; an empty first line (as
 * in `Conffiles:`) is left out; trailing whitespace is trimmed.
 */
export function stanzaField(stanza: string, field: string): string | null {
  const want = field.toLowerCase();
  const lines = stanza.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^[ \t]/.test(line)) continue;
    const colon = line.indexOf(":");
    if (colon < 0 || line.slice(0, colon).trim().toLowerCase() !== want) continue;
    const parts: string[] = [];
    const first = line.slice(colon + 1).trim();
    if (first !== "") parts.push(first);
    for (let k = i + 1; k < lines.length && /^[ \t]/.test(lines[k]!); k++)
      parts.push(lines[k]!.replace(/\r$/, ""));
    return parts.join("\n").replace(/\s+$/, "");
  }
  return null;
}

/** `Status: <want> <flag> <state>`: the package's files are on disk and configured. */
export function isInstalled(p: PackageStanza): boolean {
  const status = stanzaField(p.stanza, "Status");
  if (!status) return false;
  const words = status.split(/\s+/);
  return words.length === 3 && words[2] === "installed";
}

/** dpkg's order for the status file: by package name, then architecture (bytewise). */
export function comparePackages(a: PackageStanza, b: PackageStanza): number {
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  if (a.arch !== b.arch) return a.arch < b.arch ? -1 : 1;
  return 0;
}

/**
 * A status file as dpkg writes it: the stanzas sorted by name then
 * architecture, each followed by an empty line. No stanzas: "".
 */
export function serializeStatus(pkgs: readonly PackageStanza[]): string {
  return [...pkgs]
    .sort(comparePackages)
    .map((p) => `${p.stanza.replace(/\n+$/, "")}\n\n`)
    .join("");
}

/** The key a status entry is identified by: `name:arch` (`name:` without Architecture). */
export const packageKey = (p: { name: string; arch: string }): string => `${p.name}:${p.arch}`;

/** A `previous` / `removedPackages` selector (`name` or `name:arch`) names this package. */
export function selectsPackage(selector: string, p: { name: string; arch: string }): boolean {
  const colon = selector.indexOf(":");
  if (colon < 0) return selector === p.name;
  return selector.slice(0, colon) === p.name && selector.slice(colon + 1) === p.arch;
}

function selectorSet(selectors: readonly string[]): (p: { name: string; arch: string }) => boolean {
  const names = new Set<string>();
  const keys = new Set<string>();
  for (const s of selectors) (s.includes(":") ? keys : names).add(s);
  return (p) => names.has(p.name) || keys.has(packageKey(p));
}

// ---------------------------------------------------------------------------
// Depends

export interface DepAlternative {
  name: string;
  /** `:any`, `:native` or an architecture, when the relation names one. */
  arch?: string;
  relation?: VersionRelation;
  version?: string;
}

/**
 * A `Depends:`-style field: `,` separates requirements, `|` their
 * alternatives. Version relations `<<`, `<=`, `=`, `>=`, `>>` (the obsolete
 * `<` and `>` mean `<=` and `>=`); `[arch]` restrictions and `<profile>`
 * build profiles are ignored. Empty requirements are skipped.
 */
export function parseDepends(value: string): DepAlternative[][] {
  const out: DepAlternative[][] = [];
  for (const group of value.split(",")) {
    if (group.trim() === "") continue;
    const alts: DepAlternative[] = [];
    for (const alt of group.split("|")) {
      // `name[:arch] [(op version)] [[arch…]] [<profile>…]`: what follows the relation is ignored.
      const text = alt.trim();
      if (text === "") continue;
      const m = /^([^\s(:]+)(?::([^\s(]+))?\s*(?:\(\s*(<<|<=|>=|>>|=|<|>)\s*([^\s)]+)\s*\))?/.exec(text);
      if (!m) continue;
      const d: DepAlternative = { name: m[1]! };
      if (m[2]) d.arch = m[2];
      if (m[3]) {
        d.relation = m[3] === "<" ? "<=" : m[3] === ">" ? ">=" : (m[3] as VersionRelation);
        d.version = m[4]!;
      }
      alts.push(d);
    }
    if (alts.length) out.push(alts);
  }
  return out;
}

/** `Depends` and `Pre-Depends` of a package, parsed. */
export function packageDepends(p: PackageStanza): DepAlternative[][] {
  const pre = stanzaField(p.stanza, "Pre-Depends");
  const dep = stanzaField(p.stanza, "Depends");
  return [...(pre ? parseDepends(pre) : []), ...(dep ? parseDepends(dep) : [])];
}

/** Whether a set of installed packages satisfies one alternative (by name, or by `Provides`). */
export class PackageIndex {
  private readonly byName = new Map<string, PackageStanza[]>();
  private readonly provides = new Map<string, { version: string | undefined }[]>();
  constructor(pkgs: Iterable<PackageStanza>) {
    for (const p of pkgs) {
      const list = this.byName.get(p.name) ?? [];
      list.push(p);
      this.byName.set(p.name, list);
      const prov = stanzaField(p.stanza, "Provides");
      if (!prov) continue;
      for (const group of parseDepends(prov))
        for (const v of group) {
          const l = this.provides.get(v.name) ?? [];
          l.push({ version: v.relation === "=" ? v.version : undefined });
          this.provides.set(v.name, l);
        }
    }
  }
  has(name: string): boolean {
    return this.byName.has(name);
  }
  get(name: string): PackageStanza[] {
    return this.byName.get(name) ?? [];
  }
  /**
   * A real package of that name and a matching version, or a provider: an
   * unversioned `Provides` satisfies only unversioned relations, a
   * `Provides: x (= V)` relations V satisfies (as dpkg does). Architecture
   * qualifiers are not checked.
   */
  satisfies(d: DepAlternative): boolean {
    const ok = (version: string | undefined) =>
      d.relation === undefined ||
      (version !== undefined && satisfiesRelation(version, d.relation, d.version!));
    for (const p of this.get(d.name)) if (ok(p.version)) return true;
    for (const pr of this.provides.get(d.name) ?? []) if (ok(pr.version)) return true;
    return false;
  }
  satisfiesAny(group: readonly DepAlternative[]): boolean {
    return group.some((d) => this.satisfies(d));
  }
}

/** `a | b (>= 1)` as written in a control file. */
export function formatDependency(group: readonly DepAlternative[]): string {
  return group
    .map((d) => `${d.name}${d.arch ? `:${d.arch}` : ""}${d.relation ? ` (${d.relation} ${d.version})` : ""}`)
    .join(" | ");
}

// ---------------------------------------------------------------------------
// Diff and merge

/**
 * What an install changed in dpkg's status: stanzas added or changed
 * (stanza text differs; taken from `postText`), and packages gone. A
 * package gone in every architecture is named `name`; when another
 * architecture of it stays, `name:arch`.
 */
export function diffStatus(
  preText: string,
  postText: string,
): { packages: PackageStanza[]; removedPackages: string[] } {
  const pre = parseStatus(preText);
  const post = parseStatus(postText);
  const preByKey = new Map(pre.map((p) => [packageKey(p), p]));
  const postKeys = new Set(post.map(packageKey));
  const postNames = new Set(post.map((p) => p.name));
  const packages = post.filter((p) => preByKey.get(packageKey(p))?.stanza !== p.stanza).sort(comparePackages);
  const removed = new Set<string>();
  for (const p of pre)
    if (!postKeys.has(packageKey(p))) removed.add(postNames.has(p.name) ? packageKey(p) : p.name);
  return { packages, removedPackages: [...removed].sort() };
}

export interface PackagePlanOptions {
  /** Packages the applied image owned (`name` or `name:arch`). */
  previous: readonly string[];
  /** Packages the image's layers removed. */
  removedPackages?: readonly string[];
  /** `--enforce remove`: user-installed packages are dropped too. */
  enforceRemove?: boolean;
}

export interface PackagePlan {
  /** The status after the merge, sorted. */
  result: PackageStanza[];
  /** Installed in the image, not installed on the endpoint. */
  added: string[];
  /** Installed in both, the versions differ. */
  updated: PackageUpdate[];
  /** Installed on the endpoint, gone (or not installed) after the merge. */
  removed: string[];
  /** Installed on the endpoint, not in the image, kept. */
  userInstalled: string[];
  /** Keys (`packageKey`) of live packages kept as user-installed (installed or not). */
  keptKeys: Set<string>;
}

/**
 * The package side of the merge rules (layers.md "Merge rules"): an image
 * package takes the image's stanza; a live package not in the image is
 * dropped when `removedPackages` or `previous` names it, or with
 * `enforceRemove`; every other one is kept as it is. Reports name a
 * package `name`, or `name:arch` when the endpoint or the image has it in
 * several architectures.
 */
export function planPackages(
  live: readonly PackageStanza[],
  image: readonly PackageStanza[],
  opts: PackagePlanOptions,
): PackagePlan {
  const previous = selectorSet(opts.previous);
  const removedSel = selectorSet(opts.removedPackages ?? []);
  const imageByKey = new Map(image.map((p) => [packageKey(p), p]));
  const liveByKey = new Map(live.map((p) => [packageKey(p), p]));
  const archCount = new Map<string, Set<string>>();
  for (const p of [...live, ...image]) {
    const s = archCount.get(p.name) ?? new Set<string>();
    s.add(p.arch);
    archCount.set(p.name, s);
  }
  const label = (p: PackageStanza) =>
    (archCount.get(p.name)?.size ?? 0) > 1 ? `${p.name}:${p.arch}` : p.name;

  const result: PackageStanza[] = [];
  const added: string[] = [];
  const updated: PackageUpdate[] = [];
  const removed: string[] = [];
  const userInstalled: string[] = [];
  const keptKeys = new Set<string>();
  for (const p of live) {
    const img = imageByKey.get(packageKey(p));
    if (img) {
      const was = isInstalled(p);
      const now = isInstalled(img);
      if (was && now && compareVersions(p.version, img.version) !== 0)
        updated.push({ name: label(p), from: p.version, to: img.version });
      else if (was && !now) removed.push(label(p));
      continue;
    }
    const drop = removedSel(p) || previous(p) || opts.enforceRemove === true;
    if (drop) {
      if (isInstalled(p)) removed.push(label(p));
      continue;
    }
    result.push(p);
    keptKeys.add(packageKey(p));
    if (isInstalled(p)) userInstalled.push(label(p));
  }
  for (const img of image) {
    result.push(img);
    const l = liveByKey.get(packageKey(img));
    if (isInstalled(img) && !(l && isInstalled(l))) added.push(label(img));
  }
  result.sort(comparePackages);
  const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return {
    result,
    added: added.sort(byName),
    updated: updated.sort((a, b) => byName(a.name, b.name)),
    removed: removed.sort(byName),
    userInstalled: userInstalled.sort(byName),
    keptKeys,
  };
}

export interface MergeStatusResult {
  /** The merged status file, as dpkg writes it. */
  text: string;
  added: string[];
  updated: PackageUpdate[];
  removed: string[];
  userInstalled: string[];
}

/** The endpoint's new dpkg status: `planPackages` over the live status text, serialized. */
export function mergeStatus(
  liveText: string,
  image: readonly PackageStanza[],
  opts: PackagePlanOptions,
): MergeStatusResult {
  const plan = planPackages(parseStatus(liveText), image, opts);
  return {
    text: serializeStatus(plan.result),
    added: plan.added,
    updated: plan.updated,
    removed: plan.removed,
    userInstalled: plan.userInstalled,
  };
}
