-- Strata catalog, SQLite flavour. Same logical schema as
-- migrations/postgres/0001_init.sql; keep the two in step.
--
-- Ids (blob, pack, snapshot, tree) are stored as their 32 raw bytes, not as
-- 64-char hex: half the size in rows and indexes, and memcmp order equals hex
-- order, so a hex prefix search is a plain range scan on the primary key.
-- Times are INTEGER milliseconds since the Unix epoch (what a JS Date holds).
-- Tables keyed by a 32-byte id are WITHOUT ROWID: the row lives in the
-- primary-key b-tree, so a lookup is one b-tree descent and no rowid index.

-- Pack files in the blob store. A pack is 'active' or 'doomed'; prune dooms
-- unused packs and deletes them only after a grace period measured from
-- doomed_at, so a backup that started before the prune can still revive it.
CREATE TABLE packs (
  id         BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
  size       INTEGER NOT NULL,
  blob_count INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  state      TEXT    NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'doomed')),
  doomed_at  INTEGER
) WITHOUT ROWID;

-- The blob index: where each blob lives. One row per blob id (a blob stored
-- in two packs is indexed once; the first writer wins while its pack is
-- active). type: 0 = chunk, 1 = tree (an integer keeps the row small).
-- The foreign key (no cascade) makes "index entry without its pack" impossible;
-- removePacks deletes entries first, explicitly.
CREATE TABLE blobs (
  id         BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
  type       INTEGER NOT NULL CHECK (type IN (0, 1)),
  pack_id    BLOB    NOT NULL REFERENCES packs (id),
  "offset"   INTEGER NOT NULL,
  length     INTEGER NOT NULL,
  raw_length INTEGER NOT NULL,
  compressed INTEGER NOT NULL CHECK (compressed IN (0, 1))
) WITHOUT ROWID;

-- packEntries / removePacks / packUsage go from a pack to its entries;
-- including "offset" returns packEntries already ordered.
CREATE INDEX blobs_pack_offset ON blobs (pack_id, "offset");

-- Snapshots are few (thousands), so lists and stats are stored as JSON text.
CREATE TABLE snapshots (
  id       BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
  time     INTEGER NOT NULL,
  hostname TEXT    NOT NULL,
  paths    TEXT    NOT NULL, -- JSON array of strings
  tags     TEXT    NOT NULL, -- JSON array of strings
  tree     BLOB    NOT NULL,
  parent   BLOB,
  kind     TEXT    NOT NULL,
  stats    TEXT    NOT NULL  -- JSON object (SnapshotStats)
) WITHOUT ROWID;

CREATE INDEX snapshots_time ON snapshots (time, id);

-- Prune's mark set: blob ids reachable from kept snapshots. Lives on disk so
-- memory does not grow with the repository; emptied by beginMark/endMark.
CREATE TABLE marks (
  id BLOB NOT NULL PRIMARY KEY
) WITHOUT ROWID;

-- Leases: named locks with an expiry renewed by heartbeats. One row per
-- (name, holder); rows with expires_at <= now are dead and get replaced.
CREATE TABLE leases (
  name        TEXT    NOT NULL,
  holder      TEXT    NOT NULL,
  mode        TEXT    NOT NULL CHECK (mode IN ('shared', 'exclusive')),
  acquired_at INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL,
  PRIMARY KEY (name, holder)
) WITHOUT ROWID;

-- Repository-wide key/value: config fingerprint, repository id, etc.
CREATE TABLE meta (
  key   TEXT NOT NULL PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
