/**
 * Layers (migration 0007_layers; docs/design/layers.md): layers and their
 * versions, reference CVDs, app captures, assignments, composed images and
 * each CVD's target and applied image.
 *
 * Trees live in the repository behind snapshot records (kind `layer` and
 * `image`); these tables hold names, numbers, OS releases and manifests.
 * Manifests are opaque JSON here (the server builds and reads them).
 *
 * Contract (test/layer-contract.ts, run on SQLite and PostgreSQL):
 * - get* MUST return null, never throw, for a missing row.
 * - createLayer MUST throw ALREADY_EXISTS (naming the layer) on a taken id or
 *   name and leave the store unchanged.
 * - addLayerVersion MUST throw NOT_FOUND for a missing layer, ALREADY_EXISTS
 *   on a taken (layer, version) or (layer, label); versions are given by the
 *   caller (it tags the snapshot with the number before recording it) and
 *   MUST be the layer's newest + 1 (INVALID_ARGUMENT otherwise), so two
 *   captures racing for one number cannot both win.
 * - listLayerVersions answers oldest first and never reads manifests.
 * - setReference returns whether it changed anything.
 * - updateCapture is a compare-and-set on the state, like updateTask.
 * - assignmentsFor answers newest first (assigned_at, then id).
 * - putImage keeps the first row of a key (a second composition of the same
 *   versions returns the stored one).
 */
import { type SnapshotId, StrataError, type TreeId } from "@strata/core";
import type Database from "better-sqlite3";
import type pg from "pg";
import { hexId, idBytes } from "./common.js";
import { withTransaction } from "./postgres.js";

export type LayerKind = "base" | "app" | "driver";
export const LAYER_KINDS: readonly LayerKind[] = ["base", "app", "driver"];

export interface LayerRecord {
  /** `lay_…` */
  id: string;
  name: string;
  kind: LayerKind;
  description: string;
  createdAt: Date;
}

export interface LayerVersionRecord {
  layerId: string;
  version: number;
  label: string;
  /** The layer's snapshot record (kind `layer`). */
  snapshot: SnapshotId;
  tree: TreeId;
  /** os-release ID / VERSION_ID of the captured root; null when it had none. */
  osId: string | null;
  osVersion: string | null;
  files: number;
  bytes: number;
  packages: number;
  sourceCvd: string | null;
  sourceSnapshots: string[];
  createdAt: Date;
  /** `user:NAME` or `endpoint:ep_…` */
  createdBy: string;
}

export type CaptureState = "open" | "finished" | "cancelled";

export interface CaptureRecord {
  /** `cap_…` */
  id: string;
  cvdId: string;
  state: CaptureState;
  preSnapshot: SnapshotId;
  postSnapshot: SnapshotId | null;
  params: Record<string, unknown>;
  layerId: string | null;
  layerVersion: number | null;
  createdAt: Date;
  finishedAt: Date | null;
}

export interface CapturePatch {
  state?: CaptureState;
  postSnapshot?: SnapshotId | null;
  params?: Record<string, unknown>;
  layerId?: string | null;
  layerVersion?: number | null;
  finishedAt?: Date | null;
}

export interface LayerRefRecord {
  layer: string;
  /** Null: always the newest. */
  version: number | null;
}

export type AssignmentTargetKind = "cvd" | "collection";

export interface AssignmentRecord {
  /** `asg_…` */
  id: string;
  targetKind: AssignmentTargetKind;
  targetId: string;
  base: LayerRefRecord | null;
  apps: LayerRefRecord[];
  assignedAt: Date;
  /** `user:NAME` */
  assignedBy: string;
}

export interface ImageRecord {
  /** 64 hex: SHA-256 of the canonical JSON of `layers`. */
  key: string;
  snapshot: SnapshotId;
  /** The composed layer versions, in order: [kind, layer id, version]. */
  layers: [LayerKind, string, number][];
  manifest: Record<string, unknown>;
  createdAt: Date;
}

export interface CvdImageRecord {
  cvdId: string;
  targetImage: SnapshotId | null;
  targetAt: Date | null;
  appliedImage: SnapshotId | null;
  appliedAt: Date | null;
}

