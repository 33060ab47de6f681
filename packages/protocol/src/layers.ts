/**
 * Layers, captures, assignments, collections, driver profiles, images and
 * the apply plan, as docs/design/layers.md specifies them.
 */
import { CVD_ID_PATTERN, type PolicyRule } from "./fleet.js";
import { dateTime, nullableDateTime, obj, type Schema, str } from "./json-schema.js";
import { type RestoreSessionInfo, restoreSchemas, SNAPSHOT_REF_PATTERN } from "./restore.js";

export type LayerKind = "base" | "app" | "driver";
export const LAYER_KINDS: readonly LayerKind[] = ["base", "app", "driver"];
export const LAYER_ID_PATTERN = "^lay_[A-Za-z0-9_-]{1,60}$";
export const LAYER_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$";
/** A version label: `1.6`, `2026.11`, `12.8-r1`. */
export const LAYER_LABEL_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$";
/** A path segment naming a layer: its id (`lay_…`) or its name. */
export const LAYER_REF_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$";
export const CAPTURE_ID_PATTERN = "^cap_[A-Za-z0-9_-]{1,60}$";

export interface OsRelease {
  /** os-release ID, e.g. `debian`. */
  id: string;
  /** os-release VERSION_ID, e.g. `12`. Empty for a release without one (testing). */
  versionId: string;
}

/** A dpkg status stanza of one package. */
export interface PackageStanza {
  name: string;
  arch: string;
  version: string;
  /** The whole stanza, as dpkg writes it, without the blank line that ends it. */
  stanza: string;
}

export interface AccountLines {
  passwd: string[];
  group: string[];
  shadow: string[];
  gshadow: string[];
}

export type Trigger =
  | "ldconfig"
  | "update-alternatives"
  | "kernel-postrm"
  | "depmod"
  | "kernel-postinst"
  | "update-initramfs"
  | "update-grub"
  | "systemd-daemon-reload";

/** docs/design/layers.md, "Alternatives": a group a layer registers alternatives into. */
export interface LayerAlternative {
  name: string;
  /** The generic (master) link, e.g. /usr/bin/editor. */
  link: string;
  slaves: { name: string; link: string }[];
  /** The alternatives the layer added or changed; `slaves` maps a slave's name to its path. */
  choices: { path: string; priority: number; slaves: Record<string, string> }[];
  /** The alternative the capture chose by hand (kept unless the endpoint chose by hand). */
  manual?: string;
}

export interface LayerAlternatives {
  groups: LayerAlternative[];
  /** Alternatives the layer removed (`update-alternatives --remove NAME PATH`). */
  removed: { name: string; path: string }[];
}

/** The kernels whose initramfs an apply rebuilds: those named, or (all) every kernel on the endpoint. */
export interface InitramfsTargets {
  kernels: string[];
  all: boolean;
}

/** docs/design/layers.md, "Manifest". */
export interface LayerManifest {
  os: OsRelease | null;
  /** Absolute machine-area paths the layer removes (app layers) whose bytes are valid UTF-8. */
  removed: string[];
  /**
   * The removed paths whose bytes are not valid UTF-8, as base64 of the
   * exact bytes (names are bytes; absent when there are none).
   */
  removedB64?: string[];
  packages: PackageStanza[];
  removedPackages: string[];
  accounts: AccountLines;
  triggers: Trigger[];
  /** With trigger `update-alternatives`: the alternatives to register and remove (absent: none). */
  alternatives?: LayerAlternatives;
  /** With trigger `update-initramfs`: whose initramfs to rebuild. */
  initramfs?: InitramfsTargets;
  /** With trigger `depmod`: the kernels whose module trees (/lib/modules/VER, /usr/lib/modules/VER) changed. */
  depmod?: InitramfsTargets;
  stats: { files: number; bytes: number };
}

export interface LayerVersionInfo {
  layer: string;
  version: number;
  /** The label given at capture (`1.6`). */
  label: string;
  snapshot: string;
  tree: string;
  os: OsRelease | null;
  source: { cvd: string | null; snapshots: string[] };
  createdAt: string;
  createdBy: string;
  stats: { files: number; bytes: number; packages: number };
}

