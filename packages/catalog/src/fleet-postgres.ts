import { StrataError } from "@strata/core";
import type pg from "pg";
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
import { withTransaction } from "./postgres.js";

interface PolicyRow {
  id: string;
  name: string;
  version: number;
  body: Record<string, unknown>;
  created_at: Date;
  updated_at: Date;
}
interface EnrollmentTokenRow {
  id: string;
  token_hash: string;
  created_by: string;
  created_at: Date;
  expires_at: Date;
  max_uses: number;
  uses_left: number;
  policy_id: string | null;
  auto_approve: boolean;
  revoked_at: Date | null;
  autoassign: boolean;
}
interface EndpointRow {
  id: string;
  hostname: string;
  machine_id: string;
  facts: Record<string, unknown>;
  state: EndpointState;
  duplicate_machine_id: boolean;
  credential_hash: string;
  enrollment_token_id: string | null;
  enroll_key_hash: string | null;
  created_at: Date;
  last_seen_at: Date | null;
  cvd_id: string | null;
}
interface CvdRow {
  id: string;
  endpoint_id: string | null;
  policy_id: string;
  created_at: Date;
  snoozed_until: Date | null;
  sync_requested_at: Date | null;
  sync_requested_by: string | null;
  snoozed_by: string | null;
  endpoint_hostname: string | null;
  policy_name: string;
  policy_version: number;
  tags: string[];
}

const toPolicy = (r: PolicyRow): PolicyRecord => ({
  id: r.id,
  name: r.name,
  version: r.version,
  body: r.body,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});
const toToken = (r: EnrollmentTokenRow): EnrollmentTokenRecord => ({
  id: r.id,
  tokenHash: r.token_hash,
  createdBy: r.created_by,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  maxUses: r.max_uses,
  usesLeft: r.uses_left,
  policyId: r.policy_id,
  autoApprove: r.auto_approve,
  revokedAt: r.revoked_at,
  autoAssign: r.autoassign,
});
const toEndpoint = (r: EndpointRow): EndpointRecord => ({
  id: r.id,
  hostname: r.hostname,
  machineId: r.machine_id,
  facts: r.facts,
  state: r.state,
  duplicateMachineId: r.duplicate_machine_id,
  credentialHash: r.credential_hash,
  enrollmentTokenId: r.enrollment_token_id,
  enrollKeyHash: r.enroll_key_hash,
  createdAt: r.created_at,
  lastSeenAt: r.last_seen_at,
  cvdId: r.cvd_id,
});
const toCvd = (r: CvdRow): CvdSummary => ({
  id: r.id,
  endpointId: r.endpoint_id,
  policyId: r.policy_id,
  createdAt: r.created_at,
  snoozedUntil: r.snoozed_until,
  syncRequestedAt: r.sync_requested_at,
  syncRequestedBy: r.sync_requested_by,
  snoozedBy: r.snoozed_by,
  endpointHostname: r.endpoint_hostname,
  policyName: r.policy_name,
  policyVersion: r.policy_version,
  tags: r.tags,
});

const ENDPOINTS = "SELECT e.*, c.id AS cvd_id FROM endpoints e LEFT JOIN cvds c ON c.endpoint_id = e.id";
const CVDS = `SELECT c.*, e.hostname AS endpoint_hostname, p.name AS policy_name, p.version AS policy_version,
    ARRAY(SELECT t.tag FROM cvd_tags t WHERE t.cvd_id = c.id ORDER BY t.tag COLLATE "C") AS tags
  FROM cvds c JOIN upload_policies p ON p.id = c.policy_id LEFT JOIN endpoints e ON e.id = c.endpoint_id`;

const UNIQUE = "23505";
const FOREIGN_KEY = "23503";
const pgCode = (e: unknown) => (e as { code?: string }).code;
/** Advisory-lock class of enrollment by machine id (the catalog's own class is "Stra"). */
const ENROLL_LOCK_CLASS = 0x53456e72; // "SEnr"

/**
 * FleetStore on PostgreSQL. Checks that guard a write run in the write's
 * transaction, under a row lock (approval) or a transaction-scoped advisory
 * lock on the machine id (enrollment), so concurrent nodes agree.
 */
export class PostgresFleetStore implements FleetStore {
  protected readonly pool: pg.Pool;

  constructor(pool: pg.Pool) {
    this.pool = pool;
  }

