import type { RepoCatalog } from "@strata/repo";
import { openPostgresCatalog, type PostgresCatalogOptions } from "./postgres.js";
import { openSqliteCatalog } from "./sqlite.js";

export {
  FILE_CACHE_FLUSH_BYTES,
  FILE_CACHE_FLUSH_EVERY,
  openSqliteFileCache,
  SqliteFileCache,
} from "./filecache.js";
export {
  COPY_THRESHOLD,
  openPostgresCatalog,
  PostgresCatalog,
  type PostgresCatalogOptions,
} from "./postgres.js";
export { openSqliteCatalog, SqliteCatalog } from "./sqlite.js";

/** True when `spec` names a PostgreSQL database rather than a SQLite file. */
export function isPostgresSpec(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/**
 * Open a catalog from one string: a `postgres://` / `postgresql://` URL, or a
 * SQLite file path (an optional `sqlite:` prefix is stripped).
 */
export async function openCatalog(spec: string, opts: PostgresCatalogOptions = {}): Promise<RepoCatalog> {
  if (isPostgresSpec(spec)) return openPostgresCatalog(spec, opts);
  return openSqliteCatalog(spec.startsWith("sqlite:") ? spec.slice("sqlite:".length) : spec);
}

export {
  type AutoassignRuleMove,
  type AutoassignRulePatch,
  type AutoassignRuleRecord,
  type AutoassignStore,
  type NewAutoassignRule,
  PostgresAutoassignStore,
  SqliteAutoassignStore,
} from "./autoassign.js";
export { PostgresFleetStore } from "./fleet-postgres.js";
export { SqliteFleetStore } from "./fleet-sqlite.js";
export type {
  CvdRecord,
  CvdRemoteControl,
  CvdSummary,
  EndpointFilter,
  EndpointRecord,
  EndpointState,
  EnrollmentTokenRecord,
  FleetStore,
  NewEndpoint,
  PolicyRecord,
  PolicyUsage,
} from "./fleet-store.js";
export {
  type AssignmentRecord,
  type AssignmentTargetKind,
  type CapturePatch,
  type CaptureRecord,
  type CaptureState,
  type CvdImageRecord,
  type ImageRecord,
  LAYER_KINDS,
  type LayerKind,
  type LayerRecord,
  type LayerRefRecord,
  type LayerStore,
  type LayerVersionRecord,
  PostgresLayerStore,
  SqliteLayerStore,
} from "./layers.js";
export {
  openSqliteRestoreStore,
  PostgresRestoreStore,
  PostgresTaskStore,
  type RestoreCounters,
  type RestoreSessionRecord,
  type RestoreSessionState,
  type RestoreSessionStore,
  SqliteRestoreStore,
  SqliteTaskStore,
  TASK_KINDS,
  TASK_STATES,
  type TaskError,
  type TaskFilter,
  type TaskKind,
  type TaskPatch,
  type TaskRecord,
  type TaskState,
  type TaskStore,
} from "./restores.js";
export {
  openPostgresServerStore,
  PostgresServerStore,
} from "./server-postgres.js";
export { openSqliteServerStore, SqliteServerStore } from "./server-sqlite.js";
export type {
  ApiTokenRecord,
  AuditFilter,
  AuditRecord,
  NewAuditRecord,
  RoleRecord,
  ServerStore,
  UserPatch,
  UserRecord,
} from "./server-store.js";
export {
  type CollectionRecord,
  type DriverProfilePatch,
  type DriverProfileRecord,
  type LayerRulesRecord,
  PostgresTargetingStore,
  SqliteTargetingStore,
  type TargetingStore,
  type TargetRecord,
} from "./targeting.js";
export {
  openSqliteUploadStore,
  PostgresUploadStore,
  SqliteUploadStore,
  type TreeAtPath,
  type UploadCounters,
  type UploadSessionRecord,
  type UploadState,
  type UploadStore,
} from "./uploads.js";
