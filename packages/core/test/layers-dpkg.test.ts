import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import {
  compareVersions,
  diffStatus,
  isInstalled,
  isStrataError,
  mergeStatus,
  PackageIndex,
  type PackageStanza,
  parseDepends,
  parseStatus,
  parseVersion,
  serializeStatus,
  stanzaField,
} from "@strata/core";
import { debianRoot, debianRootSkipReason } from "@strata/testkit";
import { describe, expect, it } from "vitest";
import {
  ST_ADDUSER,
  ST_BASE_FILES,
  ST_GCC_12_BASE,
  ST_GPGV,
  ST_JQ,
  ST_LIBC6,
  ST_LIBCRYPT1,
  ST_LIBGCC_S1,
  ST_LIBJQ1,
  ST_LIBONIG5,
  ST_LIBZSTD1,
  ST_MAWK,
} from "./layers-fixtures.js";

const statusText = (...stanzas: string[]) => stanzas.map((s) => `${s}\n\n`).join("");
const pkg = (stanza: string): PackageStanza => parseStatus(`${stanza}\n`)[0]!;
const setField = (stanza: string, field: string, value: string) =>
  stanza.replace(new RegExp(`^${field}: .*$`, "m"), `${field}: ${value}`);
const names = (ps: PackageStanza[]) => ps.map((p) => p.name);

describe("compareVersions (deb-version(7))", () => {
  const cases: [string, string, number][] = [
    ["1.0~rc1", "1.0", -1],
    ["1.0~rc1", "1.0~rc2", -1],
    ["1.0~~", "1.0~", -1],
    ["1.0~", "1.0", -1],
    ["1:0.1", "2.0", 1],
    ["0:1.0", "1.0", 0],
    ["1.0-1", "1.0-1+b1", -1],
    ["2.30-2", "2.30-10", -1],
    ["1.0", "1.0-0", 0],
    ["1.0", "1.00", 0],
    ["1.2.3", "1.10", -1],
    ["1.0a", "1.0", 1],
    ["1.0a", "1.0+", -1],
    ["1.0a", "1.0.", -1],
    ["7.6p2-4", "7.6-0", 1],
    ["1.2-3-4", "1.2-3-10", -1],
    ["2.36-9+deb12u14", "2.36-9", 1],
    ["1:1.2.13.dfsg-1", "1:1.1.4", 1],
    ["10:1", "9:99", 1],
    ["1.12345678901234567890", "1.12345678901234567889", 1],
    ["1.6-2.1", "1.6-2.1", 0],
    ["a", "B", 1],
    ["", "0", 0],
  ];
  for (const [a, b, want] of cases)
    it(`${a || '""'} ${want < 0 ? "<" : want > 0 ? ">" : "="} ${b || '""'}`, () => {
      expect(compareVersions(a, b)).toBe(want);
      expect(compareVersions(b, a)).toBe(want === 0 ? 0 : -want);
    });

  it("sorts a list in dpkg's order", () => {
    const list = ["1:0.9", "1.0+b1", "1.0a", "1.0-1", "1.0", "1.0~rc1", "1.0~~", "0.9"];
    expect([...list].sort(compareVersions)).toEqual([
      "0.9",
      "1.0~~",
      "1.0~rc1",
      "1.0",
      "1.0-1",
      "1.0a",
      "1.0+b1",
      "1:0.9",
    ]);
  });

  it("splits epoch, upstream and revision at the first colon and the last hyphen", () => {
    expect(parseVersion("2:1.2-3-4")).toEqual({ epoch: 2, upstream: "1.2-3", revision: "4" });
    expect(parseVersion("1.6")).toEqual({ epoch: 0, upstream: "1.6", revision: "" });
  });

  const dpkg = spawnSync("dpkg", ["--version"]).status === 0;
  it.skipIf(!dpkg)("agrees with `dpkg --compare-versions` on generated versions (needs dpkg)", () => {
    // A small deterministic generator over the characters that matter.
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    const atoms = ["0", "1", "2", "9", "10", "01", "a", "b", "Z", "~", ".", "+", "~~", "rc", "00"];
    const part = () => {
      let s = ["0", "1", "2", "10"][rnd(4)]!;
      for (let k = rnd(4); k > 0; k--) s += atoms[rnd(atoms.length)];
      return s;
    };
    const version = () =>
      `${rnd(4) === 0 ? `${rnd(3)}:` : ""}${part()}${rnd(2) === 0 ? `-${part().replace(/^~/, "1")}` : ""}`;
    const pairs: [string, string][] = [];
    for (let i = 0; i < 150; i++) {
      const a = version();
      pairs.push([a, rnd(3) === 0 ? a.replace(/\d/, (d) => String((Number(d) + 1) % 10)) : version()]);
    }
    const script = pairs
      .map(
        ([a, b]) =>
          `if dpkg --compare-versions '${a}' lt '${b}' 2>/dev/null; then echo -1; elif dpkg --compare-versions '${a}' eq '${b}' 2>/dev/null; then echo 0; else echo 1; fi`,
      )
      .join("\n");
    const out = spawnSync("sh", ["-c", script], { encoding: "utf8" }).stdout.trim().split("\n").map(Number);
    const ours = pairs.map(([a, b]) => compareVersions(a, b));
    const mismatches = pairs
      .filter((_, i) => ours[i] !== out[i])
      .map(([a, b], i) => `${a} vs ${b}: ${ours[i]}`);
    expect(mismatches).toEqual([]);
    // The generator must produce every outcome, or the check proves little.
    expect(new Set(out)).toEqual(new Set([-1, 0, 1]));
  });
});

