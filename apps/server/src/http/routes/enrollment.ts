import {
  type AgentFactsRequest,
  API_PREFIX,
  type CreateEnrollmentTokenRequest,
  type EnrollRequest,
} from "@strata/protocol";
import { agentOf, callerOf, type RouteDef, route } from "../registry.js";

/** Enrollment tokens (administrators) and the agent routes of protocol.md: enroll, agent/self. */
export const enrollmentRoutes: RouteDef[] = [
  route<CreateEnrollmentTokenRequest>({
    method: "POST",
    url: `${API_PREFIX}/enrollment-tokens`,
    access: { permission: "tokens.create" },
    summary: "Create an enrollment token; the secret and the server's fingerprint are in this response only",
    tag: "enrollment",
    body: "CreateEnrollmentTokenRequest",
    status: 201,
    response: "CreatedEnrollmentToken",
    handler: (ctx) => ctx.services.enrollment.createToken(callerOf(ctx), ctx.body),
  }),
  route({
    method: "GET",
    url: `${API_PREFIX}/enrollment-tokens`,
    access: { permission: "tokens.create" },
    summary: "List enrollment tokens, newest first (never their secrets)",
    tag: "enrollment",
    response: { arrayOf: "EnrollmentToken" },
    handler: (ctx) => ctx.services.enrollment.listTokens(callerOf(ctx)),
  }),
  route<unknown, { id: string }>({
    method: "DELETE",
    url: `${API_PREFIX}/enrollment-tokens/:id`,
    access: { permission: "tokens.create" },
    summary: "Revoke an enrollment token (endpoints enrolled with it stay)",
    tag: "enrollment",
    params: "EnrollmentTokenIdParams",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.enrollment.revokeToken(callerOf(ctx), ctx.params.id),
  }),
  route<EnrollRequest>({
    method: "POST",
    url: `${API_PREFIX}/enroll`,
    access: "enrollment",
    summary:
      "Enroll an endpoint with an enrollment token (Bearer set_…, Idempotency-Key); returns its credential",
    tag: "agent",
    body: "EnrollRequest",
    status: 201,
    response: "EnrollResponse",
    handler: (ctx) => {
      const key = ctx.headers["idempotency-key"];
      return ctx.services.enrollment.enroll(
        ctx.enrollmentToken ?? "",
        typeof key === "string" ? key : undefined,
        ctx.body.facts,
        ctx.remoteAddr,
      );
    },
  }),
  route({
    method: "GET",
    url: `${API_PREFIX}/agent/self`,
    access: { endpoint: "any" },
    summary: "The calling endpoint's state, CVD and upload policy, its queued tasks, and the server's time",
    tag: "agent",
    response: "AgentSelf",
    handler: async (ctx) => {
      const agent = agentOf(ctx);
      return ctx.services.enrollment.self(agent, await ctx.services.tasks.forAgent(agent));
    },
  }),
  route<AgentFactsRequest>({
    method: "PUT",
    url: `${API_PREFIX}/agent/facts`,
    access: { endpoint: "active" },
    summary: "Report the calling endpoint's facts again (hostname, OS, DMI vendor and model, modaliases…)",
    tag: "agent",
    body: "AgentFactsRequest",
    status: 204,
    response: null,
    handler: (ctx) => ctx.services.enrollment.updateFacts(agentOf(ctx), ctx.body.facts),
  }),
];
