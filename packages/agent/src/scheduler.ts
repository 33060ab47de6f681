/**
 * When the next upload runs. Pure logic over times in milliseconds: the
 * daemon passes `now` in and asks `nextDueAt(now)`; nothing here sleeps or
 * reads a clock, so every rule is testable by arithmetic.
 *
 * Rules (docs/design/agent.md, "Scheduling"):
 *
 * 1. Without a policy (endpoint pending or disabled) nothing is due.
 * 2. An upload is due `interval` after the last successful one; with no
 *    successful upload known, it is due at once.
 * 3. After a failure the next try is due after an exponential backoff
 *    (`retryBaseMs`, doubled per consecutive failure) capped at the
 *    interval, times a jitter factor in [0.5, 1] so a fleet that failed
 *    together (server down) does not come back together.
 * 4. `syncNow` makes an upload due at once, whatever the backoff or a
 *    snooze says; a snooze stays in effect for the uploads after it.
 *    Asked during an upload, it makes one more upload due right after.
 * 5. A snooze makes nothing else due before it ends. An upload that came
 *    due meanwhile runs when it ends. `resume` ends it early.
 * 6. A new interval (policy change) applies at once, to the last success
 *    and to a pending retry alike.
 */
import { StrataError } from "@strata/core";

export interface SchedulerOptions {
  /** Minutes between uploads, or null when there is no policy. */
  intervalMinutes: number | null;
  /** The last successful upload's time, if one is known (e.g. from status.json). */
  lastSuccessAt?: number | null;
  snoozedUntil?: number | null;
  /** First retry delay after a failure. Default 30 s. */
  retryBaseMs?: number;
  /** Longest snooze accepted. Default 24 h. */
  maxSnoozeMs?: number;
  /** Uniform in [0, 1); injected for deterministic tests. Default Math.random. */
  random?: () => number;
}

export interface ScheduleSnapshot {
  intervalMinutes: number | null;
  lastSuccessAt: number | null;
  lastFailureAt: number | null;
  consecutiveFailures: number;
  /** When the pending retry is due, if the last attempt failed. */
  retryAt: number | null;
  syncRequested: boolean;
  snoozedUntil: number | null;
  nextDueAt: number | null;
}

export const DEFAULT_RETRY_BASE_MS = 30_000;
export const DEFAULT_MAX_SNOOZE_MS = 24 * 3_600_000;

export class UploadScheduler {
  private intervalMs: number | null;
  private lastSuccessAt: number | null;
  private lastFailureAt: number | null = null;
  private failures = 0;
  /** Jitter factor of the pending retry, drawn once per failure. */
  private jitter = 1;
  private syncRequested = false;
  private snoozedUntil: number | null;
  private readonly retryBaseMs: number;
  readonly maxSnoozeMs: number;
  private readonly random: () => number;

  constructor(opts: SchedulerOptions) {
    this.intervalMs = toIntervalMs(opts.intervalMinutes);
    this.lastSuccessAt = opts.lastSuccessAt ?? null;
    this.snoozedUntil = opts.snoozedUntil ?? null;
    this.retryBaseMs = opts.retryBaseMs ?? DEFAULT_RETRY_BASE_MS;
    this.maxSnoozeMs = opts.maxSnoozeMs ?? DEFAULT_MAX_SNOOZE_MS;
    this.random = opts.random ?? Math.random;
  }

  /** A policy arrived, changed, or went away (null). */
  setInterval(intervalMinutes: number | null): void {
    this.intervalMs = toIntervalMs(intervalMinutes);
  }

  syncNow(): void {
    this.syncRequested = true;
  }

  /** No scheduled upload before `until`. */
  snooze(until: number, now: number): void {
    if (!Number.isFinite(until) || until <= now)
      throw new StrataError("INVALID_ARGUMENT", "a snooze must end in the future");
    if (until - now > this.maxSnoozeMs)
      throw new StrataError(
        "INVALID_ARGUMENT",
        `a snooze may last at most ${Math.round(this.maxSnoozeMs / 3_600_000)} h`,
        { hint: "snooze again when it ends; an endpoint that never uploads is not protected" },
      );
    this.snoozedUntil = until;
  }

  resume(): void {
    this.snoozedUntil = null;
  }

  /** The end of the snooze in force at `now`, if any. */
  snoozedAt(now: number): number | null {
    return this.snoozedUntil !== null && this.snoozedUntil > now ? this.snoozedUntil : null;
  }

  /** Forget a sync-now that cannot be served (the endpoint is not active). */
  dropSyncNow(): void {
    this.syncRequested = false;
  }

  /** An upload starts: it serves any sync-now asked before it. */
  started(): void {
    this.syncRequested = false;
  }

  succeeded(now: number): void {
    this.lastSuccessAt = now;
    this.failures = 0;
    this.lastFailureAt = null;
  }

  failed(now: number): void {
    this.failures++;
    this.lastFailureAt = now;
    this.jitter = 0.5 + 0.5 * this.random();
  }

  /** When the retry after the last failure is due (null: no failure pending). */
  private retryAt(): number | null {
    if (this.failures === 0 || this.lastFailureAt === null || this.intervalMs === null) return null;
    // 2^failures overflows to Infinity long before it matters; min() caps it.
    const delay = Math.min(this.intervalMs, this.retryBaseMs * 2 ** (this.failures - 1));
    return this.lastFailureAt + Math.round(delay * this.jitter);
  }

  /**
   * When the next upload should start: a time at or before `now` means
   * now; null means none is planned (no policy).
   */
  nextDueAt(now: number): number | null {
    if (this.intervalMs === null) return null;
    if (this.syncRequested) return now;
    // The clock went back: count from now rather than wait out the jump.
    if (this.lastSuccessAt !== null && this.lastSuccessAt > now) this.lastSuccessAt = now;
    if (this.lastFailureAt !== null && this.lastFailureAt > now) this.lastFailureAt = now;
    let due = this.retryAt() ?? (this.lastSuccessAt === null ? now : this.lastSuccessAt + this.intervalMs);
    const snoozed = this.snoozedAt(now);
    if (snoozed !== null) due = Math.max(due, snoozed);
    return due;
  }

  isDue(now: number): boolean {
    const due = this.nextDueAt(now);
    return due !== null && due <= now;
  }

  snapshot(now: number): ScheduleSnapshot {
    const nextDueAt = this.nextDueAt(now);
    return {
      intervalMinutes: this.intervalMs === null ? null : this.intervalMs / 60_000,
      lastSuccessAt: this.lastSuccessAt,
      lastFailureAt: this.lastFailureAt,
      consecutiveFailures: this.failures,
      retryAt: this.retryAt(),
      syncRequested: this.syncRequested,
      snoozedUntil: this.snoozedAt(now),
      nextDueAt,
    };
  }
}

function toIntervalMs(minutes: number | null): number | null {
  if (minutes === null) return null;
  if (!Number.isFinite(minutes) || minutes <= 0)
    throw new StrataError("INVALID_ARGUMENT", `upload interval ${minutes} min must be positive`);
  return minutes * 60_000;
}
