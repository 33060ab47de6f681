/**
 * The route registry: every API route is a RouteDef declaring who may call
 * it. buildApp registers only RouteDefs and refuses, at startup, any route
 * that arrives without a declared access (see app.ts's onRoute hook). The
 * per-role test and the OpenAPI document are generated from the same list.
 */
import type { Permission, SchemaName } from "@strata/protocol";
import type { Caller } from "../services/context.js";
import type { Services } from "../services/index.js";

/**
 * - `{ permission }`: an authenticated caller whose role grants it.
 * - `"authenticated"`: any authenticated caller (their own session, tokens, password).
 * - `"public"`: no credentials (login, health, metrics, the API document).
 */
export type Access = { permission: Permission } | "authenticated" | "public";

export type HttpMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

export type ResponseSchema = SchemaName | { arrayOf: SchemaName } | null;

export interface HandlerContext<B, P, Q> {
  /** Null only on public routes. */
  caller: Caller | null;
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

export function describeAccess(a: Access): string {
  return typeof a === "string" ? a : a.permission;
}
