/**
 * Restore tasks (docs/design/restore.md, "Tasks"): an administrator queues
 * a revert (system or full) or a recovery (the CVD given to a replacement
 * endpoint); the endpoint's agent learns of it from `GET /agent/self`,
 * claims it, reports progress and the end. State changes are
 * compare-and-set in the catalog, so an agent and a cancel never both win.
 */
import { randomBytes } from "node:crypto";
import type { TaskRecord, TaskState } from "@strata/catalog";
import { type SnapshotId, StrataError } from "@strata/core";
import type {
  AgentTaskRef,
  RecoverRequest,
  RevertRequest,
  Task,
  TaskFinishRequest,
  TaskProgressAnswer,
  TaskQuery,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type AgentIdentity, type Caller, requirePermission, type ServiceDeps } from "./context.js";
import type { EndpointService } from "./endpoint-service.js";

/** The CVD's snapshot a task restores: `latest`, an id or a unique prefix (NOT_FOUND / AMBIGUOUS otherwise). */
export type ResolveSnapshot = (cvdId: string, ref: string | undefined) => Promise<{ id: string; time: Date }>;

export interface TaskServiceDeps extends ServiceDeps {
  audit: AuditService;
  endpoints: EndpointService;
  resolveSnapshot: ResolveSnapshot;
}

const ACTIVE: TaskState[] = ["queued", "running"];
/** A progress report is a small flat object; larger ones are refused. */
const MAX_PROGRESS_JSON = 16 * 1024;
/** A result is written once: room for an apply's package lists (a base layer's run to thousands). */
const MAX_RESULT_JSON = 256 * 1024;

export function taskView(t: TaskRecord): Task {
  return {
    id: t.id,
    cvd: t.cvdId,
    endpoint: t.endpointId,
    kind: t.kind,
    params: t.params,
    state: t.state,
    progress: t.progress,
    result: t.result,
    error: t.error,
    createdBy: t.createdBy,
    createdAt: t.createdAt.toISOString(),
    updatedAt: t.updatedAt.toISOString(),
    startedAt: t.startedAt?.toISOString() ?? null,
    finishedAt: t.finishedAt?.toISOString() ?? null,
  };
}

function checkJson(v: unknown, what: string, max: number): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw new StrataError("INVALID_ARGUMENT", `${what} must be a JSON object`);
  if (JSON.stringify(v).length > max)
    throw new StrataError("TOO_LARGE", `${what} is larger than ${max} bytes of JSON`);
  return v as Record<string, unknown>;
}

export class TaskService {
  constructor(private readonly d: TaskServiceDeps) {}

  private get tasks() {
    return this.d.store.tasks;
  }

  private async task(id: string): Promise<TaskRecord> {
    const t = typeof id === "string" && id.length <= 80 ? await this.tasks.getTask(id) : null;
    if (!t)
      throw new StrataError("NOT_FOUND", `task ${String(id).slice(0, 80)} does not exist`, {
        subject: String(id).slice(0, 80),
        hint: "see `strata task list`",
      });
    return t;
  }

  private async cvd(id: string) {
    const c = await this.d.store.getCvd(id);
    if (!c)
      throw new StrataError("NOT_FOUND", `CVD ${id} does not exist`, {
        subject: id,
        hint: "see `strata cvd list`",
      });
    return c;
  }

  private async refuseIfBusy(cvdId: string): Promise<void> {
    const busy = await this.tasks.listTasks({ cvdId, states: ACTIVE, limit: 1 });
    if (busy[0])
      throw new StrataError(
        "ALREADY_EXISTS",
        `CVD ${cvdId} already has task ${busy[0].id} (${busy[0].state})`,
        {
          subject: busy[0].id,
          hint: `wait for it (\`strata task show ${busy[0].id} --wait\`) or cancel it (\`strata task cancel ${busy[0].id}\`)`,
        },
      );
  }

  private async create(
    c: Caller,
    cvdId: string,
    endpointId: string,
    kind: TaskRecord["kind"],
    params: Record<string, unknown>,
  ): Promise<Task> {
    const now = this.d.clock.now();
    const rec: TaskRecord = {
      id: `task_${randomBytes(12).toString("base64url")}`,
      cvdId,
      endpointId,
      kind,
      params,
      state: "queued",
      progress: null,
      result: null,
      error: null,
      createdBy: `user:${c.user.name}`,
      createdAt: now,
      updatedAt: now,
      startedAt: null,
      finishedAt: null,
    };
    await this.tasks.createTask(rec);
    await this.d.audit.by(c, `task.${kind}`, `cvd:${cvdId}`, {
      task: rec.id,
      endpoint: endpointId,
      ...params,
    });
    return taskView(rec);
  }

