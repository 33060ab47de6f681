/**
 * Debian's alternatives (update-alternatives(1)) as layer data
 * (docs/design/layers.md, "Alternatives"): the administrative files of
 * /var/lib/dpkg/alternatives parsed into groups, the delta a capture
 * records, and the composition of several layers' deltas.
 *
 * An administrative file (dpkg's update-alternatives.c, `alternative_save`):
 *
 *     MODE                 auto | manual
 *     LINK                 the generic (master) link
 *     SLAVE-NAME           } once per slave
 *     SLAVE-LINK           }
 *     (empty line)
 *     PATH                 } once per alternative
 *     PRIORITY             }
 *     SLAVE-PATH           } once per slave, in the order above; empty: none
 *     (empty line)
 *
 * The current choice is not in the file: it is the target of
 * /etc/alternatives/NAME. Pure: strings in, data out.
 */
import { StrataError } from "../errors.js";
import type { AlternativeChoice, AlternativeSlave, LayerAlternative, LayerAlternatives } from "./types.js";

export const ALTERNATIVES_ADMIN_DIR = "/var/lib/dpkg/alternatives";
export const ALTERNATIVES_LINK_DIR = "/etc/alternatives";

/** One group as its administrative file and its /etc/alternatives link describe it. */
export interface AlternativeGroup {
  name: string;
  mode: "auto" | "manual";
  link: string;
  slaves: AlternativeSlave[];
  choices: AlternativeChoice[];
  /** The target of /etc/alternatives/NAME (null: no link). */
  current: string | null;
}

/** A group name update-alternatives accepts as a file name (no `/`, not `.` or `..`). */
export function isAlternativeName(name: string): boolean {
  return name.length > 0 && !name.includes("/") && name !== "." && name !== ".." && !name.includes("\n");
}

/** Parse the administrative file of group `name`; INVALID_ARGUMENT naming the group when it is not one. */
export function parseAlternativeAdmin(
  name: string,
  text: string,
  current: string | null = null,
): AlternativeGroup {
  const lines = text.split("\n");
  let i = 0;
  const bad = (why: string) =>
    new StrataError("INVALID_ARGUMENT", `alternatives file of ${name} is not valid: ${why}`, {
      subject: `${ALTERNATIVES_ADMIN_DIR}/${name}`,
    });
  const next = (what: string): string => {
    if (i >= lines.length) throw bad(`it ends before ${what}`);
    return lines[i++]!;
  };
  const mode = next("the mode");
  if (mode !== "auto" && mode !== "manual") throw bad(`mode ${JSON.stringify(mode)}`);
  const link = next("the link");
  if (!link.startsWith("/")) throw bad(`link ${JSON.stringify(link)}`);
  const slaves: AlternativeSlave[] = [];
  for (;;) {
    const s = next("the end of the slaves");
    if (s === "") break;
    const l = next(`the link of slave ${s}`);
    if (!l.startsWith("/")) throw bad(`link ${JSON.stringify(l)} of slave ${s}`);
    slaves.push({ name: s, link: l });
  }
  const choices: AlternativeChoice[] = [];
  for (;;) {
    const p = i < lines.length ? lines[i++]! : "";
    if (p === "") break;
    const prio = next(`the priority of ${p}`);
    if (!/^-?\d+$/.test(prio)) throw bad(`priority ${JSON.stringify(prio)} of ${p}`);
    const c: AlternativeChoice = { path: p, priority: Number(prio), slaves: {} };
    for (const s of slaves) {
      const sp = next(`the slave ${s.name} of ${p}`);
      if (sp !== "") c.slaves[s.name] = sp;
    }
    choices.push(c);
  }
  return { name, mode, link, slaves, choices, current };
}

/** The administrative file of `g`, as update-alternatives writes it. */
export function formatAlternativeAdmin(g: Omit<AlternativeGroup, "current" | "name">): string {
  const out = [g.mode, g.link];
  for (const s of g.slaves) out.push(s.name, s.link);
  out.push("");
  for (const c of g.choices) {
    out.push(c.path, String(c.priority));
    for (const s of g.slaves) out.push(c.slaves[s.name] ?? "");
  }
  out.push("", "");
  return out.join("\n");
}

const sameSlaves = (a: AlternativeSlave[], b: AlternativeSlave[]) =>
  a.length === b.length && a.every((s, i) => s.name === b[i]!.name && s.link === b[i]!.link);

