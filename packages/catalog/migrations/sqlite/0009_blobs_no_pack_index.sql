-- Smaller blob index: drop blobs_pack_offset (pack, offset) and the foreign
-- key blobs.pack -> packs.seq. Same logical schema as
-- migrations/postgres/0009_blobs_no_pack_index.sql.
--
-- The index repeated every entry (pack, offset and the 32-byte blob id it
-- carries as the table's key): ~50 of the ~108 bytes per blob of catalog.db
-- on data set B of docs/benchmarks.md. Nothing needs a pack's entries often
-- enough to keep it (docs/design/repository-format.md, "Index and catalog"):
-- prune aggregates per pack in one scan of blobs (packUsage) and removes
-- packs in batches (one scan per batch); repack and check take a pack's
-- entries from its own header and look them up by id. Without an index on
-- blobs.pack the foreign key would make every deleted pack row scan blobs,
-- so it goes too; removePacks still deletes a pack's entries before the
-- pack row, in one transaction, and addPack/moveBlobs insert the pack
-- first. SQLite cannot drop a foreign key in place: the table is rebuilt
-- (in blob id order, so its pages come out full).

CREATE TABLE blobs_0009 (
  id         BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
  type       INTEGER NOT NULL CHECK (type IN (0, 1)),
  pack       INTEGER NOT NULL, -- packs.seq
  "offset"   INTEGER NOT NULL,
  length     INTEGER NOT NULL,
  raw_length INTEGER NOT NULL,
  compressed INTEGER NOT NULL CHECK (compressed IN (0, 1))
) WITHOUT ROWID;

INSERT INTO blobs_0009 (id, type, pack, "offset", length, raw_length, compressed)
  SELECT id, type, pack, "offset", length, raw_length, compressed FROM blobs ORDER BY id;

DROP INDEX blobs_pack_offset;
DROP TABLE blobs;
ALTER TABLE blobs_0009 RENAME TO blobs;
