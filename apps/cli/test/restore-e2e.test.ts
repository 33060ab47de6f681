/**
 * Issue 4's "done when", end to end over real HTTPS with the real agent
 * (`strata agent run`) on debootstrapped Debian endpoints:
 * (a) a broken endpoint (no /usr/bin, corrupt /etc) is repaired by a
 *     system-only revert while the user's newer files stay;
 * (b) a full revert, with the agent killed -9 mid-way and restarted: it
 *     finishes, and the root equals the snapshot exactly;
 * (d) the user restores her own file (and only hers) through the agent;
 * (c)+(e) a replacement device receives the CVD by a streaming recover
 *     through a slow link: usable after the minimal set, a fetched file
 *     first, then all of it — identical to the source but for the
 *     documented identity files — and it continues the CVD's history.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import {
  debianRoot,
  debianRootSkipReason,
  rsyncCopy,
  rsyncItemize,
  startTcpProxy,
  type TcpProxy,
} from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ALICE_UID, chownTree, type Endpoint, Fleet, type RunningAgent } from "./fleet-harness.js";
import { BIN, isRoot, sh } from "./helpers.js";

const debian = await debianRoot();
const skip = !debian || !isRoot;
const dir = mkdtempSync(path.join(tmpdir(), "strata-restore-e2e-"));
// Users reach the agent's user socket beside the state directories.
chmodSync(dir, 0o755);

function diffLines(src: string, dst: string): string[] {
  return rsyncItemize(src, dst)
    .split("\n")
    .filter((l) => l.trim() !== "");
}

describe.skipIf(skip)(
  `restore and recovery end to end (${debianRootSkipReason() ?? (isRoot ? "" : "needs root")})`,
  () => {
    const fleet = new Fleet(dir);
    let ws1: Endpoint;
    let agent1: RunningAgent | null = null;
    let proxy: TcpProxy;
    /** ws-1 as it was when centralized: the oracle of every restore. */
    const orig = path.join(dir, "orig");
    let s0 = "";

    beforeAll(async () => {
      await fleet.start();
      proxy = await startTcpProxy(Number(new URL(fleet.server.url).port));
      ws1 = fleet.makeEndpoint("ws-1", debian!);
      // Enough user data that streaming it through a slow link takes a while.
      const media = path.join(ws1.root, "home/alice/media");
      mkdirSync(media);
      for (let i = 0; i < 24; i++) writeFileSync(path.join(media, `clip-${i}.bin`), randomBytes(1_000_000));
      chownTree(media, ALICE_UID, ALICE_UID);
      await fleet.enroll([ws1]);
      const up = await fleet.upload(ws1);
      expect(up.errors).toEqual([]);
      s0 = up.snapshot;
      rsyncCopy(ws1.root, orig);
    }, 900_000);
    afterAll(async () => {
      await agent1?.stop();
      await proxy?.close();
      await fleet.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it("(a) a system-only revert repairs a broken endpoint and keeps the user's newer files", async () => {
      const r = ws1.root;
      rmSync(path.join(r, "usr/bin"), { recursive: true });
      writeFileSync(path.join(r, "etc/debian_version"), "garbage\n");
      appendFileSync(path.join(r, "etc/apt/sources.list"), "deb http://evil.example/ x y\n");
      mkdirSync(path.join(r, "usr/local/bin"), { recursive: true });
      writeFileSync(path.join(r, "usr/local/bin/installed-since"), "a tool installed after the snapshot\n");
      writeFileSync(path.join(r, "home/alice/newer.txt"), "written after the snapshot\n");
      chownSync(path.join(r, "home/alice/newer.txt"), ALICE_UID, ALICE_UID);
      expect(sh(`chroot ${r} /usr/bin/dpkg --version || echo broken`)).toMatch(/broken/);

      const task = await fleet.ok("cvd", "revert", ws1.cvd!, "--snapshot", s0, "--json");
      expect(task.kind).toBe("system");
      // The agent finds the task at start (and every minute after).
      agent1 = await fleet.startAgent(ws1);
      const done = await fleet.waitTask(task.id, (t) => t.state === "done", "system revert");
      // Only the user's newer file (and her folder's time) differ from the snapshot.
      const lines = diffLines(orig, r);
      expect(lines.filter((l) => !/ home\/alice\/(newer\.txt)?$/.test(l))).toEqual([]);
      expect(readFileSync(path.join(r, "home/alice/newer.txt"), "utf8")).toBe("written after the snapshot\n");
      expect(existsSync(path.join(r, "usr/local/bin/installed-since"))).toBe(false);
      expect(sh(`chroot ${r} dpkg --version`)).toMatch(/Debian/);
      // The safety snapshot holds the broken state, so the revert can itself be undone.
      const safety = done.result.safetySnapshot as string;
      const snaps = await fleet.ok("cvd", "snapshots", ws1.cvd!, "--json");
      expect(snaps.find((s: { id: string }) => s.id === safety)?.kind).toBe("pre-restore");
      expect(done.result.bytesReceived).toBeLessThan(done.result.bytes);
      // The safety upload's file cache vouched for the unchanged machine area: not read again.
      // (minbase has ~5,000 machine-area files; /usr/bin's were deleted above.)
      expect(done.result.vouchedFiles).toBeGreaterThan(3000);
      expect(done.result.unchangedFiles).toBeGreaterThanOrEqual(done.result.vouchedFiles);
      await agent1.stop();
    }, 600_000);

    it("(b) a full revert, with the agent killed -9 mid-way, finishes at restart: the root is the snapshot", async () => {
      const r = ws1.root;
      // Revert to a snapshot taken now: retention keeps one ordinary
      // snapshot per hour, so the centralization may be gone by now.
      const s1 = (await fleet.upload(ws1)).snapshot as string;
      const at1 = path.join(dir, "at-s1");
      rsyncCopy(r, at1);
      writeFileSync(path.join(r, "home/alice/docs/notes.txt"), "overwritten\n");
      rmSync(path.join(r, "home/alice/media/clip-3.bin"));
      writeFileSync(path.join(r, "etc/motd"), "changed\n");
      const task = await fleet.ok("cvd", "revert", ws1.cvd!, "--snapshot", s1, "--full", "--json");
      expect(task.kind).toBe("full");
      agent1 = await fleet.startAgent(ws1);
      // Kill the agent once the restore engine is at work (a random moment of it).
      await agent1!.waitFor(
        (s) => typeof s?.task?.progress?.phase === "string" && s.task.progress.phase !== "safety-upload",
        "the restore never started",
      );
      await new Promise((res) => setTimeout(res, Math.floor(Math.random() * 300)));
      await agent1!.stop("SIGKILL");
      agent1 = await fleet.startAgent(ws1);
      await fleet.waitTask(task.id, (t) => t.state === "done", "full revert after a restart");
      expect(diffLines(at1, r)).toEqual([]);
      expect(agent1.log).toMatch(/pending restore checked/);
    }, 600_000);

    it("(d) the user restores her own file through the agent, and nothing outside her area", async () => {
      await agent1?.stop();
      agent1 = await fleet.startAgent(ws1);
      const to = path.join(dir, "alice-restores");
      mkdirSync(to);
      chownSync(to, ALICE_UID, ALICE_UID);
      const asAlice = (...args: string[]) =>
        new Promise<{ code: number; out: string; err: string }>((resolve) => {
          const c = spawn(process.execPath, [BIN, ...args, "--state", ws1.state], {
            uid: ALICE_UID,
            gid: ALICE_UID,
            env: { PATH: process.env.PATH, HOME: to },
          });
          let out = "";
          let err = "";
          c.stdout.on("data", (d) => (out += d));
          c.stderr.on("data", (d) => (err += d));
          c.on("close", (code) => resolve({ code: code ?? -1, out, err }));
        });
      const ok = await asAlice(
        "agent",
        "restore-file",
        "/home/alice/docs/report-2.pdf",
        "--to",
        to,
        "--json",
      );
      expect(ok.code, ok.err).toBe(0);
      expect(
        readFileSync(path.join(to, "report-2.pdf")).equals(
          readFileSync(path.join(orig, "home/alice/docs/report-2.pdf")),
        ),
      ).toBe(true);
      const no = await asAlice("agent", "restore-file", "/etc/shadow", "--to", to);
      expect(no.code).not.toBe(0);
      expect(no.err).toMatch(/outside your user area/);
      await agent1!.stop();
      agent1 = null;
    }, 300_000);

    it("(c, e) a replacement device: streaming recover, usable first, fetch jumps the queue, then identical but for identity", async () => {
      const ws2: Endpoint = {
        name: "ws-2",
        root: path.join(dir, "ws-2"),
        state: path.join(dir, "state-ws-2"),
      };
      // A new machine: nothing on its disk but its own identity.
      mkdirSync(path.join(ws2.root, "etc/ssh"), { recursive: true });
      const ownId = `${randomBytes(16).toString("hex")}\n`;
      writeFileSync(path.join(ws2.root, "etc/machine-id"), ownId);
      writeFileSync(path.join(ws2.root, "etc/ssh/ssh_host_ed25519_key"), "key of ws-2\n", { mode: 0o600 });
      const token = await fleet.ok("tokens", "create", "--json");
      const e = await fleet.ok(
        "agent",
        "enroll",
        "--server",
        `https://127.0.0.1:${proxy.port}`,
        "--token",
        token.token,
        "--fingerprint",
        token.serverFingerprint,
        "--root",
        ws2.root,
        "--state",
        ws2.state,
        "--json",
      );
      expect(e.state).toBe("pending");
      const task = await fleet.ok("cvd", "recover", ws1.cvd!, "--endpoint", e.endpointId, "--json");
      expect(task.kind).toBe("recover");
      // A slow link (4 MB/s) for the whole recovery: the minimal set takes a
      // while, the rest (24 MB of alice's media, restored last) too.
      proxy.limitDownstream(4_000_000);
      const agent2 = await fleet.startAgent(ws2);
      try {
        // While the minimal set streams in, the user asks for a file of hers.
        await agent2.waitFor(
          (s) => ["planning", "staging", "committing", "applying"].includes(s?.task?.progress?.phase),
          "the recovery never started",
        );
        const want = "home/alice/media/clip-23.bin";
        const fetched = await fleet.ok("agent", "fetch", `/${want}`, "--state", ws2.state, "--json");
        expect(fetched.restored).toBe(true);
        // It is there, byte-exact, before the rest of the user area (clip-0 comes first in the walk).
        expect(readFileSync(path.join(ws2.root, want)).equals(readFileSync(path.join(orig, want)))).toBe(
          true,
        );
        expect(existsSync(path.join(ws2.root, "home/alice/media/clip-0.bin"))).toBe(false);
        // The machine was usable (minimal set in place) before the rest arrived.
        await agent2.waitFor((s) => s?.task?.progress?.usable === true, "never usable");
        expect(existsSync(path.join(ws2.root, "home/alice/media/clip-0.bin"))).toBe(false);
        expect(sh(`chroot ${ws2.root} dpkg --version`)).toMatch(/Debian/);
        const mid = await fleet.ok("task", "show", task.id, "--json");
        expect(mid.state).toBe("running");
        proxy.limitDownstream(null);
        await fleet.waitTask(task.id, (t) => t.state === "done", "recover");
      } finally {
        proxy.limitDownstream(null);
        await agent2.stop();
      }
      // Identical to the snapshot (as the offline tools restore it from the
      // server's data) except the documented per-machine identity: the
      // device keeps its machine-id and SSH host keys. The root directory's
      // own time is the device's (an endpoint snapshot records none for /).
      const snapDir = path.join(dir, "snapshot-of-recover");
      await fleet.ok(
        "restore",
        "--repo",
        fleet.data,
        "--password-file",
        path.join(fleet.data, "repository.password"),
        String(task.params.snapshot),
        "--target",
        snapDir,
      );
      const allowed = [/ etc\/machine-id$/, / etc\/ssh\/ssh_host_ed25519_key$/, /^\.d\.\.t\.+ \.\/$/];
      const lines = diffLines(snapDir, ws2.root);
      expect(lines.length).toBeGreaterThan(0);
      expect(lines.filter((l) => !allowed.some((re) => re.test(l)))).toEqual([]);
      expect(readFileSync(path.join(ws2.root, "etc/machine-id"), "utf8")).toBe(ownId);
      expect(readFileSync(path.join(ws2.root, "etc/ssh/ssh_host_ed25519_key"), "utf8")).toBe("key of ws-2\n");
      // The replacement continues the CVD's history.
      const up = await fleet.ok("agent", "upload", "--state", ws2.state, "--json");
      expect(up.cvdId).toBe(ws1.cvd);
      const snaps = await fleet.ok("cvd", "snapshots", ws1.cvd!, "--json");
      expect(snaps[0].id).toBe(up.snapshot);
    }, 900_000);
  },
);
