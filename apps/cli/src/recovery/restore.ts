/**
 * The restore itself, as the new endpoint's own `recover` task
 * (docs/design/restore.md, "Tasks"): the operator queues it (the server
 * disables the lost machine's endpoint and gives the CVD to the new one),
 * then the tool does what the agent would — claims the task, rolls back or
 * forward what an interrupted run left, restores the snapshot into the
 * target through the engine reading from the server with the endpoint's
 * credential, reports progress, and finishes the task — with the agent's
 * own task runner (restore-task.ts).
 */
import { readFileSync } from "node:fs";
import * as path from "node:path";
import {
  DEFAULT_STATE_DIR,
  endpointClient,
  type RestoreProgress,
  type RestoreResult,
  recoverPendingRestore,
} from "@strata/agent";
import { compilePolicy, parsePasswd, parsePolicy, StrataError } from "@strata/core";
import type { CvdSnapshotSummary, Task } from "@strata/protocol";
import { call } from "../commands/server.js";
import { formatBytes, Progress } from "../output.js";
import { runRestoreTask } from "../restore-task.js";
import type { Operator, RestorableCvd } from "./session.js";

export interface RecoverTask {
  task: Task;
  /** The lost machine's endpoint, disabled by the server because it is replaced. */
  disabledEndpoint: string | null;
  /** True when an earlier run's task is continued. */
  resumed: boolean;
}

/**
 * Queue the recover task, or find the one an earlier run of the tool left
 * queued or running for this endpoint (it is continued, not queued twice).
 */
export async function queueRecover(
  op: Operator,
  stateDir: string,
  endpointId: string,
  cvd: RestorableCvd,
  snapshot: CvdSnapshotSummary,
): Promise<RecoverTask> {
  const self = await call(endpointClient(stateDir).agentSelf());
  if (self.state === "active" && self.cvd?.id === cvd.id) {
    const open = self.tasks.find((t) => t.kind === "recover");
    if (open) {
      const task = await call(op.client.getTask(open.id));
      if (task.params.snapshot === snapshot.id) {
        const prev = task.params.previousEndpoint;
        return { task, disabledEndpoint: typeof prev === "string" ? prev : null, resumed: true };
      }
      await call(op.client.cancelTask(open.id));
    }
  }
  const task = await call(
    op.client.recoverCvd(cvd.id, { endpoint: endpointId, snapshot: snapshot.id, streaming: true }),
  );
  const prev = task.params.previousEndpoint;
  return { task, disabledEndpoint: typeof prev === "string" ? prev : null, resumed: false };
}

export interface RunRecoverOptions {
  /** TARGET/var/lib/strata-agent: the new endpoint's credential, and the engine's journal. */
  stateDir: string;
  target: string;
  task: Task;
  /** Show progress (on a terminal: a line redrawn; elsewhere: a line every 10 s). */
  progress: boolean;
  log: (line: string) => void;
}

export interface RecoverOutcome {
  result: RestoreResult;
  bytesReceived: number;
}

function progressLine(p: RestoreProgress): string {
  const total = p.totalBytes ? ` / ${formatBytes(p.totalBytes)}` : "";
  const files = p.totalFiles ? ` / ${p.totalFiles}` : "";
  return `restoring: ${formatBytes(p.restoredBytes)}${total}, ${p.restoredFiles}${files} files (${p.phase})`;
}

function readText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/**
 * Run the recover task as the new endpoint, the way its agent runs tasks
 * (restore-task.ts), into the target. Ctrl-C stops between steps and
 * leaves the task running: the next run of the tool resumes it.
 */
export async function runRecoverTask(o: RunRecoverOptions): Promise<RecoverOutcome> {
  const ep = endpointClient(o.stateDir);
  // What an interrupted run left: a committed journal is applied, a stage without one removed.
  for (const p of await recoverPendingRestore(o.stateDir, o.target)) {
    if (p.outcome !== "none") o.log(`an interrupted restore (${p.id}) was ${p.outcome.replace("-", " ")}`);
  }
  const self = await call(ep.agentSelf());
  if (!self.cvd) {
    throw new StrataError("PERMISSION_DENIED", `endpoint ${self.endpointId} is ${self.state}`, {
      hint: "an administrator disabled it or took its CVD away; run the recovery again with a new --token",
    });
  }
  // Classes as the restored system will see them: its homes, its agent state directory.
  const policy = compilePolicy(parsePolicy(self.cvd.policy), {
    homes: parsePasswd(readText(path.join(o.target, "etc/passwd"))),
    agentStateDir: DEFAULT_STATE_DIR,
    swapFiles: [],
  });
  const abort = new AbortController();
  const interrupted = () =>
    abort.abort(
      new StrataError("INVALID_ARGUMENT", "interrupted", { hint: "run the tool again to continue" }),
    );
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  const bar = new Progress(o.progress);
  let lastLine = 0;
  try {
    const out = await runRestoreTask(
      ep,
      { id: o.task.id, kind: o.task.kind, state: "queued" },
      {
        signal: abort.signal,
        policy,
        root: o.target,
        stateDir: o.stateDir,
        onProgress: (p) => {
          const line = progressLine(p as RestoreProgress);
          bar.update(line);
          if (o.progress && !process.stderr.isTTY && Date.now() - lastLine >= 10_000) {
            lastLine = Date.now();
            o.log(line);
          }
        },
      },
    );
    if ("skipped" in out) {
      throw new StrataError("INVALID_ARGUMENT", `task ${o.task.id} ended before it ran: ${out.skipped}`, {
        hint: "run the recovery again: it queues a new task",
      });
    }
    return { result: out.result, bytesReceived: out.bytesReceived };
  } finally {
    bar.done();
    process.off("SIGINT", interrupted);
    process.off("SIGTERM", interrupted);
  }
}
