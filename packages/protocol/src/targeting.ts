/**
 * Targeting requests (docs/design/layers.md, "Assignment and composition",
 * "Drivers"): collections, driver profiles, the layer rules and CVD tags.
 * The objects they answer with (CollectionInfo, DriverProfileInfo,
 * LayerRules) are in layers.ts.
 */
import { CVD_ID_PATTERN } from "./fleet.js";
import { dateTime, obj, type Schema, str } from "./json-schema.js";
import type { CollectionRule, DriverRule, LayerRules } from "./layers.js";

export const COLLECTION_ID_PATTERN = "^col_[A-Za-z0-9_-]{1,60}$";
/** Collections are addressed by id or name, so a name MUST NOT start with `col_`. */
export const COLLECTION_NAME_PATTERN = "^(?!col_)[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$";
/** A path segment naming a collection: its id or its name. */
export const COLLECTION_REF_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$";
export const DRIVER_PROFILE_ID_PATTERN = "^drv_[A-Za-z0-9_-]{1,60}$";
/** Driver profiles are addressed by id or name, so a name MUST NOT start with `drv_`. */
export const DRIVER_PROFILE_NAME_PATTERN = "^(?!drv_)[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$";
export const DRIVER_PROFILE_REF_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$";
/** A CVD tag: `lab`, `floor:3`, `kiosk-v2`. */
export const TAG_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$";
/** Tags one CVD may have. */
export const TAGS_MAX = 32;
/** Rules one driver profile may have, folders it may name, CVDs one request may add. */
export const TARGETING_LIMITS = { rules: 64, folders: 64, members: 1000, globLength: 256 } as const;

export interface CreateCollectionRequest {
  name: string;
  /** A dynamic collection's rule; absent or null: a static collection. */
  rule?: CollectionRule | null;
  /** A static collection's first members (CVD ids). */
  members?: string[];
}

export interface CollectionMembersRequest {
  cvds: string[];
}

export interface CreateDriverProfileRequest {
  name: string;
  /** Driver layers, by id or name. */
  folders: string[];
  rules: DriverRule[];
}

/** Fields given replace the profile's; at least one. */
export interface UpdateDriverProfileRequest {
  name?: string;
  folders?: string[];
  rules?: DriverRule[];
}

export interface CvdTagsRequest {
  add?: string[];
  remove?: string[];
}

export interface CvdTagsInfo {
  cvd: string;
  tags: string[];
}

/** `GET /layer-rules`: the rules in force, and whether they are still the built-in defaults. */
export interface LayerRulesInfo extends LayerRules {
  isDefault: boolean;
  updatedAt: string | null;
  updatedBy: string | null;
}

// ---- JSON Schemas -------------------------------------------------------------

const glob = str({ minLength: 1, maxLength: TARGETING_LIMITS.globLength });
const tag = str({ pattern: TAG_PATTERN });
const strings = { type: "array", items: str() };
const collectionRule = obj(
  {
    hostname: glob,
    os: glob,
    vendor: glob,
    model: glob,
    tags: { type: "array", items: tag, maxItems: TAGS_MAX, uniqueItems: true },
  },
  [],
);
const driverRule = obj({ vendor: glob, model: glob, modalias: glob }, []);
const driverRules = { type: "array", items: driverRule, minItems: 1, maxItems: TARGETING_LIMITS.rules };
const folders = {
  type: "array",
  items: str({ minLength: 1, maxLength: 128 }),
  maxItems: TARGETING_LIMITS.folders,
};
const rule = obj({ dir: str(), pattern: str() }, ["dir"]);
const cvdIds = (min: number) => ({
  type: "array",
  items: str({ pattern: CVD_ID_PATTERN }),
  minItems: min,
  maxItems: TARGETING_LIMITS.members,
});
const tags = { type: "array", items: tag, maxItems: TAGS_MAX };

export const targetingSchemas = {
  CollectionInfo: obj({
    id: str(),
    name: str(),
    rule: { anyOf: [{ type: "null" }, collectionRule] },
    members: strings,
    createdAt: dateTime,
  }),
  CreateCollectionRequest: obj(
    {
      name: str({ pattern: COLLECTION_NAME_PATTERN }),
      rule: { anyOf: [{ type: "null" }, collectionRule] },
      members: cvdIds(0),
    },
    ["name"],
  ),
  CollectionMembersRequest: obj({ cvds: cvdIds(1) }),
  CollectionRefParams: obj({ collection: str({ pattern: COLLECTION_REF_PATTERN }) }),
  CollectionMemberParams: obj({
    collection: str({ pattern: COLLECTION_REF_PATTERN }),
    cvd: str({ pattern: CVD_ID_PATTERN }),
  }),
  DriverProfileInfo: obj({
    id: str(),
    name: str(),
    folders: strings,
    folderNames: strings,
    rules: { type: "array", items: driverRule },
    cvds: strings,
    createdAt: dateTime,
    updatedAt: dateTime,
  }),
  CreateDriverProfileRequest: obj({
    name: str({ pattern: DRIVER_PROFILE_NAME_PATTERN }),
    folders,
    rules: driverRules,
  }),
  UpdateDriverProfileRequest: {
    ...obj({ name: str({ pattern: DRIVER_PROFILE_NAME_PATTERN }), folders, rules: driverRules }, []),
    minProperties: 1,
  },
  DriverProfileRefParams: obj({ profile: str({ pattern: DRIVER_PROFILE_REF_PATTERN }) }),
  LayerRulesInfo: obj({
    doNotOverride: { type: "array", items: rule },
    baseCapture: { type: "array", items: rule },
    isDefault: { type: "boolean" },
    updatedAt: { type: ["string", "null"], format: "date-time" },
    updatedBy: { type: ["string", "null"] },
  }),
  /** Validated as a whole by @strata/core's rule checks (every error at once). */
  LayerRulesInput: obj({ doNotOverride: { type: "array" }, baseCapture: { type: "array" } }),
  CvdTagsRequest: { ...obj({ add: tags, remove: tags }, []), minProperties: 1 },
  CvdTagsInfo: obj({ cvd: str(), tags: strings }),
} satisfies Record<string, Schema>;
