/**
 * A layer apply end to end in one process: capture on a reference
 * endpoint (real uploads), the layer record in the catalog (SQLite and
 * PostgreSQL), the apply plan, the agent's own preparation and restore
 * engine against a real root, then the endpoint's next upload.
 * - Removal lists are byte-exact: a layer removes a file whose name is not
 *   UTF-8 (and one whose name is).
 * - What the server sent the endpoint during the apply is the CVD's: its
 *   next upload proves and sends nothing for the layer's files, while
 *   another CVD knowing the same hashes owns nothing.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { prepareLayerApply, RemoteRestoreSource, runRestore, uploadOnce } from "@strata/agent";
import {
  openPostgresServerStore,
  openSqliteFileCache,
  openSqliteServerStore,
  type ServerStore,
  type SqliteFileCache,
} from "@strata/catalog";
import {
  type BlobId,
  chunkIdsOf,
  compilePolicy,
  defaultPolicy,
  type FsNode,
  type TreeId,
} from "@strata/core";
import type { ApplyPlan, CaptureFinishResponse, CaptureInfo, Task } from "@strata/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dropTestSchemas,
  findTestPostgres,
  newTestSchema,
} from "../../../packages/catalog/test/pg-helper.js";
import { sentToCvdHolder, snapshotSummaries } from "../src/services/upload-service.js";
import { injectJson, restoreTransport, uploadTransport } from "./agent-transports.js";
import { closers, enroll, enrollmentToken, FACTS, type Harness, makeHarness } from "./suite.js";

process.env.STRATA_SCRYPT_LOG_N = "10";
const API = "/api/v1";
const dir = mkdtempSync(path.join(tmpdir(), "strata-layer-engine-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const policy = compilePolicy(defaultPolicy("pol_1", "Default"), {
  homes: ["/home/alice"],
  agentStateDir: "/var/lib/strata-agent",
});

/** A name that is not UTF-8 (latin1 "old-ÿ"), and one that is. */
const ODD = Buffer.concat([Buffer.from("/usr/share/doc/old-"), Buffer.from([0xff])]);
const UTF8 = "/usr/share/doc/é-old";

function put(root: string, rel: string, content: string | Buffer): void {
  const p = path.join(root, rel);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, content);
}

/** ODD below `root`, as the bytes it is. */
const odd = (root: string) => Buffer.concat([Buffer.from(root), ODD]);