export interface LayerStore {
  createLayer(l: LayerRecord): Promise<void>;
  getLayer(id: string): Promise<LayerRecord | null>;
  getLayerByName(name: string): Promise<LayerRecord | null>;
  /** By name. */
  listLayers(): Promise<LayerRecord[]>;

  addLayerVersion(v: LayerVersionRecord, manifest: Record<string, unknown>): Promise<void>;
  getLayerVersion(layerId: string, version: number): Promise<LayerVersionRecord | null>;
  /** The layer's newest version, null when it has none. */
  newestLayerVersion(layerId: string): Promise<LayerVersionRecord | null>;
  /** The layer's versions, oldest first; without a layer, every layer's (by layer, then version). */
  listLayerVersions(layerId?: string): Promise<LayerVersionRecord[]>;
  getLayerManifest(layerId: string, version: number): Promise<Record<string, unknown> | null>;

  /** Mark (on) or unmark a CVD reference; true when that changed something. */
  setReference(cvdId: string, on: boolean, at: Date, by: string): Promise<boolean>;
  isReference(cvdId: string): Promise<boolean>;

  createCapture(c: CaptureRecord): Promise<void>;
  getCapture(id: string): Promise<CaptureRecord | null>;
  /** Compare-and-set on the state: applies `patch` only when the capture's state is one of `from`. */
  updateCapture(id: string, from: readonly CaptureState[], patch: CapturePatch): Promise<boolean>;

  addAssignment(a: AssignmentRecord): Promise<void>;
  /** Assignments to any of `targets`, newest first, at most `limit`. */
  assignmentsFor(
    targets: readonly { kind: AssignmentTargetKind; id: string }[],
    limit: number,
  ): Promise<AssignmentRecord[]>;

  /** Insert unless the key exists; returns the stored row. */
  putImage(i: ImageRecord): Promise<ImageRecord>;
  getImage(key: string): Promise<ImageRecord | null>;
  getImageBySnapshot(snapshot: SnapshotId): Promise<ImageRecord | null>;

  getCvdImage(cvdId: string): Promise<CvdImageRecord | null>;
  setTargetImage(cvdId: string, image: SnapshotId, at: Date): Promise<void>;
  setAppliedImage(cvdId: string, image: SnapshotId, at: Date): Promise<void>;
}

// ---- rows ---------------------------------------------------------------------

type Time = number | Date;
const toDate = (v: Time) => (v instanceof Date ? v : new Date(v));
const toDateOrNull = (v: Time | null) => (v === null ? null : toDate(v));
const json = <T>(v: string | T): T => (typeof v === "string" ? (JSON.parse(v) as T) : v);
const idOrNull = <T extends string>(b: Buffer | null): T | null => (b === null ? null : hexId<T>(b));
const bytesOrNull = (id: string | null) => (id === null ? null : idBytes(id));

interface LayerRow {
  id: string;
  name: string;
  kind: LayerKind;
  description: string;
  created_at: Time;
}
const LAYER_COLS = "id, name, kind, description, created_at";
const toLayer = (r: LayerRow): LayerRecord => ({
  id: r.id,
  name: r.name,
  kind: r.kind,
  description: r.description,
  createdAt: toDate(r.created_at),
});

interface VersionRow {
  layer_id: string;
  version: number;
  label: string;
  snapshot: Buffer;
  tree: Buffer;
  os_id: string | null;
  os_version: string | null;
  files: number | string;
  bytes: number | string;
  packages: number;
  source_cvd: string | null;
  source_snapshots: string | string[];
  created_at: Time;
  created_by: string;
}
const VERSION_COLS = `layer_id, version, label, snapshot, tree, os_id, os_version, files, bytes, packages,
  source_cvd, source_snapshots, created_at, created_by`;
const toVersion = (r: VersionRow): LayerVersionRecord => ({
  layerId: r.layer_id,
  version: Number(r.version),
  label: r.label,
  snapshot: hexId<SnapshotId>(r.snapshot),
  tree: hexId<TreeId>(r.tree),
  osId: r.os_id,
  osVersion: r.os_version,
  files: Number(r.files),
  bytes: Number(r.bytes),
  packages: Number(r.packages),
  sourceCvd: r.source_cvd,
  sourceSnapshots: json<string[]>(r.source_snapshots),
  createdAt: toDate(r.created_at),
  createdBy: r.created_by,
});
function versionValues(v: LayerVersionRecord, manifest: Record<string, unknown>, t: (d: Date) => Time) {
  return [
    v.layerId,
    v.version,
    v.label,
    idBytes(v.snapshot),
    idBytes(v.tree),
    v.osId,
    v.osVersion,
    v.files,
    v.bytes,
    v.packages,
    v.sourceCvd,
    JSON.stringify(v.sourceSnapshots),
    t(v.createdAt),
    v.createdBy,
    JSON.stringify(manifest),
  ];
}

