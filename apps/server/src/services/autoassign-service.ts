/**
 * Auto-assignment rules (docs/design/server.md, "Auto-assignment rules"):
 * an ordered list of conditions on an endpoint's facts (the collection
 * rule language: hostname, os, vendor, model globs), each giving a matching
 * endpoint a new CVD with a policy and tags. The enrollment service asks
 * `match` for each enrolling endpoint (first match wins); administrators
 * re-evaluate pending endpoints with `approveByRules`.
 *
 * Permissions: reading and testing the rules is endpoints.read; creating,
 * editing and removing them, and approving by them, is endpoints.approve
 * (a rule approves endpoints); creating a rule that tags its CVDs, or
 * editing one that tags them before or after the edit, also needs
 * layers.assign, the permission tags take (`strata cvd tag`): no
 * escalation. (Moving a tagging rule or changing its condition changes
 * which endpoints get its tags.)
 *
 * Editing a rule changes no CVD it already made: like removing it, it only
 * decides what later enrollments (and approve-by-rules) get.
 */
import type { AutoassignRuleRecord, EndpointRecord } from "@strata/catalog";
import { type CollectionRule, matchCollectionRule, StrataError } from "@strata/core";
import {
  type ApproveByRulesRequest,
  type ApproveByRulesResult,
  AUTOASSIGN_RULE_ID_PATTERN,
  AUTOASSIGN_RULES_MAX,
  type AutoassignCondition,
  type AutoassignRuleInfo,
  type AutoassignTestRequest,
  type AutoassignTestResult,
  type CreateAutoassignRuleRequest,
  type UpdateAutoassignRuleRequest,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type Caller, requirePermission, type ServiceDeps } from "./context.js";
import { requireEndpoint } from "./endpoint-service.js";
import { DEFAULT_POLICY_ID, type PolicyService } from "./policy-service.js";
import { checkGlob, collectionFactsOf } from "./targeting-service.js";
import { randomId } from "./tokens.js";

export interface AutoassignServiceDeps extends ServiceDeps {
  audit: AuditService;
  policies: PolicyService;
}

/** The facts a rule sees of an endpoint (its stored facts and hostname; no tags: it has no CVD yet). */
function factsOf(hostname: string, facts: Record<string, unknown>) {
  return collectionFactsOf({ cvdId: "", endpointId: null, hostname, facts, tags: [] });
}

function checkCondition(rule: AutoassignCondition): AutoassignCondition {
  const out: AutoassignCondition = {};
  for (const k of ["hostname", "os", "vendor", "model"] as const) {
    const v = rule[k];
    if (v === undefined) continue;
    checkGlob(k, v);
    out[k] = k === "os" ? v.trim().replace(/\s+/g, " ") : v;
  }
  if (!Object.keys(out).length) {
    throw new StrataError(
      "INVALID_ARGUMENT",
      "an auto-assignment rule needs at least one of hostname, os, vendor, model",
      {
        hint: 'for every endpoint write hostname: "*"',
      },
    );
  }
  return out;
}

/** The rule's condition with the request's merge patch over it (null removes a field). */
function mergeCondition(
  rule: Record<string, unknown>,
  patch: NonNullable<UpdateAutoassignRuleRequest["rule"]>,
): AutoassignCondition {
  const out = { ...rule } as Record<string, unknown>;
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (v !== undefined) out[k] = v;
  }
  return out as AutoassignCondition;
}

/** Tags a rule gives, once each; giving tags takes layers.assign (see the header). */
function tagsOf(c: Caller, tags: string[], had: string[] = []): string[] {
  const out = [...new Set(tags)];
  if (out.length || had.length) requirePermission(c, "layers.assign");
  return out;
}

/** What an update audits: the fields of the rule's view that changed, as they were and as they are. */
const AUDITED = ["name", "rule", "policy", "tags", "position"] as const;
function changes(was: AutoassignRuleInfo, is: AutoassignRuleInfo) {
  const before: Record<string, unknown> = {};
  const after: Record<string, unknown> = {};
  for (const k of AUDITED) {
    if (JSON.stringify(was[k]) === JSON.stringify(is[k])) continue;
    before[k] = was[k];
    after[k] = is[k];
  }
  return { before, after };
}

export interface AutoassignMatch {
  rule: AutoassignRuleRecord;
}

export class AutoassignService {
  constructor(private readonly deps: AutoassignServiceDeps) {}

  private get rules() {
    return this.deps.store.autoassign;
  }

  /** The first rule (in order) whose condition the facts match, or null. */
  async match(hostname: string, facts: Record<string, unknown>): Promise<AutoassignRuleRecord | null> {
    const f = factsOf(hostname, facts);
    for (const r of await this.rules.listRules())
      if (matchCollectionRule(r.rule as CollectionRule, f)) return r;
    return null;
  }

