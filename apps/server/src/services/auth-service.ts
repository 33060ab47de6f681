import type { ApiTokenRecord, UserRecord } from "@strata/catalog";
import { StrataError } from "@strata/core";
import {
  type ApiToken,
  type CreatedToken,
  type LoginResponse,
  MIN_PASSWORD_LENGTH,
  type WhoAmI,
} from "@strata/protocol";
import type { AuditService } from "./audit-service.js";
import { type Caller, permissionsOf, type ServiceDeps, userView } from "./context.js";
import { dummyHash, hashPassword, verifyPassword } from "./passwords.js";
import type { LoginRateLimiter } from "./rate-limit.js";
import { generateToken, hashToken, looksLikeToken } from "./tokens.js";

/** last_used_at is written at most this often per token (it is informational). */
const TOUCH_EVERY_MS = 60_000;

export interface AuthServiceDeps extends ServiceDeps {
  audit: AuditService;
  limiter: LoginRateLimiter;
  loginTokenTtlMs: number;
}

export function tokenView(t: ApiTokenRecord): ApiToken {
  return {
    id: t.id,
    name: t.name,
    createdAt: t.createdAt.toISOString(),
    expiresAt: t.expiresAt?.toISOString() ?? null,
    lastUsedAt: t.lastUsedAt?.toISOString() ?? null,
  };
}

export function checkPasswordPolicy(pw: string, name: string): void {
  if ([...pw].length < MIN_PASSWORD_LENGTH) {
    throw new StrataError(
      "INVALID_ARGUMENT",
      `the password must have at least ${MIN_PASSWORD_LENGTH} characters`,
      {
        hint: "use a passphrase of several words",
      },
    );
  }
  if (pw.toLowerCase().includes(name.toLowerCase())) {
    throw new StrataError("INVALID_ARGUMENT", "the password must not contain the user name");
  }
}

const badLogin = () =>
  new StrataError("WRONG_PASSWORD", "wrong user name or password", {
    hint: "check both; repeated failures lock this user from this address for a while",
  });
const badToken = () =>
  new StrataError("WRONG_PASSWORD", "not authenticated: missing, invalid or expired API token", {
    hint: "log in again with `strata login --server URL`",
  });

export class AuthService {
  constructor(private readonly deps: AuthServiceDeps) {}

  async login(
    req: { user: string; password: string; tokenName?: string },
    remoteAddr: string,
  ): Promise<LoginResponse> {
    const { store, limiter, audit, clock } = this.deps;
    limiter.check(req.user, remoteAddr);
    const user = await store.getUserByName(req.user);
    // Verify against a dummy hash for unknown users: same cost, no enumeration by timing.
    const ok = await verifyPassword(req.password, user?.passwordHash ?? (await dummyHash()));
    if (!user || !ok) {
      limiter.failure(req.user, remoteAddr);
      await audit.record({
        actor: req.user,
        action: "auth.login_failed",
        object: `user:${req.user}`,
        detail: { reason: user ? "wrong password" : "no such user" },
        remoteAddr,
      });
      throw badLogin();
    }
    limiter.success(req.user, remoteAddr);
    if (user.disabled) {
      await audit.record({
        actor: user.name,
        action: "auth.login_failed",
        object: `user:${user.name}`,
        detail: { reason: "disabled" },
        remoteAddr,
      });
      throw new StrataError("PERMISSION_DENIED", `the account ${user.name} is disabled`, {
        hint: "ask an administrator",
      });
    }
    const now = clock.now();
    const t = generateToken();
    const rec: ApiTokenRecord = {
      id: t.id,
      userId: user.id,
      tokenHash: t.hash,
      name: req.tokenName ?? "login",
      createdAt: now,
      expiresAt: new Date(now.getTime() + this.deps.loginTokenTtlMs),
      lastUsedAt: null,
    };
    await store.createToken(rec);
    await audit.record({
      actor: user.name,
      action: "auth.login",
      object: `user:${user.name}`,
      detail: { tokenId: t.id },
      remoteAddr,
    });
    const role = await store.getRole(user.role);
    return {
      token: t.token,
      tokenId: t.id,
      expiresAt: rec.expiresAt?.toISOString() ?? null,
      user: userView(user),
      permissions: [...permissionsOf(role)].sort(),
    };
  }