  protected async q<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []) {
    return this.pool.query<R>(sql, params);
  }

  private tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    return withTransaction(this.pool, fn);
  }

  private insertPolicySql(onConflict: string): string {
    return `INSERT INTO upload_policies (id, name, version, body, created_at, updated_at)
      VALUES ($1, $2, $3, $4::jsonb, $5, $6) ${onConflict}`;
  }

  private policyArgs(p: PolicyRecord): unknown[] {
    return [p.id, p.name, p.version, JSON.stringify(p.body), p.createdAt, p.updatedAt];
  }

  async createPolicy(p: PolicyRecord): Promise<void> {
    try {
      await this.q(this.insertPolicySql(""), this.policyArgs(p));
    } catch (e) {
      if (pgCode(e) === UNIQUE)
        throw new StrataError("ALREADY_EXISTS", `policy ${p.name} already exists`, { subject: p.name });
      throw e;
    }
  }

  async ensurePolicy(p: PolicyRecord): Promise<PolicyRecord> {
    await this.q(this.insertPolicySql("ON CONFLICT DO NOTHING"), this.policyArgs(p));
    return (await this.getPolicy(p.id)) ?? (await this.getPolicyByName(p.name))!;
  }

  async getPolicy(id: string): Promise<PolicyRecord | null> {
    const r = await this.q<PolicyRow>("SELECT * FROM upload_policies WHERE id = $1", [id]);
    return r.rows[0] ? toPolicy(r.rows[0]) : null;
  }

  async getPolicyByName(name: string): Promise<PolicyRecord | null> {
    const r = await this.q<PolicyRow>("SELECT * FROM upload_policies WHERE name = $1", [name]);
    return r.rows[0] ? toPolicy(r.rows[0]) : null;
  }

  async listPolicies(): Promise<PolicyRecord[]> {
    return (await this.q<PolicyRow>(`SELECT * FROM upload_policies ORDER BY name COLLATE "C"`)).rows.map(
      toPolicy,
    );
  }

  async updatePolicy(
    id: string,
    p: { name: string; body: Record<string, unknown> },
    at: Date,
  ): Promise<PolicyRecord | null> {
    try {
      const r = await this.q<PolicyRow>(
        `UPDATE upload_policies SET name = $1, body = $2::jsonb, version = version + 1, updated_at = $3
         WHERE id = $4 RETURNING *`,
        [p.name, JSON.stringify(p.body), at, id],
      );
      return r.rows[0] ? toPolicy(r.rows[0]) : null;
    } catch (e) {
      if (pgCode(e) === UNIQUE)
        throw new StrataError("ALREADY_EXISTS", `policy ${p.name} already exists`, { subject: p.name });
      throw e;
    }
  }

  async policyUsage(id: string): Promise<PolicyUsage> {
    const r = await this.q<{ cvds: number; tokens: number; rules: number }>(
      `SELECT (SELECT count(*) FROM cvds WHERE policy_id = $1) AS cvds,
              (SELECT count(*) FROM enrollment_tokens WHERE policy_id = $1) AS tokens,
              (SELECT count(*) FROM autoassign_rules WHERE policy_id = $1) AS rules`,
      [id],
    );
    const row = r.rows[0]!;
    return {
      cvds: Number(row.cvds),
      enrollmentTokens: Number(row.tokens),
      autoassignRules: Number(row.rules),
    };
  }

  async deletePolicy(id: string): Promise<boolean> {
    try {
      return ((await this.q("DELETE FROM upload_policies WHERE id = $1", [id])).rowCount ?? 0) > 0;
    } catch (e) {
      if (pgCode(e) === FOREIGN_KEY) throw policyInUse(id, await this.policyUsage(id));
      throw e;
    }
  }

  async createEnrollmentToken(t: EnrollmentTokenRecord): Promise<void> {
    try {
      await this.q(
        `INSERT INTO enrollment_tokens (id, token_hash, created_by, created_at, expires_at, max_uses,
           uses_left, policy_id, auto_approve, revoked_at, autoassign)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
        [
          t.id,
          t.tokenHash,
          t.createdBy,
          t.createdAt,
          t.expiresAt,
          t.maxUses,
          t.usesLeft,
          t.policyId,
          t.autoApprove,
          t.revokedAt,
          t.autoAssign !== false,
        ],
      );
    } catch (e) {
      if (pgCode(e) === UNIQUE)
        throw new StrataError("ALREADY_EXISTS", `enrollment token ${t.id} already exists`);
      if (pgCode(e) === FOREIGN_KEY)
        throw new StrataError("NOT_FOUND", `policy ${t.policyId} does not exist`);
      throw e;
    }
  }

  async getEnrollmentToken(id: string): Promise<EnrollmentTokenRecord | null> {
    const r = await this.q<EnrollmentTokenRow>("SELECT * FROM enrollment_tokens WHERE id = $1", [id]);
    return r.rows[0] ? toToken(r.rows[0]) : null;
  }

  async getEnrollmentTokenByHash(tokenHash: string): Promise<EnrollmentTokenRecord | null> {
    const r = await this.q<EnrollmentTokenRow>("SELECT * FROM enrollment_tokens WHERE token_hash = $1", [
      tokenHash,
    ]);
    return r.rows[0] ? toToken(r.rows[0]) : null;
  }

  async listEnrollmentTokens(): Promise<EnrollmentTokenRecord[]> {
    return (
      await this.q<EnrollmentTokenRow>("SELECT * FROM enrollment_tokens ORDER BY created_at DESC, id")
    ).rows.map(toToken);
  }

  async revokeEnrollmentToken(id: string, at: Date): Promise<boolean> {
    const r = await this.q(
      "UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
      [at, id],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async enrollEndpoint(
    e: NewEndpoint,
    opts: { at: Date; autoApprove: CvdRecord | null },
  ): Promise<EndpointRecord | null> {
    try {
      const done = await this.tx(async (c) => {
        const took = await c.query(
          `UPDATE enrollment_tokens SET uses_left = uses_left - 1
           WHERE id = $1 AND uses_left > 0 AND revoked_at IS NULL AND expires_at > $2`,
          [e.enrollmentTokenId, opts.at],
        );
        if ((took.rowCount ?? 0) === 0) return false;
        // Two clones enrolling at once: the second waits here and sees the first.
        await c.query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema() || '/' || $2))", [
          ENROLL_LOCK_CLASS,
          e.machineId,
        ]);
        const dup = await c.query("SELECT 1 FROM endpoints WHERE machine_id = $1 LIMIT 1", [e.machineId]);
        const duplicate = (dup.rowCount ?? 0) > 0;
        const approve = opts.autoApprove !== null && !duplicate;
        await c.query(
          `INSERT INTO endpoints (id, hostname, machine_id, facts, state, duplicate_machine_id, credential_hash,
             enrollment_token_id, enroll_key_hash, created_at)
           VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10)`,
          [
            e.id,
            e.hostname,
            e.machineId,
            JSON.stringify(e.facts),
            approve ? "active" : "pending",
            duplicate,
            e.credentialHash,
            e.enrollmentTokenId,
            e.enrollKeyHash,
            e.createdAt,
          ],
        );
        if (approve && opts.autoApprove) await this.insertCvd(c, { ...opts.autoApprove, endpointId: e.id });
        return true;
      });
      if (!done) return null;
    } catch (err) {
      if (pgCode(err) === UNIQUE)
        throw new StrataError("ALREADY_EXISTS", `endpoint ${e.id} or its enrollment already exists`);
      if (pgCode(err) === FOREIGN_KEY) throw new StrataError("NOT_FOUND", "the CVD's policy does not exist");
      throw err;
    }
    return this.getEndpoint(e.id);
  }

  private async insertCvd(c: pg.PoolClient, cvd: CvdRecord): Promise<void> {
    await c.query(
      "INSERT INTO cvds (id, endpoint_id, policy_id, created_at, snoozed_until) VALUES ($1, $2, $3, $4, $5)",
      [cvd.id, cvd.endpointId, cvd.policyId, cvd.createdAt, cvd.snoozedUntil],
    );
    if (cvd.tags?.length) {
      await c.query(
        "INSERT INTO cvd_tags (cvd_id, tag) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
        [cvd.id, [...new Set(cvd.tags)]],
      );
    }
  }

  async findEnrollment(tokenId: string, keyHash: string): Promise<EndpointRecord | null> {
    const r = await this.q<EndpointRow>(
      `${ENDPOINTS} WHERE e.enrollment_token_id = $1 AND e.enroll_key_hash = $2`,
      [tokenId, keyHash],
    );
    return r.rows[0] ? toEndpoint(r.rows[0]) : null;
  }

  async setEndpointCredential(id: string, credentialHash: string): Promise<boolean> {
    const r = await this.q("UPDATE endpoints SET credential_hash = $1 WHERE id = $2", [credentialHash, id]);
    return (r.rowCount ?? 0) > 0;
  }

  async getEndpoint(id: string): Promise<EndpointRecord | null> {
    const r = await this.q<EndpointRow>(`${ENDPOINTS} WHERE e.id = $1`, [id]);
    return r.rows[0] ? toEndpoint(r.rows[0]) : null;
  }

  async getEndpointByCredentialHash(credentialHash: string): Promise<EndpointRecord | null> {
    const r = await this.q<EndpointRow>(`${ENDPOINTS} WHERE e.credential_hash = $1`, [credentialHash]);
    return r.rows[0] ? toEndpoint(r.rows[0]) : null;
  }

  async listEndpoints(f: EndpointFilter = {}): Promise<EndpointRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.state !== undefined) {
      args.push(f.state);
      where.push(`e.state = $${args.length}`);
    }
    if (f.machineId !== undefined) {
      args.push(f.machineId);
      where.push(`e.machine_id = $${args.length}`);
    }
    const sql = `${ENDPOINTS} ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY e.created_at, e.id`;
    return (await this.q<EndpointRow>(sql, args)).rows.map(toEndpoint);
  }

  async touchEndpoint(id: string, at: Date): Promise<void> {
    await this.q("UPDATE endpoints SET last_seen_at = $1 WHERE id = $2", [at, id]);
  }

  async updateEndpointFacts(id: string, hostname: string, facts: Record<string, unknown>): Promise<boolean> {
    const r = await this.q("UPDATE endpoints SET hostname = $1, facts = $2::jsonb WHERE id = $3", [
      hostname,
      JSON.stringify(facts),
      id,
    ]);
    return (r.rowCount ?? 0) > 0;
  }

  async approveEndpoint(
    id: string,
    cvd: { create: CvdRecord } | { attach: string },
  ): Promise<EndpointRecord> {
    try {
      await this.tx(async (c) => {
        const ep = (
          await c.query<{ state: EndpointState }>("SELECT state FROM endpoints WHERE id = $1 FOR UPDATE", [
            id,
          ])
        ).rows[0];
        if (!ep) throw new StrataError("NOT_FOUND", `endpoint ${id} does not exist`, { subject: id });
        if (ep.state === "active")
          throw new StrataError("INVALID_ARGUMENT", `endpoint ${id} is already active`, { subject: id });
        const mine = (
          await c.query<{ id: string }>("SELECT id FROM cvds WHERE endpoint_id = $1 FOR UPDATE", [id])
        ).rows[0]?.id;
        if ("create" in cvd) {
          if (mine) throw sameCvdRefusal(id, mine);
          await this.insertCvd(c, { ...cvd.create, endpointId: id });
        } else {
          if (mine && mine !== cvd.attach) throw sameCvdRefusal(id, mine);
          const owner = (
            await c.query<{ id: string | null; state: EndpointState | null }>(
              `SELECT c.endpoint_id AS id, e.state FROM cvds c LEFT JOIN endpoints e ON e.id = c.endpoint_id
               WHERE c.id = $1 FOR UPDATE OF c`,
              [cvd.attach],
            )
          ).rows[0];
          if (!owner)
            throw new StrataError("NOT_FOUND", `CVD ${cvd.attach} does not exist`, { subject: cvd.attach });
          if (owner.id !== null && owner.id !== id && owner.state !== "disabled") {
            throw new StrataError(
              "INVALID_ARGUMENT",
              `CVD ${cvd.attach} belongs to endpoint ${owner.id}, which is ${owner.state}`,
              { subject: cvd.attach, hint: `disable endpoint ${owner.id} first (it is being replaced)` },
            );
          }
          await c.query("UPDATE cvds SET endpoint_id = $1 WHERE id = $2", [id, cvd.attach]);
        }
        await c.query("UPDATE endpoints SET state = 'active' WHERE id = $1", [id]);
      });
    } catch (e) {
      if (pgCode(e) === FOREIGN_KEY) throw new StrataError("NOT_FOUND", "the CVD's policy does not exist");
      if (pgCode(e) === UNIQUE) throw new StrataError("ALREADY_EXISTS", "that CVD id is taken");
      throw e;
    }
    return (await this.getEndpoint(id))!;
  }

  async disableEndpoint(id: string): Promise<boolean> {
    return ((await this.q("UPDATE endpoints SET state = 'disabled' WHERE id = $1", [id])).rowCount ?? 0) > 0;
  }

  async getCvd(id: string): Promise<CvdSummary | null> {
    const r = await this.q<CvdRow>(`${CVDS} WHERE c.id = $1`, [id]);
    return r.rows[0] ? toCvd(r.rows[0]) : null;
  }

  async listCvds(): Promise<CvdSummary[]> {
    return (await this.q<CvdRow>(`${CVDS} ORDER BY c.created_at, c.id`)).rows.map(toCvd);
  }

  async setCvdPolicy(id: string, policyId: string): Promise<boolean> {
    try {
      return (
        ((await this.q("UPDATE cvds SET policy_id = $1 WHERE id = $2", [policyId, id])).rowCount ?? 0) > 0
      );
    } catch (e) {
      if (pgCode(e) === FOREIGN_KEY)
        throw new StrataError("NOT_FOUND", `policy ${policyId} does not exist`, { subject: policyId });
      throw e;
    }
  }

  async requestCvdSync(id: string, at: Date, by: string): Promise<boolean> {
    const r = await this.q("UPDATE cvds SET sync_requested_at = $1, sync_requested_by = $2 WHERE id = $3", [
      at,
      by,
      id,
    ]);
    return (r.rowCount ?? 0) > 0;
  }

  async setCvdSnooze(id: string, until: Date | null, by: string | null): Promise<boolean> {
    const r = await this.q("UPDATE cvds SET snoozed_until = $1, snoozed_by = $2 WHERE id = $3", [
      until,
      until === null ? null : by,
      id,
    ]);
    return (r.rowCount ?? 0) > 0;
  }
}
