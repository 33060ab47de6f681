import { existsSync, lstatSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { native } from "@strata/fs";
import type { Repository } from "@strata/repo";
import { debianRoot, debianRootSkipReason } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreKind, RestoreOptions } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import {
  closeTestRepo,
  copyTree,
  createTestRepo,
  diff,
  put,
  snapshotOf,
  testPolicy,
} from "./restore-helpers.js";

/**
 * Every kind against the real Debian root (testkit fixture), backed up
 * once with the real Backup; rsync -aHAX --checksum is the oracle.
 */
const found = await debianRoot();
// The cache may be reached through a symlink; a backup records the real path.
const debian = found ? realpathSync(found) : null;
const d = debian ? describe : describe.skip;
if (!found) console.warn(`restore-debian: skipped: ${debianRootSkipReason()}`);

/** Excluded by the default policy: never written by a restore. */
const EXCLUDED = /(^| )(dev|proc|sys|run|tmp|var\/tmp|var\/cache|var\/lib\/apt\/lists)\/./;
const USER = /(^| )(home\/[^/]+|root)\//;

let repo: Repository;
let src: LocalRestoreSource;

beforeAll(async () => {
  if (!debian) return;
  repo = await createTestRepo(path.join(tmp("strata-deb-"), "repo"));
  src = await snapshotOf(repo, debian);
});
afterAll(async () => {
  if (repo) await closeTestRepo(repo);
  cleanup();
});

function opts(root: string, kind: RestoreKind, o: Partial<RestoreOptions> = {}): RestoreOptions {
  return { root, stateDir: tmp("strata-state-"), id: `deb-${kind}`, kind, policy: testPolicy(), ...o };
}

function copyOfDebian(): string {
  const root = tmp("strata-debroot-");
  copyTree(debian!, root);
  return root;
}

d("restore engine on a real Debian root", () => {
  it("full onto an empty disk equals the snapshot except excluded paths", async () => {
    const root = tmp("strata-debroot-");
    const r = await runRestore(src, opts(root, "full")).done;
    expect(r.errors).toEqual([]);
    expect(diff(debian!, root, EXCLUDED)).toEqual([]);
    expect(r.fetchedBytes).toBeGreaterThan(50 * 1024 * 1024);
  });

  it("system repairs a deleted /usr/bin and a corrupted /etc, deletes a newer /usr/bin/x, keeps a newer home file", async () => {
    const root = copyOfDebian();
    rmSync(path.join(root, "usr/bin"), { recursive: true });
    put(root, "usr/bin/x", "installed after the snapshot\n");
    const passwd = path.join(root, "etc/passwd");
    const st = lstatSync(passwd, { bigint: true });
    const text = readFileSync(passwd);
    text[0] = "R".charCodeAt(0);
    writeFileSync(passwd, text);
    native.lutimens(Buffer.from(passwd), st.mtimeNs, st.mtimeNs);
    put(root, "home/alice/newer.txt", "alice's work after the snapshot\n");
    const r = await runRestore(src, opts(root, "system")).done;
    expect(r.errors).toEqual([]);
    expect(existsSync(path.join(root, "usr/bin/x"))).toBe(false);
    expect(readFileSync(passwd).equals(readFileSync(path.join(debian!, "etc/passwd")))).toBe(true);
    expect(readFileSync(path.join(root, "home/alice/newer.txt"), "utf8")).toContain("after the snapshot");
    expect(diff(debian!, root, new RegExp(`${EXCLUDED.source}|${USER.source}|(^| )home/$`))).toEqual([]);
    // Only what was missing crossed from the source; the rest was verified in place.
    expect(r.unchangedFiles).toBeGreaterThan(r.files / 2);
  });

  it("full onto an unchanged copy changes nothing and fetches nothing", async () => {
    const root = copyOfDebian();
    const r = await runRestore(src, opts(root, "full")).done;
    expect(r.putOps + r.deleted + r.metaOps).toBe(0);
    expect(r.fetchedBytes).toBe(0);
    expect(diff(debian!, root)).toEqual([]);
  });

  it("recover keeps the device's identity files", async () => {
    const root = tmp("strata-debroot-");
    put(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n", { mode: 0o444 });
    put(root, "etc/ssh/ssh_host_ed25519_key", "device key\n", { mode: 0o600 });
    const r = await runRestore(src, opts(root, "recover")).done;
    expect(r.errors).toEqual([]);
    expect(readFileSync(path.join(root, "etc/machine-id"), "utf8")).toBe(
      "0123456789abcdef0123456789abcdef\n",
    );
    expect(readFileSync(path.join(root, "etc/ssh/ssh_host_ed25519_key"), "utf8")).toBe("device key\n");
    expect(diff(debian!, root, new RegExp(`${EXCLUDED.source}|etc/machine-id|etc/ssh|(^| )etc/$`))).toEqual(
      [],
    );
  });

  it("files restores /etc/apt and /usr/bin/dpkg into a directory", async () => {
    const to = tmp("strata-to-");
    const r = await runRestore(src, opts("/", "files", { paths: ["/etc/apt", "/usr/bin/dpkg"], to })).done;
    expect(r.errors).toEqual([]);
    expect(diff(path.join(debian!, "etc/apt"), path.join(to, "apt"))).toEqual([]);
    expect(readFileSync(path.join(to, "dpkg")).equals(readFileSync(path.join(debian!, "usr/bin/dpkg")))).toBe(
      true,
    );
  });
});