export interface LayerInfo {
  id: string;
  name: string;
  kind: LayerKind;
  description: string;
  createdAt: string;
  /** Newest last. */
  versions: LayerVersionInfo[];
}

/** `POST /layers/capture-base`: the layer (created on its first version) and the version made. */
export interface CaptureBaseResponse {
  layer: LayerInfo;
  version: LayerVersionInfo;
}

/** `PUT` / `DELETE /cvds/:cvd/reference`. */
export interface ReferenceInfo {
  cvd: string;
  reference: boolean;
}

export interface CaptureBaseRequest {
  name: string;
  cvd: string;
  /** `latest` (default), an id or a unique prefix. */
  snapshot?: string;
  /** A version label (default: the next number). */
  label?: string;
  description?: string;
}

/** The editable defaults (`strata layer rules`). */
export interface LayerRules {
  /** Paths no layer writes or deletes on endpoints. */
  doNotOverride: PolicyRule[];
  /** Dropped from a reference snapshot by a base capture (besides the user area). */
  baseCapture: PolicyRule[];
}

// ---- app capture (agent routes) ---------------------------------------------

export interface CaptureStartRequest {
  /** The capture-pre snapshot the agent just uploaded. */
  snapshot: string;
}
export interface CaptureInfo {
  id: string;
  cvd: string;
  state: "open" | "finished" | "cancelled";
  preSnapshot: string;
  postSnapshot: string | null;
  createdAt: string;
}
export interface CaptureFinishRequest {
  /** The capture-post snapshot the agent just uploaded. */
  snapshot: string;
  name: string;
  label?: string;
  kind?: "app" | "driver";
  description?: string;
}
export interface CaptureFinishResponse {
  capture: CaptureInfo;
  layer: LayerInfo;
  version: LayerVersionInfo;
  /** What the diff found (first 100 paths of each list). */
  diff: {
    added: string[];
    changed: string[];
    removed: string[];
    counts: { added: number; changed: number; removed: number };
  };
}

// ---- assignment -------------------------------------------------------------

export interface LayerRef {
  layer: string;
  /** A version number; absent: always the newest. */
  version?: number;
}

export interface AssignRequest {
  target: { cvd: string } | { collection: string };
  base?: LayerRef | null;
  apps?: LayerRef[];
}

export interface AssignmentInfo {
  id: string;
  target: { kind: "cvd" | "collection"; id: string };
  base: LayerRef | null;
  apps: LayerRef[];
  assignedAt: string;
  assignedBy: string;
}

export interface CollectionRule {
  hostname?: string;
  /** `debian 12` */
  os?: string;
  vendor?: string;
  model?: string;
  tags?: string[];
}

export interface CollectionInfo {
  id: string;
  name: string;
  /** Null: a static collection. */
  rule: CollectionRule | null;
  /** CVD ids: the stored ones (static), or those the rule matches now (dynamic). */
  members: string[];
  createdAt: string;
}

export interface DriverRule {
  vendor?: string;
  model?: string;
  modalias?: string;
}

export interface DriverProfileInfo {
  id: string;
  name: string;
  /** Driver layers (ids; the newest version of each is composed), in order. */
  folders: string[];
  /** Their names, in the same order (the id of a layer that is gone). */
  folderNames: string[];
  /** The profile matches an endpoint when any rule does. */
  rules: DriverRule[];
  /** CVDs whose endpoint's facts match now. */
  cvds: string[];
  createdAt: string;
  updatedAt: string;
}

/** `GET /cvds/:id/layers`: the effective assignment and what it won over. */
export interface CvdLayersInfo {
  cvd: string;
  effective: AssignmentInfo | null;
  overridden: AssignmentInfo[];
  drivers: { profile: string; folders: string[] }[];
  targetImage: string | null;
  appliedImage: string | null;
  appliedAt: string | null;
}

// ---- dry-run ----------------------------------------------------------------

export interface DryRunProblem {
  kind: "downgrade" | "soname" | "missing-dependency" | "account-clash" | "os-mismatch" | "disk-space";
  blocking: boolean;
  /** Names the package, path or account, and what to do. */
  message: string;
  subject: string;
}

