/**
 * The ServerStore contract, run against every implementation
 * (server-store.test.ts: SQLite and PostgreSQL).
 */
import { isStrataError } from "@strata/core";
import { describe, expect, it } from "vitest";
import type { ServerStore, UserRecord } from "../src/index.js";

let seq = 0;
const t0 = new Date("2026-01-01T00:00:00.000Z");

function user(name: string, role = "Administrator"): UserRecord {
  return {
    id: `u${seq++}-${name}`,
    name,
    passwordHash: "scrypt$32768$8$1$c2FsdA$aGFzaA",
    role,
    createdAt: t0,
    disabled: false,
    mustChangePassword: true,
  };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(isStrataError(e) ? e.code : e).toBe(code);
}

export function runServerStoreContract(name: string, open: () => Promise<ServerStore>): void {
  describe(`ServerStore contract (${name})`, () => {
    async function fresh(): Promise<ServerStore> {
      const s = await open();
      await s.upsertBuiltinRoles([
        { name: "Administrator", permissions: ["users.read", "users.write"] },
        { name: "Read-only", permissions: ["users.read"] },
      ]);
      return s;
    }

    it("roles: builtin upsert, custom create, unique names, update, delete unless held", async () => {
      const s = await fresh();
      await s.upsertBuiltinRoles([{ name: "Read-only", permissions: ["users.read", "audit.read"] }]);
      expect(await s.getRole("Read-only")).toEqual({
        name: "Read-only",
        builtin: true,
        permissions: ["users.read", "audit.read"],
      });
      await s.createRole({ name: "Ops", builtin: false, permissions: ["audit.read"] });
      await rejectsWith(s.createRole({ name: "Ops", builtin: false, permissions: [] }), "ALREADY_EXISTS");
      expect((await s.listRoles()).map((r) => r.name)).toEqual(["Administrator", "Read-only", "Ops"]);
      expect(await s.updateRolePermissions("Ops", ["users.read"])).toBe(true);
      expect(await s.updateRolePermissions("nope", [])).toBe(false);
      expect((await s.getRole("Ops"))?.permissions).toEqual(["users.read"]);
      expect(await s.getRole("nope")).toBeNull();
      await s.createUser(user("olga", "Ops"));
      await rejectsWith(s.deleteRole("Ops"), "INVALID_ARGUMENT");
      const olga = await s.getUserByName("olga");
      await s.updateUser(olga!.id, { role: "Read-only" });
      expect(await s.deleteRole("Ops")).toBe(true);
      expect(await s.deleteRole("Ops")).toBe(false);
      await s.close();
    });

    it("users: create, unique name, unknown role, get, list, update, count", async () => {
      const s = await fresh();
      const a = user("alice");
      await s.createUser(a);
      await rejectsWith(s.createUser({ ...user("alice") }), "ALREADY_EXISTS");
      await rejectsWith(s.createUser(user("bob", "Ghost")), "NOT_FOUND");
      await s.createUser(user("bob", "Read-only"));
      expect(await s.getUser(a.id)).toEqual(a);
      expect(await s.getUserByName("alice")).toEqual(a);
      expect(await s.getUserByName("ALICE")).toBeNull();
      expect(await s.getUser("missing")).toBeNull();
      expect((await s.listUsers()).map((u) => u.name)).toEqual(["alice", "bob"]);
      expect(await s.countUsers()).toBe(2);
      expect(
        await s.updateUser(a.id, {
          disabled: true,
          mustChangePassword: false,
          passwordHash: "x",
          role: "Read-only",
        }),
      ).toBe(true);
      expect(await s.getUser(a.id)).toEqual({
        ...a,
        disabled: true,
        mustChangePassword: false,
        passwordHash: "x",
        role: "Read-only",
      });
      await rejectsWith(s.updateUser(a.id, { role: "Ghost" }), "NOT_FOUND");
      expect(await s.updateUser("missing", { disabled: true })).toBe(false);
      await s.close();
    });

    it("tokens: by hash, list, touch, delete, delete all of a user, unique hash", async () => {
      const s = await fresh();
      const a = user("carol");
      await s.createUser(a);
      const tok = {
        id: "0123456789abcdef",
        userId: a.id,
        tokenHash: "h1",
        name: "cli",
        createdAt: t0,
        expiresAt: new Date(t0.getTime() + 1000),
        lastUsedAt: null,
      };
      await s.createToken(tok);
      await s.createToken({ ...tok, id: "1123456789abcdef", tokenHash: "h2", expiresAt: null });
      await rejectsWith(s.createToken({ ...tok, id: "2123456789abcdef" }), "ALREADY_EXISTS");
      expect(await s.getTokenByHash("h1")).toEqual(tok);
      expect(await s.getTokenByHash("nope")).toBeNull();
      const used = new Date(t0.getTime() + 500);
      await s.touchToken(tok.id, used);
      expect((await s.getTokenByHash("h1"))?.lastUsedAt).toEqual(used);
      expect((await s.listTokens(a.id)).map((t) => t.id)).toEqual([tok.id, "1123456789abcdef"]);
      expect(await s.deleteToken(tok.id)).toBe(true);
      expect(await s.deleteToken(tok.id)).toBe(false);
      expect(await s.deleteUserTokens(a.id)).toBe(1);
      expect(await s.listTokens(a.id)).toEqual([]);
      await s.close();
    });

    it("audit: increasing ids, newest first, every filter, paging", async () => {
      const s = await fresh();
      const at = (m: number) => new Date(t0.getTime() + m * 60_000);
      const ids: number[] = [];
      for (let i = 0; i < 6; i++) {
        ids.push(
          await s.appendAudit({
            at: at(i),
            actor: i % 2 ? "bob" : "alice",
            action: i < 3 ? "user.create" : "role.create",
            object: `user:u${i}`,
            detail: { i, nested: { ok: true } },
            remoteAddr: "127.0.0.1",
          }),
        );
      }
      expect([...ids].sort((x, y) => x - y)).toEqual(ids);
      const all = await s.listAudit({ limit: 100 });
      expect(all.map((e) => e.id)).toEqual([...ids].reverse());
      expect(all[5]).toEqual({
        id: ids[0],
        at: at(0),
        actor: "alice",
        action: "user.create",
        object: "user:u0",
        detail: { i: 0, nested: { ok: true } },
        remoteAddr: "127.0.0.1",
      });
      expect((await s.listAudit({ limit: 100, actor: "bob" })).map((e) => e.detail.i)).toEqual([5, 3, 1]);
      expect((await s.listAudit({ limit: 100, action: "role.create" })).length).toBe(3);
      expect((await s.listAudit({ limit: 100, object: "user:u2" })).map((e) => e.id)).toEqual([ids[2]]);
      expect((await s.listAudit({ limit: 100, since: at(2), until: at(4) })).map((e) => e.detail.i)).toEqual([
        3, 2,
      ]);
      expect((await s.listAudit({ limit: 2 })).map((e) => e.detail.i)).toEqual([5, 4]);
      expect((await s.listAudit({ limit: 2, before: ids[4] })).map((e) => e.detail.i)).toEqual([3, 2]);
      await s.ping();
      await s.close();
    });
  });
}
