import { StrataError } from "@strata/core";
import type Database from "better-sqlite3";
import {
  type CvdRecord,
  type CvdSummary,
  type EndpointFilter,
  type EndpointRecord,
  type EndpointState,
  type EnrollmentTokenRecord,
  type FleetStore,
  type NewEndpoint,
  type PolicyRecord,
  type PolicyUsage,
  policyInUse,
  sameCvdRefusal,
} from "./fleet-store.js";

type Db = Database.Database;

interface PolicyRow {
  id: string;
  name: string;
  version: number;
  body: string;
  created_at: number;
  updated_at: number;
}
interface EnrollmentTokenRow {
  id: string;
  token_hash: string;
  created_by: string;
  created_at: number;
  expires_at: number;
  max_uses: number;
  uses_left: number;
  policy_id: string | null;
  auto_approve: number;
  revoked_at: number | null;
  autoassign: number;
}
interface EndpointRow {
  id: string;
  hostname: string;
  machine_id: string;
  facts: string;
  state: EndpointState;
  duplicate_machine_id: number;
  credential_hash: string;
  enrollment_token_id: string | null;
  enroll_key_hash: string | null;
  created_at: number;
  last_seen_at: number | null;
  cvd_id: string | null;
}
interface CvdRow {
  id: string;
  endpoint_id: string | null;
  policy_id: string;
  created_at: number;
  snoozed_until: number | null;
  sync_requested_at: number | null;
  sync_requested_by: string | null;
  snoozed_by: string | null;
  endpoint_hostname: string | null;
  policy_name: string;
  policy_version: number;
  tags: string;
}

const ms = (d: Date | null) => (d === null ? null : d.getTime());
const date = (n: number | null) => (n === null ? null : new Date(n));

const toPolicy = (r: PolicyRow): PolicyRecord => ({
  id: r.id,
  name: r.name,
  version: r.version,
  body: JSON.parse(r.body) as Record<string, unknown>,
  createdAt: new Date(r.created_at),
  updatedAt: new Date(r.updated_at),
});
const toToken = (r: EnrollmentTokenRow): EnrollmentTokenRecord => ({
  id: r.id,
  tokenHash: r.token_hash,
  createdBy: r.created_by,
  createdAt: new Date(r.created_at),
  expiresAt: new Date(r.expires_at),
  maxUses: r.max_uses,
  usesLeft: r.uses_left,
  policyId: r.policy_id,
  autoApprove: r.auto_approve !== 0,
  revokedAt: date(r.revoked_at),
  autoAssign: r.autoassign !== 0,
});
const toEndpoint = (r: EndpointRow): EndpointRecord => ({
  id: r.id,
  hostname: r.hostname,
  machineId: r.machine_id,
  facts: JSON.parse(r.facts) as Record<string, unknown>,
  state: r.state,
  duplicateMachineId: r.duplicate_machine_id !== 0,
  credentialHash: r.credential_hash,
  enrollmentTokenId: r.enrollment_token_id,
  enrollKeyHash: r.enroll_key_hash,
  createdAt: new Date(r.created_at),
  lastSeenAt: date(r.last_seen_at),
  cvdId: r.cvd_id,
});
const toCvd = (r: CvdRow): CvdSummary => ({
  id: r.id,
  endpointId: r.endpoint_id,
  policyId: r.policy_id,
  createdAt: new Date(r.created_at),
  snoozedUntil: date(r.snoozed_until),
  syncRequestedAt: date(r.sync_requested_at),
  syncRequestedBy: r.sync_requested_by,
  snoozedBy: r.snoozed_by,
  endpointHostname: r.endpoint_hostname,
  policyName: r.policy_name,
  policyVersion: r.policy_version,
  tags: (JSON.parse(r.tags) as string[]).sort(),
});

/** Endpoints with their CVD id: one LEFT JOIN on the unique cvds.endpoint_id. */
const ENDPOINTS = "SELECT e.*, c.id AS cvd_id FROM endpoints e LEFT JOIN cvds c ON c.endpoint_id = e.id";
const CVDS = `SELECT c.*, e.hostname AS endpoint_hostname, p.name AS policy_name, p.version AS policy_version,
    (SELECT json_group_array(t.tag) FROM cvd_tags t WHERE t.cvd_id = c.id) AS tags
  FROM cvds c JOIN upload_policies p ON p.id = c.policy_id LEFT JOIN endpoints e ON e.id = c.endpoint_id`;

const isUnique = (e: unknown) =>
  ["SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"].includes((e as { code?: string }).code ?? "");
const isForeignKey = (e: unknown) => (e as { code?: string }).code === "SQLITE_CONSTRAINT_FOREIGNKEY";

