/**
 * The server certificate: the configured one, or a self-signed one generated
 * once into DATA/tls/ (key mode 0600) and reused. Agents and the CLI pin its
 * SHA-256 fingerprint, so the name in it does not matter for trust.
 */
import { X509Certificate } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import * as path from "node:path";
import { fromSystemError, StrataError } from "@strata/core";
import { generate } from "selfsigned";

/** The one parser of fingerprints, shared with the CLI and the agent. */
export { normalizeFingerprint } from "@strata/protocol";

export interface TlsMaterial {
  key: string;
  cert: string;
  /** "AB:CD:…" (64 hex digits in pairs), as `openssl x509 -fingerprint -sha256` prints it. */
  fingerprint: string;
  generated: boolean;
  certFile: string;
}

export function fingerprintOf(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256;
}

export async function loadOrCreateTls(
  dataDir: string,
  configured: { certFile: string; keyFile: string } | null,
): Promise<TlsMaterial> {
  if (configured) {
    let cert: string;
    let key: string;
    try {
      cert = readFileSync(configured.certFile, "utf8");
      key = readFileSync(configured.keyFile, "utf8");
    } catch (e) {
      throw fromSystemError(e, "reading", "the TLS certificate or key");
    }
    try {
      return { cert, key, fingerprint: fingerprintOf(cert), generated: false, certFile: configured.certFile };
    } catch (e) {
      throw new StrataError(
        "CONFIG_INVALID",
        `${configured.certFile} is not a PEM certificate: ${(e as Error).message}`,
      );
    }
  }
  const dir = path.join(dataDir, "tls");
  const certFile = path.join(dir, "server.crt");
  const keyFile = path.join(dir, "server.key");
  if (existsSync(certFile) && existsSync(keyFile)) {
    const cert = readFileSync(certFile, "utf8");
    return {
      cert,
      key: readFileSync(keyFile, "utf8"),
      fingerprint: fingerprintOf(cert),
      generated: false,
      certFile,
    };
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const now = new Date();
  const pems = await generate([{ name: "commonName", value: `strata-server ${hostname()}` }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: new Date(now.getTime() - 60_000),
    notAfterDate: new Date(now.getTime() + 10 * 365 * 86_400_000),
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
      { name: "extKeyUsage", serverAuth: true },
      {
        name: "subjectAltName",
        altNames: [
          { type: 2, value: "localhost" },
          { type: 2, value: hostname() },
          { type: 7, ip: "127.0.0.1" },
          { type: 7, ip: "::1" },
        ],
      },
    ],
  });
  // Key first, written 0600 from the start; each file via temp + rename so a crash leaves none or a whole one.
  const tmpKey = `${keyFile}.tmp`;
  writeFileSync(tmpKey, pems.private, { mode: 0o600 });
  chmodSync(tmpKey, 0o600);
  renameSync(tmpKey, keyFile);
  writeFileSync(`${certFile}.tmp`, pems.cert, { mode: 0o644 });
  renameSync(`${certFile}.tmp`, certFile);
  return {
    cert: pems.cert,
    key: pems.private,
    fingerprint: fingerprintOf(pems.cert),
    generated: true,
    certFile,
  };
}
