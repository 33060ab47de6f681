-- Smaller blob index: each pack gets a small integer key (`seq`, the rowid)
-- and index entries point at it instead of repeating the pack's 32-byte id.
-- Same logical schema as migrations/postgres/0005_pack_seq.sql.
--
-- An index entry appears twice on disk (the blobs b-tree, keyed by blob id,
-- and blobs_pack_offset, keyed by pack and offset), so the 32-byte pack id
-- cost 64 bytes per blob: ~1/3 of catalog.db (measured: 178 -> ~110 bytes
-- per blob on data set B of docs/benchmarks.md). The pack id stays the
-- packs table's natural key (UNIQUE); seq is internal to the catalog and
-- never leaves it. Applies after 0001..0004 on an existing catalog: it only
-- rebuilds packs and blobs.

CREATE TABLE packs_seq (
  seq        INTEGER NOT NULL PRIMARY KEY,
  id         BLOB    NOT NULL UNIQUE CHECK (length(id) = 32),
  size       INTEGER NOT NULL,
  blob_count INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  state      TEXT    NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'doomed')),
  doomed_at  INTEGER
);

INSERT INTO packs_seq (id, size, blob_count, created_at, state, doomed_at)
  SELECT id, size, blob_count, created_at, state, doomed_at FROM packs ORDER BY created_at, id;

-- pack: packs.seq. The foreign key (no cascade) still forbids an entry
-- without its pack; removePacks deletes entries first.
CREATE TABLE blobs_seq (
  id         BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
  type       INTEGER NOT NULL CHECK (type IN (0, 1)),
  pack       INTEGER NOT NULL REFERENCES packs_seq (seq),
  "offset"   INTEGER NOT NULL,
  length     INTEGER NOT NULL,
  raw_length INTEGER NOT NULL,
  compressed INTEGER NOT NULL CHECK (compressed IN (0, 1))
) WITHOUT ROWID;

INSERT INTO blobs_seq (id, type, pack, "offset", length, raw_length, compressed)
  SELECT b.id, b.type, p.seq, b."offset", b.length, b.raw_length, b.compressed
  FROM blobs b JOIN packs_seq p ON p.id = b.pack_id;

DROP INDEX blobs_pack_offset;
DROP TABLE blobs;
DROP TABLE packs;
ALTER TABLE packs_seq RENAME TO packs;
ALTER TABLE blobs_seq RENAME TO blobs;

-- packEntries / removePacks / packUsage go from a pack to its entries;
-- including "offset" returns packEntries already ordered.
CREATE INDEX blobs_pack_offset ON blobs (pack, "offset");
