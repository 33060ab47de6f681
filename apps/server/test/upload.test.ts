/**
 * The upload protocol's rules, agent against server service, on real files,
 * a real repository and a real SQLite catalog: centralization, fleet dedup
 * through proofs of possession, incremental uploads, forged trees refused,
 * interrupted uploads resumed without resending, pins surviving prune.
 */
import { createHash, randomBytes } from "node:crypto";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { CACHE_PARENT, uploadOnce } from "@strata/agent";
import { openSqliteFileCache } from "@strata/catalog";
import {
  type BlobId,
  compilePolicy,
  defaultPolicy,
  encodeTree,
  type FsNode,
  isStrataError,
  type RetentionCounts,
  type TreeId,
} from "@strata/core";
import { check, encodeChunkFrame, encodeTreeFrame, prune, restore } from "@strata/repo";
import { cleanupTempDirs, makeTempDir, seededBytes } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Compressor } from "zstd-napi";
import { type UploadHarness, uploadHarness } from "./upload-helpers.js";

process.env.STRATA_SCRYPT_LOG_N = "10";

const policy = compilePolicy(defaultPolicy("pol_1", "Default"), {
  homes: ["/home/alice"],
  agentStateDir: "/var/lib/strata-agent",
});

/** A small endpoint root: system files, a user's files, and areas policy excludes. */
function buildEndpoint(root: string, seed: string): void {
  for (const d of ["etc", "usr/bin", "usr/lib", "home/alice/docs", "tmp", "proc/1", "var/lib/strata-agent"])
    mkdirSync(path.join(root, d), { recursive: true });
  writeFileSync(path.join(root, "etc/hostname"), `${seed}\n`);
  writeFileSync(path.join(root, "etc/os-release"), 'ID=debian\nVERSION_ID="12"\n');
  writeFileSync(path.join(root, "usr/bin/tool"), seededBytes(3_000_000, "tool")); // shared by every endpoint
  writeFileSync(path.join(root, "usr/lib/libx.so"), seededBytes(1_500_000, "libx"));
  for (let i = 0; i < 40; i++)
    writeFileSync(path.join(root, `usr/lib/small${i}`), seededBytes(2000 + i, `small${i}`));
  writeFileSync(path.join(root, "home/alice/docs/own.bin"), seededBytes(700_000, `own-${seed}`)); // this endpoint's only
  writeFileSync(path.join(root, "tmp/junk"), "scratch");
  writeFileSync(path.join(root, "proc/1/status"), "not really proc");
  writeFileSync(path.join(root, "var/lib/strata-agent/credential"), "sep_secret");
}

let dir: string;
let h: UploadHarness;
const retention = new Map<string, RetentionCounts>();

beforeAll(async () => {
  dir = await makeTempDir("strata-upload-");
  h = await uploadHarness(dir, retention);
});
afterAll(async () => {
  await h?.close();
  await cleanupTempDirs();
});

