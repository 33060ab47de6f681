import type { AuditRecord } from "@strata/catalog";
import { StrataError } from "@strata/core";
import type { AuditEntry, AuditQuery } from "@strata/protocol";
import { type Caller, requirePermission, type ServiceDeps } from "./context.js";

/** Who did what to which object, from where. `detail` MUST NOT hold a secret. */
export interface AuditEvent {
  actor: string;
  action: string;
  object: string;
  detail?: Record<string, unknown>;
  remoteAddr: string;
}

export function auditView(r: AuditRecord): AuditEntry {
  return {
    id: r.id,
    at: r.at.toISOString(),
    actor: r.actor,
    action: r.action,
    object: r.object,
    detail: r.detail,
    remoteAddr: r.remoteAddr,
  };
}

export class AuditService {
  constructor(private readonly deps: ServiceDeps) {}

  async record(e: AuditEvent): Promise<void> {
    await this.deps.store.appendAudit({
      at: this.deps.clock.now(),
      actor: e.actor,
      action: e.action,
      object: e.object,
      detail: e.detail ?? {},
      remoteAddr: e.remoteAddr,
    });
  }

  /** The caller's action on `object`. */
  async by(c: Caller, action: string, object: string, detail?: Record<string, unknown>): Promise<void> {
    await this.record({ actor: c.user.name, action, object, detail, remoteAddr: c.remoteAddr });
  }

  async list(c: Caller, q: AuditQuery): Promise<AuditEntry[]> {
    requirePermission(c, "audit.read");
    const date = (s: string | undefined, name: string) => {
      if (s === undefined) return undefined;
      const d = new Date(s);
      if (Number.isNaN(d.getTime())) throw new StrataError("INVALID_ARGUMENT", `${name} is not a date: ${s}`);
      return d;
    };
    const rows = await this.deps.store.listAudit({
      since: date(q.since, "since"),
      until: date(q.until, "until"),
      actor: q.actor,
      action: q.action,
      object: q.object,
      before: q.before,
      limit: q.limit ?? 100,
    });
    return rows.map(auditView);
  }
}
