/**
 * Byte paths as lossless strings ("Names are bytes", DESIGN.md). Code that
 * matches rules or builds path lists works on strings; a Linux name need
 * not be UTF-8. A **byte-path string** is the UTF-8 decoding of the bytes
 * where they are valid UTF-8, and each byte of an invalid sequence as the
 * lone surrogate U+DC80–U+DCFF (Python's "surrogateescape"): valid UTF-8
 * never decodes to a lone surrogate, so the string gives back the exact
 * bytes (`bytePathOf`), and a path that is valid UTF-8 is its ordinary
 * string. Lone surrogates are not for JSON: lists that leave a process
 * carry the valid ones as strings and the others as base64
 * (`splitBytePaths`, protocol.md "Conventions").
 */

const ESC_BASE = 0xdc00;

/** The lossless string of a byte path (the UTF-8 string when the bytes are valid UTF-8). */
export function bytePathString(b: Uint8Array): string {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const s = buf.toString("utf8");
  // Fast path: no replacement character, so every byte decoded (a literal
  // U+FFFD in a name takes the slow path and comes out the same).
  if (!s.includes("\uFFFD")) return s;
  let out = "";
  let i = 0;
  while (i < buf.length) {
    const n = validSequence(buf, i);
    if (n === 0) {
      out += String.fromCharCode(ESC_BASE + buf[i]!);
      i++;
    } else {
      out += buf.toString("utf8", i, i + n);
      i += n;
    }
  }
  return out;
}

/** Length of the valid UTF-8 sequence at `i` (1-4), or 0 when the byte there starts none. */
function validSequence(b: Buffer, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf) => i + k < b.length && b[i + k]! >= lo && b[i + k]! <= hi;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c === 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0;
  // ED A0..BF would be a surrogate: not UTF-8.
  if (c === 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;
  if (c >= 0xe1 && c <= 0xef) return cont(1) && cont(2) ? 3 : 0;
  if (c === 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xf1 && c <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c === 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

/** A lone surrogate of the escape range (not the low half of a pair): an escaped byte. */
const ESCAPED = /(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/;

/** The string is a path whose bytes are valid UTF-8 (no escaped byte). */
export function isUtf8Path(s: string): boolean {
  return !ESCAPED.test(s);
}

/** The exact bytes of a byte-path string (`bytePathString`'s inverse). */
export function bytePathOf(s: string): Buffer {
  if (isUtf8Path(s)) return Buffer.from(s, "utf8");
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xdc80 || c > 0xdcff) continue;
    // An escape only when lone: a low surrogate after a high one is half of a real character.
    const prev = i > 0 ? s.charCodeAt(i - 1) : 0;
    if (prev >= 0xd800 && prev <= 0xdbff) continue;
    if (i > start) parts.push(Buffer.from(s.slice(start, i), "utf8"));
    parts.push(Buffer.from([c - ESC_BASE]));
    start = i + 1;
  }
  if (start < s.length) parts.push(Buffer.from(s.slice(start), "utf8"));
  return Buffer.concat(parts);
}

/**
 * A list of byte-path strings as JSON carries it: the paths that are valid
 * UTF-8 as strings (`utf8`), the others as base64 of their bytes (`b64`).
 * Order is kept within each list.
 */
export function splitBytePaths(paths: Iterable<string>): { utf8: string[]; b64: string[] } {
  const utf8: string[] = [];
  const b64: string[] = [];
  for (const p of paths) {
    if (isUtf8Path(p)) utf8.push(p);
    else b64.push(bytePathOf(p).toString("base64"));
  }
  return { utf8, b64 };
}

/** `splitBytePaths` read back: the strings, then the base64 ones as byte-path strings. */
export function joinBytePaths(utf8: readonly string[], b64: readonly string[] | undefined): string[] {
  const out = [...utf8];
  for (const b of b64 ?? []) out.push(bytePathString(Buffer.from(b, "base64")));
  return out;
}

/**
 * A byte-path string for messages and listings, as @strata/fs `displayPath`
 * shows bytes: a path that is valid UTF-8 as it is; otherwise every byte
 * that is not printable ASCII (and every backslash) as `\xNN`.
 */
export function displayBytePath(s: string): string {
  if (isUtf8Path(s)) return s;
  let out = "";
  for (const b of bytePathOf(s))
    out +=
      b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
  return out;
}
