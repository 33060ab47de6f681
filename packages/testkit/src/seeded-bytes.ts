import { createHash } from "node:crypto";

/**
 * `n` pseudo-random bytes, the same for the same seed: content that does
 * not compress or deduplicate by accident, yet chunks the same way in every
 * run (a test that bounds what a change sends must not depend on luck).
 */
export function seededBytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  let h = createHash("sha256").update(seed).digest();
  for (let o = 0; o < n; o += 32) {
    h.copy(out, o);
    h = createHash("sha256").update(h).digest();
  }
  return out;
}