/** `GET /cvds/:cvd/dry-run?enforce=…`: the report of an apply with that enforcement. */
export interface DryRunQuery {
  enforce?: "keep" | "remove";
}

export interface DryRunReport {
  image: string;
  files: {
    added: number;
    updated: number;
    removed: number;
    samples: { added: string[]; updated: string[]; removed: string[] };
  };
  packages: {
    added: string[];
    updated: { name: string; from: string; to: string }[];
    removed: string[];
    /** Packages on the endpoint that no layer owns (kept). */
    userInstalled: string[];
  };
  doNotOverride: string[];
  /** What the apply runs once the files are in place (the image's triggers, docs/design/layers.md "Triggers"). */
  triggers: Trigger[];
  bytesToWrite: number;
  /** How many files `bytesToWrite` are (each may take one more block on disk). */
  filesToWrite: number;
  /**
   * Free space on the filesystem holding the endpoint's root, as its agent
   * reported it last (facts `rootFs`, measured at `reportedAt`), and what
   * the apply needs there (`diskSpaceNeeded`); null when it never reported
   * it. A blocking `disk-space` problem says when the apply needs more.
   */
  disk: {
    path: string;
    freeBytes: number;
    totalBytes: number;
    neededBytes: number;
    reportedAt: string;
  } | null;
  problems: DryRunProblem[];
  blocked: boolean;
}

// ---- apply ------------------------------------------------------------------

export interface ApplyRequest {
  enforce?: "keep" | "remove";
  /** Stage and commit now, change the disk at the agent's next start. */
  atRestart?: boolean;
  /**
   * An OS migration (a new base on another release): its safety snapshot is
   * kept until the migration is confirmed, so `strata cvd rollback` can
   * return to the old system.
   */
  migrate?: boolean;
  /**
   * With `migrate`: once the new base is in place, install the new
   * release's version of each user-installed package its apt sources
   * provide (the endpoint's own sources.list); the task's result says per
   * package what happened. Not with `atRestart`.
   */
  reinstallUserPackages?: boolean;
}

/** What the reinstall of one user-installed package after a migration came to. */
export interface ReinstallOutcome {
  /** As the dry-run names it: `name`, or `name:arch`. */
  name: string;
  /** The version the endpoint had (the old release's). */
  from: string;
  outcome: "reinstalled" | "unavailable" | "failed";
  /** reinstalled: the version installed now. */
  version?: string;
  /**
   * The new release renamed the package (`libfoo1` → `libfoo1t64`): its
   * successor, which Provides and Replaces it, is what was (or failed to
   * be) installed in its place.
   */
  renamedTo?: string;
  /** unavailable: why; failed: apt's message (its last lines). */
  message?: string;
}

/** `result.reinstall` of an apply task with `reinstallUserPackages`. */
export interface ReinstallReport {
  /** `dpkg --configure -a`, run first when `dpkg --audit` found an interrupted dpkg. */
  repair?: { ok: boolean; message?: string };
  /** `apt-get update` in the endpoint's root. */
  update: { ok: boolean; message?: string };
  packages: ReinstallOutcome[];
  /** apt's whole output, on the endpoint (absolute path, outside the root). */
  log: string;
}

export interface ApplyPlan {
  task: string;
  image: { id: string; snapshot: string };
  /** A restore session on the image tree. */
  session: RestoreSessionInfo;
  manifest: LayerManifest;
  /**
   * Absolute paths the apply may delete (owned by the applied image, not by
   * this one; or removed by a layer) whose bytes are valid UTF-8.
   */
  removals: string[];
  /** The removals whose bytes are not valid UTF-8, as base64 of the exact bytes (absent when none). */
  removalsB64?: string[];
  /** Packages the applied image owned (so the merge drops those the new image lacks). */
  previousPackages: string[];
  doNotOverride: PolicyRule[];
  enforce: "none" | "keep" | "remove";
  atRestart: boolean;
  /** The image has a base layer (enforce remove is refused without one: it would delete the OS). */
  hasBase?: boolean;
  /**
   * The server's estimate against the CVD's newest snapshot (as its
   * dry-run): bytes and number of the files to stage. The agent compares
   * them with the free space of its root before it changes anything.
   */
  bytesToWrite?: number;
  filesToWrite?: number;
  /** Reinstall the user-installed packages from the new release's sources afterwards (a migration). */
  reinstallUserPackages?: boolean;
}

