import {
  API_PREFIX,
  type ApiToken,
  type AuditEntry,
  type AuditQuery,
  type CreatedToken,
  type LoginRequest,
  type LoginResponse,
  type PermissionInfo,
  type Role,
  type SystemInfo,
  type User,
  type WhoAmI,
} from "./api.js";
import type {
  ApproveByRulesRequest,
  ApproveByRulesResult,
  AutoassignRuleInfo,
  AutoassignTestRequest,
  AutoassignTestResult,
  CreateAutoassignRuleRequest,
  UpdateAutoassignRuleRequest,
} from "./autoassign.js";
import { ApiError, type ApiErrorBody } from "./errors.js";
import type {
  AgentSelf,
  ApproveEndpointRequest,
  CreatedEnrollmentToken,
  CreateEnrollmentTokenRequest,
  Cvd,
  CvdSnapshotSummary,
  Endpoint,
  EndpointDetail,
  EndpointFacts,
  EndpointState,
  EnrollmentToken,
  EnrollResponse,
  PolicyDetail,
  PolicySummary,
} from "./fleet.js";
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
  CollectionInfo,
  CvdLayersInfo,
  DriverProfileInfo,
  DryRunQuery,
  DryRunReport,
  LayerInfo,
  LayerRules,
  ReferenceInfo,
} from "./layers.js";
import type {
  BrowseQuery,
  CvdBrowse,
  CvdHistory,
  HistoryQuery,
  OpenRestoreRequest,
  RecoverRequest,
  RestoreSessionInfo,
  RevertRequest,
  Task,
  TaskFinishRequest,
  TaskProgressAnswer,
  TaskQuery,
} from "./restore.js";
import type {
  CreateCollectionRequest,
  CreateDriverProfileRequest,
  CvdTagsInfo,
  CvdTagsRequest,
  LayerRulesInfo,
  UpdateDriverProfileRequest,
} from "./targeting.js";

