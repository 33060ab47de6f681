/**
 * Layers on the server (docs/design/layers.md): base capture from a
 * reference CVD's snapshot, app capture from a pre and a post snapshot,
 * assignments, image composition, the dry-run report against a CVD's
 * newest snapshot, and apply tasks with their plan.
 *
 * Trees are worked on in the repository one directory at a time
 * (layer-trees.ts); a layer version and an image are each a snapshot record
 * (kind `layer` / `image`), so prune keeps them and retention (which looks
 * at `cvd:` tags only) never forgets them. Manifests live in the catalog
 * (layer_versions.manifest, images.manifest): snapshot records stay small
 * because every listing of the repository's snapshots reads them.
 */
import { createHash, randomBytes } from "node:crypto";
import type {
  AssignmentRecord,
  CaptureRecord,
  ImageRecord,
  LayerKind,
  LayerRecord,
  LayerVersionRecord,
  ServerStore,
  TaskRecord,
} from "@strata/catalog";
import {
  ACCOUNT_FILES,
  type AccountLines,
  ALTERNATIVES_ADMIN_DIR,
  ALTERNATIVES_LINK_DIR,
  type AlternativeGroup,
  accountName,
  accountProblems,
  alternativeLinks,
  applyTriggers,
  BASE_CAPTURE_RULES,
  CAPTURE_NOISE_RULES,
  type CompiledPolicy,
  compilePolicy,
  compileRules,
  composeAlternatives,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_DO_NOT_OVERRIDE,
  depmodTargets,
  diffAccounts,
  diffAlternatives,
  diffStatus,
  diskSpaceNeeded,
  diskSpaceProblem,
  displayBytePath,
  dryRunPackages,
  ENDPOINT_DERIVED_RULES,
  FACTORY_RULES,
  type FsNode,
  IDENTITY_RULES,
  type InitramfsTargets,
  initramfsTargets,
  isAlternativeName,
  isStructuredPath,
  joinBytePaths,
  mergeAccounts,
  mergeInitramfsTargets,
  type PackageStanza,
  packageKey,
  parseAccountLines,
  parseAlternativeAdmin,
  parsePasswd,
  parseStatus,
  type Rule,
  type SnapshotId,
  StrataError,
  selectsPackage,
  splitBytePaths,
  systemAccounts,
  TRIGGER_ORDER,
  type TreeId,
  type Trigger,
  triggersFor,
} from "@strata/core";
import type {
  ApplyPlan,
  ApplyRequest,
  AssignmentInfo,
  AssignRequest,
  CaptureBaseRequest,
  CaptureBaseResponse,
  CaptureFinishRequest,
  CaptureFinishResponse,
  CaptureInfo,
  CaptureStartRequest,
  CvdLayersInfo,
  DryRunProblem,
  DryRunQuery,
  DryRunReport,
  EndpointFacts,
  LayerInfo,
  LayerManifest,
  LayerRef,
  LayerVersionInfo,
  OsRelease,
  ReferenceInfo,
  Task,
} from "@strata/protocol";
import {
  emptySnapshotStats,
  holdLease,
  leaseHolder,
  type Repository,
  type SnapshotRecord,
} from "@strata/repo";
import type { AuditService } from "./audit-service.js";
import { type AgentIdentity, type Caller, requirePermission, type ServiceDeps } from "./context.js";
import { LayerTrees, type PathFilter, Sample, sameNode } from "./layer-trees.js";
import { uploadPolicyOf } from "./policy-service.js";
import { pickSnapshot, type RestoreService } from "./restore-service.js";
import { CvdTargeting, type LayerTargeting } from "./targeting.js";
import type { TaskService } from "./task-service.js";
import { randomId } from "./tokens.js";
import { cvdTag } from "./upload-service.js";

/** The agent's state directory as policies are compiled on the server (it is excluded anyway). */
const AGENT_STATE_DIR = "/var/lib/strata-agent";
/** Structured files and os-release are read whole; larger ones are refused. */
const MAX_STRUCTURED_BYTES = 64 * 1024 * 1024;
const SAMPLE = 100;

/** The rules an administrator may edit (`strata layer rules`); the defaults are core's. */
export type LayerRulesSource = () => Promise<{
  doNotOverride: readonly Rule[];
  baseCapture: readonly Rule[];
}>;

export interface LayerServiceDeps extends ServiceDeps {
  repo: Repository;
  audit: AuditService;
  tasks: TaskService;
  restores: RestoreService;
  /** Effective assignments and driver folders; default: assignments to the CVD itself, no drivers. */
  targeting?: LayerTargeting;
  /** Default: DEFAULT_DO_NOT_OVERRIDE and BASE_CAPTURE_RULES. */
  rules?: LayerRulesSource;
  /** Collections by id or name, for assignments to a collection (absent: refused). */
  collections?: { resolveCollection(ref: string): Promise<{ id: string; name: string }> };
}

type RootFsFact = NonNullable<EndpointFacts["rootFs"]>;

export const layerTag = (layerId: string) => `layer:${layerId}`;
export const layerVersionTag = (n: number) => `layer-version:${n}`;
export const imageTag = (key: string) => `image:${key}`;

const DEFAULT_RULES: LayerRulesSource = async () => ({
  doNotOverride: DEFAULT_DO_NOT_OVERRIDE,
  baseCapture: BASE_CAPTURE_RULES,
});

const emptyAccounts = (): AccountLines => ({ passwd: [], group: [], shadow: [], gshadow: [] });
const ACCOUNT_PATHS: Record<keyof AccountLines, string> = {
  passwd: "/etc/passwd",
  group: "/etc/group",
  shadow: "/etc/shadow",
  gshadow: "/etc/gshadow",
};
const STATUS_PATH = "/var/lib/dpkg/status";
const osText = (o: OsRelease | null) => (o ? `${o.id} ${o.versionId}`.trim() : "an unknown release");
const sameOs = (a: OsRelease | null, b: OsRelease | null) =>
  (a?.id ?? "") === (b?.id ?? "") && (a?.versionId ?? "") === (b?.versionId ?? "");

