/**
 * The RestoreSessionStore and TaskStore contract (restores.ts), run against
 * SQLite and PostgreSQL by restores.test.ts.
 */
import { isStrataError, type SnapshotId, type TreeId } from "@strata/core";
import { describe, expect, it } from "vitest";
import type { RestoreSessionRecord, RestoreSessionStore, TaskRecord, TaskStore } from "../src/index.js";
import { hid } from "./contract.js";

const t0 = new Date("2026-02-01T08:00:00.000Z");
const at = (s: number) => new Date(t0.getTime() + s * 1000);
let seq = 0;

function session(cvdId: string, over: Partial<RestoreSessionRecord> = {}): RestoreSessionRecord {
  return {
    id: `rs_${seq++}`,
    cvdId,
    snapshot: hid(`snap${seq}`) as SnapshotId,
    root: hid(`root${seq}`) as TreeId,
    path: null,
    openedBy: "endpoint:ep_a",
    state: "open",
    createdAt: at(seq),
    updatedAt: at(seq),
    expiresAt: at(seq + 3600),
    closedAt: null,
    bytesSent: 0,
    chunksSent: 0,
    treesSent: 0,
    ...over,
  };
}

function task(cvdId: string, over: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id: `task_${seq++}`,
    cvdId,
    endpointId: "ep_a",
    kind: "system",
    params: { snapshot: hid("s") },
    state: "queued",
    progress: null,
    result: null,
    error: null,
    createdBy: "user:admin",
    createdAt: at(seq),
    updatedAt: at(seq),
    startedAt: null,
    finishedAt: null,
    ...over,
  };
}

