/**
 * Single-file restore by an endpoint's user (restore.md, "Single files"):
 * the agent side (user socket + relay) runs here over a real repository;
 * the user side is the real `strata agent restore-file`, spawned as uid
 * 1000 (alice). She gets her own files back, in place or elsewhere, written
 * as herself; paths outside her home are refused, whatever their spelling;
 * and the synthetic tree she is handed opens nothing but her path.
 */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { type BlobId, chunkIdsOf, compilePolicy, defaultPolicy, parsePasswd } from "@strata/core";
import { native } from "@strata/fs";
import { Backup, type Repository } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LocalRestoreSource } from "../src/restore/local-source.js";
import { type UserRestoreDeps, userRestoreHandler } from "../src/restore/user-relay.js";
import { startUserServer, type UserConnection, type UserServer, userSocketPath } from "../src/user-socket.js";
import { closeTestRepo, createTestRepo, noise } from "./restore-helpers.js";

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../bin/strata.js");
const isRoot = process.getuid?.() === 0;
const ALICE = 1000;

describe.skipIf(!isRoot)("strata agent restore-file, as the user (needs root to act as uid 1000)", () => {
  const base = path.join(tmpdir(), `strata-user-restore-${process.pid}`);
  const root = path.join(base, "root");
  const state = path.join(base, "state");
  let repo: Repository;
  let server: UserServer;
  let deps: UserRestoreDeps;

  const put = (rel: string, data: string | Buffer, uid = 0) => {
    const p = path.join(root, rel);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, data);
    chownSync(p, uid, uid);
  };

  beforeAll(async () => {
    rmSync(base, { recursive: true, force: true });
    mkdirSync(state, { recursive: true, mode: 0o700 });
    put(
      "etc/passwd",
      "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/bash\n",
    );
    put("etc/shadow", "root:secret-hash:::::::\n");
    put("home/alice/docs/report.txt", "alice's report\n", ALICE);
    put("home/alice/docs/big.bin", noise(3_000_000, 7), ALICE);
    put("home/alice/photo.jpg", noise(200_000, 9), ALICE);
    put("home/bob/secret.txt", "bob's secret\n", 1001);
    chownSync(path.join(root, "home/alice"), ALICE, ALICE);
    chownSync(path.join(root, "home/alice/docs"), ALICE, ALICE);
    chmodSync(base, 0o755);
    repo = await createTestRepo(path.join(base, "repo"));
    const { snapshot } = await new Backup(repo, { paths: [root], threads: 1 }).run();
    const policy = compilePolicy(defaultPolicy("p", "test"), {
      homes: parsePasswd(readFileSync(path.join(root, "etc/passwd"), "utf8")),
      agentStateDir: "/var/lib/strata-agent",
    });
    deps = {
      root,
      policy: () => policy,
      open: (_sel, dir) => LocalRestoreSource.open(repo, snapshot, { path: path.join(root, dir) }),
    };
    server = await startUserServer(state, userRestoreHandler(deps));
  });
  afterAll(async () => {
    await server?.close();
    if (repo) await closeTestRepo(repo);
    rmSync(base, { recursive: true, force: true });
  });

  /** The CLI as alice; async, since the agent side answers from this very process. */
  function asAlice(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const child = spawn(process.execPath, [BIN, ...args, "--state", state], {
      uid: ALICE,
      gid: ALICE,
      env: { PATH: process.env.PATH, HOME: path.join(root, "home/alice") },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    return new Promise((resolve) =>
      child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr })),
    );
  }

  it("the socket is 0666 in a directory users can reach, the state directory stays 0700", () => {
    expect(statSync(userSocketPath(state)).mode & 0o777).toBe(0o666);
    expect(statSync(path.dirname(userSocketPath(state))).mode & 0o777).toBe(0o755);
    expect(statSync(state).mode & 0o777).toBe(0o700);
  });

  it("alice gets a deleted folder back in place, written as herself", async () => {
    rmSync(path.join(root, "home/alice/docs"), { recursive: true });
    const r = await asAlice("agent", "restore-file", path.join("/home/alice/docs"), "--json");
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.restoredTo).toBe(path.join(root, "home/alice/docs"));
    expect(out.errors).toEqual([]);
    expect(readFileSync(path.join(root, "home/alice/docs/report.txt"), "utf8")).toBe("alice's report\n");
    expect(readFileSync(path.join(root, "home/alice/docs/big.bin")).equals(noise(3_000_000, 7))).toBe(true);
    expect(statSync(path.join(root, "home/alice/docs/big.bin")).uid).toBe(ALICE);
  });

  it("alice restores a file into another folder with --to", async () => {
    const to = path.join(base, "alice-out");
    mkdirSync(to);
    chownSync(to, ALICE, ALICE);
    const r = await asAlice("agent", "restore-file", "/home/alice/photo.jpg", "--to", to);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/restored \/home\/alice\/photo\.jpg from snapshot/);
    expect(readFileSync(path.join(to, "photo.jpg")).equals(noise(200_000, 9))).toBe(true);
    expect(statSync(path.join(to, "photo.jpg")).uid).toBe(ALICE);
  });

  it("paths outside her user area are refused, however they are spelled", async () => {
    const to = path.join(base, "alice-out2");
    mkdirSync(to);
    chownSync(to, ALICE, ALICE);
    for (const p of ["/etc/shadow", "/home/bob/secret.txt", "/home/alice/../bob/secret.txt", "/home", "/"]) {
      const r = await asAlice("agent", "restore-file", p, "--to", to);
      expect(r.code, `${p}: ${r.stdout}`).not.toBe(0);
      expect(r.stderr).toMatch(/outside your user area/);
    }
    expect(spawnSync("ls", ["-A", to], { encoding: "utf8" }).stdout).toBe("");
  });

  it("a path missing from the snapshot is NOT_FOUND, named", async () => {
    const r = await asAlice("agent", "restore-file", "/home/alice/never-there.txt", "--to", base);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/\/home\/alice\/never-there\.txt is not in snapshot/);
  });

  it("the synthetic tree opens only her path: chunks of a sibling are refused", async () => {
    const handler = userRestoreHandler(deps);
    const conn: UserConnection = {
      peer: { pid: 1, uid: ALICE, gid: ALICE },
      state: new Map(),
      onClose: () => {},
    };
    const parts: unknown[] = [];
    const part = async (p: unknown) => {
      parts.push(p);
    };
    const opened = (await handler({ cmd: "restore-open", path: "/home/alice/photo.jpg" }, conn, part)) as {
      handle: string;
      root: { id: string };
    };
    // The folder's tree, seen by root: the sibling docs/ and its chunk ids.
    const src = await deps.open({}, "/home/alice");
    const folder = await src.loadTree(src.snapshot.root);
    const photo = folder.nodes.find((n) => n.name.toString() === "photo.jpg")!;
    const docs = folder.nodes.findIndex((n) => n.name.toString() === "docs");
    const docsTree = await src.loadTree(folder.subtrees[docs]!);
    const big = docsTree.nodes.find((n) => n.name.toString() === "big.bin")!;
    const tree = (await handler(
      { cmd: "restore-tree", handle: opened.handle, ref: opened.root },
      conn,
      part,
    )) as {
      treeB64: string;
    };
    expect(Buffer.from(tree.treeB64, "base64").includes(Buffer.from("docs"))).toBe(false);
    await expect(
      handler(
        {
          cmd: "restore-chunks",
          handle: opened.handle,
          requests: [{ tree: opened.root, ids: [...chunkIdsOf(big)].slice(0, 1) }],
        },
        conn,
        part,
      ),
    ).rejects.toThrow(/not part of this restore/);
    const own = [...chunkIdsOf(photo)] as BlobId[];
    const r = (await handler(
      { cmd: "restore-chunks", handle: opened.handle, requests: [{ tree: opened.root, ids: own }] },
      conn,
      part,
    )) as { chunks: number };
    expect(r.chunks).toBe(own.length);
    expect(native.peerCred).toBeTypeOf("function");
  });
});
