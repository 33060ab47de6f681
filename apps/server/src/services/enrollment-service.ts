/**
 * Enrollment (docs/design/protocol.md, "Enrollment" and "Agent self"):
 * administrators create enrollment tokens; agents trade one for an
 * endpoint id and a credential; endpoints authenticate with that credential
 * and read their state, CVD and policy.
 */
import { randomBytes } from "node:crypto";
import type { CvdRecord, EndpointRecord, EnrollmentTokenRecord } from "@strata/catalog";
import { isStrataError, StrataError } from "@strata/core";
import type {
  AgentSelf,
  CreatedEnrollmentToken,
  CreateEnrollmentTokenRequest,
  CvdSnapshotSummary,
  EndpointFacts,
  EnrollmentToken,
  EnrollResponse,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import type { AutoassignService } from "./autoassign-service.js";
import { type AgentIdentity, type Caller, requirePermission, type ServiceDeps } from "./context.js";
import { DEFAULT_POLICY_ID, type PolicyService, policyDocOf } from "./policy-service.js";
import {
  ENDPOINT_CREDENTIAL_PREFIX,
  ENROLLMENT_TOKEN_PREFIX,
  generateSecret,
  hashToken,
  looksLikeSecret,
  randomId,
} from "./tokens.js";

/** An Idempotency-Key finds its enrollment for this long (protocol.md, "Enroll"). */
export const IDEMPOTENCY_WINDOW_MS = 24 * 3_600_000;
/** last_seen_at is written at most this often per endpoint (it is informational). */
const TOUCH_EVERY_MS = 60_000;
/** The facts as JSON, at most (each string and list is bounded by the schema too; real facts take about 1 KiB). */
export const FACTS_MAX_BYTES = 32 * 1024;
const DEFAULT_TOKEN_MINUTES = 24 * 60;

export type SnapshotsOf = (cvdId: string) => Promise<CvdSnapshotSummary[]>;

export interface EnrollmentServiceDeps extends ServiceDeps {
  audit: AuditService;
  policies: PolicyService;
  serverFingerprint: string | null;
  snapshotsOf: SnapshotsOf;
  /** The auto-assignment rules; without it, enrollment applies none. */
  autoassign?: Pick<AutoassignService, "match">;
}

const badEnrollmentToken = () =>
  new StrataError("WRONG_PASSWORD", "unknown, expired, revoked or used-up enrollment token", {
    hint: "ask an administrator for a new one (`strata tokens create`)",
  });
const badCredential = () =>
  new StrataError("WRONG_PASSWORD", "unknown endpoint credential", {
    hint: "the endpoint was removed or re-enrolled; enroll it again with `strata agent enroll`",
  });

function checkFactsSize(facts: EndpointFacts): void {
  const size = Buffer.byteLength(JSON.stringify(facts));
  if (size > FACTS_MAX_BYTES) {
    throw new StrataError("TOO_LARGE", `the facts take ${size} bytes; at most ${FACTS_MAX_BYTES}`, {
      hint: "report fewer facts",
    });
  }
}

export function tokenStatus(t: EnrollmentTokenRecord, now: Date): EnrollmentToken["status"] {
  if (t.revokedAt) return "revoked";
  if (t.expiresAt.getTime() <= now.getTime()) return "expired";
  if (t.usesLeft <= 0) return "used-up";
  return "usable";
}

export class EnrollmentService {
  constructor(private readonly deps: EnrollmentServiceDeps) {}

  get serverFingerprint(): string | null {
    return this.deps.serverFingerprint;
  }

  // ---- enrollment tokens (administrators) ---------------------------------

  private async tokenView(
    t: EnrollmentTokenRecord,
    policyNames?: Map<string, string>,
  ): Promise<EnrollmentToken> {
    let policy: string | null = null;
    if (t.policyId) {
      policy =
        policyNames?.get(t.policyId) ?? (await this.deps.store.getPolicy(t.policyId))?.name ?? t.policyId;
    }
    return {
      id: t.id,
      createdBy: t.createdBy,
      createdAt: t.createdAt.toISOString(),
      expiresAt: t.expiresAt.toISOString(),
      maxUses: t.maxUses,
      usesLeft: t.usesLeft,
      policy,
      autoApprove: t.autoApprove,
      autoAssign: t.autoAssign !== false,
      revokedAt: t.revokedAt?.toISOString() ?? null,
      status: tokenStatus(t, this.deps.clock.now()),
    };
  }

  async createToken(c: Caller, req: CreateEnrollmentTokenRequest): Promise<CreatedEnrollmentToken> {
    requirePermission(c, "tokens.create");
    const policy = req.policy ? await this.deps.policies.resolve(req.policy) : null;
    const now = this.deps.clock.now();
    const secret = generateSecret(ENROLLMENT_TOKEN_PREFIX);
    const uses = req.uses ?? 1;
    const rec: EnrollmentTokenRecord = {
      id: randomBytes(8).toString("hex"),
      tokenHash: secret.hash,
      createdBy: c.user.name,
      createdAt: now,
      expiresAt: new Date(now.getTime() + (req.expiresInMinutes ?? DEFAULT_TOKEN_MINUTES) * 60_000),
      maxUses: uses,
      usesLeft: uses,
      policyId: policy?.id ?? null,
      autoApprove: req.autoApprove ?? false,
      revokedAt: null,
      autoAssign: req.autoAssign ?? true,
    };
    await this.deps.store.createEnrollmentToken(rec);
    await this.deps.audit.by(c, "enrollment_token.create", `enrollment-token:${rec.id}`, {
      uses,
      expiresAt: rec.expiresAt.toISOString(),
      policy: policy?.name ?? null,
      autoApprove: rec.autoApprove,
      autoAssign: rec.autoAssign,
    });
    return {
      ...(await this.tokenView(rec, new Map(policy ? [[policy.id, policy.name]] : []))),
      token: secret.token,
      serverFingerprint: this.deps.serverFingerprint,
    };
  }

  async listTokens(c: Caller): Promise<EnrollmentToken[]> {
    requirePermission(c, "tokens.create");
    const [tokens, policies] = await Promise.all([
      this.deps.store.listEnrollmentTokens(),
      this.deps.store.listPolicies(),
    ]);
    const names = new Map(policies.map((p) => [p.id, p.name]));
    return Promise.all(tokens.map((t) => this.tokenView(t, names)));
  }

  async revokeToken(c: Caller, id: string): Promise<void> {
    requirePermission(c, "tokens.create");
    const t = await this.deps.store.getEnrollmentToken(id);
    if (!t) throw new StrataError("NOT_FOUND", `enrollment token ${id} does not exist`, { subject: id });
    if (!(await this.deps.store.revokeEnrollmentToken(id, this.deps.clock.now()))) return; // already revoked
    await this.deps.audit.by(c, "enrollment_token.revoke", `enrollment-token:${id}`, {
      usesLeft: t.usesLeft,
    });
  }

  // ---- enrollment (agents) -------------------------------------------------

  /**
   * `POST /enroll`. `token` is the bearer secret (the HTTP layer checked its
   * prefix), `key` the Idempotency-Key. A retry with the same key and token
   * within 24 hours gets the same endpoint and a fresh credential that
   * replaces the one of the lost response (only hashes are stored, so the
   * first cannot be repeated), and takes no second use of the token.
   */
  async enroll(
    token: string,
    key: string | undefined,
    facts: EndpointFacts,
    remoteAddr: string,
  ): Promise<EnrollResponse> {
    const { store, clock } = this.deps;
    if (!key || !/^[0-9a-fA-F]{32}$/.test(key)) {
      throw new StrataError("INVALID_ARGUMENT", "send an Idempotency-Key header of 32 hex digits", {
        hint: "one random key per enrollment attempt; repeat it when retrying after a lost response",
      });
    }
    if (!looksLikeSecret(ENROLLMENT_TOKEN_PREFIX, token)) throw badEnrollmentToken();
    checkFactsSize(facts);
    const t = await store.getEnrollmentTokenByHash(hashToken(token));
    if (!t || t.revokedAt) throw badEnrollmentToken();
    const keyHash = hashToken(`${t.id}/${key.toLowerCase()}`);
    const now = clock.now();
    const prior = await store.findEnrollment(t.id, keyHash);
    if (prior) return this.repeatEnrollment(prior, t, remoteAddr);
    if (tokenStatus(t, now) !== "usable") throw badEnrollmentToken();

    const credential = generateSecret(ENDPOINT_CREDENTIAL_PREFIX);
    const endpointId = randomId("ep_");
    // Precedence (server.md, "Auto-assignment rules"): the token's own
    // policy when it auto-approves with one; else the first matching rule
    // (unless the token excludes the rules); else the token's auto-approve
    // with the default policy; else pending. A clone stays pending whatever
    // this says (the store decides, in the enrollment's transaction).
    let autoApprove: CvdRecord | null = null;
    let assignedBy: string | null = null;
    const rule =
      (t.autoApprove && t.policyId) || t.autoAssign === false || !this.deps.autoassign
        ? null
        : await this.deps.autoassign.match(facts.hostname, { ...facts });
    if (t.autoApprove || rule) {
      autoApprove = {
        id: randomId("cvd_"),
        endpointId,
        policyId: rule ? rule.policyId : (t.policyId ?? DEFAULT_POLICY_ID),
        createdAt: now,
        snoozedUntil: null,
        ...(rule?.tags.length ? { tags: rule.tags } : {}),
      };
      assignedBy = rule ? `autoassign-rule:${rule.name}` : `enrollment-token:${t.id}`;
    }
    let ep: EndpointRecord | null;
    try {
      ep = await store.enrollEndpoint(
        {
          id: endpointId,
          hostname: facts.hostname,
          machineId: facts.machineId,
          facts: { ...facts },
          credentialHash: credential.hash,
          enrollmentTokenId: t.id,
          enrollKeyHash: keyHash,
          createdAt: now,
        },
        { at: now, autoApprove },
      );
    } catch (e) {
      // A concurrent retry with the same key won: answer as a retry.
      const won = isStrataError(e, "ALREADY_EXISTS") ? await store.findEnrollment(t.id, keyHash) : null;
      if (won) return this.repeatEnrollment(won, t, remoteAddr);
      throw e;
    }
    if (!ep) throw badEnrollmentToken(); // used up or expired meanwhile
    return this.enrolled(ep, t, credential.token, remoteAddr, "endpoint.enroll", {
      hostname: ep.hostname,
      machineId: ep.machineId,
      duplicateMachineId: ep.duplicateMachineId,
      cvdId: ep.cvdId,
      ...(ep.cvdId && assignedBy ? { assignedBy, policyId: autoApprove?.policyId } : {}),
      ...(ep.cvdId && rule?.tags.length ? { tags: rule.tags } : {}),
    });
  }

  /** Audit the enrollment (the token is the actor) and answer it. */
  private async enrolled(
    ep: EndpointRecord,
    t: EnrollmentTokenRecord,
    credential: string,
    remoteAddr: string,
    action: string,
    detail: Record<string, unknown>,
  ): Promise<EnrollResponse> {
    await this.deps.audit.record({
      actor: `enrollment-token:${t.id}`,
      action,
      object: `endpoint:${ep.id}`,
      detail: { ...detail, state: ep.state },
      remoteAddr,
    });
    return { endpointId: ep.id, credential, state: ep.state, serverFingerprint: this.deps.serverFingerprint };
  }

  private async repeatEnrollment(
    ep: EndpointRecord,
    t: EnrollmentTokenRecord,
    remoteAddr: string,
  ): Promise<EnrollResponse> {
    if (this.deps.clock.now().getTime() - ep.createdAt.getTime() > IDEMPOTENCY_WINDOW_MS) {
      throw new StrataError("INVALID_ARGUMENT", "this Idempotency-Key was used more than 24 hours ago", {
        hint: "use a new random key for a new enrollment",
      });
    }
    const credential = generateSecret(ENDPOINT_CREDENTIAL_PREFIX);
    await this.deps.store.setEndpointCredential(ep.id, credential.hash);
    return this.enrolled(ep, t, credential.token, remoteAddr, "endpoint.enroll_retry", {});
  }

  // ---- endpoints (agents) --------------------------------------------------

  /** The endpoint behind a `sep_…` credential; WRONG_PASSWORD (401) otherwise. Never cached: disabling takes effect at once. */
  async authenticateEndpoint(credential: string): Promise<AgentIdentity> {
    if (!looksLikeSecret(ENDPOINT_CREDENTIAL_PREFIX, credential)) throw badCredential();
    const ep = await this.deps.store.getEndpointByCredentialHash(hashToken(credential));
    if (!ep) throw badCredential();
    const now = this.deps.clock.now();
    if (!ep.lastSeenAt || now.getTime() - ep.lastSeenAt.getTime() > TOUCH_EVERY_MS) {
      await this.deps.store.touchEndpoint(ep.id, now);
    }
    return { endpointId: ep.id, cvdId: ep.cvdId, state: ep.state };
  }

  /**
   * `PUT /agent/facts`: the facts the agent reads now replace those of the
   * enrollment (and the hostname with them), so collection rules and
   * driver profiles match the endpoint as it is. The machine id is the
   * enrollment's: a different one is stored in the facts but changes
   * neither the endpoint's machine id nor its duplicate flag. Not audited
   * (claims the agent repeats, not administrative acts).
   */
  async updateFacts(agent: AgentIdentity, facts: EndpointFacts): Promise<void> {
    checkFactsSize(facts);
    await this.deps.store.updateEndpointFacts(agent.endpointId, facts.hostname, { ...facts });
  }

  /** `GET /agent/self`: the CVD and its policy only while active; `tasks` as the task service lists them. */
  async self(agent: AgentIdentity, tasks: AgentSelf["tasks"] = []): Promise<AgentSelf> {
    const { store, clock, snapshotsOf } = this.deps;
    let cvd: AgentSelf["cvd"] = null;
    if (agent.state === "active" && agent.cvdId) {
      const row = await store.getCvd(agent.cvdId);
      const policy = row ? await store.getPolicy(row.policyId) : null;
      if (row && policy) {
        const snaps = await snapshotsOf(row.id);
        const latest = snaps.reduce<CvdSnapshotSummary | null>(
          (best, s) => (best === null || s.time > best.time ? s : best),
          null,
        );
        cvd = {
          id: row.id,
          latestSnapshot: latest?.id ?? null,
          policy: policyDocOf(policy),
          snoozedUntil: row.snoozedUntil?.toISOString() ?? null,
          syncRequestedAt: row.syncRequestedAt?.toISOString() ?? null,
        };
      }
    }
    return {
      endpointId: agent.endpointId,
      state: agent.state,
      cvd,
      tasks,
      serverTime: clock.now().toISOString(),
    };
  }
}
