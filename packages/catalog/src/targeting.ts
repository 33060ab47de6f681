/**
 * Targeting (migration 0008_targeting; docs/design/layers.md, "Assignment
 * and composition" and "Drivers"): collections of CVDs, driver profiles,
 * the editable layer rules and administrators' tags on CVDs, and the
 * view of each CVD the server matches rules against (its endpoint's
 * facts and its tags).
 *
 * Rules (a collection's, a profile's) are opaque JSON here: the server
 * validates them and evaluates them with @strata/core's matchers. Dynamic
 * collection members are never stored: they are what the rule matches
 * when asked.
 *
 * Contract (test/targeting-contract.ts, run on SQLite and PostgreSQL):
 * - get* MUST return null, never throw, for a missing row; list* answer
 *   in one query, collections and profiles by name (binary order), CVDs
 *   by id.
 * - createCollection and createDriverProfile MUST throw ALREADY_EXISTS
 *   (naming it) on a taken id or name and leave the store unchanged;
 *   createCollection with members MUST throw NOT_FOUND naming a missing
 *   CVD and then store nothing.
 * - addCollectionMembers MUST throw NOT_FOUND naming the missing
 *   collection or CVD and then add none; a CVD already a member is left
 *   as it is (its added_at kept). It returns how many were added.
 * - deleteCollection removes the collection, its members and every
 *   assignment made to it, in one transaction; null when it is missing.
 * - updateDriverProfile MUST throw ALREADY_EXISTS when the new name is
 *   taken (and change nothing); null when the profile is missing.
 * - changeCvdTags adds then removes, atomically; NOT_FOUND for a missing
 *   CVD, INVALID_ARGUMENT (nothing changed) when the CVD would have more
 *   than `max` tags. Tags answer sorted.
 * - Removing a CVD removes its memberships and tags (ON DELETE CASCADE).
 */
import { StrataError } from "@strata/core";
import type Database from "better-sqlite3";
import type pg from "pg";
import { withTransaction } from "./postgres.js";

export interface CollectionRecord {
  /** `col_…` */
  id: string;
  name: string;
  /** Null: a static collection (members added by hand). */
  rule: Record<string, unknown> | null;
  createdAt: Date;
  /** `user:NAME` */
  createdBy: string;
}

export interface DriverProfileRecord {
  /** `drv_…` */
  id: string;
  name: string;
  /** Layer ids (kind driver), in order. */
  folders: string[];
  /** DriverRule objects; the profile matches when any does. */
  rules: Record<string, unknown>[];
  createdAt: Date;
  updatedAt: Date;
}

export interface DriverProfilePatch {
  name?: string;
  folders?: string[];
  rules?: Record<string, unknown>[];
}

export interface LayerRulesRecord {
  /** PolicyRule objects (`{ dir, pattern? }`). */
  doNotOverride: Record<string, unknown>[];
  baseCapture: Record<string, unknown>[];
  updatedAt: Date;
  /** `user:NAME` */
  updatedBy: string;
}

/** A CVD as rules see it: its endpoint's facts (none when it has no endpoint) and its tags. */
export interface TargetRecord {
  cvdId: string;
  endpointId: string | null;
  hostname: string | null;
  facts: Record<string, unknown>;
  /** Sorted. */
  tags: string[];
}

export interface TargetingStore {
  createCollection(c: CollectionRecord, members?: readonly string[]): Promise<void>;
  getCollection(id: string): Promise<CollectionRecord | null>;
  getCollectionByName(name: string): Promise<CollectionRecord | null>;
  /** By name. */
  listCollections(): Promise<CollectionRecord[]>;
  /** Removes it, its members and its assignments; how many assignments went, or null when missing. */
  deleteCollection(id: string): Promise<{ assignments: number } | null>;
  /** Adds CVDs to a (static) collection; returns how many were not members yet. */
  addCollectionMembers(id: string, cvdIds: readonly string[], at: Date): Promise<number>;
  /** False when the CVD was not a member. */
  removeCollectionMember(id: string, cvdId: string): Promise<boolean>;
  /** The stored members, by CVD id. */
  collectionMembers(id: string): Promise<string[]>;
  /** The collections that hold the CVD as a stored member, by id. */
  staticCollectionsOf(cvdId: string): Promise<string[]>;

