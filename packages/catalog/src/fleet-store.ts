/**
 * The fleet's tables (migration 0003_fleet): upload policies, enrollment
 * tokens, endpoints and CVDs. Part of ServerStore; kept in their own files
 * (fleet-sqlite.ts, fleet-postgres.ts) because they are their own subject.
 *
 * Contract (run by test/fleet-contract.ts against SQLite and PostgreSQL):
 * - get* MUST return null, never throw, for a missing row; list* MUST answer
 *   in one query (no per-row follow-up), ordered as documented.
 * - createPolicy / createEnrollmentToken MUST throw ALREADY_EXISTS on a taken
 *   id, name or hash and leave the store unchanged. ensurePolicy MUST be
 *   safe when two nodes call it at once: both get the same stored row, the
 *   one with p's id if there is one, else the one with p's name.
 * - updatePolicy MUST bump the version by exactly one per call and return
 *   null for a missing policy. deletePolicy MUST throw INVALID_ARGUMENT while
 *   a CVD or an enrollment token names the policy, and return false when it
 *   is missing.
 * - enrollEndpoint MUST, atomically: take one use of the endpoint's token
 *   (only if not revoked, not expired at `at`, with uses left: otherwise it
 *   returns null and changes nothing), flag the endpoint duplicateMachineId
 *   when another endpoint already has its machineId (then it stays pending
 *   and gets no CVD, whatever `autoApprove` says), else make it active with
 *   the `autoApprove` CVD when one is given. Two enrollments of the same
 *   (token, key hash) MUST NOT both succeed: the second throws
 *   ALREADY_EXISTS. Two concurrent enrollments of one machineId MUST flag the
 *   second.
 * - approveEndpoint MUST throw NOT_FOUND for a missing endpoint or CVD,
 *   INVALID_ARGUMENT when the endpoint is already active, when it already has
 *   a different CVD, or when the CVD to attach belongs to an endpoint that is
 *   not disabled; it moves an attached CVD from its (disabled) endpoint.
 * - an endpoint's cvdId is derived from cvds.endpoint_id: it is never stale.
 * - a CVD created with `tags` (enrollEndpoint's autoApprove, approveEndpoint's
 *   create) gets them in the same transaction.
 * - requestCvdSync / setCvdSnooze return false for a missing CVD; a token's
 *   autoAssign is stored (absent: true) and read back.
 */
import { StrataError } from "@strata/core";

export type EndpointState = "pending" | "active" | "disabled";

export interface PolicyRecord {
  /** `pol_…` */
  id: string;
  name: string;
  version: number;
  /** The policy's JSON without id, name and version (validated by the server, opaque here). */
  body: Record<string, unknown>;
  createdAt: Date;
  updatedAt: Date;
}

export interface EnrollmentTokenRecord {
  /** 16 hex digits; public. */
  id: string;
  /** SHA-256 (hex) of the `set_…` secret. */
  tokenHash: string;
  /** User name of the creator. */
  createdBy: string;
  createdAt: Date;
  expiresAt: Date;
  maxUses: number;
  usesLeft: number;
  /** Policy of auto-approved endpoints' new CVDs (null: the Default policy). */
  policyId: string | null;
  autoApprove: boolean;
  revokedAt: Date | null;
  /**
   * Whether auto-assignment rules apply to endpoints enrolling with it
   * (absent: true). False for tokens whose endpoints get a CVD otherwise
   * (recovery: the tool gives the endpoint an existing CVD).
   */
  autoAssign?: boolean;
}

export interface EndpointRecord {
  /** `ep_…` */
  id: string;
  hostname: string;
  machineId: string;
  facts: Record<string, unknown>;
  state: EndpointState;
  duplicateMachineId: boolean;
  /** SHA-256 (hex) of the `sep_…` credential. */
  credentialHash: string;
  enrollmentTokenId: string | null;
  /** SHA-256 (hex) of the enrollment's Idempotency-Key. */
  enrollKeyHash: string | null;
  createdAt: Date;
  lastSeenAt: Date | null;
  /** The endpoint's CVD (from cvds.endpoint_id; read-only here). */
  cvdId: string | null;
}

/** What enrollEndpoint writes; state, flag and CVD are decided by the store (see the contract). */
export type NewEndpoint = Omit<EndpointRecord, "state" | "duplicateMachineId" | "cvdId" | "lastSeenAt">;

export interface CvdRecord {
  /** `cvd_…` */
  id: string;
  /** Null when the CVD has no endpoint (it outlived it, or waits for a replacement). */
  endpointId: string | null;
  policyId: string;
  createdAt: Date;
  snoozedUntil: Date | null;
  /** Tags the new CVD gets (an auto-assignment rule's), written with it; absent: none. */
  tags?: readonly string[];
}

/** An administrator's requests to the CVD's agent (server.md, "Remote sync and snooze"). */
export interface CvdRemoteControl {
  /** The newest "upload now" request, and who made it (`user:NAME`). */
  syncRequestedAt: Date | null;
  syncRequestedBy: string | null;
  /** Who set snoozedUntil (`user:NAME`), null when nobody did or it was resumed. */
  snoozedBy: string | null;
}

