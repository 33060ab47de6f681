import { API_PREFIX, type AuditQuery } from "@strata/protocol";
import { callerOf, type RouteDef, route } from "../registry.js";

export const auditRoutes: RouteDef[] = [
  route<unknown, unknown, AuditQuery>({
    method: "GET",
    url: `${API_PREFIX}/audit`,
    access: { permission: "audit.read" },
    summary: "Audit log, newest first; filter by time, actor, action, object; page with `before`",
    tag: "audit",
    query: "AuditQuery",
    response: { arrayOf: "AuditEntry" },
    handler: (ctx) => ctx.services.audit.list(callerOf(ctx), ctx.query),
  }),
];