  createDriverProfile(p: DriverProfileRecord): Promise<void>;
  getDriverProfile(id: string): Promise<DriverProfileRecord | null>;
  getDriverProfileByName(name: string): Promise<DriverProfileRecord | null>;
  /** By name. */
  listDriverProfiles(): Promise<DriverProfileRecord[]>;
  updateDriverProfile(id: string, patch: DriverProfilePatch, at: Date): Promise<DriverProfileRecord | null>;
  deleteDriverProfile(id: string): Promise<boolean>;

  /** Null until somebody set them (the defaults are code). */
  getLayerRules(): Promise<LayerRulesRecord | null>;
  setLayerRules(r: LayerRulesRecord): Promise<void>;

  cvdTags(cvdId: string): Promise<string[]>;
  /** Adds, then removes; returns the CVD's tags after. See the contract. */
  changeCvdTags(
    cvdId: string,
    change: { add?: readonly string[]; remove?: readonly string[] },
    max: number,
  ): Promise<string[]>;

  getTarget(cvdId: string): Promise<TargetRecord | null>;
  /** CVDs with an id above `after` (all when null), by id, at most `limit`: page through the fleet. */
  listTargets(after: string | null, limit: number): Promise<TargetRecord[]>;
}

// ---- errors, worded once ---------------------------------------------------------

const collectionExists = (c: CollectionRecord) =>
  new StrataError("ALREADY_EXISTS", `collection ${c.name} already exists`, { subject: c.name });
const profileExists = (name: string) =>
  new StrataError("ALREADY_EXISTS", `driver profile ${name} already exists`, { subject: name });
const noCollection = (id: string) =>
  new StrataError("NOT_FOUND", `collection ${id} does not exist`, { subject: id });
const noCvd = (id: string) =>
  new StrataError("NOT_FOUND", `CVD ${id} does not exist`, { subject: id, hint: "see `strata cvd list`" });
const tooManyTags = (cvdId: string, n: number, max: number) =>
  new StrataError("INVALID_ARGUMENT", `CVD ${cvdId} would have ${n} tags; at most ${max}`, {
    subject: cvdId,
    hint: "remove some tags first (`strata cvd tag CVD --remove TAG…`)",
  });

// ---- rows ---------------------------------------------------------------------------

type Time = number | Date;
const toDate = (v: Time) => (v instanceof Date ? v : new Date(v));
const json = <T>(v: string | T): T => (typeof v === "string" ? (JSON.parse(v) as T) : v);
const sortedTags = (v: string | string[] | null): string[] =>
  (v === null ? [] : json<(string | null)[]>(v)).filter((t): t is string => t !== null).sort();

interface CollectionRow {
  id: string;
  name: string;
  rule: string | Record<string, unknown> | null;
  created_at: Time;
  created_by: string;
}
const COLLECTION_COLS = "id, name, rule, created_at, created_by";
const toCollection = (r: CollectionRow): CollectionRecord => ({
  id: r.id,
  name: r.name,
  rule: r.rule === null ? null : json<Record<string, unknown>>(r.rule),
  createdAt: toDate(r.created_at),
  createdBy: r.created_by,
});

interface ProfileRow {
  id: string;
  name: string;
  folders: string | string[];
  rules: string | Record<string, unknown>[];
  created_at: Time;
  updated_at: Time;
}
const PROFILE_COLS = "id, name, folders, rules, created_at, updated_at";
const toProfile = (r: ProfileRow): DriverProfileRecord => ({
  id: r.id,
  name: r.name,
  folders: json<string[]>(r.folders),
  rules: json<Record<string, unknown>[]>(r.rules),
  createdAt: toDate(r.created_at),
  updatedAt: toDate(r.updated_at),
});

interface RulesRow {
  do_not_override: string | Record<string, unknown>[];
  base_capture: string | Record<string, unknown>[];
  updated_at: Time;
  updated_by: string;
}
const toRules = (r: RulesRow): LayerRulesRecord => ({
  doNotOverride: json<Record<string, unknown>[]>(r.do_not_override),
  baseCapture: json<Record<string, unknown>[]>(r.base_capture),
  updatedAt: toDate(r.updated_at),
  updatedBy: r.updated_by,
});

