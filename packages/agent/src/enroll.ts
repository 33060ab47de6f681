/**
 * Enrollment (docs/design/protocol.md, "Enrollment"): pin the server's
 * certificate (given, or trusted on first use and reported), gather the
 * facts, trade the enrollment token for an endpoint id and a credential,
 * and keep them in the state directory. A lost response is retried with the
 * same Idempotency-Key, so it neither creates a second endpoint nor takes a
 * second use of the token.
 */
import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { StrataError } from "@strata/core";
import { ApiError, type EndpointState, type EnrollResponse, normalizeFingerprint } from "@strata/protocol";
import { agentClient, fetchServerFingerprint, normalizeServerUrl } from "./client.js";
import { gatherFacts } from "./facts.js";
import { DEFAULT_STATE_DIR, readState, writeCredential, writeState } from "./state.js";
import { AGENT_VERSION } from "./version.js";

export interface EnrollOptions {
  /** https://HOST[:PORT] */
  server: string;
  /** The enrollment token (`set_…`). */
  token: string;
  /** The server certificate's fingerprint; without it, trust on first use. */
  fingerprint?: string;
  /** The endpoint's root directory (default `/`). */
  root?: string;
  /** The agent's state directory (default /var/lib/strata-agent). */
  stateDir?: string;
  /** Enroll again even though the state directory holds an enrollment. */
  force?: boolean;
  /** Where progress lines go (the fingerprint trusted on first use, retries). */
  log?: (line: string) => void;
  /** Tries of a request that failed on the network or with 429/503/507 (default 4). */
  attempts?: number;
  /**
   * Facts that replace what `root` says: the recovery tool enrolls a
   * replacement device from a live system, whose hostname and machine id
   * are not the device's, and whose state directory is below the target.
   */
  facts?: { hostname?: string; machineId?: string; agentStateDir?: string };
}

export interface EnrollResult {
  serverUrl: string;
  fingerprint: string;
  /** True when no fingerprint was given and the one seen was recorded. */
  trustedOnFirstUse: boolean;
  endpointId: string;
  state: EndpointState;
  stateDir: string;
}

const RETRY_STATUSES = new Set([429, 503, 507]);

function retryable(e: unknown): boolean {
  if (e instanceof ApiError) return RETRY_STATUSES.has(e.status);
  return e instanceof StrataError && e.code === "IO_ERROR";
}

function fromApi(e: unknown): never {
  if (e instanceof ApiError) {
    const code = e.status === 401 ? "WRONG_PASSWORD" : e.status === 400 ? "INVALID_ARGUMENT" : "IO_ERROR";
    throw new StrataError(code, `the server refused the enrollment: ${e.message}`, {
      hint:
        e.status === 401
          ? "the token is unknown, expired, revoked or used up: ask an administrator for a new one (`strata tokens create`)"
          : (e.hint ?? "see the server's log under the request id"),
    });
  }
  throw e;
}

export async function enrollEndpoint(o: EnrollOptions): Promise<EnrollResult> {
  const log = o.log ?? (() => {});
  const stateDir = o.stateDir ?? DEFAULT_STATE_DIR;
  const serverUrl = normalizeServerUrl(o.server);
  if (!/^set_[A-Za-z0-9_-]{43}$/.test(o.token)) {
    throw new StrataError("INVALID_ARGUMENT", "that is not an enrollment token (set_ and 43 characters)", {
      hint: "copy the token `strata tokens create` printed",
    });
  }
  const existing = readState(stateDir);
  if (existing && !o.force) {
    throw new StrataError(
      "ALREADY_EXISTS",
      `this endpoint is already enrolled as ${existing.endpointId} with ${existing.serverUrl}`,
      { subject: stateDir, hint: "pass --force to enroll it again (it becomes a new endpoint)" },
    );
  }
  const facts = {
    ...gatherFacts({ root: o.root ?? "/", agentVersion: AGENT_VERSION, agentStateDir: stateDir }),
    ...o.facts,
  };
  if (!facts.machineId) {
    throw new StrataError(
      "INVALID_ARGUMENT",
      `no machine id in ${path.join(o.root ?? "/", "etc/machine-id")}`,
      {
        hint: "create one with `systemd-machine-id-setup` (or `dbus-uuidgen --ensure=/etc/machine-id`)",
      },
    );
  }
  let fingerprint: string;
  let trustedOnFirstUse = false;
  if (o.fingerprint) {
    const fp = normalizeFingerprint(o.fingerprint);
    if (!fp) {
      throw new StrataError("INVALID_ARGUMENT", `${o.fingerprint} is not a SHA-256 fingerprint`, {
        hint: "64 hex digits, colons and a SHA256: prefix optional",
      });
    }
    fingerprint = fp;
  } else {
    fingerprint = await fetchServerFingerprint(serverUrl);
    trustedOnFirstUse = true;
    log(`trusting the server certificate on first use: SHA256 ${fingerprint}`);
  }
  const client = agentClient(serverUrl, fingerprint, o.token);
  const key = randomBytes(16).toString("hex");
  const attempts = o.attempts ?? 4;
  let res: EnrollResponse | undefined;
  for (let i = 1; !res; i++) {
    try {
      res = await client.enroll({ ...facts, machineId: facts.machineId }, key);
    } catch (e) {
      if (i >= attempts || !retryable(e)) fromApi(e);
      const wait = Math.random() * 1000 * 2 ** (i - 1); // full jitter
      log(`enrollment attempt ${i} failed (${(e as Error).message}); retrying in ${Math.round(wait)} ms`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  // The credential first: a state.json always has its credential next to it.
  writeCredential(stateDir, res.credential);
  writeState(stateDir, {
    version: 1,
    serverUrl,
    fingerprint,
    endpointId: res.endpointId,
    enrolledAt: new Date().toISOString(),
    root: path.resolve(o.root ?? "/"),
  });
  return {
    serverUrl,
    fingerprint,
    trustedOnFirstUse,
    endpointId: res.endpointId,
    state: res.state,
    stateDir,
  };
}
