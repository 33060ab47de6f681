/**
 * Login rate limiting per (user name, remote address): after `maxFailures`
 * failures within `window`, further attempts are refused for a lock time
 * that doubles with each further failure (capped), without checking the
 * password. A success clears the key.
 *
 * State is in memory: correct for one server node. A cluster behind a load
 * balancer gives each node its own budget; moving the counters into the
 * catalog is the fix (documented in docs/design/server.md).
 */
import { StrataError } from "@strata/core";

export interface RateLimitOptions {
  maxFailures: number;
  windowMs: number;
  baseLockMs: number;
  maxLockMs: number;
  /** Keys remembered at most; the oldest are forgotten first. */
  maxKeys: number;
}

export const DEFAULT_RATE_LIMIT: RateLimitOptions = {
  maxFailures: 5,
  windowMs: 60_000,
  baseLockMs: 60_000,
  maxLockMs: 60 * 60_000,
  maxKeys: 100_000,
};

interface Entry {
  failures: number;
  firstAt: number;
  lockedUntil: number;
}

/** LOCKED with the seconds to wait (the HTTP layer sends them as Retry-After). */
export class RateLimitedError extends StrataError {
  readonly retryAfterSeconds: number;
  constructor(message: string, retryAfterSeconds: number) {
    super("LOCKED", message, { hint: "wait, then check the user name and password" });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export class LoginRateLimiter {
  private readonly entries = new Map<string, Entry>();
  private readonly opts: RateLimitOptions;
  private readonly now: () => number;

  constructor(opts: Partial<RateLimitOptions> = {}, now: () => number = Date.now) {
    this.opts = { ...DEFAULT_RATE_LIMIT, ...opts };
    this.now = now;
  }

  private key(user: string, addr: string): string {
    return `${user}\u0000${addr}`;
  }

  /** Throws LOCKED (HTTP 429) when this user+address must wait. */
  check(user: string, addr: string): void {
    const e = this.entries.get(this.key(user, addr));
    if (!e) return;
    const wait = e.lockedUntil - this.now();
    if (wait > 0) {
      const s = Math.ceil(wait / 1000);
      throw new RateLimitedError(
        `too many failed logins for ${user} from this address; try again in ${s} s`,
        s,
      );
    }
  }

  failure(user: string, addr: string): void {
    const k = this.key(user, addr);
    const t = this.now();
    let e = this.entries.get(k);
    const stale =
      e !== undefined &&
      e.lockedUntil <= t &&
      (e.failures < this.opts.maxFailures
        ? t - e.firstAt > this.opts.windowMs
        : t - e.lockedUntil > this.opts.maxLockMs);
    if (!e || stale) {
      e = { failures: 0, firstAt: t, lockedUntil: 0 };
    }
    e.failures++;
    if (e.failures >= this.opts.maxFailures) {
      const lock = Math.min(
        this.opts.maxLockMs,
        this.opts.baseLockMs * 2 ** (e.failures - this.opts.maxFailures),
      );
      e.lockedUntil = t + lock;
    }
    this.entries.delete(k); // re-insert: Map order is the eviction order
    this.entries.set(k, e);
    if (this.entries.size > this.opts.maxKeys) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.sweep(t);
  }

  success(user: string, addr: string): void {
    this.entries.delete(this.key(user, addr));
  }

  /** Forget entries idle past the longest lock. */
  private sweep(t: number): void {
    if (this.entries.size < 1000) return;
    for (const [k, e] of this.entries) {
      if (e.lockedUntil < t && t - e.firstAt > this.opts.maxLockMs) this.entries.delete(k);
    }
  }
}
