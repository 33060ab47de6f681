import { StrataError } from "@strata/core";
import {
  API_PREFIX,
  type BrowseQuery,
  type HistoryQuery,
  type OpenRestoreRequest,
  type RecoverRequest,
  type RevertRequest,
  type TaskFinishRequest,
  type TaskProgressRequest,
  type TaskQuery,
} from "@strata/protocol";
import { FRAMES_CONTENT_TYPE } from "@strata/repo";
import type { Services } from "../../services/index.js";
import type {
  ChunkRequestBody,
  RestoreActor,
  RestoreService,
  TreeBatchBody,
} from "../../services/restore-service.js";
import { agentOf, callerOf, type HandlerContext, ownCvdOf, type RouteDef, route } from "../registry.js";

/**
 * The restore protocol, restore tasks and a CVD's history
 * (docs/design/restore.md). Session routes take an endpoint's credential
 * (its own CVD, its own sessions) or a user's token with `restore.run`
 * (sessions that user opened); tree and chunk answers are frame streams.
 */
function restores(ctx: { services: Services }): RestoreService {
  if (!ctx.services.restores)
    throw new StrataError("UNSUPPORTED", "this server has no repository to restore from");
  return ctx.services.restores;
}

/** Who calls a session route: the endpoint (with its CVD) or the user. */
function actorOf(ctx: HandlerContext<unknown, unknown, unknown>): RestoreActor {
  if (ctx.agent) {
    if (!ctx.agent.cvdId) throw new StrataError("PERMISSION_DENIED", "this endpoint has no CVD yet");
    return { endpointId: ctx.agent.endpointId, cvdId: ctx.agent.cvdId };
  }
  return { caller: callerOf(ctx) };
}

async function existingCvd(ctx: { services: Services }, cvd: string): Promise<string> {
  if (!(await ctx.services.store.getCvd(cvd)))
    throw new StrataError("NOT_FOUND", `CVD ${cvd} does not exist`, {
      subject: cvd,
      hint: "see `strata cvd list`",
    });
  return cvd;
}

const SESSION_ACCESS = { permission: "restore.run", orEndpoint: "active" } as const;

type Cvd = { cvd: string };
type Session = { session: string };
type Id = { id: string };