interface CaptureRow {
  id: string;
  cvd_id: string;
  state: CaptureState;
  pre_snapshot: Buffer;
  post_snapshot: Buffer | null;
  params: string | Record<string, unknown>;
  layer_id: string | null;
  layer_version: number | null;
  created_at: Time;
  finished_at: Time | null;
}
const CAPTURE_COLS =
  "id, cvd_id, state, pre_snapshot, post_snapshot, params, layer_id, layer_version, created_at, finished_at";
const toCapture = (r: CaptureRow): CaptureRecord => ({
  id: r.id,
  cvdId: r.cvd_id,
  state: r.state,
  preSnapshot: hexId<SnapshotId>(r.pre_snapshot),
  postSnapshot: idOrNull<SnapshotId>(r.post_snapshot),
  params: json<Record<string, unknown>>(r.params),
  layerId: r.layer_id,
  layerVersion: r.layer_version === null ? null : Number(r.layer_version),
  createdAt: toDate(r.created_at),
  finishedAt: toDateOrNull(r.finished_at),
});
const captureValues = (c: CaptureRecord, t: (d: Date) => Time) => [
  c.id,
  c.cvdId,
  c.state,
  idBytes(c.preSnapshot),
  bytesOrNull(c.postSnapshot),
  JSON.stringify(c.params ?? {}),
  c.layerId,
  c.layerVersion,
  t(c.createdAt),
  c.finishedAt ? t(c.finishedAt) : null,
];
function capturePatchColumns(p: CapturePatch, t: (d: Date) => Time): [string[], unknown[]] {
  const cols: string[] = [];
  const vals: unknown[] = [];
  const set = (c: string, v: unknown) => {
    cols.push(c);
    vals.push(v);
  };
  if (p.state !== undefined) set("state", p.state);
  if (p.postSnapshot !== undefined) set("post_snapshot", bytesOrNull(p.postSnapshot));
  if (p.params !== undefined) set("params", JSON.stringify(p.params));
  if (p.layerId !== undefined) set("layer_id", p.layerId);
  if (p.layerVersion !== undefined) set("layer_version", p.layerVersion);
  if (p.finishedAt !== undefined) set("finished_at", p.finishedAt ? t(p.finishedAt) : null);
  return [cols, vals];
}

interface AssignmentRow {
  id: string;
  target_kind: AssignmentTargetKind;
  target_id: string;
  base_layer: string | null;
  base_version: number | null;
  apps: string | LayerRefRecord[];
  assigned_at: Time;
  assigned_by: string;
}
const ASSIGNMENT_COLS =
  "id, target_kind, target_id, base_layer, base_version, apps, assigned_at, assigned_by";
const toAssignment = (r: AssignmentRow): AssignmentRecord => ({
  id: r.id,
  targetKind: r.target_kind,
  targetId: r.target_id,
  base:
    r.base_layer === null
      ? null
      : { layer: r.base_layer, version: r.base_version === null ? null : Number(r.base_version) },
  apps: json<LayerRefRecord[]>(r.apps).map((a) => ({ layer: a.layer, version: a.version ?? null })),
  assignedAt: toDate(r.assigned_at),
  assignedBy: r.assigned_by,
});
const assignmentValues = (a: AssignmentRecord, t: (d: Date) => Time) => [
  a.id,
  a.targetKind,
  a.targetId,
  a.base?.layer ?? null,
  a.base?.version ?? null,
  JSON.stringify(a.apps.map((x) => ({ layer: x.layer, version: x.version }))),
  t(a.assignedAt),
  a.assignedBy,
];

