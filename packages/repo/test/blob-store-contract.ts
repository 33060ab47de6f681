import { type BlobStore, isStrataError } from "@strata/repo";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

/** The BlobStore contract, run against every implementation (dir now, S3 later). */
export function runBlobStoreContract(name: string, make: () => Promise<BlobStore>): void {
  describe(`BlobStore contract: ${name}`, () => {
    let s: BlobStore;
    beforeEach(async () => {
      s = await make();
    });
    afterEach(async () => {
      await s.close(); // its cached read handles too (left to GC, Node warns)
    });

    it("put then get returns the same bytes; put of parts concatenates", async () => {
      await s.put("packs/ab/one", Buffer.from("hello"));
      expect((await s.get("packs/ab/one")).toString()).toBe("hello");
      await s.put("two", [Buffer.from("ab"), Buffer.from("cd")]);
      expect((await s.get("two")).toString()).toBe("abcd");
    });

    it("getRange returns exactly the range and refuses to read past the end", async () => {
      await s.put("r", Buffer.from("0123456789"));
      expect((await s.getRange("r", 3, 4)).toString()).toBe("3456");
      await expect(s.getRange("r", 8, 5)).rejects.toSatisfy(
        (e) => isStrataError(e, "DATA_CORRUPT") && /r is truncated/.test((e as Error).message),
      );
    });

    it("getRangeInto (where a store has it) fills the caller's buffer as getRange reads", async () => {
      if (!s.getRangeInto) return; // optional: readers fall back to getRange
      await s.put("ri", Buffer.from("0123456789"));
      const into = Buffer.alloc(16, 0x2e);
      const got = await s.getRangeInto("ri", 2, 5, into);
      expect(got.toString()).toBe("23456");
      expect(got.buffer).toBe(into.buffer); // the caller's memory, no copy
      expect(into.subarray(5).toString()).toBe(".".repeat(11));
      await expect(s.getRangeInto("ri", 8, 5, into)).rejects.toSatisfy(
        (e) => isStrataError(e, "DATA_CORRUPT") && /ri is truncated/.test((e as Error).message),
      );
      await expect(s.getRangeInto("nope", 0, 1, into)).rejects.toSatisfy((e) =>
        isStrataError(e, "NOT_FOUND"),
      );
      await expect(s.getRangeInto("ri", 0, 17, into)).rejects.toSatisfy((e) =>
        isStrataError(e, "INVALID_ARGUMENT"),
      );
    });

    it("missing objects give NOT_FOUND naming the object; stat gives null", async () => {
      await expect(s.get("nope")).rejects.toSatisfy(
        (e) => isStrataError(e, "NOT_FOUND") && /nope/.test((e as Error).message),
      );
      await expect(s.getRange("nope", 0, 1)).rejects.toSatisfy((e) => isStrataError(e, "NOT_FOUND"));
      expect(await s.stat("nope")).toBeNull();
    });

    it("stat reports the size", async () => {
      await s.put("sz", Buffer.alloc(1234));
      expect((await s.stat("sz"))?.size).toBe(1234);
    });

    it("list yields every object under a prefix and nothing else", async () => {
      await s.put("packs/00/a", Buffer.from("1"));
      await s.put("packs/ff/b", Buffer.from("22"));
      await s.put("snapshots/c", Buffer.from("333"));
      const names = [];
      for await (const o of s.list("packs/")) names.push(`${o.name}:${o.size}`);
      expect(names.sort()).toEqual(["packs/00/a:1", "packs/ff/b:2"]);
      const all = [];
      for await (const o of s.list("")) all.push(o.name);
      expect(all.sort()).toEqual(["packs/00/a", "packs/ff/b", "snapshots/c"]);
    });

    it("delete is idempotent", async () => {
      await s.put("d", Buffer.from("x"));
      await s.delete("d");
      await s.delete("d");
      expect(await s.stat("d")).toBeNull();
    });

    it("put replaces an existing object whole", async () => {
      await s.put("p", Buffer.from("old-old-old"));
      await s.put("p", Buffer.from("new"));
      expect((await s.get("p")).toString()).toBe("new");
    });

    it("a temporary object (if offered) is invisible until committed, then is a whole object", async () => {
      if (!s.createTemp) return;
      const t = s.createTemp();
      t.write(Buffer.from("hel"));
      t.write(Buffer.from("lo"));
      expect(t.size).toBe(5);
      const seen = [];
      for await (const o of s.list("")) seen.push(o.name);
      expect(seen).toEqual([]);
      await t.commit("packs/ab/streamed");
      expect((await s.get("packs/ab/streamed")).toString()).toBe("hello");
      const aborted = s.createTemp();
      aborted.write(Buffer.from("never"));
      await aborted.abort();
      await aborted.abort();
      const names = [];
      for await (const o of s.list("")) names.push(o.name);
      expect(names).toEqual(["packs/ab/streamed"]);
      await expect(s.createTemp().commit("../x")).rejects.toSatisfy((e) => isStrataError(e, "UNSAFE_PATH"));
    });

    it("rejects hostile names", async () => {
      for (const bad of ["../x", "/abs", "a/../b", "a//b", "", "a/./b", "sp ace", "nul\0"]) {
        await expect(s.put(bad, Buffer.from("x")), bad).rejects.toSatisfy((e) =>
          isStrataError(e, "UNSAFE_PATH"),
        );
        await expect(s.get(bad), bad).rejects.toSatisfy((e) => isStrataError(e, "UNSAFE_PATH"));
      }
    });
  });
}
