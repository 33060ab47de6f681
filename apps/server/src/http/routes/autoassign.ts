import {
  API_PREFIX,
  type ApproveByRulesRequest,
  type AutoassignTestRequest,
  type CreateAutoassignRuleRequest,
  type UpdateAutoassignRuleRequest,
} from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";

type Ref = { rule: string };

/**
 * Auto-assignment rules (docs/design/server.md, "Auto-assignment rules"):
 * reading and testing them is [endpoints.read]; changing them (create,
 * edit, remove) and approving pending endpoints by them is
 * [endpoints.approve] (a rule that tags CVDs also needs layers.assign,
 * checked by the service).
 */
export const autoassignRoutes: RouteDef[] = [
  route({
    method: "GET",
    url: `${API_PREFIX}/autoassign-rules`,
    access: { permission: "endpoints.read" },
    summary: "List the auto-assignment rules in evaluation order (the first that matches wins)",
    tag: "autoassign",
    response: { arrayOf: "AutoassignRuleInfo" },
    handler: (ctx) => ctx.services.autoassign.list(callerOf(ctx)),
  }),
  route<CreateAutoassignRuleRequest>({
    method: "POST",
    url: `${API_PREFIX}/autoassign-rules`,
    access: { permission: "endpoints.approve" },
    summary: "Add an auto-assignment rule: last, or before another rule",
    tag: "autoassign",
    body: "CreateAutoassignRuleRequest",
    status: 201,
    response: "AutoassignRuleInfo",
    handler: (ctx) => ctx.services.autoassign.create(callerOf(ctx), ctx.body),
  }),
  route<AutoassignTestRequest>({
    method: "POST",
    url: `${API_PREFIX}/autoassign-rules/test`,
    access: { permission: "endpoints.read" },
    summary: "Which rule an endpoint (or the facts given) would get; changes nothing",
    tag: "autoassign",
    body: "AutoassignTestRequest",
    response: "AutoassignTestResult",
    handler: (ctx) => ctx.services.autoassign.test(callerOf(ctx), ctx.body),
  }),
  route<unknown, Ref>({
    method: "GET",
    url: `${API_PREFIX}/autoassign-rules/:rule`,
    access: { permission: "endpoints.read" },
    summary: "Show an auto-assignment rule (by id or name)",
    tag: "autoassign",
    params: "AutoassignRuleRefParams",
    response: "AutoassignRuleInfo",
    handler: (ctx) => ctx.services.autoassign.get(callerOf(ctx), ctx.params.rule),
  }),
  route<UpdateAutoassignRuleRequest, Ref>({
    method: "PATCH",
    url: `${API_PREFIX}/autoassign-rules/:rule`,
    access: { permission: "endpoints.approve" },
    summary:
      "Edit an auto-assignment rule in place (by id or name): name, condition, policy, tags, place; CVDs it made stay as they are",
    tag: "autoassign",
    params: "AutoassignRuleRefParams",
    body: "UpdateAutoassignRuleRequest",
    response: "AutoassignRuleInfo",
    handler: (ctx) => ctx.services.autoassign.update(callerOf(ctx), ctx.params.rule, ctx.body),
  }),
  route<unknown, Ref>({
    method: "DELETE",
    url: `${API_PREFIX}/autoassign-rules/:rule`,
    access: { permission: "endpoints.approve" },
    summary: "Remove an auto-assignment rule (CVDs it created stay as they are)",
    tag: "autoassign",
    params: "AutoassignRuleRefParams",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.autoassign.remove(callerOf(ctx), ctx.params.rule),
  }),
  route<ApproveByRulesRequest>({
    method: "POST",
    url: `${API_PREFIX}/endpoints/approve-by-rules`,
    access: { permission: "endpoints.approve" },
    summary: "Give pending endpoints (all, or those named) the CVD of the first rule they match",
    tag: "autoassign",
    body: "ApproveByRulesRequest",
    response: "ApproveByRulesResult",
    handler: (ctx) => ctx.services.autoassign.approveByRules(callerOf(ctx), ctx.body ?? {}),
  }),
];
