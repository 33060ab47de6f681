/**
 * `strata server`, `strata login` and the admin commands that talk to a
 * server (users, roles, audit). The HTTPS connection is pinned to the
 * server certificate's SHA-256 fingerprint (trust on first use, or
 * --fingerprint); the client itself is @strata/protocol's.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir, hostname } from "node:os";
import * as path from "node:path";
import { fetchServerFingerprint, normalizeServerUrl, pinnedFetch } from "@strata/agent";
import { StrataError } from "@strata/core";
import { ApiError, normalizeFingerprint, StrataClient } from "@strata/protocol";
import type { Command } from "commander";
import { type GlobalOptions, readPassword } from "../context.js";
import { printJson } from "../output.js";
import { askSecret } from "../prompt.js";

export type Opts = GlobalOptions & Record<string, unknown>;

// ---- credentials -----------------------------------------------------------

interface Credentials {
  current?: string;
  servers: Record<string, { token: string; fingerprint: string; user: string }>;
}

export function credentialsFile(): string {
  if (process.env.STRATA_CREDENTIALS) return process.env.STRATA_CREDENTIALS;
  const base = process.env.XDG_CONFIG_HOME || path.join(homedir(), ".config");
  return path.join(base, "strata", "credentials.json");
}

function readCredentials(): Credentials {
  const f = credentialsFile();
  if (!existsSync(f)) return { servers: {} };
  try {
    const c = JSON.parse(readFileSync(f, "utf8")) as Credentials;
    return { current: c.current, servers: c.servers ?? {} };
  } catch (e) {
    throw new StrataError("CONFIG_INVALID", `cannot read ${f}: ${(e as Error).message}`, {
      hint: "delete it and log in again",
    });
  }
}

function writeCredentials(c: Credentials): void {
  const f = credentialsFile();
  mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
  const tmp = `${f}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(c, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, f);
}

function fromApi(e: unknown): never {
  if (e instanceof ApiError) {
    const codes = [
      "INVALID_ARGUMENT",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "AMBIGUOUS",
      "CONFLICT",
      "SESSION_EXPIRED",
      "TOO_LARGE",
      "WRONG_PASSWORD",
      "PERMISSION_DENIED",
      "LOCKED",
      "UNSUPPORTED",
      "IO_ERROR",
      "NO_SPACE",
    ];
    const code = (codes.includes(e.code) ? e.code : "INTERNAL") as "INTERNAL";
    throw new StrataError(code, e.message, e.hint ? { hint: e.hint } : {});
  }
  throw e;
}

/** The current (or --server) login: the server, its pinned certificate and the API token. */
export function loginOf(o: Opts): { url: string; fingerprint: string; token: string } {
  const creds = readCredentials();
  const url = o.server ? normalizeServerUrl(String(o.server)) : creds.current;
  const entry = url ? creds.servers[url] : undefined;
  if (!url || !entry) {
    throw new StrataError("INVALID_ARGUMENT", "not logged in to a server", {
      hint: "run `strata login --server https://HOST:8640`",
    });
  }
  return { url, fingerprint: entry.fingerprint, token: entry.token };
}

/** The client for the current (or --server) login. */
export function client(o: Opts): StrataClient {
  const l = loginOf(o);
  return new StrataClient({ baseUrl: l.url, token: l.token, fetch: pinnedFetch(l.fingerprint) });
}

/** Await an API call, turning the server's error into a StrataError the CLI reports. */
export async function call<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    fromApi(e);
  }
}

async function passwordFrom(o: Opts, question: string): Promise<string> {
  if (o.passwordFile || process.env.STRATA_PASSWORD) return readPassword(o).toString("utf8");
  return askSecret(question);
}

export function table(rows: string[][]): string {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return `${rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(w[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")}\n`;
}

// ---- commands --------------------------------------------------------------