interface TargetRow {
  cvd_id: string;
  endpoint_id: string | null;
  hostname: string | null;
  facts: string | Record<string, unknown> | null;
  tags: string | string[] | null;
}
const toTarget = (r: TargetRow): TargetRecord => ({
  cvdId: r.cvd_id,
  endpointId: r.endpoint_id,
  hostname: r.hostname,
  facts: r.facts === null ? {} : json<Record<string, unknown>>(r.facts),
  tags: sortedTags(r.tags),
});

/** The first of `wanted` that `present` lacks. */
const firstMissing = (wanted: readonly string[], present: Iterable<string>) => {
  const have = new Set(present);
  return wanted.find((id) => !have.has(id));
};

// ---- SQLite -----------------------------------------------------------------------------

const SQLITE_TARGETS = `SELECT c.id AS cvd_id, e.id AS endpoint_id, e.hostname, e.facts,
    (SELECT json_group_array(t.tag) FROM cvd_tags t WHERE t.cvd_id = c.id) AS tags
  FROM cvds c LEFT JOIN endpoints e ON e.id = c.endpoint_id`;

const sqliteCode = (e: unknown) => (e as { code?: string }).code ?? "";

/** TargetingStore on the server's SQLite connection (SqliteServerStore.targeting). */
export class SqliteTargetingStore implements TargetingStore {
  constructor(private readonly db: Database.Database) {}

  private missingCvd(ids: readonly string[]): string | undefined {
    if (!ids.length) return undefined;
    const rows = this.db
      .prepare(`SELECT id FROM cvds WHERE id IN (SELECT value FROM json_each(?))`)
      .pluck()
      .all(JSON.stringify(ids)) as string[];
    return firstMissing(ids, rows);
  }

