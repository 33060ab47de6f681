/**
 * API tokens: "stk_" + 32 random bytes in base64url. Only SHA-256 of the
 * whole string is stored; a fast hash suffices because the secret has 256
 * bits of entropy (no dictionary to try). The id is separate and public.
 */
import { createHash, randomBytes } from "node:crypto";

export const TOKEN_PREFIX = "stk_";

export function generateToken(): { id: string; token: string; hash: string } {
  const token = TOKEN_PREFIX + randomBytes(32).toString("base64url");
  return { id: randomBytes(8).toString("hex"), token, hash: hashToken(token) };
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** Cheap shape check before touching the database. */
export function looksLikeToken(s: string): boolean {
  return /^stk_[A-Za-z0-9_-]{43}$/.test(s);
}
