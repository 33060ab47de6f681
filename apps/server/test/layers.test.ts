/**
 * Layers through the whole HTTP stack (app.inject), on SQLite and
 * PostgreSQL: small fabricated endpoint roots (dpkg status, account files,
 * os-release, a user's home) uploaded by the real agent upload over the
 * upload routes; base capture, app capture, assignment, image composition,
 * dry-run, apply tasks and their plans, and who may reach which image.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { RemoteRestoreSource, uploadOnce } from "@strata/agent";
import { openPostgresServerStore, openSqliteServerStore, type ServerStore } from "@strata/catalog";
import { chunkIdsOf, compilePolicy, defaultPolicy, type FsNode, type TreeId } from "@strata/core";
import type {
  ApplyPlan,
  AssignmentInfo,
  CaptureBaseResponse,
  CaptureFinishResponse,
  CaptureInfo,
  CvdLayersInfo,
  DryRunReport,
  LayerInfo,
  Task,
} from "@strata/protocol";
import { prune } from "@strata/repo";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dropTestSchemas,
  findTestPostgres,
  newTestSchema,
} from "../../../packages/catalog/test/pg-helper.js";
import { snapshotSummaries } from "../src/services/upload-service.js";
import { injectJson, restoreTransport, uploadTransport } from "./agent-transports.js";
import { closers, enroll, enrollmentToken, FACTS, type Harness, makeHarness } from "./suite.js";

process.env.STRATA_SCRYPT_LOG_N = "10";
const API = "/api/v1";
const dir = path.join(tmpdir(), `strata-layers-${process.pid}-${randomBytes(3).toString("hex")}`);
mkdirSync(dir, { recursive: true });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const agentPolicy = compilePolicy(defaultPolicy("pol_1", "Default"), {
  homes: ["/home/alice"],
  agentStateDir: "/var/lib/strata-agent",
});

const stanza = (name: string, version: string, extra = "") =>
  `Package: ${name}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nVersion: ${version}\n${extra}Description: ${name}\n`;

const BASE_STATUS = `${stanza("base-files", "12.4")}\n${stanza("libc6", "2.36-9")}\n`;
const PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n";
const GROUP = "root:x:0:\nalice:x:1000:\n";
const SHADOW = "root:*:19000:0:99999:7:::\nalice:$y$secret:19000:0:99999:7:::\n";
const GSHADOW = "root:*::\nalice:!::\n";

function put(root: string, rel: string, content: string | Buffer): void {
  const p = path.join(root, rel);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, content);
}

function rm(root: string, rel: string): void {
  rmSync(path.join(root, rel), { recursive: true, force: true });
}

/** A small Debian-like machine. */
function fabricate(root: string, host: string, os = "12"): void {
  rmSync(root, { recursive: true, force: true });
  put(root, "usr/lib/os-release", `PRETTY_NAME="Debian GNU/Linux ${os}"\nID=debian\nVERSION_ID="${os}"\n`);
  mkdirSync(path.join(root, "etc"), { recursive: true });
  symlinkSync("../usr/lib/os-release", path.join(root, "etc/os-release"));
  put(root, "etc/passwd", PASSWD);
  put(root, "etc/group", GROUP);
  put(root, "etc/shadow", SHADOW);
  put(root, "etc/gshadow", GSHADOW);
  put(root, "etc/hostname", `${host}\n`);
  put(root, "etc/machine-id", `${randomBytes(16).toString("hex")}\n`);
  put(root, "etc/fstab", `UUID=${host} / ext4 defaults 0 1\n`);
  put(root, "var/lib/dpkg/status", BASE_STATUS);
  put(root, "var/log/syslog", `boot of ${host}\n`);
  put(root, "usr/bin/tool", "tool v1\n");
  put(root, "usr/lib/x86_64-linux-gnu/libc.so.6", Buffer.alloc(40_000, 7));
  put(root, "usr/share/doc/old/README", "old docs\n");
  put(root, "home/alice/notes.txt", `alice's notes on ${host}\n`);
  put(root, "root/.bashrc", "alias ll='ls -l'\n");
}

/** Every path below `tree` (directories end with /). */
async function paths(h: Harness, tree: TreeId, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const n of await h.repo.loadTree(tree)) {
    const p = `${prefix}/${n.name.toString()}`;
    if (n.type === "dir") {
      out.push(`${p}/`);
      if (n.subtree) out.push(...(await paths(h, n.subtree, p)));
    } else out.push(p);
  }
  return out;
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

async function contentAt(h: Harness, tree: TreeId, p: string): Promise<string | null> {
  const n = await nodeAt(h, tree, p);
  if (!n) return null;
  const parts: Buffer[] = [];
  for (const id of chunkIdsOf(n)) parts.push(await h.repo.loadBlob(id));
  return Buffer.concat(parts).toString();
}

interface Ep {
  endpointId: string;
  credential: string;
  cvd: string;
  root: string;
  last: string | null;
}

function runLayerSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`layers on ${name}`, () => {
    let h: Harness;
    const eps: Record<string, Ep> = {};
    const state: {
      base?: CaptureBaseResponse;
      jq?: CaptureFinishResponse;
      tool3?: CaptureFinishResponse;
      firstTask?: Task;
      firstPlan?: ApplyPlan;
    } = {};

    async function send(method: string, url: string, body?: unknown, secret = h.adminToken) {
      return h.app.inject({
        method: method as "GET",
        url: API + url,
        headers: { authorization: `Bearer ${secret}`, "strata-protocol": "1" },
        ...(body !== undefined ? { payload: body as object } : {}),
      });
    }
    async function ok<T>(method: string, url: string, body?: unknown, secret?: string): Promise<T> {
      const r = await send(method, url, body, secret);
      // A 500 names what the server logged for it.
      const logged = r.statusCode >= 500 ? h.logs.filter((l) => l.includes(`"level":50`)) : [];
      expect(r.statusCode, `${method} ${url}: ${r.body} ${logged.join("")}`).toBeLessThan(300);
      return r.json() as T;
    }

    async function upload(ep: string, kind?: "capture-pre" | "capture-post"): Promise<string> {
      const e = eps[ep]!;
      h.now.t += 60_000; // snapshots of one CVD never share a time
      const r = await uploadOnce({
        transport: uploadTransport(h, e.credential),
        cvdId: e.cvd,
        root: e.root,
        policy: agentPolicy,
        parent: e.last,
        hostname: ep,
        // The agent's own type gains the capture kinds with its capture command.
        ...(kind ? { kind: kind as "upload" } : {}),
      });
      expect(r.errors).toEqual([]);
      e.last = r.snapshot;
      return r.snapshot;
    }

    /** An app capture on the reference: `change` installs between the two uploads. */
    async function capture(
      body: { name: string; label?: string; kind?: "app" | "driver" },
      change: (root: string) => void,
    ): Promise<CaptureFinishResponse> {
      const ref = eps.ref!;
      const pre = await upload("ref", "capture-pre");
      const cap = await ok<CaptureInfo>("POST", "/agent/captures", { snapshot: pre }, ref.credential);
      expect(cap).toMatchObject({ cvd: ref.cvd, state: "open", preSnapshot: pre, postSnapshot: null });
      change(ref.root);
      const post = await upload("ref", "capture-post");
      return ok<CaptureFinishResponse>(
        "POST",
        `/agent/captures/${cap.id}/finish`,
        { snapshot: post, ...body },
        ref.credential,
      );
    }

    beforeAll(async () => {
      h = await makeHarness(open, { snapshotsOf: (cvd) => snapshotSummaries(h.repo, cvd) });
      const auto = await enrollmentToken(h, { uses: 3, autoApprove: true });
      for (const [i, ep] of ["ref", "a", "b"].entries()) {
        const r = (await enroll(h, auto.token, FACTS(8000 + i))).json();
        const self = await injectJson(h, r.credential)<{ cvd: { id: string } }>("GET", "/agent/self");
        const root = path.join(dir, `${name}-${ep}`);
        eps[ep] = { endpointId: r.endpointId, credential: r.credential, cvd: self.cvd.id, root, last: null };
        fabricate(root, ep);
      }
      await upload("ref");
      // Endpoint A: its user installed jq 1.7 (newer than the layer's 1.6 to come).
      put(eps.a!.root, "var/lib/dpkg/status", `${BASE_STATUS}\n${stanza("jq", "1.7-1")}\n`);
      put(eps.a!.root, "usr/bin/jq", "jq 1.7 by the user\n");
      await upload("a");
      await upload("b");
    }, 120_000);
    afterAll(async () => {
      await h?.app.close();
      await h?.store.close();
      for (const c of closers.splice(0)) await c();
    });

    it("capture-base needs a reference CVD; drops the user area, identity, logs and structured files, keeps the rest with the same chunks", async () => {
      const ref = eps.ref!;
      const refused = await send("POST", "/layers/capture-base", { name: "debian", cvd: ref.cvd });
      expect(refused.statusCode).toBe(400);
      expect(refused.json().error.message).toContain("not a reference CVD");
      expect((await ok<{ reference: boolean }>("PUT", `/cvds/${ref.cvd}/reference`)).reference).toBe(true);

      const base = await ok<CaptureBaseResponse>("POST", "/layers/capture-base", {
        name: "debian",
        cvd: ref.cvd,
        label: "12.8",
      });
      state.base = base;
      expect(base.layer).toMatchObject({ name: "debian", kind: "base" });
      expect(base.version).toMatchObject({
        version: 1,
        label: "12.8",
        os: { id: "debian", versionId: "12" },
        source: { cvd: ref.cvd, snapshots: [ref.last] },
        stats: { files: 5, packages: 2 },
      });
      const tree = base.version.tree as TreeId;
      const all = await paths(h, tree);
      for (const kept of [
        "/usr/bin/tool",
        "/usr/lib/os-release",
        "/etc/os-release",
        "/etc/fstab",
        "/usr/share/doc/old/README",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/var/log/",
        "/home/",
      ])
        expect(all, kept).toContain(kept);
      for (const dropped of [
        "/home/alice/",
        "/home/alice/notes.txt",
        "/root/",
        "/etc/hostname",
        "/etc/machine-id",
        "/var/log/syslog",
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/var/lib/dpkg/status",
      ])
        expect(all, dropped).not.toContain(dropped);
      // Unchanged files keep their chunks; unchanged directories their tree ids.
      const snap = (await h.repo.catalog.getSnapshot(ref.last as never))!;
      const before = await nodeAt(h, snap.tree, "/usr/lib/x86_64-linux-gnu/libc.so.6");
      const after = await nodeAt(h, tree, "/usr/lib/x86_64-linux-gnu/libc.so.6");
      expect(after?.content).toEqual(before?.content);
      expect((await nodeAt(h, tree, "/usr"))?.subtree).toBe((await nodeAt(h, snap.tree, "/usr"))?.subtree);
      expect((await nodeAt(h, tree, "/etc"))?.subtree).not.toBe(
        (await nodeAt(h, snap.tree, "/etc"))?.subtree,
      );
      // The layer's snapshot record: kind layer, tagged with the layer and version, never a CVD's.
      const rec = (await h.repo.catalog.getSnapshot(base.version.snapshot as never))!;
      expect(rec).toMatchObject({ kind: "layer", tree });
      expect(rec.tags).toEqual([`layer:${base.layer.id}`, "layer-version:1"]);
      // The manifest: every stanza, the system accounts (not the reference machine's own people,
      // who would clash with every endpoint's uid 1000), the os-release.
      const m = (await h.store.layers.getLayerManifest(base.layer.id, 1)) as Record<string, never>;
      expect((m.packages as { name: string }[]).map((p) => p.name)).toEqual(["base-files", "libc6"]);
      expect(m.accounts).toMatchObject({
        passwd: PASSWD.trim()
          .split("\n")
          .filter((l) => !l.startsWith("alice:")),
        shadow: SHADOW.trim()
          .split("\n")
          .filter((l) => !l.startsWith("alice:")),
      });
      expect(PASSWD).toMatch(/^alice:/m);
      expect(m.removed).toEqual([]);
      // Listing and showing; a second capture gets version 2; a label is unique per layer.
      const list = await ok<LayerInfo[]>("GET", "/layers");
      expect(list.map((l) => l.name)).toEqual(["debian"]);
      expect((await ok<LayerInfo>("GET", "/layers/debian")).id).toBe(base.layer.id);
      expect((await ok<LayerInfo>("GET", `/layers/${base.layer.id}`)).versions).toHaveLength(1);
      expect((await send("GET", "/layers/nope")).statusCode).toBe(404);
      const dup = await send("POST", "/layers/capture-base", { name: "debian", cvd: ref.cvd, label: "12.8" });
      expect(dup.statusCode).toBe(409);
      const audit = await ok<{ action: string }[]>("GET", "/audit?action=layer.capture_base");
      expect(audit).toHaveLength(1);
    });

    it("app capture: the diff of the machine area (added, changed, removed), packages, accounts, triggers", async () => {
      // Only a reference endpoint captures.
      const b = eps.b!;
      const pre = await upload("b", "capture-pre");
      expect((await send("POST", "/agent/captures", { snapshot: pre }, b.credential)).statusCode).toBe(400);
      // A plain snapshot is not a capture-pre one.
      expect(
        (await send("POST", "/agent/captures", { snapshot: eps.ref!.last }, eps.ref!.credential)).json().error
          .message,
      ).toContain("capture-pre");

      const jq = await capture({ name: "jq", label: "1.6" }, (root) => {
        put(root, "usr/bin/jq", "jq 1.6\n");
        put(root, "usr/lib/x86_64-linux-gnu/libjq.so.1", "libjq\n");
        put(root, "usr/share/jq/old-data", "data of jq 1.6\n");
        put(root, "etc/systemd/system/jq.service", "[Service]\n");
        put(root, "usr/bin/tool", "tool v2\n");
        rm(root, "usr/share/doc/old");
        put(root, "var/lib/dpkg/status", `${BASE_STATUS}\n${stanza("jq", "1.6-2.1", "Depends: libc6\n")}\n`);
        put(root, "etc/passwd", `${PASSWD}_jq:x:998:998::/nonexistent:/usr/sbin/nologin\n`);
        put(root, "var/log/apt/history.log", "install jq\n");
        put(root, "home/alice/notes.txt", "alice kept writing\n");
        put(root, "etc/hostname", "renamed\n");
      });
      state.jq = jq;
      expect(jq.layer).toMatchObject({ name: "jq", kind: "app" });
      expect(jq.version).toMatchObject({ version: 1, label: "1.6", os: { id: "debian", versionId: "12" } });
      expect(jq.capture.state).toBe("finished");
      expect(jq.diff.added).toEqual(
        expect.arrayContaining([
          "/usr/bin/jq",
          "/usr/lib/x86_64-linux-gnu/libjq.so.1",
          "/usr/share/jq",
          "/usr/share/jq/old-data",
          "/etc/systemd/system/jq.service",
        ]),
      );
      expect(jq.diff.changed).toEqual(["/usr/bin/tool"]);
      expect(jq.diff.removed).toEqual(["/usr/share/doc/old", "/usr/share/doc/old/README"]);
      const touched = [...jq.diff.added, ...jq.diff.changed, ...jq.diff.removed].join(" ");
      for (const noise of ["/var/log", "/home/alice", "/etc/passwd", "/var/lib/dpkg/status"])
        expect(touched).not.toContain(noise);
      // /etc/hostname is not noise: an app capture records what changed in the machine area.
      expect(jq.diff.changed).not.toContain("/etc/passwd");
      const tree = jq.version.tree as TreeId;
      const all = await paths(h, tree);
      expect(all).toContain("/usr/bin/jq");
      expect(all).toContain("/usr/bin/tool");
      expect(all).not.toContain("/usr/lib/os-release"); // unchanged: not in the layer
      expect(all).not.toContain("/var/log/apt/history.log");
      expect(all).not.toContain("/home/");
      const m = (await h.store.layers.getLayerManifest(jq.layer.id, 1)) as Record<string, never>;
      expect((m.packages as { name: string; version: string }[]).map((p) => [p.name, p.version])).toEqual([
        ["jq", "1.6-2.1"],
      ]);
      expect(m.accounts).toMatchObject({
        passwd: ["_jq:x:998:998::/nonexistent:/usr/sbin/nologin"],
        group: [],
      });
      expect(m.triggers).toEqual(["ldconfig", "systemd-daemon-reload"]);
      expect(m.removed).toEqual(["/usr/share/doc/old", "/usr/share/doc/old/README"]);
      // A retried finish answers again; a kind mismatch with the layer is refused.
      const again = await ok<CaptureFinishResponse>(
        "POST",
        `/agent/captures/${jq.capture.id}/finish`,
        { snapshot: jq.capture.postSnapshot, name: "jq" },
        eps.ref!.credential,
      );
      expect(again.version.version).toBe(1);
      const pre2 = await upload("ref", "capture-pre");
      const cap2 = await ok<CaptureInfo>("POST", "/agent/captures", { snapshot: pre2 }, eps.ref!.credential);
      const post2 = await upload("ref", "capture-post");
      const clash = await send(
        "POST",
        `/agent/captures/${cap2.id}/finish`,
        { snapshot: post2, name: "debian" },
        eps.ref!.credential,
      );
      expect(clash.statusCode).toBe(409);
      expect(clash.json().error.code).toBe("CONFLICT");
      // Another endpoint cannot finish the reference's capture.
      expect(
        (
          await send(
            "POST",
            `/agent/captures/${cap2.id}/finish`,
            { snapshot: post2, name: "x" },
            eps.b!.credential,
          )
        ).statusCode,
      ).toBe(404);

      // The left-over capture is cancelled: finishing it is refused afterwards; cancelling is idempotent.
      const cancelled = await ok<CaptureInfo>(
        "POST",
        `/agent/captures/${cap2.id}/cancel`,
        undefined,
        eps.ref!.credential,
      );
      expect(cancelled.state).toBe("cancelled");
      expect(
        (await send("POST", `/agent/captures/${cap2.id}/cancel`, undefined, eps.ref!.credential)).statusCode,
      ).toBe(200);
      expect(
        (
          await send(
            "POST",
            `/agent/captures/${cap2.id}/finish`,
            { snapshot: post2, name: "x" },
            eps.ref!.credential,
          )
        ).statusCode,
      ).toBe(409);
      expect(
        (await send("POST", `/agent/captures/${jq.capture.id}/cancel`, undefined, eps.ref!.credential))
          .statusCode,
      ).toBe(409);

      state.tool3 = await capture({ name: "tool3" }, (root) => put(root, "usr/bin/tool", "tool v3\n"));
      expect(state.tool3.version.label).toBe("1");
      expect(state.tool3.diff).toMatchObject({ changed: ["/usr/bin/tool"], added: [], removed: [] });
    });

    it("composes images: later layers win, the same versions give the same image, removed paths leave", async () => {
      const a = eps.a!;
      const assign = (apps: string[]) =>
        ok<AssignmentInfo>("POST", "/assignments", {
          target: { cvd: a.cvd },
          base: { layer: "debian" },
          apps: apps.map((layer) => ({ layer })),
        });
      const first = await assign(["jq", "tool3"]);
      expect(first).toMatchObject({
        target: { kind: "cvd", id: a.cvd },
        base: { layer: state.base!.layer.id },
        apps: [{ layer: state.jq!.layer.id }, { layer: state.tool3!.layer.id }],
      });
      const info1 = await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`);
      expect(info1.effective?.id).toBe(first.id);
      const img1 = info1.targetImage!;
      const snap1 = (await h.repo.catalog.getSnapshot(img1 as never))!;
      expect(snap1.kind).toBe("image");
      expect(snap1.tags[0]).toMatch(/^image:[0-9a-f]{64}$/);
      expect(await contentAt(h, snap1.tree, "/usr/bin/tool")).toBe("tool v3\n");
      expect(await contentAt(h, snap1.tree, "/usr/bin/jq")).toBe("jq 1.6\n");
      // The base's README was removed by jq: not in the image.
      expect(await nodeAt(h, snap1.tree, "/usr/share/doc/old/README")).toBeNull();
      expect(await contentAt(h, snap1.tree, "/usr/bin/tool")).not.toBeNull();
      // Same versions again: the same image.
      const second = await assign(["jq", "tool3"]);
      const info2 = await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`);
      expect(info2.targetImage).toBe(img1);
      expect(info2.effective?.id).toBe(second.id);
      expect(info2.overridden.map((x) => x.id)).toEqual([first.id]);
      // The other order: jq's tool wins.
      await assign(["tool3", "jq"]);
      const img2 = (await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).targetImage!;
      expect(img2).not.toBe(img1);
      const snap2 = (await h.repo.catalog.getSnapshot(img2 as never))!;
      expect(await contentAt(h, snap2.tree, "/usr/bin/tool")).toBe("tool v2\n");
      // Back to jq then tool3 for the rest.
      await assign(["jq", "tool3"]);
      expect((await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).targetImage).toBe(img1);
      // Kinds are checked.
      const wrong = await send("POST", "/assignments", { target: { cvd: a.cvd }, base: { layer: "jq" } });
      expect(wrong.statusCode).toBe(400);
      expect(
        (await send("POST", "/assignments", { target: { cvd: a.cvd }, apps: [{ layer: "nope" }] }))
          .statusCode,
      ).toBe(404);
    });

    it("dry-run: a downgrade of a user-installed package blocks; files, bytes and do-not-override are reported", async () => {
      const a = eps.a!;
      const r = await ok<DryRunReport>("GET", `/cvds/${a.cvd}/dry-run`);
      expect(r.image).toBe((await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).targetImage);
      expect(r.blocked).toBe(true);
      const down = r.problems.find((p) => p.kind === "downgrade");
      expect(down).toMatchObject({ subject: "jq", blocking: true });
      expect(down!.message).toContain("1.7-1");
      expect(r.files.samples.added).toContain("/usr/lib/x86_64-linux-gnu/libjq.so.1");
      expect(r.files.samples.updated).toEqual(expect.arrayContaining(["/usr/bin/jq", "/usr/bin/tool"]));
      expect(r.files.samples.removed).toEqual(["/usr/share/doc/old", "/usr/share/doc/old/README"]);
      expect(r.bytesToWrite).toBeGreaterThan(0);
      // The reference's fstab is in the base; the endpoint keeps its own.
      expect(r.doNotOverride).toContain("/etc/fstab");
      expect(r.files.samples.updated).not.toContain("/etc/fstab");
      // Endpoint B (no jq of its own) has no downgrade.
      await ok("POST", "/assignments", {
        target: { cvd: eps.b!.cvd },
        base: { layer: "debian" },
        apps: [{ layer: "jq" }],
      });
      const rb = await ok<DryRunReport>("GET", `/cvds/${eps.b!.cvd}/dry-run`);
      expect(rb.problems.filter((p) => p.kind === "downgrade")).toEqual([]);
      expect(rb.packages.added).toEqual(["jq"]);
      expect(rb.filesToWrite).toBeGreaterThan(0);
      // Free space: unknown until the agent reports its root's filesystem, then compared.
      expect(rb.disk).toBeNull();
      const fs = (freeBytes: number) => ({
        facts: {
          ...FACTS(8002),
          rootFs: {
            path: "/",
            freeBytes,
            totalBytes: 2 ** 34,
            blockSize: 4096,
            at: "2026-11-26T09:00:00.000Z",
          },
        },
      });
      const putFacts = async (body: object) =>
        expect((await send("PUT", "/agent/facts", body, eps.b!.credential)).statusCode).toBe(204);
      await putFacts(fs(2 ** 33));
      const roomy = await ok<DryRunReport>("GET", `/cvds/${eps.b!.cvd}/dry-run`);
      expect(roomy.disk).toEqual({
        path: "/",
        freeBytes: 2 ** 33,
        totalBytes: 2 ** 34,
        neededBytes: roomy.bytesToWrite + roomy.filesToWrite * 4096 + 64 * 1024 * 1024,
        reportedAt: "2026-11-26T09:00:00.000Z",
      });
      expect(roomy.problems.filter((p) => p.kind === "disk-space")).toEqual([]);
      expect(roomy.blocked).toBe(false);
      await putFacts(fs(1024 * 1024));
      const full = await ok<DryRunReport>("GET", `/cvds/${eps.b!.cvd}/dry-run`);
      expect(full.blocked).toBe(true);
      const space = full.problems.find((p) => p.kind === "disk-space");
      expect(space).toMatchObject({ blocking: true, subject: "/" });
      expect(space!.message).toMatch(
        /^not enough disk space: needs .*, 1\.0 MiB free on the filesystem of \/;.*2026-11-26T09:00:00\.000Z/,
      );
      await putFacts({ facts: FACTS(8002) });
    });

    it("apply: a task of kind apply; its plan opens a session on the image; the finished task records the applied image; a layer update brings removals", async () => {
      const a = eps.a!;
      const task = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, { enforce: "keep" });
      state.firstTask = task;
      expect(task).toMatchObject({ kind: "apply", state: "queued", endpoint: a.endpointId });
      const target = (await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).targetImage;
      expect(task.params).toMatchObject({ image: target, enforce: "keep", atRestart: false });
      expect((await send("POST", `/cvds/${a.cvd}/apply`, {})).statusCode).toBe(409); // one task at a time
      const self = await ok<{ tasks: unknown[] }>("GET", "/agent/self", undefined, a.credential);
      expect(self.tasks).toEqual([{ id: task.id, kind: "apply", state: "queued" }]);
      // The plan is for a claimed task.
      expect(
        (await send("POST", `/agent/tasks/${task.id}/apply-plan`, undefined, a.credential)).statusCode,
      ).toBe(400);
      await ok("POST", `/agent/tasks/${task.id}/start`, undefined, a.credential);
      const plan = await ok<ApplyPlan>("POST", `/agent/tasks/${task.id}/apply-plan`, undefined, a.credential);
      state.firstPlan = plan;
      const img = (await h.repo.catalog.getSnapshot(target as never))!;
      expect(plan).toMatchObject({
        task: task.id,
        image: { snapshot: target },
        enforce: "keep",
        atRestart: false,
        previousPackages: [],
        removals: ["/usr/share/doc/old", "/usr/share/doc/old/README"],
      });
      expect(plan.session.root.id).toBe(img.tree);
      // What the agent compares with its free space: the dry-run's estimate.
      const dry = await ok<DryRunReport>("GET", `/cvds/${a.cvd}/dry-run`);
      expect(plan.bytesToWrite).toBe(dry.bytesToWrite);
      expect(plan.filesToWrite).toBe(dry.filesToWrite);
      expect(plan.reinstallUserPackages).toBeUndefined();
      expect(plan.manifest.packages.map((p) => p.name)).toEqual(["base-files", "jq", "libc6"]);
      expect(plan.manifest.accounts.passwd).toContain("_jq:x:998:998::/nonexistent:/usr/sbin/nologin");
      expect(plan.doNotOverride).toEqual(expect.arrayContaining([{ dir: "/etc/fstab" }]));
      // The agent reads the image through its restore session (and through a new one opened with image: true).
      const src = await RemoteRestoreSource.open(restoreTransport(h, a.credential), a.cvd, { image: true });
      expect(src.snapshot.id).toBe(target);
      const root = await src.loadTree(src.snapshot.root);
      expect(root.nodes.map((n) => n.name.toString())).toEqual(expect.arrayContaining(["etc", "usr"]));
      await src.close();
      // The end: the applied image is recorded.
      // As the agent reports it: the image's key, and its snapshot.
      const done = await ok<Task>(
        "POST",
        `/agent/tasks/${task.id}/finish`,
        { result: { image: plan.image.id, imageSnapshot: target } },
        a.credential,
      );
      expect(done.state).toBe("done");
      expect(await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).toMatchObject({
        targetImage: target,
        appliedImage: target,
      });

      // jq 1.7 on the reference (old-data gone), then apply again: the old image's paths are removals.
      const jq2 = await capture({ name: "jq", label: "1.7" }, (root) => {
        put(root, "usr/bin/jq", "jq 1.7\n");
        put(root, "var/lib/dpkg/status", `${BASE_STATUS}\n${stanza("jq", "1.7-1", "Depends: libc6\n")}\n`);
      });
      expect(jq2.version.version).toBe(2);
      // That capture ran on a machine that already had jq 1.6: only what changed, and no old-data.
      const t2 = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, {});
      expect(t2.params.image).not.toBe(target);
      await ok("POST", `/agent/tasks/${t2.id}/start`, undefined, a.credential);
      const plan2 = await ok<ApplyPlan>("POST", `/agent/tasks/${t2.id}/apply-plan`, undefined, a.credential);
      expect(plan2.previousPackages).toEqual(expect.arrayContaining(["jq:amd64", "base-files:amd64"]));
      expect(plan2.enforce).toBe("none");
      // An image result other than the task's is refused.
      const wrong = await send(
        "POST",
        `/agent/tasks/${t2.id}/finish`,
        { result: { image: plan2.image.id, imageSnapshot: "f".repeat(64) } },
        a.credential,
      );
      expect(wrong.statusCode).toBe(400);
      await ok(
        "POST",
        `/agent/tasks/${t2.id}/finish`,
        { error: { code: "IO_ERROR", message: "disk" } },
        a.credential,
      );
      expect((await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).appliedImage).toBe(target);
    });

    it("a layer update drops what the new version no longer has", async () => {
      const a = eps.a!;
      // jq 2.0 captured from a machine without jq: everything jq 1.x had that 2.0 lacks is a removal.
      const ref = eps.ref!;
      rm(ref.root, "usr/bin/jq");
      rm(ref.root, "usr/share/jq");
      rm(ref.root, "usr/lib/x86_64-linux-gnu/libjq.so.1");
      rm(ref.root, "etc/systemd/system/jq.service");
      put(ref.root, "var/lib/dpkg/status", BASE_STATUS);
      const jq3 = await capture({ name: "jq", label: "2.0" }, (root) => {
        put(root, "usr/bin/jq", "jq 2.0\n");
        put(root, "usr/lib/x86_64-linux-gnu/libjq.so.2", "libjq 2\n");
        put(root, "var/lib/dpkg/status", `${BASE_STATUS}\n${stanza("jq", "2.0-1", "Depends: libc6\n")}\n`);
      });
      expect(jq3.version.version).toBe(3);
      const t = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, {});
      await ok("POST", `/agent/tasks/${t.id}/start`, undefined, a.credential);
      const plan = await ok<ApplyPlan>("POST", `/agent/tasks/${t.id}/apply-plan`, undefined, a.credential);
      expect(plan.removals).toEqual(
        expect.arrayContaining([
          "/usr/share/jq",
          "/usr/share/jq/old-data",
          "/usr/lib/x86_64-linux-gnu/libjq.so.1",
          "/etc/systemd/system/jq.service",
        ]),
      );
      expect(plan.removals).not.toContain("/usr/bin/jq");
      expect(plan.manifest.packages.find((p) => p.name === "jq")?.version).toBe("2.0-1");
      await ok(
        "POST",
        `/agent/tasks/${t.id}/finish`,
        { result: { image: plan.image.snapshot } },
        a.credential,
      );
    });

    it("endpoint B reaches neither A's image nor A's apply plan; users open no image sessions", async () => {
      const a = eps.a!;
      const b = eps.b!;
      const t = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, {});
      await ok("POST", `/agent/tasks/${t.id}/start`, undefined, a.credential);
      const asB = (m: string, u: string, body?: unknown) => send(m, u, body, b.credential);
      expect((await asB("POST", `/cvds/${a.cvd}/restores`, { image: true })).statusCode).toBe(404);
      expect(
        (await asB("POST", `/cvds/${b.cvd}/restores`, { image: true, snapshot: t.params.image })).statusCode,
      ).toBe(404);
      expect((await asB("POST", `/agent/tasks/${t.id}/apply-plan`)).statusCode).toBe(404);
      expect((await asB("POST", `/agent/tasks/${state.firstTask!.id}/apply-plan`)).statusCode).toBe(404);
      // B's own target image it may open.
      expect((await asB("POST", `/cvds/${b.cvd}/restores`, { image: true })).statusCode).toBe(201);
      // A's session is A's alone.
      const plan = await ok<ApplyPlan>("POST", `/agent/tasks/${t.id}/apply-plan`, undefined, a.credential);
      const tree = await send(
        "GET",
        `/restores/${plan.session.session}/trees/${plan.session.root.id}?grant=${plan.session.root.grant}`,
        undefined,
        b.credential,
      );
      expect(tree.statusCode).toBe(404);
      expect((await send("POST", `/cvds/${a.cvd}/restores`, { image: true })).statusCode).toBe(403);
      await ok("POST", `/tasks/${t.id}/cancel`);
    });

    it("an apply cancelled after its commit still records the image the endpoint runs; one cancelled before does not", async () => {
      const a = eps.a!;
      const before = await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`);
      // Cancelled, then the agent reports an error (it rolled back before the commit): nothing recorded.
      const early = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, {});
      await ok("POST", `/agent/tasks/${early.id}/start`, undefined, a.credential);
      await ok("POST", `/tasks/${early.id}/cancel`);
      h.now.t += 1000;
      await ok(
        "POST",
        `/agent/tasks/${early.id}/finish`,
        { error: { code: "INVALID_ARGUMENT", message: `task ${early.id} was cancelled` } },
        a.credential,
      );
      expect(await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).toMatchObject({
        appliedImage: before.appliedImage,
        appliedAt: before.appliedAt,
      });
      // Cancelled while apt ran after the commit: the agent reports the apply's result.
      const late = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, {});
      await ok("POST", `/agent/tasks/${late.id}/start`, undefined, a.credential);
      await ok("POST", `/tasks/${late.id}/cancel`);
      h.now.t += 1000;
      const reported = await ok<Task>(
        "POST",
        `/agent/tasks/${late.id}/finish`,
        {
          result: {
            image: late.params.imageKey,
            imageSnapshot: late.params.image,
            reinstall: { cancelled: 1 },
          },
        },
        a.credential,
      );
      expect(reported.state).toBe("cancelled");
      expect(reported.result).toMatchObject({ imageSnapshot: late.params.image });
      const after = await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`);
      expect(after.appliedImage).toBe(late.params.image);
      expect(after.appliedAt).not.toBe(before.appliedAt);
      expect(new Date(after.appliedAt!).getTime()).toBe(h.now.t);
    });

    it("an assignment mixing OS releases is a conflict naming both", async () => {
      const ref = eps.ref!;
      put(ref.root, "usr/lib/os-release", 'ID=debian\nVERSION_ID="13"\n');
      const trixie = await capture({ name: "trixie-tool" }, (root) => put(root, "usr/bin/trixie", "t\n"));
      expect(trixie.version.os).toEqual({ id: "debian", versionId: "13" });
      const r = await send("POST", "/assignments", {
        target: { cvd: eps.b!.cvd },
        base: { layer: "debian" },
        apps: [{ layer: "jq" }, { layer: "trixie-tool" }],
      });
      expect(r.statusCode).toBe(409);
      expect(r.json().error.code).toBe("CONFLICT");
      expect(r.json().error.message).toContain("debian 13");
      expect(r.json().error.message).toContain("debian 12");
      // Without a base, against the CVD's newest snapshot (debian 12).
      const nobase = await send("POST", "/assignments", {
        target: { cvd: eps.b!.cvd },
        apps: [{ layer: "trixie-tool" }],
      });
      expect(nobase.statusCode).toBe(409);
      expect(nobase.json().error.message).toContain("newest snapshot");
      // Nothing was recorded.
      const info = await ok<CvdLayersInfo>("GET", `/cvds/${eps.b!.cvd}/layers`);
      expect(info.effective?.apps.map((x) => x.layer)).toEqual([state.jq!.layer.id]);
    });

    it("an assignment to a collection reaches its members: the newest assignment wins", async () => {
      const b = eps.b!;
      const before = await ok<CvdLayersInfo>("GET", `/cvds/${b.cvd}/layers`);
      const col = await ok<{ id: string }>("POST", "/collections", { name: "Office", members: [b.cvd] });
      h.now.t += 1000;
      const asg = await ok<AssignmentInfo>("POST", "/assignments", {
        target: { collection: "Office" },
        base: { layer: "debian" },
        apps: [{ layer: "tool3" }],
      });
      expect(asg.target).toEqual({ kind: "collection", id: col.id });
      const after = await ok<CvdLayersInfo>("GET", `/cvds/${b.cvd}/layers`);
      expect(after.effective?.id).toBe(asg.id);
      expect(after.overridden.map((x) => x.id)).toContain(before.effective!.id);
      expect(after.targetImage).not.toBe(before.targetImage);
      const img = (await h.repo.catalog.getSnapshot(after.targetImage as never))!;
      expect(await contentAt(h, img.tree, "/usr/bin/tool")).toBe("tool v3\n");
      expect(await nodeAt(h, img.tree, "/usr/bin/jq")).toBeNull();
      // Apps captured on different releases conflict in a collection too.
      const mixed = await send("POST", "/assignments", {
        target: { collection: col.id },
        apps: [{ layer: "tool3" }, { layer: "trixie-tool" }],
      });
      expect(mixed.statusCode).toBe(409);
      expect((await send("POST", "/assignments", { target: { collection: "Nope" } })).statusCode).toBe(404);
    });

    it("a driver folder captured on the reference lands in the images of the CVDs its profile matches, and only theirs", async () => {
      const drv = await capture({ name: "acme-fw", kind: "driver" }, (root) => {
        put(root, "usr/lib/firmware/acme/fw.bin", "firmware blob\n");
        put(root, "etc/udev/rules.d/70-acme.rules", 'SUBSYSTEM=="net", ATTR{vendor}=="0xacme"\n');
      });
      expect(drv.layer.kind).toBe("driver");
      // A's machine is an Acme laptop with the Acme NIC; B is not.
      const facts = (n: number, dmi: object, modaliases: string[]) => ({
        ...FACTS(8000 + n),
        dmi,
        modaliases,
      });
      for (const [ep, f] of [
        [
          "a",
          facts(1, { vendor: "ACME Corp", model: "Laptop 7" }, ["pci:v0000ACMEd00001234sv0sd0bc02sc00i00"]),
        ],
        [
          "b",
          facts(2, { vendor: "Dell Inc.", model: "OptiPlex 7090" }, [
            "pci:v00008086d000015F3sv0sd0bc02sc00i00",
          ]),
        ],
      ] as const) {
        const r = await send("PUT", "/agent/facts", { facts: f }, eps[ep]!.credential);
        expect(r.statusCode, r.body).toBeLessThan(300);
      }
      const prof = await send("POST", "/driver-profiles", {
        name: "Acme",
        folders: ["acme-fw"],
        rules: [{ vendor: "acme*", modalias: "pci:v0000ACMEd*" }],
      });
      expect(prof.statusCode, prof.body).toBe(201);
      const imageOf = async (ep: string) => {
        const info = await ok<CvdLayersInfo>("GET", `/cvds/${eps[ep]!.cvd}/layers`);
        return { info, tree: (await h.repo.catalog.getSnapshot(info.targetImage as never))!.tree };
      };
      const a = await imageOf("a");
      expect(a.info.drivers).toEqual([{ profile: "Acme", folders: [drv.layer.id] }]);
      expect(await contentAt(h, a.tree, "/usr/lib/firmware/acme/fw.bin")).toBe("firmware blob\n");
      expect(await contentAt(h, a.tree, "/etc/udev/rules.d/70-acme.rules")).toMatch(/acme/);
      const b = await imageOf("b");
      expect(b.info.drivers).toEqual([]);
      expect(await nodeAt(h, b.tree, "/usr/lib/firmware/acme/fw.bin")).toBeNull();
      // The profile changes: now B's Intel NIC matches too, and its image gets the files.
      const edit = await send("PATCH", "/driver-profiles/Acme", {
        rules: [{ vendor: "acme*" }, { modalias: "pci:v00008086d000015F3*" }],
      });
      expect(edit.statusCode, edit.body).toBe(200);
      expect(await contentAt(h, (await imageOf("b")).tree, "/usr/lib/firmware/acme/fw.bin")).toBe(
        "firmware blob\n",
      );
      await send("DELETE", "/driver-profiles/Acme");
    });

    it("migrate keeps the old system for a rollback until confirmed; rollback reverts, re-assigns and records the old image", async () => {
      const a = eps.a!;
      const before = await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`);
      const oldImage = before.appliedImage!;
      expect(oldImage).toMatch(/^[0-9a-f]{64}$/);
      // A migration the agent runs: its safety snapshot is S.
      const runApply = async (body: object): Promise<{ task: Task; safety: string; plan: ApplyPlan }> => {
        const t = await ok<Task>("POST", `/cvds/${a.cvd}/apply`, body);
        await ok("POST", `/agent/tasks/${t.id}/start`, undefined, a.credential);
        const plan = await ok<ApplyPlan>("POST", `/agent/tasks/${t.id}/apply-plan`, undefined, a.credential);
        const safety = await upload("a");
        await ok(
          "POST",
          `/agent/tasks/${t.id}/finish`,
          { result: { imageSnapshot: t.params.image, safetySnapshot: safety } },
          a.credential,
        );
        return { task: t, safety, plan };
      };
      // A CVD whose machine runs no applied base cannot migrate: the old release would stay behind.
      const nobase = await send("POST", `/cvds/${eps.b!.cvd}/apply`, { migrate: true });
      expect(nobase.statusCode).toBe(409);
      expect(nobase.json().error.message).toContain("no base layer applied");
      // Reinstalling user packages belongs to a migration, and not to one at restart.
      const notMigrating = await send("POST", `/cvds/${a.cvd}/apply`, { reinstallUserPackages: true });
      expect(notMigrating.statusCode).toBe(400);
      expect(notMigrating.json().error.message).toContain("OS migration");
      const atRestart = await send("POST", `/cvds/${a.cvd}/apply`, {
        migrate: true,
        atRestart: true,
        reinstallUserPackages: true,
      });
      expect(atRestart.statusCode).toBe(400);
      expect(atRestart.json().error.message).toContain("at restart");
      const m = await runApply({ migrate: true, reinstallUserPackages: true });
      expect(m.task.params).toMatchObject({
        migrate: true,
        previousImage: oldImage,
        reinstallUserPackages: true,
      });
      expect(m.plan.reinstallUserPackages).toBe(true);
      // Rollback: a system revert to the safety snapshot, marked as the rollback of the apply.
      const rb = await ok<Task>("POST", `/cvds/${a.cvd}/rollback`);
      expect(rb).toMatchObject({ kind: "system", params: { snapshot: m.safety, rollbackOf: m.task.id } });
      expect(rb.params.restoreImage).toBe(oldImage);
      // The old image's layers are assigned again (pinned), so the next apply does not migrate again.
      const reassigned = await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`);
      expect(reassigned.targetImage).toBe(oldImage);
      await ok("POST", `/agent/tasks/${rb.id}/start`, undefined, a.credential);
      await ok("POST", `/agent/tasks/${rb.id}/finish`, { result: { files: 1 } }, a.credential);
      expect((await ok<CvdLayersInfo>("GET", `/cvds/${a.cvd}/layers`)).appliedImage).toBe(oldImage);

      // A confirmed migration cannot be rolled back: its old system is no longer kept.
      const m2 = await runApply({ migrate: true });
      const conf = await ok<Task>("POST", `/cvds/${a.cvd}/migration/confirm`);
      expect(conf.id).toBe(m2.task.id);
      expect(typeof conf.result?.confirmedAt).toBe("string");
      const refused = await send("POST", `/cvds/${a.cvd}/rollback`);
      expect(refused.statusCode).toBe(409);
      expect(refused.json().error.message).toContain(m2.task.id);
      // Only administrators with restore.run and layers.assign roll back; a CVD without applies has nothing to undo.
      expect((await send("POST", `/cvds/${eps.ref!.cvd}/rollback`)).statusCode).toBe(404);
    });

    it("alternatives and kernels: recorded in the manifest, never in a tree; triggers in order", async () => {
      const ref = eps.ref!;
      const link = (target: string, rel: string) => {
        rm(ref.root, rel);
        mkdirSync(path.dirname(path.join(ref.root, rel)), { recursive: true });
        symlinkSync(target, path.join(ref.root, rel));
      };
      // Before the install: a pager group in auto mode, its links, an old initramfs.
      put(ref.root, "bin/more", "more\n");
      put(ref.root, "usr/bin/w.pager", "w.pager\n");
      put(
        ref.root,
        "var/lib/dpkg/alternatives/pager",
        "auto\n/usr/bin/pager\n\n/bin/more\n50\n/usr/bin/w.pager\n10\n\n",
      );
      link("/bin/more", "etc/alternatives/pager");
      link("/etc/alternatives/pager", "usr/bin/pager");
      const cap = await capture({ name: "alt-demo" }, (root) => {
        // A new group chosen by hand, with a slave; pager gains less and loses more.
        put(root, "usr/bin/strata-demo-a", "a\n");
        put(root, "usr/bin/strata-demo-b", "b\n");
        put(root, "usr/share/man/man1/strata-demo-a.1.gz", "man a\n");
        put(
          root,
          "var/lib/dpkg/alternatives/strata-demo",
          "manual\n/usr/bin/strata-demo\nstrata-demo.1.gz\n/usr/share/man/man1/strata-demo.1.gz\n\n" +
            "/usr/bin/strata-demo-a\n50\n/usr/share/man/man1/strata-demo-a.1.gz\n/usr/bin/strata-demo-b\n20\n\n\n",
        );
        link("/usr/bin/strata-demo-b", "etc/alternatives/strata-demo");
        link("/etc/alternatives/strata-demo", "usr/bin/strata-demo");
        link("/etc/alternatives/strata-demo.1.gz", "usr/share/man/man1/strata-demo.1.gz");
        put(root, "usr/bin/less", "less\n");
        rm(root, "bin/more");
        put(
          root,
          "var/lib/dpkg/alternatives/pager",
          "auto\n/usr/bin/pager\n\n/usr/bin/less\n77\n/usr/bin/w.pager\n10\n\n",
        );
        link("/usr/bin/less", "etc/alternatives/pager");
        // A kernel, its initramfs built on the reference, and initramfs-tools' configuration.
        put(root, "boot/vmlinuz-6.1.0-99-amd64", "kernel\n");
        put(root, "usr/lib/modules/6.1.0-99-amd64/kernel/demo.ko", "module\n");
        put(root, "boot/initrd.img-6.1.0-99-amd64", "the reference's initramfs\n");
        put(root, "etc/initramfs-tools/modules", "demo\n");
      });
      const all = await paths(h, cap.version.tree as TreeId);
      for (const p of ["/usr/bin/strata-demo-a", "/usr/bin/less", "/boot/vmlinuz-6.1.0-99-amd64"])
        expect(all).toContain(p);
      for (const p of [
        "/var/lib/dpkg/alternatives/",
        "/etc/alternatives/",
        "/usr/bin/strata-demo",
        "/usr/share/man/man1/strata-demo.1.gz",
        "/usr/bin/pager",
        "/boot/initrd.img-6.1.0-99-amd64",
      ])
        expect(all).not.toContain(p);
      expect(cap.diff.removed).toEqual(["/bin/more"]);
      const m = (await h.store.layers.getLayerManifest(cap.layer.id, 1)) as Record<string, never>;
      expect(m.triggers).toEqual([
        "update-alternatives",
        "kernel-postrm",
        "depmod",
        "kernel-postinst",
        "update-initramfs",
        "update-grub",
      ]);
      expect(m.initramfs).toEqual({ kernels: ["6.1.0-99-amd64"], all: true });
      expect(m.depmod).toEqual({ kernels: ["6.1.0-99-amd64"], all: false });
      expect(m.alternatives).toEqual({
        groups: [
          {
            name: "pager",
            link: "/usr/bin/pager",
            slaves: [],
            choices: [{ path: "/usr/bin/less", priority: 77, slaves: {} }],
          },
          {
            name: "strata-demo",
            link: "/usr/bin/strata-demo",
            slaves: [{ name: "strata-demo.1.gz", link: "/usr/share/man/man1/strata-demo.1.gz" }],
            choices: [
              {
                path: "/usr/bin/strata-demo-a",
                priority: 50,
                slaves: { "strata-demo.1.gz": "/usr/share/man/man1/strata-demo-a.1.gz" },
              },
              { path: "/usr/bin/strata-demo-b", priority: 20, slaves: {} },
            ],
            manual: "/usr/bin/strata-demo-b",
          },
        ],
        removed: [{ name: "pager", path: "/bin/more" }],
      });

      // A base captured from the same machine: every group, no links, no initramfs.
      const base = await ok<CaptureBaseResponse>("POST", "/layers/capture-base", {
        name: "debian-alt",
        cvd: ref.cvd,
      });
      const baseAll = await paths(h, base.version.tree as TreeId);
      expect(baseAll).toContain("/boot/vmlinuz-6.1.0-99-amd64");
      expect(baseAll).toContain("/usr/bin/w.pager");
      for (const p of [
        "/var/lib/dpkg/alternatives/",
        "/etc/alternatives/",
        "/usr/bin/pager",
        "/usr/bin/strata-demo",
      ])
        expect(baseAll).not.toContain(p);
      expect(baseAll.some((p) => p.startsWith("/boot/initrd.img"))).toBe(false);
      const bm = (await h.store.layers.getLayerManifest(base.layer.id, 1)) as Record<string, never>;
      expect(bm.triggers).toEqual([
        "ldconfig",
        "update-alternatives",
        "kernel-postrm",
        "depmod",
        "kernel-postinst",
        "update-initramfs",
        "update-grub",
        "systemd-daemon-reload",
      ]);
      expect(bm.initramfs).toEqual({ kernels: [], all: true });
      expect(bm.depmod).toEqual({ kernels: [], all: true });
      const groups = (bm.alternatives as { groups: { name: string; choices: unknown[]; manual?: string }[] })
        .groups;
      expect(groups.map((g) => [g.name, g.choices.length, g.manual ?? null])).toEqual([
        ["pager", 2, null],
        ["strata-demo", 2, "/usr/bin/strata-demo-b"],
      ]);

      // Composed: the image's manifest carries both; the dry-run lists what will run.
      const b = eps.b!;
      await ok("POST", "/assignments", {
        target: { cvd: b.cvd },
        base: { layer: "debian-alt" },
        apps: [{ layer: "alt-demo" }],
      });
      const img = (await ok<CvdLayersInfo>("GET", `/cvds/${b.cvd}/layers`)).targetImage!;
      const rec = await h.store.layers.getImageBySnapshot(img as never);
      const im = rec!.manifest as Record<string, never>;
      expect((im.alternatives as { groups: { name: string }[] }).groups.map((g) => g.name)).toEqual([
        "pager",
        "strata-demo",
      ]);
      expect((im.alternatives as { removed: unknown[] }).removed).toEqual([
        { name: "pager", path: "/bin/more" },
      ]);
      expect(im.initramfs).toEqual({ kernels: ["6.1.0-99-amd64"], all: true });
      expect(im.depmod).toEqual({ kernels: ["6.1.0-99-amd64"], all: true });
      const r = await ok<DryRunReport>("GET", `/cvds/${b.cvd}/dry-run`);
      expect(r.triggers).toEqual([
        "ldconfig",
        "update-alternatives",
        "kernel-postrm",
        "depmod",
        "kernel-postinst",
        "update-initramfs",
        "update-grub",
        "systemd-daemon-reload",
      ]);
    });

    it("layer and image snapshots survive retention and prune; the reference's snapshots can go", async () => {
      const ref = eps.ref!;
      const cvdSnaps = await h.repo.catalog.listSnapshots({ tag: `cvd:${ref.cvd}` });
      await h.repo.removeSnapshots(cvdSnaps.map((s) => s.id));
      const now = () => new Date(h.now.t);
      await prune(h.repo, { graceMs: 0, now });
      h.now.t += 1000;
      await prune(h.repo, { graceMs: 0, now });
      const base = state.base!.version;
      expect(await contentAt(h, base.tree as TreeId, "/usr/bin/tool")).toBe("tool v1\n");
      expect(await contentAt(h, state.jq!.version.tree as TreeId, "/usr/bin/jq")).toBe("jq 1.6\n");
      const img = (await ok<CvdLayersInfo>("GET", `/cvds/${eps.a!.cvd}/layers`)).appliedImage!;
      const snap = (await h.repo.catalog.getSnapshot(img as never))!;
      expect(await contentAt(h, snap.tree, "/usr/bin/jq")).toBe("jq 2.0\n");
    });
  });
}

describe("SQLite catalog", () => {
  runLayerSuite("sqlite", () => openSqliteServerStore(path.join(dir, "catalog.db")));
});

const target = await findTestPostgres();
if (target.skip) console.warn(`\n[server] SKIPPING the PostgreSQL layer suite: ${target.skip}\n`);

describe.skipIf(!target.url)("PostgreSQL catalog", () => {
  afterAll(() => dropTestSchemas(target.url ?? ""));
  runLayerSuite("postgres", () => openPostgresServerStore(target.url ?? "", { schema: newTestSchema() }));
});
