import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { defaultPolicy, StrataError, type UploadPolicy } from "@strata/core";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { controlRequest } from "../src/control.js";
import {
  type AgentSelf,
  type ControlResult,
  type RunAgentOptions,
  runAgent,
  type TaskContext,
  type UploadContext,
} from "../src/daemon.js";
import { type AgentStatus, readStatus } from "../src/status.js";
import type { TokenBucket } from "../src/throttle.js";
import { cleanup, FakeClock, settle, tmp, waitFor } from "./helpers.js";

const MIN = 60_000;
const T0 = Date.UTC(2026, 10, 26, 9, 0, 0);
const iso = (ms: number) => new Date(ms).toISOString();

function policy(over: Partial<UploadPolicy> = {}): UploadPolicy {
  return { ...defaultPolicy("pol_1", "Default"), ...over };
}

interface Call {
  at: number;
  cvd: string | undefined;
  dirty: UploadContext["dirty"];
  policyVersion: number;
  rateKBps: number;
}

/** A running agent with a fake server (fetchSelf) and a fake upload (uploadOnce) the test steers. */
class Harness {
  readonly clock = new FakeClock(T0);
  readonly ac = new AbortController();
  self: AgentSelf | (() => never) = { state: "active", policy: policy() };
  fetches: number[] = [];
  calls: Call[] = [];
  running = 0;
  maxRunning = 0;
  /** What the next uploads do; default: succeed at once. */
  behaviour: (ctx: UploadContext) => Promise<unknown> = async () => ({
    snapshot: `snap${this.calls.length}`,
  });
  done: Promise<void> = Promise.resolve();

  constructor(readonly stateDir = tmp()) {}

  async start(over: Partial<RunAgentOptions> = {}): Promise<void> {
    let ready!: () => void;
    const isReady = new Promise<void>((r) => {
      ready = r;
    });
    this.done = runAgent({
      stateDir: this.stateDir,
      clock: this.clock,
      signal: this.ac.signal,
      watch: false,
      random: () => 1 - 1e-12,
      fetchSelf: async () => {
        this.fetches.push(this.clock.now());
        if (typeof this.self === "function") this.self();
        return structuredClone(this.self as AgentSelf);
      },
      uploadOnce: async (ctx) => {
        this.calls.push({
          at: this.clock.now(),
          cvd: ctx.self.cvd?.id,
          dirty: ctx.dirty,
          policyVersion: ctx.policy.version,
          rateKBps: (ctx.throttle as TokenBucket).rateKBps,
        });
        this.running++;
        this.maxRunning = Math.max(this.maxRunning, this.running);
        try {
          ctx.onProgress({ phase: "uploading", bytesDone: 1 });
          return await this.behaviour(ctx);
        } finally {
          this.running--;
        }
      },
      onReady: () => ready(),
      ...over,
    });
    await Promise.race([isReady, this.done]);
  }

  control(req: Parameters<typeof controlRequest>[1]): Promise<ControlResult> {
    return controlRequest<ControlResult>(this.stateDir, req);
  }

  async status(): Promise<AgentStatus> {
    return (await this.control({ cmd: "status" })).status;
  }

  /** Wait until the status satisfies `check`. */
  async until(what: string, check: (s: AgentStatus) => boolean): Promise<AgentStatus> {
    return waitFor(what, async () => {
      const s = await this.status();
      return check(s) ? s : undefined;
    });
  }

  async uploads(n: number): Promise<AgentStatus> {
    await waitFor(`${n} uploads`, () => this.calls.length >= n);
    return this.until(`upload ${n} recorded`, (s) => s.current === null && s.lastUpload !== null);
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.done;
  }
}

/** An upload that runs until its signal aborts. */
const untilAborted = (ctx: UploadContext) =>
  new Promise<never>((_, reject) => {
    ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true });
  });

const harnesses: Harness[] = [];
function harness(stateDir?: string): Harness {
  const h = new Harness(stateDir);
  harnesses.push(h);
  return h;
}
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.stop()));
});
afterAll(cleanup);

