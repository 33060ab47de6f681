import { isStrataError } from "@strata/core";
import { describe, expect, it } from "vitest";
import { UploadScheduler } from "../src/scheduler.js";

const MIN = 60_000;
const H = 60 * MIN;
const T0 = Date.UTC(2026, 10, 26, 9, 0, 0);

describe("UploadScheduler", () => {
  it("plans nothing without a policy, even when asked to sync now", () => {
    const s = new UploadScheduler({ intervalMinutes: null });
    s.syncNow();
    expect(s.nextDueAt(T0)).toBeNull();
    expect(s.isDue(T0)).toBe(false);
  });

  it("is due at once with no known success, then one interval after each success", () => {
    const s = new UploadScheduler({ intervalMinutes: 60 });
    expect(s.isDue(T0)).toBe(true);
    s.started();
    s.succeeded(T0 + 5 * MIN);
    expect(s.nextDueAt(T0 + 5 * MIN)).toBe(T0 + 65 * MIN);
    expect(s.isDue(T0 + 64 * MIN)).toBe(false);
    expect(s.isDue(T0 + 65 * MIN)).toBe(true);
  });

  it("counts from a success recorded before a restart", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, lastSuccessAt: T0 - 10 * MIN });
    expect(s.nextDueAt(T0)).toBe(T0 + 50 * MIN);
  });

  it("counts from now when the clock went back past the last success", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, lastSuccessAt: T0 + 5 * H });
    expect(s.nextDueAt(T0)).toBe(T0 + 60 * MIN);
    expect(s.nextDueAt(T0 + MIN)).toBe(T0 + 60 * MIN);
  });

  it("backs off exponentially with jitter in [0.5, 1], capped at the interval, and resets on success", () => {
    let r = 1 - 1e-12;
    const s = new UploadScheduler({ intervalMinutes: 10, retryBaseMs: 30_000, random: () => r });
    const delays: number[] = [];
    let now = T0;
    for (let i = 0; i < 7; i++) {
      s.started();
      s.failed(now);
      const due = s.nextDueAt(now) as number;
      delays.push(due - now);
      now = due;
    }
    // 30 s, 60 s, 120 s, 240 s, 480 s, then the 600 s interval caps it.
    expect(delays).toEqual([30_000, 60_000, 120_000, 240_000, 480_000, 600_000, 600_000]);
    r = 0;
    s.failed(now);
    expect((s.nextDueAt(now) as number) - now).toBe(300_000);
    expect(s.snapshot(now).consecutiveFailures).toBe(8);
    s.succeeded(now);
    expect(s.snapshot(now).consecutiveFailures).toBe(0);
    expect(s.nextDueAt(now)).toBe(now + 10 * MIN);
    s.failed(now + 10 * MIN);
    expect((s.nextDueAt(now + 10 * MIN) as number) - (now + 10 * MIN)).toBe(15_000);
  });

  it("sync-now overrides backoff and snooze, once; the snooze stays", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, random: () => 0.5 });
    s.failed(T0);
    s.snooze(T0 + 2 * H, T0);
    expect(s.nextDueAt(T0 + MIN)).toBe(T0 + 2 * H);
    s.syncNow();
    expect(s.isDue(T0 + MIN)).toBe(true);
    s.started();
    s.succeeded(T0 + 2 * MIN);
    expect(s.snapshot(T0 + 2 * MIN).snoozedUntil).toBe(T0 + 2 * H);
    // The next scheduled upload (T0 + 62 min) falls in the snooze: it waits for its end.
    expect(s.nextDueAt(T0 + 2 * MIN)).toBe(T0 + 2 * H);
  });

  it("sync-now during an upload makes one more upload due right after it", () => {
    const s = new UploadScheduler({ intervalMinutes: 60 });
    s.started();
    s.syncNow();
    s.succeeded(T0);
    expect(s.isDue(T0)).toBe(true);
    s.started();
    s.succeeded(T0 + MIN);
    expect(s.isDue(T0 + MIN)).toBe(false);
  });

  it("snooze delays a due upload to its end; resume brings it back", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, lastSuccessAt: T0 - 2 * H });
    expect(s.isDue(T0)).toBe(true);
    s.snooze(T0 + 30 * MIN, T0);
    expect(s.isDue(T0)).toBe(false);
    expect(s.nextDueAt(T0)).toBe(T0 + 30 * MIN);
    expect(s.snoozedAt(T0 + 29 * MIN)).toBe(T0 + 30 * MIN);
    expect(s.snoozedAt(T0 + 30 * MIN)).toBeNull();
    expect(s.isDue(T0 + 30 * MIN)).toBe(true);
    s.snooze(T0 + 45 * MIN, T0 + 30 * MIN);
    s.resume();
    expect(s.isDue(T0 + 30 * MIN)).toBe(true);
    expect(s.snapshot(T0 + 30 * MIN).snoozedUntil).toBeNull();
  });

  it("a snooze that ends before the next upload changes nothing", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, lastSuccessAt: T0 });
    s.snooze(T0 + 30 * MIN, T0);
    expect(s.nextDueAt(T0)).toBe(T0 + 60 * MIN);
  });

  it("refuses a snooze in the past or longer than the maximum", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, maxSnoozeMs: 24 * H });
    const err = (f: () => void) => {
      try {
        f();
      } catch (e) {
        return e;
      }
      return undefined;
    };
    expect(
      isStrataError(
        err(() => s.snooze(T0, T0)),
        "INVALID_ARGUMENT",
      ),
    ).toBe(true);
    expect(
      isStrataError(
        err(() => s.snooze(T0 + 25 * H, T0)),
        "INVALID_ARGUMENT",
      ),
    ).toBe(true);
    s.snooze(T0 + 24 * H, T0);
    expect(s.snoozedAt(T0)).toBe(T0 + 24 * H);
  });

  it("applies a policy change at once, to the schedule and to a pending retry", () => {
    const s = new UploadScheduler({ intervalMinutes: 60, lastSuccessAt: T0, random: () => 1 - 1e-12 });
    s.setInterval(15);
    expect(s.nextDueAt(T0)).toBe(T0 + 15 * MIN);
    s.setInterval(240);
    expect(s.nextDueAt(T0)).toBe(T0 + 240 * MIN);
    for (let i = 0; i < 10; i++) s.failed(T0 + H);
    expect(s.nextDueAt(T0 + H)).toBe(T0 + H + 240 * MIN);
    s.setInterval(5);
    expect(s.nextDueAt(T0 + H)).toBe(T0 + H + 5 * MIN);
    s.setInterval(null);
    expect(s.nextDueAt(T0 + H)).toBeNull();
    expect(() => s.setInterval(0)).toThrow(/positive/);
  });

  it("reports its state", () => {
    const s = new UploadScheduler({ intervalMinutes: 30, lastSuccessAt: T0, random: () => 0 });
    s.failed(T0 + 30 * MIN);
    expect(s.snapshot(T0 + 30 * MIN)).toEqual({
      intervalMinutes: 30,
      lastSuccessAt: T0,
      lastFailureAt: T0 + 30 * MIN,
      consecutiveFailures: 1,
      retryAt: T0 + 30 * MIN + 15_000,
      syncRequested: false,
      snoozedUntil: null,
      nextDueAt: T0 + 30 * MIN + 15_000,
    });
  });
});
