/**
 * Upload policies: what an agent protects, and in which area it lies.
 *
 * A policy sorts every path of an endpoint into one of three classes:
 *
 * - `excluded`: never uploaded (factory rules, or the unprotected area);
 * - `user`: the user area — user data and profiles, which layers never touch;
 * - `machine`: everything else that is protected.
 *
 * **Rules** are a directory plus an optional glob (`{ dir, pattern }`):
 *
 * - `dir` is absolute, or starts with a macro (`%anyuserhome%/Downloads`).
 *   Its segments may hold single-segment wildcards (`/home/*`), never `**`.
 * - no `pattern`: the rule covers `dir` itself and everything below it;
 * - a `pattern` without `/` is a name filter: it matches an entry of any
 *   depth below `dir` whose name matches (`{ dir: "/var/log", pattern:
 *   "*.gz" }` covers /var/log/apt/history.log.1.gz), like a Mirage filter;
 * - a `pattern` with `/` is anchored at `dir` (`*\/Downloads` is a direct
 *   child's Downloads), `**` crosses segments;
 * - whatever a rule matches, it also covers that entry's contents. So
 *   `/tmp/**` covers everything in /tmp but not /tmp itself.
 *
 * The string form `/var/log/*.gz` is split at the first segment holding a
 * wildcard: `{ dir: "/var/log", pattern: "*.gz" }`; with no wildcard the
 * whole string is the `dir`. Exports always use the object form, because
 * `{ dir: "/a", pattern: "b" }` (a name anywhere below /a) and `/a/b` differ.
 *
 * **Precedence** (`classify`), first hit wins:
 *
 * 1. a factory rule matches → `excluded`. Nothing overrides it.
 * 2. an unprotected rule matches and no unprotected exception matches →
 *    `excluded`.
 * 3. a user-area rule matches and no user-area exception matches → `user`.
 * 4. otherwise → `machine`.
 *
 * An exception only undoes a match of its own list: an unprotected exception
 * never rescues a factory-excluded path, and a user-area exception turns a
 * user path into a machine path, never into an excluded one.
 *
 * **Paths** are absolute paths as seen inside the endpoint's root
 * ('/'-separated, no `.`/`..`). Byte paths (Uint8Array) are decoded as UTF-8;
 * bytes that are not UTF-8 become U+FFFD, which only wildcards match (rules
 * are JSON strings, so they cannot name such bytes literally).
 *
 * Pure: no file system, no clock. The caller reads /etc/passwd and
 * /proc/swaps and passes what `parsePasswd` / `parseProcSwaps` return.
 */
import { StrataError } from "./errors.js";
import { globToRegExp } from "./glob.js";

export interface Rule {
  /** Absolute directory, or one starting with a macro. */
  dir: string;
  /** Optional glob relative to `dir`; see the module comment. */
  pattern?: string;
}

/** A rule as written by a user: an object or the string form. */
export type RuleInput = Rule | string;

/**
 * Snapshot retention counts, in `applyRetention`'s (restic `forget`)
 * semantics: for each of the last N hours/days/weeks/months that has
 * snapshots, keep the newest of that period. Compatible with
 * `RetentionPolicy`.
 */
export interface RetentionCounts {
  hourly: number;
  daily: number;
  weekly: number;
  monthly: number;
}

export interface UploadPolicy {
  /** Assigned by the server; "" in a policy not yet stored. */
  id: string;
  name: string;
  /** Revision, bumped by the server on every edit; agents refetch on change. */
  version: number;
  /** Always `FACTORY_RULES`. Shown for reference; edits and imports cannot change it. */
  readonly factoryRules: readonly Rule[];
  unprotected: Rule[];
  unprotectedExceptions: Rule[];
  userArea: Rule[];
  userAreaExceptions: Rule[];
  /** Minutes between uploads. Default 60. */
  intervalMinutes: number;
  retention: RetentionCounts;
  /** Agent upload cap in KiB/s; 0 = unlimited. */
  bandwidthLimitKBps: number;
}

export type PathClass = "excluded" | "user" | "machine";
export type RuleList =
  | "factory"
  | "unprotected"
  | "unprotectedExceptions"
  | "userArea"
  | "userAreaExceptions";

/**
 * Macros, expanded when a policy is compiled. A macro may only start `dir`.
 *
 * - `%anyuserhome%`: every user home. That is each home the caller passes
 *   (from `parsePasswd`), plus `/home/*` and `/root` always, so users that
 *   /etc/passwd does not list (LDAP, sssd) are covered too.
 * - `%agentstate%`: the agent's state directory (credential, file cache).
 * - `%swapfile%`: each swap file the caller passes (from `parseProcSwaps`),
 *   plus `/swapfile` and `/swap.img` (Debian/Ubuntu installers' names).
 */
export const POLICY_MACROS = ["%anyuserhome%", "%agentstate%", "%swapfile%"] as const;

