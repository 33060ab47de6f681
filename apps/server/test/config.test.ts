import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadServerConfig } from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "strata-config-"));

describe("loadServerConfig", () => {
  it("defaults: ./strata-data, 0.0.0.0:8640, SQLite inside the data directory", () => {
    const c = loadServerConfig({ cwd: dir, env: {} });
    expect(c).toMatchObject({
      dataDir: join(dir, "strata-data"),
      host: "0.0.0.0",
      port: 8640,
      tls: null,
      logLevel: "info",
    });
    expect(c.database).toEqual({ kind: "sqlite", path: join(dir, "strata-data", "catalog.db") });
  });

  it("precedence: flags over STRATA_* over the config file", () => {
    const file = join(dir, "a.json");
    writeFileSync(file, JSON.stringify({ data: "/f", listen: "127.0.0.1:1", logLevel: "warn" }));
    const c = loadServerConfig({
      cwd: dir,
      flags: { config: file, listen: "[::1]:9000" },
      env: {
        STRATA_LISTEN: "127.0.0.1:2",
        STRATA_LOG_LEVEL: "debug",
        STRATA_DATABASE: "postgres://u:p@db/strata",
      },
    });
    expect(c).toMatchObject({ dataDir: "/f", host: "::1", port: 9000, logLevel: "debug" });
    expect(c.database).toEqual({ kind: "postgres", url: "postgres://u:p@db/strata" });
  });

  it("reports every problem at once, naming where each came from", () => {
    const file = join(dir, "bad.json");
    writeFileSync(file, JSON.stringify({ colour: "blue", bodyLimit: -3 }));
    let err: { code?: string; message: string } | undefined;
    try {
      loadServerConfig({
        cwd: dir,
        configFile: file,
        flags: { listen: "nohost", tlsCert: "/nonexistent.pem" },
        env: { STRATA_DATABASE: "mysql://x", STRATA_LOG_LEVEL: "loud" },
      });
    } catch (e) {
      err = e as typeof err;
    }
    expect(err?.code).toBe("CONFIG_INVALID");
    const m = err!.message;
    expect(m).toContain("7 problems");
    expect(m).toContain('unknown key "colour"');
    expect(m).toContain("--listen");
    expect(m).toContain("STRATA_DATABASE: must be a postgres:// URL");
    expect(m).toContain("--tls-cert is given but --tls-key");
    expect(m).toContain("/nonexistent.pem");
    expect(m).toContain("STRATA_LOG_LEVEL");
    expect(m).toContain(`${file}: bodyLimit`);
  });

  it("an unreadable or non-JSON config file is one of the problems", () => {
    const file = join(dir, "broken.json");
    writeFileSync(file, "{ nope");
    expect(() =>
      loadServerConfig({ cwd: dir, configFile: file, env: { STRATA_LISTEN: "1.2.3.4:99999" } }),
    ).toThrow(/2 problems[\s\S]*broken\.json[\s\S]*out of range/);
  });
});
