/**
 * @strata/agent: what runs on an endpoint. Enrollment and state
 * (state.ts, facts.ts, client.ts, enroll.ts), the upload of the protected
 * area into the CVD (upload.ts), and the long-running service around it
 * (daemon.ts: scheduler, watcher, throttle, control socket).
 */

export {
  agentClient,
  endpointClient,
  fetchServerFingerprint,
  normalizeServerUrl,
  pinnedFetch,
} from "./client.js";
export { type EnrollOptions, type EnrollResult, enrollEndpoint } from "./enroll.js";
export { type FactsOptions, type GatheredFacts, gatherFacts, parseOsRelease } from "./facts.js";
export * from "./protect.js";
export {
  type AgentState,
  CREDENTIAL_FILE,
  DEFAULT_STATE_DIR,
  ensureStateDir,
  readCredential,
  readState,
  STATE_FILE,
  writeCredential,
  writeFileAtomic,
  writeState,
} from "./state.js";
export * from "./transport.js";
export * from "./upload.js";
export { AGENT_VERSION } from "./version.js";