/**
 * Factory rules: excluded whatever the policy says.
 *
 * - Kernel and runtime file systems (/proc, /sys, /dev, /run) and scratch
 *   space (/tmp, /var/tmp, /var/cache): their **contents** are excluded, the
 *   directories themselves are kept, so a restored system has its mount
 *   points with the right owner and mode (/tmp is 1777).
 * - System swap files only. Vim's `*.swp` are user data and stay protected.
 * - The agent's state directory, whole: restoring another machine's (or an
 *   old) credential and file cache onto an endpoint would be wrong.
 * - Every user's `~/.cache` contents (XDG cache: regenerable by definition).
 */
export const FACTORY_RULES: readonly Rule[] = Object.freeze(
  [
    { dir: "/proc", pattern: "**" },
    { dir: "/sys", pattern: "**" },
    { dir: "/dev", pattern: "**" },
    { dir: "/run", pattern: "**" },
    { dir: "/tmp", pattern: "**" },
    { dir: "/var/tmp", pattern: "**" },
    { dir: "/var/cache", pattern: "**" },
    { dir: "%swapfile%" },
    { dir: "%agentstate%" },
    { dir: "%anyuserhome%/.cache", pattern: "**" },
  ].map((r) => Object.freeze(r)),
);

/**
 * Retention defaults: every hour of the last day, every day of the last two
 * weeks, every week of the last two months, every month of the last year.
 * At the default 60-minute interval that is at most 24 + 14 + 8 + 12 = 58
 * snapshots per CVD (fewer: periods overlap), and a file deleted by mistake
 * can be found for a year.
 */
export const DEFAULT_RETENTION: Readonly<RetentionCounts> = Object.freeze({
  hourly: 24,
  daily: 14,
  weekly: 8,
  monthly: 12,
});

export const DEFAULT_INTERVAL_MINUTES = 60;

/** Default user area: user homes under /home, and root's home. */
export const DEFAULT_USER_AREA: readonly Rule[] = Object.freeze([
  Object.freeze({ dir: "/home", pattern: "*" }),
  Object.freeze({ dir: "/root" }),
]);

/**
 * Default unprotected area (removable, unlike factory rules): things that
 * are waste on a restore — trash, crash dumps, package lists `apt update`
 * fetches again.
 */
export const DEFAULT_UNPROTECTED: readonly Rule[] = Object.freeze([
  Object.freeze({ dir: "%anyuserhome%/.local/share/Trash" }),
  Object.freeze({ dir: "/var/crash", pattern: "**" }),
  Object.freeze({ dir: "/var/lib/systemd/coredump", pattern: "**" }),
  Object.freeze({ dir: "/var/lib/apt/lists", pattern: "**" }),
]);

export const POLICY_LIMITS = {
  intervalMinutes: { min: 1, max: 10080 },
  retentionMax: 10000,
  bandwidthLimitKBpsMax: 10_000_000,
  rulesPerList: 1000,
  dirLength: 4096,
  patternLength: 1024,
  nameLength: 128,
  idLength: 128,
} as const;

const cloneRules = (rules: readonly Rule[]): Rule[] =>
  rules.map((r) => (r.pattern === undefined ? { dir: r.dir } : { dir: r.dir, pattern: r.pattern }));

export function defaultPolicy(id: string, name: string): UploadPolicy {
  return {
    id,
    name,
    version: 1,
    factoryRules: FACTORY_RULES,
    unprotected: cloneRules(DEFAULT_UNPROTECTED),
    unprotectedExceptions: [],
    userArea: cloneRules(DEFAULT_USER_AREA),
    userAreaExceptions: [],
    intervalMinutes: DEFAULT_INTERVAL_MINUTES,
    retention: { ...DEFAULT_RETENTION },
    bandwidthLimitKBps: 0,
  };
}

// ---------------------------------------------------------------------------
// Rule syntax

