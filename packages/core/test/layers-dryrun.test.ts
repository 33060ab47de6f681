import {
  accountProblems,
  DISK_RESERVE_BYTES,
  type DryRunProblem,
  diskSpaceNeeded,
  diskSpaceProblem,
  dryRunPackages,
  isLibraryPackage,
  mergeAccounts,
  type PackageStanza,
  parseAccountLines,
  parseStatus,
} from "@strata/core";
import { describe, expect, it } from "vitest";
import {
  BOOKWORM_PASSWD,
  ST_GCC_12_BASE,
  ST_JQ,
  ST_LIBC6,
  ST_LIBGCC_S1,
  ST_LIBJQ1,
  ST_LIBONIG5,
  ST_LIBZSTD1,
  ST_MAWK,
} from "./layers-fixtures.js";

const pkg = (stanza: string): PackageStanza => parseStatus(`${stanza}\n`)[0]!;
const setField = (stanza: string, field: string, value: string) =>
  stanza.replace(new RegExp(`^${field}: .*$`, "m"), `${field}: ${value}`);
const version = (stanza: string, v: string) => pkg(setField(stanza, "Version", v));
const kinds = (ps: DryRunProblem[]) =>
  ps.map((p) => `${p.kind}:${p.subject}:${p.blocking ? "blocking" : "info"}`);

/** libc6 and what it needs: present in every image and every endpoint below. */
const BASE = [ST_GCC_12_BASE, ST_LIBC6, ST_LIBGCC_S1].map(pkg);
const BASE_NAMES = BASE.map((p) => p.name);
/** GNU hello as bookworm has it: a program with no dependency beyond libc6. */
const ST_HELLO = `Package: hello
Status: install ok installed
Priority: optional
Section: devel
Installed-Size: 280
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Version: 2.10-3
Depends: libc6 (>= 2.34)
Description: example package based on GNU hello
 The GNU hello program produces a familiar, friendly greeting.
Homepage: https://www.gnu.org/software/hello/`;
const JQ_ALL = [ST_JQ, ST_LIBJQ1, ST_LIBONIG5].map(pkg);

