import {
  type AlternativeGroup,
  alternativeLinks,
  composeAlternatives,
  diffAlternatives,
  formatAlternativeAdmin,
  parseAlternativeAdmin,
} from "@strata/core";
import { describe, expect, it } from "vitest";

/** /var/lib/dpkg/alternatives/awk of a Debian 12 minbase, byte for byte. */
const AWK =
  "auto\n/usr/bin/awk\nawk.1.gz\n/usr/share/man/man1/awk.1.gz\nnawk\n/usr/bin/nawk\nnawk.1.gz\n/usr/share/man/man1/nawk.1.gz\n\n" +
  "/usr/bin/mawk\n5\n/usr/share/man/man1/mawk.1.gz\n/usr/bin/mawk\n/usr/share/man/man1/mawk.1.gz\n\n";

const group = (name: string, text: string, current: string | null = null) =>
  parseAlternativeAdmin(name, text, current);
const map = (...gs: AlternativeGroup[]) => new Map(gs.map((g) => [g.name, g]));

describe("alternatives administrative files", () => {
  it("parses dpkg's format and writes it back byte for byte", () => {
    const g = group("awk", AWK, "/usr/bin/mawk");
    expect(g).toEqual({
      name: "awk",
      mode: "auto",
      link: "/usr/bin/awk",
      slaves: [
        { name: "awk.1.gz", link: "/usr/share/man/man1/awk.1.gz" },
        { name: "nawk", link: "/usr/bin/nawk" },
        { name: "nawk.1.gz", link: "/usr/share/man/man1/nawk.1.gz" },
      ],
      choices: [
        {
          path: "/usr/bin/mawk",
          priority: 5,
          slaves: {
            "awk.1.gz": "/usr/share/man/man1/mawk.1.gz",
            nawk: "/usr/bin/mawk",
            "nawk.1.gz": "/usr/share/man/man1/mawk.1.gz",
          },
        },
      ],
      current: "/usr/bin/mawk",
    });
    expect(formatAlternativeAdmin(g)).toBe(AWK);
    // An alternative without some slave: an empty line in its place.
    const pager =
      "manual\n/usr/bin/pager\npager.1.gz\n/usr/share/man/man1/pager.1.gz\n\n/bin/more\n50\n\n/usr/bin/less\n77\n/usr/share/man/man1/less.1.gz\n\n";
    const p = group("pager", pager);
    expect(p.choices).toEqual([
      { path: "/bin/more", priority: 50, slaves: {} },
      { path: "/usr/bin/less", priority: 77, slaves: { "pager.1.gz": "/usr/share/man/man1/less.1.gz" } },
    ]);
    expect(formatAlternativeAdmin(p)).toBe(pager);
  });

  it("refuses what is not an administrative file, naming the group", () => {
    expect(() => group("x", "")).toThrow(/alternatives file of x/);
    expect(() => group("x", "sometimes\n/usr/bin/x\n\n")).toThrow(/mode/);
    expect(() => group("x", "auto\nrelative\n\n")).toThrow(/link/);
    expect(() => group("x", "auto\n/usr/bin/x\n\n/usr/bin/y\nhigh\n\n")).toThrow(/priority/);
    expect(() => group("x", "auto\n/usr/bin/x\ns\n/usr/bin/s\n\n/usr/bin/y\n5")).toThrow(/slave s/);
  });

  it("lists every generic link (master and slaves)", () => {
    expect([...alternativeLinks([group("awk", AWK)])]).toEqual([
      "/usr/bin/awk",
      "/usr/share/man/man1/awk.1.gz",
      "/usr/bin/nawk",
      "/usr/share/man/man1/nawk.1.gz",
    ]);
  });
});

