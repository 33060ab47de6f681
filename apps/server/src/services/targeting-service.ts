/**
 * Targeting (docs/design/layers.md, "Assignment and composition",
 * "Drivers"): collections of CVDs (static, or dynamic: a rule over the
 * endpoint's facts and the CVD's tags), driver profiles (driver folders
 * for the endpoints their rules match), the editable layer rules and the
 * CVD tags rules match on.
 *
 * Rules are evaluated when asked, on the facts the endpoints reported
 * last (`PUT /agent/facts`) and the tags as they are: nothing derived is
 * stored, so a changed fact, tag, rule or profile takes effect at the next
 * question. Questions about one CVD (collectionsOf, driverFolders) read
 * that CVD's facts and the rules; questions about every CVD (members of a
 * dynamic collection, CVDs of a profile) page through the fleet.
 */
import type {
  CollectionRecord,
  DriverProfileRecord,
  LayerRulesRecord,
  TargetingStore,
  TargetRecord,
} from "@strata/catalog";
import {
  BASE_CAPTURE_RULES,
  type CollectionFacts,
  type CollectionRule,
  DEFAULT_DO_NOT_OVERRIDE,
  type DriverFacts,
  type DriverRule,
  formatPolicyErrors,
  globToRegExp,
  matchCollectionRule,
  matchProfile,
  StrataError,
  validateRuleList,
} from "@strata/core";
import {
  COLLECTION_ID_PATTERN,
  type CollectionInfo,
  type CreateCollectionRequest,
  type CreateDriverProfileRequest,
  type CvdTagsInfo,
  type CvdTagsRequest,
  DRIVER_PROFILE_ID_PATTERN,
  type DriverProfileInfo,
  type LayerRules,
  type LayerRulesInfo,
  type PolicyRule,
  TAGS_MAX,
  type UpdateDriverProfileRequest,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type Caller, requirePermission, type ServiceDeps } from "./context.js";
import { randomId } from "./tokens.js";

export interface TargetingServiceDeps extends ServiceDeps {
  audit: AuditService;
}

/** CVDs read per page when a question is about the whole fleet. */
export const TARGETS_PAGE = 500;

/** What a collection rule sees of a CVD: its endpoint's hostname, OS, DMI vendor and model, and its tags. */
export function collectionFactsOf(t: TargetRecord): CollectionFacts {
  const f = t.facts as {
    os?: { id?: unknown; versionId?: unknown };
    dmi?: { vendor?: unknown; model?: unknown };
  };
  const s = (v: unknown) => (typeof v === "string" ? v : undefined);
  const osId = s(f.os?.id);
  return {
    hostname: t.hostname ?? "",
    os: osId ? { id: osId, versionId: s(f.os?.versionId) ?? "" } : null,
    ...(s(f.dmi?.vendor) !== undefined ? { vendor: s(f.dmi?.vendor) } : {}),
    ...(s(f.dmi?.model) !== undefined ? { model: s(f.dmi?.model) } : {}),
    tags: t.tags,
  };
}

/** What a driver rule sees of a CVD: its endpoint's DMI vendor and model and its modaliases. */
export function driverFactsOf(t: TargetRecord): DriverFacts {
  const f = t.facts as { dmi?: { vendor?: unknown; model?: unknown }; modaliases?: unknown };
  const vendor = typeof f.dmi?.vendor === "string" ? f.dmi.vendor : undefined;
  const model = typeof f.dmi?.model === "string" ? f.dmi.model : undefined;
  const modaliases = Array.isArray(f.modaliases)
    ? f.modaliases.filter((m): m is string => typeof m === "string")
    : [];
  return {
    ...(vendor !== undefined ? { vendor } : {}),
    ...(model !== undefined ? { model } : {}),
    modaliases,
  };
}

const invalid = (message: string, hint: string, subject?: string) =>
  new StrataError("INVALID_ARGUMENT", message, { hint, ...(subject ? { subject } : {}) });

/** A glob of a rule: fnmatch syntax, refused when it cannot compile. */
export function checkGlob(what: string, pattern: string): void {
  try {
    globToRegExp(pattern, { text: true });
  } catch (e) {
    throw invalid(
      `${what} ${JSON.stringify(pattern)} is not a valid glob: ${(e as Error).message}`,
      "use *, ? and [a-z]",
    );
  }
}

