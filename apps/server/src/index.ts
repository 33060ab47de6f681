export {
  DEFAULTS,
  type LoadConfigInput,
  loadServerConfig,
  type RawServerOptions,
  redactUrl,
  type ServerConfig,
} from "./config.js";
export { type AppDeps, buildApp, REDACT_PATHS, routesOf, SERVER_VERSION } from "./http/app.js";
export { STATUS_BY_CODE, toWireError } from "./http/errors.js";
export { Metrics } from "./http/metrics.js";
export { buildOpenApi } from "./http/openapi.js";
export {
  type Access,
  agentOf,
  describeAccess,
  type HandlerContext,
  isEndpointAccess,
  isUserOrEndpointAccess,
  ownCvdOf,
  type RouteDef,
  route,
} from "./http/registry.js";
export { apiRoutes } from "./http/routes/index.js";
export { SERVER_HEAP_GROWING_PERCENT, tuneServerProcess } from "./process.js";
export type { AgentIdentity, Caller, Clock } from "./services/context.js";
export {
  bootstrap,
  type CreateServicesOptions,
  createServices,
  DEFAULT_POLICY_ID,
  DEFAULT_POLICY_NAME,
  FIRST_ADMIN,
  type Services,
  type SnapshotsOf,
} from "./services/index.js";
export { hashPassword, verifyPassword } from "./services/passwords.js";
export { openServerStore, type RunningServer, type StartOptions, startServer } from "./start.js";
export { fingerprintOf, loadOrCreateTls, normalizeFingerprint } from "./tls.js";
