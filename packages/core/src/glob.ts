/**
 * Glob patterns for excludes and policy rules. `*` matches within one path
 * segment, `**` across segments, `?` one character, `[abc]` a class. A
 * pattern without '/' matches the last segment (a name anywhere); a pattern
 * with '/' matches the whole absolute path, or a prefix of it ending at a
 * segment boundary (so excluding a directory excludes its contents).
 */
export interface GlobOptions {
  /**
   * Match strings that are not paths, as fnmatch(3) without FNM_PATHNAME:
   * `*` and `?` match `/` too (DMI strings, modaliases, hostnames).
   */
  text?: boolean;
  ignoreCase?: boolean;
}

export function globToRegExp(pattern: string, opts: GlobOptions = {}): RegExp {
  const any = opts.text ? "." : "[^/]";
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "*") {
      if (pattern[i + 1] === "*") {
        re += ".*";
        i++;
        if (!opts.text && pattern[i + 1] === "/") i++;
      } else re += `${any}*`;
    } else if (c === "?") re += any;
    else if (c === "[") {
      const end = pattern.indexOf("]", i + 1);
      if (end < 0) re += "\\[";
      else {
        let cls = pattern.slice(i + 1, end).replace(/\\/g, "\\\\");
        if (cls.startsWith("!")) cls = `^${cls.slice(1)}`;
        re += `[${cls}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`, opts.ignoreCase ? "si" : "s");
}

export class GlobSet {
  private readonly byName: RegExp[] = [];
  private readonly byPath: RegExp[] = [];
  constructor(patterns: readonly string[]) {
    for (const p of patterns) {
      const trimmed = p.length > 1 ? p.replace(/\/+$/, "") : p;
      if (trimmed.includes("/")) this.byPath.push(globToRegExp(trimmed));
      else this.byName.push(globToRegExp(trimmed));
    }
  }
  get empty(): boolean {
    return this.byName.length === 0 && this.byPath.length === 0;
  }
  /** `path` is absolute, '/'-separated; `name` its last segment. */
  matches(path: string, name: string): boolean {
    for (const r of this.byName) if (r.test(name)) return true;
    for (const r of this.byPath) if (r.test(path)) return true;
    return false;
  }
}