// ---- JSON Schemas -------------------------------------------------------------

const layerName = str({ pattern: LAYER_NAME_PATTERN });
const layerLabel = str({ pattern: LAYER_LABEL_PATTERN });
const layerKind = str({ enum: [...LAYER_KINDS] });
const description = str({ maxLength: 1024 });
const strings = { type: "array", items: str() };
const osRelease = { anyOf: [{ type: "null" }, obj({ id: str(), versionId: str() })] };
const layerVersion = obj({
  layer: str(),
  version: { type: "integer" },
  label: str(),
  snapshot: str(),
  tree: str(),
  os: osRelease,
  source: obj({ cvd: { type: ["string", "null"] }, snapshots: strings }),
  createdAt: dateTime,
  createdBy: str(),
  stats: obj({ files: { type: "integer" }, bytes: { type: "integer" }, packages: { type: "integer" } }),
});
const layer = obj({
  id: str(),
  name: str(),
  kind: layerKind,
  description: str(),
  createdAt: dateTime,
  versions: { type: "array", items: layerVersion },
});
const captureInfo = obj({
  id: str(),
  cvd: str(),
  state: str({ enum: ["open", "finished", "cancelled"] }),
  preSnapshot: str(),
  postSnapshot: { type: ["string", "null"] },
  createdAt: dateTime,
});
/** A layer reference in a request: an id or a name, and optionally a version number. */
const layerRefIn = obj(
  { layer: str({ pattern: LAYER_REF_PATTERN }), version: { type: "integer", minimum: 1 } },
  ["layer"],
);
const layerRefOut = obj({ layer: str(), version: { type: "integer" } }, ["layer"]);
const assignment = obj({
  id: str(),
  target: obj({ kind: str({ enum: ["cvd", "collection"] }), id: str() }),
  base: { anyOf: [{ type: "null" }, layerRefOut] },
  apps: { type: "array", items: layerRefOut },
  assignedAt: dateTime,
  assignedBy: str(),
});
const rule = obj({ dir: str(), pattern: str() }, ["dir"]);
const manifest = obj(
  {
    os: osRelease,
    removed: strings,
    removedB64: strings,
    packages: {
      type: "array",
      items: obj({ name: str(), arch: str(), version: str(), stanza: str() }),
    },
    removedPackages: strings,
    accounts: obj({ passwd: strings, group: strings, shadow: strings, gshadow: strings }),
    triggers: strings,
    alternatives: obj({
      groups: {
        type: "array",
        items: obj(
          {
            name: str(),
            link: str(),
            slaves: { type: "array", items: obj({ name: str(), link: str() }) },
            choices: {
              type: "array",
              items: obj({
                path: str(),
                priority: { type: "integer" },
                slaves: { type: "object", additionalProperties: { type: "string" } },
              }),
            },
            manual: str(),
          },
          ["name", "link", "slaves", "choices"],
        ),
      },
      removed: { type: "array", items: obj({ name: str(), path: str() }) },
    }),
    initramfs: obj({ kernels: strings, all: { type: "boolean" } }),
    depmod: obj({ kernels: strings, all: { type: "boolean" } }),
    stats: obj({ files: { type: "integer" }, bytes: { type: "integer" } }),
  },
  ["os", "removed", "packages", "removedPackages", "accounts", "triggers", "stats"],
);

