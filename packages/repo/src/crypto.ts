import {
  createCipheriv,
  createDecipheriv,
  randomBytes,
  scrypt as scryptCb,
  timingSafeEqual,
} from "node:crypto";
import { StrataError } from "@strata/core";
import { native } from "@strata/fs";

/**
 * Encryption. Every stored object (blob, pack header, snapshot, config) is
 * sealed with AES-256-GCM under the repository's master key with a fresh
 * random 96-bit nonce: nonce(12) || ciphertext || tag(16). The master key is
 * random and never leaves memory unwrapped; key files hold it wrapped by a
 * key-encryption key derived from a password with scrypt (memory-hard).
 */
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
export const SEAL_OVERHEAD = NONCE_LEN + TAG_LEN;

/**
 * Which AES-256-GCM implementation seals and opens: the system's libcrypto
 * through the @strata/fs addon when it loads (about 15× faster than node's
 * built-in OpenSSL on the machines we measured, which does not use AES-NI),
 * else node:crypto. Both produce and accept the same bytes.
 * `STRATA_NATIVE_AES=0` forces node:crypto.
 */
let backend: { name: "libcrypto" | "node:crypto"; reason?: string } | null = null;
export function aeadBackend(): { name: "libcrypto" | "node:crypto"; reason?: string } {
  if (!backend) {
    // Asked on first use: loading the library costs a few ms a process that never encrypts should not pay.
    const status =
      process.env.STRATA_NATIVE_AES === "0" ? "disabled by STRATA_NATIVE_AES=0" : native.aeadAvailable();
    backend = status === true ? { name: "libcrypto" } : { name: "node:crypto", reason: status };
  }
  return backend;
}
const useNative = () => aeadBackend().name === "libcrypto";

export class MasterKey {
  constructor(readonly key: Buffer) {
    if (key.length !== 32) throw new Error("master key must be 32 bytes");
  }
  static generate(): MasterKey {
    return new MasterKey(randomBytes(32));
  }
}

/** Random nonces drawn from a refilled pool: one getrandom call per 341 blobs. */
let noncePool = Buffer.alloc(0);
let noncePos = 0;
function nextNonce(): Buffer {
  if (noncePos + NONCE_LEN > noncePool.length) {
    noncePool = randomBytes(NONCE_LEN * 341);
    noncePos = 0;
  }
  const n = noncePool.subarray(noncePos, noncePos + NONCE_LEN);
  noncePos += NONCE_LEN;
  return n;
}

export function seal(key: MasterKey, plain: Uint8Array, aad?: Uint8Array): Buffer {
  // A dedicated (non-pooled) buffer: workers transfer its ArrayBuffer.
  const out = Buffer.allocUnsafeSlow(NONCE_LEN + plain.length + TAG_LEN);
  sealInto(key, plain, out, 0, aad);
  return out;
}

/**
 * Seal `plain` into `out` at `offset` (nonce || ciphertext || tag, i.e.
 * `plain.length + SEAL_OVERHEAD` bytes); returns the bytes written. Lets a
 * caller place many sealed values in one buffer without a copy each.
 */
export function sealInto(
  key: MasterKey,
  plain: Uint8Array,
  out: Buffer,
  offset: number,
  aad?: Uint8Array,
): number {
  const nonce = nextNonce();
  if (useNative()) return native.gcmSeal(key.key, nonce, plain, aad ?? null, out, offset);
  const c = createCipheriv("aes-256-gcm", key.key, nonce);
  if (aad) c.setAAD(aad);
  nonce.copy(out, offset);
  let off = offset + NONCE_LEN;
  off += c.update(plain).copy(out, off);
  off += c.final().copy(out, off);
  off += c.getAuthTag().copy(out, off);
  return off - offset;
}