  /** The CVD's endpoint, which must be active to run a task. */
  private async activeEndpointOf(cvdId: string, what: string) {
    const cvd = await this.cvd(cvdId);
    if (!cvd.endpointId)
      throw new StrataError("INVALID_ARGUMENT", `CVD ${cvdId} has no endpoint to ${what}`, {
        subject: cvdId,
        hint: `give it to a replacement with \`strata cvd recover ${cvdId} --endpoint ENDPOINT\``,
      });
    const ep = await this.d.store.getEndpoint(cvd.endpointId);
    if (ep?.state !== "active")
      throw new StrataError(
        "INVALID_ARGUMENT",
        `endpoint ${cvd.endpointId} of CVD ${cvdId} is ${ep?.state ?? "gone"}`,
        {
          subject: cvd.endpointId,
          hint: "only an active endpoint runs tasks; approve it first",
        },
      );
    return ep;
  }

  /**
   * Queue a layer apply (docs/design/layers.md, "Apply") on the CVD's
   * endpoint. The layer service composed the image; `params` names it
   * (`image`: its snapshot id), with `enforce` and `atRestart`.
   */
  async queueApply(
    c: Caller,
    cvdId: string,
    params: {
      image: string;
      imageKey: string;
      enforce: "none" | "keep" | "remove";
      atRestart: boolean;
      migrate: boolean;
      /** The image applied before this one (a rollback gives it back). */
      previousImage: string | null;
      /** A migration that reinstalls the user-installed packages from the new release afterwards. */
      reinstallUserPackages?: boolean;
    },
  ): Promise<Task> {
    requirePermission(c, "layers.assign");
    const ep = await this.activeEndpointOf(cvdId, "apply layers to");
    await this.refuseIfBusy(cvdId);
    return this.create(c, cvdId, ep.id, "apply", { ...params });
  }

  /** `strata cvd revert`: the CVD's own endpoint goes back to a snapshot (system by default). */
  async revert(
    c: Caller,
    cvdId: string,
    req: RevertRequest,
    /** A rollback of a layer apply: `rollbackOf` (the apply task), `restoreImage` (recorded as applied when done). */
    extra: { rollbackOf?: string; restoreImage?: string | null } = {},
  ): Promise<Task> {
    requirePermission(c, "restore.run");
    const ep = await this.activeEndpointOf(cvdId, "revert");
    const snap = await this.d.resolveSnapshot(cvdId, req?.snapshot);
    await this.refuseIfBusy(cvdId);
    return this.create(c, cvdId, ep.id, req?.full ? "full" : "system", {
      snapshot: snap.id,
      time: snap.time.toISOString(),
      ...extra,
    });
  }

  /** The CVD's tasks that ended done, newest first (at most `limit`). */
  async doneTasks(cvdId: string, limit = 100): Promise<TaskRecord[]> {
    return this.tasks.listTasks({ cvdId, states: ["done"], limit });
  }

  /** Add to a done task's result (a migration's confirmation); false when it is not done. */
  async annotateDone(id: string, add: Record<string, unknown>): Promise<boolean> {
    const t = await this.tasks.getTask(id);
    if (t?.state !== "done") return false;
    return this.tasks.updateTask(
      id,
      ["done"],
      { result: { ...(t.result ?? {}), ...add } },
      this.d.clock.now(),
    );
  }

