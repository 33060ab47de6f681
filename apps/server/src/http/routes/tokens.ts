import { API_PREFIX } from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";

/** Personal API tokens: each user manages their own (enrollment tokens are another resource). */
export const tokenRoutes: RouteDef[] = [
  route({
    method: "GET",
    url: `${API_PREFIX}/tokens`,
    access: "authenticated",
    summary: "List the caller's API tokens (never their secrets)",
    tag: "tokens",
    response: { arrayOf: "ApiToken" },
    handler: (ctx) => ctx.services.auth.listOwnTokens(callerOf(ctx)),
  }),
  route<{ name: string; expiresInDays?: number }>({
    method: "POST",
    url: `${API_PREFIX}/tokens`,
    access: "authenticated",
    summary: "Create an API token for the caller; the secret is in this response only",
    tag: "tokens",
    body: "CreateTokenRequest",
    status: 201,
    response: "CreatedToken",
    handler: (ctx) => ctx.services.auth.createOwnToken(callerOf(ctx), ctx.body.name, ctx.body.expiresInDays),
  }),
  route<unknown, { id: string }>({
    method: "DELETE",
    url: `${API_PREFIX}/tokens/:id`,
    access: "authenticated",
    summary: "Revoke one of the caller's API tokens",
    tag: "tokens",
    params: "TokenIdParams",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.auth.revokeOwnToken(callerOf(ctx), ctx.params.id),
  }),
];
