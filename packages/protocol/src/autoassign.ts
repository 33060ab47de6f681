/**
 * Auto-assignment rules (docs/design/server.md, "Auto-assignment rules"):
 * an ordered list; the first rule whose condition matches an enrolling (or
 * pending) endpoint's facts gives it a new CVD with the rule's policy and
 * tags. The condition is the collection rule language without tags
 * (a pending endpoint has no CVD, so no tags yet).
 */
import { ENDPOINT_ID_PATTERN, POLICY_REF_PATTERN } from "./fleet.js";
import { dateTime, obj, type Schema, str } from "./json-schema.js";
import { TAG_PATTERN, TAGS_MAX, TARGETING_LIMITS } from "./targeting.js";

export const AUTOASSIGN_RULE_ID_PATTERN = "^aar_[A-Za-z0-9_-]{1,60}$";
/** Rules are addressed by id or name, so a name MUST NOT start with `aar_`. */
export const AUTOASSIGN_RULE_NAME_PATTERN = "^(?!aar_)[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$";
export const AUTOASSIGN_RULE_REF_PATTERN = "^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$";
/** Rules a server keeps, at most (each enrollment reads them all). */
export const AUTOASSIGN_RULES_MAX = 256;

/** What a rule matches: globs over the endpoint's facts; every field given must match. */
export interface AutoassignCondition {
  hostname?: string;
  /** `debian 12`: a glob over `ID VERSION_ID` of /etc/os-release. */
  os?: string;
  /** DMI sys_vendor and product_name. */
  vendor?: string;
  model?: string;
}

export interface AutoassignRuleInfo {
  id: string;
  name: string;
  /** 1 for the rule evaluated first. */
  position: number;
  rule: AutoassignCondition;
  policyId: string;
  /** The policy's name (its id when it is gone). */
  policy: string;
  /** Tags the new CVD gets. */
  tags: string[];
  createdAt: string;
  createdBy: string;
}

export interface CreateAutoassignRuleRequest {
  name: string;
  rule: AutoassignCondition;
  /** Policy (id or name) of the CVDs it creates; default: the default policy. */
  policy?: string;
  tags?: string[];
  /** Insert before this rule (id or name); default: last. */
  before?: string;
}

/**
 * `PATCH /autoassign-rules/:rule`: fields given change, the others stay;
 * at least one. The rule keeps its id and, unless `before` is given, its
 * place. CVDs the rule already made do not change.
 */
export interface UpdateAutoassignRuleRequest {
  name?: string;
  /** A merge patch of the condition: a field given replaces the rule's, null removes it; one must remain. */
  rule?: { [K in keyof AutoassignCondition]?: string | null };
  /** Policy (id or name) of the CVDs it creates from now on. */
  policy?: string;
  /** The tags its new CVDs get, replacing the rule's ([]: none). */
  tags?: string[];
  /** Move it just before this rule (id or name); null: last. */
  before?: string | null;
}

/** `POST /autoassign-rules/test`: an endpoint's stored facts, or facts given here. */
export interface AutoassignTestRequest {
  endpoint?: string;
  facts?: AutoassignCondition;
}

export interface AutoassignTestResult {
  endpoint: string | null;
  /** What the rules saw. */
  facts: { hostname: string; os: string | null; vendor: string | null; model: string | null };
  /** The first rule that matches (the one enrollment would apply), or null. */
  match: { id: string; name: string; policy: string; tags: string[] } | null;
  /** Every rule in order, and whether it matches. */
  rules: { name: string; matches: boolean }[];
}

export interface ApproveByRulesRequest {
  /** Only these pending endpoints; default: every pending endpoint. */
  endpoints?: string[];
}

export interface ApproveByRulesResult {
  approved: { endpoint: string; hostname: string; rule: string; cvd: string; policy: string }[];
  /** Endpoints left pending, with why. */
  pending: { endpoint: string; hostname: string; reason: string }[];
}

// ---- JSON Schemas -------------------------------------------------------------

const glob = str({ minLength: 1, maxLength: TARGETING_LIMITS.globLength });
const condition = obj({ hostname: glob, os: glob, vendor: glob, model: glob }, []);
const orNull = (s: Schema): Schema => ({ ...s, type: ["string", "null"] });
const tags = { type: "array", items: str({ pattern: TAG_PATTERN }), maxItems: TAGS_MAX, uniqueItems: true };
const strings = { type: "array", items: str() };
const nullableStr = { type: ["string", "null"] };

export const autoassignSchemas = {
  AutoassignRuleInfo: obj({
    id: str(),
    name: str(),
    position: { type: "integer" },
    rule: condition,
    policyId: str(),
    policy: str(),
    tags: strings,
    createdAt: dateTime,
    createdBy: str(),
  }),
  CreateAutoassignRuleRequest: obj(
    {
      name: str({ pattern: AUTOASSIGN_RULE_NAME_PATTERN }),
      rule: { ...condition, minProperties: 1 },
      policy: str({ pattern: POLICY_REF_PATTERN }),
      tags,
      before: str({ pattern: AUTOASSIGN_RULE_REF_PATTERN }),
    },
    ["name", "rule"],
  ),
  UpdateAutoassignRuleRequest: {
    ...obj(
      {
        name: str({ pattern: AUTOASSIGN_RULE_NAME_PATTERN }),
        rule: {
          ...obj({ hostname: orNull(glob), os: orNull(glob), vendor: orNull(glob), model: orNull(glob) }, []),
          minProperties: 1,
        },
        policy: str({ pattern: POLICY_REF_PATTERN }),
        tags,
        before: { anyOf: [{ type: "null" }, str({ pattern: AUTOASSIGN_RULE_REF_PATTERN })] },
      },
      [],
    ),
    minProperties: 1,
  },
  AutoassignRuleRefParams: obj({ rule: str({ pattern: AUTOASSIGN_RULE_REF_PATTERN }) }),
  AutoassignTestRequest: {
    ...obj({ endpoint: str({ pattern: ENDPOINT_ID_PATTERN }), facts: condition }, []),
    minProperties: 1,
    maxProperties: 1,
  },
  AutoassignTestResult: obj({
    endpoint: nullableStr,
    facts: obj({ hostname: str(), os: nullableStr, vendor: nullableStr, model: nullableStr }),
    match: {
      anyOf: [{ type: "null" }, obj({ id: str(), name: str(), policy: str(), tags: strings })],
    },
    rules: { type: "array", items: obj({ name: str(), matches: { type: "boolean" } }) },
  }),
  ApproveByRulesRequest: obj(
    {
      endpoints: {
        type: "array",
        items: str({ pattern: ENDPOINT_ID_PATTERN }),
        minItems: 1,
        maxItems: TARGETING_LIMITS.members,
        uniqueItems: true,
      },
    },
    [],
  ),
  ApproveByRulesResult: obj({
    approved: {
      type: "array",
      items: obj({ endpoint: str(), hostname: str(), rule: str(), cvd: str(), policy: str() }),
    },
    pending: { type: "array", items: obj({ endpoint: str(), hostname: str(), reason: str() }) },
  }),
} satisfies Record<string, Schema>;