const enc = encodeURIComponent;
/** `?a=1&b=x` from the defined members of `q` ("" when none). */
function queryString(q: object): string {
  const qs = Object.entries(q)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${enc(k)}=${enc(String(v))}`)
    .join("&");
  return qs ? `?${qs}` : "";
}

/** The subset of `fetch` the client needs; the CLI passes one bound to a certificate-pinning agent. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string },
) => Promise<{ status: number; text(): Promise<string> }>;

export interface ClientOptions {
  /** https://host:port — no path. */
  baseUrl: string;
  token?: string;
  fetch?: FetchLike;
  /** Sent with every request (agents: `Strata-Protocol`). */
  headers?: Record<string, string>;
}

/**
 * A typed client for the management API. One method per route; errors come
 * back as ApiError with the server's code, message and hint.
 */
export class StrataClient {
  readonly baseUrl: string;
  private token: string | undefined;
  private readonly doFetch: FetchLike;
  private readonly headers: Record<string, string>;

  constructor(opts: ClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.token = opts.token;
    this.doFetch = opts.fetch ?? ((url, init) => fetch(url, init));
    this.headers = { ...opts.headers };
  }

  withToken(token: string): StrataClient {
    return new StrataClient({ baseUrl: this.baseUrl, token, fetch: this.doFetch, headers: this.headers });
  }

  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    extra: Record<string, string> = {},
  ): Promise<T> {
    const text = await this.requestText(method, path, body, extra);
    try {
      return (text === "" ? undefined : JSON.parse(text)) as T;
    } catch {
      return undefined as T;
    }
  }

  /** The response body as text (errors still come back as ApiError). */
  async requestText(
    method: string,
    path: string,
    body?: unknown,
    extra: Record<string, string> = {},
  ): Promise<string> {
    const headers: Record<string, string> = { accept: "application/json", ...this.headers, ...extra };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const init: { method: string; headers: Record<string, string>; body?: string } = { method, headers };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await this.doFetch(this.baseUrl + path, init);
    const text = await res.text();
    if (res.status >= 400) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      const err = (parsed as { error?: ApiErrorBody } | undefined)?.error;
      throw new ApiError(
        res.status,
        err && typeof err.code === "string"
          ? err
          : { code: "INTERNAL", message: `HTTP ${res.status} from ${this.baseUrl}: ${text.slice(0, 200)}` },
      );
    }
    return text;
  }

  // auth
  login(req: LoginRequest): Promise<LoginResponse> {
    return this.request("POST", `${API_PREFIX}/auth/login`, req);
  }
  logout(): Promise<void> {
    return this.request("POST", `${API_PREFIX}/auth/logout`);
  }
  whoami(): Promise<WhoAmI> {
    return this.request("GET", `${API_PREFIX}/auth/whoami`);
  }
  changePassword(currentPassword: string, newPassword: string): Promise<void> {
    return this.request("POST", `${API_PREFIX}/auth/password`, { currentPassword, newPassword });
  }
  // API tokens of the caller
  listTokens(): Promise<ApiToken[]> {
    return this.request("GET", `${API_PREFIX}/tokens`);
  }
  createToken(name: string, expiresInDays?: number): Promise<CreatedToken> {
    return this.request("POST", `${API_PREFIX}/tokens`, {
      name,
      ...(expiresInDays ? { expiresInDays } : {}),
    });
  }
  revokeToken(id: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/tokens/${encodeURIComponent(id)}`);
  }
  // users
  listUsers(): Promise<User[]> {
    return this.request("GET", `${API_PREFIX}/users`);
  }
  getUser(name: string): Promise<User> {
    return this.request("GET", `${API_PREFIX}/users/${encodeURIComponent(name)}`);
  }
  createUser(req: {
    name: string;
    role: string;
    password: string;
    mustChangePassword?: boolean;
  }): Promise<User> {
    return this.request("POST", `${API_PREFIX}/users`, req);
  }
  updateUser(name: string, patch: { role?: string; disabled?: boolean }): Promise<User> {
    return this.request("PATCH", `${API_PREFIX}/users/${encodeURIComponent(name)}`, patch);
  }
  resetPassword(name: string, password: string, mustChangePassword = true): Promise<User> {
    return this.request("POST", `${API_PREFIX}/users/${encodeURIComponent(name)}/password`, {
      password,
      mustChangePassword,
    });
  }
  // roles
  listRoles(): Promise<Role[]> {
    return this.request("GET", `${API_PREFIX}/roles`);
  }
  getRole(name: string): Promise<Role> {
    return this.request("GET", `${API_PREFIX}/roles/${encodeURIComponent(name)}`);
  }
  createRole(name: string, permissions: string[]): Promise<Role> {
    return this.request("POST", `${API_PREFIX}/roles`, { name, permissions });
  }
  updateRole(name: string, permissions: string[]): Promise<Role> {
    return this.request("PUT", `${API_PREFIX}/roles/${encodeURIComponent(name)}`, { permissions });
  }
  deleteRole(name: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/roles/${encodeURIComponent(name)}`);
  }
  listPermissions(): Promise<PermissionInfo[]> {
    return this.request("GET", `${API_PREFIX}/permissions`);
  }
  // audit
  audit(q: AuditQuery = {}): Promise<AuditEntry[]> {
    const qs = Object.entries(q)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join("&");
    return this.request("GET", `${API_PREFIX}/audit${qs ? `?${qs}` : ""}`);
  }
  // system
  system(): Promise<SystemInfo> {
    return this.request("GET", `${API_PREFIX}/system`);
  }
  // agent (enrollment token or endpoint credential as the token)
  enroll(facts: EndpointFacts, idempotencyKey: string): Promise<EnrollResponse> {
    return this.request("POST", `${API_PREFIX}/enroll`, { facts }, { "idempotency-key": idempotencyKey });
  }
  agentSelf(): Promise<AgentSelf> {
    return this.request("GET", `${API_PREFIX}/agent/self`);
  }
  /** The endpoint's facts as they are now (an active endpoint's credential). */
  reportFacts(facts: EndpointFacts): Promise<void> {
    return this.request("PUT", `${API_PREFIX}/agent/facts`, { facts });
  }
  // enrollment tokens
  createEnrollmentToken(req: CreateEnrollmentTokenRequest): Promise<CreatedEnrollmentToken> {
    return this.request("POST", `${API_PREFIX}/enrollment-tokens`, req);
  }
  listEnrollmentTokens(): Promise<EnrollmentToken[]> {
    return this.request("GET", `${API_PREFIX}/enrollment-tokens`);
  }
  revokeEnrollmentToken(id: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/enrollment-tokens/${encodeURIComponent(id)}`);
  }
  // endpoints
  listEndpoints(state?: EndpointState): Promise<Endpoint[]> {
    return this.request("GET", `${API_PREFIX}/endpoints${state ? `?state=${state}` : ""}`);
  }
  getEndpoint(id: string): Promise<EndpointDetail> {
    return this.request("GET", `${API_PREFIX}/endpoints/${encodeURIComponent(id)}`);
  }
  approveEndpoint(id: string, req: ApproveEndpointRequest = {}): Promise<EndpointDetail> {
    return this.request("POST", `${API_PREFIX}/endpoints/${encodeURIComponent(id)}/approve`, req);
  }
  disableEndpoint(id: string): Promise<EndpointDetail> {
    return this.request("POST", `${API_PREFIX}/endpoints/${encodeURIComponent(id)}/disable`);
  }
  /** Ask the endpoint's agent to upload now (it learns of it at its next agent/self, within a minute). */
  syncEndpoint(id: string): Promise<EndpointDetail> {
    return this.request("POST", `${API_PREFIX}/endpoints/${encodeURIComponent(id)}/sync`);
  }
  /** Snooze the endpoint's uploads for `minutes` (at most 24 h). */
  snoozeEndpoint(id: string, minutes: number): Promise<EndpointDetail> {
    return this.request("POST", `${API_PREFIX}/endpoints/${encodeURIComponent(id)}/snooze`, { minutes });
  }
  /** End the administrator's snooze. */
  resumeEndpoint(id: string): Promise<EndpointDetail> {
    return this.request("DELETE", `${API_PREFIX}/endpoints/${encodeURIComponent(id)}/snooze`);
  }
  /** Give pending endpoints the CVD of the first auto-assignment rule they match. */
  approveByRules(req: ApproveByRulesRequest = {}): Promise<ApproveByRulesResult> {
    return this.request("POST", `${API_PREFIX}/endpoints/approve-by-rules`, req);
  }
  // auto-assignment rules (by id or name)
  listAutoassignRules(): Promise<AutoassignRuleInfo[]> {
    return this.request("GET", `${API_PREFIX}/autoassign-rules`);
  }
  getAutoassignRule(ref: string): Promise<AutoassignRuleInfo> {
    return this.request("GET", `${API_PREFIX}/autoassign-rules/${encodeURIComponent(ref)}`);
  }
  createAutoassignRule(req: CreateAutoassignRuleRequest): Promise<AutoassignRuleInfo> {
    return this.request("POST", `${API_PREFIX}/autoassign-rules`, req);
  }
  updateAutoassignRule(ref: string, patch: UpdateAutoassignRuleRequest): Promise<AutoassignRuleInfo> {
    return this.request("PATCH", `${API_PREFIX}/autoassign-rules/${encodeURIComponent(ref)}`, patch);
  }
  deleteAutoassignRule(ref: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/autoassign-rules/${encodeURIComponent(ref)}`);
  }
  testAutoassignRules(req: AutoassignTestRequest): Promise<AutoassignTestResult> {
    return this.request("POST", `${API_PREFIX}/autoassign-rules/test`, req);
  }
  // CVDs
  listCvds(): Promise<Cvd[]> {
    return this.request("GET", `${API_PREFIX}/cvds`);
  }
  getCvd(id: string): Promise<Cvd> {
    return this.request("GET", `${API_PREFIX}/cvds/${encodeURIComponent(id)}`);
  }
  cvdSnapshots(id: string): Promise<CvdSnapshotSummary[]> {
    return this.request("GET", `${API_PREFIX}/cvds/${encodeURIComponent(id)}/snapshots`);
  }
  setCvdPolicy(id: string, policy: string): Promise<Cvd> {
    return this.request("PUT", `${API_PREFIX}/cvds/${encodeURIComponent(id)}/policy`, { policy });
  }
  /** Upload and restore transactions of a CVD, newest first. */
  cvdTransactions<T = Record<string, unknown>>(id: string): Promise<T[]> {
    return this.request("GET", `${API_PREFIX}/cvds/${enc(id)}/transactions`);
  }
  /** For the folder `path`, each entry across the CVD's snapshots (newest first, paged). */
  cvdBrowse(id: string, q: BrowseQuery): Promise<CvdBrowse> {
    return this.request("GET", `${API_PREFIX}/cvds/${enc(id)}/browse${queryString(q)}`);
  }
  cvdHistory(id: string, q: HistoryQuery): Promise<CvdHistory> {
    return this.request("GET", `${API_PREFIX}/cvds/${enc(id)}/history${queryString(q)}`);
  }
  // restore sessions (an endpoint for its own CVD, or a user with restore.run)
  openRestore(cvd: string, req: OpenRestoreRequest = {}): Promise<RestoreSessionInfo> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/restores`, req);
  }
  closeRestore(session: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/restores/${enc(session)}`);
  }
  // restore tasks
  revertCvd(cvd: string, req: RevertRequest = {}): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/revert`, req);
  }
  recoverCvd(cvd: string, req: RecoverRequest): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/recover`, req);
  }
  listTasks(q: TaskQuery = {}): Promise<Task[]> {
    return this.request("GET", `${API_PREFIX}/tasks${queryString(q)}`);
  }
  getTask(id: string): Promise<Task> {
    return this.request("GET", `${API_PREFIX}/tasks/${enc(id)}`);
  }
  cancelTask(id: string): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/tasks/${enc(id)}/cancel`);
  }
  // the agent's side of tasks (endpoint credential)
  startAgentTask(id: string): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/agent/tasks/${enc(id)}/start`);
  }
  reportTaskProgress(id: string, progress: Record<string, unknown>): Promise<TaskProgressAnswer> {
    return this.request("POST", `${API_PREFIX}/agent/tasks/${enc(id)}/progress`, { progress });
  }
  finishAgentTask(id: string, req: TaskFinishRequest): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/agent/tasks/${enc(id)}/finish`, req);
  }
  // layers (docs/design/layers.md)
  listLayers(): Promise<LayerInfo[]> {
    return this.request("GET", `${API_PREFIX}/layers`);
  }
  /** A layer by id (`lay_…`) or name, with its versions. */
  getLayer(idOrName: string): Promise<LayerInfo> {
    return this.request("GET", `${API_PREFIX}/layers/${enc(idOrName)}`);
  }
  captureBase(req: CaptureBaseRequest): Promise<CaptureBaseResponse> {
    return this.request("POST", `${API_PREFIX}/layers/capture-base`, req);
  }
  /** Mark (on) or unmark a CVD as a reference CVD (layers are captured only from those). */
  setReference(cvd: string, on: boolean): Promise<ReferenceInfo> {
    return this.request(on ? "PUT" : "DELETE", `${API_PREFIX}/cvds/${enc(cvd)}/reference`);
  }
  assignLayers(req: AssignRequest): Promise<AssignmentInfo> {
    return this.request("POST", `${API_PREFIX}/assignments`, req);
  }
  cvdLayers(cvd: string): Promise<CvdLayersInfo> {
    return this.request("GET", `${API_PREFIX}/cvds/${enc(cvd)}/layers`);
  }
  /** What applying the CVD's image would do, against its newest snapshot. */
  dryRun(cvd: string, q: DryRunQuery = {}): Promise<DryRunReport> {
    return this.request("GET", `${API_PREFIX}/cvds/${enc(cvd)}/dry-run${queryString(q)}`);
  }
  /** Undo the CVD's last layer apply: a system revert to its safety snapshot (a task). */
  rollbackLayers(cvd: string): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/rollback`);
  }
  /** Confirm the CVD's last OS migration (its old system is no longer kept). */
  confirmMigration(cvd: string): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/migration/confirm`);
  }
  /** Queue an `apply` task for the CVD's endpoint. */
  applyLayers(cvd: string, req: ApplyRequest = {}): Promise<Task> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/apply`, req);
  }
  // the agent's side of layers (endpoint credential)
  /** Open an app capture on the caller's (reference) CVD with its capture-pre snapshot. */
  startCapture(req: CaptureStartRequest): Promise<CaptureInfo> {
    return this.request("POST", `${API_PREFIX}/agent/captures`, req);
  }
  /** Finish a capture with the capture-post snapshot: the server diffs and records the layer version. */
  finishCapture(id: string, req: CaptureFinishRequest): Promise<CaptureFinishResponse> {
    return this.request("POST", `${API_PREFIX}/agent/captures/${enc(id)}/finish`, req);
  }
  /** Cancel an open capture of this endpoint (nothing is recorded; idempotent). */
  cancelCapture(id: string): Promise<CaptureInfo> {
    return this.request("POST", `${API_PREFIX}/agent/captures/${enc(id)}/cancel`);
  }
  /** The plan of a running apply task of this endpoint (opens a restore session on the image). */
  applyPlan(taskId: string): Promise<ApplyPlan> {
    return this.request("POST", `${API_PREFIX}/agent/tasks/${enc(taskId)}/apply-plan`);
  }
  // upload policies (by id or name)
  listPolicies(): Promise<PolicySummary[]> {
    return this.request("GET", `${API_PREFIX}/policies`);
  }
  getPolicy(ref: string): Promise<PolicyDetail> {
    return this.request("GET", `${API_PREFIX}/policies/${encodeURIComponent(ref)}`);
  }
  createPolicy(policy: unknown): Promise<PolicyDetail> {
    return this.request("POST", `${API_PREFIX}/policies`, policy);
  }
  updatePolicy(ref: string, policy: unknown): Promise<PolicyDetail> {
    return this.request("PUT", `${API_PREFIX}/policies/${encodeURIComponent(ref)}`, policy);
  }
  deletePolicy(ref: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/policies/${encodeURIComponent(ref)}`);
  }
  /** The export document, as the server wrote it. */
  exportPolicy(ref: string): Promise<string> {
    return this.requestText("GET", `${API_PREFIX}/policies/${encodeURIComponent(ref)}/export`);
  }
  importPolicy(document: unknown, name?: string): Promise<PolicyDetail> {
    const q = name ? `?name=${encodeURIComponent(name)}` : "";
    return this.request("POST", `${API_PREFIX}/policies/import${q}`, document);
  }
  // collections (by id or name)
  createCollection(req: CreateCollectionRequest): Promise<CollectionInfo> {
    return this.request("POST", `${API_PREFIX}/collections`, req);
  }
  listCollections(): Promise<CollectionInfo[]> {
    return this.request("GET", `${API_PREFIX}/collections`);
  }
  getCollection(ref: string): Promise<CollectionInfo> {
    return this.request("GET", `${API_PREFIX}/collections/${enc(ref)}`);
  }
  /** Add CVDs to a static collection (one already a member is left as it is). */
  addToCollection(ref: string, cvds: string[]): Promise<CollectionInfo> {
    return this.request("POST", `${API_PREFIX}/collections/${enc(ref)}/members`, { cvds });
  }
  /** Remove one CVD from a static collection. */
  removeFromCollection(ref: string, cvd: string): Promise<CollectionInfo> {
    return this.request("DELETE", `${API_PREFIX}/collections/${enc(ref)}/members/${enc(cvd)}`);
  }
  /** Delete a collection and the assignments made to it. */
  deleteCollection(ref: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/collections/${enc(ref)}`);
  }
  // driver profiles (by id or name)
  createDriverProfile(req: CreateDriverProfileRequest): Promise<DriverProfileInfo> {
    return this.request("POST", `${API_PREFIX}/driver-profiles`, req);
  }
  listDriverProfiles(): Promise<DriverProfileInfo[]> {
    return this.request("GET", `${API_PREFIX}/driver-profiles`);
  }
  getDriverProfile(ref: string): Promise<DriverProfileInfo> {
    return this.request("GET", `${API_PREFIX}/driver-profiles/${enc(ref)}`);
  }
  updateDriverProfile(ref: string, patch: UpdateDriverProfileRequest): Promise<DriverProfileInfo> {
    return this.request("PATCH", `${API_PREFIX}/driver-profiles/${enc(ref)}`, patch);
  }
  deleteDriverProfile(ref: string): Promise<void> {
    return this.request("DELETE", `${API_PREFIX}/driver-profiles/${enc(ref)}`);
  }
  // layer rules (do-not-override, base capture)
  getLayerRules(): Promise<LayerRulesInfo> {
    return this.request("GET", `${API_PREFIX}/layer-rules`);
  }
  setLayerRules(rules: LayerRules): Promise<LayerRulesInfo> {
    return this.request("PUT", `${API_PREFIX}/layer-rules`, rules);
  }
  // CVD tags (collection rules match them)
  tagCvd(cvd: string, req: CvdTagsRequest): Promise<CvdTagsInfo> {
    return this.request("POST", `${API_PREFIX}/cvds/${enc(cvd)}/tags`, req);
  }
}
