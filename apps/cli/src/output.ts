import { fromSystemError, StrataError } from "@strata/core";

/** Give system and SQLite errors a code and a hint the user can act on. */
export function toStrataError(e: unknown): StrataError {
  if (e instanceof StrataError) return e;
  const code = (e as { code?: string })?.code;
  if (code === "SQLITE_FULL") {
    return fromSystemError(
      Object.assign(new Error("disk full"), { code: "ENOSPC" }),
      "writing",
      "the catalog (catalog.db)",
    );
  }
  if (code && /^E[A-Z]+$/.test(code)) {
    const path = (e as { path?: string }).path;
    return fromSystemError(e, "accessing", path ?? "a file");
  }
  return new StrataError("INTERNAL", (e as Error)?.message ?? String(e), { cause: e });
}

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
  private readonly enabled: boolean;
  /** Shown only on a terminal, and never with --json. */
  constructor(wanted = true) {
    this.enabled = wanted && isTTY();
  }
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
  const se = toStrataError(e);
  if (json) {
    process.stdout.write(`${JSON.stringify({ error: se.toJSON() })}\n`);
  } else {
    process.stderr.write(`strata: error: ${se.message}\n`);
    if (se.hint) process.stderr.write(`  hint: ${se.hint}\n`);
  }
  if (!(e instanceof StrataError) && process.env.STRATA_DEBUG)
    process.stderr.write(`${(e as Error)?.stack}\n`);
}
