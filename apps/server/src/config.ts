/**
 * Server configuration: read once at start from a JSON file, STRATA_*
 * environment variables and command-line flags (flags win over the
 * environment, which wins over the file, which wins over the defaults),
 * validated as a whole, and returned typed. Every problem is collected and
 * reported together in one CONFIG_INVALID error, so a broken config takes
 * one edit, not one restart per mistake.
 */
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import * as path from "node:path";
import { StrataError } from "@strata/core";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export interface ServerConfig {
  /** Data directory: catalog.db (SQLite), tls/, and later packs/. Absolute. */
  dataDir: string;
  host: string;
  port: number;
  /** The catalog: a postgres:// URL, or the SQLite file inside dataDir. */
  database: { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };
  /** Both or neither; when neither, a self-signed certificate is generated into dataDir/tls. */
  tls: { certFile: string; keyFile: string } | null;
  logLevel: LogLevel;
  /** Largest accepted request body, in bytes. */
  bodyLimit: number;
  /** Lifetime of the API token a login creates, in hours. */
  loginTokenTtlHours: number;
}

/** The raw inputs, as strings (flags and env) or JSON values (file). */
export interface RawServerOptions {
  data?: string;
  listen?: string;
  database?: string;
  tlsCert?: string;
  tlsKey?: string;
  logLevel?: string;
  bodyLimit?: string | number;
  loginTokenTtlHours?: string | number;
}

export interface LoadConfigInput {
  /** Command-line flags (commander's option names). `config` names the config file. */
  flags?: RawServerOptions & { config?: string };
  env?: Record<string, string | undefined>;
  /** Path of a JSON config file; overrides flags.config and STRATA_CONFIG. */
  configFile?: string;
  /** Base for relative paths. Default: process.cwd(). */
  cwd?: string;
}

const KEYS = [
  "data",
  "listen",
  "database",
  "tlsCert",
  "tlsKey",
  "logLevel",
  "bodyLimit",
  "loginTokenTtlHours",
] as const;
type Key = (typeof KEYS)[number];

const ENV: Record<Key, string> = {
  data: "STRATA_DATA",
  listen: "STRATA_LISTEN",
  database: "STRATA_DATABASE",
  tlsCert: "STRATA_TLS_CERT",
  tlsKey: "STRATA_TLS_KEY",
  logLevel: "STRATA_LOG_LEVEL",
  bodyLimit: "STRATA_BODY_LIMIT",
  loginTokenTtlHours: "STRATA_LOGIN_TOKEN_TTL_HOURS",
};
const FLAG: Record<Key, string> = {
  data: "--data",
  listen: "--listen",
  database: "--database",
  tlsCert: "--tls-cert",
  tlsKey: "--tls-key",
  logLevel: "--log-level",
  bodyLimit: "--body-limit",
  loginTokenTtlHours: "--login-token-ttl-hours",
};

export const DEFAULTS = {
  data: "./strata-data",
  listen: "0.0.0.0:8640",
  logLevel: "info" as LogLevel,
  bodyLimit: 1024 * 1024,
  loginTokenTtlHours: 24 * 30,
};

interface Sourced {
  value: unknown;
  source: string;
}

/** Where a value came from, for messages: "--listen", "STRATA_LISTEN", "strata.json: listen". */
function pick(
  key: Key,
  flags: RawServerOptions,
  env: Record<string, string | undefined>,
  file: Record<string, unknown>,
  fileName: string,
): Sourced | undefined {
  if (flags[key] !== undefined) return { value: flags[key], source: FLAG[key] };
  const e = env[ENV[key]];
  if (e !== undefined && e !== "") return { value: e, source: ENV[key] };
  if (file[key] !== undefined) return { value: file[key], source: `${fileName}: ${key}` };
  return undefined;
}

export function parseListen(s: string): { host: string; port: number } | string {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(s);
  if (!m) return `${JSON.stringify(s)} is not HOST:PORT (IPv6 as [::1]:8640)`;
  const host = m[1] ?? m[2] ?? "";
  const port = Number(m[3]);
  if (port > 65535) return `port ${port} is out of range (0-65535)`;
  if (host === "") return `${JSON.stringify(s)} has no host (use 0.0.0.0:${port} for every interface)`;
  if (m[1] !== undefined && isIP(host) !== 6) return `${host} is not an IPv6 address`;
  if (!isIP(host) && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(host))
    return `${JSON.stringify(host)} is not a host name or address`;
  return { host, port };
}

function positiveInt(v: unknown, max: number): number | string {
  const n =
    typeof v === "number" ? v : typeof v === "string" && /^\d+$/.test(v.trim()) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < 1 || n > max)
    return `${JSON.stringify(v)} is not a whole number between 1 and ${max}`;
  return n;
}

