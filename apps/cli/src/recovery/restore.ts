/**
 * The restore itself: the CVD's snapshot into the target, `recover` kind,
 * through the agent's engine reading from the server.
 */
import { StrataError } from "@strata/core";
import type { CvdSnapshotSummary } from "@strata/protocol";
import type { Operator, PinnedServer, RestorableCvd } from "./session.js";

export interface RestoreCvdOptions {
  operator: Operator;
  server: PinnedServer;
  /** TARGET/var/lib/strata-agent, where the new endpoint's credential is. */
  stateDir: string;
  endpointId: string;
  cvd: RestorableCvd;
  snapshot: CvdSnapshotSummary;
  target: string;
  /** Show progress on a terminal. */
  progress: boolean;
  log: (line: string) => void;
}

export interface RecoverRestoreResult {
  files: number;
  bytes: number;
  bytesReceived: number;
  errors: { path: string; message: string }[];
  durationMs: number;
}

export async function restoreCvd(_o: RestoreCvdOptions): Promise<RecoverRestoreResult> {
  throw new StrataError("UNSUPPORTED", "this build of the recovery tool has no restore engine yet", {
    hint: "the CVD is attached to this endpoint; build the tool again from a release with the restore engine",
  });
}
