/**
 * One layer apply task (docs/design/layers.md, "Apply (agent)"), as the
 * endpoint: claim it, fetch the apply plan, finish a change pending from an
 * earlier apply at restart, upload the safety snapshot, check the dry-run
 * against the live root (blocking problems fail the task), merge the
 * structured files, run the restore engine with kind `layer` (a kernel's
 * prerm.d and preinst.d hooks run right before its commit), run the
 * triggers, reinstall the user's packages from the new release when a
 * migration asks for it, and report.
 */
import { readFileSync, rmSync } from "node:fs";
import * as path from "node:path";
import {
  blockedError,
  forgetKernelPreCommit,
  hasPendingRestore,
  kernelPreCommit,
  prepareLayerApply,
  RemoteRestoreSource,
  type RestoreResult,
  recoverPendingRestore,
  reinstallUserPackages,
  runRestore,
  runTriggers,
  savePendingTriggers,
  type TriggerRun,
  writeFileAtomic,
} from "@strata/agent";
import type { AgentTaskRef, ReinstallReport, StrataClient, Task } from "@strata/protocol";
import { type RestoreTaskContext, runClaimedTask, type SafetyUpload } from "./restore-task.js";

export interface ApplyOutcome {
  task: Task;
  image: string;
  result: RestoreResult;
  safetySnapshot: string;
  triggers: TriggerRun[];
  pending: boolean;
  /** With `reinstallUserPackages`: what became of each user-installed package. */
  reinstall: ReinstallReport | null;
}

/**
 * An apply whose engine and triggers are done while a reinstall of user
 * packages is still to come: kept in the state directory until the task is
 * reported, so an agent stopped during apt resumes with the reinstall
 * alone — no second safety snapshot (which would hold the new system, and
 * a rollback would return to it), no second apply.
 */
interface AppliedMark {
  id: string;
  result: Record<string, unknown>;
  value: Omit<ApplyOutcome, "reinstall">;
  userInstalled: string[];
}

const markFile = (stateDir: string, id: string) => path.join(stateDir, `applied-${id}.json`);

function readMark(stateDir: string, id: string): AppliedMark | null {
  try {
    const m = JSON.parse(readFileSync(markFile(stateDir, id), "utf8")) as AppliedMark;
    return m.id === id ? m : null;
  } catch {
    return null;
  }
}

export async function runApplyTask(
  client: StrataClient,
  ref: AgentTaskRef,
  ctx: RestoreTaskContext,
  safetyUpload: SafetyUpload,
): Promise<{ skipped: string } | ApplyOutcome> {
  let o: Awaited<ReturnType<typeof applyClaimed>>;
  try {
    o = await applyClaimed(client, ref, ctx, safetyUpload);
  } catch (e) {
    // Failed and reported: a later task starts afresh. Stopped: the task resumes with what the hooks did.
    if (!ctx.signal.aborted) forgetKernelPreCommit(ctx.stateDir, ref.id);
    throw e;
  }
  // Reported (or skipped): nothing is left to resume.
  rmSync(markFile(ctx.stateDir, ref.id), { force: true });
  forgetKernelPreCommit(ctx.stateDir, ref.id);
  return "skipped" in o ? o : o.value;
}

function applyClaimed(
  client: StrataClient,
  ref: AgentTaskRef,
  ctx: RestoreTaskContext,
  safetyUpload: SafetyUpload,
) {
  return runClaimedTask<ApplyOutcome>(client, ref, ctx, async ({ task, signal, report }) => {
    // The new release is in place (and committed): its apt brings the user's packages
    // up to it. Whatever apt says, the migration stays; the result tells per package.
    const reinstallNow = async (packages: string[]): Promise<ReinstallReport> => {
      report({ phase: "reinstall" }, true);
      const logFile = path.join(ctx.stateDir, "logs", `reinstall-${task.id}.log`);
      try {
        return await reinstallUserPackages({
          root: ctx.root,
          packages,
          logFile,
          signal,
          onProgress: (p) =>
            report({ phase: "reinstall", step: p.step, ...(p.package ? { package: p.package } : {}) }),
        });
      } catch (e) {
        // The agent stopping: the task resumes with the reinstall alone.
        if (ctx.signal.aborted) throw e;
        // Cancelled by an administrator after the commit: the migration is on
        // disk and is reported as applied; the packages apt did not reach say so.
        const message = "cancelled by an administrator after the new system was committed";
        return {
          update: { ok: false, message },
          packages: packages.map((name) => ({ name, from: "", outcome: "failed", message })),
          log: logFile,
        };
      }
    };
    const mark = readMark(ctx.stateDir, task.id);
    if (mark) {
      const reinstall = await reinstallNow(mark.userInstalled);
      return { result: { ...mark.result, reinstall }, value: { ...mark.value, task, reinstall } };
    }
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
    // A kernel the commit removes or adds: its prerm.d / preinst.d hooks run right before the commit.
    const pre = kernelPreCommit(ctx.root, prep.triggerContext, { stateDir: ctx.stateDir, id: task.id });
    const triggerContext = pre
      ? { ...prep.triggerContext, kernelsBefore: pre.kernelsBefore }
      : prep.triggerContext;
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
          ...(pre ? { watch: pre.watch, beforeCommit: pre.beforeCommit } : {}),
        },
        ...(plan.atRestart ? { deferApply: true } : {}),
        signal,
        onProgress: (p) => report({ ...p }),
      });
      const r = await run.done;
      const pending = r.pending === true;
      // Triggers run when the files are in place: now, or after the restart's roll-forward.
      if (pending) savePendingTriggers(ctx.stateDir, task.id, prep.triggers, triggerContext);
      // The hooks before the commit first: the report lists what ran in order.
      const triggers = [
        ...(pre?.runs ?? []),
        ...(pending
          ? []
          : await runTriggers(ctx.root, prep.triggers, { ...triggerContext, stateDir: ctx.stateDir })),
      ];
      const value: Omit<ApplyOutcome, "reinstall"> = {
        task,
        image: plan.image.id,
        result: r,
        safetySnapshot: safety.snapshot,
        triggers,
        pending,
      };
      const result: Record<string, unknown> = {
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
        ...(prep.disk ? { disk: prep.disk } : {}),
        // What each printed (depmod's warnings, update-grub's menu), or why it was skipped.
        triggers: triggers.map((t) => ({
          trigger: t.trigger,
          ok: t.ok,
          ...(t.skipped ? { skipped: true } : {}),
          ...(t.output ? { output: t.output } : {}),
        })),
      };
      if (plan.reinstallUserPackages !== true || pending)
        return { result, value: { ...value, reinstall: null } };
      const m: AppliedMark = { id: task.id, result, value, userInstalled: prep.userInstalled };
      try {
        writeFileAtomic(markFile(ctx.stateDir, task.id), `${JSON.stringify(m)}\n`, 0o600);
      } catch {
        // Best effort (a full disk): without it a stop during apt redoes the whole apply on resume.
      }
      const reinstall = await reinstallNow(prep.userInstalled);
      return { result: { ...result, reinstall }, value: { ...value, reinstall } };
    } finally {
      await source.close();
    }
  });
}
