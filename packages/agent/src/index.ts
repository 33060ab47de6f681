/**
 * @strata/agent: what runs on an endpoint. Enrollment and state
 * (state.ts, facts.ts, client.ts, enroll.ts), the upload of the protected
 * area into the CVD (upload.ts), and the long-running service around it
 * (daemon.ts: scheduler, watcher, throttle, control socket), and the restore
 * engine (restore/: staged, journaled, streaming restores from a RestoreSource).
 */

export {
  agentClient,
  endpointClient,
  fetchServerFingerprint,
  normalizeServerUrl,
  pinnedFetch,
} from "./client.js";
export { type Clock, isAbort, systemClock } from "./clock.js";
export {
  CONTROL_SOCKET,
  type ControlRequest,
  type ControlResponse,
  type ControlServer,
  controlRequest,
  controlSocketPath,
  NOT_RUNNING_HINT,
  startControlServer,
} from "./control.js";
export {
  type AgentLogger,
  type AgentSelf,
  type AgentTaskRef,
  type ControlResult,
  DEFAULT_SELF_POLL_MS,
  type FetchSelf,
  type RunAgentOptions,
  type RunTask,
  runAgent,
  type TaskContext,
  type UploadContext,
  type UploadOnce,
} from "./daemon.js";
export { type EnrollOptions, type EnrollResult, enrollEndpoint } from "./enroll.js";
export {
  FACTS_REFRESH_MS,
  type FactsOptions,
  FactsReporter,
  type FactsReporterOptions,
  factsChanged,
  type GatheredFacts,
  gatherFacts,
  parseOsRelease,
  type RootFilesystem,
  rootFilesystem,
} from "./facts.js";
export * from "./layers/apply.js";
export * from "./layers/reinstall.js";
export {
  IDLE_NICE,
  type IoClass,
  type LowerPriorityResult,
  lowerPriority,
  type RaisedPriority,
  raisePriority,
  readPriorities,
} from "./priority.js";
export * from "./protect.js";
export {
  DEFAULT_MINIMAL_SET,
  hasPendingRestore,
  type RestoreRun,
  recoverPendingRestore,
  runRestore,
} from "./restore/engine.js";
export { LocalRestoreSource, type LocalSourceOptions } from "./restore/local-source.js";
export {
  asStrataError,
  httpRestoreTransport,
  MAX_IDS_PER_REQUEST,
  MAX_TREE_BYTES,
  oneBuffer,
  RemoteRestoreSource,
  type RestoreTransport,
} from "./restore/remote-source.js";
export * from "./restore/socket-source.js";
export type * from "./restore/source.js";
export type * from "./restore/types.js";
export * from "./restore/user-relay.js";
export { agentCacheVouch, fileCacheVouch, type Vouch } from "./restore/vouch.js";
export { DEFAULT_MAX_SNOOZE_MS, DEFAULT_RETRY_BASE_MS, UploadScheduler } from "./scheduler.js";
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
export {
  type AgentActivity,
  type AgentStatus,
  type EndpointState,
  type ProgressReport,
  readStatus,
  STATUS_FILE,
  statusPath,
  type UploadRecord,
} from "./status.js";
export { type Throttle, TokenBucket, throttleIterable, throttleStream } from "./throttle.js";
export * from "./transport.js";
export * from "./upload.js";
export * from "./user-socket.js";
export { AGENT_VERSION } from "./version.js";
export { ChangeWatcher, type DirtySet } from "./watcher.js";
