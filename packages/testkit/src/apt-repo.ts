import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";

/**
 * Tiny real Debian packages and a flat apt repository of them, so tests
 * install and upgrade packages with apt inside a chroot, offline. Needs
 * `dpkg-deb` (every Debian host has it); the Packages index is written here
 * (no dpkg-dev needed).
 */
export interface TestDeb {
  name: string;
  version: string;
  /** Extra control fields, e.g. `{ Depends: "libc6" }`. */
  control?: Record<string, string>;
  /** Files the package ships: path below the root (no leading /) → content. Default: `usr/local/bin/NAME`. */
  files?: Record<string, string>;
  /** Maintainer scripts (`postinst`, `prerm`, …) → their text. */
  scripts?: Record<string, string>;
}

/** Build `deb` into `outDir`; returns the .deb's path (`NAME_VERSION_all.deb`). */
export function buildDeb(outDir: string, deb: TestDeb): string {
  const work = path.join(outDir, `.build-${deb.name}-${deb.version}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(path.join(work, "DEBIAN"), { recursive: true });
  const fields = {
    Package: deb.name,
    Version: deb.version,
    Architecture: "all",
    Maintainer: "Test <t@example.org>",
    ...deb.control,
    Description: `${deb.name}, a package of the tests`,
  };
  writeFileSync(
    path.join(work, "DEBIAN/control"),
    `${Object.entries(fields)
      .map(([k, v]) => `${k}: ${v}`)
      .join("\n")}\n`,
  );
  for (const [name, text] of Object.entries(deb.scripts ?? {}))
    writeFileSync(path.join(work, "DEBIAN", name), text, { mode: 0o755 });
  const files = deb.files ?? {
    [`usr/local/bin/${deb.name}`]: `#!/bin/sh\necho ${deb.name} ${deb.version}\n`,
  };
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(work, rel);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, content);
    chmodSync(p, rel.includes("/bin/") ? 0o755 : 0o644);
  }
  mkdirSync(outDir, { recursive: true });
  const out = path.join(outDir, `${deb.name}_${deb.version}_all.deb`);
  execFileSync("dpkg-deb", ["--root-owner-group", "--build", work, out], { stdio: "ignore" });
  rmSync(work, { recursive: true, force: true });
  return out;
}

/**
 * A flat repository in `dir` (`deb [trusted=yes] file:DIR ./` as seen from
 * inside the root) holding `debs`: the .deb files, a `Packages` index with
 * each package's control fields, Filename, Size and SHA256, and an unsigned
 * `Release`.
 */
export function aptRepo(dir: string, debs: TestDeb[]): string[] {
  mkdirSync(dir, { recursive: true });
  const stanzas: string[] = [];
  const files: string[] = [];
  for (const d of debs) {
    const deb = buildDeb(dir, d);
    files.push(deb);
    const control = execFileSync("dpkg-deb", ["-f", deb], { encoding: "utf8" }).trimEnd();
    const sha256 = createHash("sha256").update(readFileSync(deb)).digest("hex");
    stanzas.push(
      `${control}\nFilename: ./${path.basename(deb)}\nSize: ${statSync(deb).size}\nSHA256: ${sha256}\n`,
    );
  }
  const packages = stanzas.join("\n");
  writeFileSync(path.join(dir, "Packages"), packages);
  // An unsigned Release (the source is `[trusted=yes]`): apt refuses a repository without one.
  const sha = createHash("sha256").update(packages).digest("hex");
  writeFileSync(
    path.join(dir, "Release"),
    `Origin: strata-test\nLabel: strata-test\nSuite: strata-test\nCodename: strata-test\nDate: ${new Date().toUTCString()}\nArchitectures: all amd64 arm64\nSHA256:\n ${sha} ${Buffer.byteLength(packages)} Packages\n`,
  );
  return files;
}