/** `ID` and `VERSION_ID` of os-release(5) text; null without an ID. */
export function osReleaseOf(text: string | null): OsRelease | null {
  if (text === null) return null;
  const v: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    let s = m[2]!;
    if (/^".*"$|^'.*'$/.test(s)) s = s.slice(1, -1).replace(/\\(["\\$`])/g, "$1");
    v[m[1]!] = s;
  }
  return v.ID ? { id: v.ID, versionId: v.VERSION_ID ?? "" } : null;
}

export function versionView(v: LayerVersionRecord): LayerVersionInfo {
  return {
    layer: v.layerId,
    version: v.version,
    label: v.label,
    snapshot: v.snapshot,
    tree: v.tree,
    os: v.osId === null ? null : { id: v.osId, versionId: v.osVersion ?? "" },
    source: { cvd: v.sourceCvd, snapshots: v.sourceSnapshots },
    createdAt: v.createdAt.toISOString(),
    createdBy: v.createdBy,
    stats: { files: v.files, bytes: v.bytes, packages: v.packages },
  };
}

function layerView(l: LayerRecord, versions: LayerVersionRecord[]): LayerInfo {
  return {
    id: l.id,
    name: l.name,
    kind: l.kind,
    description: l.description,
    createdAt: l.createdAt.toISOString(),
    versions: versions.map(versionView),
  };
}

function captureView(c: CaptureRecord): CaptureInfo {
  return {
    id: c.id,
    cvd: c.cvdId,
    state: c.state,
    preSnapshot: c.preSnapshot,
    postSnapshot: c.postSnapshot,
    createdAt: c.createdAt.toISOString(),
  };
}

const refView = (r: { layer: string; version: number | null }): LayerRef =>
  r.version === null ? { layer: r.layer } : { layer: r.layer, version: r.version };

export function assignmentView(a: AssignmentRecord): AssignmentInfo {
  return {
    id: a.id,
    target: { kind: a.targetKind, id: a.targetId },
    base: a.base ? refView(a.base) : null,
    apps: a.apps.map(refView),
    assignedAt: a.assignedAt.toISOString(),
    assignedBy: a.assignedBy,
  };
}

/**
 * A manifest as stored (opaque JSON in the catalog), with every field
 * present; `removed` as byte-path strings (the stored `removed` and
 * `removedB64` together: a manifest stored before `removedB64` has only
 * the first).
 */
function manifestOf(m: Record<string, unknown> | null): LayerManifest {
  const x = (m ?? {}) as Partial<LayerManifest>;
  return {
    os: x.os ?? null,
    removed: joinBytePaths(x.removed ?? [], x.removedB64),
    packages: x.packages ?? [],
    removedPackages: x.removedPackages ?? [],
    accounts: { ...emptyAccounts(), ...x.accounts },
    triggers: x.triggers ?? [],
    ...(x.alternatives ? { alternatives: x.alternatives } : {}),
    ...(x.initramfs ? { initramfs: x.initramfs } : {}),
    ...(x.depmod ? { depmod: x.depmod } : {}),
    stats: x.stats ?? { files: 0, bytes: 0 },
  };
}

/**
 * A manifest as stored and sent (layers.md "Manifest"): its removed paths
 * that are valid UTF-8 in `removed`, the others in `removedB64`.
 */
function storedManifest(m: LayerManifest): Record<string, unknown> {
  const { utf8, b64 } = splitBytePaths(m.removed);
  const { removedB64: _b64, ...rest } = m;
  return { ...rest, removed: utf8, ...(b64.length ? { removedB64: b64 } : {}) };
}

/** A layer version the composition uses. */
interface Resolved {
  kind: LayerKind;
  layer: LayerRecord;
  version: LayerVersionRecord;
}

export class LayerService {
  private readonly trees: LayerTrees;
  private readonly targeting: LayerTargeting;
  private readonly rules: LayerRulesSource;

  constructor(private readonly d: LayerServiceDeps) {
    this.trees = new LayerTrees(d.repo);
    this.targeting = d.targeting ?? new CvdTargeting(d.store.layers);
    this.rules = d.rules ?? DEFAULT_RULES;
  }

  private get store(): ServerStore {
    return this.d.store;
  }
  private get layers() {
    return this.d.store.layers;
  }
  private get repo() {
    return this.d.repo;
  }

  /** Run `f` under a shared repository lease: prune never deletes trees it is writing. */
  private async leased<T>(f: () => Promise<T>): Promise<T> {
    const lease = await holdLease(this.repo.catalog, "repo", leaseHolder("layers"), "shared");
    try {
      return await f();
    } finally {
      await lease.release();
    }
  }

  // ---- lookups ---------------------------------------------------------------

  /** A layer by id (`lay_…`) or name; NOT_FOUND otherwise. */
  async resolveLayer(ref: string): Promise<LayerRecord> {
    const l =
      (ref.startsWith("lay_") ? await this.layers.getLayer(ref) : null) ??
      (await this.layers.getLayerByName(ref));
    if (!l)
      throw new StrataError("NOT_FOUND", `layer ${ref} does not exist`, {
        subject: ref,
        hint: "see `strata layer ls`",
      });
    return l;
  }

  /** A version of `l` (its newest when `version` is absent); NOT_FOUND otherwise. */
  private async versionOf(l: LayerRecord, version: number | null | undefined): Promise<LayerVersionRecord> {
    const v =
      version === null || version === undefined
        ? await this.layers.newestLayerVersion(l.id)
        : await this.layers.getLayerVersion(l.id, version);
    if (!v)
      throw new StrataError(
        "NOT_FOUND",
        version === null || version === undefined
          ? `layer ${l.name} has no version yet`
          : `layer ${l.name} has no version ${version}`,
        { subject: l.name, hint: `see \`strata layer show ${l.name}\`` },
      );
    return v;
  }

  private async cvd(id: string) {
    const c = await this.store.getCvd(id);
    if (!c)
      throw new StrataError("NOT_FOUND", `CVD ${id} does not exist`, {
        subject: id,
        hint: "see `strata cvd list`",
      });
    return c;
  }

  private async requireReference(cvdId: string): Promise<void> {
    if (!(await this.layers.isReference(cvdId)))
      throw new StrataError("INVALID_ARGUMENT", `CVD ${cvdId} is not a reference CVD`, {
        subject: cvdId,
        hint: `layers are captured from reference machines only: \`strata cvd reference ${cvdId}\``,
      });
  }

  /** Snapshots of a CVD, newest first. */
  private async snapshotsOf(cvdId: string): Promise<SnapshotRecord[]> {
    return (await this.repo.catalog.listSnapshots({ tag: cvdTag(cvdId) })).sort((a, b) =>
      b.time.getTime() !== a.time.getTime() ? b.time.getTime() - a.time.getTime() : a.id < b.id ? 1 : -1,
    );
  }

  /** A snapshot of the CVD by full id, of the given kind; NOT_FOUND or INVALID_ARGUMENT otherwise. */
  private async cvdSnapshot(cvdId: string, id: string, kind: string): Promise<SnapshotRecord> {
    const snap = /^[0-9a-f]{64}$/.test(id) ? await this.repo.catalog.getSnapshot(id as SnapshotId) : null;
    if (!snap?.tags.includes(cvdTag(cvdId)))
      throw new StrataError("NOT_FOUND", `snapshot ${id} does not exist`, { subject: id });
    if (snap.kind !== kind)
      throw new StrataError("INVALID_ARGUMENT", `snapshot ${id} is of kind ${snap.kind}, not ${kind}`, {
        subject: id,
        hint: `upload it with the kind ${kind} (\`strata agent capture\` does)`,
      });
    return snap;
  }

  private async readText(tree: TreeId, path: string): Promise<string | null> {
    const b = await this.trees.readFile(tree, path, MAX_STRUCTURED_BYTES);
    return b === null ? null : b.toString("utf8");
  }

  private async osOf(tree: TreeId): Promise<OsRelease | null> {
    return osReleaseOf(
      (await this.readText(tree, "/etc/os-release")) ?? (await this.readText(tree, "/usr/lib/os-release")),
    );
  }

  private async accountsOf(tree: TreeId): Promise<AccountLines> {
    const out = emptyAccounts();
    for (const f of ACCOUNT_FILES)
      out[f] = parseAccountLines((await this.readText(tree, ACCOUNT_PATHS[f])) ?? "");
    return out;
  }

  /**
   * The alternatives groups of `tree` (its /var/lib/dpkg/alternatives, the
   * current choices from /etc/alternatives), by name. A file that is not an
   * administrative file is left out (update-alternatives refuses it too).
   */
  private async alternativesOf(tree: TreeId): Promise<Map<string, AlternativeGroup>> {
    const out = new Map<string, AlternativeGroup>();
    const dir = await this.trees.lookup(tree, ALTERNATIVES_ADMIN_DIR);
    if (dir?.type !== "dir" || !dir.subtree) return out;
    const links = await this.trees.lookup(tree, ALTERNATIVES_LINK_DIR);
    const linkNodes = links?.type === "dir" && links.subtree ? await this.trees.load(links.subtree) : [];
    for (const n of await this.trees.load(dir.subtree)) {
      const name = n.name.toString("utf8");
      if (n.type !== "file" || !isAlternativeName(name)) continue;
      const text = await this.readText(tree, `${ALTERNATIVES_ADMIN_DIR}/${name}`);
      const cur = linkNodes.find((l) => l.type === "symlink" && l.name.equals(n.name));
      try {
        out.set(name, parseAlternativeAdmin(name, text ?? "", cur?.target?.toString("utf8") ?? null));
      } catch {
        // Not an administrative file (a backup, a stray file): not a group.
      }
    }
    return out;
  }

  /** `filter` that also skips `paths` (exact paths, e.g. the alternatives' generic links). */
  private static skipping(filter: PathFilter, paths: Set<string>): PathFilter {
    if (!paths.size) return filter;
    const dirs = new Set<string>();
    for (const p of paths)
      for (let i = p.lastIndexOf("/"); i > 0; i = p.lastIndexOf("/", i - 1)) dirs.add(p.slice(0, i));
    return {
      skip: (p, n) => paths.has(p) || filter.skip(p, n),
      mayMatchBelow: (dir) => dir === "/" || dirs.has(dir) || filter.mayMatchBelow(dir),
    };
  }

  /** The CVD's policy compiled with the homes of `tree`'s /etc/passwd, as the agent compiles it. */
  private async policyFor(cvdId: string, tree: TreeId): Promise<{ policy: CompiledPolicy; homes: string[] }> {
    const cvd = await this.cvd(cvdId);
    const rec = await this.store.getPolicy(cvd.policyId);
    if (!rec)
      throw new StrataError("NOT_FOUND", `policy ${cvd.policyId} of CVD ${cvdId} does not exist`, {
        subject: cvd.policyId,
      });
    const homes = parsePasswd((await this.readText(tree, "/etc/passwd")) ?? "");
    return {
      policy: compilePolicy(uploadPolicyOf(rec), { homes, agentStateDir: AGENT_STATE_DIR }),
      homes,
    };
  }

  /** A filter that keeps the machine area only, without what `rules` name. */
  private async machineFilter(cvdId: string, tree: TreeId, rules: readonly Rule[]): Promise<PathFilter> {
    const { policy, homes } = await this.policyFor(cvdId, tree);
    const ctx = { homes, agentStateDir: AGENT_STATE_DIR };
    const dropped = compileRules(rules, ctx, "layer rules");
    // Where classify may answer "user" or "excluded" below a directory (exceptions only narrow them).
    const user = compileRules(policy.policy.userArea, ctx, "userArea");
    const excluded = compileRules([...FACTORY_RULES, ...policy.policy.unprotected], ctx, "excluded");
    return {
      skip: (p) => dropped.matches(p) || isStructuredPath(p) || policy.classify(p) !== "machine",
      mayMatchBelow: (dir) =>
        dropped.mayMatchBelow(dir) ||
        user.mayMatchBelow(dir) ||
        excluded.mayMatchBelow(dir) ||
        STRUCTURED_DIRS.has(dir),
    };
  }

  private async layerInfo(l: LayerRecord): Promise<LayerInfo> {
    return layerView(l, await this.layers.listLayerVersions(l.id));
  }

  // ---- admin: layers -------------------------------------------------------------

  async list(c: Caller): Promise<LayerInfo[]> {
    requirePermission(c, "layers.read");
    const versions = new Map<string, LayerVersionRecord[]>();
    for (const v of await this.layers.listLayerVersions()) {
      const list = versions.get(v.layerId) ?? [];
      list.push(v);
      versions.set(v.layerId, list);
    }
    return (await this.layers.listLayers()).map((l) => layerView(l, versions.get(l.id) ?? []));
  }

  async get(c: Caller, ref: string): Promise<LayerInfo> {
    requirePermission(c, "layers.read");
    return this.layerInfo(await this.resolveLayer(ref));
  }

  async setReference(c: Caller, cvdId: string, on: boolean): Promise<ReferenceInfo> {
    requirePermission(c, "layers.write");
    await this.cvd(cvdId);
    if (await this.layers.setReference(cvdId, on, this.d.clock.now(), `user:${c.user.name}`))
      await this.d.audit.by(c, on ? "cvd.reference_set" : "cvd.reference_unset", `cvd:${cvdId}`);
    return { cvd: cvdId, reference: on };
  }

  /** The layer `name` (created when new, kind checked when not) and a free label for its next version. */
  private async layerForCapture(
    name: string,
    kind: LayerKind,
    label: string | undefined,
  ): Promise<{ layer: LayerRecord | null; label: string; next: number }> {
    const layer = await this.layers.getLayerByName(name);
    if (layer && layer.kind !== kind)
      throw new StrataError(
        "CONFLICT",
        `layer ${name} is a ${layer.kind} layer, not ${kind === "app" ? "an" : "a"} ${kind} layer`,
        {
          subject: name,
          hint: "capture it under another name",
        },
      );
    const versions = layer ? await this.layers.listLayerVersions(layer.id) : [];
    const next = (versions[versions.length - 1]?.version ?? 0) + 1;
    const l = label ?? String(next);
    if (versions.some((v) => v.label === l))
      throw new StrataError("ALREADY_EXISTS", `layer ${name} already has a version labelled ${l}`, {
        subject: l,
        hint: "give another label (labels are unique per layer)",
      });
    return { layer, label: l, next };
  }

  /**
   * Save the layer's snapshot record and record the version (creating the
   * layer on its first version). A capture racing for the same number
   * loses with ALREADY_EXISTS and its snapshot record is removed.
   */
  private async recordVersion(o: {
    name: string;
    kind: LayerKind;
    description: string;
    existing: LayerRecord | null;
    label: string;
    version: number;
    tree: TreeId;
    manifest: LayerManifest;
    hostname: string;
    sourceCvd: string;
    sourceSnapshots: string[];
    createdBy: string;
  }): Promise<{ layer: LayerRecord; version: LayerVersionRecord }> {
    const now = this.d.clock.now();
    let layer = o.existing;
    if (!layer) {
      const fresh: LayerRecord = {
        id: randomId("lay_"),
        name: o.name,
        kind: o.kind,
        description: o.description,
        createdAt: now,
      };
      try {
        await this.layers.createLayer(fresh);
        layer = fresh;
      } catch (e) {
        const again = await this.layers.getLayerByName(o.name);
        if (!again || again.kind !== o.kind) throw e;
        layer = again; // another capture created it a moment ago
      }
    }
    const stats = {
      ...emptySnapshotStats(),
      totalFiles: o.manifest.stats.files,
      totalBytes: o.manifest.stats.bytes,
    };
    await this.repo.flush();
    const snap = await this.repo.saveSnapshot({
      time: now,
      hostname: o.hostname,
      paths: ["/"],
      tags: [layerTag(layer.id), layerVersionTag(o.version)],
      tree: o.tree,
      parent: null,
      kind: "layer",
      stats,
    });
    const rec: LayerVersionRecord = {
      layerId: layer.id,
      version: o.version,
      label: o.label,
      snapshot: snap.id,
      tree: o.tree,
      osId: o.manifest.os?.id ?? null,
      osVersion: o.manifest.os ? o.manifest.os.versionId : null,
      files: o.manifest.stats.files,
      bytes: o.manifest.stats.bytes,
      packages: o.manifest.packages.length,
      sourceCvd: o.sourceCvd,
      sourceSnapshots: o.sourceSnapshots,
      createdAt: now,
      createdBy: o.createdBy,
    };
    try {
      await this.layers.addLayerVersion(rec, storedManifest(o.manifest));
    } catch (e) {
      await this.repo.removeSnapshots([snap.id]).catch(() => {});
      throw e;
    }
    return { layer, version: rec };
  }

  /**
   * `strata layer capture-base`: the reference CVD's snapshot without the
   * user area, the base-capture rules and the structured files, saved as a
   * new tree (unchanged subtrees keep their ids); the manifest holds every
   * dpkg stanza and account line and the os-release.
   */
  async captureBase(c: Caller, req: CaptureBaseRequest): Promise<CaptureBaseResponse> {
    requirePermission(c, "layers.write");
    await this.cvd(req.cvd);
    await this.requireReference(req.cvd);
    const snap = pickSnapshot(await this.snapshotsOf(req.cvd), req.snapshot, req.cvd);
    const { layer, label, next } = await this.layerForCapture(req.name, "base", req.label);
    const { baseCapture } = await this.rules();
    const out = await this.leased(async () => {
      // What endpoints derive themselves (initramfs, alternatives) is never a
      // layer's, whatever the editable rules say; the alternatives' generic
      // links are update-alternatives' to make on the endpoint.
      const alternatives = diffAlternatives(new Map(), await this.alternativesOf(snap.tree));
      const filter = LayerService.skipping(
        await this.machineFilter(req.cvd, snap.tree, [...baseCapture, ...ENDPOINT_DERIVED_RULES]),
        alternativeLinks(alternatives.groups),
      );
      const tree = await this.trees.filter(snap.tree, filter);
      const manifest: LayerManifest = {
        os: await this.osOf(snap.tree),
        removed: [],
        packages: parseStatus((await this.readText(snap.tree, STATUS_PATH)) ?? ""),
        removedPackages: [],
        // The reference machine's own people (uid 1000–60000) are not the OS's.
        accounts: systemAccounts(await this.accountsOf(snap.tree)),
        // A base replaces the system: every trigger runs after it, the
        // initramfs and modules index of every kernel the endpoint has then
        // are rebuilt.
        triggers: [...TRIGGER_ORDER],
        alternatives,
        initramfs: { kernels: [], all: true },
        depmod: { kernels: [], all: true },
        stats: await this.trees.stats(tree),
      };
      return this.recordVersion({
        name: req.name,
        kind: "base",
        description: req.description ?? "",
        existing: layer,
        label,
        version: next,
        tree,
        manifest,
        hostname: snap.hostname,
        sourceCvd: req.cvd,
        sourceSnapshots: [snap.id],
        createdBy: `user:${c.user.name}`,
      });
    });
    await this.d.audit.by(c, "layer.capture_base", `layer:${out.layer.id}`, {
      name: out.layer.name,
      version: out.version.version,
      label: out.version.label,
      cvd: req.cvd,
      snapshot: snap.id,
    });
    return { layer: await this.layerInfo(out.layer), version: versionView(out.version) };
  }

  // ---- agent: app capture --------------------------------------------------------

  private agentCvd(agent: AgentIdentity): string {
    if (!agent.cvdId) throw new StrataError("PERMISSION_DENIED", "this endpoint has no CVD yet");
    return agent.cvdId;
  }

  /** `POST /agent/captures`: open a capture with the capture-pre snapshot the agent just uploaded. */
  async startCapture(agent: AgentIdentity, req: CaptureStartRequest): Promise<CaptureInfo> {
    const cvdId = this.agentCvd(agent);
    await this.requireReference(cvdId);
    const pre = await this.cvdSnapshot(cvdId, String(req?.snapshot), "capture-pre");
    const now = this.d.clock.now();
    const rec: CaptureRecord = {
      id: `cap_${randomBytes(12).toString("base64url")}`,
      cvdId,
      state: "open",
      preSnapshot: pre.id,
      postSnapshot: null,
      params: {},
      layerId: null,
      layerVersion: null,
      createdAt: now,
      finishedAt: null,
    };
    await this.layers.createCapture(rec);
    await this.d.audit.record({
      actor: `endpoint:${agent.endpointId}`,
      action: "capture.start",
      object: `cvd:${cvdId}`,
      detail: { capture: rec.id, snapshot: pre.id },
      remoteAddr: "agent",
    });
    return captureView(rec);
  }

  private async ownCapture(cvdId: string, id: string): Promise<CaptureRecord> {
    const c = typeof id === "string" && id.length <= 80 ? await this.layers.getCapture(id) : null;
    if (!c || c.cvdId !== cvdId)
      throw new StrataError("NOT_FOUND", `capture ${String(id).slice(0, 80)} does not exist`, {
        subject: String(id).slice(0, 80),
      });
    return c;
  }

  /**
   * `POST /agent/captures/:id/finish`: diff the pre and post snapshots in
   * the machine area (capture-noise rules and structured files aside),
   * record the layer version. A retried finish of the same post snapshot
   * answers again.
   */
  async finishCapture(
    agent: AgentIdentity,
    id: string,
    req: CaptureFinishRequest,
  ): Promise<CaptureFinishResponse> {
    const cvdId = this.agentCvd(agent);
    const cap = await this.ownCapture(cvdId, id);
    const kind: LayerKind = req?.kind === "driver" ? "driver" : "app";
    if (cap.state === "finished" && cap.postSnapshot === req?.snapshot && cap.layerId && cap.layerVersion) {
      const layer = await this.resolveLayer(cap.layerId);
      const version = await this.versionOf(layer, cap.layerVersion);
      return {
        capture: captureView(cap),
        layer: await this.layerInfo(layer),
        version: versionView(version),
        diff: (cap.params.diff as CaptureFinishResponse["diff"]) ?? {
          added: [],
          changed: [],
          removed: [],
          counts: { added: 0, changed: 0, removed: 0 },
        },
      };
    }
    if (cap.state !== "open")
      throw new StrataError("ALREADY_EXISTS", `capture ${cap.id} is ${cap.state}`, {
        subject: cap.id,
        hint: "start a new capture (`strata agent capture start`)",
      });
    await this.requireReference(cvdId);
    const post = await this.cvdSnapshot(cvdId, String(req?.snapshot), "capture-post");
    const pre = await this.cvdSnapshot(cvdId, cap.preSnapshot, "capture-pre");
    const { layer, label, next } = await this.layerForCapture(req.name, kind, req.label);
    const out = await this.leased(async () => {
      // Alternatives go into the manifest; their generic links (of the groups
      // before and after) are update-alternatives' to make on the endpoint.
      const preAlt =
        kind === "app" ? await this.alternativesOf(pre.tree) : new Map<string, AlternativeGroup>();
      const postAlt =
        kind === "app" ? await this.alternativesOf(post.tree) : new Map<string, AlternativeGroup>();
      const alternatives = diffAlternatives(preAlt, postAlt);
      // Identity files are never a layer's, whatever the install did to them.
      const ignore = LayerService.skipping(
        await this.machineFilter(cvdId, post.tree, [...CAPTURE_NOISE_RULES, ...IDENTITY_RULES]),
        alternativeLinks([...preAlt.values(), ...postAlt.values()]),
      );
      const diff = await this.trees.diff(pre.tree, post.tree, ignore);
      const altPaths = [...new Set([...alternatives.groups, ...alternatives.removed].map((g) => g.name))].map(
        (n) => `${ALTERNATIVES_ADMIN_DIR}/${n}`,
      );
      const triggers = triggersFor([...diff.touched, ...altPaths]);
      const initramfs = initramfsTargets(diff.touched);
      const depmod = depmodTargets(diff.touched);
      const status =
        kind === "app"
          ? diffStatus(
              (await this.readText(pre.tree, STATUS_PATH)) ?? "",
              (await this.readText(post.tree, STATUS_PATH)) ?? "",
            )
          : { packages: [], removedPackages: [] };
      const manifest: LayerManifest = {
        os: await this.osOf(post.tree),
        removed: kind === "app" ? diff.removed : [],
        packages: status.packages,
        removedPackages: status.removedPackages,
        accounts:
          kind === "app"
            ? diffAccounts(await this.accountsOf(pre.tree), await this.accountsOf(post.tree))
            : emptyAccounts(),
        triggers,
        ...(alternatives.groups.length || alternatives.removed.length ? { alternatives } : {}),
        ...(initramfs ? { initramfs } : {}),
        ...(depmod ? { depmod } : {}),
        stats: diff.stats,
      };
      const recorded = await this.recordVersion({
        name: req.name,
        kind,
        description: req.description ?? "",
        existing: layer,
        label,
        version: next,
        tree: diff.tree,
        manifest,
        hostname: post.hostname,
        sourceCvd: cvdId,
        sourceSnapshots: [pre.id, post.id],
        createdBy: `endpoint:${agent.endpointId}`,
      });
      return { ...recorded, diff };
    });
    const diffView: CaptureFinishResponse["diff"] = {
      added: out.diff.added.items,
      changed: out.diff.changed.items,
      removed: out.diff.removed.slice(0, SAMPLE).map(displayBytePath),
      counts: {
        added: out.diff.added.count,
        changed: out.diff.changed.count,
        removed: out.diff.removed.length,
      },
    };
    const done = await this.layers.updateCapture(cap.id, ["open"], {
      state: "finished",
      postSnapshot: post.id,
      params: { name: req.name, kind, label, diff: diffView },
      layerId: out.layer.id,
      layerVersion: out.version.version,
      finishedAt: this.d.clock.now(),
    });
    if (!done)
      throw new StrataError("ALREADY_EXISTS", `capture ${cap.id} was finished meanwhile`, {
        subject: cap.id,
      });
    await this.d.audit.record({
      actor: `endpoint:${agent.endpointId}`,
      action: "layer.capture",
      object: `layer:${out.layer.id}`,
      detail: {
        capture: cap.id,
        name: out.layer.name,
        kind,
        version: out.version.version,
        label,
        cvd: cvdId,
      },
      remoteAddr: "agent",
    });
    return {
      capture: captureView((await this.layers.getCapture(cap.id))!),
      layer: await this.layerInfo(out.layer),
      version: versionView(out.version),
      diff: diffView,
    };
  }

  /** `POST /agent/captures/:id/cancel`: nothing is recorded; a finished capture stays finished. */
  async cancelCapture(agent: AgentIdentity, id: string): Promise<CaptureInfo> {
    const cvdId = this.agentCvd(agent);
    const cap = await this.ownCapture(cvdId, id);
    if (cap.state === "finished")
      throw new StrataError("ALREADY_EXISTS", `capture ${cap.id} is finished (layer ${cap.layerId})`, {
        subject: cap.id,
      });
    if (
      cap.state === "open" &&
      (await this.layers.updateCapture(cap.id, ["open"], {
        state: "cancelled",
        finishedAt: this.d.clock.now(),
      }))
    )
      await this.d.audit.record({
        actor: `endpoint:${agent.endpointId}`,
        action: "capture.cancel",
        object: `cvd:${cvdId}`,
        detail: { capture: cap.id },
        remoteAddr: "agent",
      });
    return captureView((await this.layers.getCapture(cap.id))!);
  }

  // ---- assignment ------------------------------------------------------------------

  /** A layer reference of a request, checked: the layer exists, has the kind, has the version. */
  private async checkRef(ref: LayerRef, kind: LayerKind): Promise<Resolved & { ref: LayerRef }> {
    const layer = await this.resolveLayer(String(ref?.layer));
    if (layer.kind !== kind)
      throw new StrataError(
        "INVALID_ARGUMENT",
        `layer ${layer.name} is a ${layer.kind} layer, not ${kind === "app" ? "an" : "a"} ${kind} layer`,
        {
          subject: layer.name,
          hint: kind === "base" ? "give a base layer with --base" : "give app layers with --app",
        },
      );
    const version = await this.versionOf(layer, ref.version);
    return {
      kind,
      layer,
      version,
      ref: ref.version ? { layer: layer.id, version: ref.version } : { layer: layer.id },
    };
  }

  /** The OS release of the CVD's newest snapshot (what an assignment without a base runs on). */
  private async cvdOs(cvdId: string): Promise<OsRelease | null> {
    const newest = (await this.snapshotsOf(cvdId))[0];
    if (!newest)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no snapshot yet`, {
        subject: cvdId,
        hint: "assign a base layer too, or wait for the endpoint's first upload (its OS release is checked)",
      });
    return this.osOf(newest.tree);
  }

  async assign(c: Caller, req: AssignRequest): Promise<AssignmentInfo> {
    requirePermission(c, "layers.assign");
    return this.recordAssignment(c, req);
  }

  /** An assignment, checked (targets, kinds, OS releases) and recorded; the caller's permission is checked before. */
  private async recordAssignment(c: Caller, req: AssignRequest): Promise<AssignmentInfo> {
    const target = req?.target as { cvd?: string; collection?: string } | undefined;
    let to: { kind: "cvd" | "collection"; id: string };
    if (target?.cvd) to = { kind: "cvd", id: (await this.cvd(target.cvd)).id };
    else if (target?.collection && this.d.collections)
      to = { kind: "collection", id: (await this.d.collections.resolveCollection(target.collection)).id };
    else
      throw new StrataError("INVALID_ARGUMENT", "give the assignment's target: a CVD or a collection", {
        hint: "--cvd CVD or --collection NAME",
      });
    const base = req.base ? await this.checkRef(req.base, "base") : null;
    const apps: (Resolved & { ref: LayerRef })[] = [];
    for (const a of req.apps ?? []) {
      const r = await this.checkRef(a, "app");
      if (apps.some((x) => x.layer.id === r.layer.id))
        throw new StrataError("INVALID_ARGUMENT", `app layer ${r.layer.name} is named twice`, {
          subject: r.layer.name,
        });
      apps.push(r);
    }
    // Without a base the apps go on the release the CVD runs; a collection's
    // members may run different ones, so there the apps must agree among
    // themselves (each member's dry-run checks it against its own).
    const first = apps[0];
    const baseOs = base
      ? osOfVersion(base.version)
      : to.kind === "cvd"
        ? await this.cvdOs(to.id)
        : first
          ? osOfVersion(first.version)
          : null;
    const baseWhat = base
      ? `base layer ${base.layer.name}@${base.version.version}`
      : to.kind === "cvd"
        ? `CVD ${to.id}'s newest snapshot`
        : `app layer ${first?.layer.name}@${first?.version.version}`;
    for (const a of apps) {
      const os = osOfVersion(a.version);
      if (!sameOs(os, baseOs))
        throw new StrataError(
          "CONFLICT",
          `app layer ${a.layer.name}@${a.version.version} was captured on ${osText(os)}, but ${baseWhat} is ${osText(baseOs)}`,
          {
            subject: a.layer.name,
            hint: `capture ${a.layer.name} again on a reference machine running ${osText(baseOs)}`,
          },
        );
    }
    const rec: AssignmentRecord = {
      id: assignmentId(),
      targetKind: to.kind,
      targetId: to.id,
      base: base ? { layer: base.layer.id, version: req.base?.version ?? null } : null,
      apps: apps.map((a) => ({ layer: a.layer.id, version: a.ref.version ?? null })),
      assignedAt: this.d.clock.now(),
      assignedBy: `user:${c.user.name}`,
    };
    await this.layers.addAssignment(rec);
    await this.d.audit.by(c, "layer.assign", `${to.kind}:${to.id}`, {
      assignment: rec.id,
      base: rec.base,
      apps: rec.apps,
    });
    // A CVD's image is composed now, so `strata cvd layers` names it (a
    // collection's members' when they are next asked about).
    if (to.kind === "cvd") await this.imageFor(to.id);
    return assignmentView(rec);
  }

  async cvdLayers(c: Caller, cvdId: string): Promise<CvdLayersInfo> {
    requirePermission(c, "layers.read");
    await this.cvd(cvdId);
    const { effective, overridden } = await this.targeting.effectiveAssignment(cvdId);
    // The target follows the effective assignment (a collection's may have changed since).
    if (effective) await this.imageFor(cvdId).catch(() => {});
    const img = await this.layers.getCvdImage(cvdId);
    return {
      cvd: cvdId,
      effective: effective ? assignmentView(effective) : null,
      overridden: overridden.map(assignmentView),
      drivers: await this.targeting.driverFolders(cvdId),
      targetImage: img?.targetImage ?? null,
      appliedImage: img?.appliedImage ?? null,
      appliedAt: img?.appliedAt?.toISOString() ?? null,
    };
  }

  // ---- images ------------------------------------------------------------------------

  /** The layer versions the CVD's effective assignment and driver profiles name, in composition order. */
  private async resolveImageLayers(cvdId: string): Promise<Resolved[]> {
    const { effective } = await this.targeting.effectiveAssignment(cvdId);
    if (!effective)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no layers assigned`, {
        subject: cvdId,
        hint: `assign some: \`strata layer assign --base B --cvd ${cvdId}\``,
      });
    const out: Resolved[] = [];
    const add = async (kind: LayerKind, ref: string, version: number | null) => {
      const layer = await this.resolveLayer(ref);
      if (layer.kind !== kind)
        throw new StrataError(
          "INVALID_ARGUMENT",
          `layer ${layer.name} is a ${layer.kind} layer, not ${kind}`,
          {
            subject: layer.name,
          },
        );
      if (out.some((x) => x.layer.id === layer.id)) return;
      out.push({ kind, layer, version: await this.versionOf(layer, version) });
    };
    if (effective.base) await add("base", effective.base.layer, effective.base.version);
    for (const a of effective.apps) await add("app", a.layer, a.version);
    for (const p of await this.targeting.driverFolders(cvdId))
      for (const f of p.folders) await add("driver", f, null);
    return out;
  }

  /**
   * The CVD's image: its layer versions composed (base, then app layers in
   * assignment order, then driver folders), found again by its key when the
   * same versions were composed before. Records it as the CVD's target.
   */
  async imageFor(cvdId: string): Promise<ImageRecord> {
    const layers = await this.resolveImageLayers(cvdId);
    const list = layers.map((l) => [l.kind, l.layer.id, l.version.version] as [LayerKind, string, number]);
    const key = createHash("sha256").update(JSON.stringify(list)).digest("hex");
    let img = await this.layers.getImage(key);
    if (!img || !(await this.repo.catalog.getSnapshot(img.snapshot)))
      img = await this.compose(key, list, layers);
    await this.layers.setTargetImage(cvdId, img.snapshot, this.d.clock.now());
    return img;
  }

  /**
   * Compose layer versions: each app layer's `removed` paths are taken out of
   * what the layers before it composed, then its tree is laid over (later
   * wins path by path; a directory keeps the metadata of the first layer
   * that has it); driver folders last. Manifests merge alike: packages by
   * name and architecture (later wins, a layer's removed packages drop
   * earlier ones), account lines by name (first wins), triggers unioned,
   * `removed` unioned minus what the final tree holds.
   */
  private async compose(key: string, list: ImageRecord["layers"], layers: Resolved[]): Promise<ImageRecord> {
    return this.leased(async () => {
      let tree: TreeId | null = null;
      const packages = new Map<string, PackageStanza>();
      const removedPackages = new Set<string>();
      const accounts = emptyAccounts();
      const accountNames = {
        passwd: new Set<string>(),
        group: new Set<string>(),
        shadow: new Set<string>(),
        gshadow: new Set<string>(),
      };
      const triggers = new Set<Trigger>();
      const alternatives: LayerManifest["alternatives"][] = [];
      let initramfs: InitramfsTargets | null = null;
      let depmod: InitramfsTargets | null = null;
      const removed = new Set<string>();
      let os: OsRelease | null = null;
      for (const l of layers) {
        const m = manifestOf(await this.layers.getLayerManifest(l.layer.id, l.version.version));
        if (tree && m.removed.length) tree = await this.trees.remove(tree, m.removed);
        tree = tree ? await this.trees.overlay(tree, l.version.tree) : l.version.tree;
        for (const p of m.removed) removed.add(p);
        for (const sel of m.removedPackages) {
          removedPackages.add(sel);
          for (const [k, p] of packages) if (selectsPackage(sel, p)) packages.delete(k);
        }
        for (const p of m.packages) {
          packages.delete(packageKey(p));
          packages.set(packageKey(p), p);
        }
        for (const f of ACCOUNT_FILES)
          for (const line of m.accounts[f]) {
            const n = accountName(line);
            if (accountNames[f].has(n)) continue;
            accountNames[f].add(n);
            accounts[f].push(line);
          }
        for (const t of m.triggers) triggers.add(t);
        alternatives.push(m.alternatives);
        initramfs = mergeInitramfsTargets(initramfs, m.initramfs);
        depmod = mergeInitramfsTargets(depmod, m.depmod);
        if (l.kind === "base") os = m.os;
        else if (l.kind === "app" && !layers.some((x) => x.kind === "base")) os ??= m.os;
      }
      const root: TreeId = tree ?? (await this.repo.saveTree([]));
      const stillRemoved: string[] = [];
      for (const p of removed) if (!(await this.trees.lookup(root, p))) stillRemoved.push(p);
      const pkgs = [...packages.values()].sort((a, b) =>
        a.name < b.name ? -1 : a.name > b.name ? 1 : a.arch < b.arch ? -1 : 1,
      );
      const manifest: LayerManifest = {
        os,
        removed: stillRemoved,
        packages: pkgs,
        removedPackages: [...removedPackages].filter((s) => !pkgs.some((p) => selectsPackage(s, p))).sort(),
        accounts,
        triggers: TRIGGER_ORDER.filter((t) => triggers.has(t)),
        ...(alternatives.some((a) => a) ? { alternatives: composeAlternatives(alternatives) } : {}),
        ...(initramfs ? { initramfs } : {}),
        ...(depmod ? { depmod } : {}),
        stats: await this.trees.stats(root),
      };
      await this.repo.flush();
      const snap = await this.repo.saveSnapshot({
        time: this.d.clock.now(),
        hostname: "strata-server",
        paths: ["/"],
        tags: [imageTag(key)],
        tree: root,
        parent: null,
        kind: "image",
        stats: {
          ...emptySnapshotStats(),
          totalFiles: manifest.stats.files,
          totalBytes: manifest.stats.bytes,
        },
      });
      return this.layers.putImage({
        key,
        snapshot: snap.id,
        layers: list,
        manifest: storedManifest(manifest),
        createdAt: this.d.clock.now(),
      });
    });
  }

  /** Image snapshot → its tree and manifest (NOT_FOUND when gone). */
  private async image(
    snapshot: string,
  ): Promise<{ rec: ImageRecord; tree: TreeId; manifest: LayerManifest }> {
    const rec = await this.layers.getImageBySnapshot(snapshot as SnapshotId);
    const snap = rec ? await this.repo.catalog.getSnapshot(rec.snapshot) : null;
    if (!rec || !snap)
      throw new StrataError("NOT_FOUND", `image ${snapshot} does not exist`, {
        subject: snapshot,
        hint: "assign the layers again (`strata layer assign`) to compose it",
      });
    return { rec, tree: snap.tree, manifest: manifestOf(rec.manifest) };
  }

  /** The applied image's paths that `target` does not own, then the target's `removed`. */
  private async removals(cvdId: string, target: { rec: ImageRecord; tree: TreeId; manifest: LayerManifest }) {
    const applied = (await this.layers.getCvdImage(cvdId))?.appliedImage ?? null;
    const prev = applied ? await this.image(applied).catch(() => null) : null;
    const out =
      prev && prev.rec.key !== target.rec.key ? await this.trees.onlyIn(prev.tree, target.tree) : [];
    const seen = new Set(out);
    for (const p of target.manifest.removed) if (!seen.has(p)) out.push(p);
    return {
      removals: out,
      previousPackages: prev ? prev.manifest.packages.map(packageKey) : [],
    };
  }

  // ---- dry-run -------------------------------------------------------------------------

  /**
   * What applying the CVD's image would do, against its newest snapshot
   * (docs/design/layers.md, "Dry-run report"): files added, updated and
   * removed (first 100 of each), bytes to write, do-not-override paths,
   * packages, and the problems (package checks, account clashes, OS
   * releases). Disk space is the agent's to check.
   */
  /**
   * The image against a snapshot of the CVD, where their subtrees differ:
   * the files the apply adds, updates and (with enforce remove) deletes,
   * the bytes and number of files it stages, the `lib*.so.N` paths of both.
   */
  private async compareWithSnapshot(
    cvdId: string,
    img: { tree: TreeId },
    snap: SnapshotRecord,
    enforceRemove: boolean,
  ) {
    const { doNotOverride } = await this.rules();
    const { policy, homes } = await this.policyFor(cvdId, snap.tree);
    const dno = compileRules(doNotOverride, { homes, agentStateDir: AGENT_STATE_DIR }, "doNotOverride");
    // What no layer holds and enforce remove still leaves alone: identity, logs, caches, apt's state.
    const notLayers = compileRules(
      [...BASE_CAPTURE_RULES, ...CAPTURE_NOISE_RULES],
      { homes, agentStateDir: AGENT_STATE_DIR },
      "notLayers",
    );
    // The alternatives' generic links are update-alternatives' on the endpoint: the agent never deletes them.
    const links = enforceRemove
      ? alternativeLinks((await this.alternativesOf(snap.tree)).values())
      : new Set<string>();
    const added = new Sample(SAMPLE);
    const updated = new Sample(SAMPLE);
    const removed = new Sample(SAMPLE);
    const kept = new Sample(SAMPLE);
    let bytesToWrite = 0;
    let filesToWrite = 0;
    const liveLibs: string[] = [];
    const imageLibs: string[] = [];
    const isLib = (name: Buffer) => /^lib.*\.so\.\d/.test(name.toString("utf8"));
    await this.trees.compare(img.tree, snap.tree, {
      visit: (p, n, cur) => {
        if (n.type !== "dir" && isLib(n.name)) imageLibs.push(p);
        if (cur && cur.type !== "dir" && isLib(cur.name)) liveLibs.push(p);
        if (isStructuredPath(p) || policy.classify(p) !== "machine") return;
        if (dno.matches(p)) {
          if (!cur || !sameEntry(n, cur)) kept.add(p);
          return;
        }
        if (n.type === "dir") {
          if (!cur) added.add(p);
          return;
        }
        if (!cur) {
          added.add(p);
          if (n.type === "file") {
            bytesToWrite += n.size;
            filesToWrite++;
          }
        } else if (!sameEntry(n, cur)) {
          updated.add(p);
          if (n.type === "file" && !sameContent(n, cur)) {
            bytesToWrite += n.size;
            filesToWrite++;
          }
        }
      },
      skipBelow: (dir) => dno.coversBelow(dir),
      onlyCurrent: (p, cur) => {
        if (cur.type !== "dir" && isLib(cur.name)) liveLibs.push(p);
        // Enforce remove deletes the machine-area entries no layer owns (the engine's rule).
        if (
          enforceRemove &&
          !isStructuredPath(p) &&
          policy.classify(p) === "machine" &&
          !dno.matches(p) &&
          !notLayers.matches(p) &&
          !links.has(p)
        )
          removed.add(p);
      },
    });
    return { policy, dno, added, updated, removed, kept, bytesToWrite, filesToWrite, liveLibs, imageLibs };
  }

  /** The endpoint's root filesystem as its agent reported it last (facts `rootFs`); null: never. */
  private async rootFsOf(endpointId: string | null): Promise<RootFsFact | null> {
    if (!endpointId) return null;
    const f = (await this.store.getEndpoint(endpointId))?.facts?.rootFs as Partial<RootFsFact> | undefined;
    if (
      !f ||
      typeof f.path !== "string" ||
      typeof f.freeBytes !== "number" ||
      typeof f.totalBytes !== "number" ||
      typeof f.at !== "string"
    )
      return null;
    return {
      path: f.path,
      freeBytes: f.freeBytes,
      totalBytes: f.totalBytes,
      blockSize: typeof f.blockSize === "number" && f.blockSize > 0 ? f.blockSize : DEFAULT_BLOCK_SIZE,
      at: f.at,
    };
  }

  async dryRun(c: Caller, cvdId: string, q: DryRunQuery = {}): Promise<DryRunReport> {
    requirePermission(c, "layers.read");
    const enforceRemove = q.enforce === "remove";
    const cvd = await this.cvd(cvdId);
    const snap = (await this.snapshotsOf(cvdId))[0];
    if (!snap)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no snapshot yet`, {
        subject: cvdId,
        hint: "the dry-run compares the image with the CVD's newest snapshot: wait for its first upload",
      });
    const imgRec = await this.imageFor(cvdId);
    const img = await this.image(imgRec.snapshot);
    const w = await this.compareWithSnapshot(cvdId, img, snap, enforceRemove);
    const { policy, dno, added, updated, removed, kept, bytesToWrite, filesToWrite, liveLibs, imageLibs } = w;
    const { removals, previousPackages } = await this.removals(cvdId, img);
    const removalTriggers = triggersFor(removals);
    for (const p of removals) {
      if (isStructuredPath(p) || dno.matches(p) || policy.classify(p) !== "machine") continue;
      if (await this.trees.lookup(snap.tree, p)) removed.add(p);
    }
    const live = parseStatus((await this.readText(snap.tree, STATUS_PATH)) ?? "");
    const pk = dryRunPackages({
      live,
      image: img.manifest.packages,
      previous: previousPackages,
      removedPackages: img.manifest.removedPackages,
      enforceRemove,
      liveLibs,
      imageLibs,
    });
    const problems: DryRunProblem[] = [
      ...(pk.problems as DryRunProblem[]),
      ...(accountProblems(
        mergeAccounts(await this.accountsOf(snap.tree), img.manifest.accounts).clashes,
      ) as DryRunProblem[]),
      ...(await this.osProblems(img.rec, snap)),
      ...(enforceRemove && !hasBase(img.rec) ? [enforceWithoutBase(cvdId)] : []),
    ];
    // Disk space against what the endpoint's agent reported last (its facts).
    const fs = await this.rootFsOf(cvd.endpointId);
    let disk: DryRunReport["disk"] = null;
    if (fs) {
      const need = { bytesToWrite, filesToWrite, blockSize: fs.blockSize };
      disk = {
        path: fs.path,
        freeBytes: fs.freeBytes,
        totalBytes: fs.totalBytes,
        neededBytes: diskSpaceNeeded(need),
        reportedAt: fs.at,
      };
      const p = diskSpaceProblem({ ...need, freeBytes: fs.freeBytes, path: fs.path });
      if (p) problems.push({ ...p, message: `${p.message} (as the endpoint reported at ${fs.at})` });
    }
    return {
      image: img.rec.snapshot,
      files: {
        added: added.count,
        updated: updated.count,
        removed: removed.count,
        samples: { added: added.items, updated: updated.items, removed: removed.items },
      },
      packages: {
        added: pk.added,
        updated: pk.updated,
        removed: pk.removed,
        userInstalled: pk.userInstalled,
      },
      doNotOverride: kept.items,
      // The agent runs the image's triggers and those its removals need (a library gone: ldconfig).
      triggers: applyTriggers(img.manifest.triggers, removalTriggers),
      bytesToWrite,
      filesToWrite,
      disk,
      problems,
      blocked: problems.some((p) => p.blocking),
    };
  }

  /** App layers captured on another release than the base (or, without a base, than the CVD's snapshot). */
  private async osProblems(img: ImageRecord, snap: SnapshotRecord): Promise<DryRunProblem[]> {
    const versions: Resolved[] = [];
    for (const [kind, layerId, version] of img.layers) {
      const layer = await this.layers.getLayer(layerId);
      const v = layer ? await this.layers.getLayerVersion(layerId, version) : null;
      if (layer && v) versions.push({ kind, layer, version: v });
    }
    const base = versions.find((v) => v.kind === "base");
    const baseOs = base ? osOfVersion(base.version) : await this.osOf(snap.tree);
    const what = base ? `base layer ${base.layer.name}@${base.version.version}` : "the endpoint";
    return versions
      .filter((v) => v.kind === "app" && !sameOs(osOfVersion(v.version), baseOs))
      .map((v) => ({
        kind: "os-mismatch" as const,
        blocking: true,
        subject: v.layer.name,
        message: `app layer ${v.layer.name}@${v.version.version} was captured on ${osText(osOfVersion(v.version))}, but ${what} is ${osText(baseOs)}; capture it again on ${osText(baseOs)}`,
      }));
  }

  // ---- apply -------------------------------------------------------------------------

  /** `strata cvd apply`: compose the CVD's image and queue an `apply` task for its endpoint. */
  async apply(c: Caller, cvdId: string, req: ApplyRequest): Promise<Task> {
    requirePermission(c, "layers.assign");
    await this.cvd(cvdId);
    if (req?.reinstallUserPackages === true && req.migrate !== true)
      throw new StrataError(
        "INVALID_ARGUMENT",
        `reinstalling user-installed packages is part of an OS migration; CVD ${cvdId} is not being migrated`,
        { subject: cvdId, hint: "use `strata cvd migrate CVD --base LAYER --reinstall-user-packages`" },
      );
    if (req?.reinstallUserPackages === true && req.atRestart === true)
      throw new StrataError(
        "INVALID_ARGUMENT",
        "user-installed packages cannot be reinstalled in a migration at restart: apt needs the new system in place, which is only at the agent's next start",
        {
          subject: cvdId,
          hint: "migrate without --at-restart, or without --reinstall-user-packages and reinstall them afterwards",
        },
      );
    const img = await this.imageFor(cvdId);
    if (req?.enforce === "remove" && !hasBase(img)) {
      const p = enforceWithoutBase(cvdId);
      throw new StrataError("CONFLICT", p.message, { subject: cvdId, hint: "assign a base layer first" });
    }
    const applied = (await this.layers.getCvdImage(cvdId))?.appliedImage ?? null;
    // A migration replaces the OS the machine's applied base owns: without
    // one, nothing of the old release would be removable and it would stay.
    if (req?.migrate === true) {
      const prev = applied ? await this.image(applied).catch(() => null) : null;
      if (!prev || !hasBase(prev.rec))
        throw new StrataError(
          "CONFLICT",
          `CVD ${cvdId} runs no base layer applied by Strata: a migration would leave its old release's files behind`,
          {
            subject: cvdId,
            hint: "capture the release it runs as a base layer, assign and apply it (`strata cvd apply`), then migrate",
          },
        );
    }
    return this.d.tasks.queueApply(c, cvdId, {
      image: img.snapshot,
      imageKey: img.key,
      enforce: req?.enforce ?? "none",
      atRestart: req?.atRestart === true,
      migrate: req?.migrate === true,
      previousImage: applied,
      ...(req?.reinstallUserPackages === true ? { reinstallUserPackages: true } : {}),
    });
  }

  /** The CVD's newest apply task that ended done with a safety snapshot (null: none). */
  private async lastApply(cvdId: string, migrateOnly: boolean): Promise<TaskRecord | null> {
    for (const t of await this.d.tasks.doneTasks(cvdId)) {
      if (t.kind !== "apply" || typeof t.result?.safetySnapshot !== "string") continue;
      if (migrateOnly && t.params.migrate !== true) continue;
      return t;
    }
    return null;
  }

  /**
   * `strata cvd rollback`: undo the CVD's last layer apply (an OS migration
   * above all): a system-only revert to the apply's safety snapshot (the
   * user area is not touched), the image applied before it recorded as
   * applied again when the revert is done, and the assignment that image
   * was composed from assigned again (pinned versions), so the next apply
   * does not redo what was rolled back.
   */
  async rollback(c: Caller, cvdId: string): Promise<Task> {
    // A restore (restore.run); giving back the assignment the old image came from is part of it.
    requirePermission(c, "restore.run");
    await this.cvd(cvdId);
    const last = await this.lastApply(cvdId, false);
    if (!last)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no finished layer apply to roll back`, {
        subject: cvdId,
        hint: "see its tasks with `strata task list --cvd CVD`",
      });
    if (typeof last.result?.confirmedAt === "string")
      throw new StrataError(
        "CONFLICT",
        `the migration of task ${last.id} was confirmed: its old system is gone`,
        {
          subject: last.id,
          hint: "revert to an older snapshot with `strata cvd revert CVD --snapshot ID` instead",
        },
      );
    const previous = typeof last.params.previousImage === "string" ? last.params.previousImage : null;
    const task = await this.d.tasks.revert(
      c,
      cvdId,
      { snapshot: String(last.result!.safetySnapshot) },
      { rollbackOf: last.id, restoreImage: previous },
    );
    if (previous) {
      const img = await this.image(previous).catch(() => null);
      if (img) {
        const ref = (kind: LayerKind) =>
          img.rec.layers.filter(([k]) => k === kind).map(([, layer, version]) => ({ layer, version }));
        await this.recordAssignment(c, {
          target: { cvd: cvdId },
          base: ref("base")[0] ?? null,
          apps: ref("app"),
        });
      }
    }
    await this.d.audit.by(c, "layer.rollback", `cvd:${cvdId}`, { task: task.id, of: last.id });
    return task;
  }

  /**
   * `strata cvd migrate --confirm`: the CVD's last migration stays; its
   * safety snapshot is no longer held for a rollback (retention treats it
   * as any safety snapshot).
   */
  async confirmMigration(c: Caller, cvdId: string): Promise<Task> {
    requirePermission(c, "layers.assign");
    await this.cvd(cvdId);
    const last = await this.lastApply(cvdId, true);
    if (!last)
      throw new StrataError("NOT_FOUND", `CVD ${cvdId} has no finished migration to confirm`, {
        subject: cvdId,
        hint: "migrate it first with `strata cvd migrate CVD --base LAYER`",
      });
    const at = this.d.clock.now().toISOString();
    if (typeof last.result?.confirmedAt !== "string")
      await this.d.tasks.annotateDone(last.id, { confirmedAt: at });
    await this.d.audit.by(c, "layer.migration_confirm", `cvd:${cvdId}`, { task: last.id });
    return this.d.tasks.get(c, last.id);
  }

  /**
   * `POST /agent/tasks/:id/apply-plan`: for the endpoint's own running
   * apply task, a restore session on the task's image, the merged
   * manifest, the removal set, the applied image's packages and the
   * do-not-override rules.
   */
  async applyPlan(agent: AgentIdentity, taskId: string): Promise<ApplyPlan> {
    const cvdId = this.agentCvd(agent);
    const t = await this.d.tasks.agentTask(agent, taskId);
    if (t.kind !== "apply")
      throw new StrataError("INVALID_ARGUMENT", `task ${t.id} is a ${t.kind} task, not an apply`, {
        subject: t.id,
      });
    if (t.state !== "running")
      throw new StrataError("INVALID_ARGUMENT", `task ${t.id} is ${t.state}`, {
        subject: t.id,
        hint: t.state === "queued" ? "claim it first (POST /agent/tasks/{id}/start)" : "it has ended",
      });
    const img = await this.image(String(t.params.image));
    const session = await this.d.restores.open({ endpointId: agent.endpointId, cvdId }, cvdId, {
      image: true,
      snapshot: img.rec.snapshot,
    });
    const { removals, previousPackages } = await this.removals(cvdId, img);
    const wire = splitBytePaths(removals);
    const { doNotOverride } = await this.rules();
    const enforce = t.params.enforce;
    // What the apply stages, against the newest snapshot (the agent checks its free space).
    const snap = (await this.snapshotsOf(cvdId))[0];
    const est = snap ? await this.compareWithSnapshot(cvdId, img, snap, false) : null;
    return {
      task: t.id,
      image: { id: img.rec.key, snapshot: img.rec.snapshot },
      session,
      manifest: storedManifest(img.manifest) as unknown as LayerManifest,
      removals: wire.utf8,
      ...(wire.b64.length ? { removalsB64: wire.b64 } : {}),
      previousPackages,
      doNotOverride: doNotOverride.map((r) => ({ ...r })),
      enforce: enforce === "keep" || enforce === "remove" ? enforce : "none",
      atRestart: t.params.atRestart === true,
      hasBase: hasBase(img.rec),
      ...(est ? { bytesToWrite: est.bytesToWrite, filesToWrite: est.filesToWrite } : {}),
      ...(t.params.reinstallUserPackages === true ? { reinstallUserPackages: true } : {}),
    };
  }
}

let assignmentSeq = 0;
/**
 * `asg_` + time + a per-process counter + randomness: ids sort in creation
 * order, so of two assignments made in the same millisecond the later one
 * wins (assignmentsFor orders by time, then id).
 */
function assignmentId(): string {
  const t = Date.now().toString(36).padStart(9, "0");
  const n = (assignmentSeq++ % 36 ** 4).toString(36).padStart(4, "0");
  return `asg_${t}${n}${randomBytes(6).toString("hex")}`;
}

/** The directories holding structured files: a filter must read them to drop those files. */
const STRUCTURED_DIRS = new Set(["/etc", "/var", "/var/lib", "/var/lib/dpkg"]);

/** Whether an image composes a base layer. */
function hasBase(img: ImageRecord): boolean {
  return img.layers.some(([kind]) => kind === "base");
}

/** Enforce remove deletes what no layer owns: without a base that is the whole OS. */
function enforceWithoutBase(cvdId: string): DryRunProblem {
  return {
    kind: "os-mismatch",
    blocking: true,
    subject: cvdId,
    message: `enforce remove on CVD ${cvdId} needs a base layer: without one it would delete the operating system`,
  };
}

function osOfVersion(v: LayerVersionRecord): OsRelease | null {
  return v.osId === null ? null : { id: v.osId, versionId: v.osVersion ?? "" };
}

/** Same type, content and metadata (hard-link identity aside); directories by type only. */
function sameEntry(a: FsNode, b: FsNode): boolean {
  if (a.type === "dir" || b.type === "dir") return a.type === b.type;
  return sameNode(a, b);
}

function sameContent(a: FsNode, b: FsNode): boolean {
  const x = a.content ?? [];
  const y = b.content ?? [];
  return (
    x.length === y.length &&
    x.every((p, i) => {
      const q = y[i]!;
      return "id" in p ? "id" in q && p.id === q.id : "hole" in q && p.hole === q.hole;
    })
  );
}

/**
 * The layer images an endpoint may open a restore session on (restore
 * service, `{ image: true }`): its CVD's target image, then those of its
 * queued and running apply tasks.
 */
export function cvdImages(store: ServerStore): (cvdId: string) => Promise<string[]> {
  return async (cvdId) => {
    const out: string[] = [];
    const target = (await store.layers.getCvdImage(cvdId))?.targetImage;
    if (target) out.push(target);
    for (const t of await store.tasks.listTasks({ cvdId, states: ["queued", "running"], limit: 16 }))
      if (t.kind === "apply" && typeof t.params.image === "string") out.push(t.params.image);
    return out;
  };
}
