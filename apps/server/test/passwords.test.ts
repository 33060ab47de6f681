import { describe, expect, it } from "vitest";
import { hashPassword, verifyPassword } from "../src/index.js";
import { LoginRateLimiter } from "../src/services/rate-limit.js";

describe("password hashing (scrypt)", () => {
  it("round-trips, rejects a wrong password, salts per hash and stores its parameters", async () => {
    const h1 = await hashPassword("tr0ub4dor & 3");
    const h2 = await hashPassword("tr0ub4dor & 3");
    expect(h1).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
    expect(h1).not.toBe(h2);
    expect(await verifyPassword("tr0ub4dor & 3", h1)).toBe(true);
    expect(await verifyPassword("tr0ub4dor & 4", h1)).toBe(false);
    expect(await verifyPassword("", h1)).toBe(false);
    // Unicode normalization: the same password typed composed or decomposed.
    expect(await verifyPassword("caf\u0065\u0301-password", await hashPassword("caf\u00e9-password"))).toBe(
      true,
    );
  });

  it("verifies hashes made with other parameters; refuses malformed or absurd ones", async () => {
    const cheap = await hashPassword("pw", { N: 1024, r: 8, p: 1 });
    expect(cheap.startsWith("scrypt$1024$8$1$")).toBe(true);
    expect(await verifyPassword("pw", cheap)).toBe(true);
    expect(await verifyPassword("pw", "plain")).toBe(false);
    expect(await verifyPassword("pw", cheap.replace("$1024$", "$1073741824$"))).toBe(false);
    expect(await verifyPassword("pw", cheap.replace("$1024$", "$1000$"))).toBe(false);
  });
});

describe("LoginRateLimiter", () => {
  it("locks after 5 failures a minute, doubles the lock, forgets after success", () => {
    let t = 0;
    const l = new LoginRateLimiter({}, () => t);
    for (let i = 0; i < 4; i++) l.failure("u", "a");
    l.check("u", "a");
    l.failure("u", "a");
    expect(() => l.check("u", "a")).toThrow(/try again in 60 s/);
    l.check("u", "b");
    l.check("v", "a");
    t += 60_001;
    l.check("u", "a");
    l.failure("u", "a");
    expect(() => l.check("u", "a")).toThrow(/120 s/);
    t += 120_001;
    l.success("u", "a");
    l.failure("u", "a");
    l.check("u", "a");
  });

  it("failures spread over more than the window do not lock", () => {
    let t = 0;
    const l = new LoginRateLimiter({}, () => t);
    for (let i = 0; i < 20; i++) {
      l.failure("u", "a");
      t += 20_000;
      if (i % 3 === 2) t += 60_000;
    }
    l.check("u", "a");
  });
});
