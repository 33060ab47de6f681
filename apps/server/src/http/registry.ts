/**
 * The route registry: every API route is a RouteDef declaring who may call
 * it. buildApp registers only RouteDefs and refuses, at startup, any route
 * that arrives without a declared access (see app.ts's onRoute hook). The
 * per-role test and the OpenAPI document are generated from the same list.
 */
import type { IncomingHttpHeaders } from "node:http";
import { StrataError } from "@strata/core";
import type { Permission, SchemaName } from "@strata/protocol";
import type { AgentIdentity, Caller } from "../services/context.js";
import type { Services } from "../services/index.js";

/**
 * Who may call a route. Each kind takes one kind of bearer secret, told
 * apart by its prefix before any lookup: a secret of another kind is
 * refused (401) without touching the catalog.
 *
 * - `{ permission }`: a user's API token (`stk_…`) whose role grants it.
 * - `"authenticated"`: any user's API token (their own session, tokens, password).
 * - `{ endpoint: "any" }`: an endpoint credential (`sep_…`) of an endpoint in any state.
 * - `{ endpoint: "active" }`: an endpoint credential of an active endpoint
 *   (pending and disabled endpoints get 403 PERMISSION_DENIED).
 * - `{ permission, orEndpoint: "active" }`: either of the two above, told
 *   apart by the secret's prefix (restore sessions: an endpoint for its own
 *   CVD, or a user with the permission). The handler sees `caller` or
 *   `agent`, never both.
 * - `"enrollment"`: an enrollment token (`set_…`), checked by the handler's service.
 * - `"public"`: no credentials (login, health, metrics, the API document).
 */
export type Access =
  | { permission: Permission }
  | { permission: Permission; orEndpoint: "active" }
  | { endpoint: "any" | "active" }
  | "enrollment"
  | "authenticated"
  | "public";

export type HttpMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

export type ResponseSchema = SchemaName | { arrayOf: SchemaName } | null;

export interface HandlerContext<B, P, Q> {
  /** The user: set on permission and authenticated routes, null elsewhere. */
  caller: Caller | null;
  /** The endpoint: set on endpoint routes, null elsewhere. */
  agent: AgentIdentity | null;
  /** The `set_…` secret on the enrollment route, null elsewhere. */
  enrollmentToken: string | null;
  headers: IncomingHttpHeaders;
  body: B;
  params: P;
  query: Q;
  remoteAddr: string;
  services: Services;
}

export interface RouteDef<B = unknown, P = unknown, Q = unknown> {
  method: HttpMethod;
  /** Full path, fastify syntax (`/api/v1/users/:name`). */
  url: string;
  access: Access;
  /** Still reachable while the caller must change their password (whoami, password, logout). */
  whilePasswordMustChange?: boolean;
  summary: string;
  tag: string;
  body?: SchemaName;
  params?: SchemaName;
  query?: SchemaName;
  /** Success status (200 by default; 204 sends no body). */
  status?: 200 | 201 | 204;
  response: ResponseSchema;
  handler(ctx: HandlerContext<B, P, Q>): Promise<unknown> | unknown;
}

/** Typed helper: infers nothing, but keeps definitions uniform and greppable. */
export function route<B = unknown, P = unknown, Q = unknown>(def: RouteDef<B, P, Q>): RouteDef {
  return def as RouteDef;
}

/** The caller of a non-public route (the HTTP layer guarantees it is set). */
export function callerOf(ctx: { caller: Caller | null }): Caller {
  if (!ctx.caller) throw new Error("route declared non-public but has no caller");
  return ctx.caller;
}

/** The endpoint of an endpoint route (the HTTP layer guarantees it is set). */
export function agentOf(ctx: { agent: AgentIdentity | null }): AgentIdentity {
  if (!ctx.agent) throw new Error("route declared for endpoints but has no agent");
  return ctx.agent;
}

/**
 * The caller's own CVD id, for endpoint routes with a `{cvd}` parameter. A
 * CVD that is not the caller's is answered exactly like one that does not
 * exist (NOT_FOUND), so ids of other endpoints cannot be probed.
 */
export function ownCvdOf(ctx: { agent: AgentIdentity | null }, cvdId: string): string {
  const agent = agentOf(ctx);
  if (agent.cvdId === null || agent.cvdId !== cvdId) {
    throw new StrataError("NOT_FOUND", `CVD ${cvdId} does not exist`, { subject: cvdId });
  }
  return cvdId;
}

export function isEndpointAccess(a: Access): a is { endpoint: "any" | "active" } {
  return typeof a === "object" && "endpoint" in a;
}

export function isUserOrEndpointAccess(a: Access): a is { permission: Permission; orEndpoint: "active" } {
  return typeof a === "object" && "orEndpoint" in a;
}

/** `users.read`, `endpoint:active`, `enrollment`, `public`…: the form the OpenAPI document and tests print. */
export function describeAccess(a: Access): string {
  if (typeof a === "string") return a;
  if ("orEndpoint" in a) return `${a.permission}|endpoint:${a.orEndpoint}`;
  return "permission" in a ? a.permission : `endpoint:${a.endpoint}`;
}
