import { closeSync, existsSync, fstatSync, mkdirSync } from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FileCreator } from "../src/restore/creator.js";
import type { PendingFile } from "../src/restore/fetcher.js";
import { cleanup, tmp } from "./helpers.js";

afterAll(() => cleanup());

function pending(p: string, problems: string[]): PendingFile {
  return {
    path: Buffer.from(p),
    name: `/${path.basename(p)}`,
    fd: -1,
    missing: 0,
    finish: () => {},
    notCreated: (e) => problems.push(e.message),
  };
}

describe("staged files created on libuv's pool (restore.md, Files are created off the walk)", () => {
  it("runs one job at a time and sends what was queued meanwhile when it ends, in order", async () => {
    const dir = tmp("strata-creator-");
    mkdirSync(path.join(dir, "a"));
    const problems: string[] = [];
    const c = new FileCreator();
    const first = Array.from({ length: 64 }, (_, i) => pending(path.join(dir, "a", `f${i}`), problems));
    const firstDone = first.map((f) => c.add(f, 0o640));
    expect(c.jobs).toBe(1); // 64 queued: the job went

    // Queued while the first job runs: not sent, even at 64 or on flush.
    const second = Array.from({ length: 100 }, (_, i) => pending(path.join(dir, "a", `g${i}`), problems));
    const secondDone = second.map((f) => c.add(f, 0o600));
    // One whose directory does not exist: reported and skipped, the rest go on.
    const orphan = pending(path.join(dir, "missing", "x"), problems);
    secondDone.push(c.add(orphan, 0o600));
    c.flush();
    expect(c.jobs).toBe(1);

    await Promise.all(firstDone);
    expect(c.jobs).toBe(2); // the first ended: everything queued went as one job
    await Promise.all(secondDone);
    expect(c.jobs).toBe(2);

    for (const f of [...first, ...second]) {
      expect(f.fd).toBeGreaterThanOrEqual(0);
      expect(f.skipped).toBeUndefined();
      expect(fstatSync(f.fd).isFile()).toBe(true);
      closeSync(f.fd);
    }
    expect(orphan.skipped).toBe(true);
    expect(orphan.fd).toBe(-1);
    expect(problems).toEqual([expect.stringMatching(/ENOENT.*missing\/x/)]);
    expect(existsSync(path.join(dir, "a", "g99"))).toBe(true);

    // Nothing queued: flush does nothing; a lone file goes at flush.
    c.flush();
    expect(c.jobs).toBe(2);
    const lone = pending(path.join(dir, "a", "lone"), problems);
    const loneDone = c.add(lone, 0o600);
    expect(c.jobs).toBe(2);
    c.flush();
    expect(c.jobs).toBe(3);
    await loneDone;
    expect(lone.fd).toBeGreaterThanOrEqual(0);
    closeSync(lone.fd);
  });
});
