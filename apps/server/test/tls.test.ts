import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadServerConfig, normalizeFingerprint, startServer } from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "strata-tls-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function peer(url: string): Promise<{ fp: string; status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}/healthz`, { rejectUnauthorized: false }, (res) => {
      const fp = (res.socket as import("node:tls").TLSSocket).getPeerCertificate().fingerprint256;
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ fp, status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("HTTPS with a generated certificate", () => {
  it("generates once (key 0600), serves it on 127.0.0.1:0, and reports its fingerprint; a restart reuses it", async () => {
    const logs: string[] = [];
    const config = loadServerConfig({ flags: { data: join(dir, "data"), listen: "127.0.0.1:0" }, env: {} });
    const s = await startServer(config, { logStream: { write: (x: string) => logs.push(x) } });
    try {
      expect(s.certGenerated).toBe(true);
      expect(s.adminPassword).toMatch(/^[a-z0-9]{5}(-[a-z0-9]{5}){3}$/);
      expect(statSync(join(dir, "data/tls/server.key")).mode & 0o777).toBe(0o600);
      expect(statSync(join(dir, "data/catalog.db")).mode & 0o777).toBe(0o600);
      const file = new X509Certificate(readFileSync(join(dir, "data/tls/server.crt"))).fingerprint256;
      expect(s.fingerprint).toBe(file);
      const p = await peer(s.url);
      expect(p.status).toBe(200);
      expect(p.fp).toBe(s.fingerprint);
      expect(logs.join("")).not.toContain(s.adminPassword!);
      expect(normalizeFingerprint(`sha256:${s.fingerprint.replace(/:/g, "").toLowerCase()}`)).toBe(
        s.fingerprint,
      );
    } finally {
      await s.close();
    }
    const again = await startServer(config, { logStream: { write: () => {} } });
    try {
      expect(again.certGenerated).toBe(false);
      expect(again.adminPassword).toBeNull();
      expect((await peer(again.url)).fp).toBe(
        new X509Certificate(readFileSync(join(dir, "data/tls/server.crt"))).fingerprint256,
      );
    } finally {
      await again.close();
    }
  });
});
