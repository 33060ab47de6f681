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
    tags: c.tags,
  };
}

export class EndpointService {
  constructor(private readonly deps: EndpointServiceDeps) {}

  private async endpoint(id: string): Promise<EndpointRecord> {
    const e = await this.deps.store.getEndpoint(id);
    if (!e) {
      throw new StrataError("NOT_FOUND", `endpoint ${id} does not exist`, {
        subject: id,
        hint: "see `strata endpoints list`",
      });
    }
    return e;
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
    };
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
