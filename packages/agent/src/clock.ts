/**
 * Time for the agent's long-running parts (throttle, scheduler, daemon).
 * Injected so tests drive time by hand instead of waiting for it.
 */
export interface Clock {
  /** Wall-clock milliseconds since the epoch. */
  now(): number;
  /**
   * Resolve after `ms` (immediately when `ms <= 0`); reject with the
   * signal's reason as soon as `signal` aborts.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("aborted", "AbortError");
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep(ms, signal) {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      const onAbort = () => {
        clearTimeout(timer);
        reject(abortReason(signal as AbortSignal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  },
};

/** True for the rejection of an aborted wait or request. */
export function isAbort(e: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted && e === signal.reason) return true;
  return (e as { name?: string } | null)?.name === "AbortError";
}
