import { API_PREFIX } from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";
import type { RawReply } from "./system.js";

type Ref = { policy: string };

/** Upload policies, addressed by id (`pol_…`) or name. */
export const policyRoutes: RouteDef[] = [
  route({
    method: "GET",
    url: `${API_PREFIX}/policies`,
    access: { permission: "policy.read" },
    summary: "List upload policies by name",
    tag: "policies",
    response: { arrayOf: "PolicySummary" },
    handler: (ctx) => ctx.services.policies.list(callerOf(ctx)),
  }),
  route<unknown>({
    method: "POST",
    url: `${API_PREFIX}/policies`,
    access: { permission: "policy.write" },
    summary: "Create a policy from a policy object or an export document (every error reported at once)",
    tag: "policies",
    body: "PolicyInput",
    status: 201,
    response: "PolicyDetail",
    handler: (ctx) => ctx.services.policies.create(callerOf(ctx), ctx.body),
  }),
  route<unknown, unknown, { name?: string }>({
    method: "POST",
    url: `${API_PREFIX}/policies/import`,
    access: { permission: "policy.write" },
    summary: "Import an export document as a new policy (`?name=` to rename it)",
    tag: "policies",
    body: "PolicyDocument",
    query: "ImportPolicyQuery",
    status: 201,
    response: "PolicyDetail",
    handler: (ctx) => ctx.services.policies.import(callerOf(ctx), ctx.body, ctx.query.name),
  }),
  route<unknown, Ref>({
    method: "GET",
    url: `${API_PREFIX}/policies/:policy`,
    access: { permission: "policy.read" },
    summary: "Show a policy and how many CVDs and enrollment tokens use it",
    tag: "policies",
    params: "PolicyRefParams",
    response: "PolicyDetail",
    handler: (ctx) => ctx.services.policies.get(callerOf(ctx), ctx.params.policy),
  }),
  route<unknown, Ref>({
    method: "PUT",
    url: `${API_PREFIX}/policies/:policy`,
    access: { permission: "policy.write" },
    summary: "Replace a policy (version + 1); a `version` in the body must be the current one",
    tag: "policies",
    params: "PolicyRefParams",
    body: "PolicyInput",
    response: "PolicyDetail",
    handler: (ctx) => ctx.services.policies.update(callerOf(ctx), ctx.params.policy, ctx.body),
  }),
  route<unknown, Ref>({
    method: "DELETE",
    url: `${API_PREFIX}/policies/:policy`,
    access: { permission: "policy.write" },
    summary: "Delete a policy no CVD or enrollment token uses (never the default policy)",
    tag: "policies",
    params: "PolicyRefParams",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.policies.delete(callerOf(ctx), ctx.params.policy),
  }),
  route<unknown, Ref>({
    method: "GET",
    url: `${API_PREFIX}/policies/:policy/export`,
    access: { permission: "policy.read" },
    summary: "A policy as a portable JSON document (exportPolicy's format)",
    tag: "policies",
    params: "PolicyRefParams",
    response: null,
    handler: async (ctx): Promise<RawReply> => ({
      raw: await ctx.services.policies.export(callerOf(ctx), ctx.params.policy),
      type: "application/json",
    }),
  }),
];
