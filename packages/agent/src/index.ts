/**
 * @strata/agent: what runs on an endpoint. Enrollment and state
 * (state.ts, enroll.ts), the upload of the protected area into the CVD
 * (upload.ts), and the long-running service around it (daemon.ts:
 * scheduler, watcher, throttle, control socket).
 */
export const AGENT_VERSION = "0.1.0";
export * from "./upload.js";
