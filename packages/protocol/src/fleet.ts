/**
 * The fleet's API objects: enrollment tokens, endpoints, CVDs, upload
 * policies, and the agent's side (enroll, agent/self) as
 * docs/design/protocol.md specifies it.
 */
import { dateTime, nullableDateTime, obj, type Schema, str } from "./json-schema.js";
import type { AgentTaskRef } from "./restore.js";

/** The protocol version agents send as `Strata-Protocol`. */
export const PROTOCOL_VERSION = 1;
export const PROTOCOL_HEADER = "strata-protocol";

export const ENDPOINT_ID_PATTERN = "^ep_[A-Za-z0-9_-]{1,61}$";
export const CVD_ID_PATTERN = "^cvd_[A-Za-z0-9_-]{1,60}$";
export const ENROLLMENT_TOKEN_ID_PATTERN = "^[0-9a-f]{16}$";
/**
 * Policy names the server accepts: they travel in URL paths and CLI
 * arguments. (core's validatePolicy is more lenient; the server is not.)
 * A policy is addressed by its id (`pol_…`) or its name, so a name MUST NOT
 * start with `pol_`.
 */
export const POLICY_NAME_PATTERN = "^(?!pol_)[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,127}$";
/** A path segment naming a policy: its id or its name. */
export const POLICY_REF_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,127}$";
/** Facts: every string at most this long, every list at most this many items. */
export const FACTS_MAX_STRING = 256;
export const FACTS_MAX_ITEMS = 64;

export type EndpointState = "pending" | "active" | "disabled";

/**
 * What an agent reports about its endpoint (claims, not proofs): at
 * enrollment, then again from `strata agent run` when they change
 * (`PUT /agent/facts`).
 */
export interface EndpointFacts {
  hostname: string;
  /** /etc/machine-id: 32 lowercase hex digits. */
  machineId: string;
  os?: { id?: string; versionId?: string; prettyName?: string };
  kernel?: string;
  arch?: string;
  cpu?: { model?: string; count?: number };
  memoryBytes?: number;
  disks?: { name: string; sizeBytes: number; model?: string }[];
  macs?: string[];
  /** /sys/class/dmi/id/sys_vendor and product_name: driver profiles' vendor and model. */
  dmi?: { vendor?: string; model?: string };
  /** PCI then USB modaliases (/sys/bus/{pci,usb}/devices/*\/modalias), each once. */
  modaliases?: string[];
  agentVersion?: string;
  agentStateDir?: string;
  /**
   * The filesystem holding the agent's root (statfs): bytes available to
   * it, its size and block size, when it was measured. A layer dry-run
   * compares what an apply writes with `freeBytes`.
   */
  rootFs?: { path: string; freeBytes: number; totalBytes: number; blockSize: number; at: string };
}

export interface EnrollRequest {
  facts: EndpointFacts;
}
/** `PUT /agent/facts`: the endpoint's facts as the agent reads them now (they replace the stored ones). */
export interface AgentFactsRequest {
  facts: EndpointFacts;
}
export interface EnrollResponse {
  endpointId: string;
  /** `sep_…`, the endpoint credential: shown in this response only. */
  credential: string;
  state: EndpointState;
  /** The server certificate's SHA-256 fingerprint ("AB:CD:…"), null when the server runs without TLS. */
  serverFingerprint: string | null;
}

export interface PolicyRule {
  dir: string;
  pattern?: string;
}
/** An upload policy as exportPolicy writes its `policy` member. */
export interface UploadPolicyDoc {
  id: string;
  name: string;
  version: number;
  factoryRules: PolicyRule[];
  unprotected: PolicyRule[];
  unprotectedExceptions: PolicyRule[];
  userArea: PolicyRule[];
  userAreaExceptions: PolicyRule[];
  intervalMinutes: number;
  retention: { hourly: number; daily: number; weekly: number; monthly: number };
  bandwidthLimitKBps: number;
}

