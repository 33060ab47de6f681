-- Strata catalog, PostgreSQL flavour. Same logical schema as
-- migrations/sqlite/0001_init.sql; keep the two in step.
--
-- Runs inside the migration transaction with search_path set to the target
-- schema, so names are unqualified here.
--
-- Ids (blob, pack, snapshot, tree) are bytea holding the 32 raw bytes, not
-- 64-char hex: half the size in rows and indexes; bytea compares with memcmp,
-- so a hex prefix search is a range scan on the primary key.

-- Pack files in the blob store. Prune dooms unused packs and deletes them only
-- after a grace period measured from doomed_at.
CREATE TABLE packs (
  id         bytea       NOT NULL PRIMARY KEY CHECK (octet_length(id) = 32),
  size       bigint      NOT NULL,
  blob_count integer     NOT NULL,
  created_at timestamptz NOT NULL,
  state      text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'doomed')),
  doomed_at  timestamptz
);

-- The blob index. One row per blob id; the first writer wins while its pack
-- is active. type: 0 = chunk, 1 = tree (smallint keeps the row narrow).
-- The foreign key (no cascade) forbids entries without their pack;
-- removePacks deletes the entries first, explicitly.
CREATE TABLE blobs (
  id         bytea    NOT NULL PRIMARY KEY CHECK (octet_length(id) = 32),
  type       smallint NOT NULL CHECK (type IN (0, 1)),
  pack_id    bytea    NOT NULL REFERENCES packs (id),
  "offset"   bigint   NOT NULL,
  length     integer  NOT NULL,
  raw_length integer  NOT NULL,
  compressed boolean  NOT NULL
);

-- Pack -> entries (packEntries, removePacks, packUsage, and the FK check on
-- pack delete); including "offset" returns packEntries already ordered.
CREATE INDEX blobs_pack_offset ON blobs (pack_id, "offset");

-- Snapshots are few (thousands); lists and stats are jsonb.
CREATE TABLE snapshots (
  id       bytea       NOT NULL PRIMARY KEY CHECK (octet_length(id) = 32),
  time     timestamptz NOT NULL,
  hostname text        NOT NULL,
  paths    jsonb       NOT NULL,
  tags     jsonb       NOT NULL,
  tree     bytea       NOT NULL,
  parent   bytea,
  kind     text        NOT NULL,
  stats    jsonb       NOT NULL
);

CREATE INDEX snapshots_time ON snapshots (time, id);

-- Prune's mark set. UNLOGGED: no WAL for a table that is rebuilt from scratch
-- by every prune (a crash empties it, and prune starts over anyway).
CREATE UNLOGGED TABLE marks (
  id bytea NOT NULL PRIMARY KEY
);

-- Leases: named locks with an expiry renewed by heartbeats. One row per
-- (name, holder). Acquisition is serialized per name with a transaction-level
-- advisory lock, so two nodes cannot both see "free" and both take it.
CREATE TABLE leases (
  name        text        NOT NULL,
  holder      text        NOT NULL,
  mode        text        NOT NULL CHECK (mode IN ('shared', 'exclusive')),
  acquired_at timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL,
  PRIMARY KEY (name, holder)
);

-- Repository-wide key/value: config fingerprint, repository id, etc.
CREATE TABLE meta (
  key   text NOT NULL PRIMARY KEY,
  value text NOT NULL
);