interface ImageRow {
  key: string;
  snapshot: Buffer;
  layers: string | ImageRecord["layers"];
  manifest: string | Record<string, unknown>;
  created_at: Time;
}
const IMAGE_COLS = "key, snapshot, layers, manifest, created_at";
const toImage = (r: ImageRow): ImageRecord => ({
  key: r.key,
  snapshot: hexId<SnapshotId>(r.snapshot),
  layers: json<ImageRecord["layers"]>(r.layers),
  manifest: json<Record<string, unknown>>(r.manifest),
  createdAt: toDate(r.created_at),
});

interface CvdImageRow {
  cvd_id: string;
  target_image: Buffer | null;
  target_at: Time | null;
  applied_image: Buffer | null;
  applied_at: Time | null;
}
const toCvdImage = (r: CvdImageRow): CvdImageRecord => ({
  cvdId: r.cvd_id,
  targetImage: idOrNull<SnapshotId>(r.target_image),
  targetAt: toDateOrNull(r.target_at),
  appliedImage: idOrNull<SnapshotId>(r.applied_image),
  appliedAt: toDateOrNull(r.applied_at),
});

// ---- errors worded once --------------------------------------------------------

function layerExists(l: LayerRecord): StrataError {
  return new StrataError("ALREADY_EXISTS", `a layer named ${l.name} already exists`, {
    subject: l.name,
    hint: "capture a new version of it, or choose another name",
  });
}
function noLayer(id: string): StrataError {
  return new StrataError("NOT_FOUND", `layer ${id} does not exist`, {
    subject: id,
    hint: "see `strata layer ls`",
  });
}
function versionTaken(v: LayerVersionRecord, byLabel: boolean): StrataError {
  return byLabel
    ? new StrataError("ALREADY_EXISTS", `layer ${v.layerId} already has a version labelled ${v.label}`, {
        subject: v.label,
        hint: "give another --label (labels are unique per layer)",
      })
    : new StrataError("ALREADY_EXISTS", `layer ${v.layerId} already has a version ${v.version}`, {
        subject: `${v.layerId}@${v.version}`,
        hint: "another capture of the layer finished at the same moment: capture again",
      });
}
function notNext(v: LayerVersionRecord, newest: number): StrataError {
  return new StrataError(
    "INVALID_ARGUMENT",
    `version ${v.version} of layer ${v.layerId} is not the next one (${newest + 1})`,
    { subject: `${v.layerId}@${v.version}` },
  );
}

const ins = (n: number, from = 1, pg = false) =>
  Array.from({ length: n }, (_, i) => (pg ? `$${i + from}` : "?")).join(", ");

// ---- SQLite -------------------------------------------------------------------

/** LayerStore on the server's SQLite connection (SqliteServerStore.layers). */
export class SqliteLayerStore implements LayerStore {
  private readonly txAddVersion: Database.Transaction<
    (v: LayerVersionRecord, manifest: Record<string, unknown>) => void
  >;

  constructor(private readonly db: Database.Database) {
    this.txAddVersion = db.transaction((v: LayerVersionRecord, manifest: Record<string, unknown>) => {
      if (!db.prepare("SELECT 1 FROM layers WHERE id = ?").get(v.layerId)) throw noLayer(v.layerId);
      const newest = Number(
        db
          .prepare("SELECT coalesce(max(version), 0) FROM layer_versions WHERE layer_id = ?")
          .pluck()
          .get(v.layerId),
      );
      if (db.prepare("SELECT 1 FROM layer_versions WHERE layer_id = ? AND label = ?").get(v.layerId, v.label))
        throw versionTaken(v, true);
      if (v.version <= newest) throw versionTaken(v, false);
      if (v.version !== newest + 1) throw notNext(v, newest);
      db.prepare(`INSERT INTO layer_versions (${VERSION_COLS}, manifest) VALUES (${ins(15)})`).run(
        ...versionValues(v, manifest, (d) => d.getTime()),
      );
    });
  }

  async createLayer(l: LayerRecord): Promise<void> {
    try {
      this.db
        .prepare(`INSERT INTO layers (${LAYER_COLS}) VALUES (${ins(5)})`)
        .run(l.id, l.name, l.kind, l.description, l.createdAt.getTime());
    } catch (e) {
      const code = (e as { code?: string }).code ?? "";
      if (code.startsWith("SQLITE_CONSTRAINT")) throw layerExists(l);
      throw e;
    }
  }

