/**
 * Issue 5's "done when" 5, end to end: an endpoint running a Debian 12 base
 * layer is migrated in place to a Debian 13 base layer (both debootstrapped
 * and captured from reference CVDs). Afterwards it runs Debian 13, apt and
 * dpkg are healthy, every user file is byte-identical, the user accounts
 * and the user's own packages remain — the one the new release's apt
 * sources provide reinstalled at its new version when asked, the other
 * reported unavailable; a rollback returns the machine to Debian 12
 * exactly. A replacement device receives the CVD (recover) and is migrated
 * the same way.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { aptRepo, debianRoot, debianRootSkipReason, rsyncCopy, rsyncItemize } from "@strata/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Endpoint, Fleet, installUserPackage } from "./fleet-harness.js";
import { isRoot, sh } from "./helpers.js";

const bookworm = await debianRoot("bookworm");
const trixie = await debianRoot("trixie");
const reason =
  debianRootSkipReason("bookworm") ??
  debianRootSkipReason("trixie") ??
  (isRoot ? undefined : "needs root (chroot)");
const dir = mkdtempSync(path.join(tmpdir(), "strata-migration-e2e-"));
chmodSync(dir, 0o755);

const lines = (s: string) => s.split("\n").filter((l) => l.trim() !== "");

describe.skipIf(reason !== undefined)(
  `OS migration Debian 12 → 13 (${reason ?? "debootstrap, chroot"})`,
  () => {
    const fleet = new Fleet(dir);
    let ws: Endpoint;
    let ref12: Endpoint;
    let ref13: Endpoint;
    /** ws on its Debian 12 base, before the migration: what a rollback returns to. */
    const before = path.join(dir, "ws-before");

    beforeAll(async () => {
      await fleet.start();
      ref12 = fleet.makeEndpoint("ref12", bookworm!);
      ref13 = fleet.makeEndpoint("ref13", trixie!);
      ws = fleet.makeEndpoint("ws", bookworm!);
      installUserPackage(dir, ws.root, "hello-user", "1.0");
      installUserPackage(dir, ws.root, "quiet-user", "1.0");
      // The new release's repository, offline: a flat apt repository on the endpoint with
      // hello-user 2.0 and no quiet-user; the Debian 13 reference's sources.list (which its
      // base layer brings to every endpoint it is applied to) points at it.
      aptRepo(path.join(ws.root, "srv/strata-repo"), [{ name: "hello-user", version: "2.0" }]);
      writeFileSync(
        path.join(ref13.root, "etc/apt/sources.list"),
        "deb [trusted=yes] file:/srv/strata-repo ./\n",
      );
      await fleet.enroll([ref12, ref13, ws]);
      for (const ep of [ref12, ref13, ws]) await fleet.upload(ep);
      for (const ep of [ref12, ref13]) await fleet.ok("cvd", "reference", ep.cvd!, "--json");
      const b12 = await fleet.ok(
        "layer",
        "capture-base",
        "--name",
        "debian12",
        "--cvd",
        ref12.cvd!,
        "--json",
      );
      const b13 = await fleet.ok(
        "layer",
        "capture-base",
        "--name",
        "debian13",
        "--cvd",
        ref13.cvd!,
        "--json",
      );
      expect(b12.version.os).toEqual({ id: "debian", versionId: "12" });
      expect(b13.version.os).toEqual({ id: "debian", versionId: "13" });
      // ws runs the Debian 12 base layer (it owns the OS from now on).
      await fleet.ok("layer", "assign", "--base", "debian12", "--cvd", ws.cvd!, "--json");
      const t = await fleet.ok("cvd", "apply", ws.cvd!, "--json");
      const agent = await fleet.startAgent(ws);
      await fleet.waitTask(t.id, (x) => x.state === "done", "apply debian12");
      await agent.stop();
      rsyncCopy(ws.root, before);
    }, 900_000);

    afterAll(async () => {
      await fleet.close();
      sh(`rm -rf ${dir}`);
    });

    it("migrates in place: Debian 13, healthy dpkg and apt, user files and accounts kept, user packages reinstalled", async () => {
      expect(readFileSync(path.join(ws.root, "etc/debian_version"), "utf8")).toMatch(/^12\./);
      // The dry-run shows the endpoint's free space, as its agent reported it.
      const dry = await fleet.ok("cvd", "dry-run", ws.cvd!, "--json");
      expect(dry.disk.path).toBe(path.resolve(ws.root));
      expect(dry.disk.freeBytes).toBeGreaterThan(0);
      expect(dry.disk.neededBytes).toBeGreaterThanOrEqual(dry.bytesToWrite);
      const task = await fleet.ok(
        "cvd",
        "migrate",
        ws.cvd!,
        "--base",
        "debian13",
        "--reinstall-user-packages",
        "--json",
      );
      expect(task.kind).toBe("apply");
      expect(task.params.reinstallUserPackages).toBe(true);
      const agent = await fleet.startAgent(ws);
      const done = await fleet.waitTask(task.id, (x) => x.state === "done", "migrate to debian13");
      await agent.stop();

      expect(sh(`chroot ${ws.root} cat /etc/debian_version`)).toMatch(/^13\./);
      expect(sh(`chroot ${ws.root} apt-get --version`)).toMatch(/^apt /);
      expect(sh(`chroot ${ws.root} dpkg --audit`).trim()).toBe("");
      // Every user file is byte-identical (checksums), the accounts remain.
      // (/home itself is the machine area's: the new base may give it another mtime.)
      expect(
        lines(rsyncItemize(path.join(before, "home"), path.join(ws.root, "home"))).filter(
          (l) => !/ \.\/$/.test(l),
        ),
      ).toEqual([]);
      const passwd = readFileSync(path.join(ws.root, "etc/passwd"), "utf8");
      expect(passwd).toMatch(/^alice:x:1000:1000:Alice:\/home\/alice:\/bin\/bash$/m);
      // The user's own packages are kept and listed for the administrator; the one the new
      // release's sources provide is at its new version, the other is as it was.
      expect(done.result.userInstalled).toEqual(["hello-user", "quiet-user"]);
      const hello = sh(`chroot ${ws.root} dpkg -s hello-user`);
      expect(hello).toMatch(/Status: install ok installed/);
      expect(hello).toMatch(/^Version: 2\.0$/m);
      expect(sh(`chroot ${ws.root} /usr/local/bin/hello-user`).trim()).toBe("hello-user 2.0");
      expect(sh(`chroot ${ws.root} dpkg -s quiet-user`)).toMatch(/^Version: 1\.0$/m);
      expect(done.result.reinstall.update.ok).toBe(true);
      expect(done.result.reinstall.packages).toEqual([
        { name: "hello-user", from: "1.0", outcome: "reinstalled", version: "2.0" },
        { name: "quiet-user", from: "1.0", outcome: "unavailable", message: expect.any(String) },
      ]);
      expect(existsSync(done.result.reinstall.log)).toBe(true);
      expect(existsSync(path.join(ws.root, "usr/sbin/policy-rc.d"))).toBe(false);
      expect(done.result.disk.freeBytes).toBeGreaterThan(0);
      // dpkg is still healthy after apt ran.
      expect(sh(`chroot ${ws.root} dpkg --audit`).trim()).toBe("");
      const shown = await fleet.ok("task", "show", task.id);
      expect(shown).toMatch(/hello-user: reinstalled 1\.0 → 2\.0/);
      expect(shown).toMatch(/quiet-user: unavailable/);
    }, 900_000);

    it("rolls back to Debian 12 exactly", async () => {
      const task = await fleet.ok("cvd", "rollback", ws.cvd!, "--json");
      const agent = await fleet.startAgent(ws);
      await fleet.waitTask(task.id, (x) => x.state === "done", "rollback");
      await agent.stop();
      expect(readFileSync(path.join(ws.root, "etc/debian_version"), "utf8")).toMatch(/^12\./);
      // The whole root equals the pre-migration state (tmp is excluded from protection and untouched).
      // …but for what no snapshot holds: the policy's excluded caches (ldconfig's aux-cache,
      // rewritten by the migration's trigger) and apt's lists (unprotected) that the
      // reinstall's apt-get update fetched.
      expect(
        lines(rsyncItemize(before, ws.root)).filter((l) => !/ var\/(cache|lib\/apt\/lists)\//.test(l)),
      ).toEqual([]);
      expect(sh(`chroot ${ws.root} dpkg -s hello-user`)).toMatch(/^Version: 1\.0$/m);
    }, 900_000);

    it("migrates onto a replacement device: the CVD recovered there, then moved to Debian 13", async () => {
      // The old system as it was before the migration: the migration's safety snapshot.
      const tasks = await fleet.ok("task", "list", "--cvd", ws.cvd!, "--json");
      const migration = tasks.find(
        (t: { kind: string; params: { migrate?: boolean } }) => t.kind === "apply" && t.params.migrate,
      );
      const s12 = migration.result.safetySnapshot as string;
      const nd: Endpoint = { name: "nd", root: path.join(dir, "nd"), state: path.join(dir, "state-nd") };
      mkdirSync(path.join(nd.root, "etc"), { recursive: true });
      writeFileSync(path.join(nd.root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
      const token = await fleet.ok("tokens", "create", "--json");
      const e = await fleet.ok(
        "agent",
        "enroll",
        "--server",
        fleet.server.url,
        "--token",
        token.token,
        "--fingerprint",
        token.serverFingerprint,
        "--root",
        nd.root,
        "--state",
        nd.state,
        "--json",
      );
      const rec = await fleet.ok(
        "cvd",
        "recover",
        ws.cvd!,
        "--endpoint",
        e.endpointId,
        "--snapshot",
        s12,
        "--no-streaming",
        "--json",
      );
      let agent = await fleet.startAgent(nd);
      await fleet.waitTask(rec.id, (x) => x.state === "done", "recover onto the new device");
      await agent.stop();
      expect(readFileSync(path.join(nd.root, "etc/debian_version"), "utf8")).toMatch(/^12\./);
      const mig = await fleet.ok("cvd", "migrate", ws.cvd!, "--base", "debian13", "--json");
      agent = await fleet.startAgent(nd);
      await fleet.waitTask(mig.id, (x) => x.state === "done", "migrate the new device");
      await agent.stop();
      expect(sh(`chroot ${nd.root} cat /etc/debian_version`)).toMatch(/^13\./);
      expect(sh(`chroot ${nd.root} dpkg --audit`).trim()).toBe("");
      expect(readFileSync(path.join(nd.root, "etc/passwd"), "utf8")).toMatch(/^alice:x:1000:1000:/m);
      // Alice's files are the old machine's, byte for byte.
      expect(
        lines(rsyncItemize(path.join(before, "home/alice"), path.join(nd.root, "home/alice"))).filter(
          (l) => !/ \.\/$/.test(l),
        ),
      ).toEqual([]);
    }, 900_000);
  },
);
