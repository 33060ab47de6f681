/**
 * The account files (/etc/passwd, group, shadow, gshadow) as lines keyed
 * by name, and their diff and merge for layers (docs/design/layers.md,
 * "Merge rules for structured files"). Lines are kept verbatim: a merge
 * never rewrites an endpoint's ids or password fields.
 */
import type { AccountLines } from "./types.js";

export type AccountFile = keyof AccountLines;
export const ACCOUNT_FILES: readonly AccountFile[] = ["passwd", "group", "shadow", "gshadow"];

/** The lines of an account file, without newlines; empty lines are dropped. */
export function parseAccountLines(text: string): string[] {
  return text.split("\n").filter((l) => l !== "" && l !== "\r");
}

/** An account file's text: one line each, every line ending in "\n" (no lines: ""). */
export function formatAccountFile(lines: readonly string[]): string {
  return lines.map((l) => `${l}\n`).join("");
}

/** The name of an account line (its first field). */
export function accountName(line: string): string {
  const colon = line.indexOf(":");
  return colon < 0 ? line : line.slice(0, colon);
}

const emptyLines = (): AccountLines => ({ passwd: [], group: [], shadow: [], gshadow: [] });

/** What an install added: per file, the lines of `post` whose name `pre` lacks, in `post`'s order. */
export function diffAccounts(pre: AccountLines, post: AccountLines): AccountLines {
  const out = emptyLines();
  for (const f of ACCOUNT_FILES) {
    const names = new Set(pre[f].map(accountName));
    out[f] = post[f].filter((l) => !names.has(accountName(l)));
  }
  return out;
}

/** Numeric field `i` of a line (uid, gid), or undefined (NIS `+` lines, junk). */
function numericField(line: string, i: number): number | undefined {
  const v = line.split(":")[i];
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
}

const splitMembers = (v: string | undefined): string[] =>
  v === undefined || v === "" ? [] : v.split(",").filter((m) => m !== "");

export interface AccountClash {
  file: "passwd" | "group";
  /** The image account that was not added. */
  name: string;
  /** Its uid (passwd) or gid (group). */
  id: number;
  /** The endpoint's account that already has that id. */
  holder: string;
}

export interface MergeAccountsResult {
  files: AccountLines;
  /** Accounts added, as `passwd:NAME` and `group:NAME`, in file order. */
  added: string[];
  clashes: AccountClash[];
}

/**
 * The endpoint's new account files:
 *
 * - passwd, group: every live line kept verbatim; image lines whose name
 *   the endpoint lacks appended in image order — unless their uid (gid) is
 *   already another account's on the endpoint: a **clash**, reported, and
 *   the line is not added;
 * - a group both have: the image's members that are accounts of the
 *   merged passwd and missing from the live member list are appended to it
 *   (members of the image's group that the endpoint does not have as users
 *   are not granted membership: a name created later must not inherit it);
 *   the same members are appended to the group's gshadow member list, so
 *   group and gshadow agree;
 * - shadow, gshadow: live lines kept; the image's line appended for a name
 *   added to passwd (group), or a name of the merged passwd (group) that the
 *   live shadow (gshadow) lacks.
 */