  async getLayer(id: string): Promise<LayerRecord | null> {
    const r = this.db.prepare(`SELECT ${LAYER_COLS} FROM layers WHERE id = ?`).get(id) as
      | LayerRow
      | undefined;
    return r ? toLayer(r) : null;
  }

  async getLayerByName(name: string): Promise<LayerRecord | null> {
    const r = this.db.prepare(`SELECT ${LAYER_COLS} FROM layers WHERE name = ?`).get(name) as
      | LayerRow
      | undefined;
    return r ? toLayer(r) : null;
  }

  async listLayers(): Promise<LayerRecord[]> {
    return (this.db.prepare(`SELECT ${LAYER_COLS} FROM layers ORDER BY name`).all() as LayerRow[]).map(
      toLayer,
    );
  }

  async addLayerVersion(v: LayerVersionRecord, manifest: Record<string, unknown>): Promise<void> {
    this.txAddVersion.immediate(v, manifest);
  }

  async getLayerVersion(layerId: string, version: number): Promise<LayerVersionRecord | null> {
    const r = this.db
      .prepare(`SELECT ${VERSION_COLS} FROM layer_versions WHERE layer_id = ? AND version = ?`)
      .get(layerId, version) as VersionRow | undefined;
    return r ? toVersion(r) : null;
  }

  async newestLayerVersion(layerId: string): Promise<LayerVersionRecord | null> {
    const r = this.db
      .prepare(`SELECT ${VERSION_COLS} FROM layer_versions WHERE layer_id = ? ORDER BY version DESC LIMIT 1`)
      .get(layerId) as VersionRow | undefined;
    return r ? toVersion(r) : null;
  }

  async listLayerVersions(layerId?: string): Promise<LayerVersionRecord[]> {
    const rows =
      layerId === undefined
        ? this.db.prepare(`SELECT ${VERSION_COLS} FROM layer_versions ORDER BY layer_id, version`).all()
        : this.db
            .prepare(`SELECT ${VERSION_COLS} FROM layer_versions WHERE layer_id = ? ORDER BY version`)
            .all(layerId);
    return (rows as VersionRow[]).map(toVersion);
  }

  async getLayerManifest(layerId: string, version: number): Promise<Record<string, unknown> | null> {
    const m = this.db
      .prepare("SELECT manifest FROM layer_versions WHERE layer_id = ? AND version = ?")
      .pluck()
      .get(layerId, version) as string | undefined;
    return m === undefined ? null : (JSON.parse(m) as Record<string, unknown>);
  }

  async setReference(cvdId: string, on: boolean, at: Date, by: string): Promise<boolean> {
    const r = on
      ? this.db
          .prepare(
            "INSERT INTO cvd_reference (cvd_id, marked_at, marked_by) VALUES (?, ?, ?) ON CONFLICT (cvd_id) DO NOTHING",
          )
          .run(cvdId, at.getTime(), by)
      : this.db.prepare("DELETE FROM cvd_reference WHERE cvd_id = ?").run(cvdId);
    return r.changes > 0;
  }

  async isReference(cvdId: string): Promise<boolean> {
    return this.db.prepare("SELECT 1 FROM cvd_reference WHERE cvd_id = ?").get(cvdId) !== undefined;
  }

  async createCapture(c: CaptureRecord): Promise<void> {
    this.db
      .prepare(`INSERT INTO captures (${CAPTURE_COLS}) VALUES (${ins(10)})`)
      .run(...captureValues(c, (d) => d.getTime()));
  }

  async getCapture(id: string): Promise<CaptureRecord | null> {
    const r = this.db.prepare(`SELECT ${CAPTURE_COLS} FROM captures WHERE id = ?`).get(id) as
      | CaptureRow
      | undefined;
    return r ? toCapture(r) : null;
  }

  async updateCapture(id: string, from: readonly CaptureState[], patch: CapturePatch): Promise<boolean> {
    const [cols, vals] = capturePatchColumns(patch, (d) => d.getTime());
    if (!from.length || !cols.length) return false;
    const r = this.db
      .prepare(
        `UPDATE captures SET ${cols.map((c) => `${c} = ?`).join(", ")}
         WHERE id = ? AND state IN (${ins(from.length)})`,
      )
      .run(...vals, id, ...from);
    return r.changes > 0;
  }

