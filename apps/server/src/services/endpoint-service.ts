/**
 * Endpoints and their CVDs, for administrators: list, show, approve
 * (a new CVD, or an existing one for a replacement device), disable; a
 * CVD's policy and snapshots.
 */
import type { CvdSummary, EndpointRecord } from "@strata/catalog";
import { StrataError } from "@strata/core";
import type {
  ApproveEndpointRequest,
  Cvd,
  CvdSnapshotSummary,
  Endpoint,
  EndpointDetail,
  EndpointRemote,
  EndpointState,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type Caller, requirePermission, type ServiceDeps } from "./context.js";
import type { SnapshotsOf } from "./enrollment-service.js";
import { DEFAULT_POLICY_ID, type PolicyService } from "./policy-service.js";
import { randomId } from "./tokens.js";

export interface EndpointServiceDeps extends ServiceDeps {
  audit: AuditService;
  policies: PolicyService;
  snapshotsOf: SnapshotsOf;
}

/** An administrator's snooze lasts at most this long, as a user's does at the agent (agent.md, "Snooze"). */
export const MAX_SNOOZE_MINUTES = 24 * 60;

export function endpointView(e: EndpointRecord): Endpoint {
  const os = (e.facts.os as { prettyName?: unknown } | undefined)?.prettyName;
  return {
    id: e.id,
    hostname: e.hostname,
    machineId: e.machineId,
    state: e.state,
    duplicateMachineId: e.duplicateMachineId,
    cvdId: e.cvdId,
    os: typeof os === "string" ? os : null,
    createdAt: e.createdAt.toISOString(),
    lastSeenAt: e.lastSeenAt?.toISOString() ?? null,
  };
}

export function cvdView(c: CvdSummary): Cvd {
  return {
    id: c.id,
    endpointId: c.endpointId,
    hostname: c.endpointHostname,
    policyId: c.policyId,
    policy: c.policyName,
    policyVersion: c.policyVersion,
    createdAt: c.createdAt.toISOString(),
    snoozedUntil: c.snoozedUntil?.toISOString() ?? null,
    snoozedBy: c.snoozedBy,
    syncRequestedAt: c.syncRequestedAt?.toISOString() ?? null,
    syncRequestedBy: c.syncRequestedBy,
    tags: c.tags,
  };
}

/** The endpoint `id`, or NOT_FOUND naming it. */
export async function requireEndpoint(
  store: { getEndpoint(id: string): Promise<EndpointRecord | null> },
  id: string,
): Promise<EndpointRecord> {
  const e = await store.getEndpoint(id);
  if (!e) {
    throw new StrataError("NOT_FOUND", `endpoint ${id} does not exist`, {
      subject: id,
      hint: "see `strata endpoints list`",
    });
  }
  return e;
}

export class EndpointService {
  constructor(private readonly deps: EndpointServiceDeps) {}

  private endpoint(id: string): Promise<EndpointRecord> {
    return requireEndpoint(this.deps.store, id);
  }

  private async cvd(id: string): Promise<CvdSummary> {
    const c = await this.deps.store.getCvd(id);
    if (!c) {
      throw new StrataError("NOT_FOUND", `CVD ${id} does not exist`, {
        subject: id,
        hint: "see `strata cvd list`",
      });
    }
    return c;
  }

  private async detail(e: EndpointRecord): Promise<EndpointDetail> {
    const same = await this.deps.store.listEndpoints({ machineId: e.machineId });
    return {
      ...endpointView(e),
      facts: e.facts,
      enrollmentTokenId: e.enrollmentTokenId,
      sameMachineId: same.map((x) => x.id).filter((id) => id !== e.id),
      remote: e.cvdId ? await this.remote(e.cvdId) : null,
    };
  }