function checkCollectionRule(rule: CollectionRule): CollectionRule {
  const out: CollectionRule = {};
  for (const k of ["hostname", "os", "vendor", "model"] as const) {
    const v = rule[k];
    if (v === undefined) continue;
    checkGlob(k, v);
    out[k] = k === "os" ? v.trim().replace(/\s+/g, " ") : v;
  }
  if (rule.tags?.length) out.tags = [...new Set(rule.tags)];
  if (!Object.keys(out).length) {
    throw invalid(
      "a collection rule needs at least one of hostname, os, vendor, model, tags",
      'for every CVD write hostname: "*"',
    );
  }
  return out;
}

function checkDriverRules(rules: readonly DriverRule[]): DriverRule[] {
  return rules.map((r, i) => {
    const out: DriverRule = {};
    for (const k of ["vendor", "model", "modalias"] as const) {
      const v = r[k];
      if (v === undefined) continue;
      checkGlob(`rule ${i + 1}: ${k}`, v);
      out[k] = v;
    }
    if (!Object.keys(out).length) {
      throw invalid(
        `driver rule ${i + 1} is empty: it needs at least one of vendor, model, modalias`,
        'for every endpoint write vendor: "*"',
      );
    }
    return out;
  });
}

export function collectionView(c: CollectionRecord, members: string[]): CollectionInfo {
  return {
    id: c.id,
    name: c.name,
    rule: c.rule as CollectionRule | null,
    members,
    createdAt: c.createdAt.toISOString(),
  };
}

export function driverProfileView(
  p: DriverProfileRecord,
  cvds: string[],
  layerNames: ReadonlyMap<string, string>,
): DriverProfileInfo {
  return {
    id: p.id,
    name: p.name,
    folders: p.folders,
    folderNames: p.folders.map((f) => layerNames.get(f) ?? f),
    rules: p.rules as DriverRule[],
    cvds,
    createdAt: p.createdAt.toISOString(),
    updatedAt: p.updatedAt.toISOString(),
  };
}

export class TargetingService {
  constructor(private readonly deps: TargetingServiceDeps) {}

  private get t(): TargetingStore {
    return this.deps.store.targeting;
  }

  // ---- the fleet as rules see it ------------------------------------------------------

  /** Every CVD, page by page (memory: one page). */
  private async *targets(): AsyncGenerator<TargetRecord> {
    let after: string | null = null;
    for (;;) {
      const page = await this.t.listTargets(after, TARGETS_PAGE);
      yield* page;
      if (page.length < TARGETS_PAGE) return;
      after = page[page.length - 1]!.cvdId;
    }
  }

  /** For each rule, the CVDs it matches, in one pass over the fleet. */
  private async matching<R>(
    rules: readonly R[],
    match: (r: R, t: TargetRecord) => boolean,
  ): Promise<string[][]> {
    const out = rules.map(() => [] as string[]);
    if (!rules.length) return out;
    for await (const t of this.targets()) {
      rules.forEach((r, i) => {
        if (match(r, t)) out[i]!.push(t.cvdId);
      });
    }
    return out;
  }

  /**
   * The ids of every collection the CVD belongs to: the static ones that
   * hold it and the dynamic ones whose rule its facts and tags match now.
   * None for a CVD that does not exist.
   */
  async collectionsOf(cvdId: string): Promise<string[]> {
    const target = await this.t.getTarget(cvdId);
    if (!target) return [];
    const facts = collectionFactsOf(target);
    const dynamic = (await this.t.listCollections())
      .filter((c) => c.rule !== null && matchCollectionRule(c.rule as CollectionRule, facts))
      .map((c) => c.id);
    return [...new Set([...(await this.t.staticCollectionsOf(cvdId)), ...dynamic])].sort();
  }

  /**
   * The driver folders (layer ids) of every profile whose rules match the
   * CVD's endpoint now, by profile name, folders in the profile's order.
   * None for a CVD that does not exist.
   */
  async driverFolders(cvdId: string): Promise<{ profile: string; folders: string[] }[]> {
    const target = await this.t.getTarget(cvdId);
    if (!target) return [];
    const facts = driverFactsOf(target);
    return (await this.t.listDriverProfiles())
      .filter((p) => matchProfile(p.rules as DriverRule[], facts))
      .map((p) => ({ profile: p.name, folders: [...p.folders] }));
  }