const sameChoice = (a: AlternativeChoice, b: AlternativeChoice) => {
  const ka = Object.keys(a.slaves).sort();
  const kb = Object.keys(b.slaves).sort();
  return (
    a.path === b.path &&
    a.priority === b.priority &&
    ka.length === kb.length &&
    ka.every((k, i) => k === kb[i] && a.slaves[k] === b.slaves[k])
  );
};

const byName = <T extends { name: string }>(a: T, b: T) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
const byNamePath = (a: { name: string; path: string }, b: { name: string; path: string }) =>
  byName(a, b) || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

/**
 * What an install did to the alternatives (`pre` → `post`, groups by
 * name): for each group of `post`, the alternatives it added or changed
 * (priority or slaves; every alternative when the group's links changed),
 * and `manual` when the install left the group in manual mode on a choice
 * it did not have before (`update-alternatives --set`, or `--config`);
 * `removed`, the alternatives of `pre` that `post` lacks. A base layer is
 * the delta from nothing.
 */
export function diffAlternatives(
  pre: ReadonlyMap<string, AlternativeGroup>,
  post: ReadonlyMap<string, AlternativeGroup>,
): LayerAlternatives {
  const groups: LayerAlternative[] = [];
  const removed: LayerAlternatives["removed"] = [];
  for (const g of post.values()) {
    const p = pre.get(g.name);
    const relinked = !p || p.link !== g.link || !sameSlaves(p.slaves, g.slaves);
    const choices = g.choices.filter((c) => {
      if (relinked) return true;
      const was = p?.choices.find((x) => x.path === c.path);
      return !was || !sameChoice(was, c);
    });
    const chose =
      g.mode === "manual" &&
      g.current !== null &&
      g.choices.some((c) => c.path === g.current) &&
      (p?.mode !== "manual" || p.current !== g.current);
    if (!choices.length && !chose) continue;
    groups.push({
      name: g.name,
      link: g.link,
      slaves: g.slaves.map((s) => ({ ...s })),
      choices: choices.map((c) => ({ ...c, slaves: { ...c.slaves } })),
      ...(chose ? { manual: g.current! } : {}),
    });
  }
  for (const p of pre.values()) {
    const g = post.get(p.name);
    for (const c of p.choices)
      if (!g?.choices.some((x) => x.path === c.path)) removed.push({ name: p.name, path: c.path });
  }
  return { groups: groups.sort(byName), removed: removed.sort(byNamePath) };
}

/**
 * Layers' alternatives composed in order (an image): a group's links are
 * the last layer's that names it, its alternatives merge by path (later
 * wins), `manual` is the last one given; an alternative a later layer
 * removes leaves the earlier layers' groups, and one a later layer adds is
 * no longer removed.
 */
export function composeAlternatives(
  list: readonly (LayerAlternatives | null | undefined)[],
): LayerAlternatives {
  const groups = new Map<string, LayerAlternative>();
  const removed = new Map<string, { name: string; path: string }>();
  const key = (name: string, p: string) => `${name}\n${p}`;
  for (const a of list) {
    if (!a) continue;
    for (const r of a.removed) {
      removed.set(key(r.name, r.path), { name: r.name, path: r.path });
      const g = groups.get(r.name);
      if (!g) continue;
      g.choices = g.choices.filter((c) => c.path !== r.path);
      if (g.manual === r.path) delete g.manual;
    }
    for (const g of a.groups) {
      const was = groups.get(g.name);
      const choices = new Map((was?.choices ?? []).map((c) => [c.path, c]));
      for (const c of g.choices) {
        choices.set(c.path, { ...c, slaves: { ...c.slaves } });
        removed.delete(key(g.name, c.path));
      }
      const manual = g.manual ?? was?.manual;
      groups.set(g.name, {
        name: g.name,
        link: g.link,
        slaves: g.slaves.map((s) => ({ ...s })),
        choices: [...choices.values()],
        ...(manual !== undefined ? { manual } : {}),
      });
    }
  }
  return {
    groups: [...groups.values()].filter((g) => g.choices.length || g.manual).sort(byName),
    removed: [...removed.values()].sort(byNamePath),
  };
}

/**
 * The generic links of `groups` (master and slave links): update-alternatives
 * makes them on the endpoint, so no layer tree holds them and no apply
 * writes or deletes them.
 */
export function alternativeLinks(
  groups: Iterable<{ link: string; slaves: AlternativeSlave[] }>,
): Set<string> {
  const out = new Set<string>();
  for (const g of groups) {
    out.add(g.link);
    for (const s of g.slaves) out.add(s.link);
  }
  return out;
}
