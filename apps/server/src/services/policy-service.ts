/**
 * Upload policies: stored as their JSON body, validated by @strata/core
 * (every error reported at once), versioned by the store. The default
 * policy has a fixed id, so renaming it keeps it the default; it cannot be
 * deleted. A policy in use (by a CVD or an enrollment token) cannot be
 * deleted either.
 */
import type { PolicyRecord } from "@strata/catalog";
import {
  exportPolicy,
  formatPolicyErrors,
  importPolicy,
  type PolicyValidation,
  parsePolicy,
  StrataError,
  type UploadPolicy,
  validatePolicy,
} from "@strata/core";
import {
  POLICY_NAME_PATTERN,
  type PolicyDetail,
  type PolicySummary,
  type UploadPolicyDoc,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type Caller, notFound, requirePermission, type ServiceDeps } from "./context.js";
import { randomId } from "./tokens.js";

export const DEFAULT_POLICY_ID = "pol_default";
export const DEFAULT_POLICY_NAME = "Default";

export interface PolicyServiceDeps extends ServiceDeps {
  audit: AuditService;
}

const NAME = new RegExp(POLICY_NAME_PATTERN);

/** The stored body: everything but id, name, version and the factory rules (those come from code). */
function bodyOf(p: UploadPolicy): Record<string, unknown> {
  const { id: _id, name: _name, version: _version, factoryRules: _f, ...body } = p;
  return JSON.parse(JSON.stringify(body)) as Record<string, unknown>;
}

/** A stored policy as @strata/core's UploadPolicy (the body was validated when written). */
export function uploadPolicyOf(r: PolicyRecord): UploadPolicy {
  return parsePolicy({ ...r.body, id: r.id, name: r.name, version: r.version });
}

/** The `policy` member of exportPolicy's document: what agents and exports carry. */
export function policyDocOf(r: PolicyRecord): UploadPolicyDoc {
  return (JSON.parse(exportPolicy(uploadPolicyOf(r))) as { policy: UploadPolicyDoc }).policy;
}

function summaryOf(r: PolicyRecord): PolicySummary {
  const interval = r.body.intervalMinutes;
  return {
    id: r.id,
    name: r.name,
    version: r.version,
    intervalMinutes: typeof interval === "number" ? interval : 60,
    createdAt: r.createdAt.toISOString(),
    updatedAt: r.updatedAt.toISOString(),
    isDefault: r.id === DEFAULT_POLICY_ID,
  };
}

function checked(v: PolicyValidation, what: string): UploadPolicy {
  if (v.policy) return v.policy;
  throw new StrataError("INVALID_ARGUMENT", `invalid ${what}:\n${formatPolicyErrors(v.errors)}`, {
    hint: "fix the fields listed and try again; nothing was changed",
  });
}

/** A plain policy object, or an export document (`{format, schemaVersion, policy}`). */
function parseInput(input: unknown): UploadPolicy {
  const isDoc = typeof input === "object" && input !== null && "format" in input;
  return isDoc
    ? checked(importPolicy(JSON.stringify(input)), "policy document")
    : checked(validatePolicy(input), "upload policy");
}

function checkName(name: string): void {
  if (!NAME.test(name)) {
    throw new StrataError("INVALID_ARGUMENT", `invalid policy name ${JSON.stringify(name)}`, {
      subject: name,
      hint: "use letters, digits, spaces and _ . ( ) + - (at most 128), not starting with pol_",
    });
  }
}

export class PolicyService {
  constructor(private readonly deps: PolicyServiceDeps) {}

  /** The default policy, created once (safe when several nodes start at once). */
  async ensureDefault(): Promise<PolicyRecord> {
    const now = this.deps.clock.now();
    const d = { ...defaultPolicyRecord(), createdAt: now, updatedAt: now };
    return this.deps.store.ensurePolicy(d);
  }

  /** A policy by id (`pol_…`) or name; NOT_FOUND otherwise. */
  async resolve(ref: string): Promise<PolicyRecord> {
    const { store } = this.deps;
    const p =
      (ref.startsWith("pol_") ? await store.getPolicy(ref) : null) ?? (await store.getPolicyByName(ref));
    if (!p) {
      throw new StrataError("NOT_FOUND", `policy ${ref} does not exist`, {
        subject: ref,
        hint: "see `strata policy list`",
      });
    }
    return p;
  }

  async list(c: Caller): Promise<PolicySummary[]> {
    requirePermission(c, "policy.read");
    return (await this.deps.store.listPolicies()).map(summaryOf);
  }

