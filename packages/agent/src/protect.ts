/**
 * One protection run of an enrolled endpoint: ask the server for the
 * endpoint's state and policy, compile the policy with the endpoint's own
 * facts (homes from its /etc/passwd, its swap files, the agent's state
 * directory), and upload the protected area with the file cache kept in
 * the state directory. The daemon calls this at the policy's interval.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname as osHostname } from "node:os";
import * as path from "node:path";
import {
  compilePolicy,
  parsePasswd,
  parsePolicy,
  parseProcSwaps,
  StrataError,
  type UploadPolicy,
} from "@strata/core";
import { endpointClient, enrolledState } from "./client.js";
import { DEFAULT_STATE_DIR } from "./state.js";
import { endpointTransport } from "./transport.js";
import { type UploadOptions, type UploadResult, uploadOnce } from "./upload.js";

export interface ProtectOptions {
  stateDir: string;
  /** Overrides the root recorded at enrollment. */
  root?: string;
  signal?: AbortSignal;
  onProgress?: UploadOptions["onProgress"];
  onError?: UploadOptions["onError"];
  pace?: UploadOptions["pace"];
  threads?: number;
  /** The upload's kind; default centralize for the first, upload after. */
  kind?: UploadOptions["kind"];
  /** What changed since the last upload (the daemon's watcher); absent: walk everything. */
  dirty?: UploadOptions["dirty"];
}

export interface ProtectResult extends UploadResult {
  cvdId: string;
  policy: UploadPolicy;
}

function readText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/** The endpoint's hostname: its /etc/hostname under a root other than /, else the system's. */
export function endpointHostname(root: string): string {
  if (root === "/") return osHostname();
  return readText(path.join(root, "etc/hostname")).trim() || osHostname();
}

/** The agent's file cache (one per state directory). */
export function fileCachePath(stateDir: string): string {
  return path.join(stateDir, "cache", "files.db");
}

export async function protectOnce(o: ProtectOptions): Promise<ProtectResult> {
  const { state } = enrolledState(o.stateDir);
  const root = path.resolve(o.root ?? state.root ?? "/");
  const self = await endpointClient(o.stateDir).agentSelf();
  if (self.state !== "active" || !self.cvd)
    throw new StrataError(
      "PERMISSION_DENIED",
      `endpoint ${self.endpointId} is ${self.state}: nothing is uploaded`,
      {
        hint:
          self.state === "pending"
            ? `an administrator approves it: strata endpoints approve ${self.endpointId}`
            : "an administrator disabled it",
      },
    );
  const policy = parsePolicy(self.cvd.policy);
  const ctx = {
    homes: parsePasswd(readText(path.join(root, "etc/passwd"))),
    // The state directory as the endpoint sees it: under another root the agent's own state is elsewhere.
    agentStateDir: root === "/" ? path.resolve(o.stateDir) : DEFAULT_STATE_DIR,
    swapFiles: root === "/" ? parseProcSwaps(readText("/proc/swaps")) : [],
  };
  const compiled = compilePolicy(policy, ctx);
  // A new user's home, a swap file or another policy version protect other files: walk everything.
  const policyKey = createHash("sha256").update(JSON.stringify({ policy, ctx })).digest("hex");
  // Loaded on use: the catalog (SQLite) is not needed by every command that loads the agent.
  const { openSqliteFileCache } = await import("@strata/catalog");
  const cache = openSqliteFileCache(fileCachePath(o.stateDir));
  try {
    const r = await uploadOnce({
      transport: endpointTransport(o.stateDir),
      cvdId: self.cvd.id,
      root,
      policy: compiled,
      policyKey,
      dirty: o.dirty ?? null,
      parent: self.cvd.latestSnapshot,
      fileCache: cache,
      hostname: endpointHostname(root),
      signal: o.signal,
      onProgress: o.onProgress,
      onError: o.onError,
      pace: o.pace,
      threads: o.threads,
      ...(o.kind ? { kind: o.kind } : {}),
    });
    return { ...r, cvdId: self.cvd.id, policy };
  } finally {
    cache.close();
  }
}