/** Returns null when authentication fails (wrong key or damaged bytes). */
export function openSealed(key: MasterKey, sealed: Uint8Array, aad?: Uint8Array): Buffer | null {
  if (sealed.length < SEAL_OVERHEAD) return null;
  if (useNative()) {
    // A dedicated (non-pooled) buffer, as node's decipher returns: callers may transfer it.
    const out = Buffer.allocUnsafeSlow(sealed.length - SEAL_OVERHEAD);
    return native.gcmOpen(key.key, sealed, aad ?? null, out, 0) < 0 ? null : out;
  }
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const nonce = buf.subarray(0, NONCE_LEN);
  const tag = buf.subarray(buf.length - TAG_LEN);
  const d = createDecipheriv("aes-256-gcm", key.key, nonce);
  if (aad) d.setAAD(aad);
  d.setAuthTag(tag);
  try {
    const body = d.update(buf.subarray(NONCE_LEN, buf.length - TAG_LEN));
    // GCM's final() authenticates and returns no bytes: no copy of the body.
    const rest = d.final();
    return rest.length ? Buffer.concat([body, rest]) : body;
  } catch {
    return null;
  }
}

/**
 * `openSealed` into a caller's buffer (at `offset`, which must have room for
 * `sealed.length − SEAL_OVERHEAD` bytes and must not overlap `sealed`): the
 * plaintext's length, or -1 when authentication fails. Lets hot loops reuse
 * one buffer instead of allocating a plaintext per value.
 */
export function openSealedInto(
  key: MasterKey,
  sealed: Uint8Array,
  out: Uint8Array,
  offset: number,
  aad?: Uint8Array,
): number {
  if (sealed.length < SEAL_OVERHEAD) return -1;
  if (useNative()) return native.gcmOpen(key.key, sealed, aad ?? null, out, offset);
  const body = openSealed(key, sealed, aad);
  if (!body) return -1;
  out.set(body, offset);
  return body.length;
}

export interface KeyFile {
  version: 1;
  kdf: "scrypt";
  /** scrypt cost parameters. N=2^15, r=8, p=1 costs ~32 MiB and ~0.1 s. */
  N: number;
  r: number;
  p: number;
  salt: string;
  /** The master key sealed with the derived key (base64). */
  wrapped: string;
  created: string;
  hostname: string;
}

function scrypt(password: Buffer, salt: Buffer, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password, salt, 32, { N, r, p, maxmem: 256 * N * r + 1024 * 1024 }, (err, k) =>
      err ? reject(err) : resolve(k),
    ),
  );
}

/** Test runs may lower the cost with STRATA_SCRYPT_LOG_N (never below 10). */
function defaultLogN(): number {
  const env = Number(process.env.STRATA_SCRYPT_LOG_N);
  return Number.isInteger(env) && env >= 10 && env <= 20 ? env : 15;
}

export async function wrapMasterKey(master: MasterKey, password: Buffer, hostname: string): Promise<KeyFile> {
  const salt = randomBytes(16);
  const N = 2 ** defaultLogN();
  const kek = new MasterKey(await scrypt(password, salt, N, 8, 1));
  return {
    version: 1,
    kdf: "scrypt",
    N,
    r: 8,
    p: 1,
    salt: salt.toString("base64"),
    wrapped: seal(kek, master.key).toString("base64"),
    created: new Date().toISOString(),
    hostname,
  };
}

/** The master key, or null when the password does not open this key file. */
export async function unwrapMasterKey(kf: KeyFile, password: Buffer): Promise<MasterKey | null> {
  if (kf.kdf !== "scrypt" || !(kf.N > 1 && kf.N <= 2 ** 22) || kf.r > 32 || kf.p > 16) {
    throw new StrataError("CONFIG_INVALID", "key file has unsupported KDF parameters");
  }
  const kek = new MasterKey(await scrypt(password, Buffer.from(kf.salt, "base64"), kf.N, kf.r, kf.p));
  const key = openSealed(kek, Buffer.from(kf.wrapped, "base64"));
  return key && key.length === 32 ? new MasterKey(key) : null;
}

export function constantTimeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