describe("diffAlternatives", () => {
  const editorPre = "auto\n/usr/bin/editor\n\n/bin/nano\n40\n/usr/bin/vim.tiny\n15\n\n";
  const editorPost =
    "auto\n/usr/bin/editor\n\n/bin/nano\n40\n/usr/bin/vim.tiny\n15\n/usr/bin/vim.basic\n30\n\n";

  it("records the alternatives an install added or changed, and what it removed", () => {
    const pre = map(group("editor", editorPre, "/bin/nano"), group("awk", AWK, "/usr/bin/mawk"));
    const post = map(
      group("editor", editorPost, "/bin/nano"),
      group("awk", AWK.replace("\n5\n", "\n10\n"), "/usr/bin/mawk"),
      group(
        "strata-demo",
        "auto\n/usr/bin/strata-demo\n\n/usr/bin/strata-demo-a\n50\n\n",
        "/usr/bin/strata-demo-a",
      ),
    );
    const d = diffAlternatives(pre, post);
    expect(d.groups.map((g) => [g.name, g.choices.map((c) => `${c.path}=${c.priority}`), g.manual])).toEqual([
      ["awk", ["/usr/bin/mawk=10"], undefined],
      ["editor", ["/usr/bin/vim.basic=30"], undefined],
      ["strata-demo", ["/usr/bin/strata-demo-a=50"], undefined],
    ]);
    expect(d.removed).toEqual([]);
    // Removing vim again, and the group of awk whole.
    const back = diffAlternatives(post, map(group("editor", editorPre, "/bin/nano")));
    expect(back.groups).toEqual([]);
    expect(back.removed).toEqual([
      { name: "awk", path: "/usr/bin/mawk" },
      { name: "editor", path: "/usr/bin/vim.basic" },
      { name: "strata-demo", path: "/usr/bin/strata-demo-a" },
    ]);
    // Nothing changed: nothing recorded.
    expect(diffAlternatives(pre, pre)).toEqual({ groups: [], removed: [] });
  });

  it("records a choice made by hand during the capture, not one made before it", () => {
    const manual = editorPre.replace("auto", "manual");
    const pre = map(group("editor", editorPre, "/bin/nano"));
    const chose = diffAlternatives(pre, map(group("editor", manual, "/usr/bin/vim.tiny")));
    expect(chose.groups).toEqual([
      { name: "editor", link: "/usr/bin/editor", slaves: [], choices: [], manual: "/usr/bin/vim.tiny" },
    ]);
    // Already manual on the same choice before: not the install's doing.
    const same = map(group("editor", manual, "/usr/bin/vim.tiny"));
    expect(diffAlternatives(same, same).groups).toEqual([]);
    // A base (from nothing) records manual groups as they are.
    expect(diffAlternatives(new Map(), same).groups[0]!.manual).toBe("/usr/bin/vim.tiny");
    // A manual mode whose link names no alternative of the group records no choice.
    expect(diffAlternatives(pre, map(group("editor", manual, "/elsewhere"))).groups).toEqual([]);
  });

  it("records every alternative of a group whose links changed", () => {
    const pre = map(group("editor", editorPre));
    const relinked = editorPre
      .replace("/usr/bin/editor\n", "/usr/bin/editor\neditor.1.gz\n/usr/share/man/man1/editor.1.gz\n")
      .replace("/bin/nano\n40\n", "/bin/nano\n40\n\n")
      .replace("/usr/bin/vim.tiny\n15\n", "/usr/bin/vim.tiny\n15\n\n");
    const d = diffAlternatives(pre, map(group("editor", relinked)));
    expect(d.groups[0]!.slaves).toEqual([{ name: "editor.1.gz", link: "/usr/share/man/man1/editor.1.gz" }]);
    expect(d.groups[0]!.choices.map((c) => c.path)).toEqual(["/bin/nano", "/usr/bin/vim.tiny"]);
  });
});

describe("composeAlternatives", () => {
  const demo = (path: string, priority: number, manual?: string) => ({
    name: "demo",
    link: "/usr/bin/demo",
    slaves: [],
    choices: [{ path, priority, slaves: {} }],
    ...(manual ? { manual } : {}),
  });

  it("merges groups by name and alternatives by path; later layers win", () => {
    const c = composeAlternatives([
      { groups: [demo("/usr/bin/demo-a", 50, "/usr/bin/demo-a")], removed: [] },
      null,
      { groups: [demo("/usr/bin/demo-a", 60)], removed: [] },
      { groups: [demo("/usr/bin/demo-b", 10, "/usr/bin/demo-b")], removed: [] },
    ]);
    expect(c.groups).toEqual([
      {
        name: "demo",
        link: "/usr/bin/demo",
        slaves: [],
        choices: [
          { path: "/usr/bin/demo-a", priority: 60, slaves: {} },
          { path: "/usr/bin/demo-b", priority: 10, slaves: {} },
        ],
        manual: "/usr/bin/demo-b",
      },
    ]);
    expect(c.removed).toEqual([]);
  });

  it("a later layer's removal drops an earlier alternative; a later addition cancels a removal", () => {
    const c = composeAlternatives([
      { groups: [demo("/usr/bin/demo-a", 50, "/usr/bin/demo-a")], removed: [] },
      {
        groups: [],
        removed: [
          { name: "demo", path: "/usr/bin/demo-a" },
          { name: "x", path: "/usr/bin/x" },
        ],
      },
    ]);
    expect(c).toEqual({
      groups: [],
      removed: [
        { name: "demo", path: "/usr/bin/demo-a" },
        { name: "x", path: "/usr/bin/x" },
      ],
    });
    const back = composeAlternatives([
      { groups: [], removed: [{ name: "demo", path: "/usr/bin/demo-a" }] },
      { groups: [demo("/usr/bin/demo-a", 50)], removed: [] },
    ]);
    expect(back.removed).toEqual([]);
    expect(back.groups[0]!.choices).toHaveLength(1);
  });
});
