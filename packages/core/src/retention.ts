/**
 * Retention policy: which snapshots to keep. Same semantics as restic's
 * `forget`: keep the newest N; for each of the last N hours/days/weeks/months
 * that have snapshots, keep the newest snapshot of that period. A snapshot
 * kept by any rule is kept. Periods are computed in UTC so the result does
 * not depend on the machine's time zone.
 */
export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

export interface Dated {
  id: string;
  time: Date;
}

export interface RetentionDecision<T> {
  keep: { item: T; reasons: string[] }[];
  remove: T[];
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${week}`;
}

const BUCKETS: { key: keyof RetentionPolicy; label: string; of: (d: Date) => string }[] = [
  { key: "hourly", label: "hourly", of: (d) => d.toISOString().slice(0, 13) },
  { key: "daily", label: "daily", of: (d) => d.toISOString().slice(0, 10) },
  { key: "weekly", label: "weekly", of: isoWeek },
  { key: "monthly", label: "monthly", of: (d) => d.toISOString().slice(0, 7) },
  { key: "yearly", label: "yearly", of: (d) => d.toISOString().slice(0, 4) },
];

export function isEmptyPolicy(p: RetentionPolicy): boolean {
  return !Object.values(p).some((v) => typeof v === "number" && v > 0);
}

export function applyRetention<T extends Dated>(
  items: readonly T[],
  policy: RetentionPolicy,
): RetentionDecision<T> {
  const sorted = [...items].sort((a, b) => b.time.getTime() - a.time.getTime() || (a.id < b.id ? 1 : -1));
  const reasons = new Map<T, string[]>();
  const add = (item: T, why: string) => {
    const r = reasons.get(item) ?? [];
    r.push(why);
    reasons.set(item, r);
  };
  for (const s of sorted.slice(0, policy.last ?? 0)) add(s, "last");
  for (const b of BUCKETS) {
    let budget = policy[b.key] ?? 0;
    let lastBucket: string | null = null;
    for (const s of sorted) {
      if (budget <= 0) break;
      const bucket = b.of(s.time);
      if (bucket !== lastBucket) {
        add(s, b.label);
        lastBucket = bucket;
        budget--;
      }
    }
  }
  return {
    keep: sorted.filter((s) => reasons.has(s)).map((item) => ({ item, reasons: reasons.get(item)! })),
    remove: sorted.filter((s) => !reasons.has(s)),
  };
}
