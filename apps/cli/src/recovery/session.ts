/**
 * The recovery tool's conversation with the server, before any byte is
 * restored: pin the server's certificate, log the operator in, list the
 * CVDs they may restore and enroll the replacement device (restore.ts
 * gives it the CVD). Each step is a function returning data; program.ts
 * asks the questions and prints.
 */
import { randomBytes } from "node:crypto";
import { hostname as osHostname } from "node:os";
import {
  type EnrollResult,
  enrollEndpoint,
  fetchServerFingerprint,
  normalizeServerUrl,
  pinnedFetch,
} from "@strata/agent";
import { StrataError } from "@strata/core";
import { type Cvd, type CvdSnapshotSummary, normalizeFingerprint, StrataClient } from "@strata/protocol";
import { call } from "../commands/server.js";

export interface PinnedServer {
  url: string;
  /** "AB:CD:…", checked at every TLS handshake from now on. */
  fingerprint: string;
  /** True when no fingerprint was given and the one seen is used. */
  trustedOnFirstUse: boolean;
}

/** The server's URL and certificate fingerprint: the one given, or the one it presents (to be confirmed). */
export async function pinServer(server: string, fingerprint?: string): Promise<PinnedServer> {
  const url = normalizeServerUrl(server);
  if (fingerprint) {
    const fp = normalizeFingerprint(fingerprint);
    if (!fp) {
      throw new StrataError("INVALID_ARGUMENT", `${fingerprint} is not a SHA-256 fingerprint`, {
        hint: "64 hex digits, colons and a SHA256: prefix optional",
      });
    }
    return { url, fingerprint: fp, trustedOnFirstUse: false };
  }
  return { url, fingerprint: await fetchServerFingerprint(url), trustedOnFirstUse: true };
}

export interface Operator {
  client: StrataClient;
  user: string;
  role: string;
  permissions: string[];
}

/** Log the operator in; the API token lives only in this process (logOut revokes it). */
export async function logIn(s: PinnedServer, user: string, password: string): Promise<Operator> {
  const anon = new StrataClient({ baseUrl: s.url, fetch: pinnedFetch(s.fingerprint) });
  const r = await call(anon.login({ user, password, tokenName: `strata recovery on ${osHostname()}` }));
  if (r.user.mustChangePassword) {
    await call(anon.withToken(r.token).logout()).catch(() => {});
    throw new StrataError("PERMISSION_DENIED", `${user} must change their password before anything else`, {
      hint: "change it with `strata users passwd` from an administrator's machine, then run the recovery again",
    });
  }
  return {
    client: anon.withToken(r.token),
    user: r.user.name,
    role: r.user.role,
    permissions: r.permissions,
  };
}

export async function logOut(op: Operator): Promise<void> {
  await op.client.logout().catch(() => {});
}

export interface RestorableCvd {
  id: string;
  hostname: string | null;
  policy: string;
  /** The endpoint that holds the CVD now (the lost machine's), and its state. */
  endpointId: string | null;
  endpointState: string | null;
  snapshots: number;
  latest: CvdSnapshotSummary | null;
}

/** Up to `limit` promises at a time, results in order. */
async function mapLimit<T, R>(items: T[], limit: number, f: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** The CVDs the operator can read that have at least one snapshot, by hostname. */
export async function listRestorableCvds(op: Operator): Promise<RestorableCvd[]> {
  const cvds: Cvd[] = await call(op.client.listCvds());
  const states = new Map<string, string>();
  try {
    for (const e of await op.client.listEndpoints()) states.set(e.id, e.state);
  } catch {
    // Without endpoints.read the states stay unknown; attaching says what to do.
  }
  const rows = await mapLimit(cvds, 8, async (c) => {
    const snaps = await call(op.client.cvdSnapshots(c.id)); // newest first
    return {
      id: c.id,
      hostname: c.hostname,
      policy: c.policy,
      endpointId: c.endpointId,
      endpointState: c.endpointId ? (states.get(c.endpointId) ?? null) : null,
      snapshots: snaps.length,
      latest: snaps[0] ?? null,
    };
  });
  return rows
    .filter((r) => r.snapshots > 0)
    .sort((a, b) => (a.hostname ?? "").localeCompare(b.hostname ?? "") || a.id.localeCompare(b.id));
}

/** The CVD `ref` names: its id, or a hostname that only one CVD has. */
export function findCvd(list: RestorableCvd[], ref: string): RestorableCvd {
  const byId = list.find((c) => c.id === ref);
  if (byId) return byId;
  const byHost = list.filter((c) => c.hostname === ref);
  if (byHost.length === 1) return byHost[0]!;
  if (byHost.length > 1) {
    throw new StrataError("AMBIGUOUS", `${byHost.length} CVDs have the hostname ${ref}`, {
      subject: ref,
      hint: `name one by id: ${byHost.map((c) => c.id).join(", ")}`,
    });
  }
  throw new StrataError("NOT_FOUND", `no CVD ${ref} with a snapshot you may restore`, {
    subject: ref,
    hint: "see them with `list-cvds`",
  });
}

/** The snapshot `ref` names among the CVD's (an id, or "latest"). */
export async function findSnapshot(
  op: Operator,
  cvd: RestorableCvd,
  ref?: string,
): Promise<CvdSnapshotSummary> {
  if (!ref || ref === "latest") return cvd.latest!;
  const snaps = await call(op.client.cvdSnapshots(cvd.id));
  const s = snaps.find((x) => x.id === ref || (ref.length >= 8 && x.id.startsWith(ref)));
  if (!s) {
    throw new StrataError("NOT_FOUND", `CVD ${cvd.id} has no snapshot ${ref}`, {
      subject: ref,
      hint: `list them with \`strata cvd snapshots ${cvd.id}\`, or leave --snapshot out for the latest`,
    });
  }
  return s;
}

export interface EnrollReplacementOptions {
  server: PinnedServer;
  token: string;
  /** The agent state directory of the restored system (TARGET/var/lib/strata-agent). */
  stateDir: string;
  hostname: string;
  force?: boolean;
  log?: (line: string) => void;
}

/**
 * Enroll the replacement device. Its facts are the live system's except
 * the hostname (the CVD's, unless given) and the machine id: a fresh one,
 * since the restored system gets a new id at first boot (restore.md,
 * "Identity files") and a live medium's id is shared by every machine
 * booted from it. The state is written straight into the target's state
 * directory, as the agent keeps it: the restored system's agent finds it
 * at first boot.
 */
export async function enrollReplacement(o: EnrollReplacementOptions): Promise<EnrollResult> {
  return enrollEndpoint({
    server: o.server.url,
    token: o.token,
    fingerprint: o.server.fingerprint,
    root: "/",
    stateDir: o.stateDir,
    force: o.force === true,
    facts: {
      hostname: o.hostname,
      machineId: randomBytes(16).toString("hex"),
      agentStateDir: "/var/lib/strata-agent",
    },
    ...(o.log ? { log: o.log } : {}),
  });
}