  /** The administrator's requests to the CVD's agent, and whether the sync was served. */
  private async remote(cvdId: string): Promise<EndpointRemote | null> {
    const c = await this.deps.store.getCvd(cvdId);
    if (!c) return null;
    let latest: string | null = null;
    for (const s of await this.deps.snapshotsOf(cvdId))
      if (latest === null || s.time > latest) latest = s.time;
    const now = this.deps.clock.now().getTime();
    const snoozed = c.snoozedUntil && c.snoozedUntil.getTime() > now ? c.snoozedUntil : null;
    return {
      syncRequestedAt: c.syncRequestedAt?.toISOString() ?? null,
      syncRequestedBy: c.syncRequestedBy,
      sync: c.syncRequestedAt
        ? latest !== null && new Date(latest).getTime() >= c.syncRequestedAt.getTime()
          ? "done"
          : "pending"
        : null,
      snoozedUntil: snoozed?.toISOString() ?? null,
      snoozedBy: snoozed ? c.snoozedBy : null,
      latestSnapshotAt: latest,
    };
  }

  /** The endpoint's CVD, which only an active endpoint's agent acts on. */
  private async activeCvdOf(e: EndpointRecord, what: string): Promise<string> {
    if (e.state !== "active" || !e.cvdId) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `endpoint ${e.id} is ${e.state}: there is no agent to ${what}`,
        {
          subject: e.id,
          hint:
            e.state === "pending"
              ? `approve it first (\`strata endpoints approve ${e.id}\`)`
              : "only an active endpoint uploads",
        },
      );
    }
    return e.cvdId;
  }

  /**
   * `strata endpoints sync`: the agent uploads once when it next asks the
   * server (within a minute; right away if it is idle), even while snoozed.
   * A newer request replaces an unserved one (they coalesce).
   */
  async requestSync(c: Caller, id: string): Promise<EndpointDetail> {
    requirePermission(c, "endpoints.control");
    const e = await this.endpoint(id);
    const cvdId = await this.activeCvdOf(e, "sync");
    await this.deps.store.requestCvdSync(cvdId, this.deps.clock.now(), `user:${c.user.name}`);
    await this.deps.audit.by(c, "endpoint.sync", `endpoint:${id}`, { hostname: e.hostname, cvdId });
    return this.detail(await this.endpoint(id));
  }

  /** `strata endpoints snooze`: no scheduled upload for `minutes` (1 to 1440); an upload in progress stops. */
  async snooze(c: Caller, id: string, minutes: number): Promise<EndpointDetail> {
    requirePermission(c, "endpoints.control");
    if (!Number.isInteger(minutes) || minutes < 1 || minutes > MAX_SNOOZE_MINUTES) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `a snooze lasts 1 to ${MAX_SNOOZE_MINUTES} minutes, not ${minutes}`,
        {
          hint: "an endpoint that never uploads is not protected: at most 24 h",
        },
      );
    }
    const e = await this.endpoint(id);
    const cvdId = await this.activeCvdOf(e, "snooze");
    const until = new Date(this.deps.clock.now().getTime() + minutes * 60_000);
    await this.deps.store.setCvdSnooze(cvdId, until, `user:${c.user.name}`);
    await this.deps.audit.by(c, "endpoint.snooze", `endpoint:${id}`, {
      hostname: e.hostname,
      cvdId,
      until: until.toISOString(),
    });
    return this.detail(await this.endpoint(id));
  }

  /** `strata endpoints snooze --resume`: ends the administrator's snooze (and, at the agent, any snooze). */
  async resume(c: Caller, id: string): Promise<EndpointDetail> {
    requirePermission(c, "endpoints.control");
    const e = await this.endpoint(id);
    const cvdId = await this.activeCvdOf(e, "resume");
    const before = await this.deps.store.getCvd(cvdId);
    if (before?.snoozedUntil) {
      await this.deps.store.setCvdSnooze(cvdId, null, null);
      await this.deps.audit.by(c, "endpoint.resume", `endpoint:${id}`, {
        hostname: e.hostname,
        cvdId,
        was: before.snoozedUntil.toISOString(),
      });
    }
    return this.detail(await this.endpoint(id));
  }

  async list(c: Caller, q: { state?: EndpointState } = {}): Promise<Endpoint[]> {
    requirePermission(c, "endpoints.read");
    return (await this.deps.store.listEndpoints(q.state ? { state: q.state } : {})).map(endpointView);
  }

  async get(c: Caller, id: string): Promise<EndpointDetail> {
    requirePermission(c, "endpoints.read");
    return this.detail(await this.endpoint(id));
  }

  /**
   * Make a pending (or disabled) endpoint active. With `cvd`, attach that
   * existing CVD (a replacement device: the CVD's old endpoint must be
   * disabled first); otherwise keep the endpoint's own CVD if it has one
   * (re-enabling), or create one with `policy` (default: the default policy).
   */
  async approve(c: Caller, id: string, req: ApproveEndpointRequest): Promise<EndpointDetail> {
    requirePermission(c, "endpoints.approve");
    const e = await this.endpoint(id);
    if (req.cvd && req.policy) {
      throw new StrataError("INVALID_ARGUMENT", "give a policy for a new CVD or an existing CVD, not both", {
        hint: "change an existing CVD's policy with `strata cvd set-policy`",
      });
    }
    if (e.cvdId && req.policy) {
      throw new StrataError("INVALID_ARGUMENT", `endpoint ${id} already has CVD ${e.cvdId}`, {
        subject: id,
        hint: `approve it without --policy, and change the CVD's policy with \`strata cvd set-policy ${e.cvdId} POLICY\``,
      });
    }
    let detail: Record<string, unknown>;
    if (req.cvd || e.cvdId) {
      const target = await this.cvd(req.cvd ?? e.cvdId!);
      await this.deps.store.approveEndpoint(id, { attach: target.id });
      detail = { cvdId: target.id, newCvd: false, previousEndpoint: target.endpointId };
    } else {
      const policy = req.policy
        ? await this.deps.policies.resolve(req.policy)
        : ((await this.deps.store.getPolicy(DEFAULT_POLICY_ID)) ??
          (await this.deps.policies.ensureDefault()));
      const cvdId = randomId("cvd_");
      await this.deps.store.approveEndpoint(id, {
        create: {
          id: cvdId,
          endpointId: id,
          policyId: policy.id,
          createdAt: this.deps.clock.now(),
          snoozedUntil: null,
        },
      });
      detail = { cvdId, newCvd: true, policy: policy.name };
    }
    await this.deps.audit.by(c, "endpoint.approve", `endpoint:${id}`, { hostname: e.hostname, ...detail });
    return this.detail(await this.endpoint(id));
  }

  async disable(c: Caller, id: string): Promise<EndpointDetail> {
    requirePermission(c, "endpoints.write");
    const e = await this.endpoint(id);
    if (e.state !== "disabled") {
      await this.deps.store.disableEndpoint(id);
      await this.deps.audit.by(c, "endpoint.disable", `endpoint:${id}`, {
        hostname: e.hostname,
        previousState: e.state,
        cvdId: e.cvdId,
      });
    }
    return this.detail(await this.endpoint(id));
  }

  // ---- CVDs ----------------------------------------------------------------

  async listCvds(c: Caller): Promise<Cvd[]> {
    requirePermission(c, "cvd.read");
    return (await this.deps.store.listCvds()).map(cvdView);
  }

  async getCvd(c: Caller, id: string): Promise<Cvd> {
    requirePermission(c, "cvd.read");
    return cvdView(await this.cvd(id));
  }

  /** Newest first. */
  async snapshots(c: Caller, id: string): Promise<CvdSnapshotSummary[]> {
    requirePermission(c, "cvd.read");
    await this.cvd(id);
    const list = await this.deps.snapshotsOf(id);
    return [...list].sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
  }

  async setCvdPolicy(c: Caller, id: string, policyRef: string): Promise<Cvd> {
    requirePermission(c, "cvd.write");
    const before = await this.cvd(id);
    const policy = await this.deps.policies.resolve(policyRef);
    if (policy.id !== before.policyId) {
      await this.deps.store.setCvdPolicy(id, policy.id);
      await this.deps.audit.by(c, "cvd.set_policy", `cvd:${id}`, {
        before: before.policyName,
        after: policy.name,
      });
    }
    return cvdView(await this.cvd(id));
  }
}
