import type { BlobId, PackId } from "@strata/core";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { loadMigrations } from "../src/common.js";
import { COPY_THRESHOLD, openCatalog, openPostgresCatalog, PostgresCatalog } from "../src/index.js";
import { addFresh, blob, entries, expectMigratedEntries, hid, pack, runCatalogContract } from "./contract.js";
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
        { version: 9, name: "blobs_no_pack_index" },
        { version: 10, name: "autoassign" },
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
      expect((await c.packEntries([a.id])).length).toBe(0);
      expect((await c.hasBlobs(ids)).size).toBe(n);
      await c.close();
    });

    it("migration 0009 drops the (pack, offset) index and the foreign key, keeping every entry", async () => {
      const schema = newTestSchema();
      const db = new pg.Client({ connectionString: url });
      await db.connect();
      const hex = (c: string) => c.repeat(64);
      const packs = [hex("a"), hex("b")] as PackId[];
      const n = 3000;
      const ids = Array.from({ length: n }, (_, i) => hid(`m9/${i}`) as BlobId);
      try {
        await db.query(`CREATE SCHEMA "${schema}"`);
        await db.query(`SET search_path TO "${schema}"`);
        await db.query(`CREATE TABLE schema_migrations (
          version integer NOT NULL PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
        for (const m of loadMigrations("postgres").filter((m) => m.version < 9)) {
          await db.query(m.sql);
          await db.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [
            m.version,
            m.name,
          ]);
        }
        for (const [i, p] of packs.entries()) {
          await db.query(
            "INSERT INTO packs (id, size, blob_count, created_at, state, doomed_at) VALUES ($1, 100, 2, $2, $3, $4)",
            [
              Buffer.from(p, "hex"),
              new Date(1000 + i),
              i === 0 ? "active" : "doomed",
              i === 0 ? null : new Date(5000),
            ],
          );
        }
        await db.query(
          `INSERT INTO blobs (id, type, pack, "offset", length, raw_length, compressed)
           SELECT decode(u.id, 'hex'), CASE WHEN u.i % 7 = 0 THEN 1 ELSE 0 END,
                  (SELECT seq FROM packs WHERE id = decode(CASE WHEN u.i % 2 = 0 THEN $2 ELSE $3 END, 'hex')),
                  u.i * 10, 10, 20 + u.i, u.i % 2 = 1
           FROM (SELECT x.id, (x.o - 1)::int AS i FROM unnest($1::text[]) WITH ORDINALITY AS x (id, o)) u`,
          [ids, packs[0], packs[1]],
        );
      } finally {
        await db.end();
      }

      const c = await openPostgresCatalog(url, { schema });
      await expectMigratedEntries(c, ids, packs);
      const idx = await c.pool.query(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'blobs' ORDER BY indexname",
        [schema],
      );
      expect(idx.rows.map((r) => r.indexname)).toEqual(["blobs_pkey"]);
      const fk = await c.pool.query(
        "SELECT count(*)::int AS n FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f'",
        [`"${schema}".blobs`],
      );
      expect(fk.rows[0].n).toBe(0);
      await c.close();
    });

    it("packUsage reads through a cursor on one connection and gives it back, also when left early", async () => {
      const c = await openPostgresCatalog(url, { schema: newTestSchema(), maxConnections: 2 });
      for (let i = 0; i < 3; i++) await addFresh(c, `u${i}`, 2);
      for (let round = 0; round < 5; round++) {
        for await (const u of c.packUsage()) {
          expect(u.blobCount).toBe(2);
          break; // the connection must come back (else the pool of 2 runs dry)
        }
      }
      // Other queries run while an iteration is open.
      const seen = [];
      for await (const u of c.packUsage()) {
        seen.push(u.packId);
        expect((await c.getPack(u.packId))?.blobCount).toBe(2);
      }
      expect(seen).toHaveLength(3);
      expect(c.pool.totalCount - c.pool.idleCount).toBe(0);
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
