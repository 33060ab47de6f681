/**
 * One restore task (docs/design/restore.md, "Tasks"), end to end, as the
 * endpoint: claim it, upload a safety snapshot before a system or full
 * revert, restore with the engine through RemoteRestoreSource, report
 * progress at most once a second (a `cancelled` answer stops it), and
 * report the end. Shared by `strata agent run` (the daemon's runTask) and
 * the recovery tool, which runs the replacement device's `recover` task.
 */
import {
  RemoteRestoreSource,
  type RestoreResult,
  type RestoreRun,
  runRestore,
  type TaskContext,
  type Throttle,
} from "@strata/agent";
import { StrataError } from "@strata/core";
import type { AgentTaskRef, StrataClient, Task } from "@strata/protocol";

/** The upload before a system or full revert, so the revert can itself be reverted. */
export type SafetyUpload = (
  signal: AbortSignal,
  pace: Throttle | null,
  onProgress: (p: object) => void,
  kind: "pre-restore",
) => Promise<{ snapshot: string }>;

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

/**
 * Run the task `ref` with the endpoint's `client`. When `ctx.signal` aborts
 * (the agent stops, the operator presses Ctrl-C), the task stays running at
 * the server and the next run resumes it; any other failure is reported as
 * the task's end and thrown.
 */
export async function runRestoreTask(
  client: StrataClient,
  ref: AgentTaskRef,
  ctx: RestoreTaskContext,
  safetyUpload?: SafetyUpload,
  /** Told the engine's run once it starts (the agent answers `fetch` requests through it). */
  onRun: (run: RestoreRun) => void = () => {},
): Promise<RestoreTaskOutcome> {
  if (ref.kind === "apply")
    throw new StrataError("UNSUPPORTED", `task ${ref.id} applies layers; this runner restores snapshots`, {
      hint: 'layer apply tasks are run by the agent\'s apply runner (docs/design/layers.md, "Apply")',
    });
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
        // A lost progress report is not worth failing a restore for; the next one goes out.
      });
  };
  try {
    let safetySnapshot: string | null = null;
    if (task.kind === "system" || task.kind === "full") {
      if (!safetyUpload)
        throw new StrataError("UNSUPPORTED", `a ${task.kind} restore needs a safety upload first`, {
          hint: "let the endpoint's agent (`strata agent run`) run it",
        });
      // So the revert can itself be reverted (restore.md, "Kinds").
      const r = await safetyUpload(
        ac.signal,
        ctx.throttle ?? null,
        (p) => report({ phase: "safety-upload", ...p }),
        "pre-restore",
      );
      safetySnapshot = r.snapshot;
    }
    const source = await RemoteRestoreSource.forEndpoint(ctx.stateDir, task.cvd, {
      snapshot: String(task.params.snapshot),
    });
    try {
      const run = runRestore(source, {
        root: ctx.root,
        stateDir: ctx.stateDir,
        id: task.id,
        kind: task.kind as Exclude<Task["kind"], "apply">, // apply tasks are refused above
        ...(ctx.policy ? { policy: ctx.policy } : {}),
        ...(task.kind === "recover" ? { streaming: task.params.streaming !== false } : {}),
        signal: ac.signal,
        onProgress: (p) => report({ ...p }),
      });
      onRun(run);
      const r = await run.done;
      await reporting;
      const bytesReceived = source.stats.bytesReceived;
      await client.finishAgentTask(task.id, {
        result: {
          ...r,
          errors: r.errors.length,
          firstErrors: r.errors.slice(0, 20),
          safetySnapshot,
          bytesReceived,
        },
      });
      return { task, result: r, safetySnapshot, bytesReceived };
    } finally {
      await source.close();
    }
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
