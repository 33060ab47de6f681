import { createHash } from "node:crypto";

/** Hash algorithm ids stored in the repository config. */
export type HashAlgorithm = "sha256";
export const DEFAULT_HASH: HashAlgorithm = "sha256";

export function hashBytes(data: Uint8Array, alg: HashAlgorithm = DEFAULT_HASH): string {
  return createHash(alg).update(data).digest("hex");
}