  private insertMembers(id: string, cvdIds: readonly string[], at: Date): number {
    const missing = this.missingCvd(cvdIds);
    if (missing !== undefined) throw noCvd(missing);
    const st = this.db.prepare(
      "INSERT INTO collection_members (collection_id, cvd_id, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    );
    let added = 0;
    for (const cvd of new Set(cvdIds)) added += st.run(id, cvd, at.getTime()).changes;
    return added;
  }

  async createCollection(c: CollectionRecord, members: readonly string[] = []): Promise<void> {
    const run = this.db.transaction(() => {
      this.db
        .prepare(`INSERT INTO collections (${COLLECTION_COLS}) VALUES (?, ?, ?, ?, ?)`)
        .run(
          c.id,
          c.name,
          c.rule === null ? null : JSON.stringify(c.rule),
          c.createdAt.getTime(),
          c.createdBy,
        );
      this.insertMembers(c.id, members, c.createdAt);
    });
    try {
      run.immediate();
    } catch (e) {
      if (sqliteCode(e).startsWith("SQLITE_CONSTRAINT_")) throw collectionExists(c);
      throw e;
    }
  }

  async getCollection(id: string): Promise<CollectionRecord | null> {
    const r = this.db.prepare(`SELECT ${COLLECTION_COLS} FROM collections WHERE id = ?`).get(id) as
      | CollectionRow
      | undefined;
    return r ? toCollection(r) : null;
  }

  async getCollectionByName(name: string): Promise<CollectionRecord | null> {
    const r = this.db.prepare(`SELECT ${COLLECTION_COLS} FROM collections WHERE name = ?`).get(name) as
      | CollectionRow
      | undefined;
    return r ? toCollection(r) : null;
  }

  async listCollections(): Promise<CollectionRecord[]> {
    return (
      this.db.prepare(`SELECT ${COLLECTION_COLS} FROM collections ORDER BY name`).all() as CollectionRow[]
    ).map(toCollection);
  }

  async deleteCollection(id: string): Promise<{ assignments: number } | null> {
    const run = this.db.transaction(() => {
      const assignments = this.db
        .prepare("DELETE FROM assignments WHERE target_kind = 'collection' AND target_id = ?")
        .run(id).changes;
      const gone = this.db.prepare("DELETE FROM collections WHERE id = ?").run(id).changes;
      if (!gone) throw noCollection(id); // rolls the assignments back (there were none anyway)
      return { assignments };
    });
    try {
      return run.immediate();
    } catch (e) {
      if (e instanceof StrataError && e.code === "NOT_FOUND") return null;
      throw e;
    }
  }

  async addCollectionMembers(id: string, cvdIds: readonly string[], at: Date): Promise<number> {
    const run = this.db.transaction(() => {
      if (!this.db.prepare("SELECT 1 FROM collections WHERE id = ?").get(id)) throw noCollection(id);
      return this.insertMembers(id, cvdIds, at);
    });
    return run.immediate();
  }

  async removeCollectionMember(id: string, cvdId: string): Promise<boolean> {
    return (
      this.db.prepare("DELETE FROM collection_members WHERE collection_id = ? AND cvd_id = ?").run(id, cvdId)
        .changes > 0
    );
  }

  async collectionMembers(id: string): Promise<string[]> {
    return this.db
      .prepare("SELECT cvd_id FROM collection_members WHERE collection_id = ? ORDER BY cvd_id")
      .pluck()
      .all(id) as string[];
  }

  async staticCollectionsOf(cvdId: string): Promise<string[]> {
    return this.db
      .prepare("SELECT collection_id FROM collection_members WHERE cvd_id = ? ORDER BY collection_id")
      .pluck()
      .all(cvdId) as string[];
  }

  async createDriverProfile(p: DriverProfileRecord): Promise<void> {
    try {
      this.db
        .prepare(`INSERT INTO driver_profiles (${PROFILE_COLS}) VALUES (?, ?, ?, ?, ?, ?)`)
        .run(
          p.id,
          p.name,
          JSON.stringify(p.folders),
          JSON.stringify(p.rules),
          p.createdAt.getTime(),
          p.updatedAt.getTime(),
        );
    } catch (e) {
      if (sqliteCode(e).startsWith("SQLITE_CONSTRAINT_")) throw profileExists(p.name);
      throw e;
    }
  }

  async getDriverProfile(id: string): Promise<DriverProfileRecord | null> {
    const r = this.db.prepare(`SELECT ${PROFILE_COLS} FROM driver_profiles WHERE id = ?`).get(id) as
      | ProfileRow
      | undefined;
    return r ? toProfile(r) : null;
  }

  async getDriverProfileByName(name: string): Promise<DriverProfileRecord | null> {
    const r = this.db.prepare(`SELECT ${PROFILE_COLS} FROM driver_profiles WHERE name = ?`).get(name) as
      | ProfileRow
      | undefined;
    return r ? toProfile(r) : null;
  }

  async listDriverProfiles(): Promise<DriverProfileRecord[]> {
    return (
      this.db.prepare(`SELECT ${PROFILE_COLS} FROM driver_profiles ORDER BY name`).all() as ProfileRow[]
    ).map(toProfile);
  }

  async updateDriverProfile(
    id: string,
    patch: DriverProfilePatch,
    at: Date,
  ): Promise<DriverProfileRecord | null> {
    try {
      const r = this.db
        .prepare(
          `UPDATE driver_profiles SET name = coalesce(?, name), folders = coalesce(?, folders),
             rules = coalesce(?, rules), updated_at = ? WHERE id = ? RETURNING ${PROFILE_COLS}`,
        )
        .get(
          patch.name ?? null,
          patch.folders ? JSON.stringify(patch.folders) : null,
          patch.rules ? JSON.stringify(patch.rules) : null,
          at.getTime(),
          id,
        ) as ProfileRow | undefined;
      return r ? toProfile(r) : null;
    } catch (e) {
      if (sqliteCode(e).startsWith("SQLITE_CONSTRAINT_")) throw profileExists(patch.name ?? id);
      throw e;
    }
  }

  async deleteDriverProfile(id: string): Promise<boolean> {
    return this.db.prepare("DELETE FROM driver_profiles WHERE id = ?").run(id).changes > 0;
  }

  async getLayerRules(): Promise<LayerRulesRecord | null> {
    const r = this.db
      .prepare("SELECT do_not_override, base_capture, updated_at, updated_by FROM layer_rules WHERE id = 1")
      .get() as RulesRow | undefined;
    return r ? toRules(r) : null;
  }

  async setLayerRules(r: LayerRulesRecord): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO layer_rules (id, do_not_override, base_capture, updated_at, updated_by) VALUES (1, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET do_not_override = excluded.do_not_override,
           base_capture = excluded.base_capture, updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
      )
      .run(
        JSON.stringify(r.doNotOverride),
        JSON.stringify(r.baseCapture),
        r.updatedAt.getTime(),
        r.updatedBy,
      );
  }

