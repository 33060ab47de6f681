/**
 * Auto-assignment rules (migration 0010_autoassign; docs/design/server.md,
 * "Auto-assignment rules"): an ordered list of conditions on an enrolling
 * endpoint's facts, each giving a matching endpoint a new CVD with a policy
 * and tags. The condition is opaque JSON here: the server validates it and
 * evaluates it with @strata/core's matchCollectionRule.
 *
 * Contract (test/autoassign-contract.ts, run on SQLite and PostgreSQL):
 * - listRules answers in evaluation order (position, then id), in one query.
 * - createRule puts the rule last, or just before the rule `before` (the
 *   rules from there on move down one), in one transaction; it returns the
 *   stored rule with its position. ALREADY_EXISTS (naming it, nothing
 *   stored) for a taken id or name; NOT_FOUND for a missing `before` rule
 *   or policy.
 * - updateRule changes the fields the patch gives and, with `move`, the
 *   rule's place (just before the rule `move.before`, or last for null; a
 *   move renumbers every rule 1..n, so positions are dense and unique
 *   after it), in one transaction; id, createdAt and createdBy stay. It
 *   returns the rule as it was and as it is. NOT_FOUND for a missing rule,
 *   `move.before` rule or policy; ALREADY_EXISTS for a taken name; nothing
 *   changes then. Moving a rule before itself leaves it in place.
 * - get* return null for a missing rule; deleteRule false.
 * - A policy a rule names cannot be deleted (deletePolicy: INVALID_ARGUMENT,
 *   policyUsage counts the rules).
 */
import { StrataError } from "@strata/core";
import type Database from "better-sqlite3";
import type pg from "pg";
import { withTransaction } from "./postgres.js";

export interface AutoassignRuleRecord {
  /** `aar_…` */
  id: string;
  name: string;
  /** Evaluation order: lowest first. Not dense: only the order means something. */
  position: number;
  /** A CollectionRule without tags: hostname, os, vendor, model globs. */
  rule: Record<string, unknown>;
  /** The new CVD's upload policy. */
  policyId: string;
  /** Tags the new CVD gets. */
  tags: string[];
  createdAt: Date;
  /** `user:NAME` */
  createdBy: string;
}

export type NewAutoassignRule = Omit<AutoassignRuleRecord, "position">;

/** What updateRule may change; a field left out stays. */
export type AutoassignRulePatch = Partial<Pick<AutoassignRuleRecord, "name" | "rule" | "policyId" | "tags">>;

/** Where updateRule moves the rule: just before the rule `before` (an id), or last (null). */
export interface AutoassignRuleMove {
  before: string | null;
}

export interface AutoassignStore {
  /** See the contract. `before`: the id of the rule the new one goes before; null: last. */
  createRule(r: NewAutoassignRule, before: string | null): Promise<AutoassignRuleRecord>;
  /** See the contract. Without `move` the rule keeps its place. */
  updateRule(
    id: string,
    patch: AutoassignRulePatch,
    move?: AutoassignRuleMove,
  ): Promise<{ before: AutoassignRuleRecord; after: AutoassignRuleRecord }>;
  getRule(id: string): Promise<AutoassignRuleRecord | null>;
  getRuleByName(name: string): Promise<AutoassignRuleRecord | null>;
  /** In evaluation order. */
  listRules(): Promise<AutoassignRuleRecord[]>;
  deleteRule(id: string): Promise<boolean>;
}

const ruleExists = (name: string) =>
  new StrataError("ALREADY_EXISTS", `auto-assignment rule ${name} already exists`, {
    subject: name,
    hint: "choose another name, or remove that rule first (`strata autoassign rm`)",
  });
const noRule = (id: string) =>
  new StrataError("NOT_FOUND", `auto-assignment rule ${id} does not exist`, {
    subject: id,
    hint: "see `strata autoassign ls`",
  });
const noPolicy = (id: string) =>
  new StrataError("NOT_FOUND", `policy ${id} does not exist`, {
    subject: id,
    hint: "see `strata policy ls`",
  });

type Time = number | Date;
const json = <T>(v: string | T): T => (typeof v === "string" ? (JSON.parse(v) as T) : v);

interface RuleRow {
  id: string;
  name: string;
  position: number;
  rule: string | Record<string, unknown>;
  policy_id: string;
  tags: string | string[];
  created_at: Time;
  created_by: string;
}
const COLS = "id, name, position, rule, policy_id, tags, created_at, created_by";
const toRule = (r: RuleRow): AutoassignRuleRecord => ({
  id: r.id,
  name: r.name,
  position: Number(r.position),
  rule: json<Record<string, unknown>>(r.rule),
  policyId: r.policy_id,
  tags: json<string[]>(r.tags),
  createdAt: r.created_at instanceof Date ? r.created_at : new Date(r.created_at),
  createdBy: r.created_by,
});