describe("runAgent", () => {
  it("uploads at start, then one interval after each success, asking the server before each", async () => {
    const h = harness();
    await h.start();
    const s = await h.uploads(1);
    expect(h.calls[0]?.dirty).toEqual({ kind: "full", reason: "changes are not watched" });
    expect(s).toMatchObject({
      state: "active",
      activity: "idle",
      lastSuccessAt: iso(T0),
      nextUploadAt: iso(T0 + 60 * MIN),
      consecutiveFailures: 0,
      policy: { id: "pol_1", name: "Default", intervalMinutes: 60, bandwidthLimitKBps: 0 },
    });
    expect(s.lastUpload).toMatchObject({ result: "ok", full: true, summary: { snapshot: "snap1" } });
    expect(readStatus(h.stateDir)).toMatchObject({ running: true, lastSuccessAt: iso(T0) });
    expect(h.fetches).toEqual([T0]);

    await h.clock.advance(60 * MIN - 1);
    expect(h.calls.length).toBe(1);
    await h.clock.advance(1);
    await h.uploads(2);
    expect(h.calls[1]?.at).toBe(T0 + 60 * MIN);
    expect(h.fetches.at(-1)).toBe(T0 + 60 * MIN);
    expect(h.maxRunning).toBe(1);
  });

  it("uploads nothing while pending; sync-now asks the server again and uploads once active", async () => {
    const h = harness();
    h.self = { state: "pending", policy: null };
    await h.start();
    const s = await h.until("pending", (x) => x.state === "pending");
    expect([s.activity, s.nextUploadAt, s.policy]).toEqual(["inactive", null, null]);
    const r = await h.control({ cmd: "sync-now" });
    expect(r.outcome).toBe("checking");
    await waitFor("a second fetch", () => h.fetches.length === 2);
    await settle();
    expect(h.calls.length).toBe(0);
    expect((await h.status()).syncRequested).toBe(false);

    h.self = { state: "active", policy: policy() };
    expect((await h.control({ cmd: "sync-now" })).outcome).toBe("checking");
    await h.uploads(1);
  });

  it("retries a failed upload with backoff, then returns to the interval", async () => {
    const h = harness();
    h.behaviour = async () => {
      throw new StrataError("IO_ERROR", "server went away");
    };
    await h.start({ retryBaseMs: 30_000 });
    let s = await h.uploads(1);
    expect(s).toMatchObject({
      activity: "retrying",
      consecutiveFailures: 1,
      nextUploadAt: iso(T0 + 30_000),
      lastSuccessAt: null,
    });
    expect(s.lastUpload).toMatchObject({
      result: "failed",
      error: { code: "IO_ERROR", message: "server went away" },
    });
    await h.clock.advance(29_999);
    expect(h.calls.length).toBe(1);
    await h.clock.advance(1);
    s = await h.uploads(2);
    await h.until("second failure", (x) => x.consecutiveFailures === 2);
    expect((await h.status()).nextUploadAt).toBe(iso(T0 + 30_000 + 60_000));
    h.behaviour = async () => "ok";
    await h.clock.advance(60_000);
    s = await h.until("success", (x) => x.lastUpload?.result === "ok");
    expect(s).toMatchObject({ consecutiveFailures: 0, nextUploadAt: iso(T0 + 90_000 + 60 * MIN) });
  });

  it("snooze stops the running upload, holds uploads until it ends, and survives in status.json", async () => {
    const h = harness();
    h.behaviour = untilAborted;
    await h.start();
    await h.until("uploading", (s) => s.activity === "uploading");
    const r = await h.control({ cmd: "snooze", ms: 120 * MIN });
    expect(r.outcome).toBe("snoozed");
    const s = await h.until("aborted", (x) => x.lastUpload?.result === "aborted");
    expect(s).toMatchObject({
      activity: "snoozed",
      snoozedUntil: iso(T0 + 120 * MIN),
      nextUploadAt: iso(T0 + 120 * MIN),
      consecutiveFailures: 0,
    });
    expect(s.lastUpload?.error?.message).toMatch(/snoozed/);
    expect(readStatus(h.stateDir)?.snoozedUntil).toBe(iso(T0 + 120 * MIN));

    h.behaviour = async () => "ok";
    await h.clock.advance(120 * MIN - 1);
    expect(h.calls.length).toBe(1);
    await h.clock.advance(1);
    const after = await h.until("upload after the snooze", (x) => x.lastUpload?.result === "ok");
    expect(after.snoozedUntil).toBeNull();
    expect(h.calls.length).toBe(2);
  });

  it("sync-now during a snooze uploads once and keeps the snooze; resume ends it", async () => {
    const h = harness();
    await h.start();
    await h.uploads(1);
    await h.clock.advance(5 * MIN);
    await h.control({ cmd: "snooze", ms: 120 * MIN });
    const r = await h.control({ cmd: "sync-now" });
    expect(r.outcome).toBe("starting");
    await h.uploads(2);
    let s = await h.status();
    expect(s).toMatchObject({
      snoozedUntil: iso(T0 + 125 * MIN),
      nextUploadAt: iso(T0 + 125 * MIN),
      lastSuccessAt: iso(T0 + 5 * MIN),
    });
    const resumed = await h.control({ cmd: "resume" });
    expect(resumed.outcome).toBe("resumed");
    s = resumed.status;
    expect([s.snoozedUntil, s.nextUploadAt, s.activity]).toEqual([null, iso(T0 + 65 * MIN), "idle"]);
  });

  it("acts on an administrator's sync and snooze from agent/self, once each, also during an upload; a restart repeats neither", async () => {
    const h = harness();
    const cvd = {
      id: "cvd_1",
      latestSnapshot: null,
      snoozedUntil: null as string | null,
      syncRequestedAt: null as string | null,
    };
    const serve = (over: Partial<typeof cvd>) => {
      Object.assign(cvd, over);
      h.self = { state: "active", policy: policy(), cvd: { ...cvd } };
    };
    serve({});
    await h.start();
    await h.uploads(1);
    // A sync request: the next poll (a minute later) uploads, though none is due for an hour.
    serve({ syncRequestedAt: iso(T0 + 30_000) });
    await h.clock.advance(MIN);
    await h.uploads(2);
    expect(h.calls[1]?.at).toBe(T0 + MIN);
    // The same request seen again changes nothing.
    await h.clock.advance(5 * MIN);
    expect(h.calls.length).toBe(2);
    // An administrator's snooze while an upload runs stops it (the agent asks during uploads too).
    h.behaviour = untilAborted;
    serve({ syncRequestedAt: iso(T0 + 6 * MIN) });
    await h.clock.advance(MIN);
    await h.until("uploading", (s) => s.activity === "uploading");
    serve({ snoozedUntil: iso(T0 + 120 * MIN) });
    await h.clock.advance(MIN);
    let s = await h.until("aborted by the snooze", (x) => x.lastUpload?.result === "aborted");
    expect(s.lastUpload?.error?.message).toMatch(/snoozed by an administrator/);
    expect(s).toMatchObject({ activity: "snoozed", snoozedUntil: iso(T0 + 120 * MIN) });
    expect(s.remote).toEqual({ snoozedUntil: iso(T0 + 120 * MIN), syncRequestedAt: iso(T0 + 6 * MIN) });
    // A sync during the snooze uploads once; the snooze stays.
    h.behaviour = async () => "ok";
    serve({ syncRequestedAt: iso(T0 + 10 * MIN) });
    await h.clock.advance(MIN);
    s = await h.until("synced while snoozed", (x) => x.lastUpload?.result === "ok" && h.calls.length === 4);
    expect(s.snoozedUntil).toBe(iso(T0 + 120 * MIN));
    // The administrator's resume ends it.
    serve({ snoozedUntil: null });
    await h.clock.advance(MIN);
    s = await h.until("resumed", (x) => x.snoozedUntil === null);
    expect(s.activity).toBe("idle");
    // The user snoozes locally; the server's unchanged answers leave that snooze alone.
    await h.control({ cmd: "snooze", ms: 30 * MIN });
    await h.clock.advance(2 * MIN);
    expect((await h.status()).snoozedUntil).not.toBeNull();
    const uploads = h.calls.length;
    await h.stop();

    // A restart with the same answers: no sync, no snooze change.
    const again = harness(h.stateDir);
    again.clock.t = h.clock.now();
    again.self = h.self;
    await again.start();
    await again.until("the server's answer", (x) => x.state === "active");
    await settle();
    expect(again.calls.length).toBe(0);
    expect(uploads).toBe(4);
  });

  it("never runs two uploads at once: sync-now during an upload queues one more", async () => {
    const h = harness();
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    h.behaviour = (ctx) => Promise.race([gate, untilAborted(ctx)]);
    await h.start();
    await h.until("uploading", (s) => s.activity === "uploading");
    const r = await h.control({ cmd: "sync-now" });
    expect(r.outcome).toBe("queued");
    expect(r.status.syncRequested).toBe(true);
    expect(r.status.current?.progress).toEqual({ phase: "uploading", bytesDone: 1 });
    await h.control({ cmd: "sync-now" });
    release();
    await h.uploads(2);
    await settle();
    expect(h.calls.length).toBe(2);
    expect(h.maxRunning).toBe(1);
    expect((await h.status()).syncRequested).toBe(false);
  });

  it("recovers a pending restore before anything else, runs a queued task before uploads, and uploads wait for it", async () => {
    const h = harness();
    const order: string[] = [];
    h.self = {
      state: "active",
      policy: policy(),
      cvd: { id: "cvd_1", latestSnapshot: "s1" },
      tasks: [{ id: "task_1", kind: "system", state: "queued" }],
    };
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const seen: TaskContext[] = [];
    h.behaviour = async () => {
      order.push("upload");
      return { snapshot: "snapX" };
    };
    await h.start({
      recoverPendingRestore: async (stateDir, root) => {
        order.push(`recover ${stateDir === h.stateDir} ${root}`);
        return { outcome: "none" };
      },
      runTask: async (t, ctx) => {
        order.push(`task ${t.id}`);
        seen.push(ctx);
        ctx.onProgress({ restoredBytes: 5, totalBytes: 10, usable: false });
        await gate;
        // Done at the server: the next answer lists it no more.
        h.self = { ...(h.self as AgentSelf), tasks: [] };
        return { files: 3 };
      },
    });
    const s = await h.until("restoring", (x) => x.activity === "restoring");
    expect(s.task).toMatchObject({
      id: "task_1",
      kind: "system",
      progress: { restoredBytes: 5, usable: false },
    });
    expect(seen[0]?.policy?.classify("/home/alice/x")).toBe("user");
    expect((await h.control({ cmd: "sync-now" })).outcome).toBe("queued");
    expect(h.calls.length).toBe(0);
    release();
    await h.uploads(1);
    expect(order).toEqual(["recover true /", "task task_1", "upload"]);
    const after = await h.status();
    expect(after.task).toBeNull();
    expect(after.lastTask).toMatchObject({ id: "task_1", result: "ok", summary: { files: 3 } });
  });

  it("a failing task is not retried before the backoff; a running one is resumed after a restart; stop aborts it", async () => {
    const h = harness();
    h.self = {
      state: "active",
      policy: policy(),
      tasks: [{ id: "task_2", kind: "full", state: "running" }],
    };
    const runs: { at: number; state: string }[] = [];
    let fail = true;
    await h.start({
      retryBaseMs: 30_000,
      runTask: async (t, ctx) => {
        runs.push({ at: h.clock.now(), state: t.state });
        if (fail) throw new StrataError("IO_ERROR", "server went away");
        return untilAborted(ctx as unknown as UploadContext);
      },
    });
    await h.until("task failed", (x) => x.lastTask?.result === "failed");
    expect(runs).toEqual([{ at: T0, state: "running" }]);
    expect((await h.status()).lastTask?.error).toEqual({ code: "IO_ERROR", message: "server went away" });
    fail = false;
    await h.clock.advance(30_000);
    await h.until("restoring again", (x) => x.activity === "restoring");
    expect(runs.length).toBe(2);
    await h.stop();
    expect(readStatus(h.stateDir)?.lastTask).toMatchObject({ id: "task_2", result: "aborted" });
  });

  it("applies a policy change: new interval and bandwidth cap", async () => {
    const h = harness();
    await h.start({ selfPollMs: 10 * MIN });
    await h.uploads(1);
    expect(h.calls[0]?.rateKBps).toBe(0);
    h.self = {
      state: "active",
      policy: policy({ version: 2, intervalMinutes: 5, bandwidthLimitKBps: 512 }),
      cvd: { id: "cvd_2", latestSnapshot: "snap1" },
    };
    // The next poll (10 min) learns the 5-minute interval: an upload is overdue.
    await h.clock.advance(10 * MIN);
    await h.uploads(2);
    expect(h.calls[1]).toMatchObject({ at: T0 + 10 * MIN, policyVersion: 2, rateKBps: 512, cvd: "cvd_2" });
    const s = await h.status();
    expect(s.policy).toMatchObject({ version: 2, intervalMinutes: 5, bandwidthLimitKBps: 512 });
    expect(s.nextUploadAt).toBe(iso(T0 + 15 * MIN));
  });

  it("does not upload for an endpoint disabled meanwhile, and backs off while the server is unreachable", async () => {
    const h = harness();
    await h.start({ selfPollMs: 24 * 60 * MIN, retryBaseMs: 30_000 });
    await h.uploads(1);
    h.self = () => {
      throw new StrataError("IO_ERROR", "connection refused");
    };
    await h.clock.advance(60 * MIN);
    let s = await h.until("a failed attempt", (x) => x.consecutiveFailures === 1);
    expect(h.calls.length).toBe(1);
    expect(s.server.error).toBe("connection refused");
    expect(s.nextUploadAt).toBe(iso(T0 + 60 * MIN + 30_000));

    h.self = { state: "disabled", policy: null };
    await h.clock.advance(30_000);
    s = await h.until("disabled", (x) => x.state === "disabled");
    expect([s.activity, s.nextUploadAt, s.policy, s.server.error]).toEqual(["inactive", null, null, null]);
    await h.clock.advance(120 * MIN);
    expect(h.calls.length).toBe(1);
  });

  it("stops cleanly: aborts the upload, closes the socket, records running: false", async () => {
    const h = harness();
    h.behaviour = untilAborted;
    await h.start();
    await h.until("uploading", (s) => s.activity === "uploading");
    await h.stop();
    const s = readStatus(h.stateDir);
    expect(s).toMatchObject({ running: false, activity: "stopped", current: null });
    expect(s?.lastUpload).toMatchObject({
      result: "aborted",
      error: { code: "ABORTED", message: "the agent is stopping" },
    });
    await expect(h.status()).rejects.toMatchObject({ code: "NOT_FOUND" });
  });

  it("after a restart, counts from the last success and keeps the snooze", async () => {
    const first = harness();
    await first.start();
    await first.uploads(1);
    await first.control({ cmd: "snooze", ms: 180 * MIN });
    await first.stop();

    const second = harness(first.stateDir);
    second.clock.t = T0 + 10 * MIN;
    await second.start();
    const s = await second.until("the server's answer", (x) => x.state === "active");
    await settle();
    expect(second.calls.length).toBe(0);
    expect(s).toMatchObject({
      lastSuccessAt: iso(T0),
      snoozedUntil: iso(T0 + 180 * MIN),
      nextUploadAt: iso(T0 + 180 * MIN),
      activity: "snoozed",
    });
  });

  it("refuses to start on a state directory another agent runs on, leaving its status alone", async () => {
    const h = harness();
    await h.start();
    await h.uploads(1);
    const before = readStatus(h.stateDir);
    await expect(
      runAgent({
        stateDir: h.stateDir,
        signal: new AbortController().signal,
        fetchSelf: async () => h.self as AgentSelf,
        uploadOnce: async () => {},
      }),
    ).rejects.toMatchObject({ code: "LOCKED" });
    expect(readStatus(h.stateDir)).toEqual(before);
  });

  it("hands the upload the watcher's dirty directories as endpoint paths, without excluded areas", async () => {
    const root = tmp();
    for (const d of ["etc", "tmp", "home/alice", "var/lib"])
      mkdirSync(path.join(root, d), { recursive: true });
    const h = harness(path.join(root, "var/lib/strata-agent"));
    await h.start({ root, watch: true });
    let s = await h.uploads(1);
    expect(h.calls[0]?.dirty).toEqual({
      kind: "full",
      reason: "nothing was watched before the agent started",
    });
    expect(s.changes).toEqual({ watching: true, full: null, dirs: 0 });

    writeFileSync(path.join(root, "tmp/junk"), "x"); // factory rule: /tmp contents are excluded
    writeFileSync(path.join(root, "etc/hosts"), "127.0.0.1 localhost\n");
    writeFileSync(path.join(root, "home/alice/notes.txt"), "hi");
    s = await h.until("two changed directories", (x) => x.changes.dirs === 2);
    await h.control({ cmd: "sync-now" });
    await h.uploads(2);
    expect(h.calls[1]?.dirty).toEqual({ kind: "dirs", dirs: ["/etc", "/home/alice"] });
    // The agent's own status writes (in its state directory under the root) are not changes.
    await h.clock.advance(MIN);
    expect((await h.status()).changes.dirs).toBe(0);
  });

  it("records what the upload did (its summary's scan), and after a task the next upload walks everything", async () => {
    const root = tmp();
    for (const d of ["etc", "var/lib"]) mkdirSync(path.join(root, d), { recursive: true });
    const h = harness(path.join(root, "var/lib/strata-agent"));
    h.self = { state: "active", policy: policy(), cvd: { id: "cvd_1", latestSnapshot: "s1" }, tasks: [] };
    // The upload decides: here it cannot trust a set of directories (a snapshot it did not commit).
    h.behaviour = async (ctx) => ({
      scan:
        ctx.dirty.kind === "full"
          ? { full: true, reason: ctx.dirty.reason, dirtyDirs: 0, dirsRead: 40 }
          : {
              full: true,
              reason: "the parent snapshot is not the last one this agent committed",
              dirtyDirs: 0,
              dirsRead: 41,
            },
    });
    await h.start({
      root,
      watch: true,
      runTask: async () => {
        h.self = { ...(h.self as AgentSelf), tasks: [] };
        return {};
      },
    });
    let s = await h.uploads(1);
    expect(s.lastUpload).toMatchObject({
      full: true,
      reason: "nothing was watched before the agent started",
      dirsRead: 40,
    });
    writeFileSync(path.join(root, "etc/hosts"), "127.0.0.1 localhost\n");
    await h.until("a changed directory", (x) => x.changes.dirs === 1);
    await h.control({ cmd: "sync-now" });
    s = await h.uploads(2);
    expect(h.calls[1]?.dirty).toEqual({ kind: "dirs", dirs: ["/etc"] });
    await h.until("the second upload recorded", (x) => x.lastUpload?.dirsRead === 41);
    expect((await h.status()).lastUpload).toMatchObject({
      full: true,
      reason: "the parent snapshot is not the last one this agent committed",
      dirtyDirs: 0,
    });
    // A task (a restore, an apply) rewrites the endpoint: whatever the watcher saw, the next upload walks everything.
    h.self = { ...(h.self as AgentSelf), tasks: [{ id: "task_1", kind: "apply", state: "queued" }] };
    writeFileSync(path.join(root, "etc/motd"), "hello\n");
    await h.until("a changed directory", (x) => x.changes.dirs === 1);
    await h.control({ cmd: "sync-now" });
    await h.uploads(3); // the answer listing the task came with this upload; the task runs after it
    s = await h.until("the task's end", (x) => x.lastTask?.id === "task_1");
    expect(s.changes.full).toBe("task task_1 (apply) changed the endpoint");
    await h.control({ cmd: "sync-now" });
    await h.uploads(4);
    expect(h.calls[3]?.dirty).toEqual({ kind: "full", reason: "task task_1 (apply) changed the endpoint" });
  });
});