/** A small Debian-like machine holding both old files. */
function fabricate(root: string, host: string): void {
  mkdirSync(path.join(root, "etc"), { recursive: true });
  put(root, "usr/lib/os-release", 'ID=debian\nVERSION_ID="12"\n');
  symlinkSync("../usr/lib/os-release", path.join(root, "etc/os-release"));
  put(root, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n");
  put(root, "etc/hostname", `${host}\n`);
  put(root, "usr/share/doc/keep", "kept\n");
  put(root, UTF8.slice(1), "old docs, UTF-8 name\n");
  writeFileSync(odd(root), "old docs, latin1 name\n");
  put(root, "home/alice/notes.txt", `alice's notes on ${host}\n`);
}

interface Ep {
  credential: string;
  cvd: string;
  root: string;
  last: string | null;
  /** The agent's file cache: an upload reads only what changed since the last one. */
  cache: SqliteFileCache;
}

function runSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`a layer apply through the agent's engine on ${name}`, () => {
    let h: Harness;
    const eps: Record<string, Ep> = {};

    async function ok<T>(method: string, url: string, body?: unknown, secret = h.adminToken): Promise<T> {
      const r = await h.app.inject({
        method: method as "GET",
        url: API + url,
        headers: { authorization: `Bearer ${secret}`, "strata-protocol": "1" },
        ...(body !== undefined ? { payload: body as object } : {}),
      });
      expect(r.statusCode, `${method} ${url}: ${r.body}`).toBeLessThan(300);
      return r.json() as T;
    }

    async function upload(ep: string, kind?: "capture-pre" | "capture-post") {
      const e = eps[ep]!;
      h.now.t += 60_000;
      const r = await uploadOnce({
        transport: uploadTransport(h, e.credential),
        cvdId: e.cvd,
        root: e.root,
        policy,
        parent: e.last,
        fileCache: e.cache,
        hostname: ep,
        ...(kind ? { kind: kind as "upload" } : {}),
      });
      expect(r.errors).toEqual([]);
      e.last = r.snapshot;
      return r;
    }

    beforeAll(async () => {
      h = await makeHarness(open, { snapshotsOf: (cvd) => snapshotSummaries(h.repo, cvd) });
      const auto = await enrollmentToken(h, { uses: 3, autoApprove: true });
      for (const [i, ep] of ["ref", "a", "b"].entries()) {
        const r = (await enroll(h, auto.token, FACTS(9000 + i))).json();
        const self = await injectJson(h, r.credential)<{ cvd: { id: string } }>("GET", "/agent/self");
        const root = path.join(dir, `${name}-${ep}`);
        const cache = openSqliteFileCache(path.join(dir, `${name}-${ep}-files.db`));
        eps[ep] = { credential: r.credential, cvd: self.cvd.id, root, last: null, cache };
        fabricate(root, ep);
        await upload(ep);
      }
      await ok("PUT", `/cvds/${eps.ref!.cvd}/reference`);
    }, 120_000);
    afterAll(async () => {
      for (const e of Object.values(eps)) e.cache.close();
      await h?.app.close();
      await h?.store.close();
      for (const c of closers.splice(0)) await c();
    });

    it("removes a file whose name is not UTF-8, and one whose name is; the next upload owns what the apply brought", async () => {
      const ref = eps.ref!;
      const a = eps.a!;
      // The capture: the admin removes both old files and installs a tool.
      const tool = randomBytes(600_000);
      const pre = await upload("ref", "capture-pre");
      const cap = await ok<CaptureInfo>(
        "POST",
        "/agent/captures",
        { snapshot: pre.snapshot },
        ref.credential,
      );
      rmSync(odd(ref.root));
      rmSync(path.join(ref.root, UTF8));
      put(ref.root, "usr/bin/newtool", tool);
      const post = await upload("ref", "capture-post");
      const fin = await ok<CaptureFinishResponse>(
        "POST",
        `/agent/captures/${cap.id}/finish`,
        { snapshot: post.snapshot, name: "doc-cleanup", label: "1" },
        ref.credential,
      );
      // Shown with its odd byte escaped; stored byte-exact beside the UTF-8 one.
      expect(fin.diff.removed.sort()).toEqual(["/usr/share/doc/old-\\xff", UTF8].sort());
      const stored = (await h.store.layers.getLayerManifest(fin.layer.id, 1)) as Record<string, unknown>;
      expect(stored.removed).toEqual([UTF8]);
      expect(stored.removedB64).toEqual([ODD.toString("base64")]);

      // Assigned and applied to A, with the agent's preparation and engine.
      await ok("POST", "/assignments", { target: { cvd: a.cvd }, apps: [{ layer: "doc-cleanup" }] });
      const task = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, {});
      await ok("POST", `/agent/tasks/${task.id}/start`, undefined, a.credential);
      const plan = await ok<ApplyPlan>("POST", `/agent/tasks/${task.id}/apply-plan`, undefined, a.credential);
      expect(plan.removals).toEqual([UTF8]);
      expect(plan.removalsB64).toEqual([ODD.toString("base64")]);
      const prep = prepareLayerApply(plan, a.root, { space: null });
      expect(prep.problems).toEqual([]);
      const src = await RemoteRestoreSource.open(restoreTransport(h, a.credential), a.cvd, {
        image: true,
        snapshot: plan.image.snapshot,
      });
      const state = path.join(dir, `${name}-state-a`);
      try {
        const r = await runRestore(src, {
          root: a.root,
          stateDir: state,
          id: task.id,
          kind: "layer",
          policy,
          layer: {
            removable: prep.removable,
            doNotOverride: prep.doNotOverride,
            enforceRemove: false,
            literals: prep.literals,
          },
        }).done;
        expect(r.errors).toEqual([]);
      } finally {
        await src.close();
      }
      expect(existsSync(odd(a.root))).toBe(false);
      expect(existsSync(path.join(a.root, UTF8))).toBe(false);
      expect(existsSync(path.join(a.root, "usr/share/doc/keep"))).toBe(true);
      expect(existsSync(path.join(a.root, "home/alice/notes.txt"))).toBe(true);
      await ok(
        "POST",
        `/agent/tasks/${task.id}/finish`,
        { result: { image: plan.image.id, imageSnapshot: plan.image.snapshot } },
        a.credential,
      );

      // The tool's chunks came from the server: A owns exactly those now, B (which knows the hashes) does not.
      const toolNode = await nodeAt(h, fin.version.tree as TreeId, "/usr/bin/newtool");
      const toolChunks = [...chunkIdsOf(toolNode!)] as BlobId[];
      expect(toolChunks.length).toBeGreaterThan(1);
      expect([...(await h.repo.catalog.pinned(sentToCvdHolder(a.cvd), toolChunks))].sort()).toEqual(
        [...toolChunks].sort(),
      );
      expect((await h.repo.catalog.pinned(sentToCvdHolder(eps.b!.cvd), toolChunks)).size).toBe(0);
      const b = eps.b!;
      const bSession = await injectJson(h, b.credential)<{ session: string }>(
        "POST",
        `/cvds/${b.cvd}/uploads`,
        {
          parent: b.last,
        },
      );
      const bHave = await injectJson(h, b.credential)<{ status: string[] }>(
        "POST",
        `/uploads/${bSession.session}/have`,
        { chunks: toolChunks.map((id) => ({ id })) },
      );
      expect(bHave.status.every((s) => s === "prove")).toBe(true);
      await injectJson(h, b.credential)("DELETE", `/uploads/${bSession.session}`);

      // A's next upload reads the tool (new to its file cache), and neither proves nor sends it.
      const next = await upload("a");
      expect(next.stats.filesNew).toBe(1);
      expect(next.chunksProven).toBe(0);
      expect(next.chunksSent).toBe(0);
      // What it sends is the changed directories' trees (the tool alone is 600 kB).
      expect(next.bytesSent).toBeLessThan(20_000);
      // Its snapshot holds the tool now (inherited by path from here on): the server forgot what it sent.
      expect((await h.repo.catalog.pinned(sentToCvdHolder(a.cvd), toolChunks)).size).toBe(0);
    });
  });
}

async function nodeAt(h: Harness, tree: TreeId, p: string): Promise<FsNode | null> {
  let t: TreeId | undefined = tree;
  let node: FsNode | null = null;
  for (const seg of p.split("/").filter(Boolean)) {
    if (!t) return null;
    node = (await h.repo.loadTree(t)).find((n) => n.name.toString() === seg) ?? null;
    if (!node) return null;
    t = node.subtree;
  }
  return node;
}

describe("SQLite catalog", () => {
  runSuite("sqlite", () => openSqliteServerStore(path.join(dir, "catalog.db")));
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[server] SKIPPING the PostgreSQL layer-engine suite: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL catalog", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runSuite("postgres", () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }));
});