/**
 * FleetStore on SQLite. Multi-statement writes run in IMMEDIATE
 * transactions: the write lock is taken first, so a check and the write it
 * guards see the same database (enrollment's duplicate check, approval).
 */
export class SqliteFleetStore implements FleetStore {
  protected readonly db: Db;

  constructor(db: Db) {
    this.db = db;
  }

  private insertPolicy(p: PolicyRecord, orIgnore: boolean): void {
    this.db
      .prepare(
        `INSERT ${orIgnore ? "OR IGNORE " : ""}INTO upload_policies (id, name, version, body, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?)`,
      )
      .run(p.id, p.name, p.version, JSON.stringify(p.body), p.createdAt.getTime(), p.updatedAt.getTime());
  }

  async createPolicy(p: PolicyRecord): Promise<void> {
    try {
      this.insertPolicy(p, false);
    } catch (e) {
      if (isUnique(e))
        throw new StrataError("ALREADY_EXISTS", `policy ${p.name} already exists`, { subject: p.name });
      throw e;
    }
  }

  async ensurePolicy(p: PolicyRecord): Promise<PolicyRecord> {
    this.insertPolicy(p, true);
    return (await this.getPolicy(p.id)) ?? (await this.getPolicyByName(p.name))!;
  }

  async getPolicy(id: string): Promise<PolicyRecord | null> {
    const r = this.db.prepare("SELECT * FROM upload_policies WHERE id = ?").get(id) as PolicyRow | undefined;
    return r ? toPolicy(r) : null;
  }

  async getPolicyByName(name: string): Promise<PolicyRecord | null> {
    const r = this.db.prepare("SELECT * FROM upload_policies WHERE name = ?").get(name) as
      | PolicyRow
      | undefined;
    return r ? toPolicy(r) : null;
  }

  async listPolicies(): Promise<PolicyRecord[]> {
    return (this.db.prepare("SELECT * FROM upload_policies ORDER BY name").all() as PolicyRow[]).map(
      toPolicy,
    );
  }

  async updatePolicy(
    id: string,
    p: { name: string; body: Record<string, unknown> },
    at: Date,
  ): Promise<PolicyRecord | null> {
    try {
      const r = this.db
        .prepare(
          `UPDATE upload_policies SET name = ?, body = ?, version = version + 1, updated_at = ?
           WHERE id = ? RETURNING *`,
        )
        .get(p.name, JSON.stringify(p.body), at.getTime(), id) as PolicyRow | undefined;
      return r ? toPolicy(r) : null;
    } catch (e) {
      if (isUnique(e))
        throw new StrataError("ALREADY_EXISTS", `policy ${p.name} already exists`, { subject: p.name });
      throw e;
    }
  }

  async policyUsage(id: string): Promise<PolicyUsage> {
    const r = this.db
      .prepare(
        `SELECT (SELECT count(*) FROM cvds WHERE policy_id = ?) AS cvds,
                (SELECT count(*) FROM enrollment_tokens WHERE policy_id = ?) AS tokens,
                (SELECT count(*) FROM autoassign_rules WHERE policy_id = ?) AS rules`,
      )
      .get(id, id, id) as { cvds: number; tokens: number; rules: number };
    return { cvds: r.cvds, enrollmentTokens: r.tokens, autoassignRules: r.rules };
  }

  async deletePolicy(id: string): Promise<boolean> {
    try {
      return this.db.prepare("DELETE FROM upload_policies WHERE id = ?").run(id).changes > 0;
    } catch (e) {
      if (isForeignKey(e)) throw policyInUse(id, await this.policyUsage(id));
      throw e;
    }
  }