const WILDCARD = /[*?[]/;

/** The string form: split at the first segment that holds a wildcard. */
export function parseRule(text: string): Rule {
  const segs = text.split("/");
  const i = segs.findIndex((s) => WILDCARD.test(s));
  if (i < 0) return { dir: normalizeDir(text) };
  const dir = segs.slice(0, i).join("/") || "/";
  return { dir: normalizeDir(dir), pattern: segs.slice(i).join("/") };
}

/** Human form of a rule, for previews and logs (not a serialization). */
export function formatRule(rule: Rule): string {
  if (rule.pattern === undefined) return rule.dir;
  return `${rule.dir === "/" ? "" : rule.dir}/${rule.pattern}`;
}

function normalizeDir(dir: string): string {
  return dir.length > 1 ? dir.replace(/\/+$/, "") : dir;
}

/** Why a glob is invalid, or undefined. Stricter than `globToRegExp`, which is lenient. */
export function checkGlob(pattern: string): string | undefined {
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c !== "[") continue;
    const end = pattern.indexOf("]", i + 1);
    if (end < 0) return "unbalanced [";
    const cls = pattern.slice(i + 1, end);
    if (cls === "" || cls === "!" || cls === "^") return "empty character class []";
    if (cls.includes("/")) return "a character class cannot match /";
    i = end;
  }
  try {
    globToRegExp(pattern);
  } catch (e) {
    return `invalid pattern: ${(e as Error).message}`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Validation

export interface PolicyError {
  /** Path to the offending field, e.g. `unprotected[2].pattern`. */
  path: string;
  message: string;
}

export interface PolicyValidation {
  /** Present only when `errors` is empty. */
  policy: UploadPolicy | undefined;
  errors: PolicyError[];
}

const POLICY_KEYS = new Set([
  "id",
  "name",
  "version",
  "factoryRules",
  "unprotected",
  "unprotectedExceptions",
  "userArea",
  "userAreaExceptions",
  "intervalMinutes",
  "retention",
  "bandwidthLimitKBps",
]);
const RULE_LISTS = ["unprotected", "unprotectedExceptions", "userArea", "userAreaExceptions"] as const;
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what we reject
const CONTROL = /[\u0000-\u001f\u007f]/;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** Why `dir` is not a valid rule directory, or undefined. */
function checkDir(dir: string): string | undefined {
  if (dir.length === 0) return "empty directory";
  if (dir.length > POLICY_LIMITS.dirLength) return `longer than ${POLICY_LIMITS.dirLength} characters`;
  if (dir.includes("\0")) return "contains NUL";
  let rest = dir;
  if (dir.startsWith("%")) {
    const macro = POLICY_MACROS.find((m) => dir === m || dir.startsWith(`${m}/`));
    if (!macro) {
      const name = /^%[^%/]*%?/.exec(dir)?.[0] ?? dir;
      return `unknown macro ${name} (known: ${POLICY_MACROS.join(", ")})`;
    }
    rest = dir.slice(macro.length);
  } else if (!dir.startsWith("/")) {
    return `must be absolute or start with a macro: ${dir}`;
  }
  const inner = /%[A-Za-z]+%/.exec(rest);
  if (inner) return `a macro may only start the directory: ${inner[0]}`;
  if (rest === "/" || rest === "") return undefined;
  const segs = rest.replace(/\/+$/, "").split("/").slice(1);
  for (const s of segs) {
    if (s === "") return "empty path segment (//)";
    if (s === "." || s === "..") return `'${s}' segment is not allowed`;
    if (s.includes("**")) return "** is only allowed in the pattern";
    const why = checkGlob(s);
    if (why) return why;
  }
  return undefined;
}

/** Why `pattern` is not a valid rule pattern, or undefined. */
function checkPattern(pattern: string): string | undefined {
  if (pattern.length === 0) return "empty pattern (leave it out to cover the whole directory)";
  if (pattern.length > POLICY_LIMITS.patternLength)
    return `longer than ${POLICY_LIMITS.patternLength} characters`;
  if (pattern.includes("\0")) return "contains NUL";
  if (pattern.startsWith("/")) return "must be relative to dir (no leading /)";
  const macro = /%[A-Za-z]+%/.exec(pattern);
  if (macro) return `macros belong in dir, not in the pattern: ${macro[0]}`;
  for (const s of pattern.split("/")) {
    if (s === "") return "empty path segment (//)";
    if (s === "." || s === "..") return `'${s}' segment is not allowed`;
  }
  return checkGlob(pattern);
}

/** One rule (object or string form), normalized, or undefined after pushing its errors. */
function validateRule(item: unknown, here: string, errors: PolicyError[]): Rule | undefined {
  if (typeof item === "string") {
    if (item.length === 0) {
      errors.push({ path: here, message: "empty rule" });
      return undefined;
    }
    const rule = parseRule(item);
    const why = checkDir(rule.dir) ?? (rule.pattern === undefined ? undefined : checkPattern(rule.pattern));
    if (why) errors.push({ path: here, message: why });
    return why ? undefined : rule;
  }
  if (!isObject(item)) {
    errors.push({ path: here, message: "must be a rule object {dir, pattern?} or a string" });
    return undefined;
  }
  const before = errors.length;
  for (const k of Object.keys(item))
    if (k !== "dir" && k !== "pattern") errors.push({ path: `${here}.${k}`, message: "unknown field" });
  const { dir, pattern } = item;
  if (typeof dir !== "string") errors.push({ path: `${here}.dir`, message: "must be a string" });
  else {
    const why = checkDir(dir);
    if (why) errors.push({ path: `${here}.dir`, message: why });
  }
  if (pattern !== undefined) {
    const why = typeof pattern === "string" ? checkPattern(pattern) : "must be a string";
    if (why) errors.push({ path: `${here}.pattern`, message: why });
  }
  if (errors.length > before || typeof dir !== "string") return undefined;
  return pattern === undefined
    ? { dir: normalizeDir(dir) }
    : { dir: normalizeDir(dir), pattern: pattern as string };
}

function validateRules(value: unknown, at: string, errors: PolicyError[]): Rule[] {
  if (!Array.isArray(value)) {
    errors.push({ path: at, message: "must be an array of rules" });
    return [];
  }
  if (value.length > POLICY_LIMITS.rulesPerList)
    errors.push({ path: at, message: `at most ${POLICY_LIMITS.rulesPerList} rules` });
  const out: Rule[] = [];
  value.forEach((item, i) => {
    const rule = validateRule(item, `${at}[${i}]`, errors);
    if (rule) out.push(rule);
  });
  return out;
}

function validateInt(
  value: unknown,
  at: string,
  min: number,
  max: number,
  fallback: number,
  errors: PolicyError[],
): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    errors.push({ path: at, message: "must be an integer" });
    return fallback;
  }
  if (value < min || value > max) {
    errors.push({
      path: at,
      message: value < 0 ? `must not be negative (${value})` : `must be in ${min}..${max}`,
    });
    return fallback;
  }
  return value;
}