export interface AgentSelf {
  endpointId: string;
  state: EndpointState;
  /** Null unless the endpoint is active. */
  cvd: {
    id: string;
    latestSnapshot: string | null;
    policy: UploadPolicyDoc;
    /** An administrator's snooze (`strata endpoints snooze`): no scheduled upload before it. */
    snoozedUntil: string | null;
    /**
     * An administrator's newest "upload now" (`strata endpoints sync`): the
     * agent uploads once when it sees a value it has not served yet.
     */
    syncRequestedAt: string | null;
  } | null;
  /** The endpoint's queued and running tasks (restore.md, "Tasks"), oldest first. */
  tasks: AgentTaskRef[];
  serverTime: string;
}

export interface EnrollmentToken {
  id: string;
  createdBy: string;
  createdAt: string;
  expiresAt: string;
  maxUses: number;
  usesLeft: number;
  /** Policy name of auto-approved endpoints' CVDs (null: the default policy). */
  policy: string | null;
  autoApprove: boolean;
  /** Whether auto-assignment rules apply to endpoints enrolling with it. */
  autoAssign: boolean;
  revokedAt: string | null;
  /** `usable` until it expires, is used up or revoked. */
  status: "usable" | "expired" | "used-up" | "revoked";
}
export interface CreatedEnrollmentToken extends EnrollmentToken {
  /** `set_…`: shown in this response only. */
  token: string;
  serverFingerprint: string | null;
}
export interface CreateEnrollmentTokenRequest {
  /** How many endpoints may enroll with it (default 1). */
  uses?: number;
  /** Minutes until it expires (default 1440, 24 hours). */
  expiresInMinutes?: number;
  /** Policy (id or name) of the CVDs of endpoints it auto-approves. */
  policy?: string;
  autoApprove?: boolean;
  /** Apply the auto-assignment rules to its endpoints (default true; false for recovery tokens). */
  autoAssign?: boolean;
}

export interface Endpoint {
  id: string;
  hostname: string;
  machineId: string;
  state: EndpointState;
  /** Another endpoint reported the same machine id first: a clone or a re-install. */
  duplicateMachineId: boolean;
  cvdId: string | null;
  /** The OS's pretty name from the facts, if any. */
  os: string | null;
  createdAt: string;
  lastSeenAt: string | null;
}
export interface EndpointDetail extends Endpoint {
  facts: Record<string, unknown>;
  enrollmentTokenId: string | null;
  /** Other endpoints that reported the same machine id. */
  sameMachineId: string[];
  /** An administrator's requests to its agent (null without a CVD): server.md, "Remote sync and snooze". */
  remote: EndpointRemote | null;
}
export interface EndpointRemote {
  /** The newest "upload now" request and who made it (`user:NAME`). */
  syncRequestedAt: string | null;
  syncRequestedBy: string | null;
  /** `pending` until a snapshot of the CVD is at least as new as the request; null when none was made. */
  sync: "pending" | "done" | null;
  /** The administrator's snooze, and who set it; null when none. */
  snoozedUntil: string | null;
  snoozedBy: string | null;
  /** The CVD's newest snapshot's time. */
  latestSnapshotAt: string | null;
}
/** `POST /endpoints/:id/snooze`. */
export interface SnoozeEndpointRequest {
  /** 1 to 1440 (24 hours, the agent's own limit). */
  minutes: number;
}
export interface ApproveEndpointRequest {
  /** Policy (id or name) of the new CVD; default: the default policy. */
  policy?: string;
  /** An existing CVD to attach instead (the replacement-device case). */
  cvd?: string;
}

export interface Cvd {
  id: string;
  endpointId: string | null;
  hostname: string | null;
  policyId: string;
  policy: string;
  policyVersion: number;
  createdAt: string;
  snoozedUntil: string | null;
  snoozedBy: string | null;
  syncRequestedAt: string | null;
  syncRequestedBy: string | null;
  /** Administrators' tags (`strata cvd tag`): collection rules match them. */
  tags: string[];
}
/** A snapshot of a CVD, as the repository lists it (tag `cvd:<id>`). */
export interface CvdSnapshotSummary {
  id: string;
  time: string;
  hostname: string;
  kind: string;
  parent: string | null;
  totalFiles: number;
  totalBytes: number;
}
export interface SetCvdPolicyRequest {
  policy: string;
}