  async resolve(ref: string): Promise<AutoassignRuleRecord> {
    const r = new RegExp(AUTOASSIGN_RULE_ID_PATTERN).test(ref)
      ? await this.rules.getRule(ref)
      : await this.rules.getRuleByName(ref);
    if (!r) {
      throw new StrataError("NOT_FOUND", `auto-assignment rule ${ref} does not exist`, {
        subject: ref,
        hint: "see `strata autoassign ls`",
      });
    }
    return r;
  }

  private async views(list: AutoassignRuleRecord[]): Promise<AutoassignRuleInfo[]> {
    const names = new Map((await this.deps.store.listPolicies()).map((p) => [p.id, p.name]));
    return list.map((r, i) => ({
      id: r.id,
      name: r.name,
      position: i + 1,
      rule: r.rule as AutoassignCondition,
      policyId: r.policyId,
      policy: names.get(r.policyId) ?? r.policyId,
      tags: r.tags,
      createdAt: r.createdAt.toISOString(),
      createdBy: r.createdBy,
    }));
  }

  async list(c: Caller): Promise<AutoassignRuleInfo[]> {
    requirePermission(c, "endpoints.read");
    return this.views(await this.rules.listRules());
  }

  async get(c: Caller, ref: string): Promise<AutoassignRuleInfo> {
    requirePermission(c, "endpoints.read");
    const r = await this.resolve(ref);
    const all = await this.views(await this.rules.listRules());
    const v = all.find((x) => x.id === r.id);
    if (!v) return this.get(c, r.id); // removed meanwhile: NOT_FOUND
    return v;
  }

  async create(c: Caller, req: CreateAutoassignRuleRequest): Promise<AutoassignRuleInfo> {
    requirePermission(c, "endpoints.approve");
    const tags = tagsOf(c, req.tags ?? []);
    const rule = checkCondition(req.rule);
    const policy = req.policy
      ? await this.deps.policies.resolve(req.policy)
      : ((await this.deps.store.getPolicy(DEFAULT_POLICY_ID)) ?? (await this.deps.policies.ensureDefault()));
    const before = req.before ? await this.resolve(req.before) : null;
    if ((await this.rules.listRules()).length >= AUTOASSIGN_RULES_MAX) {
      throw new StrataError(
        "INVALID_ARGUMENT",
        `there are already ${AUTOASSIGN_RULES_MAX} auto-assignment rules`,
        {
          hint: "remove some (`strata autoassign rm`); one rule can match many endpoints with globs",
        },
      );
    }
    const rec = await this.rules.createRule(
      {
        id: randomId("aar_"),
        name: req.name,
        rule: rule as Record<string, unknown>,
        policyId: policy.id,
        tags,
        createdAt: this.deps.clock.now(),
        createdBy: `user:${c.user.name}`,
      },
      before?.id ?? null,
    );
    await this.deps.audit.by(c, "autoassign.create", `autoassign-rule:${rec.id}`, {
      name: rec.name,
      rule,
      policy: policy.name,
      tags,
      before: before?.name ?? null,
    });
    return this.get(c, rec.id);
  }

  /**
   * Edit a rule in place (its id stays; its place too, unless `before` moves
   * it), checked as create checks; audited with what changed. A no-op edit
   * is answered with the rule and not audited.
   */
  async update(c: Caller, ref: string, req: UpdateAutoassignRuleRequest): Promise<AutoassignRuleInfo> {
    requirePermission(c, "endpoints.approve");
    const cur = await this.resolve(ref);
    const tags = tagsOf(c, req.tags ?? cur.tags, cur.tags);
    const rule = req.rule === undefined ? undefined : checkCondition(mergeCondition(cur.rule, req.rule));
    const policy = req.policy === undefined ? undefined : await this.deps.policies.resolve(req.policy);
    const before = req.before ? await this.resolve(req.before) : null;
    const was = await this.get(c, cur.id);
    await this.rules.updateRule(
      cur.id,
      {
        ...(req.name !== undefined ? { name: req.name } : {}),
        ...(rule ? { rule: rule as Record<string, unknown> } : {}),
        ...(policy ? { policyId: policy.id } : {}),
        ...(req.tags !== undefined ? { tags } : {}),
      },
      req.before === undefined ? undefined : { before: before?.id ?? null },
    );
    const is = await this.get(c, cur.id);
    const changed = changes(was, is);
    if (Object.keys(changed.after).length)
      await this.deps.audit.by(c, "autoassign.update", `autoassign-rule:${cur.id}`, {
        name: is.name,
        ...changed,
      });
    return is;
  }

  async remove(c: Caller, ref: string): Promise<void> {
    requirePermission(c, "endpoints.approve");
    const r = await this.resolve(ref);
    if (!(await this.rules.deleteRule(r.id))) return; // removed meanwhile
    await this.deps.audit.by(c, "autoassign.delete", `autoassign-rule:${r.id}`, {
      name: r.name,
      rule: r.rule,
      policyId: r.policyId,
      tags: r.tags,
    });
  }