describe("parseStatus / stanzaField / serializeStatus", () => {
  const text = statusText(ST_ADDUSER, ST_BASE_FILES, ST_LIBC6);

  it("splits stanzas and keeps each one byte for byte", () => {
    const ps = parseStatus(text);
    expect(names(ps)).toEqual(["adduser", "base-files", "libc6"]);
    expect(ps.map((p) => p.stanza)).toEqual([ST_ADDUSER, ST_BASE_FILES, ST_LIBC6]);
    expect(ps[0]).toMatchObject({ arch: "all", version: "3.134" });
    expect(ps[2]).toMatchObject({ arch: "amd64", version: "2.36-9+deb12u14" });
  });

  it("round-trips a status file exactly", () => {
    expect(serializeStatus(parseStatus(text))).toBe(text);
  });

  it("sorts by name then architecture when writing", () => {
    const i386 = pkg(setField(ST_LIBC6, "Architecture", "i386"));
    const out = serializeStatus([pkg(ST_LIBC6), i386, pkg(ST_ADDUSER)]);
    const back = parseStatus(out);
    expect(back.map((p) => `${p.name}:${p.arch}`)).toEqual(["adduser:all", "libc6:amd64", "libc6:i386"]);
    expect(out.endsWith("\n\n")).toBe(true);
    expect(out).not.toContain("\n\n\n");
    expect(serializeStatus([])).toBe("");
  });

  it("tolerates extra blank lines and a missing final newline", () => {
    const ps = parseStatus(`\n${ST_GPGV}\n\n\n\n${ST_MAWK}`);
    expect(ps.map((p) => p.stanza)).toEqual([ST_GPGV, ST_MAWK]);
  });

  it("defaults arch and version to empty", () => {
    const [p] = parseStatus("Package: foo\nStatus: purge ok not-installed\n");
    expect(p).toEqual({
      name: "foo",
      arch: "",
      version: "",
      stanza: "Package: foo\nStatus: purge ok not-installed",
    });
  });

  it("refuses a stanza without Package and a line that is not a field", () => {
    const a = (() => {
      try {
        parseStatus(`${ST_GPGV}\n\nStatus: install ok installed\nVersion: 1\n`);
      } catch (e) {
        return e;
      }
    })();
    expect(isStrataError(a, "INVALID_ARGUMENT")).toBe(true);
    expect((a as Error).message).toMatch(/line \d+ has no Package/);
    expect(() => parseStatus("Package: a\nthis is not a field\n")).toThrow(/line 2: not a field/);
  });

  it("reads fields case-insensitively, multi-line values with their continuation lines", () => {
    expect(stanzaField(ST_GPGV, "depends")).toBe(
      "libbz2-1.0, libc6 (>= 2.34), libgcrypt20 (>= 1.10.0), libgpg-error0 (>= 1.42), zlib1g (>= 1:1.1.4)",
    );
    expect(stanzaField(ST_ADDUSER, "Conffiles")).toBe(
      " /etc/adduser.conf cc3493ecd2d09837ffdcc3e25fdfff18\n /etc/deluser.conf 11a06baf8245fd8d690b99024d228c1f",
    );
    const desc = stanzaField(ST_ADDUSER, "Description")!;
    expect(desc.split("\n")[0]).toBe("add and remove users and groups");
    expect(desc.split("\n")[1]).toBe(
      " This package includes the 'adduser' and 'deluser' commands for creating",
    );
    expect(stanzaField(ST_ADDUSER, "Pre-Depends")).toBeNull();
    // "Depends" must not match "Pre-Depends" (base-files has only the latter).
    expect(stanzaField(ST_BASE_FILES, "Depends")).toBeNull();
    expect(stanzaField(ST_BASE_FILES, "Pre-Depends")).toBe("awk");
  });

  it("isInstalled reads the state word of Status", () => {
    expect(isInstalled(pkg(ST_JQ))).toBe(true);
    expect(isInstalled(pkg(setField(ST_JQ, "Status", "hold ok installed")))).toBe(true);
    expect(isInstalled(pkg(setField(ST_JQ, "Status", "deinstall ok config-files")))).toBe(false);
    expect(isInstalled(pkg(setField(ST_JQ, "Status", "install ok unpacked")))).toBe(false);
    expect(isInstalled(pkg("Package: x\nVersion: 1"))).toBe(false);
  });

  it("parses the whole status of a real Debian root (needs the Debian root)", async () => {
    const root = await debianRoot();
    if (!root) {
      console.warn(`skipped: ${debianRootSkipReason()}`);
      return;
    }
    const real = readFileSync(path.join(root, "var/lib/dpkg/status"), "utf8");
    const ps = parseStatus(real);
    const count = real.split("\n").filter((l) => l.startsWith("Package: ")).length;
    expect(ps).toHaveLength(count);
    expect(ps.every(isInstalled)).toBe(true);
    // dpkg's own output: serializing what we read gives the file back.
    expect(serializeStatus(ps)).toBe(real);
  });
});