  async cvdTags(cvdId: string): Promise<string[]> {
    return this.db
      .prepare("SELECT tag FROM cvd_tags WHERE cvd_id = ? ORDER BY tag")
      .pluck()
      .all(cvdId) as string[];
  }

  async changeCvdTags(
    cvdId: string,
    change: { add?: readonly string[]; remove?: readonly string[] },
    max: number,
  ): Promise<string[]> {
    const run = this.db.transaction(() => {
      if (!this.db.prepare("SELECT 1 FROM cvds WHERE id = ?").get(cvdId)) throw noCvd(cvdId);
      const add = this.db.prepare("INSERT INTO cvd_tags (cvd_id, tag) VALUES (?, ?) ON CONFLICT DO NOTHING");
      for (const t of change.add ?? []) add.run(cvdId, t);
      const del = this.db.prepare("DELETE FROM cvd_tags WHERE cvd_id = ? AND tag = ?");
      for (const t of change.remove ?? []) del.run(cvdId, t);
      const n = Number(this.db.prepare("SELECT count(*) FROM cvd_tags WHERE cvd_id = ?").pluck().get(cvdId));
      if (n > max) throw tooManyTags(cvdId, n, max);
    });
    run.immediate();
    return this.cvdTags(cvdId);
  }

  async getTarget(cvdId: string): Promise<TargetRecord | null> {
    const r = this.db.prepare(`${SQLITE_TARGETS} WHERE c.id = ?`).get(cvdId) as TargetRow | undefined;
    return r ? toTarget(r) : null;
  }

  async listTargets(after: string | null, limit: number): Promise<TargetRecord[]> {
    const rows =
      after === null
        ? this.db.prepare(`${SQLITE_TARGETS} ORDER BY c.id LIMIT ?`).all(limit)
        : this.db.prepare(`${SQLITE_TARGETS} WHERE c.id > ? ORDER BY c.id LIMIT ?`).all(after, limit);
    return (rows as TargetRow[]).map(toTarget);
  }
}

// ---- PostgreSQL -------------------------------------------------------------------------

const UNIQUE = "23505";
const pgCode = (e: unknown) => (e as { code?: string }).code;

/** Ids compare as bytes (C collation), like SQLite's TEXT: the same pages on both. */
const PG_TARGETS = `SELECT c.id AS cvd_id, e.id AS endpoint_id, e.hostname, e.facts,
    ARRAY(SELECT t.tag FROM cvd_tags t WHERE t.cvd_id = c.id) AS tags
  FROM cvds c LEFT JOIN endpoints e ON e.id = c.endpoint_id`;

/** TargetingStore on PostgreSQL: shares the catalog's pool and schema. */
export class PostgresTargetingStore implements TargetingStore {
  constructor(private readonly pool: pg.Pool) {}