describe("upload protocol (agent ↔ server service)", () => {
  let firstBytes = 0;
  let rootA = "";
  let snapA = "";

  it("centralizes an endpoint; the snapshot restores its protected area and leaves out what policy excludes", async () => {
    rootA = path.join(dir, "ep-a");
    buildEndpoint(rootA, "a");
    const t = h.transport("cvd_a");
    const cache = openSqliteFileCache(path.join(dir, "cache-a.db"));
    const r = await uploadOnce({
      transport: t,
      cvdId: "cvd_a",
      root: rootA,
      policy,
      parent: null,
      fileCache: cache,
      hostname: "ep-a",
    });
    cache.close();
    expect(r.errors).toEqual([]);
    expect(r.resumed).toBe(false);
    firstBytes = t.received;
    snapA = r.snapshot;
    expect(r.bytesSent).toBe(t.received);
    const snap = await h.service.cvdSnapshot("cvd_a", r.snapshot);
    expect(snap.tags).toContain("cvd:cvd_a");
    expect(snap.parent).toBeNull();
    expect(snap.kind).toBe("centralize");
    const out = path.join(dir, "restore-a");
    await restore(h.server.repo, snap, { target: out });
    expect(
      readFileSync(path.join(out, "usr/bin/tool")).equals(readFileSync(path.join(rootA, "usr/bin/tool"))),
    ).toBe(true);
    expect(readFileSync(path.join(out, "home/alice/docs/own.bin")).length).toBe(700_000);
    expect(() => readFileSync(path.join(out, "tmp/junk"))).toThrow(/ENOENT/);
    expect(() => readFileSync(path.join(out, "proc/1/status"))).toThrow(/ENOENT/);
    expect(() => readFileSync(path.join(out, "var/lib/strata-agent/credential"))).toThrow(/ENOENT/);
    const tx = await h.service.transactions("cvd_a");
    expect(tx[0]).toMatchObject({ state: "committed", snapshot: r.snapshot, kind: "centralize" });
    expect(tx[0]!.bytesSent).toBe(t.received);
  });

  it("a second endpoint with the same system sends < 5% of the first's bytes (proofs, not data)", async () => {
    const rootB = path.join(dir, "ep-b");
    cpSync(rootA, rootB, { recursive: true });
    writeFileSync(path.join(rootB, "etc/hostname"), "b\n");
    const t = h.transport("cvd_b");
    const r = await uploadOnce({
      transport: t,
      cvdId: "cvd_b",
      root: rootB,
      policy,
      parent: null,
      hostname: "ep-b",
    });
    expect(r.chunksProven).toBeGreaterThan(10);
    expect(t.received).toBeLessThan(firstBytes * 0.05);
  });

  it("a no-change upload sends no chunk and no tree; a change inside a file sends only the chunks around it", async () => {
    const cache = openSqliteFileCache(path.join(dir, "cache-a.db"));
    expect(cache.getMeta(CACHE_PARENT)).toBe(snapA);
    const t = h.transport("cvd_a");
    const r = await uploadOnce({
      transport: t,
      cvdId: "cvd_a",
      root: rootA,
      policy,
      parent: snapA,
      fileCache: cache,
      hostname: "ep-a",
    });
    expect(r.stats).toMatchObject({ filesNew: 0, filesChanged: 0 });
    expect(r.chunksSent).toBe(0);
    expect(r.treesSent).toBe(0);
    expect(t.received).toBe(0);
    const snap = await h.service.cvdSnapshot("cvd_a", r.snapshot);
    expect(snap.parent).toBe(snapA);
    // Change 64 KiB in the middle of a 1.5 MB file: the 1% change. Seeded like the file, and the
    // harness's repository has a fixed chunker key: the chunks around the edit (32 KiB–1 MiB
    // each) are the same in every run. With a random key they summed over the bound below in
    // about 6% of runs.
    const f = path.join(rootA, "usr/lib/libx.so");
    const b = readFileSync(f);
    seededBytes(65536, "edit").copy(b, 700_000);
    writeFileSync(f, b);
    const t2 = h.transport("cvd_a");
    const r2 = await uploadOnce({
      transport: t2,
      cvdId: "cvd_a",
      root: rootA,
      policy,
      parent: r.snapshot,
      fileCache: cache,
      hostname: "ep-a",
    });
    cache.close();
    expect(r2.stats.filesChanged).toBe(1);
    expect(r2.chunksSent).toBeGreaterThan(0);
    // Only the chunks around the edit travel (chunks are 32 KiB–1 MiB), not the 1.5 MB file.
    expect(t2.received).toBeLessThan(700_000);
    snapA = r2.snapshot;
  });

  it("refuses to let an endpoint reference another endpoint's chunks by hash (forged tree)", async () => {
    // Endpoint B knows the ids of A's private file (from a leaked log, say) but not its content.
    const victim = (await h.service.cvdSnapshot("cvd_a", snapA)).tree;
    let own: FsNode | undefined;
    for await (const e of h.server.repo.walk(victim)) if (e.path.endsWith("own.bin")) own = e.node;
    expect(own?.type).toBe("file");
    const ids = [...(own?.content ?? [])].flatMap((p) => ("id" in p ? [p.id] : []));
    expect(ids.length).toBeGreaterThan(0);
    const view = await h.service.create("cvd_b", { parent: null, kind: "upload" });
    const session = view.view.session;
    // No proof: "prove", whether or not the server stores it; a made-up proof: "send".
    const asked = await h.service.have(
      "cvd_b",
      session,
      [{ id: ids[0]! }, { id: ids[1] ?? ids[0]!, proof: randomBytes(32).toString("base64") }].slice(
        0,
        ids.length > 1 ? 2 : 1,
      ),
    );
    expect(asked.status[0]).toBe("prove");
    if (ids.length > 1) expect(asked.status[1]).toBe("send");
    // Probing stored contents with made-up proofs is audited once the session's
    // failures reach the threshold (2 in this harness, 1000 by default).
    const probe = ids.slice(0, 3).map((id) => ({ id, proof: randomBytes(32).toString("base64") }));
    expect((await h.service.have("cvd_b", session, probe)).status).toEqual(probe.map(() => "send"));
    const audited = await h.store.listAudit({ limit: 50 });
    expect(
      audited.filter((a) => a.action === "upload.failed_proofs" && a.object === `upload:${session}`),
    ).toHaveLength(1);
    const forged = encodeTree([{ ...own!, name: Buffer.from("stolen.bin") }]);
    const tid = createHash("sha256").update(forged).digest();
    const frames = encodeTreeFrame(tid, Buffer.alloc(0), false, forged);
    const err = await h.service
      .putTrees(
        "cvd_b",
        session,
        (async function* () {
          yield* frames;
        })(),
      )
      .catch((e) => e);
    expect(isStrataError(err, "NOT_POSSESSED")).toBe(true);
    expect(String(err.message)).toContain("stolen.bin");
    // Committing A's root as B's is refused too.
    const err2 = await h.service
      .commit("cvd_b", session, { root: victim, time: new Date().toISOString(), hostname: "ep-b" })
      .catch((e) => e);
    expect(isStrataError(err2, "NOT_POSSESSED")).toBe(true);
    // Another CVD's session and snapshot look like nothing at all.
    await expect(h.service.status("cvd_a", session)).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(h.service.cvdSnapshot("cvd_b", snapA)).rejects.toMatchObject({ code: "NOT_FOUND" });
    await h.service.abort("cvd_b", session);
  });

  it("an interrupted upload resumes its session without resending acknowledged chunks, and pins survive prune", async () => {
    const rootC = path.join(dir, "ep-c");
    buildEndpoint(rootC, "c");
    for (let i = 0; i < 6; i++)
      writeFileSync(path.join(rootC, `home/alice/docs/big${i}`), randomBytes(1_000_000));
    const cut = (what: string) => {
      if (what.endsWith("/commit")) throw new Error("connection reset (test)");
    };
    const t1 = h.transport("cvd_c", cut);
    const e1 = await uploadOnce({
      transport: t1,
      cvdId: "cvd_c",
      root: rootC,
      policy,
      parent: null,
      streamBytes: 1 << 20,
    }).catch((e) => e);
    expect(String(e1)).toContain("connection reset");
    expect(t1.received).toBeGreaterThan(6_000_000);
    // Prune runs while the session is open: its pinned chunks stay.
    await prune(h.server.repo, { graceMs: 0 });
    const t2 = h.transport("cvd_c");
    const r = await uploadOnce({ transport: t2, cvdId: "cvd_c", root: rootC, policy, parent: null });
    expect(r.resumed).toBe(true);
    expect(r.chunksSent).toBe(0); // everything was acknowledged before the cut
    expect(t2.received).toBeLessThan(200_000); // trees only
    const report = await check(h.server.repo, { readData: true });
    expect(report.ok).toBe(true);
    const tx = await h.service.transactions("cvd_c");
    expect(tx[0]).toMatchObject({ state: "committed", retries: 1 });
  });

  it("answers malformed, oversized and hostile requests with 4xx codes and keeps the data intact", async () => {
    const { view } = await h.service.create("cvd_d", { parent: null });
    const sid = view.session;
    const codeOf = (p: Promise<unknown>) =>
      p.then(
        () => "ok",
        (e) => (isStrataError(e) ? e.code : String(e)),
      );
    const stream = (...parts: Buffer[]) =>
      (async function* () {
        yield* parts;
      })();
    // Bad ids, duplicates, huge batches, bad proofs.
    expect(await codeOf(h.service.have("cvd_d", sid, [{ id: "../../etc/passwd" }]))).toBe("INVALID_ARGUMENT");
    const id = createHash("sha256").update("x").digest("hex");
    expect(await codeOf(h.service.have("cvd_d", sid, [{ id }, { id }]))).toBe("INVALID_ARGUMENT");
    expect(
      await codeOf(
        h.service.have(
          "cvd_d",
          sid,
          Array.from({ length: 5001 }, (_, i) => ({
            id: createHash("sha256").update(String(i)).digest("hex"),
          })),
        ),
      ),
    ).toBe("TOO_LARGE");
    expect(await codeOf(h.service.have("cvd_d", sid, [{ id, proof: "short" }]))).toBe("INVALID_ARGUMENT");
    expect(await codeOf(h.service.status("cvd_d", "up_../../x"))).toBe("NOT_FOUND");
    // A chunk whose content is not its id; a frame over the limit; a truncated stream; a decompression bomb.
    const bad = encodeChunkFrame(Buffer.from(id, "hex"), false, Buffer.from("not x"));
    expect(await codeOf(h.service.putChunks("cvd_d", sid, stream(...bad)))).toBe("INVALID_ARGUMENT");
    const header = Buffer.alloc(37);
    header.writeUInt32LE(64 * 1024 * 1024, 32);
    expect(await codeOf(h.service.putChunks("cvd_d", sid, stream(header)))).toBe("TOO_LARGE");
    const good = Buffer.from("hello chunk");
    const gid = createHash("sha256").update(good).digest();
    const truncated = Buffer.concat(encodeChunkFrame(gid, false, good)).subarray(0, 40);
    expect(await codeOf(h.service.putChunks("cvd_d", sid, stream(truncated)))).toBe("INVALID_ARGUMENT");
    const zeros = Buffer.alloc(8 * 1024 * 1024);
    const bomb = new Compressor().compress(zeros);
    const bombFrame = encodeChunkFrame(createHash("sha256").update(zeros).digest(), true, bomb);
    expect(await codeOf(h.service.putChunks("cvd_d", sid, stream(...bombFrame)))).toBe("INVALID_ARGUMENT");
    // Hostile names in trees: "..", "/" inside a name, a path that climbs out.
    for (const [name, p] of [
      ["..", ""],
      ["a/b", ""],
      ["ok", "../etc"],
      ["ok", "home//x"],
    ] as const) {
      const enc = encodeTree([
        {
          type: "symlink",
          name: Buffer.from(name),
          mode: 0o777,
          uid: 0,
          gid: 0,
          mtimeNs: 0n,
          target: Buffer.from("/etc/shadow"),
        } as unknown as FsNode,
      ]);
      const f = encodeTreeFrame(createHash("sha256").update(enc).digest(), Buffer.from(p), false, enc);
      expect(await codeOf(h.service.putTrees("cvd_d", sid, stream(...f))), `${name} at ${p}`).toBe(
        "UNSAFE_PATH",
      );
    }
    // Another CVD's session cannot be used or aborted.
    expect(await codeOf(h.service.putChunks("cvd_a", sid, stream()))).toBe("NOT_FOUND");
    expect(await codeOf(h.service.abort("cvd_a", sid))).toBe("NOT_FOUND");
    await h.service.abort("cvd_d", sid);
    await h.service.abort("cvd_d", sid); // idempotent
    const report = await check(h.server.repo, { readData: true });
    expect(report.ok).toBe(true);
  });

  it("applies the CVD policy's retention after each commit, always keeping the newest snapshot", async () => {
    retention.set("cvd_r", { hourly: 0, daily: 0, weekly: 0, monthly: 0 });
    const rootR = path.join(dir, "ep-r");
    buildEndpoint(rootR, "r");
    let parent: string | null = null;
    for (let i = 0; i < 3; i++) {
      writeFileSync(path.join(rootR, "etc/motd"), `round ${i}\n`);
      const r = await uploadOnce({
        transport: h.transport("cvd_r"),
        cvdId: "cvd_r",
        root: rootR,
        policy,
        parent,
      });
      parent = r.snapshot;
    }
    const left = await h.service.snapshotsOf("cvd_r");
    expect(left.map((s) => s.id)).toEqual([parent]);
    expect((await h.service.snapshotsOf("cvd_a")).length).toBeGreaterThan(1); // other CVDs untouched
    const report = await check(h.server.repo, { readData: true });
    expect(report.ok).toBe(true);
  });

  it("keeps a safety snapshot (pre-restore) through retention, whatever the counts", async () => {
    retention.set("cvd_s", { hourly: 0, daily: 0, weekly: 0, monthly: 0 });
    const rootS = path.join(dir, "ep-s");
    buildEndpoint(rootS, "s");
    let parent: string | null = null;
    let safety = "";
    for (const kind of ["centralize", "pre-restore", "upload", "upload"] as const) {
      writeFileSync(path.join(rootS, "etc/motd"), `${kind} ${parent}\n`);
      const r = await uploadOnce({
        transport: h.transport("cvd_s"),
        cvdId: "cvd_s",
        root: rootS,
        policy,
        parent,
        kind,
      });
      if (kind === "pre-restore") safety = r.snapshot;
      parent = r.snapshot;
    }
    const left = await h.service.snapshotsOf("cvd_s");
    expect(left.map((s) => s.id).sort()).toEqual([parent, safety].sort());
    expect(left.find((s) => s.id === safety)?.kind).toBe("pre-restore");
  });
});

