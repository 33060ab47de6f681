import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { StrataError } from "@strata/core";
import type { LeaseRecord, RepoCatalog } from "./catalog.js";

export const LEASE_TTL_MS = 60_000;

/** A holder name unique across hosts and processes: `what@host:pid:random`. */
export function leaseHolder(what: string): string {
  return `${what}@${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
}

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
  let got = await catalog.acquireLease(record, t);
  if (!got && (await breakDeadLocalLeases(catalog, name, t))) got = await catalog.acquireLease(record, now());
  if (!got) {
    const holders = (await catalog.listLeases(t)).filter((l) => l.name === name);
    throw new StrataError(
      "LOCKED",
      `the repository is busy: ${holders.map((h) => `${h.holder} (${h.mode}, until ${h.expiresAt.toISOString()})`).join(", ")}`,
      { hint: "wait for the other operation to finish; a crashed one releases its lease when it expires" },
    );
  }
  let lost: unknown = null;
  const timer = setInterval(
    () => {
      catalog
        .renewLease(name, holder, new Date(now().getTime() + ttlMs), now())
        .then((ok) => {
          if (!ok) lost = new StrataError("LOCKED", `lease ${name} held by ${holder} was lost`);
        })
        .catch((e) => {
          lost = e;
        });
    },
    Math.max(1000, ttlMs / 3),
  );
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

/**
 * A lease held by a process of this host that no longer exists (killed) is
 * released at once instead of waiting for it to expire: the holder name says
 * host and pid. Leases of other hosts only ever expire.
 */
async function breakDeadLocalLeases(catalog: RepoCatalog, name: string, now: Date): Promise<boolean> {
  let broke = false;
  for (const l of await catalog.listLeases(now)) {
    if (l.name !== name) continue;
    const m = /@([^:]+):(\d+):[0-9a-f]+$/.exec(l.holder);
    if (!m || m[1] !== hostname()) continue;
    const pid = Number(m[2]);
    if (pid === process.pid || processAlive(pid)) continue;
    await catalog.releaseLease(l.name, l.holder);
    broke = true;
  }
  return broke;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
