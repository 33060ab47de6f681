import { StrataError } from "@strata/core";

export const isTTY = () => Boolean(process.stderr.isTTY);

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** A one-line progress display on a terminal; silent otherwise. */
export class Progress {
  private last = "";
  constructor(private readonly enabled = isTTY()) {}
  update(line: string): void {
    if (!this.enabled) return;
    const cols = process.stderr.columns || 100;
    const text = line.length > cols - 1 ? `${line.slice(0, cols - 2)}…` : line;
    process.stderr.write(`\r\x1b[K${text}`);
    this.last = text;
  }
  done(): void {
    if (this.enabled && this.last) process.stderr.write("\r\x1b[K");
    this.last = "";
  }
}

export function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x), 2)}\n`);
}

export function reportError(e: unknown, json: boolean): void {
  const se =
    e instanceof StrataError
      ? e
      : new StrataError("INTERNAL", (e as Error)?.message ?? String(e), { cause: e });
  if (json) {
    process.stdout.write(`${JSON.stringify({ error: se.toJSON() })}\n`);
  } else {
    process.stderr.write(`strata: error: ${se.message}\n`);
    if (se.hint) process.stderr.write(`  hint: ${se.hint}\n`);
  }
  if (!(e instanceof StrataError) && process.env.STRATA_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
}