describe("trees stored as deltas of the parent snapshot's version", () => {
  let hd: UploadHarness;
  let ddir: string;
  const dretention = new Map<string, RetentionCounts>();
  beforeAll(async () => {
    ddir = await makeTempDir("strata-upload-delta-");
    hd = await uploadHarness(ddir, dretention);
  });
  afterAll(async () => {
    await hd?.close();
  });

  /** The tree of `rel` (a directory) in snapshot `snap`. */
  const treeAt = async (snap: string, rel: string): Promise<TreeId> => {
    let tree = (await hd.service.cvdSnapshot("cvd_t", snap)).tree;
    for (const seg of rel.split("/")) {
      const n = (await hd.server.repo.loadTree(tree)).find((x) => x.name.toString() === seg);
      expect(n?.type).toBe("dir");
      tree = n!.subtree!;
    }
    return tree;
  };
  const entryOf = async (id: TreeId) =>
    (await hd.server.repo.lookup([id as string as BlobId])).get(id as string as BlobId)!;

  it("a one-file change in a 200-entry directory stores a delta, read back in full; deltas stay one level deep; retention and prune keep the base", async () => {
    const root = path.join(ddir, "ep-t");
    buildEndpoint(root, "t");
    const doc = path.join(root, "usr/share/doc");
    mkdirSync(doc, { recursive: true });
    for (let i = 0; i < 200; i++)
      writeFileSync(path.join(doc, `pkg-${String(i).padStart(3, "0")}`), `doc ${i}\n`);
    const cache = openSqliteFileCache(path.join(ddir, "cache-t.db"));
    const upload = async (parent: string | null) => {
      const r = await uploadOnce({
        transport: hd.transport("cvd_t"),
        cvdId: "cvd_t",
        root,
        policy,
        parent,
        fileCache: cache,
        hostname: "ep-t",
      });
      expect(r.errors).toEqual([]);
      return r.snapshot;
    };
    try {
      const s1 = await upload(null);
      const t1 = await treeAt(s1, "usr/share/doc");
      // The first version has nothing to be a delta of.
      expect(await hd.server.repo.storedTreeBase(t1)).toBeNull();
      const full1 = await hd.server.repo.loadTreeBytes(t1);
      expect(full1.length).toBeGreaterThan(10_000);

      writeFileSync(path.join(doc, "pkg-100"), "changed\n");
      const s2 = await upload(s1);
      const t2 = await treeAt(s2, "usr/share/doc");
      expect(t2).not.toBe(t1);
      // Stored as a delta of the parent snapshot's tree at the same path:
      // the stored blob is a small fraction of the listing.
      expect(await hd.server.repo.storedTreeBase(t2)).toBe(t1);
      const full2 = await hd.server.repo.loadTreeBytes(t2);
      expect((await entryOf(t2)).length * 10).toBeLessThan(full2.length);
      // Read back, it is the full tree the agent sent (its id is the hash of it).
      expect(createHash("sha256").update(full2).digest("hex")).toBe(t2);
      const nodes = await hd.server.repo.loadTree(t2);
      expect(nodes).toHaveLength(200);
      expect(encodeTree(nodes).equals(full2)).toBe(true);
      // Small trees (the ancestors here) stay full.
      expect(await hd.server.repo.storedTreeBase(await treeAt(s2, "usr/share"))).toBeNull();

      // The next version is a delta of the same full base, not of the delta;
      // retention now forgets the snapshots that reach that base.
      dretention.set("cvd_t", { hourly: 0, daily: 0, weekly: 0, monthly: 0 });
      writeFileSync(path.join(doc, "pkg-150"), "changed too\n");
      const s3 = await upload(s2);
      expect((await hd.service.snapshotsOf("cvd_t")).map((s) => s.id)).toEqual([s3]);
      const t3 = await treeAt(s3, "usr/share/doc");
      expect(await hd.server.repo.storedTreeBase(t3)).toBe(t1);

      // Repack every pack with an unused byte, then delete what was doomed:
      // the base is no snapshot's tree any more and stays, as the delta needs it.
      await prune(hd.server.repo, { graceMs: 0, maxUnused: 0 });
      await prune(hd.server.repo, { graceMs: 0 });
      expect((await hd.server.repo.lookup([t1 as string as BlobId])).size).toBe(1);
      expect((await hd.server.repo.lookup([t2 as string as BlobId])).size).toBe(0);
      const report = await check(hd.server.repo, { readData: true });
      expect(report.errors).toEqual([]);
      expect(report.ok).toBe(true);
      const out = path.join(ddir, "restore-t");
      await restore(hd.server.repo, await hd.service.cvdSnapshot("cvd_t", s3), { target: out });
      expect(readFileSync(path.join(out, "usr/share/doc/pkg-150"), "utf8")).toBe("changed too\n");
      expect(readFileSync(path.join(out, "usr/share/doc/pkg-100"), "utf8")).toBe("changed\n");
      expect(readFileSync(path.join(out, "usr/share/doc/pkg-199"), "utf8")).toBe("doc 199\n");
    } finally {
      cache.close();
    }
  });
});