  async createEnrollmentToken(t: EnrollmentTokenRecord): Promise<void> {
    try {
      this.db
        .prepare(
          `INSERT INTO enrollment_tokens (id, token_hash, created_by, created_at, expires_at, max_uses,
             uses_left, policy_id, auto_approve, revoked_at, autoassign)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          t.id,
          t.tokenHash,
          t.createdBy,
          t.createdAt.getTime(),
          t.expiresAt.getTime(),
          t.maxUses,
          t.usesLeft,
          t.policyId,
          t.autoApprove ? 1 : 0,
          ms(t.revokedAt),
          t.autoAssign === false ? 0 : 1,
        );
    } catch (e) {
      if (isUnique(e)) throw new StrataError("ALREADY_EXISTS", `enrollment token ${t.id} already exists`);
      if (isForeignKey(e)) throw new StrataError("NOT_FOUND", `policy ${t.policyId} does not exist`);
      throw e;
    }
  }

  async getEnrollmentToken(id: string): Promise<EnrollmentTokenRecord | null> {
    const r = this.db.prepare("SELECT * FROM enrollment_tokens WHERE id = ?").get(id) as
      | EnrollmentTokenRow
      | undefined;
    return r ? toToken(r) : null;
  }

  async getEnrollmentTokenByHash(tokenHash: string): Promise<EnrollmentTokenRecord | null> {
    const r = this.db.prepare("SELECT * FROM enrollment_tokens WHERE token_hash = ?").get(tokenHash) as
      | EnrollmentTokenRow
      | undefined;
    return r ? toToken(r) : null;
  }

  async listEnrollmentTokens(): Promise<EnrollmentTokenRecord[]> {
    return (
      this.db
        .prepare("SELECT * FROM enrollment_tokens ORDER BY created_at DESC, id")
        .all() as EnrollmentTokenRow[]
    ).map(toToken);
  }

  async revokeEnrollmentToken(id: string, at: Date): Promise<boolean> {
    return (
      this.db
        .prepare("UPDATE enrollment_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
        .run(at.getTime(), id).changes > 0
    );
  }

  async enrollEndpoint(
    e: NewEndpoint,
    opts: { at: Date; autoApprove: CvdRecord | null },
  ): Promise<EndpointRecord | null> {
    const run = this.db.transaction((): boolean => {
      const took = this.db
        .prepare(
          `UPDATE enrollment_tokens SET uses_left = uses_left - 1
           WHERE id = ? AND uses_left > 0 AND revoked_at IS NULL AND expires_at > ?`,
        )
        .run(e.enrollmentTokenId, opts.at.getTime()).changes;
      if (took === 0) return false;
      const duplicate =
        this.db.prepare("SELECT 1 FROM endpoints WHERE machine_id = ? LIMIT 1").get(e.machineId) !==
        undefined;
      const approve = opts.autoApprove !== null && !duplicate;
      this.db
        .prepare(
          `INSERT INTO endpoints (id, hostname, machine_id, facts, state, duplicate_machine_id, credential_hash,
             enrollment_token_id, enroll_key_hash, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          e.id,
          e.hostname,
          e.machineId,
          JSON.stringify(e.facts),
          approve ? "active" : "pending",
          duplicate ? 1 : 0,
          e.credentialHash,
          e.enrollmentTokenId,
          e.enrollKeyHash,
          e.createdAt.getTime(),
        );
      if (approve && opts.autoApprove) this.insertCvd({ ...opts.autoApprove, endpointId: e.id });
      return true;
    });
    try {
      if (!run.immediate()) return null;
    } catch (err) {
      if (isUnique(err))
        throw new StrataError("ALREADY_EXISTS", `endpoint ${e.id} or its enrollment already exists`);
      if (isForeignKey(err)) throw new StrataError("NOT_FOUND", "the CVD's policy does not exist");
      throw err;
    }
    return this.getEndpoint(e.id);
  }

  private insertCvd(c: CvdRecord): void {
    this.db
      .prepare(
        "INSERT INTO cvds (id, endpoint_id, policy_id, created_at, snoozed_until) VALUES (?, ?, ?, ?, ?)",
      )
      .run(c.id, c.endpointId, c.policyId, c.createdAt.getTime(), ms(c.snoozedUntil));
    if (c.tags?.length) {
      const tag = this.db.prepare("INSERT INTO cvd_tags (cvd_id, tag) VALUES (?, ?) ON CONFLICT DO NOTHING");
      for (const t of c.tags) tag.run(c.id, t);
    }
  }

  async findEnrollment(tokenId: string, keyHash: string): Promise<EndpointRecord | null> {
    const r = this.db
      .prepare(`${ENDPOINTS} WHERE e.enrollment_token_id = ? AND e.enroll_key_hash = ?`)
      .get(tokenId, keyHash) as EndpointRow | undefined;
    return r ? toEndpoint(r) : null;
  }

  async setEndpointCredential(id: string, credentialHash: string): Promise<boolean> {
    return (
      this.db.prepare("UPDATE endpoints SET credential_hash = ? WHERE id = ?").run(credentialHash, id)
        .changes > 0
    );
  }

  async getEndpoint(id: string): Promise<EndpointRecord | null> {
    const r = this.db.prepare(`${ENDPOINTS} WHERE e.id = ?`).get(id) as EndpointRow | undefined;
    return r ? toEndpoint(r) : null;
  }

  async getEndpointByCredentialHash(credentialHash: string): Promise<EndpointRecord | null> {
    const r = this.db.prepare(`${ENDPOINTS} WHERE e.credential_hash = ?`).get(credentialHash) as
      | EndpointRow
      | undefined;
    return r ? toEndpoint(r) : null;
  }

