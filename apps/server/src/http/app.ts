/**
 * buildApp(deps): the fastify application, separate from listen() so tests
 * drive it with inject() (and start.ts serves it over HTTPS). Routes come
 * only from the registry; access is checked here once, before any handler.
 */

import { randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import { StrataError } from "@strata/core";
import { PROTOCOL_HEADER, PROTOCOL_VERSION, type SystemInfo, schemas } from "@strata/protocol";
import { FRAMES_CONTENT_TYPE } from "@strata/repo";
import Fastify, { type FastifyInstance, type FastifyRequest } from "fastify";
import type { AgentIdentity, Caller } from "../services/context.js";
import type { Services } from "../services/index.js";
import { ENDPOINT_CREDENTIAL_PREFIX, ENROLLMENT_TOKEN_PREFIX, TOKEN_PREFIX } from "../services/tokens.js";
import { toWireError } from "./errors.js";
import { Metrics } from "./metrics.js";
import { buildOpenApi } from "./openapi.js";
import { describeAccess, isEndpointAccess, isUserOrEndpointAccess, type RouteDef } from "./registry.js";
import { apiRoutes } from "./routes/index.js";
import { type RawReply, systemRoutes } from "./routes/system.js";

export const SERVER_VERSION = "0.1.0";

/**
 * Log redaction: whatever a future log call passes, these never reach the
 * output. (fastify's request serializer already leaves headers and bodies
 * out; this is the second line.)
 */
export const REDACT_PATHS = [
  "req.headers.authorization",
  "req.headers.cookie",
  "headers.authorization",
  "authorization",
  "password",
  "newPassword",
  "currentPassword",
  "token",
  "*.password",
  "*.newPassword",
  "*.currentPassword",
  "*.token",
  "*.*.password",
  "*.*.token",
  "credential",
  "*.credential",
];

export interface AppDeps {
  services: Services;
  /** Log output: false for none; otherwise the level and where to write (default stdout). */
  logger?: false | { level?: string; stream?: { write(s: string): unknown } };
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  metrics?: Metrics;
  /** TLS key and certificate (PEM): the app then serves HTTPS. */
  https?: { key: string | Buffer; cert: string | Buffer };
  tlsFingerprint?: string | null;
  /** Routes beyond the built-in ones (the next resources register here; tests add probes). */
  extraRoutes?: RouteDef[];
}

declare module "fastify" {
  interface FastifyRequest {
    caller: Caller | null;
    agent: AgentIdentity | null;
    enrollmentToken: string | null;
  }
  interface FastifyContextConfig {
    def?: RouteDef;
  }
}

const schemaOf = (r: RouteDef["response"]) =>
  r === null ? undefined : typeof r === "string" ? schemas[r] : { type: "array", items: schemas[r.arrayOf] };

function isRaw(v: unknown): v is RawReply {
  if (typeof v !== "object" || v === null || typeof (v as RawReply).type !== "string") return false;
  const raw = (v as RawReply).raw;
  return typeof raw === "string" || Buffer.isBuffer(raw) || raw instanceof Readable;
}

const WHAT_TAKES: Record<string, string> = {
  [TOKEN_PREFIX]: "a user's API token (stk_…)",
  [ENROLLMENT_TOKEN_PREFIX]: "an enrollment token (set_…)",
  [ENDPOINT_CREDENTIAL_PREFIX]: "an endpoint credential (sep_…)",
};

/**
 * Agents send `Strata-Protocol: 1` (protocol.md, "Versioning"). A request
 * without the header is taken as version 1, so a human with curl can
 * still ask `agent/self`; any other version is UNSUPPORTED.
 */
function checkProtocolVersion(req: FastifyRequest): void {
  const v = req.headers[PROTOCOL_HEADER];
  if (v === undefined || v === String(PROTOCOL_VERSION)) return;
  throw new StrataError("UNSUPPORTED", `protocol version ${String(v)} is not supported`, {
    hint: `this server speaks Strata-Protocol ${PROTOCOL_VERSION}`,
  });
}

export function buildApp(deps: AppDeps): FastifyInstance {
  const { services } = deps;
  const metrics = deps.metrics ?? new Metrics();
  const startedAt = services.clock.now().toISOString();
  const app = Fastify({
    ...(deps.https ? { https: deps.https } : {}),
    logger:
      deps.logger === false
        ? false
        : {
            level: deps.logger?.level ?? "info",
            redact: { paths: REDACT_PATHS, censor: "[redacted]" },
            ...(deps.logger?.stream ? { stream: deps.logger.stream } : {}),
          },
    bodyLimit: deps.bodyLimit ?? 1024 * 1024,
    genReqId: () => randomUUID(),
    // A connection the HTTP parser gives up on is logged (Fastify's default
    // logs at trace): a client that sees "other side closed" can be matched
    // with a reason here. Answered 400 only when no response is under way.
    clientErrorHandler(err: NodeJS.ErrnoException, socket: import("node:net").Socket) {
      if (err.code === "ECONNRESET" || socket.destroyed) return;
      (this as unknown as FastifyInstance).log.warn(
        { code: err.code, remote: socket.remoteAddress, err: err.message },
        "connection closed on a client error",
      );
      if (socket.writable && !(socket as { _httpMessage?: unknown })._httpMessage) {
        const body = '{"error":{"code":"INVALID_ARGUMENT","message":"malformed HTTP request"}}';
        socket.write(
          `HTTP/1.1 400 Bad Request\r\nContent-Length: ${body.length}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
        );
      }
      socket.destroy(err);
    },
    exposeHeadRoutes: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: "array", allErrors: false } },
  }) as unknown as FastifyInstance;

  // Upload streams reach their handler unread: the upload service reads
  // frames as they arrive, with its own bounds (protocol.md, "Limits").
  app.addContentTypeParser(FRAMES_CONTENT_TYPE, (_req, payload, done) => done(null, payload));

  app.decorateRequest("caller", null);
  app.decorateRequest("agent", null);
  app.decorateRequest("enrollmentToken", null);

  // A route without a declared access must not exist: fail at startup.
  app.addHook("onRoute", (opts) => {
    const def = opts.config?.def;
    if (!def || def.access === undefined) {
      throw new StrataError("INTERNAL", `route ${opts.method} ${opts.url} declares no permission`, {
        hint: "register routes through the route registry with an `access`",
      });
    }
  });

  app.addHook("onSend", async (req, reply, payload) => {
    reply.header("x-request-id", req.id);
    if (req.url.startsWith("/api/")) reply.header("cache-control", "no-store");
    return payload;
  });
  app.addHook("onResponse", async (req, reply) => {
    metrics.observeRequest(
      req.method,
      req.routeOptions.url ?? "unmatched",
      reply.statusCode,
      reply.elapsedTime / 1000,
    );
    if (req.routeOptions.url === "/api/v1/auth/login" && req.method === "POST") {
      metrics.observeLogin(
        reply.statusCode === 200 ? "success" : reply.statusCode === 429 ? "locked" : "failure",
      );
    }
  });

  app.setErrorHandler((err, req, reply) => {
    const w = toWireError(err, req.id);
    if (w.status >= 500) req.log.error({ err }, "request failed");
    else req.log.info({ status: w.status, code: w.body.error.code }, "request refused");
    if (w.retryAfter) reply.header("retry-after", String(w.retryAfter));
    void reply.code(w.status).type("application/json").send(w.body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply
      .code(404)
      .type("application/json")
      .send({
        error: {
          code: "NOT_FOUND",
          message: `no route ${req.method} ${req.url.split("?")[0]}`,
          requestId: req.id,
        },
      });
  });

  const authorize = async (req: FastifyRequest, route: RouteDef): Promise<void> => {
    let def = route;
    if (def.access === "public") return;
    if (isUserOrEndpointAccess(def.access)) {
      // The secret's prefix picks the branch; each branch is checked as its own kind.
      const endpointSecret = /^Bearer sep_/.test(req.headers.authorization ?? "");
      def = {
        ...def,
        access: endpointSecret ? { endpoint: def.access.orEndpoint } : { permission: def.access.permission },
      };
    }
    const forAgents = def.access === "enrollment" || isEndpointAccess(def.access);
    const m = /^Bearer ([A-Za-z0-9_-]+)$/.exec(req.headers.authorization ?? "");
    if (!m) {
      throw new StrataError("WRONG_PASSWORD", "not authenticated: send Authorization: Bearer TOKEN", {
        hint: forAgents
          ? "agents enroll with `strata agent enroll`, then send their endpoint credential"
          : "log in with `strata login --server URL`",
      });
    }
    const secret = m[1]!;
    // The prefix decides, before any lookup: a secret of another kind is never looked up here.
    const expected =
      def.access === "enrollment"
        ? ENROLLMENT_TOKEN_PREFIX
        : isEndpointAccess(def.access)
          ? ENDPOINT_CREDENTIAL_PREFIX
          : TOKEN_PREFIX;
    if (!secret.startsWith(expected)) {
      throw new StrataError("WRONG_PASSWORD", `this route takes ${WHAT_TAKES[expected]}`, {
        hint: forAgents
          ? "users' API tokens are not accepted on agent routes"
          : "log in with `strata login --server URL`",
      });
    }
    if (forAgents) checkProtocolVersion(req);
    if (def.access === "enrollment") {
      req.enrollmentToken = secret;
      return;
    }
    if (isEndpointAccess(def.access)) {
      const agent = await services.enrollment.authenticateEndpoint(secret);
      if (def.access.endpoint === "active" && agent.state !== "active") {
        throw new StrataError("PERMISSION_DENIED", `endpoint ${agent.endpointId} is ${agent.state}`, {
          subject: agent.endpointId,
          hint:
            agent.state === "pending"
              ? "an administrator must approve it (`strata endpoints approve`)"
              : "an administrator disabled it",
        });
      }
      req.agent = agent;
      return;
    }
    const caller = await services.auth.authenticate(secret, req.ip);
    if (caller.user.mustChangePassword && !def.whilePasswordMustChange) {
      throw new StrataError("PERMISSION_DENIED", `${caller.user.name} must change their password first`, {
        hint: "run `strata users passwd`",
      });
    }
    if (
      typeof def.access === "object" &&
      "permission" in def.access &&
      !caller.permissions.has(def.access.permission)
    ) {
      throw new StrataError(
        "PERMISSION_DENIED",
        `${caller.user.name} lacks the permission ${def.access.permission}`,
        {
          subject: def.access.permission,
          hint: "ask an administrator for a role that grants it",
        },
      );
    }
    req.caller = caller;
  };

  const info = (): SystemInfo => ({
    version: SERVER_VERSION,
    startedAt,
    catalog: services.store.kind,
    tlsFingerprint: deps.tlsFingerprint ?? services.enrollment.serverFingerprint,
  });
  const routes: RouteDef[] = [];
  routes.push(
    ...systemRoutes({
      health: () => services.store.ping(),
      info,
      metrics: () => metrics.render(),
      openapi: () => buildOpenApi(routes, SERVER_VERSION),
    }),
    ...apiRoutes,
    ...(deps.extraRoutes ?? []),
  );

  for (const def of routes) {
    const response = schemaOf(def.response);
    app.route({
      method: def.method,
      url: def.url,
      config: { def },
      schema: {
        ...(def.body ? { body: schemas[def.body] } : {}),
        ...(def.params ? { params: schemas[def.params] } : {}),
        ...(def.query ? { querystring: schemas[def.query] } : {}),
        ...(response ? { response: { [def.status ?? 200]: response } } : {}),
      },
      preHandler: async (req) => authorize(req, def),
      handler: async (req, reply) => {
        const out = await def.handler({
          caller: req.caller,
          agent: req.agent,
          enrollmentToken: req.enrollmentToken,
          headers: req.headers,
          body: req.body,
          params: req.params,
          query: req.query,
          remoteAddr: req.ip,
          services,
        });
        if (isRaw(out))
          return reply
            .code(out.status ?? 200)
            .type(out.type)
            .send(out.raw);
        if ((def.status ?? 200) === 204) return reply.code(204).send();
        return reply.code(def.status ?? 200).send(out);
      },
    });
  }
  app.decorate("strataRoutes", routes);
  return app;
}

/** The registry of a built app (for the per-role test and tooling). */
export function routesOf(app: FastifyInstance): readonly RouteDef[] {
  return (app as unknown as { strataRoutes: RouteDef[] }).strataRoutes;
}

export { describeAccess };