function validateText(value: unknown, at: string, max: number, errors: PolicyError[]): string {
  if (typeof value !== "string") {
    errors.push({ path: at, message: "must be a string" });
    return "";
  }
  if (value.length > max) errors.push({ path: at, message: `longer than ${max} characters` });
  if (CONTROL.test(value)) errors.push({ path: at, message: "contains control characters" });
  return value;
}

/**
 * Validate untrusted JSON as a policy, reporting every error at once.
 * Missing fields take their defaults (`defaultPolicy`); `name` is required;
 * `id` may be missing (a policy not yet stored). `factoryRules` in the input
 * is ignored: they are not the user's to change, and an export made by an
 * older version must still import after the factory list changes.
 */
export function validatePolicy(json: unknown): PolicyValidation {
  const errors: PolicyError[] = [];
  if (!isObject(json))
    return { policy: undefined, errors: [{ path: "", message: "a policy must be a JSON object" }] };
  for (const k of Object.keys(json))
    if (!POLICY_KEYS.has(k)) errors.push({ path: k, message: "unknown field" });
  const d = defaultPolicy("", "");
  const id = json.id === undefined ? "" : validateText(json.id, "id", POLICY_LIMITS.idLength, errors);
  let name = "";
  if (json.name === undefined) errors.push({ path: "name", message: "required" });
  else {
    name = validateText(json.name, "name", POLICY_LIMITS.nameLength, errors);
    if (typeof json.name === "string" && name.trim() === "")
      errors.push({ path: "name", message: "must not be empty" });
  }
  const version = validateInt(json.version, "version", 1, Number.MAX_SAFE_INTEGER, 1, errors);
  const lists = {} as Record<(typeof RULE_LISTS)[number], Rule[]>;
  for (const key of RULE_LISTS)
    lists[key] = json[key] === undefined ? d[key] : validateRules(json[key], key, errors);
  const intervalMinutes = validateInt(
    json.intervalMinutes,
    "intervalMinutes",
    POLICY_LIMITS.intervalMinutes.min,
    POLICY_LIMITS.intervalMinutes.max,
    DEFAULT_INTERVAL_MINUTES,
    errors,
  );
  const retention = { ...DEFAULT_RETENTION };
  if (json.retention !== undefined) {
    if (!isObject(json.retention)) errors.push({ path: "retention", message: "must be an object" });
    else {
      const r = json.retention;
      for (const k of Object.keys(r))
        if (!(k in DEFAULT_RETENTION)) errors.push({ path: `retention.${k}`, message: "unknown field" });
      for (const k of Object.keys(DEFAULT_RETENTION) as (keyof RetentionCounts)[])
        retention[k] = validateInt(
          r[k],
          `retention.${k}`,
          0,
          POLICY_LIMITS.retentionMax,
          DEFAULT_RETENTION[k],
          errors,
        );
      if (Object.values(retention).every((v) => v === 0))
        errors.push({
          path: "retention",
          message: "keeps no snapshot at all; set at least one count above 0",
        });
    }
  }
  const bandwidthLimitKBps = validateInt(
    json.bandwidthLimitKBps,
    "bandwidthLimitKBps",
    0,
    POLICY_LIMITS.bandwidthLimitKBpsMax,
    0,
    errors,
  );
  if (errors.length > 0) return { policy: undefined, errors };
  return {
    policy: {
      id,
      name,
      version,
      factoryRules: FACTORY_RULES,
      ...lists,
      intervalMinutes,
      retention,
      bandwidthLimitKBps,
    },
    errors,
  };
}

export function formatPolicyErrors(errors: readonly PolicyError[]): string {
  return errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message)).join("\n");
}

/** `validatePolicy`, throwing one INVALID_ARGUMENT that lists every error. */
export function parsePolicy(json: unknown): UploadPolicy {
  const { policy, errors } = validatePolicy(json);
  if (policy) return policy;
  throw new StrataError("INVALID_ARGUMENT", `invalid upload policy:\n${formatPolicyErrors(errors)}`, {
    hint: "fix the fields listed and try again; nothing was changed",
  });
}

// ---------------------------------------------------------------------------
// Export / import

export const POLICY_FORMAT = "strata-upload-policy";
export const POLICY_SCHEMA_VERSION = 1;

