import { StrataError } from "@strata/core";
import type { LeaseRecord, RepoCatalog } from "./catalog.js";

export const LEASE_TTL_MS = 60_000;

export interface Lease {
  readonly record: LeaseRecord;
  /** Throws when a heartbeat failed: the lease may have been lost. */
  check(): void;
  release(): Promise<void>;
}

/**
 * Take a lease and keep it alive with heartbeats every third of its TTL. A
 * process that dies stops renewing; its lease expires and nobody has to
 * unlock by hand.
 */
export async function holdLease(
  catalog: RepoCatalog,
  name: string,
  holder: string,
  mode: "shared" | "exclusive",
  ttlMs = LEASE_TTL_MS,
  now: () => Date = () => new Date(),
): Promise<Lease> {
  const t = now();
  const record: LeaseRecord = { name, holder, mode, acquiredAt: t, expiresAt: new Date(t.getTime() + ttlMs) };
  if (!(await catalog.acquireLease(record, t))) {
    const holders = (await catalog.listLeases(t)).filter((l) => l.name === name);
    throw new StrataError(
      "LOCKED",
      `the repository is busy: ${holders.map((h) => `${h.holder} (${h.mode}, until ${h.expiresAt.toISOString()})`).join(", ")}`,
      { hint: "wait for the other operation to finish; a crashed one releases its lease when it expires" },
    );
  }
  let lost: unknown = null;
  const timer = setInterval(() => {
    catalog
      .renewLease(name, holder, new Date(now().getTime() + ttlMs))
      .then((ok) => {
        if (!ok) lost = new StrataError("LOCKED", `lease ${name} held by ${holder} was lost`);
      })
      .catch((e) => {
        lost = e;
      });
  }, Math.max(1000, ttlMs / 3));
  timer.unref();
  return {
    record,
    check() {
      if (lost) throw lost;
    },
    async release() {
      clearInterval(timer);
      await catalog.releaseLease(name, holder).catch(() => {});
    },
  };
}