describe("dryRunPackages", () => {
  it("reports the merge and no problem for a clean apply", () => {
    const r = dryRunPackages({
      live: [...BASE, pkg(ST_HELLO), pkg(ST_LIBZSTD1)],
      image: [...BASE, pkg(ST_HELLO), ...JQ_ALL],
      previous: [...BASE_NAMES, "hello"],
      removedPackages: [],
    });
    expect(r.added).toEqual(["jq", "libjq1", "libonig5"]);
    expect(r.userInstalled).toEqual(["libzstd1"]);
    expect(r.removed).toEqual([]);
    expect(r.problems).toEqual([]);
  });

  describe("downgrade", () => {
    it("blocks a downgrade of a user-installed package, lists one of an image-owned one", () => {
      const live = [...BASE, pkg(ST_MAWK), pkg(ST_HELLO)];
      const image = [...BASE, version(ST_MAWK, "1.3.4.20200120-2"), version(ST_HELLO, "2.10-2")];
      const r = dryRunPackages({ live, image, previous: [...BASE_NAMES, "hello"], removedPackages: [] });
      expect(kinds(r.problems)).toEqual(["downgrade:hello:info", "downgrade:mawk:blocking"]);
      const mawk = r.problems.find((p) => p.subject === "mawk")!;
      expect(mawk.message).toContain("1.3.4.20200120-3.1");
      expect(mawk.message).toContain("1.3.4.20200120-2");
      expect(r.updated).toEqual([
        { name: "hello", from: "2.10-3", to: "2.10-2" },
        { name: "mawk", from: "1.3.4.20200120-3.1", to: "1.3.4.20200120-2" },
      ]);
    });

    it("blocks a downgrade of a shared library even when the image owns it", () => {
      const live = [...BASE, pkg(ST_LIBZSTD1)];
      const image = [...BASE, version(ST_LIBZSTD1, "1.5.4+dfsg2-4")];
      const r = dryRunPackages({ live, image, previous: [...BASE_NAMES, "libzstd1"], removedPackages: [] });
      expect(kinds(r.problems)).toEqual(["downgrade:libzstd1:blocking"]);
      expect(r.problems[0]!.message).toMatch(/shared library/);
    });

    it("does not call an upgrade or an epoch bump a downgrade", () => {
      const live = [...BASE, pkg(ST_HELLO), pkg(ST_MAWK)];
      const image = [...BASE, version(ST_HELLO, "1:1.0-1"), version(ST_MAWK, "1.3.4.20200120-3.1+b1")];
      const r = dryRunPackages({ live, image, previous: [], removedPackages: [] });
      expect(r.problems).toEqual([]);
    });

    it("recognizes library packages by name and by section", () => {
      expect(isLibraryPackage(pkg(ST_LIBZSTD1))).toBe(true);
      expect(isLibraryPackage(pkg(setField(ST_MAWK, "Section", "oldlibs")))).toBe(true);
      expect(isLibraryPackage(pkg(setField(ST_MAWK, "Section", "non-free/libs")))).toBe(true);
      expect(isLibraryPackage(pkg(ST_MAWK))).toBe(false);
      expect(isLibraryPackage(pkg(setField(ST_MAWK, "Section", "libdevel")))).toBe(false);
    });
  });

  describe("missing dependency", () => {
    it("blocks an image package whose Depends nothing satisfies", () => {
      const r = dryRunPackages({
        live: BASE,
        image: [...BASE, pkg(ST_JQ)],
        previous: BASE_NAMES,
        removedPackages: [],
      });
      expect(kinds(r.problems)).toEqual(["missing-dependency:jq:blocking"]);
      expect(r.problems[0]!.message).toContain("libjq1 (= 1.6-2.1)");
    });

    it("counts kept user-installed packages, by version", () => {
      const ok = dryRunPackages({
        live: [...BASE, pkg(ST_LIBJQ1), pkg(ST_LIBONIG5)],
        image: [...BASE, pkg(ST_JQ)],
        previous: BASE_NAMES,
        removedPackages: [],
      });
      expect(ok.problems).toEqual([]);
      const old = dryRunPackages({
        live: [...BASE, version(ST_LIBJQ1, "1.6-2"), pkg(ST_LIBONIG5)],
        image: [...BASE, pkg(ST_JQ)],
        previous: BASE_NAMES,
        removedPackages: [],
      });
      expect(kinds(old.problems)).toEqual(["missing-dependency:jq:blocking"]);
    });

    it("counts Provides, and sees a provider dropped by --enforce remove", () => {
      const needsAwk = pkg(
        `Package: awk-user\nStatus: install ok installed\nArchitecture: all\nVersion: 1\nDepends: awk`,
      );
      const input = {
        live: [...BASE, pkg(ST_MAWK)],
        image: [...BASE, needsAwk],
        previous: BASE_NAMES,
        removedPackages: [],
      };
      expect(dryRunPackages(input).problems).toEqual([]);
      const r = dryRunPackages({ ...input, enforceRemove: true });
      expect(r.removed).toEqual(["mawk"]);
      expect(kinds(r.problems)).toEqual(["missing-dependency:awk-user:blocking"]);
    });

    it("blocks when the image drops what a kept user-installed package needs", () => {
      // The old image brought libjq1 and libonig5; the user installed jq on top. The new image has neither.
      const r = dryRunPackages({
        live: [...BASE, pkg(ST_JQ), pkg(ST_LIBJQ1), pkg(ST_LIBONIG5)],
        image: BASE,
        previous: [...BASE_NAMES, "libjq1", "libonig5"],
        removedPackages: [],
      });
      expect(r.userInstalled).toEqual(["jq"]);
      expect(r.removed).toEqual(["libjq1", "libonig5"]);
      expect(kinds(r.problems)).toEqual(["missing-dependency:jq:blocking"]);
      expect(r.problems[0]!.message).toMatch(/jq \(installed on the endpoint, kept\) depends on libjq1/);
    });

    it("does not blame the apply for a dependency already broken on the endpoint", () => {
      const r = dryRunPackages({
        live: [...BASE, pkg(ST_JQ)],
        image: BASE,
        previous: BASE_NAMES,
        removedPackages: [],
      });
      expect(r.problems).toEqual([]);
    });
  });

  describe("soname", () => {
    const LIBONIG6 = pkg(
      setField(setField(ST_LIBONIG5, "Package", "libonig6"), "Version", "6.9.9-1").replace(
        "Package: libonig5",
        "Package: libonig6",
      ),
    );
    const dir = "/usr/lib/x86_64-linux-gnu";
    const input = {
      // The old image owned libonig5; the user installed jq and libjq1, which need it.
      live: [...BASE, pkg(ST_JQ), pkg(ST_LIBJQ1), pkg(ST_LIBONIG5)],
      image: [...BASE, LIBONIG6],
      previous: [...BASE_NAMES, "libonig5"],
      removedPackages: [],
      liveLibs: [`${dir}/libonig.so.5.3.0`, `${dir}/libonig.so.5`, `${dir}/libjq.so.1`, `${dir}/libc.so.6`],
      imageLibs: [`${dir}/libonig.so.6`, `${dir}/libonig.so.6.0.0`, `${dir}/libc.so.6`],
    };

    it("blocks when the image replaces a major soname a kept user package depends on", () => {
      const r = dryRunPackages(input);
      expect(kinds(r.problems)).toEqual([`soname:${dir}/libonig.so.5:blocking`]);
      const m = r.problems[0]!.message;
      expect(m).toContain("libonig5");
      expect(m).toContain("libonig.so.6");
      expect(m).toContain("libjq1");
    });

    it("falls back to a missing dependency without the library lists", () => {
      const r = dryRunPackages({ ...input, liveLibs: [], imageLibs: [] });
      expect(kinds(r.problems)).toEqual(["missing-dependency:libjq1:blocking"]);
    });

    it("does not block when the library package stays (user-installed) or the major is kept", () => {
      expect(dryRunPackages({ ...input, previous: BASE_NAMES }).problems).toEqual([]);
      const sameMajor = dryRunPackages({
        ...input,
        image: [...BASE, LIBONIG6, version(ST_LIBONIG5, "6.9.8-2")],
        imageLibs: [...input.imageLibs, `${dir}/libonig.so.5`],
      });
      expect(sameMajor.problems).toEqual([]);
    });

    it("maps sonames to package names by Debian policy (hyphen after a digit, t64 suffix)", () => {
      const lib = (name: string) =>
        pkg(`Package: ${name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1`);
      const user = pkg(
        "Package: app\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\nDepends: libbz2-1.0, libssl3t64",
      );
      const r = dryRunPackages({
        live: [lib("libbz2-1.0"), lib("libssl3t64"), user],
        image: [lib("libbz2-1.1"), lib("libssl4")],
        previous: ["libbz2-1.0", "libssl3t64"],
        removedPackages: [],
        liveLibs: [`${dir}/libbz2.so.1.0`, `${dir}/libssl.so.3`],
        imageLibs: [`${dir}/libbz2.so.2`, `${dir}/libssl.so.4`],
      });
      expect(kinds(r.problems)).toEqual([
        `soname:${dir}/libbz2.so.1.0:blocking`,
        `soname:${dir}/libssl.so.3:blocking`,
      ]);
    });
  });
});