export interface PolicySummary {
  id: string;
  name: string;
  version: number;
  intervalMinutes: number;
  createdAt: string;
  updatedAt: string;
  /** The policy new CVDs get when none is named (it cannot be deleted). */
  isDefault: boolean;
}
export interface PolicyDetail extends PolicySummary {
  policy: UploadPolicyDoc;
  usage: { cvds: number; enrollmentTokens: number; autoassignRules: number };
}

// ---- JSON Schemas ---------------------------------------------------------

const s256 = str({ maxLength: FACTS_MAX_STRING });
const list = (items: Schema) => ({ type: "array", items, maxItems: FACTS_MAX_ITEMS });
const count = { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER };
const state = str({ enum: ["pending", "active", "disabled"] });
const rule = obj({ dir: str(), pattern: str() }, ["dir"]);
const rules = { type: "array", items: rule };
const policyDoc = obj({
  id: str(),
  name: str(),
  version: { type: "integer" },
  factoryRules: rules,
  unprotected: rules,
  unprotectedExceptions: rules,
  userArea: rules,
  userAreaExceptions: rules,
  intervalMinutes: { type: "integer" },
  retention: obj({
    hourly: { type: "integer" },
    daily: { type: "integer" },
    weekly: { type: "integer" },
    monthly: { type: "integer" },
  }),
  bandwidthLimitKBps: { type: "integer" },
});
const policySummary = {
  id: str(),
  name: str(),
  version: { type: "integer" },
  intervalMinutes: { type: "integer" },
  createdAt: dateTime,
  updatedAt: dateTime,
  isDefault: { type: "boolean" },
};
const tokenFields = {
  id: str(),
  createdBy: str(),
  createdAt: dateTime,
  expiresAt: dateTime,
  maxUses: { type: "integer" },
  usesLeft: { type: "integer" },
  policy: { type: ["string", "null"] },
  autoApprove: { type: "boolean" },
  autoAssign: { type: "boolean" },
  revokedAt: nullableDateTime,
  status: str({ enum: ["usable", "expired", "used-up", "revoked"] }),
};
const endpointFields = {
  id: str(),
  hostname: str(),
  machineId: str(),
  state,
  duplicateMachineId: { type: "boolean" },
  cvdId: { type: ["string", "null"] },
  os: { type: ["string", "null"] },
  createdAt: dateTime,
  lastSeenAt: nullableDateTime,
};
const facts = obj(
  {
    hostname: str({ minLength: 1, maxLength: FACTS_MAX_STRING }),
    machineId: str({ pattern: "^[0-9a-f]{32}$" }),
    os: obj({ id: s256, versionId: s256, prettyName: s256 }, []),
    kernel: s256,
    arch: s256,
    cpu: obj({ model: s256, count: { type: "integer", minimum: 0, maximum: 1_000_000 } }, []),
    memoryBytes: count,
    disks: list(obj({ name: s256, sizeBytes: count, model: s256 }, ["name", "sizeBytes"])),
    macs: list(s256),
    dmi: obj({ vendor: s256, model: s256 }, []),
    modaliases: list(s256),
    agentVersion: s256,
    agentStateDir: s256,
    rootFs: obj({
      path: str({ maxLength: 4096 }),
      freeBytes: count,
      totalBytes: count,
      blockSize: { type: "integer", minimum: 1, maximum: 1 << 30 },
      at: dateTime,
    }),
  },
  ["hostname", "machineId"],
);
/** Requests whose body is a policy document: validated as a whole by @strata/core (every error at once). */
const policyInput = { type: "object", additionalProperties: true };

