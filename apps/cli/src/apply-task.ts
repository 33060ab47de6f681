/**
 * One layer apply task (docs/design/layers.md, "Apply (agent)"), as the
 * endpoint: claim it, fetch the apply plan, finish a change pending from an
 * earlier apply at restart, upload the safety snapshot, check the dry-run
 * against the live root (blocking problems fail the task), merge the
 * structured files, run the restore engine with kind `layer`, run the
 * triggers, and report.
 */
import {
  blockedError,
  hasPendingRestore,
  prepareLayerApply,
  RemoteRestoreSource,
  type RestoreResult,
  recoverPendingRestore,
  runRestore,
  runTriggers,
  savePendingTriggers,
  type TriggerRun,
} from "@strata/agent";
import type { AgentTaskRef, StrataClient, Task } from "@strata/protocol";
import { type RestoreTaskContext, runClaimedTask, type SafetyUpload } from "./restore-task.js";

export interface ApplyOutcome {
  task: Task;
  image: string;
  result: RestoreResult;
  safetySnapshot: string;
  triggers: TriggerRun[];
  pending: boolean;
}

export async function runApplyTask(
  client: StrataClient,
  ref: AgentTaskRef,
  ctx: RestoreTaskContext,
  safetyUpload: SafetyUpload,
): Promise<{ skipped: string } | ApplyOutcome> {
  const o = await runClaimedTask(client, ref, ctx, async ({ task, signal, report }) => {
    const plan = await client.applyPlan(task.id);
    // Pending changes from an earlier apply reach the disk first, so the
    // dry-run and the merge below see them (one restart combines them).
    if (hasPendingRestore(ctx.stateDir)) await recoverPendingRestore(ctx.stateDir, ctx.root);
    const safety = await safetyUpload(
      signal,
      ctx.throttle ?? null,
      (p) => report({ phase: "safety-upload", ...p }),
      "pre-apply",
    );
    const prep = prepareLayerApply(plan, ctx.root);
    const blocked = blockedError(prep.problems);
    if (blocked) throw blocked;
    const source = RemoteRestoreSource.forEndpointSession(ctx.stateDir, plan.session);
    try {
      const run = runRestore(source, {
        root: ctx.root,
        stateDir: ctx.stateDir,
        id: task.id,
        kind: "layer",
        ...(ctx.policy ? { policy: ctx.policy } : {}),
        layer: {
          removable: prep.removable,
          doNotOverride: prep.doNotOverride,
          enforceRemove: plan.enforce === "remove",
          literals: prep.literals,
        },
        ...(plan.atRestart ? { deferApply: true } : {}),
        signal,
        onProgress: (p) => report({ ...p }),
      });
      const r = await run.done;
      const pending = r.pending === true;
      // Triggers run when the files are in place: now, or after the restart's roll-forward.
      if (pending) savePendingTriggers(ctx.stateDir, task.id, plan.manifest.triggers);
      const triggers = pending ? [] : await runTriggers(ctx.root, plan.manifest.triggers);
      const value: ApplyOutcome = {
        task,
        image: plan.image.id,
        result: r,
        safetySnapshot: safety.snapshot,
        triggers,
        pending,
      };
      return {
        result: {
          image: plan.image.id,
          imageSnapshot: plan.image.snapshot,
          pending,
          safetySnapshot: safety.snapshot,
          files: r.files,
          putOps: r.putOps,
          deleted: r.deleted,
          metaOps: r.metaOps,
          bytes: r.bytes,
          seededBytes: r.seededBytes,
          fetchedBytes: r.fetchedBytes,
          bytesReceived: source.stats.bytesReceived,
          errors: r.errors.length,
          firstErrors: r.errors.slice(0, 20),
          packages: prep.packages,
          userInstalled: prep.userInstalled,
          accountsAdded: prep.accountsAdded,
          problems: prep.problems,
          triggers: triggers.map((t) => ({
            trigger: t.trigger,
            ok: t.ok,
            ...(t.ok ? {} : { output: t.output }),
          })),
        },
        value,
      };
    } finally {
      await source.close();
    }
  });
  return "skipped" in o ? o : o.value;
}