export function runRestoreStoreContract(
  name: string,
  open: () => Promise<{ sessions: RestoreSessionStore; tasks: TaskStore; close(): Promise<void> }>,
): void {
  describe(`RestoreSessionStore contract (${name})`, () => {
    it("creates, counts, lists newest first, expires and closes sessions", async () => {
      const s = await open();
      try {
        const cvd = `cvd_rs${seq++}`;
        expect(await s.sessions.getRestoreSession("rs_missing")).toBeNull();
        const a = session(cvd, { path: "/home/alice", openedBy: "user:helpdesk" });
        const b = session(cvd);
        await s.sessions.createRestoreSession(a);
        await s.sessions.createRestoreSession(b);
        await s.sessions.createRestoreSession(session(`${cvd}x`));
        expect(await s.sessions.getRestoreSession(a.id)).toEqual(a);
        await s.sessions.touchRestoreSession(a.id, at(5000), at(9000), { bytesSent: 100, chunksSent: 2 });
        await s.sessions.touchRestoreSession(a.id, at(5001), at(9001), { treesSent: 3, bytesSent: 5 });
        const got = await s.sessions.getRestoreSession(a.id);
        expect(got).toMatchObject({ bytesSent: 105, chunksSent: 2, treesSent: 3, expiresAt: at(9001) });
        expect((await s.sessions.listRestoreSessions(cvd, 10)).map((x) => x.id)).toEqual([b.id, a.id]);
        expect((await s.sessions.listRestoreSessions(cvd, 1)).map((x) => x.id)).toEqual([b.id]);
        const expired = (await s.sessions.expiredRestoreSessions(new Date(b.expiresAt.getTime() + 1000))).map(
          (x) => x.id,
        );
        expect(expired).toContain(b.id);
        expect(expired).not.toContain(a.id);
        expect(await s.sessions.closeRestoreSession(b.id, "expired", at(7000))).toBe(true);
        expect(await s.sessions.closeRestoreSession(b.id, "closed", at(7001))).toBe(false);
        expect(await s.sessions.getRestoreSession(b.id)).toMatchObject({
          state: "expired",
          closedAt: at(7000),
        });
        // A closed session counts nothing more.
        await s.sessions.touchRestoreSession(b.id, at(7002), at(9999), { bytesSent: 1 });
        expect((await s.sessions.getRestoreSession(b.id))?.bytesSent).toBe(0);
      } finally {
        await s.close();
      }
    });
  });

  describe(`TaskStore contract (${name})`, () => {
    it("one queued or running task per CVD; compare-and-set transitions; filters newest first", async () => {
      const s = await open();
      try {
        const cvd = `cvd_t${seq++}`;
        expect(await s.tasks.getTask("task_missing")).toBeNull();
        const a = task(cvd);
        await s.tasks.createTask(a);
        expect(await s.tasks.getTask(a.id)).toEqual(a);
        const second = await s.tasks.createTask(task(cvd)).then(
          () => null,
          (e: unknown) => e,
        );
        expect(isStrataError(second, "ALREADY_EXISTS")).toBe(true);
        expect((second as Error).message).toContain(cvd);
        expect(await s.tasks.listTasks({ cvdId: cvd, limit: 10 })).toHaveLength(1);

        // queued → running only once; progress only while running.
        expect(
          await s.tasks.updateTask(a.id, ["queued"], { state: "running", startedAt: at(100) }, at(100)),
        ).toBe(true);
        expect(await s.tasks.updateTask(a.id, ["queued"], { state: "running" }, at(101))).toBe(false);
        expect(
          await s.tasks.updateTask(
            a.id,
            ["running"],
            { progress: { restoredBytes: 5, usable: false } },
            at(102),
          ),
        ).toBe(true);
        expect(await s.tasks.getTask(a.id)).toMatchObject({
          state: "running",
          startedAt: at(100),
          updatedAt: at(102),
          progress: { restoredBytes: 5, usable: false },
        });
        // Still active: a second task is refused.
        await expect(s.tasks.createTask(task(cvd))).rejects.toThrow(/already has a queued or running task/);
        expect(
          await s.tasks.updateTask(
            a.id,
            ["running"],
            { state: "failed", error: { code: "IO_ERROR", message: "disk full" }, finishedAt: at(200) },
            at(200),
          ),
        ).toBe(true);
        expect(await s.tasks.updateTask(a.id, ["queued", "running"], { state: "cancelled" }, at(201))).toBe(
          false,
        );
        expect(await s.tasks.getTask(a.id)).toMatchObject({
          state: "failed",
          error: { code: "IO_ERROR", message: "disk full" },
          finishedAt: at(200),
        });
        // Finished: the CVD takes a new task.
        const b = task(cvd, {
          kind: "recover",
          endpointId: "ep_b",
          params: { snapshot: hid("x"), full: true },
        });
        await s.tasks.createTask(b);
        const c = task(`${cvd}other`, { endpointId: "ep_b" });
        await s.tasks.createTask(c);
        expect((await s.tasks.listTasks({ cvdId: cvd, limit: 10 })).map((t) => t.id)).toEqual([b.id, a.id]);
        expect((await s.tasks.listTasks({ endpointId: "ep_b", limit: 10 })).map((t) => t.id)).toEqual([
          c.id,
          b.id,
        ]);
        expect(
          (await s.tasks.listTasks({ endpointId: "ep_b", states: ["queued", "running"], limit: 1 })).map(
            (t) => t.id,
          ),
        ).toEqual([c.id]);
        expect(await s.tasks.listTasks({ cvdId: cvd, states: [], limit: 10 })).toEqual([]);
        expect((await s.tasks.listTasks({ cvdId: cvd, states: ["failed"], limit: 10 }))[0]?.id).toBe(a.id);
        expect((await s.tasks.getTask(b.id))?.params).toEqual({ snapshot: hid("x"), full: true });
        expect(await s.tasks.updateTask(b.id, [], { state: "done" }, at(300))).toBe(false);
        expect(
          await s.tasks.updateTask(
            b.id,
            ["queued"],
            { state: "done", result: { files: 3 }, progress: null },
            at(300),
          ),
        ).toBe(true);
        expect(await s.tasks.getTask(b.id)).toMatchObject({
          state: "done",
          result: { files: 3 },
          progress: null,
        });
      } finally {
        await s.close();
      }
    });
  });
}
