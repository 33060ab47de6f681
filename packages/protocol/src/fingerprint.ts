/**
 * Certificate fingerprints as Strata prints and pins them: the SHA-256 of
 * the certificate (DER) as 32 colon-separated uppercase hex pairs, the form
 * Node's `fingerprint256` and `openssl x509 -fingerprint -sha256` print.
 */

/** Accepts "SHA256:ab:cd…", "AB:CD…" or 64 plain hex digits; returns the canonical "AB:CD:…" form or null. */
export function normalizeFingerprint(s: string): string | null {
  const hex = s
    .trim()
    .replace(/^sha-?256:/i, "")
    .replace(/:/g, "")
    .toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) return null;
  return hex.match(/../g)!.join(":");
}
