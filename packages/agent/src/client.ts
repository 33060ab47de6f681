/**
 * HTTPS to the server with the certificate pinned by its SHA-256
 * fingerprint. The check runs in the TLS handshake's connect callback,
 * before the socket is handed to the HTTP client: a request, its headers
 * and its credential are never written to a connection whose certificate
 * is not the pinned one. No CA store is consulted, so a self-signed server
 * certificate works and a CA-signed impostor does not.
 *
 * Shared by the agent and by `strata login` and the admin commands.
 */
import { createRequire } from "node:module";
import type { TLSSocket } from "node:tls";
import { StrataError } from "@strata/core";
import { type FetchLike, PROTOCOL_HEADER, PROTOCOL_VERSION, StrataClient } from "@strata/protocol";
import { type AgentState, readCredential, readState } from "./state.js";

/** `host`, `host:port` or `https://host[:port]` as `https://host:port` (port 8640 by default). */
export function normalizeServerUrl(u: string): string {
  let url: URL;
  try {
    url = new URL(/^[a-z]+:\/\//i.test(u) ? u : `https://${u}`);
  } catch {
    throw new StrataError("INVALID_ARGUMENT", `${u} is not a server URL`, { hint: "use https://HOST:8640" });
  }
  if (url.protocol !== "https:") throw new StrataError("INVALID_ARGUMENT", "the server URL must be https://");
  if (!url.port) url.port = "8640";
  return `https://${url.host}`;
}

/**
 * A fetch whose TLS connections are accepted only when the server
 * certificate has fingerprint `pin` ("AB:CD:…"); with `pin` null, any
 * certificate is accepted and its fingerprint recorded in `seen` (trust on
 * first use: use it only for a request that carries no secret).
 */
export function pinnedFetch(pin: string | null, seen: { fingerprint?: string } = {}): FetchLike {
  const { request } = undici();
  const agent = pinnedDispatcher(pin, seen);
  return async (url, init) => {
    try {
      const res = await request(url, {
        method: init.method as "GET",
        headers: init.headers,
        ...(init.body !== undefined ? { body: init.body } : {}),
        dispatcher: agent,
      });
      return { status: res.statusCode, text: () => res.body.text() };
    } catch (e) {
      throw reachError(url, e);
    }
  };
}

/** The parts of undici the agent uses. */
export interface Undici {
  Agent: typeof import("undici").Agent;
  buildConnector: typeof import("undici").buildConnector;
  /** `undici.request` with a dispatcher always given (there is no global one here). */
  request(
    url: string,
    opts: Omit<import("undici").Dispatcher.RequestOptions, "origin" | "path"> & {
      dispatcher: import("undici").Dispatcher;
    },
  ): Promise<import("undici").Dispatcher.ResponseData>;
}

let loaded: Undici | null = null;

/**
 * Loaded on use, and only the parts used: commands that never talk to a
 * server (backup, restore…) do not pay for the HTTP client at start-up, and
 * the others skip undici's index, which loads its fetch, WebSocket, cache
 * and mock implementations too (95 modules, ~0.1 s of every start; these
 * three parts are 27 modules, ~0.03 s). The paths are undici 6's layout:
 * `client.test.ts` fails if an upgrade moves them.
 */
export function undici(): Undici {
  if (loaded) return loaded;
  const req = createRequire(import.meta.url);
  const apiRequest = req("undici/lib/api/api-request.js") as (
    this: import("undici").Dispatcher,
    opts: import("undici").Dispatcher.RequestOptions,
  ) => Promise<import("undici").Dispatcher.ResponseData>;
  loaded = {
    Agent: req("undici/lib/dispatcher/agent.js") as Undici["Agent"],
    buildConnector: req("undici/lib/core/connect.js") as Undici["buildConnector"],
    request(url, { dispatcher, ...opts }) {
      const u = new URL(url);
      return apiRequest.call(dispatcher, {
        ...opts,
        origin: u.origin,
        path: u.pathname + u.search,
        method: opts.method ?? "GET",
      });
    },
  };
  return loaded;
}

/** A network failure as the error users see (a pinning refusal stays what it is). */
export function reachError(url: string, e: unknown): StrataError {
  if (e instanceof StrataError) return e;
  const cause = (e as { cause?: unknown }).cause;
  if (cause instanceof StrataError) return cause;
  return new StrataError(
    "IO_ERROR",
    `cannot reach ${url}: ${(cause as Error)?.message ?? (e as Error).message}`,
    {
      hint: "check the URL and that `strata server` is running",
    },
  );
}

/** The undici dispatcher behind pinnedFetch: TLS connections accepted only with the pinned certificate. */
export function pinnedDispatcher(
  pin: string | null,
  seen: { fingerprint?: string } = {},
): import("undici").Dispatcher {
  const { Agent, buildConnector } = undici();
  // No TLS session resumption: a resumed session carries no certificate to check the pin against.
  const connect = buildConnector({ rejectUnauthorized: false, maxCachedSessions: 0 });
  return new Agent({
    connect: (opts, cb) =>
      connect(opts, (err, socket) => {
        if (err || !socket) return cb(err ?? new Error("no socket"), null);
        const got = (socket as TLSSocket).getPeerCertificate?.()?.fingerprint256;
        seen.fingerprint = got;
        if (pin && got !== pin) {
          socket.destroy();
          return cb(
            new StrataError(
              "PERMISSION_DENIED",
              `the server's certificate (SHA256 ${got}) is not the pinned one (${pin})`,
              {
                hint: "someone may be intercepting the connection; if the server's certificate really changed, log in (or enroll) again with --fingerprint NEW",
              },
            ),
            null,
          );
        }
        cb(null, socket);
      }),
  });
}

/**
 * Trust on first use: the fingerprint of the certificate `url` presents,
 * learnt on a request that carries no secret (GET /healthz).
 */
export async function fetchServerFingerprint(url: string): Promise<string> {
  const seen: { fingerprint?: string } = {};
  await pinnedFetch(null, seen)(`${url}/healthz`, { method: "GET", headers: {} });
  if (!seen.fingerprint) throw new StrataError("IO_ERROR", `${url} presented no certificate`);
  return seen.fingerprint;
}

/** The typed client for an agent: pinned, speaking Strata-Protocol 1, with the endpoint credential if given. */
export function agentClient(url: string, fingerprint: string, credential?: string): StrataClient {
  return new StrataClient({
    baseUrl: url,
    fetch: pinnedFetch(fingerprint),
    headers: { [PROTOCOL_HEADER]: String(PROTOCOL_VERSION) },
    ...(credential ? { token: credential } : {}),
  });
}

/** The state and credential of an enrolled endpoint, or NOT_FOUND saying how to enroll. */
export function enrolledState(stateDir: string): { state: AgentState; credential: string } {
  const state = readState(stateDir);
  const credential = readCredential(stateDir);
  if (!state || !credential) {
    throw new StrataError("NOT_FOUND", `this endpoint is not enrolled (no state in ${stateDir})`, {
      subject: stateDir,
      hint: "enroll it with `strata agent enroll --server URL --token TOKEN`",
    });
  }
  return { state, credential };
}

/** The client of an enrolled endpoint, from its state directory (pinned, with its credential). */
export function endpointClient(stateDir: string): StrataClient {
  const { state, credential } = enrolledState(stateDir);
  return agentClient(state.serverUrl, state.fingerprint, credential);
}
