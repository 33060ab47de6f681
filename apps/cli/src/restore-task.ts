/**
 * One restore task (docs/design/restore.md, "Tasks"), end to end, as the
 * endpoint: claim it, upload a safety snapshot before a system or full
 * revert, restore with the engine through RemoteRestoreSource, report
 * progress at most once a second (a `cancelled` answer stops it), and
 * report the end. Shared by `strata agent run` (the daemon's runTask) and
 * the recovery tool, which runs the replacement device's `recover` task.
 */
import {
  hasPendingRestore,
  RemoteRestoreSource,
  type RestoreResult,
  type RestoreRun,
  recoverPendingRestore,
  runRestore,
  type TaskContext,
  type Throttle,
  type Vouch,
} from "@strata/agent";
import { StrataError } from "@strata/core";
import type { AgentTaskRef, StrataClient, Task } from "@strata/protocol";

/** Opens a file cache as a vouch for unchanged files; null when it cannot vouch. */
export type OpenVouch = () => Promise<{ vouch: Vouch; close(): void } | null>;

/**
 * The upload before a system or full revert, so the revert can itself be
 * reverted. `cacheVouch`, when given, opens the file cache that upload just
 * committed as a vouch for unchanged files (restore.md, "Engine decisions");
 * the agent supplies it, the recovery tool (no file cache, no SQLite) does not.
 */
export type SafetyUpload = (
  signal: AbortSignal,
  pace: Throttle | null,
  onProgress: (p: object) => void,
  kind: "pre-restore" | "pre-apply",
) => Promise<{ snapshot: string; cacheVouch?: OpenVouch }>;

/** What a restore task needs of the daemon's TaskContext. */
export type RestoreTaskContext = Pick<
  TaskContext,
  "signal" | "policy" | "root" | "stateDir" | "onProgress"
> & {
  throttle?: Throttle | null;
};

export type RestoreTaskOutcome =
  /** The task was cancelled or ended before it could be claimed. */
  | { skipped: string }
  | { task: Task; result: RestoreResult; safetySnapshot: string | null; bytesReceived: number };

/** What a task's work gets from `runClaimedTask`. */
export interface ClaimedTask {
  task: Task;
  /** Aborted when the agent stops or the task is cancelled. */
  signal: AbortSignal;
  /** Progress: to the status file always, to the server at most once a second (or when forced). */
  report(p: object, force?: boolean): void;
}

/**
 * Claim the task `ref`, run `work`, and report its end (`result`) or its
 * failure to the server. When `ctx.signal` aborts (the agent stops, the
 * operator presses Ctrl-C), the task stays running at the server and the
 * next run resumes it; any other failure is reported as the task's end and
 * thrown. A `cancelled` answer to a progress report aborts `work`.
 */
export async function runClaimedTask<T>(
  client: StrataClient,
  ref: AgentTaskRef,
  ctx: Pick<TaskContext, "signal" | "onProgress">,
  work: (t: ClaimedTask) => Promise<{ result: Record<string, unknown>; value: T }>,
): Promise<{ skipped: string } | { task: Task; value: T }> {
  let task: Task;
  try {
    task = await client.startAgentTask(ref.id);
  } catch (e) {
    // Cancelled or ended meanwhile: nothing to run.
    if ((e as { code?: string }).code === "ALREADY_EXISTS") return { skipped: (e as Error).message };
    throw e;
  }
  const ac = new AbortController();
  const stop = () => ac.abort(ctx.signal.reason);
  ctx.signal.addEventListener("abort", stop, { once: true });
  let lastReport = 0;
  let reporting: Promise<void> = Promise.resolve();
  const report = (p: object, force = false) => {
    ctx.onProgress(p);
    const now = Date.now();
    if (!force && now - lastReport < 1000) return;
    lastReport = now;
    reporting = reporting
      .then(() => client.reportTaskProgress(task.id, { ...p }))
      .then((ans) => {
        if (ans.state === "cancelled")
          ac.abort(new StrataError("INVALID_ARGUMENT", `task ${task.id} was cancelled`));
      })
      .catch(() => {
        // A lost progress report is not worth failing a task for; the next one goes out.
      });
  };
  try {
    const { result, value } = await work({ task, signal: ac.signal, report });
    await reporting;
    await client.finishAgentTask(task.id, { result });
    return { task, value };
  } catch (e) {
    await reporting;
    // Stopping: the task stays running at the server and is resumed at the next start.
    if (ctx.signal.aborted) throw e;
    const err = e instanceof StrataError ? e : null;
    await client
      .finishAgentTask(task.id, {
        error: { code: err?.code ?? "INTERNAL", message: (e as Error)?.message ?? String(e) },
      })
      .catch(() => {
        // Reported again when the agent resumes the task (it stays running at the server).
      });
    throw e;
  } finally {
    ctx.signal.removeEventListener("abort", stop);
  }
}