  // ---- collections ---------------------------------------------------------------------

  /** A collection by id (`col_…`) or name. */
  async resolveCollection(ref: string): Promise<CollectionRecord> {
    const c = new RegExp(COLLECTION_ID_PATTERN).test(ref)
      ? await this.t.getCollection(ref)
      : await this.t.getCollectionByName(ref);
    if (!c) {
      throw new StrataError("NOT_FOUND", `collection ${ref} does not exist`, {
        subject: ref,
        hint: "see `strata collection ls`",
      });
    }
    return c;
  }

  private async collectionInfo(c: CollectionRecord): Promise<CollectionInfo> {
    if (c.rule === null) return collectionView(c, await this.t.collectionMembers(c.id));
    const rule = c.rule as CollectionRule;
    const [members] = await this.matching([rule], (r, t) => matchCollectionRule(r, collectionFactsOf(t)));
    return collectionView(c, members ?? []);
  }

  async createCollection(c: Caller, req: CreateCollectionRequest): Promise<CollectionInfo> {
    requirePermission(c, "layers.assign");
    const rule = req.rule ? checkCollectionRule(req.rule) : null;
    const members = req.members ?? [];
    if (rule && members.length) {
      throw invalid(
        `collection ${req.name} has a rule: its members are the CVDs the rule matches`,
        "give either a rule (dynamic) or members (static)",
        req.name,
      );
    }
    const rec: CollectionRecord = {
      id: randomId("col_"),
      name: req.name,
      rule: rule as Record<string, unknown> | null,
      createdAt: this.deps.clock.now(),
      createdBy: `user:${c.user.name}`,
    };
    await this.t.createCollection(rec, members);
    await this.deps.audit.by(c, "collection.create", `collection:${rec.id}`, {
      name: rec.name,
      rule,
      members,
    });
    return this.collectionInfo(rec);
  }

  async listCollections(c: Caller): Promise<CollectionInfo[]> {
    requirePermission(c, "layers.read");
    const all = await this.t.listCollections();
    const dynamic = all.filter((x) => x.rule !== null);
    const matched = await this.matching(dynamic, (col, t) =>
      matchCollectionRule(col.rule as CollectionRule, collectionFactsOf(t)),
    );
    const byId = new Map(dynamic.map((x, i) => [x.id, matched[i]!]));
    const out: CollectionInfo[] = [];
    for (const x of all)
      out.push(collectionView(x, byId.get(x.id) ?? (await this.t.collectionMembers(x.id))));
    return out;
  }

  async getCollection(c: Caller, ref: string): Promise<CollectionInfo> {
    requirePermission(c, "layers.read");
    return this.collectionInfo(await this.resolveCollection(ref));
  }

  private staticOnly(col: CollectionRecord): void {
    if (col.rule !== null) {
      throw invalid(
        `collection ${col.name} is dynamic: its members are the CVDs its rule matches`,
        "change the CVDs' tags (`strata cvd tag`), or use a static collection",
        col.name,
      );
    }
  }

  async addToCollection(c: Caller, ref: string, cvds: string[]): Promise<CollectionInfo> {
    requirePermission(c, "layers.assign");
    const col = await this.resolveCollection(ref);
    this.staticOnly(col);
    const added = await this.t.addCollectionMembers(col.id, cvds, this.deps.clock.now());
    if (added)
      await this.deps.audit.by(c, "collection.add", `collection:${col.id}`, { name: col.name, cvds });
    return this.collectionInfo(col);
  }

  async removeFromCollection(c: Caller, ref: string, cvd: string): Promise<CollectionInfo> {
    requirePermission(c, "layers.assign");
    const col = await this.resolveCollection(ref);
    this.staticOnly(col);
    if (!(await this.t.removeCollectionMember(col.id, cvd))) {
      throw new StrataError("NOT_FOUND", `CVD ${cvd} is not in collection ${col.name}`, {
        subject: cvd,
        hint: `see \`strata collection show ${col.name}\``,
      });
    }
    await this.deps.audit.by(c, "collection.remove", `collection:${col.id}`, { name: col.name, cvd });
    return this.collectionInfo(col);
  }

