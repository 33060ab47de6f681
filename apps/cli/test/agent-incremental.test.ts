/**
 * The watcher's dirty set reaching the upload, end to end over real HTTPS
 * on loopback: `strata agent run` with its watcher, a change on the
 * endpoint, `strata agent sync-now`, and the recorded upload lists only the
 * changed directories (docs/design/agent.md, "Incremental uploads"); the
 * snapshot restores with the change.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Endpoint, Fleet } from "./fleet-harness.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-incremental-"));
const fleet = new Fleet(dir);

function makeEndpoint(name: string): Endpoint {
  const root = path.join(dir, name);
  for (const d of ["etc", "home/alice/docs", "tmp"]) mkdirSync(path.join(root, d), { recursive: true });
  writeFileSync(path.join(root, "etc/hostname"), `${name}\n`);
  writeFileSync(path.join(root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);
  writeFileSync(
    path.join(root, "etc/passwd"),
    "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
  );
  for (let i = 0; i < 20; i++) {
    mkdirSync(path.join(root, `usr/share/pkg${i}`), { recursive: true });
    for (let j = 0; j < 5; j++)
      writeFileSync(path.join(root, `usr/share/pkg${i}/file${j}`), `pkg ${i} file ${j}\n`);
  }
  for (let i = 0; i < 5; i++)
    writeFileSync(path.join(root, `home/alice/docs/doc${i}.txt`), `document ${i}\n`);
  return { name, root, state: path.join(dir, `state-${name}`) };
}

describe("strata agent run: incremental uploads from the watcher", () => {
  let ep: Endpoint;

  beforeAll(async () => {
    await fleet.start();
    ep = makeEndpoint("ws-inc");
    await fleet.enroll([ep]);
  }, 300_000);
  afterAll(async () => {
    await fleet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a change and sync-now: the upload reads the changed directory only, and the snapshot has the change", async () => {
    const agent = await fleet.startAgent(ep);
    try {
      // The first upload after a start walks everything: nothing was watched before.
      const first = await agent.waitFor((s) => s?.lastUpload?.result === "ok", "the first upload");
      expect(first.lastUpload).toMatchObject({
        full: true,
        reason: "nothing was watched before the agent started",
      });
      expect(first.lastUpload.dirsRead).toBeGreaterThan(20);
      // From now on the watcher vouches for its set.
      await agent.waitFor((s) => s?.changes?.full === null, "the watcher's set to be trusted");

      writeFileSync(path.join(ep.root, "home/alice/docs/doc2.txt"), "document 2, edited\n");
      writeFileSync(path.join(ep.root, "home/alice/docs/new.txt"), "a new document\n");
      await agent.waitFor((s) => s?.changes?.dirs >= 1, "the watcher to see the change");
      const sync = await fleet.ok("agent", "sync-now", "--state", ep.state, "--json");
      expect(["starting", "queued"]).toContain(sync.outcome);
      const after = await agent.waitFor(
        (s) => s?.lastUpload?.result === "ok" && s.lastUpload.finishedAt !== first.lastUpload.finishedAt,
        "the upload after sync-now",
      );
      expect(after.lastUpload).toMatchObject({ full: false, reason: null, dirtyDirs: 1, dirsRead: 1 });
      expect(after.lastUpload.summary.scan).toMatchObject({ full: false, dirtyDirs: 1, dirsRead: 1 });
      expect(after.lastUpload.summary.changedFiles).toBe(2);
      const human = await fleet.strata({}, "agent", "status", "--state", ep.state);
      expect(human.stdout).toMatch(/last upload: +ok at .*, 1 changed directories, 1 read/);

      // The snapshot restores with the change (the server's data is a repository).
      const snapshot = after.lastUpload.summary.snapshot as string;
      const target = path.join(dir, "restored");
      await fleet.ok(
        "restore",
        "--repo",
        fleet.data,
        "--password-file",
        path.join(fleet.data, "repository.password"),
        `${snapshot}:/home`,
        "--target",
        target,
      );
      expect(readFileSync(path.join(target, "alice/docs/doc2.txt"), "utf8")).toBe("document 2, edited\n");
      expect(readFileSync(path.join(target, "alice/docs/new.txt"), "utf8")).toBe("a new document\n");
      expect(readFileSync(path.join(target, "alice/docs/doc4.txt"), "utf8")).toBe("document 4\n");

      // A tree moved in from outside: every directory in it is watched and dirty (what was in
      // it was never reported), so the next upload follows the set and still stores all of it;
      // from then on a change deep inside it is seen.
      mkdirSync(path.join(dir, "outside/project/src/lib"), { recursive: true });
      writeFileSync(path.join(dir, "outside/project/src/lib/a.c"), "int a;\n");
      renameSync(path.join(dir, "outside/project"), path.join(ep.root, "home/alice/project"));
      await agent.waitFor((s) => s?.changes?.dirs === 4, "the moved-in tree");
      const sync2 = async (prev: string) => {
        await fleet.ok("agent", "sync-now", "--state", ep.state, "--json");
        return agent.waitFor(
          (s) => s?.lastUpload?.result === "ok" && s.lastUpload.finishedAt !== prev,
          "the upload after sync-now",
        );
      };
      const moved = await sync2(after.lastUpload.finishedAt);
      expect(moved.lastUpload).toMatchObject({ full: false, dirtyDirs: 4 });
      writeFileSync(path.join(ep.root, "home/alice/project/src/lib/a.c"), "int a = 1;\n");
      await agent.waitFor(
        (s) => s?.changes?.dirs >= 1,
        "the watcher to see the change deep in the moved tree",
      );
      const deep = await sync2(moved.lastUpload.finishedAt);
      expect(deep.lastUpload).toMatchObject({ full: false, dirtyDirs: 1, dirsRead: 1 });
      const target2 = path.join(dir, "restored2");
      await fleet.ok(
        "restore",
        "--repo",
        fleet.data,
        "--password-file",
        path.join(fleet.data, "repository.password"),
        `${deep.lastUpload.summary.snapshot}:/home/alice/project`,
        "--target",
        target2,
      );
      expect(readFileSync(path.join(target2, "src/lib/a.c"), "utf8")).toBe("int a = 1;\n");
    } finally {
      await agent.stop();
    }
  }, 300_000);
});