describe("parseDepends / PackageIndex", () => {
  it("parses alternatives, relations, arch qualifiers, and ignores restrictions", () => {
    expect(
      parseDepends("adduser, gpgv | gpgv2 | gpgv1, libapt-pkg6.0 (>= 2.6.1), python3:any (>= 3.11~)"),
    ).toEqual([
      [{ name: "adduser" }],
      [{ name: "gpgv" }, { name: "gpgv2" }, { name: "gpgv1" }],
      [{ name: "libapt-pkg6.0", relation: ">=", version: "2.6.1" }],
      [{ name: "python3", arch: "any", relation: ">=", version: "3.11~" }],
    ]);
    expect(parseDepends("foo (<<1.0) [amd64 i386] <!nocheck>, bar(= 1:2.0-1)")).toEqual([
      [{ name: "foo", relation: "<<", version: "1.0" }],
      [{ name: "bar", relation: "=", version: "1:2.0-1" }],
    ]);
    expect(parseDepends("old (< 2), older (> 3),\n baz")).toEqual([
      [{ name: "old", relation: "<=", version: "2" }],
      [{ name: "older", relation: ">=", version: "3" }],
      [{ name: "baz" }],
    ]);
    expect(parseDepends("")).toEqual([]);
  });

  it("satisfies by name and version, and by Provides (versioned only when the provide is)", () => {
    const idx = new PackageIndex([pkg(ST_LIBC6), pkg(ST_MAWK), pkg(ST_BASE_FILES)]);
    const one = (s: string) => idx.satisfiesAny(parseDepends(s)[0]!);
    expect(one("libc6 (>= 2.34)")).toBe(true);
    expect(one("libc6 (>= 2.37)")).toBe(false);
    expect(one("libc6 (<< 2.36-9+deb12u14)")).toBe(false);
    expect(one("awk")).toBe(true); // mawk provides awk
    expect(one("awk (>= 1)")).toBe(false); // unversioned provide
    expect(one("nothing | awk")).toBe(true);
    expect(one("base")).toBe(true);
    const versioned = new PackageIndex([pkg(`${ST_JQ}\nProvides: jq-tool (= 1.6)`)]);
    expect(versioned.satisfiesAny(parseDepends("jq-tool (>= 1.5)")[0]!)).toBe(true);
    expect(versioned.satisfiesAny(parseDepends("jq-tool (>= 1.7)")[0]!)).toBe(false);
  });
});

describe("diffStatus", () => {
  it("finds stanzas added or changed, and packages removed", () => {
    const pre = statusText(ST_ADDUSER, ST_GPGV, ST_LIBC6, ST_MAWK);
    const gpgvNew = setField(ST_GPGV, "Version", "2.2.40-1.1+deb12u3");
    const post = statusText(ST_ADDUSER, gpgvNew, ST_JQ, ST_LIBC6, ST_LIBJQ1, ST_LIBONIG5);
    const d = diffStatus(pre, post);
    expect(names(d.packages)).toEqual(["gpgv", "jq", "libjq1", "libonig5"]);
    expect(d.packages[0]!.stanza).toBe(gpgvNew);
    expect(d.removedPackages).toEqual(["mawk"]);
  });

  it("counts a changed Status as a change (remove without purge)", () => {
    const pre = statusText(ST_JQ, ST_LIBC6);
    const post = statusText(setField(ST_JQ, "Status", "deinstall ok config-files"), ST_LIBC6);
    expect(names(diffStatus(pre, post).packages)).toEqual(["jq"]);
  });

  it("names a package removed in one architecture only as name:arch", () => {
    const i386 = setField(ST_LIBC6, "Architecture", "i386");
    const d = diffStatus(statusText(ST_LIBC6, i386, ST_GPGV), statusText(ST_LIBC6));
    expect(d.removedPackages).toEqual(["gpgv", "libc6:i386"]);
    expect(d.packages).toEqual([]);
  });
});

