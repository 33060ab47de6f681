import { afterAll, describe, expect, it } from "vitest";
import { COPY_THRESHOLD, openCatalog, openPostgresCatalog, PostgresCatalog } from "../src/index.js";
import { addFresh, blob, entries, pack, runCatalogContract } from "./contract.js";
import { dropTestSchemas, findTestPostgres, newTestSchema } from "./pg-helper.js";

const target = await findTestPostgres();
if (target.skip) {
  console.warn(`\n[catalog] SKIPPING PostgreSQL catalog tests: ${target.skip}\n`);
}
const url = target.url ?? "";

describe.skipIf(!target.url)("PostgreSQL", () => {
  afterAll(async () => {
    await dropTestSchemas(url);
  });

  runCatalogContract("postgres", () => openPostgresCatalog(url, { schema: newTestSchema() }));

  describe("PostgresCatalog specifics", () => {
    it("nodes starting at once migrate one schema exactly once", async () => {
      const schema = newTestSchema();
      const cs = await Promise.all(Array.from({ length: 5 }, () => openPostgresCatalog(url, { schema })));
      const { ids } = await addFresh(cs[0]!, "a", 2);
      expect((await cs[4]!.hasBlobs(ids)).size).toBe(2);
      const r = await cs[1]!.pool.query("SELECT version, name FROM schema_migrations ORDER BY version");
      expect(r.rows).toEqual([
        { version: 1, name: "init" },
        { version: 2, name: "server" },
        { version: 3, name: "fleet" },
        { version: 4, name: "uploads" },
        { version: 5, name: "pack_seq" },
        { version: 6, name: "restores" },
        { version: 7, name: "layers" },
        { version: 8, name: "targeting" },
      ]);
      const t = await cs[1]!.pool.query(
        "SELECT pg_typeof(id)::text AS t, octet_length(id) AS n FROM blobs LIMIT 1",
      );
      expect(t.rows[0]).toEqual({ t: "bytea", n: 32 });
      for (const c of cs) await c.close();
      // Reopening applies nothing new.
      const again = await openPostgresCatalog(url, { schema });
      expect((await again.hasBlobs(ids)).size).toBe(2);
      await again.close();
    });

    it("bulk entry lists (COPY path) keep first-writer-wins and doomed re-pointing", async () => {
      const c = await openPostgresCatalog(url, { schema: newTestSchema() });
      const n = COPY_THRESHOLD + 500;
      const { p: a, ids } = await addFresh(c, "a", n);
      await c.markPacksDoomed([a.id], new Date());
      const { ids: live } = await addFresh(c, "live", 10);
      // Pack b: half of a's (doomed) blobs, a live one, and new ones, with repeats.
      const bIds = [
        ...ids.slice(0, n / 2),
        live[0]!,
        ...Array.from({ length: n }, (_, i) => blob(`b/${i}`)),
        ids[0]!,
      ];
      const b = pack("b", bIds.length);
      await c.addPack(b, entries(b, bIds));
      const looked = await c.lookupBlobs([ids[0]!, ids[n - 1]!, live[0]!, blob("b/7")]);
      expect(looked.get(ids[0]!)?.packId).toBe(b.id);
      expect(looked.get(ids[n - 1]!)?.packId).toBe(a.id);
      expect(looked.get(live[0]!)?.packId).not.toBe(b.id);
      expect(looked.get(blob("b/7"))?.packId).toBe(b.id);
      // The staging table is reused on the same pooled connection and empty again.
      const m = pack("m", n);
      await c.moveBlobs(m, entries(m, ids.slice(n / 2)));
      expect((await c.packEntries(a.id)).length).toBe(0);
      expect((await c.hasBlobs(ids)).size).toBe(n);
      await c.close();
    });

    it("a failed transaction rolls back completely", async () => {
      const c = await openPostgresCatalog(url, { schema: newTestSchema() });
      const p = pack("bad", 2);
      const es = entries(p, [blob(1), blob(2)]);
      es[1]!.length = 2 ** 40; // overflows int4: the INSERT fails
      await expect(c.addPack(p, es)).rejects.toThrow();
      expect(await c.getPack(p.id)).toBeNull();
      expect((await c.lookupBlobs([blob(1)])).size).toBe(0);
      await c.close();
    });

    it("openCatalog picks PostgreSQL for postgres:// URLs; bad servers give a clear error", async () => {
      const c = await openCatalog(url, { schema: newTestSchema() });
      expect(c).toBeInstanceOf(PostgresCatalog);
      await c.close();
      await expect(openPostgresCatalog("postgres://nobody:secret@127.0.0.1:1/x")).rejects.toThrow(
        /cannot open PostgreSQL catalog postgres:\/\/nobody:\*\*\*@/,
      );
      await expect(openPostgresCatalog(url, { schema: "Bad-Name" })).rejects.toThrow(/schema name/);
    });
  });
});
