import { closeSync, existsSync, fstatSync, lstatSync, mkdirSync, readlinkSync } from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { StageCreator } from "../src/restore/creator.js";
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
    notCreated: (e) => problems.push(e ? e.message : `${p}: its directory was not made`),
  };
}

describe("staged entries created on libuv's pool (restore.md, The stage's tree is created off the walk)", () => {
  it("runs one job at a time and sends what was queued meanwhile when it ends, in order", async () => {
    const dir = tmp("strata-creator-");
    mkdirSync(path.join(dir, "a"));
    const problems: string[] = [];
    const c = new StageCreator();
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

  it("makes directories and symlinks in queue order; what goes into a directory that failed is dropped quietly", async () => {
    const dir = tmp("strata-creator-");
    const heard: string[] = [];
    const c = new StageCreator();
    const hear = (name: string) => (e: Error | null) => heard.push(`${name}: ${e ? e.message : "dropped"}`);
    // A directory, then entries queued into it before it is made.
    const d = c.make(Buffer.from(path.join(dir, "d")), 0o755, undefined, "/d", hear("/d"));
    const e = c.make(Buffer.from(path.join(dir, "d", "e")), 0o700, undefined, "/d/e", hear("/d/e"), d);
    const f = pending(path.join(dir, "d", "e", "f"), heard);
    const fDone = c.add(f, 0o600, e);
    const l = c.make(
      Buffer.from(path.join(dir, "d", "l")),
      0o777,
      Buffer.from("e/f"),
      "/d/l",
      hear("/d/l"),
      d,
    );
    // A directory that cannot be made (its parent is missing), and what was queued into it.
    const bad = c.make(Buffer.from(path.join(dir, "no", "x")), 0o700, undefined, "/no/x", hear("/no/x"));
    const under = c.make(
      Buffer.from(path.join(dir, "no", "x", "y")),
      0o700,
      undefined,
      "/no/x/y",
      hear("/no/x/y"),
      bad,
    );
    const g = pending(path.join(dir, "no", "x", "y", "g"), heard);
    c.add(g, 0o600, under);
    const s = c.make(
      Buffer.from(path.join(dir, "no", "x", "s")),
      0o777,
      Buffer.from("t"),
      "/no/x/s",
      hear("/no/x/s"),
      bad,
    );
    expect(c.jobs).toBe(0); // fewer than 64 queued: nothing went yet
    await c.idle();
    expect(c.jobs).toBe(1);
    await fDone;

    expect([d.failed, e.failed, l.failed]).toEqual([false, false, false]);
    expect(lstatSync(path.join(dir, "d", "e")).isDirectory()).toBe(true);
    expect(readlinkSync(path.join(dir, "d", "l"))).toBe("e/f");
    expect(f.fd).toBeGreaterThanOrEqual(0);
    closeSync(f.fd);
    expect([bad.failed, under.failed, s.failed, g.skipped]).toEqual([true, true, true, true]);
    expect(heard).toEqual([
      expect.stringMatching(/^\/no\/x: ENOENT.*no\/x/),
      "/no/x/y: dropped",
      expect.stringMatching(/no\/x\/y\/g: its directory was not made$/),
      "/no/x/s: dropped",
    ]);
    expect(c.failure).toBeNull();
    await expect(c.idle()).resolves.toBeUndefined(); // nothing queued: at once

    // The queue is bounded: a job runs while 4,096 more wait, and room() waits until all are made.
    const mk = (name: string) =>
      c.make(Buffer.from(path.join(dir, "d", name)), 0o700, undefined, `/d/${name}`, hear(`/d/${name}`));
    const few = mk("few");
    const before = c.jobs;
    await c.room(); // one waits: at once, nothing sent
    expect([c.jobs, existsSync(path.join(dir, "d", "few"))]).toEqual([before, false]);
    for (let i = 0; i < 63; i++) mk(`m${i}`); // 64 queued: a job goes
    expect(c.jobs).toBe(before + 1);
    const many = Array.from({ length: 4096 }, (_, i) => mk(`n${i}`));
    expect(c.jobs).toBe(before + 1); // they wait for that job
    await c.room();
    expect(existsSync(path.join(dir, "d", "n4095"))).toBe(true);
    expect([few, ...many].every((m) => !m.failed)).toBe(true);
  });
});