  /** The caller behind an `Authorization: Bearer` token; WRONG_PASSWORD (401) otherwise. */
  async authenticate(token: string, remoteAddr: string): Promise<Caller> {
    const { store, clock } = this.deps;
    if (!looksLikeToken(token)) throw badToken();
    const rec = await store.getTokenByHash(hashToken(token));
    const now = clock.now();
    if (!rec || (rec.expiresAt && rec.expiresAt.getTime() <= now.getTime())) throw badToken();
    const user = await store.getUser(rec.userId);
    if (!user || user.disabled) throw badToken();
    if (!rec.lastUsedAt || now.getTime() - rec.lastUsedAt.getTime() > TOUCH_EVERY_MS) {
      await store.touchToken(rec.id, now);
    }
    const role = await store.getRole(user.role);
    return { user, permissions: permissionsOf(role), tokenId: rec.id, remoteAddr };
  }

  whoami(c: Caller): WhoAmI {
    return { user: userView(c.user), permissions: [...c.permissions].sort(), tokenId: c.tokenId };
  }

  async logout(c: Caller): Promise<void> {
    await this.deps.store.deleteToken(c.tokenId);
    await this.deps.audit.by(c, "auth.logout", `user:${c.user.name}`, { tokenId: c.tokenId });
  }

  /** Change one's own password; other sessions' tokens are revoked, this one stays. */
  async changeOwnPassword(c: Caller, currentPassword: string, newPassword: string): Promise<void> {
    const { store, limiter, audit } = this.deps;
    limiter.check(c.user.name, c.remoteAddr);
    if (!(await verifyPassword(currentPassword, c.user.passwordHash))) {
      limiter.failure(c.user.name, c.remoteAddr);
      await audit.by(c, "auth.password_change_failed", `user:${c.user.name}`);
      throw new StrataError("INVALID_ARGUMENT", "the current password is wrong", {
        hint: "give your current password",
      });
    }
    limiter.success(c.user.name, c.remoteAddr);
    checkPasswordPolicy(newPassword, c.user.name);
    if (newPassword === currentPassword) {
      throw new StrataError("INVALID_ARGUMENT", "the new password must differ from the current one");
    }
    await store.updateUser(c.user.id, {
      passwordHash: await hashPassword(newPassword),
      mustChangePassword: false,
    });
    for (const t of await store.listTokens(c.user.id)) if (t.id !== c.tokenId) await store.deleteToken(t.id);
    await audit.by(c, "auth.password_change", `user:${c.user.name}`);
  }

  async listOwnTokens(c: Caller): Promise<ApiToken[]> {
    return (await this.deps.store.listTokens(c.user.id)).map(tokenView);
  }

  async createOwnToken(c: Caller, name: string, expiresInDays?: number): Promise<CreatedToken> {
    const now = this.deps.clock.now();
    const t = generateToken();
    const rec: ApiTokenRecord = {
      id: t.id,
      userId: c.user.id,
      tokenHash: t.hash,
      name,
      createdAt: now,
      expiresAt: expiresInDays ? new Date(now.getTime() + expiresInDays * 86_400_000) : null,
      lastUsedAt: null,
    };
    await this.deps.store.createToken(rec);
    await this.deps.audit.by(c, "token.create", `token:${t.id}`, {
      name,
      expiresAt: rec.expiresAt?.toISOString() ?? null,
    });
    return { ...tokenView(rec), token: t.token };
  }

  async revokeOwnToken(c: Caller, id: string): Promise<void> {
    const mine = (await this.deps.store.listTokens(c.user.id)).some((t) => t.id === id);
    if (!mine) throw new StrataError("NOT_FOUND", `you have no API token ${id}`, { subject: id });
    await this.deps.store.deleteToken(id);
    await this.deps.audit.by(c, "token.revoke", `token:${id}`);
  }
}

export type { UserRecord };