  async addAssignment(a: AssignmentRecord): Promise<void> {
    this.db
      .prepare(`INSERT INTO assignments (${ASSIGNMENT_COLS}) VALUES (${ins(8)})`)
      .run(...assignmentValues(a, (d) => d.getTime()));
  }

  async assignmentsFor(
    targets: readonly { kind: AssignmentTargetKind; id: string }[],
    limit: number,
  ): Promise<AssignmentRecord[]> {
    if (!targets.length) return [];
    const where = targets.map(() => "(target_kind = ? AND target_id = ?)").join(" OR ");
    return (
      this.db
        .prepare(
          `SELECT ${ASSIGNMENT_COLS} FROM assignments WHERE ${where} ORDER BY assigned_at DESC, id DESC LIMIT ?`,
        )
        .all(...targets.flatMap((t) => [t.kind, t.id]), limit) as AssignmentRow[]
    ).map(toAssignment);
  }

  async putImage(i: ImageRecord): Promise<ImageRecord> {
    this.db
      .prepare(`INSERT INTO images (${IMAGE_COLS}) VALUES (${ins(5)}) ON CONFLICT (key) DO NOTHING`)
      .run(
        i.key,
        idBytes(i.snapshot),
        JSON.stringify(i.layers),
        JSON.stringify(i.manifest),
        i.createdAt.getTime(),
      );
    return (await this.getImage(i.key))!;
  }

  async getImage(key: string): Promise<ImageRecord | null> {
    const r = this.db.prepare(`SELECT ${IMAGE_COLS} FROM images WHERE key = ?`).get(key) as
      | ImageRow
      | undefined;
    return r ? toImage(r) : null;
  }

  async getImageBySnapshot(snapshot: SnapshotId): Promise<ImageRecord | null> {
    const r = this.db
      .prepare(`SELECT ${IMAGE_COLS} FROM images WHERE snapshot = ? ORDER BY created_at LIMIT 1`)
      .get(idBytes(snapshot)) as ImageRow | undefined;
    return r ? toImage(r) : null;
  }

  async getCvdImage(cvdId: string): Promise<CvdImageRecord | null> {
    const r = this.db
      .prepare(
        "SELECT cvd_id, target_image, target_at, applied_image, applied_at FROM cvd_images WHERE cvd_id = ?",
      )
      .get(cvdId) as CvdImageRow | undefined;
    return r ? toCvdImage(r) : null;
  }

  async setTargetImage(cvdId: string, image: SnapshotId, at: Date): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO cvd_images (cvd_id, target_image, target_at) VALUES (?, ?, ?)
         ON CONFLICT (cvd_id) DO UPDATE SET target_image = excluded.target_image, target_at = excluded.target_at`,
      )
      .run(cvdId, idBytes(image), at.getTime());
  }

  async setAppliedImage(cvdId: string, image: SnapshotId, at: Date): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO cvd_images (cvd_id, applied_image, applied_at) VALUES (?, ?, ?)
         ON CONFLICT (cvd_id) DO UPDATE SET applied_image = excluded.applied_image, applied_at = excluded.applied_at`,
      )
      .run(cvdId, idBytes(image), at.getTime());
  }
}

// ---- PostgreSQL ---------------------------------------------------------------

const UNIQUE = "23505";
const FOREIGN_KEY = "23503";

/** LayerStore on PostgreSQL: shares the catalog's pool and schema. */
export class PostgresLayerStore implements LayerStore {
  constructor(private readonly pool: pg.Pool) {}