export const layerSchemas = {
  LayerInfo: layer,
  LayerVersionInfo: layerVersion,
  LayerRefParams: obj({ id: str({ pattern: LAYER_REF_PATTERN }) }),
  CaptureIdParams: obj({ id: str({ pattern: CAPTURE_ID_PATTERN }) }),
  CaptureBaseRequest: obj(
    {
      name: layerName,
      cvd: str({ pattern: CVD_ID_PATTERN }),
      snapshot: str({ pattern: SNAPSHOT_REF_PATTERN }),
      label: layerLabel,
      description,
    },
    ["name", "cvd"],
  ),
  CaptureBaseResponse: obj({ layer, version: layerVersion }),
  ReferenceInfo: obj({ cvd: str(), reference: { type: "boolean" } }),
  CaptureStartRequest: obj({ snapshot: str({ pattern: "^[0-9a-f]{64}$" }) }),
  CaptureInfo: captureInfo,
  CaptureFinishRequest: obj(
    {
      snapshot: str({ pattern: "^[0-9a-f]{64}$" }),
      name: layerName,
      label: layerLabel,
      kind: str({ enum: ["app", "driver"] }),
      description,
    },
    ["snapshot", "name"],
  ),
  CaptureFinishResponse: obj({
    capture: captureInfo,
    layer,
    version: layerVersion,
    diff: obj({
      added: strings,
      changed: strings,
      removed: strings,
      counts: obj({ added: { type: "integer" }, changed: { type: "integer" }, removed: { type: "integer" } }),
    }),
  }),
  AssignRequest: obj(
    {
      target: {
        oneOf: [
          obj({ cvd: str({ pattern: CVD_ID_PATTERN }) }),
          obj({ collection: str({ minLength: 1, maxLength: 128 }) }),
        ],
      },
      base: { anyOf: [{ type: "null" }, layerRefIn] },
      apps: { type: "array", items: layerRefIn, maxItems: 64 },
    },
    ["target"],
  ),
  AssignmentInfo: assignment,
  CvdLayersInfo: obj({
    cvd: str(),
    effective: { anyOf: [{ type: "null" }, assignment] },
    overridden: { type: "array", items: assignment },
    drivers: { type: "array", items: obj({ profile: str(), folders: strings }) },
    targetImage: { type: ["string", "null"] },
    appliedImage: { type: ["string", "null"] },
    appliedAt: nullableDateTime,
  }),
  DryRunReport: obj({
    image: str(),
    files: obj({
      added: { type: "integer" },
      updated: { type: "integer" },
      removed: { type: "integer" },
      samples: obj({ added: strings, updated: strings, removed: strings }),
    }),
    packages: obj({
      added: strings,
      updated: { type: "array", items: obj({ name: str(), from: str(), to: str() }) },
      removed: strings,
      userInstalled: strings,
    }),
    doNotOverride: strings,
    triggers: strings,
    bytesToWrite: { type: "integer" },
    filesToWrite: { type: "integer" },
    disk: {
      anyOf: [
        { type: "null" },
        obj({
          path: str(),
          freeBytes: { type: "integer" },
          totalBytes: { type: "integer" },
          neededBytes: { type: "integer" },
          reportedAt: dateTime,
        }),
      ],
    },
    problems: {
      type: "array",
      items: obj({
        kind: str(),
        blocking: { type: "boolean" },
        message: str(),
        subject: str(),
      }),
    },
    blocked: { type: "boolean" },
  }),
  ApplyRequest: obj(
    {
      enforce: str({ enum: ["keep", "remove"] }),
      atRestart: { type: "boolean" },
      migrate: { type: "boolean" },
      reinstallUserPackages: { type: "boolean" },
    },
    [],
  ),
  DryRunQuery: obj({ enforce: str({ enum: ["keep", "remove"] }) }, []),
  ApplyPlan: obj(
    {
      task: str(),
      image: obj({ id: str(), snapshot: str() }),
      session: restoreSchemas.RestoreSessionInfo,
      manifest,
      removals: strings,
      removalsB64: strings,
      previousPackages: strings,
      doNotOverride: { type: "array", items: rule },
      enforce: str({ enum: ["none", "keep", "remove"] }),
      atRestart: { type: "boolean" },
      hasBase: { type: "boolean" },
      bytesToWrite: { type: "integer", minimum: 0 },
      filesToWrite: { type: "integer", minimum: 0 },
      reinstallUserPackages: { type: "boolean" },
    },
    [
      "task",
      "image",
      "session",
      "manifest",
      "removals",
      "previousPackages",
      "doNotOverride",
      "enforce",
      "atRestart",
    ],
  ),
} satisfies Record<string, Schema>;