/** JSON document `{ format, schemaVersion, policy }`, rules in object form. */
export function exportPolicy(policy: UploadPolicy): string {
  const body = {
    format: POLICY_FORMAT,
    schemaVersion: POLICY_SCHEMA_VERSION,
    policy: {
      id: policy.id,
      name: policy.name,
      version: policy.version,
      factoryRules: cloneRules(FACTORY_RULES),
      unprotected: cloneRules(policy.unprotected),
      unprotectedExceptions: cloneRules(policy.unprotectedExceptions),
      userArea: cloneRules(policy.userArea),
      userAreaExceptions: cloneRules(policy.userAreaExceptions),
      intervalMinutes: policy.intervalMinutes,
      retention: { ...policy.retention },
      bandwidthLimitKBps: policy.bandwidthLimitKBps,
    },
  };
  return `${JSON.stringify(body, null, 2)}\n`;
}

/** Parse an exported document. Errors name fields as `policy.unprotected[0].dir`. */
export function importPolicy(text: string): PolicyValidation {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return { policy: undefined, errors: [{ path: "", message: `not JSON: ${(e as Error).message}` }] };
  }
  if (!isObject(doc)) return { policy: undefined, errors: [{ path: "", message: "must be a JSON object" }] };
  const errors: PolicyError[] = [];
  if (doc.format !== POLICY_FORMAT) errors.push({ path: "format", message: `must be "${POLICY_FORMAT}"` });
  if (doc.schemaVersion !== POLICY_SCHEMA_VERSION)
    errors.push({
      path: "schemaVersion",
      message:
        typeof doc.schemaVersion === "number" && doc.schemaVersion > POLICY_SCHEMA_VERSION
          ? `${doc.schemaVersion} is newer than this program understands (${POLICY_SCHEMA_VERSION})`
          : `must be ${POLICY_SCHEMA_VERSION}`,
    });
  for (const k of Object.keys(doc))
    if (k !== "format" && k !== "schemaVersion" && k !== "policy")
      errors.push({ path: k, message: "unknown field" });
  const inner = validatePolicy(doc.policy);
  for (const e of inner.errors)
    errors.push({ path: e.path ? `policy.${e.path}` : "policy", message: e.message });
  return errors.length ? { policy: undefined, errors } : inner;
}

// ---------------------------------------------------------------------------
// /etc/passwd and /proc/swaps

export interface PasswdOptions {
  /** Lowest uid of a human user (Debian's UID_MIN). Default 1000. uid 0 is always included. */
  uidMin?: number;
  /** Highest uid of a human user (Debian's UID_MAX). Default 60000; `nobody` (65534) is above it. */
  uidMax?: number;
}

/**
 * The home directories of root and of human users in /etc/passwd text,
 * sorted and de-duplicated. System accounts (uid below `uidMin`) are left
 * out: their "homes" (/var/www, /var/lib/postgresql) are machine data.
 * Homes that are not absolute, are `/`, or are /nonexistent are left out;
 * comment, NIS (`+`/`-`) and malformed lines are skipped.
 */
export function parsePasswd(text: string, opts: PasswdOptions = {}): string[] {
  const uidMin = opts.uidMin ?? 1000;
  const uidMax = opts.uidMax ?? 60000;
  const homes = new Set<string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#") || line.startsWith("+") || line.startsWith("-")) continue;
    const f = line.replace(/\r$/, "").split(":");
    if (f.length < 7) continue;
    const uid = Number(f[2]);
    if (!/^\d+$/.test(f[2]!) || !Number.isSafeInteger(uid)) continue;
    if (uid !== 0 && (uid < uidMin || uid > uidMax)) continue;
    const home = normalizeDir(f[5]!);
    if (!home.startsWith("/") || home === "/" || home === "/nonexistent") continue;
    if (home.split("/").some((s) => s === "." || s === "..") || home.includes("//")) continue;
    homes.add(home);
  }
  return [...homes].sort();
}

/**
 * Swap files (not partitions) in /proc/swaps text. Paths with spaces appear
 * as `\040` there and are decoded.
 */
