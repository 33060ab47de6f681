/**
 * The restore protocol, restore tasks and a CVD's history through the whole
 * HTTP stack (app.inject), on SQLite and PostgreSQL: snapshots are uploaded
 * by the real agent upload over the upload routes, read back by the real
 * RemoteRestoreSource over the restore routes, hash-checked; refusals are
 * checked for forged grants, foreign sessions, foreign and unnamed chunks,
 * roles without restore.run; tasks go through their lifecycle.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { asStrataError, RemoteRestoreSource, type TreeRef, uploadOnce } from "@strata/agent";
import { openPostgresServerStore, openSqliteServerStore, type ServerStore } from "@strata/catalog";
import {
  compilePolicy,
  defaultPolicy,
  encodeTree,
  type FsNode,
  isStrataError,
  type TreeId,
} from "@strata/core";
import { ApiError } from "@strata/protocol";
import { seededBytes } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dropTestSchemas,
  findTestPostgres,
  newTestSchema,
} from "../../../packages/catalog/test/pg-helper.js";
import { cvdTag, snapshotSummaries } from "../src/services/upload-service.js";
import { injectJson, restoreTransport, uploadTransport } from "./agent-transports.js";
import { closers, enroll, enrollmentToken, FACTS, type Harness, makeHarness } from "./suite.js";

process.env.STRATA_SCRYPT_LOG_N = "10";
const PW = "correct horse battery staple";
const API = "/api/v1";
const dir = path.join(tmpdir(), `strata-restore-${process.pid}-${randomBytes(3).toString("hex")}`);
mkdirSync(dir, { recursive: true });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const policy = compilePolicy(defaultPolicy("pol_1", "Default"), {
  homes: ["/home/alice"],
  agentStateDir: "/var/lib/strata-agent",
});

/** Read every regular file of a snapshot through the source: path → content. */
async function readAll(src: RemoteRestoreSource): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const walk = async (ref: TreeRef, prefix: string): Promise<void> => {
    const t = await src.loadTree(ref);
    const wanted: { node: FsNode; path: string }[] = [];
    for (const [i, n] of t.nodes.entries()) {
      const p = `${prefix}/${n.name.toString("utf8")}`;
      if (n.type === "dir") await walk(t.subtrees[i]!, p);
      else if (n.type === "file") wanted.push({ node: n, path: p });
    }
    const ids = [
      ...new Set(wanted.flatMap((w) => (w.node.content ?? []).flatMap((c) => ("id" in c ? [c.id] : [])))),
    ];
    const got = new Map<string, Buffer>();
    if (ids.length) await src.fetchChunks([{ tree: ref, ids }], (id, plain) => void got.set(id, plain));
    for (const w of wanted) {
      files.set(
        w.path,
        Buffer.concat((w.node.content ?? []).map((c) => ("id" in c ? got.get(c.id)! : Buffer.alloc(c.hole)))),
      );
    }
  };
  await walk(src.snapshot.root, "");
  return files;
}

async function rejects(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(isStrataError(e), String(e)).toBe(true);
  return e as { code: string; message: string };
}

function runRestoreSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`restore protocol on ${name}`, () => {
    let h: Harness;
    const eps: Record<string, { endpointId: string; credential: string; cvd: string; root: string }> = {};
    const snaps: string[] = [];
    const admin = () => ({ authorization: `Bearer ${h.adminToken}` });
    const tokens: Record<string, string> = {};

    async function userToken(user: string, role: string): Promise<string> {
      const c = await h.app.inject({
        method: "POST",
        url: `${API}/users`,
        headers: admin(),
        payload: { name: user, role, password: PW, mustChangePassword: false },
      });
      expect(c.statusCode, c.body).toBe(201);
      const l = await h.app.inject({
        method: "POST",
        url: `${API}/auth/login`,
        payload: { user, password: PW },
      });
      return l.json().token;
    }

    async function upload(ep: string, parent: string | null): Promise<string> {
      const e = eps[ep]!;
      const r = await uploadOnce({
        transport: uploadTransport(h, e.credential),
        cvdId: e.cvd,
        root: e.root,
        policy,
        parent,
        hostname: ep,
      });
      expect(r.errors).toEqual([]);
      return r.snapshot;
    }

    beforeAll(async () => {
      h = await makeHarness(open, { snapshotsOf: (cvd) => snapshotSummaries(h.repo, cvd) });
      const auto = await enrollmentToken(h, { uses: 2, autoApprove: true });
      for (const [i, ep] of ["a", "b"].entries()) {
        const r = (await enroll(h, auto.token, FACTS(7000 + i))).json();
        const self = await injectJson(h, r.credential)<{ cvd: { id: string } }>("GET", "/agent/self");
        const root = path.join(dir, `${name}-${ep}`);
        eps[ep] = { endpointId: r.endpointId, credential: r.credential, cvd: self.cvd.id, root };
        mkdirSync(path.join(root, "etc"), { recursive: true });
        mkdirSync(path.join(root, "home/alice/docs"), { recursive: true });
        writeFileSync(path.join(root, "etc/hostname"), `${ep}\n`);
        writeFileSync(path.join(root, "home/alice/docs/a.txt"), `first version of ${ep}\n`);
        writeFileSync(path.join(root, "home/alice/docs/big.bin"), seededBytes(300_000, `big-${ep}`));
        writeFileSync(path.join(root, "home/alice/docs/old.txt"), `deleted later ${ep}\n`);
        writeFileSync(path.join(root, "home/alice/secret.bin"), seededBytes(90_000, `secret-${ep}`));
      }
      snaps.push(await upload("a", null));
      await upload("b", null);
      // Later: old.txt deleted, a.txt changed.
      h.now.t += 3_600_000;
      unlinkSync(path.join(eps.a!.root, "home/alice/docs/old.txt"));
      writeFileSync(path.join(eps.a!.root, "home/alice/docs/a.txt"), "second version\n");
      snaps.push(await upload("a", snaps[0]!));
      tokens.readonly = await userToken(`ro-${name}`, "Read-only");
      tokens.helpdesk = await userToken(`hd-${name}`, "Help Desk");
    }, 120_000);
    afterAll(async () => {
      await h?.app.close();
      await h?.store.close();
      for (const c of closers.splice(0)) await c();
    });

    it("an endpoint reads its own latest snapshot: every tree and chunk hash-checked, wire chunks decoded; the restore is a transaction", async () => {
      const a = eps.a!;
      const src = await RemoteRestoreSource.open(restoreTransport(h, a.credential), a.cvd);
      expect(src.snapshot.id).toBe(snaps[1]);
      expect(src.chunker.maxSize).toBeGreaterThan(0);
      const files = await readAll(src);
      for (const f of [
        "/etc/hostname",
        "/home/alice/docs/a.txt",
        "/home/alice/docs/big.bin",
        "/home/alice/secret.bin",
      ])
        expect(files.get(f)?.equals(readFileSync(path.join(a.root, f))), f).toBe(true);
      expect(files.has("/home/alice/docs/old.txt")).toBe(false);
      expect(src.stats.chunksReceived).toBeGreaterThan(3);
      // big.bin is random: sent as it is stored, never larger than it plus frame headers.
      expect(src.stats.bytesReceived).toBeGreaterThan(390_000);
      expect(src.stats.bytesReceived).toBeLessThan(450_000);
      // The node's chunk streams read under one shared lease, reused by the next request and
      // kept a moment after the last stream (not taken and given back per request).
      const serveLeases = async () =>
        (await h.repo.catalog.listLeases(new Date())).filter((l) => l.holder.includes("restore-serve"));
      const held = await serveLeases();
      expect(held).toHaveLength(1);
      expect(held[0]).toMatchObject({ name: "repo", mode: "shared" });
      await readAll(src);
      expect((await serveLeases()).map((l) => [l.holder, l.acquiredAt])).toEqual([
        [held[0]!.holder, held[0]!.acquiredAt],
      ]);
      await src.close();
      await src.close(); // idempotent
      await h.services.restores!.releaseStreamLease();
      expect(await serveLeases()).toEqual([]);
      const tx = (
        await h.app.inject({ method: "GET", url: `${API}/cvds/${a.cvd}/transactions`, headers: admin() })
      ).json() as { kind: string; state: string; bytesSent: number; openedBy?: string; treesSent?: number }[];
      const restore = tx.find((t) => t.kind === "restore");
      expect(restore).toMatchObject({ state: "closed", openedBy: `endpoint:${a.endpointId}` });
      expect(restore!.bytesSent).toBe(src.stats.bytesReceived);
      expect(restore!.treesSent).toBe(10); // /, etc, home, alice, docs — read twice above
      expect(tx.filter((t) => t.kind !== "restore")).toHaveLength(2);
      // A closed session serves nothing more.
      expect((await rejects(src.loadTree(src.snapshot.root))).code).toBe("SESSION_EXPIRED");
    });

    it("a tampered chunk or tree is refused by the source, never handed on", async () => {
      const a = eps.a!;
      let tamper: ((b: Buffer) => Buffer) | undefined;
      const src = await RemoteRestoreSource.open(
        restoreTransport(h, a.credential, (b) => (tamper ? tamper(b) : b)),
        a.cvd,
      );
      // A bit of the tree frame's payload (the JSON grants frame comes last).
      tamper = (b) => {
        const c = Buffer.from(b);
        c[45]! ^= 0x40;
        return c;
      };
      const e1 = await rejects(src.loadTree(src.snapshot.root));
      expect(["DATA_CORRUPT", "INVALID_ARGUMENT"]).toContain(e1.code);
      tamper = undefined;
      const root = await src.loadTree(src.snapshot.root);
      const etc = root.subtrees[root.nodes.findIndex((n) => n.name.toString() === "etc")]!;
      const host = (await src.loadTree(etc)).nodes.find((n) => n.name.toString() === "hostname")!;
      const id = (host.content![0] as { id: string }).id as never;
      // The last byte of the only chunk frame.
      tamper = (b) => {
        const c = Buffer.from(b);
        c[c.length - 1]! ^= 1;
        return c;
      };
      const delivered: string[] = [];
      const e2 = await rejects(
        src.fetchChunks([{ tree: etc, ids: [id] }], (cid) => void delivered.push(cid)),
      );
      expect(e2.code).toBe("DATA_CORRUPT");
      expect(delivered).toEqual([]);
      tamper = undefined;
      await src.fetchChunks([{ tree: etc, ids: [id] }], (cid) => void delivered.push(cid));
      expect(delivered).toEqual([id]);
      await src.close();
    });

    it("a tree the repository stores as a delta (an upload or a local backup wrote it) is sent in full", async () => {
      const a = eps.a!;
      const latest = (await h.repo.catalog.listSnapshots({ tag: cvdTag(a.cvd) })).pop()!;
      let file: FsNode | undefined;
      for await (const { node } of h.repo.walk(latest.tree))
        if (node.name.toString() === "a.txt") file = node;
      // A directory big enough for deltas, and a second version with one entry changed.
      const many = Array.from({ length: 60 }, (_, i) => ({
        ...file!,
        name: Buffer.from(`f${String(i).padStart(2, "0")}`),
      }));
      const enc1 = encodeTree(many);
      const id1 = createHash("sha256").update(enc1).digest("hex") as TreeId;
      await h.repo.saveTreeEncoded(id1, enc1, null);
      await h.repo.flush();
      many[30] = { ...many[30]!, mtimeNs: 7n };
      const enc2 = encodeTree(many);
      const id2 = createHash("sha256").update(enc2).digest("hex") as TreeId;
      await h.repo.saveTreeEncoded(id2, enc2, id1);
      await h.repo.flush();
      expect(await h.repo.storedTreeBase(id2)).toBe(id1);
      const rootNodes = [...(await h.repo.loadTree(latest.tree))];
      rootNodes.push({
        ...rootNodes.find((n) => n.type === "dir")!,
        name: Buffer.from("zz-many"),
        subtree: id2,
      });
      const root = await h.repo.saveTree(rootNodes);
      const { id: _id, ...rest } = latest;
      const snap = await h.repo.saveSnapshot({ ...rest, tree: root, parent: latest.id });
      try {
        const src = await RemoteRestoreSource.open(restoreTransport(h, a.credential), a.cvd, {
          snapshot: snap.id,
        });
        const top = await src.loadTree(src.snapshot.root);
        const i = top.nodes.findIndex((n) => n.name.toString() === "zz-many");
        // The source hash-checks what it gets: the full tree, not the stored
        // delta, compressed on the wire like a tree stored full.
        const before = src.stats.bytesReceived;
        const t = await src.loadTree(top.subtrees[i]!);
        expect(encodeTree(t.nodes).equals(enc2)).toBe(true);
        expect(src.stats.bytesReceived - before).toBeLessThan(enc2.length / 2);
        const got: string[] = [];
        await src.fetchChunks(
          [{ tree: top.subtrees[i]!, ids: [(file!.content![0] as { id: string }).id as never] }],
          (cid) => void got.push(cid),
        );
        expect(got).toHaveLength(1);
        await src.close();
      } finally {
        await h.repo.removeSnapshots([snap.id]);
      }
    });

    it("several trees in one request: the same listings as one by one; grants checked before anything is sent", async () => {
      const a = eps.a!;
      const asA = restoreTransport(h, a.credential);
      const src = await RemoteRestoreSource.open(asA, a.cvd);
      const root = await src.loadTree(src.snapshot.root);
      const refs = root.subtrees.filter((r): r is TreeRef => !!r);
      const home = await src.loadTree(refs[1]!);
      const batch = [src.snapshot.root, ...refs, home.subtrees[0]!];
      const got: [number, string[]][] = [];
      const before = src.stats.bytesReceived;
      await src.loadTrees(batch, (i, t) => got.push([i, t.nodes.map((n) => n.name.toString())]));
      const bytes = src.stats.bytesReceived - before;
      const one: [number, string[]][] = [];
      for (const [i, r] of batch.entries())
        one.push([i, (await src.loadTree(r)).nodes.map((n) => n.name.toString())]);
      expect(got).toEqual(one);
      expect(got.map(([i]) => i)).toEqual([0, 1, 2, 3]);
      // Grants of the batch's listings open the next level, as single answers' do.
      let alice: TreeRef | undefined;
      await src.loadTrees([refs[1]!, refs[0]!], (i, t) => {
        if (i === 0) alice = t.subtrees[0];
      });
      expect((await src.loadTree(alice!)).nodes.map((n) => n.name.toString())).toContain("secret.bin");

      const post = (body: unknown, secret = a.credential, session = src.session) =>
        h.app.inject({
          method: "POST",
          url: `${API}/restores/${session}/trees`,
          headers: { authorization: `Bearer ${secret}`, "strata-protocol": "1" },
          payload: body as object,
        });
      const ok = await post({ trees: batch.map((r) => ({ id: r.id, grant: r.grant })) });
      expect(ok.statusCode).toBe(200);
      expect(ok.rawPayload.length).toBe(bytes);
      // One forged grant among good ones: refused whole, nothing sent.
      const forged = await post({
        trees: [
          { id: batch[0]!.id, grant: batch[0]!.grant },
          { id: alice!.id, grant: "A".repeat(22) },
        ],
      });
      expect(forged.statusCode).toBe(403);
      expect(forged.json().error.code).toBe("PERMISSION_DENIED");
      // A grant opens only its own tree, in a batch too.
      const swapped = await post({ trees: [{ id: refs[0]!.id, grant: refs[1]!.grant }] });
      expect(swapped.json().error.code).toBe("PERMISSION_DENIED");
      // Another endpoint cannot use A's session; B's session with A's grants is refused.
      const b = eps.b!;
      expect((await post({ trees: [{ id: alice!.id, grant: alice!.grant }] }, b.credential)).statusCode).toBe(
        404,
      );
      const srcB = await RemoteRestoreSource.open(restoreTransport(h, b.credential), b.cvd);
      expect(
        (await post({ trees: [{ id: alice!.id, grant: alice!.grant }] }, b.credential, srcB.session)).json()
          .error.code,
      ).toBe("PERMISSION_DENIED");
      // Oversized: 413 before any grant is checked; malformed: 400 with a message.
      const many = Array.from({ length: 257 }, () => ({ id: batch[0]!.id, grant: batch[0]!.grant }));
      const big = await post({ trees: many });
      expect(big.statusCode).toBe(413);
      expect(big.json().error.code).toBe("TOO_LARGE");
      for (const body of [
        { trees: [] },
        { trees: [{ id: "xyz", grant: batch[0]!.grant }] },
        { trees: [{ id: batch[0]!.id, grant: "short" }] },
        { trees: [{ id: batch[0]!.id }] },
        { trees: "all" },
        { nope: 1 },
      ]) {
        const r = await post(body);
        expect(r.statusCode, r.body).toBe(400);
        expect(r.json().error.message.length).toBeGreaterThan(5);
      }
      // A tree the repository lacks (a grant for it can only come from the server): NOT_FOUND.
      const ghost = "f".repeat(64);
      const missing = await post({
        trees: [{ id: ghost, grant: h.services.restores!.grant(src.session, ghost) }],
      });
      expect(missing.statusCode).toBe(404);
      // A server without the route (older): the source asks tree by tree.
      const posts: string[] = [];
      const older = await RemoteRestoreSource.open(
        {
          json: asA.json,
          frames: (m, p, body, signal) => {
            if (m === "POST" && p.endsWith("/trees")) {
              posts.push(p);
              return Promise.reject(
                asStrataError(new ApiError(404, { code: "NOT_FOUND", message: `no route POST /api/v1${p}` })),
              );
            }
            return asA.frames(m, p, body, signal);
          },
        },
        a.cvd,
      );
      const olderRoot = await older.loadTree(older.snapshot.root);
      const olderBatch = [older.snapshot.root, ...olderRoot.subtrees.filter((r): r is TreeRef => !!r)];
      const viaOld: [number, string[]][] = [];
      await older.loadTrees(olderBatch, (i, t) => viaOld.push([i, t.nodes.map((n) => n.name.toString())]));
      await older.loadTrees(olderBatch, () => {});
      expect(viaOld).toEqual(one.slice(0, 3));
      expect(posts).toHaveLength(1);
      await older.close();
      await srcB.close();
      await src.close();
    });

    it("refuses foreign sessions, forged grants, chunks not named by the granted tree, malformed requests", async () => {
      const a = eps.a!;
      const b = eps.b!;
      const asA = restoreTransport(h, a.credential);
      const src = await RemoteRestoreSource.open(asA, a.cvd);
      const root = await src.loadTree(src.snapshot.root);
      const at = (name: string) => root.subtrees[root.nodes.findIndex((n) => n.name.toString() === name)]!;
      const home = await src.loadTree(at("home"));
      const alice = home.subtrees[0]!;
      const aliceTree = await src.loadTree(alice);
      const secret = aliceTree.nodes.find((n) => n.name.toString() === "secret.bin")!;
      const secretChunk = (secret.content![0] as { id: string }).id;

      // Another endpoint: cannot open on A's CVD, cannot use A's session.
      const asB = restoreTransport(h, b.credential);
      expect((await rejects(RemoteRestoreSource.open(asB, a.cvd))).code).toBe("NOT_FOUND");
      const srcB = await RemoteRestoreSource.open(asB, b.cvd);
      const viaB = await rejects(
        asB.frames("GET", `/restores/${src.session}/trees/${alice.id}?grant=${alice.grant}`),
      );
      expect(viaB.code).toBe("NOT_FOUND");
      // B's own session with A's grant (grants are per session), or a forged one.
      const foreign = await rejects(srcB.loadTree(alice));
      expect(foreign.code).toBe("PERMISSION_DENIED");
      const forged = await rejects(src.loadTree({ id: alice.id, grant: "A".repeat(22) }));
      expect(forged.code).toBe("PERMISSION_DENIED");
      // A grant opens only its own tree.
      expect((await rejects(src.loadTree({ id: at("etc").id, grant: alice.grant! }))).code).toBe(
        "PERMISSION_DENIED",
      );
      // B knows the hash of A's secret chunk: asking for it through any tree B may read is refused,
      // exactly like a chunk that exists nowhere.
      const bRoot = await srcB.loadTree(srcB.snapshot.root);
      const bEtc = bRoot.subtrees[bRoot.nodes.findIndex((n) => n.name.toString() === "etc")]!;
      const stolen = await rejects(srcB.fetchChunks([{ tree: bEtc, ids: [secretChunk as never] }], () => {}));
      const nowhere = "e".repeat(64);
      const none = await rejects(srcB.fetchChunks([{ tree: bEtc, ids: [nowhere as never] }], () => {}));
      expect(stolen.code).toBe("NOT_FOUND");
      expect(none.code).toBe("NOT_FOUND");
      expect(stolen.message.replace(secretChunk, "X")).toBe(none.message.replace(nowhere, "X"));
      // Even A: a chunk of alice's file is not served through the etc tree.
      expect(
        (await rejects(src.fetchChunks([{ tree: at("etc"), ids: [secretChunk as never] }], () => {}))).code,
      ).toBe("NOT_FOUND");
      // Malformed: 400 with a message, never 500.
      const post = (body: unknown) =>
        h.app.inject({
          method: "POST",
          url: `${API}/restores/${src.session}/chunks`,
          headers: { authorization: `Bearer ${a.credential}`, "strata-protocol": "1" },
          payload: body as object,
        });
      for (const body of [
        { requests: [] },
        { requests: [{ tree: "xyz", grant: alice.grant, ids: [secretChunk] }] },
        { requests: [{ tree: alice.id, grant: "short", ids: [secretChunk] }] },
        { requests: [{ tree: alice.id, grant: alice.grant, ids: ["NOT-HEX"] }] },
        { nope: 1 },
      ]) {
        const r = await post(body);
        expect(r.statusCode, r.body).toBe(400);
        expect(r.json().error.message.length).toBeGreaterThan(5);
      }
      const badTree = await h.app.inject({
        method: "GET",
        url: `${API}/restores/${src.session}/trees/zz?grant=${alice.grant}`,
        headers: { authorization: `Bearer ${a.credential}`, "strata-protocol": "1" },
      });
      expect(badTree.statusCode).toBe(400);
      // Paths: a file names its parent directory and the entry; missing and hostile ones are refused.
      const file = await RemoteRestoreSource.open(asA, a.cvd, { path: "/home/alice/docs/a.txt" });
      expect(file.info.node).toMatchObject({ name: "a.txt", type: "file" });
      expect((await file.loadTree(file.snapshot.root)).nodes.map((n) => n.name.toString())).toEqual([
        "a.txt",
        "big.bin",
      ]);
      expect((await rejects(RemoteRestoreSource.open(asA, a.cvd, { path: "/home/nobody" }))).code).toBe(
        "NOT_FOUND",
      );
      expect((await rejects(RemoteRestoreSource.open(asA, a.cvd, { path: "/home/../etc" }))).code).toBe(
        "INVALID_ARGUMENT",
      );
      // An old snapshot by prefix.
      const old = await RemoteRestoreSource.open(asA, a.cvd, {
        snapshot: snaps[0]!.slice(0, 10),
        path: "/home/alice/docs",
      });
      expect((await old.loadTree(old.snapshot.root)).nodes.map((n) => n.name.toString())).toContain(
        "old.txt",
      );
      // Idle sessions expire after an hour.
      h.now.t += 2 * 3_600_000;
      expect((await rejects(src.loadTree(alice))).code).toBe("SESSION_EXPIRED");
      for (const s of [srcB, file, old]) await s.close();
    });

    it("a session's use pushes its expiry on before the counters reach the catalog; listing them writes them", async () => {
      const a = eps.a!;
      const src = await RemoteRestoreSource.open(restoreTransport(h, a.credential), a.cvd);
      const root = await src.loadTree(src.snapshot.root);
      // Used every 50 minutes: never idle for an hour, though the catalog has not been written yet.
      for (let i = 0; i < 3; i++) {
        h.now.t += 50 * 60_000;
        await src.loadTree(src.snapshot.root);
      }
      const tx = (
        await h.app.inject({ method: "GET", url: `${API}/cvds/${a.cvd}/transactions`, headers: admin() })
      ).json() as { id: string; state: string; bytesSent: number; treesSent?: number }[];
      expect(tx.find((t) => t.id === src.session)).toMatchObject({
        state: "open",
        treesSent: 4,
        bytesSent: src.stats.bytesReceived,
      });
      expect(root.nodes.length).toBeGreaterThan(0);
      h.now.t += 61 * 60_000;
      expect((await rejects(src.loadTree(src.snapshot.root))).code).toBe("SESSION_EXPIRED");
    });

    it("users: restore.run opens sessions (audited, usable only by their opener); Read-only is refused", async () => {
      const a = eps.a!;
      const ro = await h.app.inject({
        method: "POST",
        url: `${API}/cvds/${a.cvd}/restores`,
        headers: { authorization: `Bearer ${tokens.readonly}` },
        payload: {},
      });
      expect(ro.statusCode).toBe(403);
      expect(ro.json().error.code).toBe("PERMISSION_DENIED");
      const hd = await RemoteRestoreSource.open(restoreTransport(h, tokens.helpdesk!), a.cvd, {
        path: "/home/alice/docs",
      });
      const docs = await hd.loadTree(hd.snapshot.root);
      expect(docs.nodes.map((n) => n.name.toString())).toEqual(["a.txt", "big.bin"]);
      // The administrator may restore too, but not through the help desk's session.
      const viaAdmin = await rejects(
        restoreTransport(h, h.adminToken).frames(
          "GET",
          `/restores/${hd.session}/trees/${hd.snapshot.root.id}?grant=${hd.snapshot.root.grant}`,
        ),
      );
      expect(viaAdmin.code).toBe("NOT_FOUND");
      // Nor through the endpoint's credential.
      expect(
        (
          await rejects(
            restoreTransport(h, a.credential).frames(
              "GET",
              `/restores/${hd.session}/trees/${hd.snapshot.root.id}?grant=${hd.snapshot.root.grant}`,
            ),
          )
        ).code,
      ).toBe("NOT_FOUND");
      expect(
        (await rejects(RemoteRestoreSource.open(restoreTransport(h, tokens.helpdesk!), "cvd_nothere"))).code,
      ).toBe("NOT_FOUND");
      await hd.close();
      const audit = await h.store.listAudit({ action: "restore.open", limit: 10 });
      expect(audit[0]).toMatchObject({ actor: `hd-${name}`, object: `cvd:${a.cvd}` });
      expect(audit[0]!.detail).toMatchObject({ session: hd.session, path: "/home/alice/docs" });
    });

    it("history: a deleted file shows in the older snapshot only; entries carry versions; pages", async () => {
      const a = eps.a!;
      const get = (q: string, token = h.adminToken) =>
        h.app.inject({
          method: "GET",
          url: `${API}/cvds/${a.cvd}/history?${q}`,
          headers: { authorization: `Bearer ${token}` },
        });
      const r = await get("path=/home/alice/docs");
      expect(r.statusCode, r.body).toBe(200);
      const hist = r.json();
      expect(hist.snapshots.map((s: { id: string }) => s.id)).toEqual([snaps[1], snaps[0]]);
      const by = (n: string) => hist.entries.find((e: { name: string }) => e.name === n);
      expect(hist.entries.map((e: { name: string }) => e.name)).toEqual(["a.txt", "big.bin", "old.txt"]);
      expect(by("old.txt")).toMatchObject({
        present: [1],
        lastSeen: snaps[0],
        firstSeen: snaps[0],
        versions: 1,
      });
      expect(by("a.txt")).toMatchObject({
        present: [0, 1],
        lastSeen: snaps[1],
        firstSeen: snaps[0],
        versions: 2,
      });
      expect(by("big.bin")).toMatchObject({ present: [0, 1], versions: 1, size: 300_000, type: "file" });
      expect(hist.next).toBeNull();
      const p1 = (await get("path=/home/alice/docs&limit=1")).json();
      expect(p1.snapshots.map((s: { id: string }) => s.id)).toEqual([snaps[1]]);
      expect(p1.next).toBe(snaps[1]);
      const p2 = (await get(`path=/home/alice/docs&limit=1&before=${p1.next}`)).json();
      expect(p2.snapshots.map((s: { id: string }) => s.id)).toEqual([snaps[0]]);
      expect(p2.entries.map((e: { name: string }) => e.name)).toContain("old.txt");
      expect(p2.next).toBeNull();
      // A folder absent from a snapshot is marked, not an error; bad paths are 400; browsing needs cvd.browse.
      const none = (await get("path=/nowhere")).json();
      expect(none.snapshots.every((s: { present: boolean }) => !s.present)).toBe(true);
      expect((await get("path=relative")).statusCode).toBe(400);
      expect((await get("path=/a/../b")).statusCode).toBe(400);
      expect((await get("path=/etc", tokens.readonly)).statusCode).toBe(403);
      expect((await get("path=/etc", tokens.helpdesk)).statusCode).toBe(200);
    });

    it("browse: one folder of the latest or an older snapshot; files, missing paths and other CVDs refused clearly", async () => {
      const a = eps.a!;
      const get = (q: string, token = h.adminToken, cvd = a.cvd) =>
        h.app.inject({
          method: "GET",
          url: `${API}/cvds/${cvd}/browse?${q}`,
          headers: { authorization: `Bearer ${token}` },
        });
      const latest = await get("path=/home/alice/docs");
      expect(latest.statusCode, latest.body).toBe(200);
      const b = latest.json();
      expect(b.snapshot.id).toBe(snaps[1]);
      expect(b.path).toBe("/home/alice/docs");
      expect(b.entries.map((e: { name: string }) => e.name)).toEqual(["a.txt", "big.bin"]);
      expect(b.entries[1]).toMatchObject({
        type: "file",
        size: 300_000,
        nameB64: Buffer.from("big.bin").toString("base64"),
      });
      expect(typeof b.entries[0].mode).toBe("number");
      expect(b).toMatchObject({ total: 2, truncated: false });
      // The older snapshot still has the deleted file, by id prefix; the limit truncates.
      const old = (await get(`path=/home/alice/docs&snapshot=${snaps[0]!.slice(0, 12)}`)).json();
      expect(old.snapshot.id).toBe(snaps[0]);
      expect(old.entries.map((e: { name: string }) => e.name)).toEqual(["a.txt", "big.bin", "old.txt"]);
      const one = (await get(`path=/home/alice/docs&snapshot=${snaps[0]}&limit=1`)).json();
      expect(one).toMatchObject({ total: 3, truncated: true });
      expect(one.entries).toHaveLength(1);
      // The root by default; a directory entry is typed.
      const root = (await get("")).json();
      expect(root.path).toBe("/");
      expect(root.entries.find((e: { name: string }) => e.name === "home")).toMatchObject({ type: "dir" });
      // Errors name the path and say what to do.
      const missing = await get("path=/home/alice/nowhere");
      expect(missing.statusCode).toBe(404);
      expect(missing.json().error.message).toMatch(/\/home\/alice\/nowhere is not in snapshot [0-9a-f]{12}/);
      const file = await get("path=/home/alice/docs/a.txt");
      expect(file.statusCode).toBe(400);
      expect(file.json().error.message).toMatch(/is a file .* not a folder/);
      expect((await get("path=/a/../b")).statusCode).toBe(400);
      expect((await get("snapshot=ffffffffffff")).statusCode).toBe(404);
      // Needs cvd.browse; an unknown CVD is 404.
      expect((await get("path=/etc", tokens.readonly)).statusCode).toBe(403);
      expect((await get("path=/etc", tokens.helpdesk)).statusCode).toBe(200);
      expect((await get("path=/", h.adminToken, "cvd_nothere")).statusCode).toBe(404);
    });

    it("tasks: revert queued, listed in agent/self, claimed by its endpoint only, progress, cancel, finish", async () => {
      const a = eps.a!;
      const b = eps.b!;
      const send = (method: "GET" | "POST", url: string, payload?: object, token = h.adminToken) =>
        h.app.inject({
          method,
          url: API + url,
          headers: { authorization: `Bearer ${token}`, "strata-protocol": "1" },
          ...(payload ? { payload } : {}),
        });
      const t1 = await send("POST", `/cvds/${a.cvd}/revert`, {});
      expect(t1.statusCode, t1.body).toBe(201);
      const task = t1.json();
      expect(task).toMatchObject({
        cvd: a.cvd,
        endpoint: a.endpointId,
        kind: "system",
        state: "queued",
        params: { snapshot: snaps[1] },
        createdBy: "user:admin",
      });
      expect((await send("POST", `/cvds/${a.cvd}/revert`, { full: true })).statusCode).toBe(409);
      expect((await send("POST", `/cvds/${a.cvd}/revert`, {}, tokens.readonly)).statusCode).toBe(403);
      const self = (await send("GET", "/agent/self", undefined, a.credential)).json();
      expect(self.tasks).toEqual([{ id: task.id, kind: "system", state: "queued" }]);
      expect((await send("GET", "/agent/self", undefined, b.credential)).json().tasks).toEqual([]);
      // Another endpoint cannot claim or report it.
      expect((await send("POST", `/agent/tasks/${task.id}/start`, undefined, b.credential)).statusCode).toBe(
        404,
      );
      const started = await send("POST", `/agent/tasks/${task.id}/start`, undefined, a.credential);
      expect(started.json()).toMatchObject({ state: "running", params: { snapshot: snaps[1] } });
      // Claimed again after a restart: still running.
      expect(
        (await send("POST", `/agent/tasks/${task.id}/start`, undefined, a.credential)).json().state,
      ).toBe("running");
      const p = await send(
        "POST",
        `/agent/tasks/${task.id}/progress`,
        { progress: { restoredBytes: 10, totalBytes: 100, restoredFiles: 1, totalFiles: 4, usable: false } },
        a.credential,
      );
      expect(p.json()).toEqual({ state: "running" });
      expect(
        (await send("GET", `/tasks/${task.id}`, undefined, tokens.readonly)).json().progress,
      ).toMatchObject({
        restoredBytes: 10,
      });
      const c = await send("POST", `/tasks/${task.id}/cancel`);
      expect(c.json().state).toBe("cancelled");
      expect(
        (
          await send(
            "POST",
            `/agent/tasks/${task.id}/progress`,
            { progress: { restoredBytes: 20 } },
            a.credential,
          )
        ).json(),
      ).toEqual({ state: "cancelled" });
      const fin = await send(
        "POST",
        `/agent/tasks/${task.id}/finish`,
        { error: { code: "ABORTED", message: "cancelled" } },
        a.credential,
      );
      expect(fin.json()).toMatchObject({ state: "cancelled", error: { code: "ABORTED" } });
      expect((await send("POST", `/agent/tasks/${task.id}/start`, undefined, a.credential)).statusCode).toBe(
        409,
      );
      expect((await send("POST", `/tasks/${task.id}/cancel`)).json().state).toBe("cancelled");
      // A full revert to the older snapshot, by prefix; it runs to the end.
      h.now.t += 60_000;
      const t2 = (
        await send("POST", `/cvds/${a.cvd}/revert`, { full: true, snapshot: snaps[0]!.slice(0, 12) })
      ).json();
      expect(t2).toMatchObject({ kind: "full", params: { snapshot: snaps[0] } });
      expect(
        (await send("POST", `/agent/tasks/${t2.id}/finish`, { result: {} }, a.credential)).statusCode,
      ).toBe(400);
      await send("POST", `/agent/tasks/${t2.id}/start`, undefined, a.credential);
      const bad = await send(
        "POST",
        `/agent/tasks/${t2.id}/finish`,
        { result: {}, error: { code: "X", message: "y" } },
        a.credential,
      );
      expect(bad.statusCode).toBe(400);
      const done = await send(
        "POST",
        `/agent/tasks/${t2.id}/finish`,
        { result: { files: 4, safetySnapshot: "abc" } },
        a.credential,
      );
      expect(done.json()).toMatchObject({ state: "done", result: { files: 4 } });
      expect(done.json().finishedAt).not.toBeNull();
      // A retried finish (lost answer) gets the same answer.
      expect(
        (await send("POST", `/agent/tasks/${t2.id}/finish`, { result: { files: 4 } }, a.credential)).json()
          .state,
      ).toBe("done");
      const list = (await send("GET", `/tasks?cvd=${a.cvd}`)).json();
      expect(list.map((t: { id: string }) => t.id)).toEqual([t2.id, task.id]);
      expect((await send("GET", `/tasks?cvd=${a.cvd}&state=done`)).json()).toHaveLength(1);
      expect((await send("GET", "/tasks/task_nothere")).statusCode).toBe(404);
      expect((await send("POST", `/cvds/${a.cvd}/revert`, { snapshot: "ffffffff" })).statusCode).toBe(404);
    });

    it("recover gives the CVD to a pending replacement, disables the old endpoint and queues there", async () => {
      const a = eps.a!;
      const manual = await enrollmentToken(h, { uses: 1 });
      const c = (await enroll(h, manual.token, FACTS(7100))).json();
      expect(c.state).toBe("pending");
      const send = (method: "GET" | "POST", url: string, payload?: object, token = h.adminToken) =>
        h.app.inject({
          method,
          url: API + url,
          headers: { authorization: `Bearer ${token}`, "strata-protocol": "1" },
          ...(payload ? { payload } : {}),
        });
      // Help Desk restores but does not approve endpoints.
      const hd = await send("POST", `/cvds/${a.cvd}/recover`, { endpoint: c.endpointId }, tokens.helpdesk);
      expect(hd.statusCode, hd.body).toBe(403);
      expect((await send("GET", `/endpoints/${a.endpointId}`)).json().state).toBe("active");
      // B has its own CVD: not a recovery target.
      expect((await send("POST", `/cvds/${a.cvd}/recover`, { endpoint: eps.b!.endpointId })).statusCode).toBe(
        400,
      );
      const r = await send("POST", `/cvds/${a.cvd}/recover`, { endpoint: c.endpointId });
      expect(r.statusCode, r.body).toBe(201);
      expect(r.json()).toMatchObject({
        kind: "recover",
        endpoint: c.endpointId,
        params: { snapshot: snaps[1], streaming: true, previousEndpoint: a.endpointId },
      });
      expect((await send("GET", `/endpoints/${a.endpointId}`)).json()).toMatchObject({ state: "disabled" });
      expect((await send("GET", `/endpoints/${c.endpointId}`)).json()).toMatchObject({
        state: "active",
        cvdId: a.cvd,
      });
      const self = (await send("GET", "/agent/self", undefined, c.credential)).json();
      expect(self.cvd.id).toBe(a.cvd);
      expect(self.tasks).toEqual([{ id: r.json().id, kind: "recover", state: "queued" }]);
      // The old endpoint can no longer open sessions; the new one can.
      expect((await send("POST", `/cvds/${a.cvd}/restores`, {}, a.credential)).statusCode).toBe(403);
      const src = await RemoteRestoreSource.open(restoreTransport(h, c.credential), a.cvd);
      expect(src.snapshot.id).toBe(snaps[1]);
      await src.close();
    });
  });
}

describe("SQLite catalog", () => {
  runRestoreSuite("sqlite", () => openSqliteServerStore(path.join(dir, "catalog.db")));
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[server] SKIPPING the PostgreSQL restore suite: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL catalog", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runRestoreSuite("postgres", () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }));
});
