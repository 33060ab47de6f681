import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BlobId, PackId } from "@strata/core";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { loadMigrations } from "../src/common.js";
import {
  FILE_CACHE_FLUSH_BYTES,
  FILE_CACHE_FLUSH_EVERY,
  openCatalog,
  openSqliteCatalog,
  openSqliteFileCache,
  SqliteCatalog,
} from "../src/index.js";
import { addFresh, expectMigratedEntries, hid, runCatalogContract } from "./contract.js";

const dir = mkdtempSync(join(tmpdir(), "strata-catalog-"));
let n = 0;
const file = (name = "catalog") => join(dir, `${name}-${process.pid}-${n++}.db`);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runCatalogContract("sqlite", () => openSqliteCatalog(file()));

describe("SqliteCatalog specifics", () => {
  // fincore (util-linux) tells how much of a file is in the page cache; dd's iflag=nocache drops it.
  const fincore = spawnSync("fincore", ["--version"]).status === 0;
  it.skipIf(!fincore)(
    "warm reads the whole catalog into the page cache (fincore: needs util-linux)",
    async () => {
      const path = file("warm");
      const c = await openSqliteCatalog(path);
      await addFresh(c, "w", 5000);
      await c.close();
      const resident = () =>
        execFileSync("fincore", ["--bytes", "--noheadings", "--raw", "-o", "RES,SIZE", path], {
          encoding: "utf8",
        })
          .trim()
          .split(/\s+/)
          .map(Number) as [number, number];
      execFileSync("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]);
      const [before, size] = resident();
      expect(size).toBeGreaterThan(256 * 1024);
      expect(before).toBeLessThan(size / 2);
      const again = await openSqliteCatalog(path);
      try {
        await again.warm();
        expect(resident()[0]).toBe(size);
        // A second call shares the first read; a missing WAL is no error.
        await again.warm();
        const fresh = await openSqliteCatalog(file("fresh"));
        await expect(fresh.warm()).resolves.toBeUndefined();
        await fresh.close();
      } finally {
        await again.close();
      }
    },
  );

  it("creates the file with WAL, runs migrations once, and keeps data across reopen", async () => {
    const path = join(dir, "sub", "dir", "c.db");
    const c = await openSqliteCatalog(path);
    const { ids } = await addFresh(c, "a", 3);
    await c.setMeta("k", "v");
    await c.close();
    await c.close(); // idempotent

    const c2 = await openSqliteCatalog(path);
    expect((await c2.hasBlobs(ids)).size).toBe(3);
    expect(await c2.getMeta("k")).toBe("v");
    await c2.close();

    const db = new Database(path, { readonly: true });
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(db.prepare("SELECT version, name FROM schema_migrations ORDER BY version").all()).toEqual([
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
    expect(db.prepare("SELECT typeof(id) AS t, length(id) AS n FROM blobs LIMIT 1").get()).toEqual({
      t: "blob",
      n: 32,
    });
    db.close();
  });

  it("migration 0005 re-points an existing index at integer pack keys, losing nothing", async () => {
    const path = file();
    const db = new Database(path);
    db.exec(`CREATE TABLE schema_migrations (
      version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
    for (const m of loadMigrations("sqlite").filter((m) => m.version < 5)) {
      db.exec(m.sql);
      db.prepare("INSERT INTO schema_migrations VALUES (?, ?, 0)").run(m.version, m.name);
    }
    const hex = (c: string) => c.repeat(64);
    const packs = [hex("a"), hex("b")];
    for (const [i, p] of packs.entries()) {
      db.prepare("INSERT INTO packs VALUES (?, 100, 2, ?, ?, ?)").run(
        Buffer.from(p, "hex"),
        1000 + i,
        i === 0 ? "active" : "doomed",
        i === 0 ? null : 5000,
      );
    }
    const blobs = [
      [hex("1"), 0, packs[0], 0, 40, 50, 1],
      [hex("2"), 1, packs[0], 40, 60, 60, 0],
      [hex("3"), 0, packs[1], 0, 70, 90, 1],
    ] as const;
    for (const [id, type, pack, off, len, raw, comp] of blobs) {
      db.prepare("INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)").run(
        Buffer.from(id, "hex"),
        type,
        Buffer.from(pack, "hex"),
        off,
        len,
        raw,
        comp,
      );
    }
    db.close();

    const c = await openSqliteCatalog(path);
    const found = await c.lookupBlobs(blobs.map((b) => b[0] as BlobId));
    expect([...found.values()].sort((x, y) => x.id.localeCompare(y.id))).toEqual(
      blobs.map(([id, type, pack, offset, length, rawLength, comp]) => ({
        id,
        type: type === 1 ? "tree" : "chunk",
        packId: pack,
        offset,
        length,
        rawLength,
        compressed: comp === 1,
      })),
    );
    expect(await c.hasBlobs(blobs.map((b) => b[0] as BlobId))).toEqual(new Set([hex("1"), hex("2")]));
    expect((await c.packEntries([packs[0] as PackId])).map((e) => e.id)).toEqual([hex("1"), hex("2")]);
    expect((await c.getPack(packs[1] as PackId))?.doomedAt).toEqual(new Date(5000));
    await c.removePacks([packs[1] as PackId]);
    expect((await c.lookupBlobs([hex("3") as BlobId])).size).toBe(0);
    await c.close();
  });

  it("migration 0009 drops the (pack, offset) index and the foreign key, keeping every entry", async () => {
    const path = file();
    const db = new Database(path);
    db.exec(`CREATE TABLE schema_migrations (
      version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
    for (const m of loadMigrations("sqlite").filter((m) => m.version < 9)) {
      db.exec(m.sql);
      db.prepare("INSERT INTO schema_migrations VALUES (?, ?, 0)").run(m.version, m.name);
    }
    expect(db.prepare("SELECT count(*) FROM pragma_foreign_key_list('blobs')").pluck().get()).toBe(1);
    const hex = (c: string) => c.repeat(64);
    const packs = [hex("a"), hex("b")] as PackId[];
    for (const [i, p] of packs.entries()) {
      db.prepare(
        "INSERT INTO packs (id, size, blob_count, created_at, state, doomed_at) VALUES (?, 100, 2, ?, ?, ?)",
      ).run(Buffer.from(p, "hex"), 1000 + i, i === 0 ? "active" : "doomed", i === 0 ? null : 5000);
    }
    const seq = (p: string) =>
      db.prepare("SELECT seq FROM packs WHERE id = ?").pluck().get(Buffer.from(p, "hex")) as number;
    // Many entries, so that the rebuilt table spans many pages.
    const n = 3000;
    const ids = Array.from({ length: n }, (_, i) => hid(`m9/${i}`) as BlobId);
    const insert = db.prepare("INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)");
    db.transaction(() => {
      ids.forEach((id, i) => {
        insert.run(
          Buffer.from(id, "hex"),
          i % 7 === 0 ? 1 : 0,
          seq(packs[i % 2]!),
          i * 10,
          10,
          20 + i,
          i % 2,
        );
      });
    })();
    db.close();

    const c = await openSqliteCatalog(path);
    await expectMigratedEntries(c, ids, packs);
    await c.close();

    const after = new Database(path, { readonly: true });
    expect(
      after.prepare("SELECT name FROM sqlite_master WHERE tbl_name = 'blobs' AND type = 'index'").all(),
    ).toEqual([]);
    expect(after.prepare("SELECT count(*) FROM pragma_foreign_key_list('blobs')").pluck().get()).toBe(0);
    expect(after.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'blobs_0009'").pluck().get()).toBe(
      0,
    );
    after.close();
  });

  it("never scans the index once per pack: pack→entries statements read blobs once, as the outer loop", async () => {
    const c = await openSqliteCatalog(file());
    await addFresh(c, "a", 3);
    const { db, s: st } = c as unknown as { db: Database.Database; s: Record<string, Database.Statement> };
    for (const name of ["packEntries", "deleteEntriesOfPacks", "fillUsage"]) {
      const plan = (
        db.prepare(`EXPLAIN QUERY PLAN ${st[name]!.source}`).all(...(name === "fillUsage" ? [] : ["[]"])) as {
          id: number;
          parent: number;
          detail: string;
        }[]
      ).map((r) => r.detail);
      // blobs has no index on pack (0009): one full scan, never nested inside a loop over packs.
      expect(
        plan.filter((d) => /^SCAN (b|blobs)\b/.test(d)),
        `${name}: ${plan.join(" | ")}`,
      ).toHaveLength(1);
      const scanAt = plan.findIndex((d) => /^SCAN (b|blobs)\b/.test(d));
      expect(
        plan.slice(0, scanAt).some((d) => /^(SCAN|SEARCH) (p|packs)\b/.test(d)),
        `${name}: ${plan.join(" | ")}`,
      ).toBe(false);
    }
    await c.close();
  });

  it("refuses a catalog whose schema is newer than the program", async () => {
    const path = file();
    await (await openSqliteCatalog(path)).close();
    const db = new Database(path);
    db.prepare("INSERT INTO schema_migrations VALUES (999, 'future', 0)").run();
    db.close();
    await expect(openSqliteCatalog(path)).rejects.toThrow(/newer/);
  });

  it("openCatalog picks SQLite for paths and sqlite: specs", async () => {
    const a = await openCatalog(file());
    const b = await openCatalog(`sqlite:${file()}`);
    expect(a).toBeInstanceOf(SqliteCatalog);
    expect(b).toBeInstanceOf(SqliteCatalog);
    await a.close();
    await b.close();
  });

  it("two connections to one file see each other's writes and share leases", async () => {
    const path = file();
    const a = await openSqliteCatalog(path);
    const b = await openSqliteCatalog(path);
    const { ids } = await addFresh(a, "x", 2);
    expect((await b.hasBlobs(ids)).size).toBe(2);
    const t = new Date();
    const l = {
      name: "repo",
      holder: "a",
      mode: "exclusive" as const,
      acquiredAt: t,
      expiresAt: new Date(t.getTime() + 1000),
    };
    expect(await a.acquireLease(l, t)).toBe(true);
    expect(await b.acquireLease({ ...l, holder: "b", mode: "shared" }, t)).toBe(false);
    await a.close();
    await b.close();
  });
});

describe("SqliteFileCache", () => {
  const key = (s: string) => Buffer.from(s, "latin1");

  it("stores directories by raw path bytes and reads its own buffered writes", () => {
    const path = file("cache");
    const fc = openSqliteFileCache(path);
    const odd = Buffer.from([0x2f, 0x66, 0xff, 0xfe, 0x00, 0x80]); // not UTF-8, with NUL
    fc.beginRun();
    expect(fc.getDir(odd)).toBeNull();
    fc.putDir(odd, { data: Buffer.from("one") });
    fc.putDir(key("/etc"), { data: Buffer.from("etc") });
    expect(fc.getDir(odd)?.data.toString()).toBe("one"); // before any flush
    fc.endRun();
    fc.close();
    fc.close(); // idempotent

    const again = openSqliteFileCache(path);
    expect(again.getDir(odd)?.data.toString()).toBe("one");
    expect(again.getDir(Buffer.from([0x2f, 0x66, 0xff, 0xfe, 0x00]))).toBeNull();
    expect(again.getDir(key("/etc"))?.data.toString()).toBe("etc");
    again.close();
  });

  it("endRun drops directories neither read nor written in the run", () => {
    const path = file("cache");
    const fc = openSqliteFileCache(path);
    fc.beginRun();
    for (const d of ["/a", "/b", "/c", "/d"]) fc.putDir(key(d), { data: Buffer.from(d) });
    fc.endRun();

    fc.beginRun();
    expect(fc.getDir(key("/a"))?.data.toString()).toBe("/a"); // seen by reading
    fc.putDir(key("/b"), { data: Buffer.from("/b2") }); // seen by writing
    fc.putDir(key("/e"), { data: Buffer.from("/e") }); // new
    fc.endRun(); // /c and /d vanished
    fc.close();

    const again = openSqliteFileCache(path);
    expect(again.getDir(key("/a"))?.data.toString()).toBe("/a");
    expect(again.getDir(key("/b"))?.data.toString()).toBe("/b2");
    expect(again.getDir(key("/c"))).toBeNull();
    expect(again.getDir(key("/d"))).toBeNull();
    expect(again.getDir(key("/e"))?.data.toString()).toBe("/e");
    again.close();
  });

  it("a partial run (endRun without sweep) keeps the rows it did not touch, and completes its generation", () => {
    const fc = openSqliteFileCache(file("cache-partial"));
    fc.beginRun();
    for (const d of ["/a", "/b"]) fc.putDir(key(d), { data: Buffer.from(d) });
    fc.endRun();
    const first = fc.completedGen();
    fc.beginRun();
    fc.putDir(key("/a"), { data: Buffer.from("/a2") });
    fc.endRun({ sweep: false });
    expect(fc.completedGen()).toBe(first + 1);
    expect(fc.getDir(key("/b"))).toMatchObject({ gen: first }); // untouched, older, still there
    expect(fc.getDir(key("/a"))).toMatchObject({ gen: first + 1 });
    // The next full run sweeps what it did not see.
    fc.beginRun();
    fc.getDir(key("/a"));
    fc.endRun();
    expect(fc.getDir(key("/b"))).toBeNull();
    fc.close();
  });

  it("records the generation of completed runs; rows of an unfinished run are newer", () => {
    const path = file("cache");
    const fc = openSqliteFileCache(path);
    expect(fc.completedGen()).toBe(0);
    fc.beginRun();
    fc.putDir(key("/done"), { data: Buffer.from("x") });
    fc.endRun();
    const done = fc.completedGen();
    expect(done).toBeGreaterThan(0);
    expect(fc.getDir(key("/done"))?.gen).toBe(done);
    fc.beginRun(); // a run that never ends (killed)
    fc.putDir(key("/killed"), { data: Buffer.from("y") });
    fc.flush();
    fc.close();
    const again = openSqliteFileCache(path);
    expect(again.completedGen()).toBe(done);
    expect(again.getDir(key("/killed"))?.gen).toBeGreaterThan(done);
    again.setMeta("data.epoch", "e1");
    expect(again.getMeta("data.epoch")).toBe("e1");
    again.setMeta("data.epoch", "0"); // numeric-looking strings stay strings
    expect(again.getMeta("data.epoch")).toBe("0");
    expect(again.getMeta("missing")).toBeNull();
    again.close();
  });

  it("copies the caller's buffer and survives many writes across flushes", () => {
    const path = file("cache");
    const fc = openSqliteFileCache(path);
    fc.beginRun();
    const buf = Buffer.from("orig");
    fc.putDir(key("/x"), { data: buf });
    buf.write("XXXX");
    const N = FILE_CACHE_FLUSH_EVERY * 3 + 17;
    for (let i = 0; i < N; i++) fc.putDir(key(`/d/${i}`), { data: Buffer.alloc(64, i & 0xff) });
    fc.endRun();
    fc.close();

    const db = new Database(path, { readonly: true });
    expect(db.prepare("SELECT count(*) FROM dirs").pluck().get()).toBe(N + 1);
    db.close();
    const again = openSqliteFileCache(path);
    expect(again.getDir(key("/x"))?.data.toString()).toBe("orig");
    // A run that reads everything keeps everything.
    again.beginRun();
    for (let i = 0; i < N; i++) expect(again.getDir(key(`/d/${i}`))?.data[0]).toBe(i & 0xff);
    again.endRun();
    again.beginRun();
    again.endRun(); // nothing touched: everything goes
    expect(again.getDir(key("/d/1"))).toBeNull();
    again.close();
  });

  it("flushes by bytes too: large directory rows are never all held in memory", () => {
    const path = file("cache-bytes");
    const fc = openSqliteFileCache(path);
    fc.beginRun();
    // 300 rows of 256 KiB (a 2,000-file directory's row is about that): far
    // fewer rows than FILE_CACHE_FLUSH_EVERY, 75 MiB in all.
    const row = 256 * 1024;
    let peak = 0;
    for (let i = 0; i < 300; i++) {
      fc.putDir(key(`/big/${i}`), { data: Buffer.alloc(row, i & 0xff) });
      peak = Math.max(peak, fc.buffered.bytes);
    }
    expect(peak).toBeLessThan(FILE_CACHE_FLUSH_BYTES + row);
    // Rewriting a buffered row counts its new size only.
    fc.flush();
    fc.putDir(key("/big/0"), { data: Buffer.alloc(10) });
    fc.putDir(key("/big/0"), { data: Buffer.alloc(30) });
    expect(fc.buffered).toEqual({ rows: 1, bytes: 30 });
    fc.endRun();
    expect(fc.buffered).toEqual({ rows: 0, bytes: 0 });
    fc.close();
    const db = new Database(path, { readonly: true });
    expect(db.prepare("SELECT count(*) FROM dirs").pluck().get()).toBe(300);
    db.close();
  });

  it("a crash before endRun deletes nothing", () => {
    const path = file("cache");
    const fc = openSqliteFileCache(path);
    fc.beginRun();
    fc.putDir(key("/keep"), { data: Buffer.from("k") });
    fc.endRun();
    fc.beginRun();
    fc.putDir(key("/new"), { data: Buffer.from("n") });
    fc.close(); // no endRun: flushes, sweeps nothing
    const again = openSqliteFileCache(path);
    expect(again.getDir(key("/keep"))?.data.toString()).toBe("k");
    expect(again.getDir(key("/new"))?.data.toString()).toBe("n");
    again.close();
  });
});