describe("the server's stream limit (all agents together)", () => {
  let hl: UploadHarness;
  let ldir: string;
  beforeAll(async () => {
    ldir = await makeTempDir("strata-upload-limit-");
    hl = await uploadHarness(ldir, new Map(), { maxServerStreams: 1 });
  });
  afterAll(async () => {
    await hl?.close();
  });

  it("refuses a stream past the limit with LOCKED and Retry-After; the agent sends it again and completes", async () => {
    // One agent's stream holds the only slot until `release`.
    const held = (await hl.service.create("cvd_held", { parent: null, kind: "centralize" })).view;
    let entered!: () => void;
    const inside = new Promise<void>((r) => {
      entered = r;
    });
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const holding = hl.service.putChunks(
      "cvd_held",
      held.session,
      (async function* () {
        entered();
        await gate;
        yield* [] as Buffer[];
      })(),
    );
    await inside;

    const other = (await hl.service.create("cvd_y", { parent: null, kind: "centralize" })).view;
    const refused = await hl.service
      .putChunks(
        "cvd_y",
        other.session,
        (async function* () {
          yield* [] as Buffer[];
        })(),
      )
      .catch((e) => e);
    expect(isStrataError(refused) && refused.code).toBe("LOCKED");
    expect(refused.message).toContain("receiving 1 upload streams, its limit (maxServerStreams)");
    expect(refused.retryAfterSeconds).toBe(2);

    // The agent: its first chunk stream is refused while the slot is held;
    // the slot is freed when it asks again, and the upload completes.
    const root = path.join(ldir, "ep-y");
    buildEndpoint(root, "y");
    let puts = 0;
    const t = hl.transport("cvd_y", (what) => {
      if (what.startsWith("PUT") && what.endsWith("/chunks") && ++puts === 2) release();
    });
    const r = await uploadOnce({
      transport: t,
      cvdId: "cvd_y",
      root,
      policy,
      parent: null,
      busyWaitMs: 5,
    });
    await holding;
    expect(r.busyRetries).toBeGreaterThanOrEqual(1);
    expect(puts).toBeGreaterThanOrEqual(2);
    expect(r.errors).toEqual([]);
    const snap = await hl.service.cvdSnapshot("cvd_y", r.snapshot);
    const out = path.join(ldir, "restore-y");
    await restore(hl.server.repo, snap, { target: out });
    expect(
      readFileSync(path.join(out, "home/alice/docs/own.bin")).equals(
        readFileSync(path.join(root, "home/alice/docs/own.bin")),
      ),
    ).toBe(true);
    expect((await check(hl.server.repo, { readData: true })).ok).toBe(true);
  });
});