export function loadServerConfig(input: LoadConfigInput = {}): ServerConfig {
  const flags = input.flags ?? {};
  const env = input.env ?? {};
  const cwd = input.cwd ?? process.cwd();
  const problems: string[] = [];

  // 1. The file, if any.
  const fileName = input.configFile ?? flags.config ?? (env.STRATA_CONFIG || undefined);
  let file: Record<string, unknown> = {};
  if (fileName !== undefined) {
    try {
      const parsed: unknown = JSON.parse(readFileSync(path.resolve(cwd, fileName), "utf8"));
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        problems.push(`${fileName}: must hold a JSON object`);
      } else {
        file = parsed as Record<string, unknown>;
        for (const k of Object.keys(file)) {
          if (!(KEYS as readonly string[]).includes(k)) {
            problems.push(`${fileName}: unknown key ${JSON.stringify(k)} (known: ${KEYS.join(", ")})`);
          }
        }
      }
    } catch (e) {
      problems.push(`config file ${fileName}: ${(e as Error).message}`);
    }
  }
  const get = (k: Key) => pick(k, flags, env, file, fileName ?? "");
  const asString = (k: Key): { value: string; source: string } | undefined => {
    const s = get(k);
    if (s === undefined) return undefined;
    if (typeof s.value !== "string" || s.value === "") {
      problems.push(`${s.source}: must be a non-empty string`);
      return undefined;
    }
    return { value: s.value, source: s.source };
  };

  // 2. Each setting.
  const data = asString("data");
  const dataDir = path.resolve(cwd, data?.value ?? DEFAULTS.data);

  let host = "0.0.0.0";
  let port = 8640;
  const listen = asString("listen");
  const hp = parseListen(listen?.value ?? DEFAULTS.listen);
  if (typeof hp === "string") problems.push(`${listen?.source ?? "listen"}: ${hp}`);
  else ({ host, port } = hp);

  let database: ServerConfig["database"] = { kind: "sqlite", path: path.join(dataDir, "catalog.db") };
  const db = asString("database");
  if (db) {
    if (/^postgres(ql)?:\/\//i.test(db.value)) {
      try {
        new URL(db.value);
        database = { kind: "postgres", url: db.value };
      } catch {
        problems.push(`${db.source}: not a valid postgres:// URL`);
      }
    } else {
      problems.push(
        `${db.source}: must be a postgres:// URL (leave it out for the SQLite catalog in the data directory)`,
      );
    }
  }

  let tls: ServerConfig["tls"] = null;
  const cert = asString("tlsCert");
  const key = asString("tlsKey");
  if (cert && !key)
    problems.push(`${cert.source} is given but --tls-key / STRATA_TLS_KEY is not: give both or neither`);
  if (key && !cert)
    problems.push(`${key.source} is given but --tls-cert / STRATA_TLS_CERT is not: give both or neither`);
  for (const f of [cert, key]) {
    if (!f) continue;
    try {
      readFileSync(path.resolve(cwd, f.value));
    } catch (e) {
      problems.push(
        `${f.source}: cannot read ${f.value}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
  }
  if (cert && key) tls = { certFile: path.resolve(cwd, cert.value), keyFile: path.resolve(cwd, key.value) };

  let logLevel = DEFAULTS.logLevel;
  const ll = asString("logLevel");
  if (ll) {
    if ((LOG_LEVELS as readonly string[]).includes(ll.value)) logLevel = ll.value as LogLevel;
    else problems.push(`${ll.source}: ${JSON.stringify(ll.value)} is not one of ${LOG_LEVELS.join(", ")}`);
  }

  const num = (k: Key, def: number, max: number): number => {
    const s = get(k);
    if (s === undefined) return def;
    const n = positiveInt(s.value, max);
    if (typeof n === "string") {
      problems.push(`${s.source}: ${n}`);
      return def;
    }
    return n;
  };
  const bodyLimit = num("bodyLimit", DEFAULTS.bodyLimit, 1024 * 1024 * 1024);
  const loginTokenTtlHours = num("loginTokenTtlHours", DEFAULTS.loginTokenTtlHours, 24 * 3650);

  if (problems.length > 0) {
    throw new StrataError(
      "CONFIG_INVALID",
      `the server configuration has ${problems.length} problem${problems.length > 1 ? "s" : ""}:\n${problems.map((p) => `  - ${p}`).join("\n")}`,
      {
        hint: "fix them all, then start again (flags override STRATA_* variables, which override the config file)",
      },
    );
  }
  return { dataDir, host, port, database, tls, logLevel, bodyLimit, loginTokenTtlHours };
}

/** A database URL with its password replaced, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparseable URL)";
  }
}