/** The stored rule with the patch's fields over it. */
const patched = (r: AutoassignRuleRecord, p: AutoassignRulePatch): AutoassignRuleRecord => ({
  ...r,
  ...(p.name !== undefined ? { name: p.name } : {}),
  ...(p.rule !== undefined ? { rule: p.rule } : {}),
  ...(p.policyId !== undefined ? { policyId: p.policyId } : {}),
  ...(p.tags !== undefined ? { tags: p.tags } : {}),
});
const updateArgs = (r: AutoassignRuleRecord) => [
  r.name,
  JSON.stringify(r.rule),
  r.policyId,
  JSON.stringify(r.tags),
  r.id,
];

/**
 * The positions a move gives: `order` is every rule's id in evaluation
 * order; the rule `id` goes just before `before` (last for null) and all
 * are numbered 1..n. Answers the [id, position] pairs that change.
 */
function moved(
  order: { id: string; position: number }[],
  id: string,
  before: string | null,
): [string, number][] {
  if (before !== null && !order.some((r) => r.id === before)) throw noRule(before);
  if (before === id) return moved(order, id, order[order.findIndex((r) => r.id === id) + 1]?.id ?? null);
  const ids = order.map((r) => r.id).filter((x) => x !== id);
  ids.splice(before === null ? ids.length : ids.indexOf(before), 0, id);
  const was = new Map(order.map((r) => [r.id, r.position]));
  return ids.flatMap((x, i): [string, number][] => (was.get(x) === i + 1 ? [] : [[x, i + 1]]));
}

// ---- SQLite -----------------------------------------------------------------------------

const sqliteCode = (e: unknown) => (e as { code?: string }).code ?? "";

export class SqliteAutoassignStore implements AutoassignStore {
  constructor(private readonly db: Database.Database) {}