export function parseProcSwaps(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 2 || f[1] !== "file") continue;
    out.push(f[0]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Compilation and matching

export interface PolicyContext {
  /** User homes, as `parsePasswd` returns them. */
  homes: readonly string[];
  /** The agent's state directory, absolute. */
  agentStateDir: string;
  /** Swap files, as `parseProcSwaps` returns them. */
  swapFiles?: readonly string[];
}

export interface RuleMatch {
  list: RuleList;
  /** The rule as written in the policy (before macro expansion). */
  rule: Rule;
}

export interface Explanation {
  class: PathClass;
  /** The rule that decided the class (none for a plain machine path). */
  by?: RuleMatch;
  /** The exception that undid a match of `excepted.list`'s base list. */
  excepted?: RuleMatch;
}

export interface CompiledPolicy {
  readonly policy: UploadPolicy;
  classify(path: string | Uint8Array): PathClass;
  /** `classify` plus the rules that decided it, for previews and support. */
  explain(path: string | Uint8Array): Explanation;
  /**
   * False when every entry strictly below `dir` is excluded, so a walker
   * may skip reading it. `dir` itself may still be protected (/tmp is kept
   * as an empty directory): the walker records it from its own `lstat`.
   * True is conservative: the walker descends and classifies each entry.
   */
  shouldDescend(dir: string | Uint8Array): boolean;
}

/** What macros expand to in a rule list compiled on its own (`compileRules`). */
export interface RuleContext {
  /** User homes (`parsePasswd`); `/home/*` and `/root` are always added. */
  homes?: readonly string[];
  /** The agent's state directory; without it `%agentstate%` rules match nothing. */
  agentStateDir?: string;
  swapFiles?: readonly string[];
}

type Seg = string | RegExp;
type PatternKind = "none" | "name" | "path";

interface CompiledRule {
  source: Rule;
  segs: Seg[];
  kind: PatternKind;
  re: RegExp | undefined;
  /** Name pattern of only `*`: matches every entry below the directory. */
  universal: boolean;
}

const decoder = new TextDecoder("utf-8");
const toPath = (p: string | Uint8Array): string => (typeof p === "string" ? p : decoder.decode(p));
const splitPath = (p: string): string[] => p.split("/").filter((s) => s !== "");

function expandDir(dir: string, ctx: RuleContext): string[] {
  const withRest = (bases: readonly string[], macro: string): string[] =>
    [...new Set(bases)].map((b) => normalizeDir(b) + dir.slice(macro.length));
  if (dir.startsWith("%anyuserhome%")) {
    const homes = (ctx.homes ?? []).filter((h) => !/^\/home\/[^/]+$/.test(normalizeDir(h)));
    return withRest(["/home/*", "/root", ...homes], "%anyuserhome%");
  }
  if (dir.startsWith("%agentstate%"))
    return ctx.agentStateDir === undefined ? [] : withRest([ctx.agentStateDir], "%agentstate%");
  if (dir.startsWith("%swapfile%"))
    return withRest(["/swapfile", "/swap.img", ...(ctx.swapFiles ?? [])], "%swapfile%");
  return [dir];
}

function compileRule(source: Rule, ctx: RuleContext): CompiledRule[] {
  const out: CompiledRule[] = [];
  for (const dir of expandDir(source.dir, ctx)) {
    const segs: Seg[] = splitPath(dir).map((s) => (WILDCARD.test(s) ? globToRegExp(s) : s));
    const p = source.pattern;
    const kind: PatternKind = p === undefined ? "none" : p.includes("/") ? "path" : "name";
    out.push({
      source,
      segs,
      kind,
      re: p === undefined ? undefined : globToRegExp(p),
      universal: kind === "name" && /^\*+$/.test(p!),
    });
  }
  return out;
}

const segMatches = (seg: Seg, s: string): boolean => (typeof seg === "string" ? seg === s : seg.test(s));

/** `path`'s first segments match the rule's directory. */
function underDir(r: CompiledRule, path: readonly string[]): boolean {
  if (path.length < r.segs.length) return false;
  for (let i = 0; i < r.segs.length; i++) if (!segMatches(r.segs[i]!, path[i]!)) return false;
  return true;
}

function ruleMatches(r: CompiledRule, path: readonly string[]): boolean {
  if (!underDir(r, path)) return false;
  const k = r.segs.length;
  if (r.kind === "none") return true;
  if (r.kind === "name") {
    for (let i = k; i < path.length; i++) if (r.re!.test(path[i]!)) return true;
    return false;
  }
  let rel = "";
  for (let i = k; i < path.length; i++) {
    rel = i === k ? path[i]! : `${rel}/${path[i]}`;
    if (r.re!.test(rel)) return true;
  }
  return false;
}

/** Every entry strictly below `dir` matches `r`. */
function coversBelow(r: CompiledRule, dir: readonly string[]): boolean {
  if (ruleMatches(r, dir)) return true;
  return r.universal && underDir(r, dir);
}

/** Some entry at or below `dir` might match `r` (conservative: true when unsure). */
function mayMatchAtOrBelow(r: CompiledRule, dir: readonly string[]): boolean {
  const n = Math.min(dir.length, r.segs.length);
  for (let i = 0; i < n; i++) if (!segMatches(r.segs[i]!, dir[i]!)) return false;
  return true;
}

/** Rules bucketed by their first directory segment, so most rules are never tried. */
class RuleIndex {
  private readonly byFirst = new Map<string, CompiledRule[]>();
  private readonly other: CompiledRule[] = [];
  constructor(rules: readonly CompiledRule[]) {
    for (const r of rules) {
      const first = r.segs[0];
      if (typeof first === "string") {
        const list = this.byFirst.get(first) ?? [];
        list.push(r);
        this.byFirst.set(first, list);
      } else this.other.push(r);
    }
  }
  candidates(path: readonly string[]): CompiledRule[][] {
    const first = path[0];
    const b = first === undefined ? undefined : this.byFirst.get(first);
    return b ? [b, this.other] : [this.other];
  }
  /** Every compiled rule: for the ancestor-side test of `mayMatchAtOrBelow` (dir "/" has no first segment). */
  all(dir: readonly string[]): CompiledRule[][] {
    return dir.length === 0 ? [...this.byFirst.values(), this.other] : this.candidates(dir);
  }
  find(path: readonly string[]): CompiledRule | undefined {
    for (const list of this.candidates(path)) for (const r of list) if (ruleMatches(r, path)) return r;
    return undefined;
  }
  some(dir: readonly string[], test: (r: CompiledRule, dir: readonly string[]) => boolean): boolean {
    for (const list of this.all(dir)) for (const r of list) if (test(r, dir)) return true;
    return false;
  }
}

/**
 * Compile a policy against one endpoint's facts. Factory rules always come
 * from `FACTORY_RULES`, never from `policy.factoryRules`. Recompile when
 * /etc/passwd changes (a new user's home that is not under /home).
 * Throws INVALID_ARGUMENT when a rule does not validate.
 */
export function compilePolicy(policy: UploadPolicy, ctx: PolicyContext): CompiledPolicy {
  if (!ctx.agentStateDir.startsWith("/") || splitPath(ctx.agentStateDir).length === 0)
    throw new StrataError(
      "INVALID_ARGUMENT",
      `agent state directory must be absolute and not /: ${ctx.agentStateDir}`,
    );
  // Rules built in code never went through validatePolicy: check them, so a
  // bad glob fails here, loudly, and not as a wrong answer during a walk.
  const errors: PolicyError[] = [];
  const lists = {} as Record<(typeof RULE_LISTS)[number], Rule[]>;
  for (const key of RULE_LISTS) lists[key] = validateRules(policy[key], key, errors);
  if (errors.length)
    throw new StrataError("INVALID_ARGUMENT", `invalid upload policy:\n${formatPolicyErrors(errors)}`, {
      subject: policy.id || policy.name,
    });
  const checked: UploadPolicy = { ...policy, factoryRules: FACTORY_RULES, ...lists };
  const build = (rules: readonly Rule[]) => new RuleIndex(rules.flatMap((r) => compileRule(r, ctx)));
  const factory = build(FACTORY_RULES);
  const unprotected = build(checked.unprotected);
  const unprotectedExceptions = build(checked.unprotectedExceptions);
  const userArea = build(checked.userArea);
  const userAreaExceptions = build(checked.userAreaExceptions);

  const explainSegs = (segs: string[]): Explanation => {
    const f = factory.find(segs);
    if (f) return { class: "excluded", by: { list: "factory", rule: f.source } };
    const u = unprotected.find(segs);
    let excepted: RuleMatch | undefined;
    if (u) {
      const ex = unprotectedExceptions.find(segs);
      if (!ex) return { class: "excluded", by: { list: "unprotected", rule: u.source } };
      excepted = { list: "unprotectedExceptions", rule: ex.source };
    }
    const a = userArea.find(segs);
    if (a) {
      const ex = userAreaExceptions.find(segs);
      if (!ex)
        return { class: "user", by: { list: "userArea", rule: a.source }, ...(excepted ? { excepted } : {}) };
      return { class: "machine", excepted: { list: "userAreaExceptions", rule: ex.source } };
    }
    return excepted ? { class: "machine", excepted } : { class: "machine" };
  };

  return {
    policy: checked,
    explain: (path) => explainSegs(splitPath(toPath(path))),
    classify(path) {
      const segs = splitPath(toPath(path));
      if (factory.find(segs)) return "excluded";
      if (unprotected.find(segs) && !unprotectedExceptions.find(segs)) return "excluded";
      if (userArea.find(segs) && !userAreaExceptions.find(segs)) return "user";
      return "machine";
    },
    shouldDescend(dir) {
      const segs = splitPath(toPath(dir));
      if (factory.some(segs, coversBelow)) return false;
      if (unprotected.some(segs, coversBelow) && !unprotectedExceptions.some(segs, mayMatchAtOrBelow))
        return false;
      return true;
    },
  };
}

/** One list of rules, compiled: the same matching as a policy's lists. */
export interface CompiledRules {
  readonly rules: readonly Rule[];
  /** The path is covered by a rule (the rule's match itself, or below it). */
  matches(path: string | Uint8Array): boolean;
  /** The first rule (as written) covering the path. */
  find(path: string | Uint8Array): Rule | undefined;
  /** Every entry strictly below `dir` is covered (a walker may skip it whole). */
  coversBelow(dir: string | Uint8Array): boolean;
  /** Some entry at or below `dir` may be covered (conservative: true when unsure). */
  mayMatchBelow(dir: string | Uint8Array): boolean;
}

/**
 * Compile one rule list (do-not-override, base-capture, capture-noise rules)
 * with the rule syntax and matching of upload policies. Rules are validated
 * first: a bad one throws INVALID_ARGUMENT listing every error, `at` naming
 * the list in the message.
 */
export function compileRules(
  rules: readonly RuleInput[],
  ctx: RuleContext = {},
  at = "rules",
): CompiledRules {
  const errors: PolicyError[] = [];
  const checked = validateRules(rules, at, errors);
  if (errors.length)
    throw new StrataError("INVALID_ARGUMENT", `invalid rules:\n${formatPolicyErrors(errors)}`, {
      subject: at,
      hint: "rules are {dir, pattern?} objects or strings like /var/log/**",
    });
  const index = new RuleIndex(checked.flatMap((r) => compileRule(r, ctx)));
  const segsOf = (p: string | Uint8Array) => splitPath(toPath(p));
  return {
    rules: checked,
    matches: (path) => index.find(segsOf(path)) !== undefined,
    find: (path) => index.find(segsOf(path))?.source,
    coversBelow: (dir) => index.some(segsOf(dir), coversBelow),
    mayMatchBelow: (dir) => index.some(segsOf(dir), mayMatchAtOrBelow),
  };
}

/** Validate an untrusted rule list (object or string forms); errors name `at[i]`. */
export function validateRuleList(value: unknown, at = "rules"): { rules: Rule[]; errors: PolicyError[] } {
  const errors: PolicyError[] = [];
  const rules = validateRules(value, at, errors);
  return { rules, errors };
}

// ---------------------------------------------------------------------------
// Preview

export interface PreviewEntry {
  path: string | Uint8Array;
  type: "file" | "dir" | "symlink" | "other";
  /** Logical size in bytes (0 for non-files). */
  size: number;
}

export interface PreviewCounts {
  files: number;
  dirs: number;
  /** Symlinks, fifos, sockets, devices. */
  other: number;
  bytes: number;
}

export interface PreviewSample {
  path: string;
  type: PreviewEntry["type"];
  size: number;
  /** The deciding rule, in string form, prefixed by its list (`factory: /proc/**`). */
  reason?: string;
}

export interface PolicyPreview {
  counts: Record<PathClass, PreviewCounts>;
  /** At most `sampleSize` per class. Excluded samples are topmost excluded paths only. */
  samples: Record<PathClass, PreviewSample[]>;
  /** Directories a walker would not enter (`shouldDescend` false). */
  prunedDirs: number;
}

export interface PreviewOptions {
  /** Samples kept per class. Default 20. */
  sampleSize?: number;
}

/**
 * Accumulates a preview one entry at a time, in bounded memory (counters
 * plus the samples). `previewPolicy` and `previewPolicyAsync` drive it.
 */
export class PolicyPreviewBuilder {
  private readonly counts: Record<PathClass, PreviewCounts>;
  private readonly samples: Record<PathClass, PreviewSample[]> = { excluded: [], user: [], machine: [] };
  private pruned = 0;
  private readonly sampleSize: number;

  constructor(
    private readonly compiled: CompiledPolicy,
    opts: PreviewOptions = {},
  ) {
    this.sampleSize = opts.sampleSize ?? 20;
    const zero = (): PreviewCounts => ({ files: 0, dirs: 0, other: 0, bytes: 0 });
    this.counts = { excluded: zero(), user: zero(), machine: zero() };
  }

  add(entry: PreviewEntry): void {
    const path = toPath(entry.path);
    const ex = this.compiled.explain(path);
    const c = this.counts[ex.class];
    if (entry.type === "file") {
      c.files++;
      c.bytes += entry.size;
    } else if (entry.type === "dir") {
      c.dirs++;
      if (!this.compiled.shouldDescend(path)) this.pruned++;
    } else c.other++;
    const samples = this.samples[ex.class];
    if (samples.length >= this.sampleSize) return;
    // Show /proc, not /proc/1, /proc/2, …: skip paths below an excluded sample.
    if (ex.class === "excluded" && samples.some((s) => path.startsWith(`${s.path}/`))) return;
    const reason = ex.by
      ? `${ex.by.list}: ${formatRule(ex.by.rule)}`
      : ex.excepted
        ? `${ex.excepted.list}: ${formatRule(ex.excepted.rule)}`
        : undefined;
    samples.push({ path, type: entry.type, size: entry.size, ...(reason ? { reason } : {}) });
  }

  result(): PolicyPreview {
    const copy = (c: PreviewCounts) => ({ ...c });
    return {
      counts: {
        excluded: copy(this.counts.excluded),
        user: copy(this.counts.user),
        machine: copy(this.counts.machine),
      },
      samples: {
        excluded: [...this.samples.excluded],
        user: [...this.samples.user],
        machine: [...this.samples.machine],
      },
      prunedDirs: this.pruned,
    };
  }
}

/** Counts and bytes per class, and samples, over a listing (e.g. a CVD snapshot's). */
export function previewPolicy(
  compiled: CompiledPolicy,
  entries: Iterable<PreviewEntry>,
  opts: PreviewOptions = {},
): PolicyPreview {
  const b = new PolicyPreviewBuilder(compiled, opts);
  for (const e of entries) b.add(e);
  return b.result();
}

export async function previewPolicyAsync(
  compiled: CompiledPolicy,
  entries: AsyncIterable<PreviewEntry> | Iterable<PreviewEntry>,
  opts: PreviewOptions = {},
): Promise<PolicyPreview> {
  const b = new PolicyPreviewBuilder(compiled, opts);
  for await (const e of entries) b.add(e);
  return b.result();
}
