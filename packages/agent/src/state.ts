/**
 * The agent's state directory (default /var/lib/strata-agent, mode 0700):
 *
 * - `state.json`: the server URL, the pinned certificate fingerprint and
 *   the endpoint id. Not secret, but only the agent needs it.
 * - `credential`: the endpoint credential (`sep_…`), mode 0600. The upload
 *   policy's factory rule `%agentstate%` excludes the whole directory, so
 *   the credential never reaches a snapshot.
 *
 * Every file is written whole or not at all: a temporary file in the same
 * directory, fsync, rename over the old one, fsync of the directory. A
 * crash leaves the old file or the new one, never half of one.
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import * as path from "node:path";
import { fromSystemError, StrataError } from "@strata/core";

export const DEFAULT_STATE_DIR = "/var/lib/strata-agent";
export const STATE_FILE = "state.json";
export const CREDENTIAL_FILE = "credential";

export interface AgentState {
  /** Format of this file. */
  version: 1;
  /** https://HOST:PORT */
  serverUrl: string;
  /** The server certificate's SHA-256 fingerprint ("AB:CD:…"), checked at every TLS handshake. */
  fingerprint: string;
  endpointId: string;
  enrolledAt: string;
  /** The endpoint's root directory the agent protects (`/` unless enrolled with --root). */
  root?: string;
}

/** Create the directory (0700), or tighten an existing one to 0700. */
export function ensureStateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if ((statSync(dir).mode & 0o777) !== 0o700) chmodSync(dir, 0o700);
  } catch (e) {
    throw fromSystemError(e, "creating the agent state directory", dir);
  }
}

/** Write `data` to `file` atomically with `mode` (temp + fsync + rename + directory fsync). */
export function writeFileAtomic(file: string, data: string, mode: number): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    const fd = openSync(tmp, "wx", mode);
    try {
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    chmodSync(tmp, mode); // the umask may have narrowed or (via ACLs) widened it
    renameSync(tmp, file);
    const dfd = openSync(path.dirname(file), "r");
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch (e) {
    rmSync(tmp, { force: true });
    throw fromSystemError(e, "writing", file);
  }
}

export function readState(dir: string): AgentState | null {
  const file = path.join(dir, STATE_FILE);
  if (!existsSync(file)) return null;
  let v: Partial<AgentState>;
  try {
    v = JSON.parse(readFileSync(file, "utf8")) as Partial<AgentState>;
  } catch (e) {
    throw new StrataError("CONFIG_INVALID", `cannot read ${file}: ${(e as Error).message}`, {
      subject: file,
      hint: "enroll again with `strata agent enroll --force`",
    });
  }
  if (
    v.version !== 1 ||
    typeof v.serverUrl !== "string" ||
    typeof v.fingerprint !== "string" ||
    typeof v.endpointId !== "string"
  ) {
    throw new StrataError("CONFIG_INVALID", `${file} is not an agent state file this agent understands`, {
      subject: file,
      hint: "enroll again with `strata agent enroll --force`",
    });
  }
  return v as AgentState;
}

export function writeState(dir: string, state: AgentState): void {
  ensureStateDir(dir);
  writeFileAtomic(path.join(dir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}

export function readCredential(dir: string): string | null {
  const file = path.join(dir, CREDENTIAL_FILE);
  if (!existsSync(file)) return null;
  return readFileSync(file, "utf8").trim();
}

export function writeCredential(dir: string, credential: string): void {
  ensureStateDir(dir);
  writeFileAtomic(path.join(dir, CREDENTIAL_FILE), `${credential}\n`, 0o600);
}