export const fleetSchemas = {
  EndpointFacts: facts,
  EnrollRequest: obj({ facts }),
  AgentFactsRequest: obj({ facts }),
  EnrollResponse: obj({
    endpointId: str(),
    credential: str(),
    state,
    serverFingerprint: { type: ["string", "null"] },
  }),
  AgentSelf: obj({
    endpointId: str(),
    state,
    cvd: {
      anyOf: [
        { type: "null" },
        obj({
          id: str(),
          latestSnapshot: { type: ["string", "null"] },
          policy: policyDoc,
          snoozedUntil: nullableDateTime,
          syncRequestedAt: nullableDateTime,
        }),
      ],
    },
    tasks: {
      type: "array",
      items: obj({
        id: str(),
        // restore.ts's TASK_KIND_NAMES (not imported: restore.ts imports this module).
        kind: str({ enum: ["system", "full", "recover", "files", "apply"] }),
        state: str({ enum: ["queued", "running"] }),
      }),
    },
    serverTime: dateTime,
  }),
  EnrollmentToken: obj(tokenFields),
  CreatedEnrollmentToken: obj({
    ...tokenFields,
    token: str(),
    serverFingerprint: { type: ["string", "null"] },
  }),
  CreateEnrollmentTokenRequest: obj(
    {
      uses: { type: "integer", minimum: 1, maximum: 100_000 },
      expiresInMinutes: { type: "integer", minimum: 1, maximum: 366 * 1440 },
      policy: str({ pattern: POLICY_REF_PATTERN }),
      autoApprove: { type: "boolean" },
      autoAssign: { type: "boolean" },
    },
    [],
  ),
  Endpoint: obj(endpointFields),
  EndpointDetail: obj({
    ...endpointFields,
    facts: { type: "object", additionalProperties: true },
    enrollmentTokenId: { type: ["string", "null"] },
    sameMachineId: { type: "array", items: str() },
    remote: {
      anyOf: [
        { type: "null" },
        obj({
          syncRequestedAt: nullableDateTime,
          syncRequestedBy: { type: ["string", "null"] },
          sync: { anyOf: [{ type: "null" }, str({ enum: ["pending", "done"] })] },
          snoozedUntil: nullableDateTime,
          snoozedBy: { type: ["string", "null"] },
          latestSnapshotAt: nullableDateTime,
        }),
      ],
    },
  }),
  // 1 to 1440, checked by the service (its error says why: an endpoint that never uploads is not protected).
  SnoozeEndpointRequest: obj({ minutes: { type: "integer" } }),
  ApproveEndpointRequest: obj(
    { policy: str({ pattern: POLICY_REF_PATTERN }), cvd: str({ pattern: CVD_ID_PATTERN }) },
    [],
  ),
  Cvd: obj({
    id: str(),
    endpointId: { type: ["string", "null"] },
    hostname: { type: ["string", "null"] },
    policyId: str(),
    policy: str(),
    policyVersion: { type: "integer" },
    createdAt: dateTime,
    snoozedUntil: nullableDateTime,
    snoozedBy: { type: ["string", "null"] },
    syncRequestedAt: nullableDateTime,
    syncRequestedBy: { type: ["string", "null"] },
    tags: { type: "array", items: str() },
  }),
  CvdSnapshotSummary: obj({
    id: str(),
    time: dateTime,
    hostname: str(),
    kind: str(),
    parent: { type: ["string", "null"] },
    totalFiles: { type: "integer" },
    totalBytes: { type: "integer" },
  }),
  SetCvdPolicyRequest: obj({ policy: str({ pattern: POLICY_REF_PATTERN }) }),
  PolicySummary: obj(policySummary),
  PolicyDetail: obj({
    ...policySummary,
    policy: policyDoc,
    usage: obj({
      cvds: { type: "integer" },
      enrollmentTokens: { type: "integer" },
      autoassignRules: { type: "integer" },
    }),
  }),
  PolicyInput: policyInput,
  PolicyDocument: policyInput,
  // Parameters and queries
  EnrollmentTokenIdParams: obj({ id: str({ pattern: ENROLLMENT_TOKEN_ID_PATTERN }) }),
  EndpointIdParams: obj({ id: str({ pattern: ENDPOINT_ID_PATTERN }) }),
  CvdIdParams: obj({ id: str({ pattern: CVD_ID_PATTERN }) }),
  PolicyRefParams: obj({ policy: str({ pattern: POLICY_REF_PATTERN }) }),
  EndpointQuery: obj({ state }, []),
  ImportPolicyQuery: obj({ name: str({ pattern: POLICY_NAME_PATTERN }) }, []),
} satisfies Record<string, Schema>;
