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
import { ApiError, type ApiErrorBody } from "./errors.js";

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
}

/**
 * A typed client for the management API. One method per route; errors come
 * back as ApiError with the server's code, message and hint.
 */
export class StrataClient {
  readonly baseUrl: string;
  private token: string | undefined;
  private readonly doFetch: FetchLike;

  constructor(opts: ClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.token = opts.token;
    this.doFetch = opts.fetch ?? ((url, init) => fetch(url, init));
  }

  withToken(token: string): StrataClient {
    return new StrataClient({ baseUrl: this.baseUrl, token, fetch: this.doFetch });
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const init: { method: string; headers: Record<string, string>; body?: string } = { method, headers };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await this.doFetch(this.baseUrl + path, init);
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (res.status >= 400) {
      const err = (parsed as { error?: ApiErrorBody } | undefined)?.error;
      throw new ApiError(
        res.status,
        err && typeof err.code === "string"
          ? err
          : { code: "INTERNAL", message: `HTTP ${res.status} from ${this.baseUrl}: ${text.slice(0, 200)}` },
      );
    }
    return parsed as T;
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
}