  private async q<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []) {
    return this.pool.query<R>(sql, params);
  }

  async createLayer(l: LayerRecord): Promise<void> {
    try {
      await this.q(`INSERT INTO layers (${LAYER_COLS}) VALUES (${ins(5, 1, true)})`, [
        l.id,
        l.name,
        l.kind,
        l.description,
        l.createdAt,
      ]);
    } catch (e) {
      if ((e as { code?: string }).code === UNIQUE) throw layerExists(l);
      throw e;
    }
  }

  async getLayer(id: string): Promise<LayerRecord | null> {
    const r = await this.q<LayerRow>(`SELECT ${LAYER_COLS} FROM layers WHERE id = $1`, [id]);
    return r.rows[0] ? toLayer(r.rows[0]) : null;
  }

  async getLayerByName(name: string): Promise<LayerRecord | null> {
    const r = await this.q<LayerRow>(`SELECT ${LAYER_COLS} FROM layers WHERE name = $1`, [name]);
    return r.rows[0] ? toLayer(r.rows[0]) : null;
  }

  async listLayers(): Promise<LayerRecord[]> {
    // C collation: the same order as SQLite's binary comparison.
    const r = await this.q<LayerRow>(`SELECT ${LAYER_COLS} FROM layers ORDER BY name COLLATE "C"`);
    return r.rows.map(toLayer);
  }

  async addLayerVersion(v: LayerVersionRecord, manifest: Record<string, unknown>): Promise<void> {
    try {
      await withTransaction(this.pool, async (c) => {
        // The layer row is locked: versions of one layer are added one at a time.
        const l = await c.query("SELECT 1 FROM layers WHERE id = $1 FOR UPDATE", [v.layerId]);
        if (!l.rowCount) throw noLayer(v.layerId);
        const newest = Number(
          (
            await c.query<{ n: number }>(
              "SELECT coalesce(max(version), 0) AS n FROM layer_versions WHERE layer_id = $1",
              [v.layerId],
            )
          ).rows[0]?.n ?? 0,
        );
        const label = await c.query("SELECT 1 FROM layer_versions WHERE layer_id = $1 AND label = $2", [
          v.layerId,
          v.label,
        ]);
        if (label.rowCount) throw versionTaken(v, true);
        if (v.version <= newest) throw versionTaken(v, false);
        if (v.version !== newest + 1) throw notNext(v, newest);
        await c.query(
          `INSERT INTO layer_versions (${VERSION_COLS}, manifest) VALUES (${ins(15, 1, true)})`,
          versionValues(v, manifest, (d) => d),
        );
      });
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === UNIQUE) throw versionTaken(v, false);
      if (code === FOREIGN_KEY) throw noLayer(v.layerId);
      throw e;
    }
  }

  async getLayerVersion(layerId: string, version: number): Promise<LayerVersionRecord | null> {
    const r = await this.q<VersionRow>(
      `SELECT ${VERSION_COLS} FROM layer_versions WHERE layer_id = $1 AND version = $2`,
      [layerId, version],
    );
    return r.rows[0] ? toVersion(r.rows[0]) : null;
  }

  async newestLayerVersion(layerId: string): Promise<LayerVersionRecord | null> {
    const r = await this.q<VersionRow>(
      `SELECT ${VERSION_COLS} FROM layer_versions WHERE layer_id = $1 ORDER BY version DESC LIMIT 1`,
      [layerId],
    );
    return r.rows[0] ? toVersion(r.rows[0]) : null;
  }

  async listLayerVersions(layerId?: string): Promise<LayerVersionRecord[]> {
    const r =
      layerId === undefined
        ? await this.q<VersionRow>(
            `SELECT ${VERSION_COLS} FROM layer_versions ORDER BY layer_id COLLATE "C", version`,
          )
        : await this.q<VersionRow>(
            `SELECT ${VERSION_COLS} FROM layer_versions WHERE layer_id = $1 ORDER BY version`,
            [layerId],
          );
    return r.rows.map(toVersion);
  }

  async getLayerManifest(layerId: string, version: number): Promise<Record<string, unknown> | null> {
    const r = await this.q<{ manifest: Record<string, unknown> }>(
      "SELECT manifest FROM layer_versions WHERE layer_id = $1 AND version = $2",
      [layerId, version],
    );
    return r.rows[0]?.manifest ?? null;
  }

  async setReference(cvdId: string, on: boolean, at: Date, by: string): Promise<boolean> {
    const r = on
      ? await this.q(
          "INSERT INTO cvd_reference (cvd_id, marked_at, marked_by) VALUES ($1, $2, $3) ON CONFLICT (cvd_id) DO NOTHING",
          [cvdId, at, by],
        )
      : await this.q("DELETE FROM cvd_reference WHERE cvd_id = $1", [cvdId]);
    return (r.rowCount ?? 0) > 0;
  }

  async isReference(cvdId: string): Promise<boolean> {
    return ((await this.q("SELECT 1 FROM cvd_reference WHERE cvd_id = $1", [cvdId])).rowCount ?? 0) > 0;
  }

  async createCapture(c: CaptureRecord): Promise<void> {
    await this.q(
      `INSERT INTO captures (${CAPTURE_COLS}) VALUES (${ins(10, 1, true)})`,
      captureValues(c, (d) => d),
    );
  }

  async getCapture(id: string): Promise<CaptureRecord | null> {
    const r = await this.q<CaptureRow>(`SELECT ${CAPTURE_COLS} FROM captures WHERE id = $1`, [id]);
    return r.rows[0] ? toCapture(r.rows[0]) : null;
  }

  async updateCapture(id: string, from: readonly CaptureState[], patch: CapturePatch): Promise<boolean> {
    const [cols, vals] = capturePatchColumns(patch, (d) => d);
    if (!from.length || !cols.length) return false;
    const n = cols.length;
    const r = await this.q(
      `UPDATE captures SET ${cols.map((c, i) => `${c} = $${i + 1}`).join(", ")}
       WHERE id = $${n + 1} AND state = ANY($${n + 2}::text[])`,
      [...vals, id, [...from]],
    );
    return (r.rowCount ?? 0) > 0;
  }

  async addAssignment(a: AssignmentRecord): Promise<void> {
    await this.q(
      `INSERT INTO assignments (${ASSIGNMENT_COLS}) VALUES (${ins(8, 1, true)})`,
      assignmentValues(a, (d) => d),
    );
  }

  async assignmentsFor(
    targets: readonly { kind: AssignmentTargetKind; id: string }[],
    limit: number,
  ): Promise<AssignmentRecord[]> {
    if (!targets.length) return [];
    const r = await this.q<AssignmentRow>(
      `SELECT ${ASSIGNMENT_COLS} FROM assignments
       WHERE (target_kind, target_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
       ORDER BY assigned_at DESC, id DESC LIMIT $3`,
      [targets.map((t) => t.kind), targets.map((t) => t.id), limit],
    );
    return r.rows.map(toAssignment);
  }

  async putImage(i: ImageRecord): Promise<ImageRecord> {
    await this.q(
      `INSERT INTO images (${IMAGE_COLS}) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING`,
      [i.key, idBytes(i.snapshot), JSON.stringify(i.layers), JSON.stringify(i.manifest), i.createdAt],
    );
    return (await this.getImage(i.key))!;
  }

  async getImage(key: string): Promise<ImageRecord | null> {
    const r = await this.q<ImageRow>(`SELECT ${IMAGE_COLS} FROM images WHERE key = $1`, [key]);
    return r.rows[0] ? toImage(r.rows[0]) : null;
  }

  async getImageBySnapshot(snapshot: SnapshotId): Promise<ImageRecord | null> {
    const r = await this.q<ImageRow>(
      `SELECT ${IMAGE_COLS} FROM images WHERE snapshot = $1 ORDER BY created_at LIMIT 1`,
      [idBytes(snapshot)],
    );
    return r.rows[0] ? toImage(r.rows[0]) : null;
  }

  async getCvdImage(cvdId: string): Promise<CvdImageRecord | null> {
    const r = await this.q<CvdImageRow>(
      "SELECT cvd_id, target_image, target_at, applied_image, applied_at FROM cvd_images WHERE cvd_id = $1",
      [cvdId],
    );
    return r.rows[0] ? toCvdImage(r.rows[0]) : null;
  }

  async setTargetImage(cvdId: string, image: SnapshotId, at: Date): Promise<void> {
    await this.q(
      `INSERT INTO cvd_images (cvd_id, target_image, target_at) VALUES ($1, $2, $3)
       ON CONFLICT (cvd_id) DO UPDATE SET target_image = excluded.target_image, target_at = excluded.target_at`,
      [cvdId, idBytes(image), at],
    );
  }

  async setAppliedImage(cvdId: string, image: SnapshotId, at: Date): Promise<void> {
    await this.q(
      `INSERT INTO cvd_images (cvd_id, applied_image, applied_at) VALUES ($1, $2, $3)
       ON CONFLICT (cvd_id) DO UPDATE SET applied_image = excluded.applied_image, applied_at = excluded.applied_at`,
      [cvdId, idBytes(image), at],
    );
  }
}
