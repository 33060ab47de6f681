/**
 * The restore engine (engine.ts, written separately: docs/design/restore.md,
 * "The engine"), reached through its documented signature.
 *
 * INTEGRATION POINT: until engine.ts is merged, this module loads it at
 * run time and answers null when it is absent, so the agent's task runner
 * and `strata cvd restore-file` compile and refuse cleanly
 * ("this agent has no restore engine yet"). Once engine.ts is in, replace
 * the dynamic import by `export { runRestore, recoverPendingRestore } from
 * "./engine.js"` and drop the null case.
 */
import type { RestoreSource } from "./source.js";
import type { PendingOutcome, RestoreOptions, RestoreProgress, RestoreResult } from "./types.js";

/** What runRestore returns (the parts the task runner and the CLI use). */
export interface RestoreRun {
  done: Promise<RestoreResult>;
  progress(): RestoreProgress;
}

export interface RestoreEngine {
  runRestore(source: RestoreSource, opts: RestoreOptions): RestoreRun;
  recoverPendingRestore(stateDir: string, root: string): Promise<PendingOutcome>;
}

/** The engine module, or null while it is not part of this build. */
export async function loadRestoreEngine(): Promise<RestoreEngine | null> {
  // A variable specifier: the compiler does not resolve it, the runtime does.
  const spec = "./engine.js";
  try {
    const m = (await import(spec)) as Partial<RestoreEngine>;
    if (typeof m.runRestore !== "function" || typeof m.recoverPendingRestore !== "function") return null;
    return m as RestoreEngine;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ERR_MODULE_NOT_FOUND" && String((e as Error).message).includes("engine.js")) return null;
    throw e;
  }
}
