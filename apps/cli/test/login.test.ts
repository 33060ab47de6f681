import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { loadServerConfig, startServer } from "@strata/server";
import { afterAll, describe, expect, it } from "vitest";
import { type Run, strataAsync } from "./helpers.js";

const dir = mkdtempSync(path.join(tmpdir(), "strata-login-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const creds = path.join(dir, "home/.config/strata/credentials.json");

function strata(env: Record<string, string>, ...args: string[]): Promise<Run> {
  return strataAsync(path.join(dir, "home"), env, ...args);
}

describe("strata login pins the server certificate", () => {
  it("trusts on first use, stores a 0600 credential, and refuses a different certificate afterwards", async () => {
    const quiet = { logStream: { write: () => {} } };
    const a = await startServer(
      loadServerConfig({ flags: { data: path.join(dir, "a"), listen: "127.0.0.1:0" }, env: {} }),
      quiet,
    );
    const url = a.url;
    const pw = a.adminPassword!;
    try {
      const l = await strata({ STRATA_PASSWORD: pw }, "login", "--server", url, "--user", "admin", "--json");
      expect(l.code, l.stderr).toBe(0);
      expect(l.stderr).toContain(`trusting the server certificate on first use: SHA256 ${a.fingerprint}`);
      expect(JSON.parse(l.stdout)).toMatchObject({
        user: "admin",
        fingerprint: a.fingerprint,
        mustChangePassword: true,
      });
      expect(statSync(creds).mode & 0o777).toBe(0o600);
      const saved = JSON.parse(readFileSync(creds, "utf8"));
      expect(saved.servers[url].fingerprint).toBe(a.fingerprint);
      // Change the one-time password, then use the admin commands.
      const np = "a long new secret phrase";
      const c = await strata({ STRATA_CURRENT_PASSWORD: pw, STRATA_PASSWORD: np }, "users", "passwd");
      expect(c.code, c.stderr).toBe(0);
      const u = await strata(
        { STRATA_PASSWORD: "helpdesk password 1" },
        "users",
        "create",
        "hd",
        "--role",
        "Help Desk",
        "--json",
      );
      expect(u.code, u.stderr).toBe(0);
      const ls = await strata({}, "users", "ls", "--json");
      expect(JSON.parse(ls.stdout).map((x: { name: string }) => x.name)).toEqual(["admin", "hd"]);
      const r = await strata({}, "roles", "show", "Help Desk");
      expect(r.stdout).toContain("restore.run");
      const au = await strata({}, "audit", "--action", "user.create", "--json");
      expect(JSON.parse(au.stdout)[0]).toMatchObject({ actor: "admin", object: "user:hd" });
      // An explicit wrong fingerprint is refused before any password is sent.
      const wrong = await strata(
        { STRATA_PASSWORD: np },
        "login",
        "--server",
        url,
        "--fingerprint",
        "00".repeat(32),
      );
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(/is not the pinned one/);
    } finally {
      await a.close();
    }
    // Same address, another certificate: the pinned credential refuses it.
    const port = Number(new URL(url).port);
    const b = await startServer(
      loadServerConfig({ flags: { data: path.join(dir, "b"), listen: `127.0.0.1:${port}` }, env: {} }),
      quiet,
    );
    try {
      expect(b.fingerprint).not.toBe(a.fingerprint);
      const ls = await strata({}, "users", "ls");
      expect(ls.code).toBe(1);
      expect(ls.stderr).toContain(
        `the server's certificate (SHA256 ${b.fingerprint}) is not the pinned one (${a.fingerprint})`,
      );
      const again = await strata(
        { STRATA_PASSWORD: b.adminPassword! },
        "login",
        "--server",
        url,
        "--user",
        "admin",
      );
      expect(again.code).toBe(1);
      expect(again.stderr).toContain("is not the pinned one");
      const forced = await strata(
        { STRATA_PASSWORD: b.adminPassword! },
        "login",
        "--server",
        url,
        "--user",
        "admin",
        "--fingerprint",
        b.fingerprint,
      );
      expect(forced.code, forced.stderr).toBe(0);
    } finally {
      await b.close();
    }
  });
});
