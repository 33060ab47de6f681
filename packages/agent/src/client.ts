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
  const { fetch: undiciFetch } = undici();
  const agent = pinnedDispatcher(pin, seen);
  return async (url, init) => {
    try {
      const res = await undiciFetch(url, { ...init, dispatcher: agent });
      return { status: res.status, text: () => res.text() };
    } catch (e) {
      throw reachError(url, e);
    }
  };
}

/** Loaded on use: commands that never talk to a server (backup, restore…) should not pay for the HTTP client at start-up. */
export function undici(): typeof import("undici") {
  return createRequire(import.meta.url)("undici") as typeof import("undici");
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