  async listEndpoints(f: EndpointFilter = {}): Promise<EndpointRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.state !== undefined) {
      where.push("e.state = ?");
      args.push(f.state);
    }
    if (f.machineId !== undefined) {
      where.push("e.machine_id = ?");
      args.push(f.machineId);
    }
    const sql = `${ENDPOINTS} ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY e.created_at, e.id`;
    return (this.db.prepare(sql).all(...args) as EndpointRow[]).map(toEndpoint);
  }

  async touchEndpoint(id: string, at: Date): Promise<void> {
    this.db.prepare("UPDATE endpoints SET last_seen_at = ? WHERE id = ?").run(at.getTime(), id);
  }

  async updateEndpointFacts(id: string, hostname: string, facts: Record<string, unknown>): Promise<boolean> {
    return (
      this.db
        .prepare("UPDATE endpoints SET hostname = ?, facts = ? WHERE id = ?")
        .run(hostname, JSON.stringify(facts), id).changes > 0
    );
  }

  async approveEndpoint(
    id: string,
    cvd: { create: CvdRecord } | { attach: string },
  ): Promise<EndpointRecord> {
    const run = this.db.transaction(() => {
      const ep = this.db.prepare(`${ENDPOINTS} WHERE e.id = ?`).get(id) as EndpointRow | undefined;
      if (!ep) throw new StrataError("NOT_FOUND", `endpoint ${id} does not exist`, { subject: id });
      if (ep.state === "active")
        throw new StrataError("INVALID_ARGUMENT", `endpoint ${id} is already active`, { subject: id });
      if ("create" in cvd) {
        if (ep.cvd_id) throw sameCvdRefusal(id, ep.cvd_id);
        this.insertCvd({ ...cvd.create, endpointId: id });
      } else {
        if (ep.cvd_id && ep.cvd_id !== cvd.attach) throw sameCvdRefusal(id, ep.cvd_id);
        const owner = this.db
          .prepare(
            "SELECT c.endpoint_id AS id, e.state FROM cvds c LEFT JOIN endpoints e ON e.id = c.endpoint_id WHERE c.id = ?",
          )
          .get(cvd.attach) as { id: string | null; state: EndpointState | null } | undefined;
        if (!owner)
          throw new StrataError("NOT_FOUND", `CVD ${cvd.attach} does not exist`, { subject: cvd.attach });
        if (owner.id !== null && owner.id !== id && owner.state !== "disabled") {
          throw new StrataError(
            "INVALID_ARGUMENT",
            `CVD ${cvd.attach} belongs to endpoint ${owner.id}, which is ${owner.state}`,
            { subject: cvd.attach, hint: `disable endpoint ${owner.id} first (it is being replaced)` },
          );
        }
        this.db.prepare("UPDATE cvds SET endpoint_id = ? WHERE id = ?").run(id, cvd.attach);
      }
      this.db.prepare("UPDATE endpoints SET state = 'active' WHERE id = ?").run(id);
    });
    try {
      run.immediate();
    } catch (e) {
      if (isForeignKey(e)) throw new StrataError("NOT_FOUND", "the CVD's policy does not exist");
      if (isUnique(e)) throw new StrataError("ALREADY_EXISTS", "that CVD id is taken");
      throw e;
    }
    return (await this.getEndpoint(id))!;
  }

  async disableEndpoint(id: string): Promise<boolean> {
    return this.db.prepare("UPDATE endpoints SET state = 'disabled' WHERE id = ?").run(id).changes > 0;
  }

  async getCvd(id: string): Promise<CvdSummary | null> {
    const r = this.db.prepare(`${CVDS} WHERE c.id = ?`).get(id) as CvdRow | undefined;
    return r ? toCvd(r) : null;
  }

  async listCvds(): Promise<CvdSummary[]> {
    return (this.db.prepare(`${CVDS} ORDER BY c.created_at, c.id`).all() as CvdRow[]).map(toCvd);
  }

  async setCvdPolicy(id: string, policyId: string): Promise<boolean> {
    try {
      return this.db.prepare("UPDATE cvds SET policy_id = ? WHERE id = ?").run(policyId, id).changes > 0;
    } catch (e) {
      if (isForeignKey(e))
        throw new StrataError("NOT_FOUND", `policy ${policyId} does not exist`, { subject: policyId });
      throw e;
    }
  }

  async requestCvdSync(id: string, at: Date, by: string): Promise<boolean> {
    return (
      this.db
        .prepare("UPDATE cvds SET sync_requested_at = ?, sync_requested_by = ? WHERE id = ?")
        .run(at.getTime(), by, id).changes > 0
    );
  }

  async setCvdSnooze(id: string, until: Date | null, by: string | null): Promise<boolean> {
    return (
      this.db
        .prepare("UPDATE cvds SET snoozed_until = ?, snoozed_by = ? WHERE id = ?")
        .run(ms(until), until === null ? null : by, id).changes > 0
    );
  }
}