  /** Deletes the collection and the assignments made to it: its members fall back to their next newest. */
  async deleteCollection(c: Caller, ref: string): Promise<void> {
    requirePermission(c, "layers.assign");
    const col = await this.resolveCollection(ref);
    const gone = await this.t.deleteCollection(col.id);
    if (!gone) return; // deleted meanwhile
    await this.deps.audit.by(c, "collection.delete", `collection:${col.id}`, {
      name: col.name,
      assignments: gone.assignments,
    });
  }

  // ---- driver profiles --------------------------------------------------------------------

  async resolveDriverProfile(ref: string): Promise<DriverProfileRecord> {
    const p = new RegExp(DRIVER_PROFILE_ID_PATTERN).test(ref)
      ? await this.t.getDriverProfile(ref)
      : await this.t.getDriverProfileByName(ref);
    if (!p) {
      throw new StrataError("NOT_FOUND", `driver profile ${ref} does not exist`, {
        subject: ref,
        hint: "see `strata driver profile ls`",
      });
    }
    return p;
  }

  /** Driver layers by id or name, as ids (each once, in order); every one must be of kind driver. */
  private async driverLayers(refs: readonly string[]): Promise<string[]> {
    const ids: string[] = [];
    for (const ref of refs) {
      const l = /^lay_/.test(ref)
        ? await this.deps.store.layers.getLayer(ref)
        : await this.deps.store.layers.getLayerByName(ref);
      if (!l) {
        throw new StrataError("NOT_FOUND", `layer ${ref} does not exist`, {
          subject: ref,
          hint: "capture a driver folder with `strata agent capture finish --kind driver`",
        });
      }
      if (l.kind !== "driver") {
        throw invalid(
          `layer ${l.name} is a ${l.kind} layer, not a driver folder`,
          "a driver profile names driver layers only",
          ref,
        );
      }
      if (!ids.includes(l.id)) ids.push(l.id);
    }
    return ids;
  }

  /** Layer names by id, for the views. */
  private async layerNames(): Promise<Map<string, string>> {
    return new Map((await this.deps.store.layers.listLayers()).map((l) => [l.id, l.name]));
  }

  private async profileInfo(p: DriverProfileRecord): Promise<DriverProfileInfo> {
    const [cvds] = await this.matching([p.rules as DriverRule[]], (r, t) =>
      matchProfile(r, driverFactsOf(t)),
    );
    return driverProfileView(p, cvds ?? [], await this.layerNames());
  }

  async createDriverProfile(c: Caller, req: CreateDriverProfileRequest): Promise<DriverProfileInfo> {
    requirePermission(c, "layers.write");
    const rules = checkDriverRules(req.rules);
    const folders = await this.driverLayers(req.folders);
    const now = this.deps.clock.now();
    const rec: DriverProfileRecord = {
      id: randomId("drv_"),
      name: req.name,
      folders,
      rules: rules as Record<string, unknown>[],
      createdAt: now,
      updatedAt: now,
    };
    await this.t.createDriverProfile(rec);
    await this.deps.audit.by(c, "driver_profile.create", `driver-profile:${rec.id}`, {
      name: rec.name,
      folders,
      rules,
    });
    return this.profileInfo(rec);
  }

  async listDriverProfiles(c: Caller): Promise<DriverProfileInfo[]> {
    requirePermission(c, "layers.read");
    const all = await this.t.listDriverProfiles();
    const cvds = await this.matching(all, (p, t) => matchProfile(p.rules as DriverRule[], driverFactsOf(t)));
    const names = await this.layerNames();
    return all.map((p, i) => driverProfileView(p, cvds[i]!, names));
  }

  async getDriverProfile(c: Caller, ref: string): Promise<DriverProfileInfo> {
    requirePermission(c, "layers.read");
    return this.profileInfo(await this.resolveDriverProfile(ref));
  }

