import { API_PREFIX, type SystemInfo } from "@strata/protocol";
import { type RouteDef, route } from "../registry.js";

export interface SystemRouteDeps {
  /** Throws when the catalog does not answer. */
  health(): Promise<void>;
  info(): SystemInfo;
  metrics(): string;
  openapi(): unknown;
}

/**
 * Raw responses (text, a document without a schema, a binary body or a
 * stream sent as it is produced) are returned as { raw, type }.
 */
export interface RawReply {
  raw: string | Buffer | import("node:stream").Readable;
  type: string;
  status?: number;
}

export function systemRoutes(d: SystemRouteDeps): RouteDef[] {
  return [
    route({
      method: "GET",
      url: "/healthz",
      access: "public",
      summary: "Liveness and catalog reachability (200 ok, 503 when the catalog does not answer)",
      tag: "system",
      response: null,
      handler: async (): Promise<RawReply> => {
        try {
          await d.health();
          return { raw: '{"status":"ok"}\n', type: "application/json" };
        } catch {
          return {
            raw: '{"status":"unavailable","catalog":"unreachable"}\n',
            type: "application/json",
            status: 503,
          };
        }
      },
    }),
    route({
      method: "GET",
      url: "/metrics",
      access: "public",
      summary: "Prometheus metrics (text exposition format)",
      tag: "system",
      response: null,
      handler: (): RawReply => ({ raw: d.metrics(), type: "text/plain; version=0.0.4; charset=utf-8" }),
    }),
    route({
      method: "GET",
      url: "/api/openapi.json",
      access: "public",
      summary: "This API as an OpenAPI 3.1 document",
      tag: "system",
      response: null,
      handler: (): RawReply => ({ raw: JSON.stringify(d.openapi()), type: "application/json" }),
    }),
    route({
      method: "GET",
      url: `${API_PREFIX}/system`,
      access: { permission: "system.read" },
      summary: "Server version, start time, catalog kind and certificate fingerprint",
      tag: "system",
      response: "SystemInfo",
      handler: () => d.info(),
    }),
  ];
}