  async get(c: Caller, ref: string): Promise<PolicyDetail> {
    requirePermission(c, "policy.read");
    const p = await this.resolve(ref);
    return { ...summaryOf(p), policy: policyDocOf(p), usage: await this.deps.store.policyUsage(p.id) };
  }

  async export(c: Caller, ref: string): Promise<string> {
    requirePermission(c, "policy.read");
    return exportPolicy(uploadPolicyOf(await this.resolve(ref)));
  }

  async create(c: Caller, input: unknown, action = "policy.create"): Promise<PolicyDetail> {
    requirePermission(c, "policy.write");
    const p = parseInput(input);
    return this.insert(c, p, action);
  }

  /** An export document (`strata policy export`) as a new policy, optionally under another name. */
  async import(c: Caller, doc: unknown, name?: string): Promise<PolicyDetail> {
    requirePermission(c, "policy.write");
    const p = checked(importPolicy(JSON.stringify(doc)), "policy document");
    return this.insert(c, name ? { ...p, name } : p, "policy.import");
  }

  private async insert(c: Caller, p: UploadPolicy, action: string): Promise<PolicyDetail> {
    checkName(p.name);
    const now = this.deps.clock.now();
    const rec: PolicyRecord = {
      id: randomId("pol_"),
      name: p.name,
      version: 1,
      body: bodyOf(p),
      createdAt: now,
      updatedAt: now,
    };
    try {
      await this.deps.store.createPolicy(rec);
    } catch (e) {
      if (e instanceof StrataError && e.code === "ALREADY_EXISTS") {
        throw new StrataError("ALREADY_EXISTS", `a policy named ${p.name} already exists`, {
          subject: p.name,
          hint: "choose another name, or change that policy with `strata policy update`",
        });
      }
      throw e;
    }
    await this.deps.audit.by(c, action, `policy:${rec.id}`, { name: rec.name });
    return {
      ...summaryOf(rec),
      policy: policyDocOf(rec),
      usage: { cvds: 0, enrollmentTokens: 0, autoassignRules: 0 },
    };
  }

  /**
   * Replace a policy with `input` (fields it leaves out take their
   * defaults). A `version` in the input MUST be the stored one: an edit of
   * an old export does not silently undo someone else's change.
   */
  async update(c: Caller, ref: string, input: unknown): Promise<PolicyDetail> {
    requirePermission(c, "policy.write");
    const before = await this.resolve(ref);
    const raw =
      typeof input === "object" && input !== null && !("format" in input) && !("name" in input)
        ? { ...input, name: before.name }
        : input;
    const p = parseInput(raw);
    const given =
      (raw as { version?: unknown; policy?: { version?: unknown } }).policy?.version ??
      (raw as { version?: unknown }).version;
    if (given !== undefined && given !== before.version) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `policy ${before.name} is at version ${before.version}; this edit is of version ${String(given)}`,
        { subject: before.name, hint: "export it again, redo the edit, and update" },
      );
    }
    if (p.id && p.id !== before.id) {
      throw new StrataError("INVALID_ARGUMENT", `the document is policy ${p.id}, not ${before.id}`, {
        hint: "leave `id` out, or import it as a new policy",
      });
    }
    checkName(p.name);
    const after = await this.deps.store.updatePolicy(
      before.id,
      { name: p.name, body: bodyOf(p) },
      this.deps.clock.now(),
    );
    if (!after) throw notFound("policy", ref);
    await this.deps.audit.by(c, "policy.update", `policy:${after.id}`, {
      name: after.name,
      ...(after.name !== before.name ? { renamedFrom: before.name } : {}),
      version: after.version,
    });
    return {
      ...summaryOf(after),
      policy: policyDocOf(after),
      usage: await this.deps.store.policyUsage(after.id),
    };
  }

  async delete(c: Caller, ref: string): Promise<void> {
    requirePermission(c, "policy.write");
    const p = await this.resolve(ref);
    if (p.id === DEFAULT_POLICY_ID) {
      throw new StrataError("INVALID_ARGUMENT", `${p.name} is the default policy and cannot be deleted`, {
        subject: p.name,
        hint: "edit it instead",
      });
    }
    await this.deps.store.deletePolicy(p.id);
    await this.deps.audit.by(c, "policy.delete", `policy:${p.id}`, { name: p.name });
  }
}

function defaultPolicyRecord(): Omit<PolicyRecord, "createdAt" | "updatedAt"> {
  const p = parsePolicy({ name: DEFAULT_POLICY_NAME });
  return { id: DEFAULT_POLICY_ID, name: DEFAULT_POLICY_NAME, version: 1, body: bodyOf(p) };
}
