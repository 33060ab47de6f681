/**
 * A byte path as text for messages, logs and listings. Valid UTF-8 without
 * control characters or backslashes is shown as is; otherwise each byte that
 * is not printable ASCII (and every backslash) is escaped as \xNN, so two
 * different names never print the same and nothing unprintable reaches a
 * terminal.
 */
export function displayPath(p: Buffer | string): string {
  if (typeof p === "string") return p;
  // Most paths are printable ASCII: shown as they are without decoding and re-encoding them.
  let ascii = true;
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c < 0x20 || c >= 0x7f || c === 0x5c) {
      ascii = false;
      break;
    }
  }
  if (ascii) return p.toString("latin1");
  const s = p.toString("utf8");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what we escape
  if (Buffer.from(s, "utf8").equals(p) && !/[\x00-\x1f\x7f\\]/.test(s)) return s;
  let out = "";
  for (const b of p)
    out +=
      b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
  return out;
}