export function mergeAccounts(live: AccountLines, image: AccountLines): MergeAccountsResult {
  const clashes: AccountClash[] = [];
  const added: string[] = [];

  const addIds = (file: "passwd" | "group") => {
    const lines = [...live[file]];
    const names = new Set(lines.map(accountName));
    const byId = new Map<number, string>();
    for (const l of lines) {
      const id = numericField(l, 2);
      if (id !== undefined && !byId.has(id)) byId.set(id, accountName(l));
    }
    const addedNames = new Set<string>();
    for (const l of image[file]) {
      const name = accountName(l);
      if (names.has(name)) continue;
      const id = numericField(l, 2);
      const holder = id === undefined ? undefined : byId.get(id);
      if (id !== undefined && holder !== undefined) {
        clashes.push({ file, name, id, holder });
        continue;
      }
      lines.push(l);
      names.add(name);
      addedNames.add(name);
      if (id !== undefined) byId.set(id, name);
      added.push(`${file}:${name}`);
    }
    return { lines, names, addedNames };
  };

  const passwd = addIds("passwd");
  const group = addIds("group");

  // Union member lists of groups both have (members restricted to merged users).
  const imageGroups = new Map(image.group.map((l) => [accountName(l), l]));
  const newMembers = new Map<string, string[]>();
  group.lines = group.lines.map((l) => {
    const name = accountName(l);
    if (group.addedNames.has(name)) return l;
    const img = imageGroups.get(name);
    if (img === undefined) return l;
    const f = l.split(":");
    if (f.length < 4) return l;
    const have = new Set(splitMembers(f[3]));
    const extra = splitMembers(img.split(":")[3]).filter((m) => !have.has(m) && passwd.names.has(m));
    if (extra.length === 0) return l;
    newMembers.set(name, extra);
    f[3] = [...splitMembers(f[3]), ...extra].join(",");
    return f.join(":");
  });

  const appendSecret = (
    file: "shadow" | "gshadow",
    base: { names: Set<string>; addedNames: Set<string> },
  ) => {
    const lines = [...live[file]];
    const have = new Set(lines.map(accountName));
    for (const l of image[file]) {
      const name = accountName(l);
      if (have.has(name)) continue;
      if (!base.addedNames.has(name) && !base.names.has(name)) continue;
      lines.push(l);
      have.add(name);
    }
    return lines;
  };
  const shadow = appendSecret("shadow", passwd);
  const gshadow = appendSecret("gshadow", group).map((l) => {
    const extra = newMembers.get(accountName(l));
    if (!extra) return l;
    const f = l.split(":");
    if (f.length < 4) return l;
    const have = new Set(splitMembers(f[3]));
    f[3] = [...splitMembers(f[3]), ...extra.filter((m) => !have.has(m))].join(",");
    return f.join(":");
  });

  return { files: { passwd: passwd.lines, group: group.lines, shadow, gshadow }, added, clashes };
}

export interface SystemAccountsOptions {
  /** Debian's FIRST_UID / UID_MIN. Default 1000. */
  uidMin?: number;
  /** Debian's LAST_UID / UID_MAX. Default 60000 (`nobody`, 65534, is a system account). */
  uidMax?: number;
}

/**
 * The system accounts of a reference machine's files, for a base layer:
 * human users (uid in [uidMin, uidMax]) and their private groups (gid in
 * the same range) are the reference machine's own people, not software;
 * they are left out, with their shadow lines, and taken out of the member
 * lists of the groups that stay.
 */
export function systemAccounts(files: AccountLines, opts: SystemAccountsOptions = {}): AccountLines {
  const min = opts.uidMin ?? 1000;
  const max = opts.uidMax ?? 60000;
  const human = (line: string) => {
    const id = numericField(line, 2);
    return id !== undefined && id >= min && id <= max;
  };
  const users = new Set(files.passwd.filter(human).map(accountName));
  const groups = new Set(files.group.filter(human).map(accountName));
  /** group: members are field 3; gshadow: administrators field 2, members field 3. */
  const dropMembers = (fields: number[]) => (l: string) => {
    const f = l.split(":");
    if (f.length < 4) return l;
    for (const i of fields)
      f[i] = splitMembers(f[i])
        .filter((m) => !users.has(m))
        .join(",");
    return f.join(":");
  };
  return {
    passwd: files.passwd.filter((l) => !users.has(accountName(l))),
    group: files.group.filter((l) => !groups.has(accountName(l))).map(dropMembers([3])),
    shadow: files.shadow.filter((l) => !users.has(accountName(l))),
    gshadow: files.gshadow.filter((l) => !groups.has(accountName(l))).map(dropMembers([2, 3])),
  };
}