  /** Replaces the fields given. The images of the CVDs it matches (before or after) change with it. */
  async updateDriverProfile(
    c: Caller,
    ref: string,
    req: UpdateDriverProfileRequest,
  ): Promise<DriverProfileInfo> {
    requirePermission(c, "layers.write");
    const p = await this.resolveDriverProfile(ref);
    const patch = {
      ...(req.name !== undefined ? { name: req.name } : {}),
      ...(req.folders !== undefined ? { folders: await this.driverLayers(req.folders) } : {}),
      ...(req.rules !== undefined ? { rules: checkDriverRules(req.rules) as Record<string, unknown>[] } : {}),
    };
    const after = await this.t.updateDriverProfile(p.id, patch, this.deps.clock.now());
    if (!after) return this.getDriverProfile(c, ref); // deleted meanwhile: NOT_FOUND
    await this.deps.audit.by(c, "driver_profile.update", `driver-profile:${p.id}`, {
      name: after.name,
      before: { name: p.name, folders: p.folders, rules: p.rules },
      after: patch,
    });
    return this.profileInfo(after);
  }

  async deleteDriverProfile(c: Caller, ref: string): Promise<void> {
    requirePermission(c, "layers.write");
    const p = await this.resolveDriverProfile(ref);
    if (!(await this.t.deleteDriverProfile(p.id))) return;
    await this.deps.audit.by(c, "driver_profile.delete", `driver-profile:${p.id}`, {
      name: p.name,
      folders: p.folders,
      rules: p.rules,
    });
  }

  // ---- layer rules -------------------------------------------------------------------------

  /** The rules in force (stored, else core's defaults): what captures and applies use. */
  async layerRules(): Promise<LayerRules> {
    const r = await this.t.getLayerRules();
    return r
      ? {
          doNotOverride: r.doNotOverride as unknown as PolicyRule[],
          baseCapture: r.baseCapture as unknown as PolicyRule[],
        }
      : {
          doNotOverride: DEFAULT_DO_NOT_OVERRIDE.map((x) => ({ ...x })),
          baseCapture: BASE_CAPTURE_RULES.map((x) => ({ ...x })),
        };
  }

  private static rulesInfo(r: LayerRulesRecord | null, rules: LayerRules): LayerRulesInfo {
    return {
      ...rules,
      isDefault: r === null,
      updatedAt: r?.updatedAt.toISOString() ?? null,
      updatedBy: r?.updatedBy ?? null,
    };
  }

  async getLayerRules(c: Caller): Promise<LayerRulesInfo> {
    requirePermission(c, "layers.read");
    const r = await this.t.getLayerRules();
    return TargetingService.rulesInfo(r, await this.layerRules());
  }

  /** Replaces both lists; every error of both is reported at once, and nothing is stored then. */
  async setLayerRules(
    c: Caller,
    input: { doNotOverride: unknown; baseCapture: unknown },
  ): Promise<LayerRulesInfo> {
    requirePermission(c, "layers.write");
    const dno = validateRuleList(input.doNotOverride, "doNotOverride");
    const base = validateRuleList(input.baseCapture, "baseCapture");
    const errors = [...dno.errors, ...base.errors];
    if (errors.length) {
      throw new StrataError("INVALID_ARGUMENT", `invalid layer rules:\n${formatPolicyErrors(errors)}`, {
        hint: "rules are {dir, pattern?} objects or strings like /var/log/**; start from `strata layer rules --json`",
      });
    }
    const before = await this.layerRules();
    const rec: LayerRulesRecord = {
      doNotOverride: dno.rules as unknown as Record<string, unknown>[],
      baseCapture: base.rules as unknown as Record<string, unknown>[],
      updatedAt: this.deps.clock.now(),
      updatedBy: `user:${c.user.name}`,
    };
    await this.t.setLayerRules(rec);
    await this.deps.audit.by(c, "layer_rules.set", "layer-rules", {
      before,
      after: { doNotOverride: dno.rules, baseCapture: base.rules },
    });
    return TargetingService.rulesInfo(rec, {
      doNotOverride: dno.rules as PolicyRule[],
      baseCapture: base.rules as PolicyRule[],
    });
  }

  // ---- CVD tags ------------------------------------------------------------------------------

  async tagCvd(c: Caller, cvdId: string, req: CvdTagsRequest): Promise<CvdTagsInfo> {
    requirePermission(c, "layers.assign");
    const before = await this.t.cvdTags(cvdId);
    const tags = await this.t.changeCvdTags(cvdId, req, TAGS_MAX);
    if (tags.join("\0") !== before.join("\0")) {
      await this.deps.audit.by(c, "cvd.tag", `cvd:${cvdId}`, { before, after: tags });
    }
    return { cvd: cvdId, tags };
  }
}