export function registerServerCommands(program: Command): void {
  const srv = program
    .command("server")
    .description("run the management server (HTTPS; SQLite in --data, or PostgreSQL with --database)")
    .option("--data <dir>", "data directory (default ./strata-data; $STRATA_DATA)")
    .option("--listen <host:port>", "address to listen on (default 0.0.0.0:8640; $STRATA_LISTEN)")
    .option(
      "--database <url>",
      "postgres://… catalog for clusters (default SQLite in the data directory; $STRATA_DATABASE)",
    )
    .option("--tls-cert <file>", "PEM certificate (default: generated self-signed in DATA/tls)")
    .option("--tls-key <file>", "PEM private key for --tls-cert")
    .option("--log-level <level>", "fatal, error, warn, info, debug, trace or silent (default info)")
    .option(
      "--config <file>",
      "JSON config file (keys: data, listen, database, tlsCert, tlsKey, logLevel, bodyLimit, loginTokenTtlHours)",
    )
    .action(async () => {
      const o = srv.opts() as Record<string, string | undefined>;
      // The server (fastify, pino, TLS) is loaded only by `strata server`.
      const { loadServerConfig, startServer, tuneServerProcess } = await import("@strata/server");
      const config = loadServerConfig({ flags: o, env: process.env });
      tuneServerProcess();
      const s = await startServer(config, { logStream: process.stderr });
      const info = {
        url: s.url,
        fingerprint: s.fingerprint,
        certificate: s.certFile,
        catalog: s.catalog,
        adminPassword: s.adminPassword,
      };
      if ((srv.optsWithGlobals() as Opts).json) printJson(info);
      else {
        process.stdout.write(`strata server listening on ${s.url}\n`);
        process.stdout.write(`certificate SHA256 fingerprint: ${s.fingerprint}\n`);
        if (s.adminPassword) {
          process.stdout.write(
            `\nfirst start: created the Administrator "admin" with the one-time password\n\n    ${s.adminPassword}\n\nit is shown only now; log in with \`strata login --server URL --user admin\` and change it with \`strata users passwd\`\n`,
          );
        }
      }
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
      });
      await s.close();
    });

  const login = program
    .command("login")
    .description("log in to a server and store an API token (~/.config/strata/credentials.json, mode 0600)")
    .requiredOption("--server <url>", "https://HOST[:PORT] of the server")
    .option("--user <name>", "user name (default: $USER)")
    .option(
      "--fingerprint <sha256>",
      "pin this certificate fingerprint instead of trusting the first one seen",
    )
    .addHelpText("after", "\nThe password comes from --password-file FILE, $STRATA_PASSWORD, or a prompt.")
    .action(async () => {
      const o = login.optsWithGlobals() as Opts;
      const url = normalizeServerUrl(String(o.server));
      const creds = readCredentials();
      let pin: string | null = null;
      if (o.fingerprint) {
        pin = normalizeFingerprint(String(o.fingerprint));
        if (!pin)
          throw new StrataError("INVALID_ARGUMENT", `${o.fingerprint} is not a SHA-256 fingerprint`, {
            hint: "64 hex digits, colons optional",
          });
      } else if (creds.servers[url]) {
        pin = creds.servers[url].fingerprint; // pinned earlier: a changed certificate is refused
      }
      if (!pin) {
        // Trust on first use: learn the fingerprint on a request that carries no secret.
        pin = await fetchServerFingerprint(url);
        process.stderr.write(`trusting the server certificate on first use: SHA256 ${pin}\n`);
      }
      const user = String(o.user ?? process.env.USER ?? "admin");
      const password = await passwordFrom(o, `password for ${user}@${url}: `);
      const c = new StrataClient({ baseUrl: url, fetch: pinnedFetch(pin) });
      const r = await call(c.login({ user, password, tokenName: `strata cli on ${hostname()}` }));
      creds.servers[url] = { token: r.token, fingerprint: pin, user };
      creds.current = url;
      writeCredentials(creds);
      const out = {
        server: url,
        user: r.user.name,
        role: r.user.role,
        fingerprint: pin,
        expiresAt: r.expiresAt,
        mustChangePassword: r.user.mustChangePassword,
      };
      if (o.json) printJson(out);
      else {
        process.stdout.write(`logged in to ${url} as ${r.user.name} (${r.user.role})\n`);
        if (r.user.mustChangePassword)
          process.stdout.write("you must change your password now: `strata users passwd`\n");
      }
    });

  const users = program.command("users").description("manage user accounts on the server");
  users
    .command("ls")
    .description("list users")
    .action(async (_a, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const list = await call(client(o).listUsers());
      if (o.json) return printJson(list);
      process.stdout.write(
        table([
          ["NAME", "ROLE", "STATE", "CREATED"],
          ...list.map((u) => [
            u.name,
            u.role,
            u.disabled ? "disabled" : u.mustChangePassword ? "must change password" : "active",
            u.createdAt,
          ]),
        ]),
      );
    });
  users
    .command("create")
    .description("create a user (password from --password-file, $STRATA_PASSWORD or a prompt)")
    .argument("<name>")
    .requiredOption("--role <role>", "role name, e.g. 'Help Desk'")
    .option("--no-must-change", "do not require a password change at first login")
    .action(async (name: string, _o, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const password = await passwordFrom(o, `initial password for ${name}: `);
      const u = await call(
        client(o).createUser({
          name,
          role: String(o.role),
          password,
          mustChangePassword: o.mustChange !== false,
        }),
      );
      if (o.json) printJson(u);
      else process.stdout.write(`created ${u.name} (${u.role})\n`);
    });
  for (const [verb, disabled] of [
    ["disable", true],
    ["enable", false],
  ] as const) {
    users
      .command(verb)
      .description(`${verb} a user${disabled ? " (revokes their tokens)" : ""}`)
      .argument("<name>")
      .action(async (name: string, _o, cmd: Command) => {
        const o = cmd.optsWithGlobals() as Opts;
        const u = await call(client(o).updateUser(name, { disabled }));
        if (o.json) printJson(u);
        else process.stdout.write(`${verb}d ${u.name}\n`);
      });
  }
  users
    .command("passwd")
    .description("change your password, or (with NAME and users.write) set another user's")
    .argument("[name]")
    .action(async (name: string | undefined, _o, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const c = client(o);
      if (name) {
        const pw = await passwordFrom(o, `new password for ${name}: `);
        const u = await call(c.resetPassword(name, pw));
        if (o.json) printJson(u);
        else process.stdout.write(`set the password of ${name}; they must change it at next login\n`);
        return;
      }
      const current = process.env.STRATA_CURRENT_PASSWORD ?? (await askSecret("current password: "));
      const next = await passwordFrom(o, "new password: ");
      await call(c.changePassword(current, next));
      if (o.json) printJson({ changed: true });
      else process.stdout.write("password changed\n");
    });

  const roles = program.command("roles").description("list, show and create roles");
  roles
    .command("ls")
    .description("list roles")
    .action(async (_a, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const list = await call(client(o).listRoles());
      if (o.json) return printJson(list);
      process.stdout.write(
        table([
          ["ROLE", "KIND", "PERMISSIONS"],
          ...list.map((r) => [r.name, r.builtin ? "built-in" : "custom", r.permissions.join(",")]),
        ]),
      );
    });
  roles
    .command("show")
    .description("show a role's permissions")
    .argument("<name>")
    .action(async (name: string, _o, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const r = await call(client(o).getRole(name));
      if (o.json) return printJson(r);
      process.stdout.write(
        `${r.name} (${r.builtin ? "built-in" : "custom"})\n${r.permissions.map((p) => `  ${p}\n`).join("")}`,
      );
    });
  roles
    .command("create")
    .description("create a custom role from named permissions")
    .argument("<name>")
    .requiredOption("--permission <perm...>", "permission names (see `strata roles permissions`)")
    .action(async (name: string, _o, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const perms = (o.permission as string[]).flatMap((p) => p.split(",")).filter(Boolean);
      const r = await call(client(o).createRole(name, perms));
      if (o.json) printJson(r);
      else process.stdout.write(`created role ${r.name}: ${r.permissions.join(", ")}\n`);
    });
  roles
    .command("permissions")
    .description("list the named permissions")
    .action(async (_a, cmd: Command) => {
      const o = cmd.optsWithGlobals() as Opts;
      const list = await call(client(o).listPermissions());
      if (o.json) return printJson(list);
      process.stdout.write(table([["PERMISSION", "ALLOWS"], ...list.map((p) => [p.name, p.description])]));
    });

  const audit = program
    .command("audit")
    .description("show the server's audit log, newest first")
    .option("--since <time>", "ISO time, or a duration ago like 2h or 7d")
    .option("--actor <user>")
    .option("--action <action>", "e.g. user.create, auth.login_failed")
    .option("--limit <n>", "at most N entries (default 100)", (v) => Number(v))
    .action(async () => {
      const o = audit.optsWithGlobals() as Opts;
      let since: string | undefined;
      if (o.since) {
        const m = /^(\d+)([smhd])$/.exec(String(o.since));
        since = m
          ? new Date(
              Date.now() - Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2] as "s"],
            ).toISOString()
          : new Date(String(o.since)).toISOString();
      }
      const list = await call(
        client(o).audit({
          ...(since ? { since } : {}),
          ...(o.actor ? { actor: String(o.actor) } : {}),
          ...(o.action ? { action: String(o.action) } : {}),
          ...(o.limit ? { limit: o.limit as number } : {}),
        }),
      );
      if (o.json) return printJson(list);
      process.stdout.write(
        table([
          ["TIME", "ACTOR", "ACTION", "OBJECT", "FROM"],
          ...list.map((e) => [e.at, e.actor, e.action, e.object, e.remoteAddr]),
        ]),
      );
    });
}
