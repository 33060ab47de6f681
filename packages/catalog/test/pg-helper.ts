/**
 * How the test suite reaches PostgreSQL.
 *
 * 1. `STRATA_TEST_PG` (a postgres:// URL) if set — used as is; if it does not
 *    answer, that is a test failure, not a skip.
 * 2. Otherwise the local cluster over its Unix socket
 *    (postgres://<os user>@/postgres?host=/var/run/postgresql). On a fresh
 *    Debian after `pg_ctlcluster 15 main start`, peer authentication maps the
 *    OS user to the same-named role, and `root` has no role yet: when running
 *    as root and the server answers "role does not exist", the helper creates
 *    it once as the postgres OS user
 *    (`runuser -u postgres -- psql -c "CREATE ROLE root SUPERUSER LOGIN"`),
 *    then connects again.
 * 3. If that fails too, the PostgreSQL suite is skipped with the reason
 *    printed — unless `STRATA_REQUIRE_PG=1` (set it in CI), which turns the
 *    skip into a failure.
 *
 * Every catalog opened by a test run lives in its own schema
 * (strata_test_<pid>_<random>_<n>), dropped by `dropTestSchemas`.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { userInfo } from "node:os";
import pg from "pg";

export const DEFAULT_SOCKET_DIR = "/var/run/postgresql";

export type PgTarget = { url: string; skip?: undefined } | { url?: undefined; skip: string };

async function tryConnect(
  url: string,
): Promise<{ ok: true } | { ok: false; code?: string; message: string }> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query("SELECT 1");
    return { ok: true };
  } catch (e) {
    const err = e as { code?: string; message: string };
    return { ok: false, code: err.code, message: err.message };
  } finally {
    await client.end().catch(() => {});
  }
}

function createRootRole(): string | null {
  const sql = `DO $$ BEGIN CREATE ROLE "root" SUPERUSER LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`;
  const attempts: [string, string[]][] = [
    ["runuser", ["-u", "postgres", "--", "psql", "-h", DEFAULT_SOCKET_DIR, "-d", "postgres", "-Xqc", sql]],
    ["su", ["postgres", "-s", "/bin/sh", "-c", `psql -h ${DEFAULT_SOCKET_DIR} -d postgres -Xqc '${sql}'`]],
  ];
  const errors: string[] = [];
  for (const [cmd, args] of attempts) {
    try {
      execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"], timeout: 15_000 });
      return null;
    } catch (e) {
      errors.push(`${cmd}: ${(e as { stderr?: Buffer }).stderr?.toString().trim() || (e as Error).message}`);
    }
  }
  return errors.join("; ");
}

let cached: Promise<PgTarget> | undefined;

/** Where the PostgreSQL tests connect, or why they are skipped. Memoized per process. */
export function findTestPostgres(): Promise<PgTarget> {
  cached ??= locate();
  return cached;
}

async function locate(): Promise<PgTarget> {
  const env = process.env.STRATA_TEST_PG;
  if (env) {
    const r = await tryConnect(env);
    if (!r.ok) throw new Error(`STRATA_TEST_PG is set but PostgreSQL does not answer: ${r.message}`);
    return { url: env };
  }
  const user = userInfo().username;
  const url = `postgres://${encodeURIComponent(user)}@/postgres?host=${encodeURIComponent(DEFAULT_SOCKET_DIR)}`;
  let r = await tryConnect(url);
  if (!r.ok && r.code === "28000" && process.getuid?.() === 0 && user === "root") {
    // Peer auth maps OS root to role "root", which a fresh cluster lacks.
    const failed = createRootRole();
    if (failed) return skip(`cannot create role root: ${failed}`);
    r = await tryConnect(url);
  }
  if (r.ok) return { url };
  let hint = "set STRATA_TEST_PG=postgres://… to point at a server";
  if (!existsSync(`${DEFAULT_SOCKET_DIR}/.s.PGSQL.5432`)) {
    hint = existsSync("/usr/lib/postgresql")
      ? `PostgreSQL is installed but not running: start it with \`pg_ctlcluster 15 main start\`, or ${hint}`
      : `PostgreSQL is not installed; ${hint}`;
  }
  return skip(`${url}: ${r.message} (${hint})`);
}

function skip(reason: string): PgTarget {
  if (process.env.STRATA_REQUIRE_PG === "1") {
    throw new Error(`STRATA_REQUIRE_PG=1 but PostgreSQL is unreachable: ${reason}`);
  }
  return { skip: reason };
}

const runTag = `${process.pid}_${randomBytes(3).toString("hex")}`;
let schemaSeq = 0;
const created = new Set<string>();

/** A fresh schema name for one catalog of this run (recorded for dropTestSchemas). */
export function newTestSchema(): string {
  const s = `strata_test_${runTag}_${schemaSeq++}`;
  created.add(s);
  return s;
}

/** Drop every schema this run created. */
export async function dropTestSchemas(url: string): Promise<void> {
  if (created.size === 0) return;
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    for (const s of created) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    created.clear();
  } finally {
    await client.end();
  }
}
