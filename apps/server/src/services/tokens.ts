/**
 * Bearer secrets: a prefix naming the kind + 32 random bytes in base64url
 * (43 characters). Only the SHA-256 of the whole string is stored; a fast
 * hash suffices because the secret has 256 bits of entropy (no dictionary
 * to try). Ids are separate and public.
 *
 * - `stk_`: a user's API token (login, `POST /tokens`);
 * - `set_`: an enrollment token (`POST /enrollment-tokens`);
 * - `sep_`: an endpoint credential (`POST /enroll`).
 *
 * The HTTP layer checks the prefix before any lookup, so a secret of one
 * kind is never even looked up where another kind is expected.
 */
import { createHash, randomBytes } from "node:crypto";

export const TOKEN_PREFIX = "stk_";
export const ENROLLMENT_TOKEN_PREFIX = "set_";
export const ENDPOINT_CREDENTIAL_PREFIX = "sep_";

export type SecretPrefix =
  | typeof TOKEN_PREFIX
  | typeof ENROLLMENT_TOKEN_PREFIX
  | typeof ENDPOINT_CREDENTIAL_PREFIX;

export function generateSecret(prefix: SecretPrefix): { token: string; hash: string } {
  const token = prefix + randomBytes(32).toString("base64url");
  return { token, hash: hashToken(token) };
}

export function generateToken(): { id: string; token: string; hash: string } {
  return { id: randomBytes(8).toString("hex"), ...generateSecret(TOKEN_PREFIX) };
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** Cheap shape check before touching the database. */
export function looksLikeSecret(prefix: SecretPrefix, s: string): boolean {
  return (
    s.length === prefix.length + 43 &&
    s.startsWith(prefix) &&
    /^[A-Za-z0-9_-]{43}$/.test(s.slice(prefix.length))
  );
}

export function looksLikeToken(s: string): boolean {
  return looksLikeSecret(TOKEN_PREFIX, s);
}

/** A random public id: the prefix and 16 random bytes in base64url (`ep_…`, `cvd_…`, `pol_…`). */
export function randomId(prefix: "ep_" | "cvd_" | "pol_" | "col_" | "drv_" | "lay_" | "aar_"): string {
  return prefix + randomBytes(16).toString("base64url");
}