describe("mergeStatus", () => {
  const live = statusText(
    ST_ADDUSER,
    ST_BASE_FILES,
    setField(ST_GPGV, "Version", "2.2.40-1.1"),
    ST_LIBC6,
    ST_LIBZSTD1,
    ST_MAWK,
  );
  const image = [ST_ADDUSER, ST_BASE_FILES, ST_GPGV, ST_JQ, ST_LIBC6, ST_LIBJQ1, ST_LIBONIG5].map(pkg);

  it("image wins, previous-owned packages the image lacks go, the rest stays user-installed", () => {
    const m = mergeStatus(live, image, { previous: ["adduser", "base-files", "gpgv", "libc6", "libzstd1"] });
    const out = parseStatus(m.text);
    expect(names(out)).toEqual([
      "adduser",
      "base-files",
      "gpgv",
      "jq",
      "libc6",
      "libjq1",
      "libonig5",
      "mawk",
    ]);
    expect(out.find((p) => p.name === "gpgv")!.stanza).toBe(ST_GPGV);
    expect(out.find((p) => p.name === "mawk")!.stanza).toBe(ST_MAWK);
    expect(m.added).toEqual(["jq", "libjq1", "libonig5"]);
    expect(m.updated).toEqual([{ name: "gpgv", from: "2.2.40-1.1", to: "2.2.40-1.1+deb12u2" }]);
    expect(m.removed).toEqual(["libzstd1"]);
    expect(m.userInstalled).toEqual(["mawk"]);
    expect(m.text).toBe(serializeStatus(out));
  });

  it("drops removedPackages even when the previous image did not own them", () => {
    const m = mergeStatus(live, image, { previous: [], removedPackages: ["mawk"] });
    expect(m.removed).toEqual(["mawk"]);
    expect(m.userInstalled).toEqual(["libzstd1"]);
    expect(names(parseStatus(m.text))).not.toContain("mawk");
  });

  it("with enforceRemove drops every user-installed package and reports it", () => {
    const m = mergeStatus(live, image, { previous: ["adduser"], enforceRemove: true });
    expect(m.removed).toEqual(["libzstd1", "mawk"]);
    expect(m.userInstalled).toEqual([]);
    expect(names(parseStatus(m.text))).toEqual(names(image));
  });

  it("selects by name:arch when a previous entry names an architecture", () => {
    const i386 = setField(ST_LIBZSTD1, "Architecture", "i386");
    const m = mergeStatus(statusText(ST_LIBZSTD1, i386), [], { previous: ["libzstd1:i386"] });
    expect(parseStatus(m.text).map((p) => `${p.name}:${p.arch}`)).toEqual(["libzstd1:amd64"]);
    expect(m.removed).toEqual(["libzstd1:i386"]);
    expect(m.userInstalled).toEqual(["libzstd1:amd64"]);
  });

  it("keeps a user-installed stanza byte for byte, including fields we do not know", () => {
    const odd = `${ST_LIBGCC_S1}\nX-Local-Note: pinned by admin\n  with a continuation`;
    const m = mergeStatus(statusText(odd, ST_GCC_12_BASE), [pkg(ST_LIBCRYPT1)], { previous: [] });
    expect(m.text).toContain(`${odd}\n\n`);
    expect(m.added).toEqual(["libcrypt1"]);
  });

  it("reports an image stanza that is not installed as a removal, and writes it", () => {
    const cfg = pkg(setField(ST_MAWK, "Status", "deinstall ok config-files"));
    const m = mergeStatus(live, [cfg], { previous: [] });
    expect(m.removed).toEqual(["mawk"]);
    expect(m.added).toEqual([]);
    expect(parseStatus(m.text).find((p) => p.name === "mawk")!.stanza).toBe(cfg.stanza);
  });

  it("does not report an update when only the stanza changed", () => {
    const m = mergeStatus(statusText(ST_JQ), [pkg(`${ST_JQ}\nX-Extra: 1`)], { previous: ["jq"] });
    expect(m.updated).toEqual([]);
    expect(m.text).toContain("X-Extra: 1");
  });
});
