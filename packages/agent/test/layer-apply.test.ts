import { execFileSync } from "node:child_process";
import { chownSync, existsSync, lstatSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import type { Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hasPendingRestore, recoverPendingRestore, runRestore } from "../src/restore/engine.js";
import type { LocalRestoreSource } from "../src/restore/local-source.js";
import type { RestoreOptions, RestoreResult } from "../src/restore/types.js";
import { cleanup, tmp } from "./helpers.js";
import {
  closeTestRepo,
  copyTree,
  createTestRepo,
  diff,
  type LayerSpec,
  layerOptions,
  link,
  noise,
  put,
  settleDirs,
  snapshotOf,
  testPolicy,
} from "./restore-helpers.js";
import { buildSmallRoot } from "./restore-trees.js";

/** The image's times (the endpoint's are restore-helpers' T0). */
const T1 = 1_710_000_000_000_000_000n;

let repo: Repository;
/** An endpoint before any apply: the small root plus software its user installed and some of an older image. */
let endpoint: string;
/** A sparse app image (jq), with paths a layer must never write. */
let app: string;
let appSrc: LocalRestoreSource;

const PASSWD =
  "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n_jq:x:998:998::/nonexistent:/usr/sbin/nologin\n";
const GROUP = "root:x:0:\n_jq:x:998:\n";
const SHADOW = "root:*:19000:0:99999:7:::\n_jq:!:19000::::::\n";
/** buildSmallRoot's dpkg status, unchanged. */
const STATUS = "Package: base-files\nStatus: install ok installed\n";

const SPEC: LayerSpec = {
  removable: ["/usr/bin/oldtool", "/usr/share/oldapp", "/usr/share/oldapp/a", "/usr/share/oldapp/b"],
  doNotOverride: ["/etc/jq/local.conf"],
  literals: {
    "/etc/passwd": PASSWD,
    "/etc/group": GROUP,
    "/etc/shadow": SHADOW,
    "/var/lib/dpkg/status": STATUS,
    "/home/alice/.profile": "a literal in the user area: never written\n",
    "/var/lib/nothere/file": "its directory is nowhere: not written, and said so\n",
  },
};

function buildEndpoint(root: string): void {
  buildSmallRoot(root);
  put(root, "usr/local/bin/mine", "installed by the user\n", { mode: 0o755 });
  put(root, "usr/bin/oldtool", "from the previous image\n", { mode: 0o755 });
  put(root, "usr/share/oldapp/a", "old a\n");
  put(root, "usr/share/oldapp/b", "old b\n");
  put(root, "opt/userapp/plugin.so", noise(5000, 21));
  put(root, "opt/userapp/data.db", "the user's data\n");
  put(root, "opt/userapp/sub/x.so", "old x\n");
  put(root, "opt/userapp/sub/keep", "keep me\n");
  put(root, "etc/jq/local.conf", "the endpoint's own settings\n");
  settleDirs(root);
}

function buildApp(img: string): void {
  put(img, "usr/bin/jq", noise(300_000, 31), { mode: 0o755, t: T1 });
  put(img, "usr/bin/x", "#!/bin/sh\necho x, version 2\n", { mode: 0o755, t: T1 });
  put(img, "usr/lib/libjq.so.1.0.4", noise(40_000, 32), { t: T1 });
  link(img, "usr/lib/libjq.so.1", "libjq.so.1.0.4");
  put(img, "usr/share/jq/README", "jq\n", { t: T1 });
  put(img, "etc/jq/jq.conf", "color=1\n", { t: T1 });
  put(img, "etc/jq/local.conf", "the image's defaults\n", { t: T1 });
  put(img, "etc/shadow", "the image's shadow (the literal replaces it)\n", { mode: 0o640, t: T1 });
  chownSync(path.join(img, "etc/shadow"), 0, 42);
  put(img, "etc/ssh/ssh_host_ed25519_key", "the image's host key\n", { mode: 0o600, t: T1 });
  put(img, "home/alice/evil.txt", "a layer must not write the user area\n", { t: T1 });
  put(img, "home/alice/notes.txt", "overwritten by a layer\n", { t: T1 });
  put(img, "root/.bashrc", "a layer must not write /root\n", { t: T1 });
  put(img, "tmp/x", "excluded\n", { t: T1 });
  settleDirs(img, T1);
}

beforeAll(async () => {
  const base = tmp("strata-layer-");
  repo = await createTestRepo(path.join(base, "repo"));
  endpoint = path.join(base, "endpoint");
  buildEndpoint(endpoint);
  app = path.join(base, "app");
  buildApp(app);
  appSrc = await snapshotOf(repo, app);
});
afterAll(async () => {
  await closeTestRepo(repo);
  cleanup();
});

function opts(root: string, spec: LayerSpec, o: Partial<RestoreOptions> = {}): RestoreOptions {
  return {
    root,
    stateDir: tmp("strata-state-"),
    id: "apply",
    kind: "layer",
    policy: testPolicy(),
    layer: layerOptions(spec),
    ...o,
  };
}

function endpointCopy(): string {
  const root = tmp("strata-root-");
  copyTree(endpoint, root);
  return root;
}

function changes(r: RestoreResult): number {
  return r.putOps + r.deleted + r.metaOps;
}

/** rsync `img` over `dst` (attributes included, content compared), leaving out `exclude` (rsync patterns anchored at the top). */
function overlay(img: string, dst: string, exclude: string[]): void {
  execFileSync("rsync", [
    "-aHAX",
    "--checksum",
    "--numeric-ids",
    ...exclude.map((e) => `--exclude=${e}`),
    `${img}/`,
    `${dst}/`,
  ]);
}

const mtimeOf = (p: string): bigint => lstatSync(p, { bigint: true }).mtimeNs;

/** A literal file whose time is the run's: only its mtime may differ from the expected tree. */
const NOW_LITERALS = /^\.f\.\.t\.+ etc\/(passwd|group)$/;

describe("restore engine, kind layer", () => {
  it("applies a sparse app image: image files in, user-installed kept, removable gone, user area, identity and do-not-override untouched, literals written; again: no-op", async () => {
    const root = endpointCopy();
    const statusBefore = lstatSync(path.join(root, "var/lib/dpkg/status"), { bigint: true });
    const dpkgDir = mtimeOf(path.join(root, "var/lib/dpkg"));
    const t0 = BigInt(Date.now()) * 1_000_000n;
    const r = await runRestore(appSrc, opts(root, SPEC)).done;
    const t1 = BigInt(Date.now()) * 1_000_000n;
    const NOTHERE = [
      { path: "/var/lib/nothere/file", message: expect.stringContaining("neither in the image") },
    ];
    expect(r.errors).toEqual(NOTHERE);
    expect(r.kind).toBe("layer");
    expect(r.pending).toBeUndefined();

    // What the apply must give: the endpoint, the removable paths gone, the
    // literals written, then the image's in-scope entries over it.
    const exp = tmp("strata-expected-");
    copyTree(endpoint, exp);
    rmSync(path.join(exp, "usr/bin/oldtool"));
    rmSync(path.join(exp, "usr/share/oldapp"), { recursive: true });
    writeFileSync(path.join(exp, "etc/passwd"), PASSWD);
    put(exp, "etc/group", GROUP, { mode: 0o644 });
    put(exp, "etc/shadow", SHADOW, { mode: 0o640, t: T1 });
    chownSync(path.join(exp, "etc/shadow"), 0, 42);
    overlay(app, exp, [
      "/home/alice",
      "/root",
      "/tmp/x",
      "/etc/ssh/ssh_host_*",
      "/etc/jq/local.conf",
      "/etc/shadow",
    ]);
    expect(diff(exp, root, NOW_LITERALS)).toEqual([]);

    // The same, said path by path.
    expect(readFileSync(path.join(root, "usr/bin/x"), "utf8")).toContain("version 2");
    expect(readFileSync(path.join(root, "usr/local/bin/mine"), "utf8")).toBe("installed by the user\n");
    expect(existsSync(path.join(root, "opt/userapp/plugin.so"))).toBe(true);
    expect(existsSync(path.join(root, "usr/bin/oldtool"))).toBe(false);
    expect(existsSync(path.join(root, "usr/share/oldapp"))).toBe(false);
    expect(existsSync(path.join(root, "home/alice/evil.txt"))).toBe(false);
    expect(existsSync(path.join(root, "home/alice/.profile"))).toBe(false);
    expect(readFileSync(path.join(root, "home/alice/notes.txt"), "utf8")).toBe("alice's notes\n");
    expect(existsSync(path.join(root, "root/.bashrc"))).toBe(false);
    expect(existsSync(path.join(root, "tmp/x"))).toBe(false);
    expect(readFileSync(path.join(root, "etc/ssh/ssh_host_ed25519_key"), "utf8")).toBe("snapshot host key\n");
    expect(readFileSync(path.join(root, "etc/jq/local.conf"), "utf8")).toBe("the endpoint's own settings\n");
    // Literals: the root's metadata with the run's time; 0644 root:root; the image's; unchanged.
    const passwd = lstatSync(path.join(root, "etc/passwd"), { bigint: true });
    expect(readFileSync(path.join(root, "etc/passwd"), "utf8")).toBe(PASSWD);
    expect(Number(passwd.mode) & 0o7777).toBe(0o644);
    expect(passwd.mtimeNs >= t0 - 1_000_000n && passwd.mtimeNs <= t1 + 1_000_000n).toBe(true);
    const group = lstatSync(path.join(root, "etc/group"));
    expect([group.mode & 0o7777, group.uid, group.gid]).toEqual([0o644, 0, 0]);
    const shadow = lstatSync(path.join(root, "etc/shadow"), { bigint: true });
    expect(readFileSync(path.join(root, "etc/shadow"), "utf8")).toBe(SHADOW);
    expect([Number(shadow.mode) & 0o7777, Number(shadow.gid), shadow.mtimeNs]).toEqual([0o640, 42, T1]);
    const status = lstatSync(path.join(root, "var/lib/dpkg/status"), { bigint: true });
    expect([status.ino, status.mtimeNs]).toEqual([statusBefore.ino, statusBefore.mtimeNs]);
    expect(mtimeOf(path.join(root, "var/lib/dpkg"))).toBe(dpkgDir);

    const again = await runRestore(appSrc, opts(root, SPEC)).done;
    expect(again.errors).toEqual(NOTHERE);
    expect({ put: again.putOps, del: again.deleted, meta: again.metaOps }).toEqual({
      put: 0,
      del: 0,
      meta: 0,
    });
    expect(diff(exp, root, NOW_LITERALS)).toEqual([]);
  });

  it("an update whose new version drops a file deletes that file (the removal set) and nothing else", async () => {
    const base = tmp("strata-layer-update-");
    const v1 = path.join(base, "v1");
    put(v1, "usr/share/app/a", "a, v1\n", { t: T1 });
    put(v1, "usr/share/app/b", "b\n", { t: T1 });
    put(v1, "usr/share/app/c", "c: dropped by v2\n", { t: T1 });
    put(v1, "etc/app.conf", "v=1\n", { t: T1 });
    settleDirs(v1, T1);
    const v2 = path.join(base, "v2");
    put(v2, "usr/share/app/a", "a, v2\n", { t: T1 + 1n });
    put(v2, "usr/share/app/b", "b\n", { t: T1 });
    put(v2, "usr/share/app/d", "d: new in v2\n", { t: T1 });
    put(v2, "etc/app.conf", "v=2\n", { t: T1 + 1n });
    settleDirs(v2, T1);
    const s1 = await snapshotOf(repo, v1);
    const s2 = await snapshotOf(repo, v2);

    const root = endpointCopy();
    const r1 = await runRestore(s1, opts(root, {})).done;
    expect(r1.errors).toEqual([]);
    expect(r1.deleted).toBe(0);
    const afterV1 = tmp("strata-after-v1-");
    copyTree(root, afterV1);
    expect(readFileSync(path.join(root, "usr/share/app/c"), "utf8")).toContain("dropped");

    const r2 = await runRestore(s2, opts(root, { removable: ["/usr/share/app/c"] })).done;
    expect(r2.errors).toEqual([]);
    expect(r2.deleted).toBe(1);
    const exp = tmp("strata-expected-");
    copyTree(afterV1, exp);
    rmSync(path.join(exp, "usr/share/app/c"));
    overlay(v2, exp, []);
    expect(diff(exp, root)).toEqual([]);
    expect(existsSync(path.join(root, "usr/bin/oldtool"))).toBe(true);
    expect(readFileSync(path.join(root, "usr/share/app/a"), "utf8")).toBe("a, v2\n");
  });

  it("enforce remove deletes machine-area files the image lacks; user area, excluded, identity and do-not-override stay", async () => {
    const base = tmp("strata-layer-enforce-");
    const img = path.join(base, "img");
    buildSmallRoot(img);
    for (const p of ["home/alice", "root", "etc/machine-id", "etc/ssh/ssh_host_ed25519_key"]) {
      rmSync(path.join(img, p), { recursive: true });
    }
    settleDirs(img);
    const src = await snapshotOf(repo, img);
    const root = endpointCopy();
    put(root, "srv/keep/site.conf", "do not override\n");
    put(root, "srv/other", "machine area, not in the image\n");
    put(root, "home/alice/newer.txt", "user data\n");
    put(root, "tmp/keep", "excluded\n");
    put(root, "var/cache/apt/new.deb", "excluded\n");
    settleDirs(path.join(root, "srv"));
    const srvTime = mtimeOf(path.join(root, "srv"));

    const spec: LayerSpec = { enforceRemove: true, doNotOverride: ["/srv/keep", "/etc/jq/local.conf"] };
    const r = await runRestore(src, opts(root, spec)).done;
    expect(r.errors).toEqual([]);
    for (const gone of ["usr/local/bin/mine", "usr/bin/oldtool", "usr/share/oldapp", "opt", "srv/other"]) {
      expect(existsSync(path.join(root, gone)), gone).toBe(false);
    }
    for (const kept of [
      "srv/keep/site.conf",
      "etc/jq/local.conf",
      "home/alice/newer.txt",
      "home/alice/notes.txt",
      "root/.profile",
      "tmp/keep",
      "tmp/scratch",
      "var/cache/apt/new.deb",
      "etc/machine-id",
      "etc/ssh/ssh_host_ed25519_key",
    ]) {
      expect(existsSync(path.join(root, kept)), kept).toBe(true);
    }
    // A directory kept for what it holds keeps its own time.
    expect(mtimeOf(path.join(root, "srv"))).toBe(srvTime);
    // Everything else is the image's.
    expect(
      diff(img, root, /(^| )(home\/alice|root|tmp|var\/cache|srv|etc\/jq)(\/|$)|etc\/machine-id|ssh_host_/),
    ).toEqual([]);
    const again = await runRestore(src, opts(root, spec)).done;
    expect(changes(again)).toBe(0);
  });

  it('a user-installed directory the removal set lies below ("below") loses only its removable entries', async () => {
    const root = endpointCopy();
    const dirs = ["opt", "opt/userapp", "opt/userapp/sub", "usr/share/oldapp"];
    const before = dirs.map((d) => mtimeOf(path.join(root, d)));
    const spec: LayerSpec = {
      // oldapp is removable, but b (not in the set) was put there by the user: oldapp stays for it.
      removable: [
        "/opt/userapp/plugin.so",
        "/opt/userapp/sub/x.so",
        "/usr/share/oldapp",
        "/usr/share/oldapp/a",
      ],
    };
    const r = await runRestore(appSrc, opts(root, spec)).done;
    expect(r.errors).toEqual([]);
    expect(r.deleted).toBe(3);
    expect(readdirSync(path.join(root, "opt/userapp")).sort()).toEqual(["data.db", "sub"]);
    expect(readdirSync(path.join(root, "opt/userapp/sub"))).toEqual(["keep"]);
    expect(readdirSync(path.join(root, "usr/share/oldapp"))).toEqual(["b"]);
    expect(dirs.map((d) => mtimeOf(path.join(root, d)))).toEqual(before);
    const again = await runRestore(appSrc, opts(root, spec)).done;
    expect(changes(again)).toBe(0);
  });

  it("deferApply stages and commits without changing the root; recoverPendingRestore applies it", async () => {
    // Literals with the image's metadata only, so the two runs give identical trees.
    const spec: LayerSpec = { ...SPEC, literals: { "/etc/shadow": SHADOW, "/var/lib/dpkg/status": STATUS } };
    const expected = endpointCopy();
    expect((await runRestore(appSrc, opts(expected, spec)).done).errors).toEqual([]);

    const root = endpointCopy();
    const stateDir = tmp("strata-state-");
    const r = await runRestore(appSrc, opts(root, spec, { stateDir, deferApply: true })).done;
    expect(r.pending).toBe(true);
    expect(r.putOps).toBeGreaterThan(0);
    expect(r.deleted).toBe(2);
    expect(diff(endpoint, root)).toEqual([]);
    expect(hasPendingRestore(stateDir)).toBe(true);
    // Planning again before the pending one is applied would plan against the wrong root.
    await expect(runRestore(appSrc, opts(root, spec, { stateDir, id: "next" })).done).rejects.toMatchObject({
      code: "LOCKED",
    });

    expect(await recoverPendingRestore(stateDir, "/nonexistent")).toEqual([
      { outcome: "rolled-forward", id: "apply" },
    ]);
    expect(hasPendingRestore(stateDir)).toBe(false);
    expect(readdirSync(path.join(stateDir, "restore"))).toEqual([]);
    expect(diff(expected, root)).toEqual([]);
  });

  it("refuses streaming, missing layer options and bad literal paths, before touching anything", async () => {
    const root = endpointCopy();
    await expect(runRestore(appSrc, opts(root, SPEC, { streaming: true })).done).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringContaining("cannot stream"),
    });
    const { layer: _layer, ...noLayer } = opts(root, SPEC);
    await expect(runRestore(appSrc, noLayer).done).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(
      runRestore(appSrc, opts(root, { literals: { "/etc/../shadow": "x" } })).done,
    ).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringContaining("/etc/../shadow") });
    expect(diff(endpoint, root)).toEqual([]);
  });
});