  async createRule(r: NewAutoassignRule, before: string | null): Promise<AutoassignRuleRecord> {
    const run = this.db.transaction((): number => {
      let position: number;
      if (before !== null) {
        const at = this.db
          .prepare("SELECT position FROM autoassign_rules WHERE id = ?")
          .pluck()
          .get(before) as number | undefined;
        if (at === undefined) throw noRule(before);
        this.db.prepare("UPDATE autoassign_rules SET position = position + 1 WHERE position >= ?").run(at);
        position = at;
      } else {
        position = Number(
          this.db.prepare("SELECT coalesce(max(position), 0) + 1 FROM autoassign_rules").pluck().get(),
        );
      }
      this.db
        .prepare(`INSERT INTO autoassign_rules (${COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(
          r.id,
          r.name,
          position,
          JSON.stringify(r.rule),
          r.policyId,
          JSON.stringify(r.tags),
          r.createdAt.getTime(),
          r.createdBy,
        );
      return position;
    });
    try {
      return { ...r, position: run.immediate() };
    } catch (e) {
      const code = sqliteCode(e);
      if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") throw noPolicy(r.policyId);
      if (code.startsWith("SQLITE_CONSTRAINT_")) throw ruleExists(r.name);
      throw e;
    }
  }

  async updateRule(
    id: string,
    patch: AutoassignRulePatch,
    move?: AutoassignRuleMove,
  ): Promise<{ before: AutoassignRuleRecord; after: AutoassignRuleRecord }> {
    const run = this.db.transaction(() => {
      const row = this.db.prepare(`SELECT ${COLS} FROM autoassign_rules WHERE id = ?`).get(id) as
        | RuleRow
        | undefined;
      if (!row) throw noRule(id);
      const before = toRule(row);
      const after = patched(before, patch);
      this.db
        .prepare("UPDATE autoassign_rules SET name = ?, rule = ?, policy_id = ?, tags = ? WHERE id = ?")
        .run(...updateArgs(after));
      if (move) {
        const order = this.db
          .prepare("SELECT id, position FROM autoassign_rules ORDER BY position, id")
          .all() as { id: string; position: number }[];
        const set = this.db.prepare("UPDATE autoassign_rules SET position = ? WHERE id = ?");
        for (const [x, position] of moved(order, id, move.before)) {
          set.run(position, x);
          if (x === id) after.position = position;
        }
      }
      return { before, after };
    });
    try {
      return run.immediate();
    } catch (e) {
      const code = sqliteCode(e);
      if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") throw noPolicy(patch.policyId ?? "");
      if (code.startsWith("SQLITE_CONSTRAINT_")) throw ruleExists(patch.name ?? "");
      throw e;
    }
  }

  async getRule(id: string): Promise<AutoassignRuleRecord | null> {
    const r = this.db.prepare(`SELECT ${COLS} FROM autoassign_rules WHERE id = ?`).get(id) as
      | RuleRow
      | undefined;
    return r ? toRule(r) : null;
  }

  async getRuleByName(name: string): Promise<AutoassignRuleRecord | null> {
    const r = this.db.prepare(`SELECT ${COLS} FROM autoassign_rules WHERE name = ?`).get(name) as
      | RuleRow
      | undefined;
    return r ? toRule(r) : null;
  }

  async listRules(): Promise<AutoassignRuleRecord[]> {
    return (
      this.db.prepare(`SELECT ${COLS} FROM autoassign_rules ORDER BY position, id`).all() as RuleRow[]
    ).map(toRule);
  }

  async deleteRule(id: string): Promise<boolean> {
    return this.db.prepare("DELETE FROM autoassign_rules WHERE id = ?").run(id).changes > 0;
  }
}

// ---- PostgreSQL -------------------------------------------------------------------------

const pgCode = (e: unknown) => (e as { code?: string }).code;

export class PostgresAutoassignStore implements AutoassignStore {
  constructor(private readonly pool: pg.Pool) {}

  async createRule(r: NewAutoassignRule, before: string | null): Promise<AutoassignRuleRecord> {
    try {
      const position = await withTransaction(this.pool, async (c) => {
        // One insert at a time: positions are read and shifted under the lock.
        await c.query("LOCK TABLE autoassign_rules IN SHARE ROW EXCLUSIVE MODE");
        let position: number;
        if (before !== null) {
          const at = await c.query<{ position: number }>(
            "SELECT position FROM autoassign_rules WHERE id = $1",
            [before],
          );
          if (!at.rows[0]) throw noRule(before);
          position = Number(at.rows[0].position);
          await c.query("UPDATE autoassign_rules SET position = position + 1 WHERE position >= $1", [
            position,
          ]);
        } else {
          const m = await c.query<{ p: number }>(
            "SELECT coalesce(max(position), 0) + 1 AS p FROM autoassign_rules",
          );
          position = Number(m.rows[0]!.p);
        }
        await c.query(
          `INSERT INTO autoassign_rules (${COLS}) VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7, $8)`,
          [
            r.id,
            r.name,
            position,
            JSON.stringify(r.rule),
            r.policyId,
            JSON.stringify(r.tags),
            r.createdAt,
            r.createdBy,
          ],
        );
        return position;
      });
      return { ...r, position };
    } catch (e) {
      if (pgCode(e) === "23503") throw noPolicy(r.policyId);
      if (pgCode(e) === "23505") throw ruleExists(r.name);
      throw e;
    }
  }

  async updateRule(
    id: string,
    patch: AutoassignRulePatch,
    move?: AutoassignRuleMove,
  ): Promise<{ before: AutoassignRuleRecord; after: AutoassignRuleRecord }> {
    try {
      return await withTransaction(this.pool, async (c) => {
        // As createRule: positions are read and renumbered under the lock.
        await c.query("LOCK TABLE autoassign_rules IN SHARE ROW EXCLUSIVE MODE");
        const row = await c.query<RuleRow>(`SELECT ${COLS} FROM autoassign_rules WHERE id = $1`, [id]);
        if (!row.rows[0]) throw noRule(id);
        const before = toRule(row.rows[0]);
        const after = patched(before, patch);
        await c.query(
          "UPDATE autoassign_rules SET name = $1, rule = $2::jsonb, policy_id = $3, tags = $4::jsonb WHERE id = $5",
          updateArgs(after),
        );
        if (move) {
          const order = await c.query<{ id: string; position: number }>(
            'SELECT id, position FROM autoassign_rules ORDER BY position, id COLLATE "C"',
          );
          for (const [x, position] of moved(order.rows, id, move.before)) {
            await c.query("UPDATE autoassign_rules SET position = $1 WHERE id = $2", [position, x]);
            if (x === id) after.position = position;
          }
        }
        return { before, after };
      });
    } catch (e) {
      if (pgCode(e) === "23503") throw noPolicy(patch.policyId ?? "");
      if (pgCode(e) === "23505") throw ruleExists(patch.name ?? "");
      throw e;
    }
  }

  async getRule(id: string): Promise<AutoassignRuleRecord | null> {
    const r = await this.pool.query<RuleRow>(`SELECT ${COLS} FROM autoassign_rules WHERE id = $1`, [id]);
    return r.rows[0] ? toRule(r.rows[0]) : null;
  }

  async getRuleByName(name: string): Promise<AutoassignRuleRecord | null> {
    const r = await this.pool.query<RuleRow>(`SELECT ${COLS} FROM autoassign_rules WHERE name = $1`, [name]);
    return r.rows[0] ? toRule(r.rows[0]) : null;
  }

  async listRules(): Promise<AutoassignRuleRecord[]> {
    const r = await this.pool.query<RuleRow>(
      `SELECT ${COLS} FROM autoassign_rules ORDER BY position, id COLLATE "C"`,
    );
    return r.rows.map(toRule);
  }

  async deleteRule(id: string): Promise<boolean> {
    const r = await this.pool.query("DELETE FROM autoassign_rules WHERE id = $1", [id]);
    return (r.rowCount ?? 0) > 0;
  }
}