  /**
   * `strata cvd recover`: give the CVD to endpoint E (new, pending, or
   * already holding it) and queue a `recover` there. The CVD's previous
   * endpoint, if still enabled, is disabled first: two machines must not
   * both upload into one CVD. Giving a CVD is an approval, so the caller
   * needs endpoints.approve (and endpoints.write to disable the old one)
   * besides restore.run.
   */
  async recover(c: Caller, cvdId: string, req: RecoverRequest): Promise<Task> {
    requirePermission(c, "restore.run");
    const cvd = await this.cvd(cvdId);
    const ep = await this.d.store.getEndpoint(req?.endpoint);
    if (!ep)
      throw new StrataError("NOT_FOUND", `endpoint ${req?.endpoint} does not exist`, {
        subject: String(req?.endpoint),
        hint: "enroll the replacement device first (`strata agent enroll` on it), then see `strata endpoints list`",
      });
    if (ep.cvdId && ep.cvdId !== cvdId)
      throw new StrataError("INVALID_ARGUMENT", `endpoint ${ep.id} already has CVD ${ep.cvdId}`, {
        subject: ep.id,
        hint: "recover onto an endpoint without a CVD: enroll the replacement with a token made by `strata tokens create --no-autoassign` (neither auto-approve nor auto-assignment rules)",
      });
    if (ep.duplicateMachineId && ep.state === "pending")
      throw new StrataError(
        "INVALID_ARGUMENT",
        `endpoint ${ep.id} reported a machine id another endpoint has`,
        {
          subject: ep.id,
          hint: "check with `strata endpoints show` that it is the replacement device, then approve it with --cvd",
        },
      );
    // Everything that can fail without changing anything, first.
    const snap = await this.d.resolveSnapshot(cvdId, req?.snapshot);
    await this.refuseIfBusy(cvdId);
    requirePermission(c, "endpoints.approve");
    const previous =
      cvd.endpointId && cvd.endpointId !== ep.id ? await this.d.store.getEndpoint(cvd.endpointId) : null;
    if (previous && previous.state !== "disabled") {
      requirePermission(c, "endpoints.write");
      await this.d.endpoints.disable(c, previous.id);
    }
    if (ep.state !== "active" || ep.cvdId !== cvdId) await this.d.endpoints.approve(c, ep.id, { cvd: cvdId });
    return this.create(c, cvdId, ep.id, "recover", {
      snapshot: snap.id,
      time: snap.time.toISOString(),
      streaming: req?.streaming ?? true,
      ...(previous ? { previousEndpoint: previous.id } : {}),
    });
  }

  async list(c: Caller, q: TaskQuery = {}): Promise<Task[]> {
    requirePermission(c, "cvd.read");
    const rows = await this.tasks.listTasks({
      ...(q.cvd ? { cvdId: q.cvd } : {}),
      ...(q.state ? { states: [q.state] } : {}),
      limit: Math.min(Math.max(Number(q.limit ?? 100) || 100, 1), 1000),
    });
    return rows.map(taskView);
  }

  async get(c: Caller, id: string): Promise<Task> {
    requirePermission(c, "cvd.read");
    return taskView(await this.task(id));
  }

  /** Queued: it never starts. Running: the agent stops at its next progress report. Finished: refused. */
  async cancel(c: Caller, id: string): Promise<Task> {
    requirePermission(c, "restore.run");
    const t = await this.task(id);
    const now = this.d.clock.now();
    if (!(await this.tasks.updateTask(id, ACTIVE, { state: "cancelled", finishedAt: now }, now))) {
      const again = await this.task(id);
      if (again.state === "cancelled") return taskView(again);
      throw new StrataError(
        "ALREADY_EXISTS",
        `task ${id} is ${again.state}; only queued and running tasks can be cancelled`,
        {
          subject: id,
        },
      );
    }
    await this.d.audit.by(c, "task.cancel", `cvd:${t.cvdId}`, { task: id, was: t.state });
    return taskView(await this.task(id));
  }

  // ---- the agent's side ------------------------------------------------------

  /** The endpoint's queued and running tasks, oldest first (for `GET /agent/self`). */
  async forAgent(agent: AgentIdentity): Promise<AgentTaskRef[]> {
    if (agent.state !== "active" || !agent.cvdId) return [];
    const rows = await this.tasks.listTasks({ endpointId: agent.endpointId, states: ACTIVE, limit: 16 });
    return rows
      .filter((t) => t.cvdId === agent.cvdId)
      .reverse()
      .map((t) => ({ id: t.id, kind: t.kind, state: t.state as "queued" | "running" }));
  }

  /** The endpoint's own task (NOT_FOUND for another endpoint's), for the routes beside start/progress/finish. */
  async agentTask(agent: AgentIdentity, id: string): Promise<TaskRecord> {
    return this.ownTask(agent, id);
  }

  /** The endpoint's own task; NOT_FOUND for another endpoint's (never "exists but not yours"). */
  private async ownTask(agent: AgentIdentity, id: string): Promise<TaskRecord> {
    const t = typeof id === "string" && id.length <= 80 ? await this.tasks.getTask(id) : null;
    if (!t || t.endpointId !== agent.endpointId || t.cvdId !== agent.cvdId)
      throw new StrataError("NOT_FOUND", `task ${String(id).slice(0, 80)} does not exist`, {
        subject: String(id).slice(0, 80),
      });
    return t;
  }