  private async q<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []) {
    return this.pool.query<R>(sql, params);
  }

  private async insertMembers(c: pg.PoolClient, id: string, cvdIds: readonly string[], at: Date) {
    const ids = [...new Set(cvdIds)];
    if (!ids.length) return 0;
    // Lock the CVDs: one removed meanwhile cannot slip in as a member.
    const present = await c.query<{ id: string }>(
      "SELECT id FROM cvds WHERE id = ANY($1::text[]) FOR SHARE",
      [ids],
    );
    const missing = firstMissing(
      ids,
      present.rows.map((r) => r.id),
    );
    if (missing !== undefined) throw noCvd(missing);
    const r = await c.query(
      `INSERT INTO collection_members (collection_id, cvd_id, added_at)
       SELECT $1, unnest($2::text[]), $3 ON CONFLICT DO NOTHING`,
      [id, ids, at],
    );
    return r.rowCount ?? 0;
  }

  async createCollection(c: CollectionRecord, members: readonly string[] = []): Promise<void> {
    try {
      await withTransaction(this.pool, async (tx) => {
        await tx.query(`INSERT INTO collections (${COLLECTION_COLS}) VALUES ($1, $2, $3::jsonb, $4, $5)`, [
          c.id,
          c.name,
          c.rule === null ? null : JSON.stringify(c.rule),
          c.createdAt,
          c.createdBy,
        ]);
        await this.insertMembers(tx, c.id, members, c.createdAt);
      });
    } catch (e) {
      if (pgCode(e) === UNIQUE) throw collectionExists(c);
      throw e;
    }
  }

  async getCollection(id: string): Promise<CollectionRecord | null> {
    const r = await this.q<CollectionRow>(`SELECT ${COLLECTION_COLS} FROM collections WHERE id = $1`, [id]);
    return r.rows[0] ? toCollection(r.rows[0]) : null;
  }

  async getCollectionByName(name: string): Promise<CollectionRecord | null> {
    const r = await this.q<CollectionRow>(`SELECT ${COLLECTION_COLS} FROM collections WHERE name = $1`, [
      name,
    ]);
    return r.rows[0] ? toCollection(r.rows[0]) : null;
  }

  async listCollections(): Promise<CollectionRecord[]> {
    const r = await this.q<CollectionRow>(
      `SELECT ${COLLECTION_COLS} FROM collections ORDER BY name COLLATE "C"`,
    );
    return r.rows.map(toCollection);
  }

  async deleteCollection(id: string): Promise<{ assignments: number } | null> {
    return withTransaction(this.pool, async (c) => {
      const gone = await c.query("DELETE FROM collections WHERE id = $1", [id]);
      if (!gone.rowCount) return null;
      const a = await c.query("DELETE FROM assignments WHERE target_kind = 'collection' AND target_id = $1", [
        id,
      ]);
      return { assignments: a.rowCount ?? 0 };
    });
  }

  async addCollectionMembers(id: string, cvdIds: readonly string[], at: Date): Promise<number> {
    return withTransaction(this.pool, async (c) => {
      const col = await c.query("SELECT 1 FROM collections WHERE id = $1 FOR SHARE", [id]);
      if (!col.rowCount) throw noCollection(id);
      return this.insertMembers(c, id, cvdIds, at);
    });
  }

  async removeCollectionMember(id: string, cvdId: string): Promise<boolean> {
    const r = await this.q("DELETE FROM collection_members WHERE collection_id = $1 AND cvd_id = $2", [
      id,
      cvdId,
    ]);
    return (r.rowCount ?? 0) > 0;
  }

  async collectionMembers(id: string): Promise<string[]> {
    const r = await this.q<{ cvd_id: string }>(
      `SELECT cvd_id FROM collection_members WHERE collection_id = $1 ORDER BY cvd_id COLLATE "C"`,
      [id],
    );
    return r.rows.map((x) => x.cvd_id);
  }

  async staticCollectionsOf(cvdId: string): Promise<string[]> {
    const r = await this.q<{ collection_id: string }>(
      `SELECT collection_id FROM collection_members WHERE cvd_id = $1 ORDER BY collection_id COLLATE "C"`,
      [cvdId],
    );
    return r.rows.map((x) => x.collection_id);
  }

  async createDriverProfile(p: DriverProfileRecord): Promise<void> {
    try {
      await this.q(
        `INSERT INTO driver_profiles (${PROFILE_COLS}) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6)`,
        [p.id, p.name, JSON.stringify(p.folders), JSON.stringify(p.rules), p.createdAt, p.updatedAt],
      );
    } catch (e) {
      if (pgCode(e) === UNIQUE) throw profileExists(p.name);
      throw e;
    }
  }

  async getDriverProfile(id: string): Promise<DriverProfileRecord | null> {
    const r = await this.q<ProfileRow>(`SELECT ${PROFILE_COLS} FROM driver_profiles WHERE id = $1`, [id]);
    return r.rows[0] ? toProfile(r.rows[0]) : null;
  }

  async getDriverProfileByName(name: string): Promise<DriverProfileRecord | null> {
    const r = await this.q<ProfileRow>(`SELECT ${PROFILE_COLS} FROM driver_profiles WHERE name = $1`, [name]);
    return r.rows[0] ? toProfile(r.rows[0]) : null;
  }

  async listDriverProfiles(): Promise<DriverProfileRecord[]> {
    const r = await this.q<ProfileRow>(
      `SELECT ${PROFILE_COLS} FROM driver_profiles ORDER BY name COLLATE "C"`,
    );
    return r.rows.map(toProfile);
  }

  async updateDriverProfile(
    id: string,
    patch: DriverProfilePatch,
    at: Date,
  ): Promise<DriverProfileRecord | null> {
    try {
      const r = await this.q<ProfileRow>(
        `UPDATE driver_profiles SET name = coalesce($1, name), folders = coalesce($2::jsonb, folders),
           rules = coalesce($3::jsonb, rules), updated_at = $4 WHERE id = $5 RETURNING ${PROFILE_COLS}`,
        [
          patch.name ?? null,
          patch.folders ? JSON.stringify(patch.folders) : null,
          patch.rules ? JSON.stringify(patch.rules) : null,
          at,
          id,
        ],
      );
      return r.rows[0] ? toProfile(r.rows[0]) : null;
    } catch (e) {
      if (pgCode(e) === UNIQUE) throw profileExists(patch.name ?? id);
      throw e;
    }
  }

  async deleteDriverProfile(id: string): Promise<boolean> {
    const r = await this.q("DELETE FROM driver_profiles WHERE id = $1", [id]);
    return (r.rowCount ?? 0) > 0;
  }

  async getLayerRules(): Promise<LayerRulesRecord | null> {
    const r = await this.q<RulesRow>(
      "SELECT do_not_override, base_capture, updated_at, updated_by FROM layer_rules WHERE id = 1",
    );
    return r.rows[0] ? toRules(r.rows[0]) : null;
  }

  async setLayerRules(r: LayerRulesRecord): Promise<void> {
    await this.q(
      `INSERT INTO layer_rules (id, do_not_override, base_capture, updated_at, updated_by)
       VALUES (1, $1::jsonb, $2::jsonb, $3, $4)
       ON CONFLICT (id) DO UPDATE SET do_not_override = excluded.do_not_override,
         base_capture = excluded.base_capture, updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
      [JSON.stringify(r.doNotOverride), JSON.stringify(r.baseCapture), r.updatedAt, r.updatedBy],
    );
  }

  async cvdTags(cvdId: string): Promise<string[]> {
    const r = await this.q<{ tag: string }>(
      `SELECT tag FROM cvd_tags WHERE cvd_id = $1 ORDER BY tag COLLATE "C"`,
      [cvdId],
    );
    return r.rows.map((x) => x.tag);
  }

  async changeCvdTags(
    cvdId: string,
    change: { add?: readonly string[]; remove?: readonly string[] },
    max: number,
  ): Promise<string[]> {
    await withTransaction(this.pool, async (c) => {
      // The CVD row is locked: two changes of one CVD's tags count one after the other.
      const cvd = await c.query("SELECT 1 FROM cvds WHERE id = $1 FOR UPDATE", [cvdId]);
      if (!cvd.rowCount) throw noCvd(cvdId);
      if (change.add?.length) {
        await c.query(
          "INSERT INTO cvd_tags (cvd_id, tag) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
          [cvdId, [...new Set(change.add)]],
        );
      }
      if (change.remove?.length) {
        await c.query("DELETE FROM cvd_tags WHERE cvd_id = $1 AND tag = ANY($2::text[])", [
          cvdId,
          [...change.remove],
        ]);
      }
      const n = Number(
        (await c.query<{ n: string }>("SELECT count(*) AS n FROM cvd_tags WHERE cvd_id = $1", [cvdId]))
          .rows[0]?.n ?? 0,
      );
      if (n > max) throw tooManyTags(cvdId, n, max);
    });
    return this.cvdTags(cvdId);
  }

  async getTarget(cvdId: string): Promise<TargetRecord | null> {
    const r = await this.q<TargetRow>(`${PG_TARGETS} WHERE c.id = $1`, [cvdId]);
    return r.rows[0] ? toTarget(r.rows[0]) : null;
  }

  async listTargets(after: string | null, limit: number): Promise<TargetRecord[]> {
    const r =
      after === null
        ? await this.q<TargetRow>(`${PG_TARGETS} ORDER BY c.id COLLATE "C" LIMIT $1`, [limit])
        : await this.q<TargetRow>(
            `${PG_TARGETS} WHERE c.id COLLATE "C" > $1 ORDER BY c.id COLLATE "C" LIMIT $2`,
            [after, limit],
          );
    return r.rows.map(toTarget);
  }
}