describe("accountProblems", () => {
  it("turns clashes into blocking problems naming both accounts and the id", () => {
    const live = {
      passwd: [...parseAccountLines(BOOKWORM_PASSWD), "mysql:x:998:998::/nonexistent:/bin/false"],
      group: ["mysql:x:998:"],
      shadow: [],
      gshadow: [],
    };
    const image = {
      passwd: ["_jq:x:998:998::/nonexistent:/usr/sbin/nologin"],
      group: ["_jq:x:998:"],
      shadow: [],
      gshadow: [],
    };
    const problems = accountProblems(mergeAccounts(live, image).clashes);
    expect(kinds(problems)).toEqual([
      "account-clash:passwd:_jq:blocking",
      "account-clash:group:_jq:blocking",
    ]);
    expect(problems[0]!.message).toMatch(/user _jq.*uid 998.*user mysql/);
    expect(problems[1]!.message).toMatch(/group _jq.*gid 998.*group mysql/);
  });
});

describe("disk space", () => {
  const MiB = 1024 * 1024;
  it("needs the bytes to stage, a block per file and the reserve", () => {
    expect(diskSpaceNeeded({ bytesToWrite: 100 * MiB, filesToWrite: 1000, blockSize: 4096 })).toBe(
      100 * MiB + 1000 * 4096 + DISK_RESERVE_BYTES,
    );
    // Without a block size (the server's dry-run): 4 KiB.
    expect(diskSpaceNeeded({ bytesToWrite: 0, filesToWrite: 2 })).toBe(2 * 4096 + DISK_RESERVE_BYTES);
  });

  it("blocks when the apply needs more than is free, naming both and the filesystem", () => {
    const need = 500 * MiB + 10 * 4096 + DISK_RESERVE_BYTES;
    const input = { bytesToWrite: 500 * MiB, filesToWrite: 10, blockSize: 4096, path: "/" };
    expect(diskSpaceProblem({ ...input, freeBytes: need })).toBeNull();
    const p = diskSpaceProblem({ ...input, freeBytes: need - 1 });
    expect(p).toMatchObject({ kind: "disk-space", blocking: true, subject: "/" });
    expect(p!.message).toMatch(
      /^not enough disk space: needs 564\.0 MiB .*, 564\.0 MiB free on the filesystem of \/;/,
    );
    // The files alone fit, the reserve does not: still blocked.
    expect(diskSpaceProblem({ ...input, freeBytes: 501 * MiB })).not.toBeNull();
  });
});