export const restoreRoutes: RouteDef[] = [
  route<OpenRestoreRequest, Cvd>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/restores`,
    access: SESSION_ACCESS,
    summary: "Open a restore session on a snapshot of the CVD (or on one path of it)",
    tag: "restores",
    params: "CvdParams",
    body: "OpenRestoreRequest",
    status: 201,
    response: "RestoreSessionInfo",
    handler: async (ctx) => {
      const cvd = ctx.agent ? ownCvdOf(ctx, ctx.params.cvd) : await existingCvd(ctx, ctx.params.cvd);
      return restores(ctx).open(actorOf(ctx), cvd, ctx.body ?? {});
    },
  }),
  route<unknown, Session & { tree: string }, { grant: string }>({
    method: "GET",
    url: `${API_PREFIX}/restores/:session/trees/:tree`,
    access: SESSION_ACCESS,
    summary: "A tree of the session (a tree frame, then a JSON frame with its subtrees' grants)",
    tag: "restores",
    params: "RestoreTreeParams",
    query: "RestoreTreeQuery",
    response: null,
    handler: async (ctx) => ({
      raw: await restores(ctx).tree(actorOf(ctx), ctx.params.session, ctx.params.tree, ctx.query.grant),
      type: FRAMES_CONTENT_TYPE,
    }),
  }),
  route<TreeBatchBody, Session>({
    method: "POST",
    url: `${API_PREFIX}/restores/:session/trees`,
    access: SESSION_ACCESS,
    summary:
      "Several trees of the session in one answer, in the order asked (each as GET …/trees/:tree answers it)",
    tag: "restores",
    params: "RestoreSessionParams",
    body: "RestoreTreesRequest",
    response: null,
    handler: async (ctx) => ({
      raw: (await restores(ctx).trees(actorOf(ctx), ctx.params.session, ctx.body)).stream,
      type: FRAMES_CONTENT_TYPE,
    }),
  }),
  route<ChunkRequestBody, Session>({
    method: "POST",
    url: `${API_PREFIX}/restores/:session/chunks`,
    access: SESSION_ACCESS,
    summary: "Chunks named by files of granted trees, streamed as chunk frames in wire form",
    tag: "restores",
    params: "RestoreSessionParams",
    body: "ChunkFetchRequest",
    response: null,
    handler: async (ctx) => ({
      raw: (await restores(ctx).chunks(actorOf(ctx), ctx.params.session, ctx.body)).stream,
      type: FRAMES_CONTENT_TYPE,
    }),
  }),
  route<unknown, Session>({
    method: "DELETE",
    url: `${API_PREFIX}/restores/:session`,
    access: SESSION_ACCESS,
    summary: "Close a restore session (idempotent)",
    tag: "restores",
    params: "RestoreSessionParams",
    status: 204,
    response: null,
    handler: (ctx) => restores(ctx).close(actorOf(ctx), ctx.params.session),
  }),
  route<unknown, Cvd, BrowseQuery>({
    method: "GET",
    url: `${API_PREFIX}/cvds/:cvd/browse`,
    access: { permission: "cvd.browse" },
    summary: "List one folder of one of the CVD's snapshots (latest, an id or prefix, or at a time)",
    tag: "cvds",
    params: "CvdParams",
    query: "BrowseQuery",
    response: "CvdBrowse",
    handler: async (ctx) => restores(ctx).browse(await existingCvd(ctx, ctx.params.cvd), ctx.query ?? {}),
  }),
  route<unknown, Cvd, HistoryQuery>({
    method: "GET",
    url: `${API_PREFIX}/cvds/:cvd/history`,
    access: { permission: "cvd.browse" },
    summary: "For a folder, each entry across the CVD's snapshots (newest first, paged)",
    tag: "cvds",
    params: "CvdParams",
    query: "HistoryQuery",
    response: "CvdHistory",
    handler: async (ctx) => restores(ctx).history(await existingCvd(ctx, ctx.params.cvd), ctx.query),
  }),
  // ---- tasks ---------------------------------------------------------------
  route<RevertRequest, Cvd>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/revert`,
    access: { permission: "restore.run" },
    summary: "Queue a revert of the CVD's endpoint to a snapshot (system-only unless full)",
    tag: "tasks",
    params: "CvdParams",
    body: "RevertRequest",
    status: 201,
    response: "Task",
    handler: (ctx) => ctx.services.tasks.revert(callerOf(ctx), ctx.params.cvd, ctx.body ?? {}),
  }),
  route<RecoverRequest, Cvd>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/recover`,
    access: { permission: "restore.run" },
    summary: "Give the CVD to a replacement endpoint and queue a recover there",
    tag: "tasks",
    params: "CvdParams",
    body: "RecoverRequest",
    status: 201,
    response: "Task",
    handler: (ctx) => ctx.services.tasks.recover(callerOf(ctx), ctx.params.cvd, ctx.body),
  }),
  route<unknown, unknown, TaskQuery>({
    method: "GET",
    url: `${API_PREFIX}/tasks`,
    access: { permission: "cvd.read" },
    summary: "Tasks, newest first; filter by CVD and state",
    tag: "tasks",
    query: "TaskQuery",
    response: { arrayOf: "Task" },
    handler: (ctx) => ctx.services.tasks.list(callerOf(ctx), ctx.query ?? {}),
  }),
  route<unknown, Id>({
    method: "GET",
    url: `${API_PREFIX}/tasks/:id`,
    access: { permission: "cvd.read" },
    summary: "A task with its progress and result",
    tag: "tasks",
    params: "TaskIdParams",
    response: "Task",
    handler: (ctx) => ctx.services.tasks.get(callerOf(ctx), ctx.params.id),
  }),
  route<unknown, Id>({
    method: "POST",
    url: `${API_PREFIX}/tasks/:id/cancel`,
    access: { permission: "restore.run" },
    summary: "Cancel a queued or running task (a running one stops at its next progress report)",
    tag: "tasks",
    params: "TaskIdParams",
    response: "Task",
    handler: (ctx) => ctx.services.tasks.cancel(callerOf(ctx), ctx.params.id),
  }),
  route<unknown, Id>({
    method: "POST",
    url: `${API_PREFIX}/agent/tasks/:id/start`,
    access: { endpoint: "active" },
    summary: "Claim a queued task of this endpoint (a running one again, after a restart)",
    tag: "agent",
    params: "TaskIdParams",
    response: "Task",
    handler: (ctx) => ctx.services.tasks.start(agentOf(ctx), ctx.params.id),
  }),
  route<TaskProgressRequest, Id>({
    method: "POST",
    url: `${API_PREFIX}/agent/tasks/:id/progress`,
    access: { endpoint: "active" },
    summary: "Report a running task's progress; the answer's state says whether to go on",
    tag: "agent",
    params: "TaskIdParams",
    body: "TaskProgressRequest",
    response: "TaskProgressAnswer",
    handler: (ctx) => ctx.services.tasks.progress(agentOf(ctx), ctx.params.id, ctx.body?.progress),
  }),
  route<TaskFinishRequest, Id>({
    method: "POST",
    url: `${API_PREFIX}/agent/tasks/:id/finish`,
    access: { endpoint: "active" },
    summary: "End a running task with its result or its error",
    tag: "agent",
    params: "TaskIdParams",
    body: "TaskFinishRequest",
    response: "Task",
    handler: (ctx) => ctx.services.tasks.finish(agentOf(ctx), ctx.params.id, ctx.body ?? {}),
  }),
];
