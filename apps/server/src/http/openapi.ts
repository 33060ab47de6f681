/** The OpenAPI 3.1 document, generated from the route registry and the protocol's JSON Schemas. */
import { schemas } from "@strata/protocol";
import { STATUS_BY_CODE } from "./errors.js";
import { describeAccess, isEndpointAccess, isUserOrEndpointAccess, type RouteDef } from "./registry.js";

/** The OpenAPI security scheme of each kind of access. */
function securityOf(r: RouteDef): Record<string, string[]>[] {
  if (r.access === "public") return [];
  if (r.access === "enrollment") return [{ enrollment: [] }];
  if (isEndpointAccess(r.access)) return [{ endpoint: [] }];
  // Either scheme (OpenAPI: alternatives are separate requirement objects).
  if (isUserOrEndpointAccess(r.access)) return [{ bearer: [] }, { endpoint: [] }];
  return [{ bearer: [] }];
}

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

export function buildOpenApi(routes: readonly RouteDef[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const p = r.url.replace(/:(\w+)/g, "{$1}");
    const parameters: unknown[] = [];
    for (const [where, name] of [
      ["path", r.params],
      ["query", r.query],
    ] as const) {
      if (!name) continue;
      const s = schemas[name] as { properties: Record<string, unknown>; required?: string[] };
      for (const [k, v] of Object.entries(s.properties)) {
        parameters.push({
          name: k,
          in: where,
          required: where === "path" || (s.required ?? []).includes(k),
          schema: v,
        });
      }
    }
    const status = String(r.status ?? 200);
    const ok =
      r.response === null
        ? { description: status === "204" ? "done" : "see summary" }
        : {
            description: "success",
            content: {
              "application/json": {
                schema:
                  typeof r.response === "string"
                    ? ref(r.response)
                    : { type: "array", items: ref(r.response.arrayOf) },
              },
            },
          };
    const errorResponse = {
      description: "error (see the error table)",
      content: { "application/json": { schema: ref("Error") } },
    };
    const responses: Record<string, unknown> = { [status]: ok, "400": errorResponse };
    if (r.access !== "public") {
      responses["401"] = errorResponse;
      responses["403"] = errorResponse;
    }
    paths[p] ??= {};
    paths[p][r.method.toLowerCase()] = {
      summary: r.summary,
      tags: [r.tag],
      operationId: `${r.method.toLowerCase()}${p.replace(/[^A-Za-z0-9]+(\w)?/g, (_m, c: string | undefined) => (c ?? "").toUpperCase())}`,
      "x-strata-access": describeAccess(r.access),
      security: securityOf(r),
      ...(parameters.length ? { parameters } : {}),
      ...(r.body
        ? { requestBody: { required: true, content: { "application/json": { schema: ref(r.body) } } } }
        : {}),
      responses,
    };
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Strata management API",
      version,
      description: `Error codes map to statuses: ${Object.entries(STATUS_BY_CODE)
        .map(([c, s]) => `${c}=${s}`)
        .join(", ")}.`,
    },
    paths,
    components: {
      schemas,
      securitySchemes: {
        bearer: {
          type: "http",
          scheme: "bearer",
          description: "an API token (stk_…) from login or POST /api/v1/tokens",
        },
        endpoint: {
          type: "http",
          scheme: "bearer",
          description: "an endpoint credential (sep_…) from POST /api/v1/enroll",
        },
        enrollment: {
          type: "http",
          scheme: "bearer",
          description: "an enrollment token (set_…) from POST /api/v1/enrollment-tokens",
        },
      },
    },
  };
}
