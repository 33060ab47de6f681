import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { StrataError } from "@strata/core";
import type { BlobType } from "@strata/repo";

const HEX64 = /^[0-9a-f]{64}$/;
const HEX_PREFIX = /^[0-9a-f]{0,64}$/;

/** Rows fetched per page by the async listings (listPacks, packUsage). */
export const PAGE_SIZE = 1000;

/** Throws as idBytes does, without making the bytes. */
export function checkId(id: string): void {
  if (!HEX64.test(id)) {
    throw new StrataError("INVALID_ARGUMENT", `not a 64-character lowercase hex id: ${JSON.stringify(id)}`, {
      subject: String(id),
    });
  }
}

/** A 64-hex id as its 32 raw bytes; throws on anything else (Buffer.from would silently truncate). */
export function idBytes(id: string): Buffer {
  checkId(id);
  return Buffer.from(id, "hex");
}

export function idsBytes(ids: readonly string[]): Buffer[] {
  return ids.map(idBytes);
}

/** Raw id bytes as the 64-hex string used in TypeScript. */
export function hexId<T extends string>(b: Uint8Array): T {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex") as T;
}

/**
 * Inclusive byte range of all ids starting with hex `prefix` (any length,
 * odd lengths allowed). Null when `prefix` is not hex: nothing can match.
 */
export function prefixRange(prefix: string): [Buffer, Buffer] | null {
  const p = prefix.toLowerCase();
  if (!HEX_PREFIX.test(p)) return null;
  return [Buffer.from(p.padEnd(64, "0"), "hex"), Buffer.from(p.padEnd(64, "f"), "hex")];
}

export function blobTypeCode(t: BlobType): number {
  if (t === "chunk") return 0;
  if (t === "tree") return 1;
  throw new StrataError("INVALID_ARGUMENT", `unknown blob type ${JSON.stringify(t)}`);
}

export function blobTypeName(code: number): BlobType {
  return code === 1 ? "tree" : "chunk";
}

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * The numbered .sql files of one dialect, in order. They ship in the package
 * next to dist/ (this file compiles to dist/common.js; in tests it runs from
 * src/common.ts — both one level below the package root).
 */
export function loadMigrations(dialect: "sqlite" | "postgres"): Migration[] {
  const dir = fileURLToPath(new URL(`../migrations/${dialect}/`, import.meta.url));
  const out: Migration[] = [];
  for (const file of readdirSync(dir).sort()) {
    const m = /^(\d+)_([\w-]+)\.sql$/.exec(file);
    if (!m) continue;
    out.push({ version: Number(m[1]), name: m[2]!, sql: readFileSync(dir + file, "utf8") });
  }
  const seen = new Set<number>();
  for (const mig of out) {
    if (seen.has(mig.version)) {
      throw new StrataError("INTERNAL", `duplicate ${dialect} migration version ${mig.version}`);
    }
    seen.add(mig.version);
  }
  return out.sort((a, b) => a.version - b.version);
}
