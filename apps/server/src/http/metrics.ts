/**
 * A few Prometheus metrics, written by hand (text exposition format 0.0.4):
 * request counts by route and status, a latency histogram by route, login
 * outcomes, and process gauges.
 */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
const labels = (l: Record<string, string>) => {
  const s = Object.entries(l)
    .map(([k, v]) => `${k}="${esc(v)}"`)
    .join(",");
  return s ? `{${s}}` : "";
};

export class Metrics {
  private readonly requests = new Map<string, { labels: Record<string, string>; n: number }>();
  private readonly durations = new Map<
    string,
    { labels: Record<string, string>; buckets: number[]; sum: number; count: number }
  >();
  private readonly logins = new Map<string, number>();
  private readonly startedAt = Date.now();

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    const rl = { method, route, status: String(status) };
    const rk = JSON.stringify(rl);
    const r = this.requests.get(rk) ?? { labels: rl, n: 0 };
    r.n++;
    this.requests.set(rk, r);
    const dl = { method, route };
    const dk = JSON.stringify(dl);
    const d = this.durations.get(dk) ?? { labels: dl, buckets: BUCKETS.map(() => 0), sum: 0, count: 0 };
    BUCKETS.forEach((b, i) => {
      if (seconds <= b) d.buckets[i]!++;
    });
    d.sum += seconds;
    d.count++;
    this.durations.set(dk, d);
  }

  observeLogin(outcome: "success" | "failure" | "locked"): void {
    this.logins.set(outcome, (this.logins.get(outcome) ?? 0) + 1);
  }

  render(): string {
    const out: string[] = [];
    out.push("# HELP strata_http_requests_total HTTP requests by method, route and status.");
    out.push("# TYPE strata_http_requests_total counter");
    for (const r of this.requests.values()) out.push(`strata_http_requests_total${labels(r.labels)} ${r.n}`);
    out.push("# HELP strata_http_request_duration_seconds HTTP request latency by method and route.");
    out.push("# TYPE strata_http_request_duration_seconds histogram");
    for (const d of this.durations.values()) {
      BUCKETS.forEach((b, i) => {
        out.push(
          `strata_http_request_duration_seconds_bucket${labels({ ...d.labels, le: String(b) })} ${d.buckets[i]}`,
        );
      });
      out.push(
        `strata_http_request_duration_seconds_bucket${labels({ ...d.labels, le: "+Inf" })} ${d.count}`,
      );
      out.push(`strata_http_request_duration_seconds_sum${labels(d.labels)} ${d.sum}`);
      out.push(`strata_http_request_duration_seconds_count${labels(d.labels)} ${d.count}`);
    }
    out.push("# HELP strata_logins_total Login attempts by outcome.");
    out.push("# TYPE strata_logins_total counter");
    for (const [k, n] of this.logins) out.push(`strata_logins_total${labels({ outcome: k })} ${n}`);
    const mem = process.memoryUsage();
    out.push("# HELP process_resident_memory_bytes Resident set size.");
    out.push("# TYPE process_resident_memory_bytes gauge");
    out.push(`process_resident_memory_bytes ${mem.rss}`);
    out.push("# HELP process_start_time_seconds Start time of the process since the Unix epoch.");
    out.push("# TYPE process_start_time_seconds gauge");
    out.push(`process_start_time_seconds ${Math.floor(this.startedAt / 1000)}`);
    return `${out.join("\n")}\n`;
  }
}