/** A CVD with the names an administrator reads, joined in the same query. */
export interface CvdSummary extends CvdRecord, CvdRemoteControl {
  endpointHostname: string | null;
  policyName: string;
  policyVersion: number;
  /** Administrators' tags (targeting.ts's cvd_tags), sorted. */
  tags: string[];
}

export interface EndpointFilter {
  state?: EndpointState;
  machineId?: string;
}

export interface FleetStore {
  createPolicy(p: PolicyRecord): Promise<void>;
  /**
   * Creates `p` unless a policy with its id or name exists. Returns the
   * stored policy with p's id, or else the one with p's name (a renamed
   * default policy stays the default).
   */
  ensurePolicy(p: PolicyRecord): Promise<PolicyRecord>;
  getPolicy(id: string): Promise<PolicyRecord | null>;
  getPolicyByName(name: string): Promise<PolicyRecord | null>;
  /** By name. */
  listPolicies(): Promise<PolicyRecord[]>;
  /** Replaces name and body, version + 1. ALREADY_EXISTS when the new name is taken. */
  updatePolicy(
    id: string,
    p: { name: string; body: Record<string, unknown> },
    at: Date,
  ): Promise<PolicyRecord | null>;
  /** How many CVDs, enrollment tokens and auto-assignment rules name the policy. */
  policyUsage(id: string): Promise<PolicyUsage>;
  deletePolicy(id: string): Promise<boolean>;

  createEnrollmentToken(t: EnrollmentTokenRecord): Promise<void>;
  getEnrollmentToken(id: string): Promise<EnrollmentTokenRecord | null>;
  getEnrollmentTokenByHash(tokenHash: string): Promise<EnrollmentTokenRecord | null>;
  /** Newest first. */
  listEnrollmentTokens(): Promise<EnrollmentTokenRecord[]>;
  /** Marks it revoked (the row stays); false when missing or already revoked. */
  revokeEnrollmentToken(id: string, at: Date): Promise<boolean>;

  /** See the contract. Null when the token cannot be used. */
  enrollEndpoint(
    e: NewEndpoint,
    opts: { at: Date; autoApprove: CvdRecord | null },
  ): Promise<EndpointRecord | null>;
  /** The endpoint an enrollment with this token and key created, if any. */
  findEnrollment(tokenId: string, keyHash: string): Promise<EndpointRecord | null>;
  setEndpointCredential(id: string, credentialHash: string): Promise<boolean>;
  getEndpoint(id: string): Promise<EndpointRecord | null>;
  getEndpointByCredentialHash(credentialHash: string): Promise<EndpointRecord | null>;
  /** Oldest first (created, id). */
  listEndpoints(filter?: EndpointFilter): Promise<EndpointRecord[]>;
  touchEndpoint(id: string, at: Date): Promise<void>;
  /**
   * Replace the facts the agent reported, and the hostname with them (the
   * machine id and the duplicate flag stay those of the enrollment). False
   * when missing.
   */
  updateEndpointFacts(id: string, hostname: string, facts: Record<string, unknown>): Promise<boolean>;
  /** Make a pending or disabled endpoint active with a new CVD or an existing one. See the contract. */
  approveEndpoint(id: string, cvd: { create: CvdRecord } | { attach: string }): Promise<EndpointRecord>;
  /** False when missing. The CVD stays attached. */
  disableEndpoint(id: string): Promise<boolean>;

  getCvd(id: string): Promise<CvdSummary | null>;
  /** Oldest first (created, id). */
  listCvds(): Promise<CvdSummary[]>;
  /** False when the CVD is missing; NOT_FOUND when the policy is. */
  setCvdPolicy(id: string, policyId: string): Promise<boolean>;
  /** Records an "upload now" request (replacing an older one). False when the CVD is missing. */
  requestCvdSync(id: string, at: Date, by: string): Promise<boolean>;
  /** Sets (or with null, clears) the CVD's snooze and who set it. False when the CVD is missing. */
  setCvdSnooze(id: string, until: Date | null, by: string | null): Promise<boolean>;
}

export interface PolicyUsage {
  cvds: number;
  enrollmentTokens: number;
  autoassignRules: number;
}

// Errors both implementations raise, worded once.

export function policyInUse(id: string, use: PolicyUsage): StrataError {
  return new StrataError(
    "INVALID_ARGUMENT",
    `policy ${id} is in use by ${use.cvds} CVD(s), ${use.enrollmentTokens} enrollment token(s) and ${use.autoassignRules} auto-assignment rule(s)`,
    {
      subject: id,
      hint: "move those CVDs to another policy, revoke those tokens and remove those rules (`strata autoassign rm`) first",
    },
  );
}

export function sameCvdRefusal(endpointId: string, cvdId: string): StrataError {
  return new StrataError("INVALID_ARGUMENT", `endpoint ${endpointId} already has CVD ${cvdId}`, {
    subject: endpointId,
    hint: `approve it without --cvd (it keeps ${cvdId}), or with --cvd ${cvdId}`,
  });
}