/** Run the restore task `ref` with the endpoint's `client` (see `runClaimedTask` for its end). */
export async function runRestoreTask(
  client: StrataClient,
  ref: AgentTaskRef,
  ctx: RestoreTaskContext,
  safetyUpload?: SafetyUpload,
  /** Told the engine's run once it starts (the agent answers `fetch` requests through it). */
  onRun: (run: RestoreRun) => void = () => {},
): Promise<RestoreTaskOutcome> {
  const o = await runClaimedTask(client, ref, ctx, async ({ task, signal, report }) => {
    let safetySnapshot: string | null = null;
    let cacheVouch: OpenVouch | undefined;
    if (task.kind === "system" || task.kind === "full") {
      if (!safetyUpload)
        throw new StrataError("UNSUPPORTED", `a ${task.kind} restore needs a safety upload first`, {
          hint: "let the endpoint's agent (`strata agent run`) run it",
        });
      // So the revert can itself be reverted (restore.md, "Kinds").
      const r = await safetyUpload(
        signal,
        ctx.throttle ?? null,
        (p) => report({ phase: "safety-upload", ...p }),
        "pre-restore",
      );
      safetySnapshot = r.snapshot;
      cacheVouch = r.cacheVouch;
    }
    if (task.kind === "apply")
      throw new StrataError("INVALID_ARGUMENT", `task ${task.id} is a layer apply, not a restore`);
    // A layer apply waiting for a restart reaches the disk first: the restore plans against the result.
    if (hasPendingRestore(ctx.stateDir)) await recoverPendingRestore(ctx.stateDir, ctx.root);
    const source = await RemoteRestoreSource.forEndpoint(ctx.stateDir, task.cvd, {
      snapshot: String(task.params.snapshot),
    });
    // The safety upload just read (or vouched for) every local file: its file cache says which
    // are unchanged without reading them again (restore.md, "Engine decisions").
    const cached = (await cacheVouch?.()) ?? null;
    try {
      const run = runRestore(source, {
        root: ctx.root,
        stateDir: ctx.stateDir,
        id: task.id,
        kind: task.kind,
        ...(ctx.policy ? { policy: ctx.policy } : {}),
        ...(task.kind === "recover" ? { streaming: task.params.streaming !== false } : {}),
        ...(cached ? { vouch: cached.vouch } : {}),
        signal,
        onProgress: (p) => report({ ...p }),
      });
      onRun(run);
      const r = await run.done;
      const bytesReceived = source.stats.bytesReceived;
      return {
        result: {
          ...r,
          errors: r.errors.length,
          firstErrors: r.errors.slice(0, 20),
          safetySnapshot,
          bytesReceived,
        },
        value: { result: r, safetySnapshot, bytesReceived },
      };
    } finally {
      cached?.close();
      await source.close();
    }
  });
  return "skipped" in o ? o : { task: o.task, ...o.value };
}
