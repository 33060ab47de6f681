import { StrataError } from "@strata/core";
import {
  API_PREFIX,
  type ApplyRequest,
  type AssignRequest,
  type CaptureBaseRequest,
  type CaptureFinishRequest,
  type CaptureStartRequest,
  type DryRunQuery,
} from "@strata/protocol";
import type { Services } from "../../services/index.js";
import type { LayerService } from "../../services/layer-service.js";
import { agentOf, callerOf, type RouteDef, route } from "../registry.js";

/**
 * Layers (docs/design/layers.md): layers and their capture, reference
 * CVDs, assignments, a CVD's layers, its dry-run report and apply tasks;
 * the agent's side of app captures and of apply plans. Image sessions are
 * restore sessions opened with `{ image: true }` (routes/restores.ts).
 */
function layers(ctx: { services: Services }): LayerService {
  if (!ctx.services.layers) throw new StrataError("UNSUPPORTED", "this server has no repository for layers");
  return ctx.services.layers;
}

type Cvd = { cvd: string };
type Id = { id: string };

export const layerRoutes: RouteDef[] = [
  route({
    method: "GET",
    url: `${API_PREFIX}/layers`,
    access: { permission: "layers.read" },
    summary: "Layers by name, with their versions",
    tag: "layers",
    response: { arrayOf: "LayerInfo" },
    handler: (ctx) => layers(ctx).list(callerOf(ctx)),
  }),
  route<unknown, Id>({
    method: "GET",
    url: `${API_PREFIX}/layers/:id`,
    access: { permission: "layers.read" },
    summary: "A layer by id or name, with its versions",
    tag: "layers",
    params: "LayerRefParams",
    response: "LayerInfo",
    handler: (ctx) => layers(ctx).get(callerOf(ctx), ctx.params.id),
  }),
  route<CaptureBaseRequest>({
    method: "POST",
    url: `${API_PREFIX}/layers/capture-base`,
    access: { permission: "layers.write" },
    summary: "Capture a base layer version from a reference CVD's snapshot",
    tag: "layers",
    body: "CaptureBaseRequest",
    status: 201,
    response: "CaptureBaseResponse",
    handler: (ctx) => layers(ctx).captureBase(callerOf(ctx), ctx.body),
  }),
  route<unknown, Cvd>({
    method: "PUT",
    url: `${API_PREFIX}/cvds/:cvd/reference`,
    access: { permission: "layers.write" },
    summary: "Mark the CVD as a reference CVD (layers are captured from those)",
    tag: "layers",
    params: "CvdParams",
    response: "ReferenceInfo",
    handler: (ctx) => layers(ctx).setReference(callerOf(ctx), ctx.params.cvd, true),
  }),
  route<unknown, Cvd>({
    method: "DELETE",
    url: `${API_PREFIX}/cvds/:cvd/reference`,
    access: { permission: "layers.write" },
    summary: "Unmark a reference CVD",
    tag: "layers",
    params: "CvdParams",
    response: "ReferenceInfo",
    handler: (ctx) => layers(ctx).setReference(callerOf(ctx), ctx.params.cvd, false),
  }),
  route<AssignRequest>({
    method: "POST",
    url: `${API_PREFIX}/assignments`,
    access: { permission: "layers.assign" },
    summary: "Assign a base and app layers to a CVD (its newest assignment wins)",
    tag: "layers",
    body: "AssignRequest",
    status: 201,
    response: "AssignmentInfo",
    handler: (ctx) => layers(ctx).assign(callerOf(ctx), ctx.body),
  }),
  route<unknown, Cvd>({
    method: "GET",
    url: `${API_PREFIX}/cvds/:cvd/layers`,
    access: { permission: "layers.read" },
    summary: "The CVD's effective assignment, what it overrode, and its target and applied images",
    tag: "layers",
    params: "CvdParams",
    response: "CvdLayersInfo",
    handler: (ctx) => layers(ctx).cvdLayers(callerOf(ctx), ctx.params.cvd),
  }),
  route<unknown, Cvd, DryRunQuery>({
    method: "GET",
    url: `${API_PREFIX}/cvds/:cvd/dry-run`,
    access: { permission: "layers.read" },
    summary: "What applying the CVD's image would do, against its newest snapshot",
    tag: "layers",
    params: "CvdParams",
    query: "DryRunQuery",
    response: "DryRunReport",
    handler: (ctx) => layers(ctx).dryRun(callerOf(ctx), ctx.params.cvd, ctx.query ?? {}),
  }),
  route<ApplyRequest, Cvd>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/apply`,
    access: { permission: "layers.assign" },
    summary: "Queue an apply of the CVD's image on its endpoint (a task of kind apply)",
    tag: "tasks",
    params: "CvdParams",
    body: "ApplyRequest",
    status: 201,
    response: "Task",
    handler: (ctx) => layers(ctx).apply(callerOf(ctx), ctx.params.cvd, ctx.body ?? {}),
  }),
  route<unknown, Cvd>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/rollback`,
    access: { permission: "restore.run" },
    summary: "Undo the CVD's last layer apply (an OS migration): a system revert to its safety snapshot",
    tag: "tasks",
    params: "CvdParams",
    status: 201,
    response: "Task",
    handler: (ctx) => layers(ctx).rollback(callerOf(ctx), ctx.params.cvd),
  }),
  route<unknown, Cvd>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/migration/confirm`,
    access: { permission: "layers.assign" },
    summary: "Confirm the CVD's last OS migration: its old system is no longer kept for a rollback",
    tag: "layers",
    params: "CvdParams",
    response: "Task",
    handler: (ctx) => layers(ctx).confirmMigration(callerOf(ctx), ctx.params.cvd),
  }),
  // ---- the agent's side ------------------------------------------------------
  route<CaptureStartRequest>({
    method: "POST",
    url: `${API_PREFIX}/agent/captures`,
    access: { endpoint: "active" },
    summary: "Open an app capture with the capture-pre snapshot just uploaded (reference CVDs only)",
    tag: "agent",
    body: "CaptureStartRequest",
    status: 201,
    response: "CaptureInfo",
    handler: (ctx) => layers(ctx).startCapture(agentOf(ctx), ctx.body),
  }),
  route<CaptureFinishRequest, Id>({
    method: "POST",
    url: `${API_PREFIX}/agent/captures/:id/finish`,
    access: { endpoint: "active" },
    summary: "Finish an app capture with the capture-post snapshot: the server diffs and records the layer",
    tag: "agent",
    params: "CaptureIdParams",
    body: "CaptureFinishRequest",
    response: "CaptureFinishResponse",
    handler: (ctx) => layers(ctx).finishCapture(agentOf(ctx), ctx.params.id, ctx.body),
  }),
  route<unknown, Id>({
    method: "POST",
    url: `${API_PREFIX}/agent/captures/:id/cancel`,
    access: { endpoint: "active" },
    summary: "Cancel an open app capture (nothing is recorded)",
    tag: "agent",
    params: "CaptureIdParams",
    response: "CaptureInfo",
    handler: (ctx) => layers(ctx).cancelCapture(agentOf(ctx), ctx.params.id),
  }),
  route<unknown, Id>({
    method: "POST",
    url: `${API_PREFIX}/agent/tasks/:id/apply-plan`,
    access: { endpoint: "active" },
    summary: "The plan of a running apply task: image session, manifest, removals",
    tag: "agent",
    params: "TaskIdParams",
    response: "ApplyPlan",
    handler: (ctx) => layers(ctx).applyPlan(agentOf(ctx), ctx.params.id),
  }),
];
