import { StrataError } from "@strata/core";
import { API_PREFIX } from "@strata/protocol";
import { uploadPolicyOf } from "../../services/policy-service.js";
import type { CommitRequest, HaveEntry, UploadService } from "../../services/upload-service.js";
import { agentOf, ownCvdOf, type RouteDef, route } from "../registry.js";

/**
 * The upload protocol's routes (docs/design/protocol.md, "Upload session"):
 * only an active endpoint's credential, only its own CVD and sessions.
 * Chunk and tree streams are `application/vnd.strata.frames` bodies read
 * as they arrive (the service bounds them).
 */
function uploads(ctx: { services: { uploads: UploadService | null } }): UploadService {
  if (!ctx.services.uploads)
    throw new StrataError("UNSUPPORTED", "this server has no repository to upload into");
  return ctx.services.uploads;
}

/** The session's CVD is the caller's: the service answers NOT_FOUND for another CVD's session. */
function cvdOf(ctx: Parameters<typeof agentOf>[0]): string {
  const a = agentOf(ctx);
  if (!a.cvdId) throw new StrataError("PERMISSION_DENIED", "this endpoint has no CVD yet");
  return a.cvdId;
}

function frames(body: unknown): AsyncIterable<Buffer> {
  if (!body || typeof (body as AsyncIterable<Buffer>)[Symbol.asyncIterator] !== "function")
    throw new StrataError(
      "INVALID_ARGUMENT",
      "send the frames as Content-Type application/vnd.strata.frames",
    );
  return body as AsyncIterable<Buffer>;
}

export const uploadRoutes: RouteDef[] = [
  route<{ parent?: string | null; kind?: string }, { cvd: string }>({
    method: "POST",
    url: `${API_PREFIX}/cvds/:cvd/uploads`,
    access: { endpoint: "active" },
    summary: "Create the CVD's upload session, or resume its open one",
    tag: "uploads",
    status: 201,
    response: null,
    handler: async (ctx) => {
      const cvd = ownCvdOf(ctx, ctx.params.cvd);
      const r = await uploads(ctx).create(cvd, (ctx.body ?? {}) as { parent?: string | null; kind?: string });
      return { raw: JSON.stringify(r.view), type: "application/json", status: r.created ? 201 : 200 };
    },
  }),
  route<unknown, { session: string }>({
    method: "GET",
    url: `${API_PREFIX}/uploads/:session`,
    access: { endpoint: "active" },
    summary: "An upload session's state and counters",
    tag: "uploads",
    response: null,
    handler: (ctx) => uploads(ctx).status(cvdOf(ctx), ctx.params.session),
  }),
  route<{ chunks: HaveEntry[] }, { session: string }>({
    method: "POST",
    url: `${API_PREFIX}/uploads/:session/have`,
    access: { endpoint: "active" },
    summary: "Which chunks the server needs; proofs of possession are checked here",
    tag: "uploads",
    response: null,
    handler: (ctx) => uploads(ctx).have(cvdOf(ctx), ctx.params.session, ctx.body?.chunks),
  }),
  route<unknown, { session: string }>({
    method: "PUT",
    url: `${API_PREFIX}/uploads/:session/chunks`,
    access: { endpoint: "active" },
    summary: "A stream of chunk frames; answered once every accepted chunk is durable",
    tag: "uploads",
    response: null,
    handler: (ctx) => uploads(ctx).putChunks(cvdOf(ctx), ctx.params.session, frames(ctx.body)),
  }),
  route<unknown, { session: string }>({
    method: "PUT",
    url: `${API_PREFIX}/uploads/:session/trees`,
    access: { endpoint: "active" },
    summary: "A stream of tree frames, deepest first; every reference is checked for ownership",
    tag: "uploads",
    response: null,
    handler: (ctx) => uploads(ctx).putTrees(cvdOf(ctx), ctx.params.session, frames(ctx.body)),
  }),
  route<CommitRequest, { session: string }>({
    method: "POST",
    url: `${API_PREFIX}/uploads/:session/commit`,
    access: { endpoint: "active" },
    summary: "Commit the session's root tree as a snapshot of the CVD",
    tag: "uploads",
    response: null,
    handler: (ctx) => uploads(ctx).commit(cvdOf(ctx), ctx.params.session, ctx.body),
  }),
  route<unknown, { session: string }>({
    method: "DELETE",
    url: `${API_PREFIX}/uploads/:session`,
    access: { endpoint: "active" },
    summary: "Abort an upload session (idempotent)",
    tag: "uploads",
    status: 204,
    response: null,
    handler: (ctx) => uploads(ctx).abort(cvdOf(ctx), ctx.params.session),
  }),
  route<unknown, { cvd: string }, { policy?: string }>({
    method: "GET",
    url: `${API_PREFIX}/cvds/:cvd/preview`,
    access: { permission: "policy.read" },
    summary: "What a policy (default: the CVD's own) protects on the CVD, over its newest snapshot",
    tag: "policies",
    response: null,
    handler: async (ctx) => {
      const cvd = await ctx.services.store.getCvd(ctx.params.cvd);
      if (!cvd)
        throw new StrataError("NOT_FOUND", `CVD ${ctx.params.cvd} does not exist`, {
          subject: ctx.params.cvd,
        });
      const ref = typeof ctx.query?.policy === "string" && ctx.query.policy ? ctx.query.policy : cvd.policyId;
      const policy = uploadPolicyOf(await ctx.services.policies.resolve(ref));
      return { cvd: cvd.id, policy: policy.name, ...(await uploads(ctx).previewOnCvd(cvd.id, policy)) };
    },
  }),
  route<unknown, { cvd: string }>({
    method: "GET",
    url: `${API_PREFIX}/cvds/:cvd/transactions`,
    access: { permission: "cvd.read" },
    summary: "The CVD's upload and restore transactions, newest first",
    tag: "cvds",
    response: null,
    handler: async (ctx) => {
      const up = await uploads(ctx).transactions(ctx.params.cvd);
      const down = (await ctx.services.restores?.transactions(ctx.params.cvd)) ?? [];
      return [...up, ...down]
        .sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : 0))
        .slice(0, 100);
    },
  }),
];