  /** Claim a queued task; a running one is claimed again (the agent restarted and resumes it). */
  async start(agent: AgentIdentity, id: string): Promise<Task> {
    const t = await this.ownTask(agent, id);
    const now = this.d.clock.now();
    if (t.state === "queued") {
      if (await this.tasks.updateTask(id, ["queued"], { state: "running", startedAt: now }, now)) {
        await this.d.audit.record({
          actor: `endpoint:${agent.endpointId}`,
          action: "task.start",
          object: `cvd:${t.cvdId}`,
          detail: { task: id, kind: t.kind },
          remoteAddr: "agent",
        });
      }
    }
    const after = await this.ownTask(agent, id);
    if (after.state !== "running")
      throw new StrataError("ALREADY_EXISTS", `task ${id} is ${after.state}`, {
        subject: id,
        hint: after.state === "cancelled" ? "an administrator cancelled it; do not run it" : "it has ended",
      });
    return taskView(after);
  }

  async progress(agent: AgentIdentity, id: string, progress: unknown): Promise<TaskProgressAnswer> {
    const p = checkJson(progress, "progress", MAX_PROGRESS_JSON);
    const t = await this.ownTask(agent, id);
    const now = this.d.clock.now();
    if (t.state === "running") await this.tasks.updateTask(id, ["running"], { progress: p }, now);
    return { state: (await this.ownTask(agent, id)).state };
  }

  /**
   * What a successful apply (or the rollback of one) leaves on the endpoint:
   * the image it runs. True when the task is of a kind that records one.
   */
  private async recordImage(t: TaskRecord, now: Date): Promise<boolean> {
    if (t.kind === "apply" && typeof t.params.image === "string") {
      await this.d.store.layers.setAppliedImage(t.cvdId, t.params.image as SnapshotId, now);
      return true;
    }
    // A rollback of a layer apply: the endpoint runs the image it had before again.
    if (t.kind === "system" && typeof t.params.restoreImage === "string") {
      await this.d.store.layers.setAppliedImage(t.cvdId, t.params.restoreImage as SnapshotId, now);
      return true;
    }
    return false;
  }

  /**
   * The end: `result` (done) or `error` (failed). A task cancelled while it
   * ran keeps its state; what the agent reports is recorded with it.
   */
  async finish(agent: AgentIdentity, id: string, req: TaskFinishRequest): Promise<Task> {
    const hasError = req?.error !== undefined;
    if (hasError === (req?.result !== undefined))
      throw new StrataError("INVALID_ARGUMENT", "send either result or error");
    const result = req.result === undefined ? null : checkJson(req.result, "result", MAX_RESULT_JSON);
    const error = hasError
      ? { code: String(req.error?.code).slice(0, 64), message: String(req.error?.message).slice(0, 4096) }
      : null;
    const t = await this.ownTask(agent, id);
    // An apply reports the image it applied (its key or its snapshot): it must be the task's.
    if (t.kind === "apply" && result) {
      const mine = [t.params.image, t.params.imageKey];
      const said = [result.image, result.imageSnapshot].filter((x) => x !== undefined);
      if (said.some((x) => !mine.includes(x)))
        throw new StrataError(
          "INVALID_ARGUMENT",
          `task ${id} applies image ${String(t.params.image)}, not ${said.map(String).join(" / ")}`,
          { subject: id, hint: "report the image of the task's apply plan (plan.image)" },
        );
    }
    const now = this.d.clock.now();
    const state: TaskState = hasError ? "failed" : "done";
    if (await this.tasks.updateTask(id, ["running"], { state, result, error, finishedAt: now }, now)) {
      if (state === "done") await this.recordImage(t, now);
      await this.d.audit.record({
        actor: `endpoint:${agent.endpointId}`,
        action: `task.${state}`,
        object: `cvd:${t.cvdId}`,
        detail: { task: id, kind: t.kind, ...(error ? { error: error.code } : {}) },
        remoteAddr: "agent",
      });
    } else if (t.state === "cancelled") {
      await this.tasks.updateTask(id, ["cancelled"], { result, error }, now);
      // Cancelled after its commit (during the triggers or the reinstall): the
      // files are on the endpoint, so the catalog says so (layers.md, "A cancel after the commit").
      if (result && !error && (await this.recordImage(t, now)))
        await this.d.audit.record({
          actor: `endpoint:${agent.endpointId}`,
          action: "task.applied-after-cancel",
          object: `cvd:${t.cvdId}`,
          detail: { task: id, kind: t.kind },
          remoteAddr: "agent",
        });
    } else if (t.state === "queued") {
      throw new StrataError("INVALID_ARGUMENT", `task ${id} was never started`, {
        hint: "claim it with POST /agent/tasks/{id}/start first",
      });
    } else {
      const again = await this.ownTask(agent, id);
      // A retried finish whose answer was lost: answer it again.
      if (again.state === state) return taskView(again);
      throw new StrataError("ALREADY_EXISTS", `task ${id} is already ${again.state}`, { subject: id });
    }
    return taskView(await this.ownTask(agent, id));
  }
}
