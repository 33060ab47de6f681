import { closeSync, fstatSync, lstatSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { finishFiles, packFinish } from "../src/restore-worker.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "strata-finish-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("finishFiles (a restore worker closing the files it wrote)", () => {
  it("gives each file its times to the nanosecond, then closes it", () => {
    const files = [0, 1, 2].map((i) => {
      const p = path.join(dir, `f${i}`);
      const fd = openSync(p, "w", 0o644);
      writeSync(fd, `content ${i}\n`);
      // Before 1970, an odd nanosecond, now-ish: the split into seconds and nanoseconds must hold.
      const mtimeNs = [-1_000_000_001n, 1_700_000_000_123_456_789n, 1_764_000_000_000_000_001n][i]!;
      return { p, fd, mtimeNs };
    });
    expect(finishFiles(packFinish(files))).toEqual([]);
    for (const f of files) {
      const st = lstatSync(f.p, { bigint: true });
      expect({ mtime: st.mtimeNs, atime: st.atimeNs }).toEqual({ mtime: f.mtimeNs, atime: f.mtimeNs });
      expect(() => fstatSync(f.fd)).toThrow(/EBADF/); // closed
    }
  });

  it("says which descriptor it could not close, and goes on with the others", () => {
    const good = openSync(path.join(dir, "good"), "w");
    const bad = openSync(path.join(dir, "bad"), "w");
    closeSync(bad); // a descriptor that is no longer open
    const problems = finishFiles(
      packFinish([
        { fd: bad, mtimeNs: 1n },
        { fd: good, mtimeNs: 1_700_000_000_000_000_000n },
      ]),
    );
    expect(problems).toEqual([{ index: 0, closed: false, message: "closing: EBADF" }]);
    expect(lstatSync(path.join(dir, "good"), { bigint: true }).mtimeNs).toBe(1_700_000_000_000_000_000n);
    expect(() => fstatSync(good)).toThrow(/EBADF/);
  });
});