  /** Which rule an endpoint (its stored facts) or the facts given would get; nothing changes. */
  async test(c: Caller, req: AutoassignTestRequest): Promise<AutoassignTestResult> {
    requirePermission(c, "endpoints.read");
    let hostname: string;
    let facts: Record<string, unknown>;
    let endpoint: string | null = null;
    if (req.endpoint) {
      const e = await this.endpoint(req.endpoint);
      endpoint = e.id;
      hostname = e.hostname;
      facts = e.facts;
    } else {
      const f = req.facts ?? {};
      hostname = f.hostname ?? "";
      const [id, ...rest] = (f.os ?? "").trim().split(/\s+/);
      facts = {
        ...(id ? { os: { id, versionId: rest.join(" ") } } : {}),
        dmi: { ...(f.vendor ? { vendor: f.vendor } : {}), ...(f.model ? { model: f.model } : {}) },
      };
    }
    const seen = factsOf(hostname, facts);
    const list = await this.rules.listRules();
    const rules = list.map((r) => ({
      name: r.name,
      matches: matchCollectionRule(r.rule as CollectionRule, seen),
    }));
    const first = list.find((_r, i) => rules[i]!.matches) ?? null;
    const policyName = first
      ? ((await this.deps.store.getPolicy(first.policyId))?.name ?? first.policyId)
      : "";
    return {
      endpoint,
      facts: {
        hostname: seen.hostname,
        os: seen.os ? `${seen.os.id} ${seen.os.versionId}`.trim() : null,
        vendor: seen.vendor ?? null,
        model: seen.model ?? null,
      },
      match: first ? { id: first.id, name: first.name, policy: policyName, tags: first.tags } : null,
      rules,
    };
  }

  private endpoint(id: string): Promise<EndpointRecord> {
    return requireEndpoint(this.deps.store, id);
  }

  /**
   * Give pending endpoints (the ones named, or all) the CVD of the first rule
   * they match, as enrollment would have. Left pending, with the reason:
   * endpoints no rule matches, those flagged duplicateMachineId (an
   * administrator decides), those enrolled with a token that excludes the
   * rules (recovery), and those that are not pending.
   */
  async approveByRules(c: Caller, req: ApproveByRulesRequest = {}): Promise<ApproveByRulesResult> {
    requirePermission(c, "endpoints.approve");
    const { store } = this.deps;
    const candidates: EndpointRecord[] = [];
    if (req.endpoints?.length) for (const id of req.endpoints) candidates.push(await this.endpoint(id));
    else candidates.push(...(await store.listEndpoints({ state: "pending" })));
    const rules = await this.rules.listRules();
    const policyNames = new Map((await store.listPolicies()).map((p) => [p.id, p.name]));
    const tokens = new Map<string, boolean>();
    const out: ApproveByRulesResult = { approved: [], pending: [] };
    for (const e of candidates) {
      const left = (reason: string) => out.pending.push({ endpoint: e.id, hostname: e.hostname, reason });
      if (e.state !== "pending") {
        left(`it is ${e.state}`);
        continue;
      }
      if (e.duplicateMachineId) {
        left("it reported a machine id another endpoint has: approve it by hand");
        continue;
      }
      if (e.enrollmentTokenId) {
        if (!tokens.has(e.enrollmentTokenId))
          tokens.set(
            e.enrollmentTokenId,
            (await store.getEnrollmentToken(e.enrollmentTokenId))?.autoAssign !== false,
          );
        if (!tokens.get(e.enrollmentTokenId)) {
          left(`its enrollment token ${e.enrollmentTokenId} excludes the rules`);
          continue;
        }
      }
      const f = factsOf(e.hostname, e.facts);
      const rule = rules.find((r) => matchCollectionRule(r.rule as CollectionRule, f));
      if (!rule) {
        left("no rule matches");
        continue;
      }
      const cvdId = randomId("cvd_");
      try {
        await store.approveEndpoint(e.id, {
          create: {
            id: cvdId,
            endpointId: e.id,
            policyId: rule.policyId,
            createdAt: this.deps.clock.now(),
            snoozedUntil: null,
            tags: rule.tags,
          },
        });
      } catch (err) {
        // Approved or given a CVD meanwhile: say so, go on with the others.
        if (err instanceof StrataError && err.code !== "INTERNAL") {
          left(err.message);
          continue;
        }
        throw err;
      }
      const policy = policyNames.get(rule.policyId) ?? rule.policyId;
      await this.deps.audit.by(c, "endpoint.approve", `endpoint:${e.id}`, {
        hostname: e.hostname,
        cvdId,
        newCvd: true,
        policy,
        rule: rule.name,
        tags: rule.tags,
      });
      out.approved.push({ endpoint: e.id, hostname: e.hostname, rule: rule.name, cvd: cvdId, policy });
    }
    return out;
  }
}
