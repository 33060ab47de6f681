import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SyncQueue } from "../src/restore/fetcher.js";
import { cleanup, tmp } from "./helpers.js";

afterAll(() => cleanup());

const MiB = 1024 * 1024;

describe("background syncfs while a restore writes (restore.md, Durability)", () => {
  it("starts one every 64 MiB written, one at a time, and leaves errors to the commit's own syncfs", async () => {
    const dir = Buffer.from(tmp("strata-sync-"));
    const q = new SyncQueue(16, true, () => [dir]);
    q.written(10 * MiB);
    expect(q.backgroundSyncs).toBe(0);
    q.written(64 * MiB);
    expect(q.backgroundSyncs).toBe(1);
    q.written(200 * MiB); // the first still runs: no second one on top of it
    expect(q.backgroundSyncs).toBe(1);
    await q.settled();
    q.written(100 * MiB); // under 64 MiB since the last one started
    expect(q.backgroundSyncs).toBe(1);
    q.written(130 * MiB);
    expect(q.backgroundSyncs).toBe(2);
    await q.settled();

    // A workdir that is gone: the background round ends quietly (the commit reports).
    const gone = new SyncQueue(16, true, () => [Buffer.from(path.join(tmp("strata-sync-"), "gone"))]);
    gone.written(64 * MiB);
    expect(gone.backgroundSyncs).toBe(1);
    await expect(gone.settled()).resolves.toBeUndefined();

    // fsync per file (no syncfs) and no stage yet: nothing to start.
    const perFile = new SyncQueue(16, false, () => [dir]);
    perFile.written(1000 * MiB);
    expect(perFile.backgroundSyncs).toBe(0);
    const noStage = new SyncQueue(16, true, () => []);
    noStage.written(1000 * MiB);
    expect(noStage.backgroundSyncs).toBe(0);
  });
});
