-- Upload sessions of the agent protocol (docs/design/protocol.md). Same
-- logical schema as migrations/postgres/0004_uploads.sql.

-- Blobs kept alive by a holder (an open upload session: the chunks it
-- possesses and the trees it uploaded). Prune marks them like blobs of a
-- snapshot, so an upload that runs for days never loses what it sent.
CREATE TABLE pins (
  holder TEXT NOT NULL,
  id     BLOB NOT NULL CHECK (length(id) = 32),
  PRIMARY KEY (holder, id)
) WITHOUT ROWID;

CREATE INDEX pins_id ON pins (id);

-- One row per upload session; a committed or aborted session is the
-- transaction record (counters are the server's own, not the agent's).
CREATE TABLE upload_sessions (
  id              TEXT    NOT NULL PRIMARY KEY,
  cvd_id          TEXT    NOT NULL,
  parent          BLOB,
  nonce           BLOB    NOT NULL,
  kind            TEXT    NOT NULL,
  state           TEXT    NOT NULL CHECK (state IN ('open', 'committed', 'aborted', 'expired')),
  idempotency_key TEXT,
  created_at      INTEGER NOT NULL,
  updated_at      INTEGER NOT NULL,
  expires_at      INTEGER NOT NULL,
  finished_at     INTEGER,
  snapshot        BLOB,
  chunks_sent     INTEGER NOT NULL DEFAULT 0,
  chunks_proven   INTEGER NOT NULL DEFAULT 0,
  trees_uploaded  INTEGER NOT NULL DEFAULT 0,
  bytes_received  INTEGER NOT NULL DEFAULT 0,
  failed_proofs   INTEGER NOT NULL DEFAULT 0,
  resumes         INTEGER NOT NULL DEFAULT 0,
  report          TEXT -- JSON: the agent's stats and errors at commit
);

-- At most one open session per CVD.
CREATE UNIQUE INDEX upload_sessions_open ON upload_sessions (cvd_id) WHERE state = 'open';
CREATE INDEX upload_sessions_cvd ON upload_sessions (cvd_id, created_at);

-- Trees uploaded in a session, by the path they were uploaded at (the
-- SHA-256 of the raw snapshot path): a parent tree may reference them there.
CREATE TABLE upload_trees (
  session_id TEXT NOT NULL,
  path_hash  BLOB NOT NULL CHECK (length(path_hash) = 32),
  tree       BLOB NOT NULL CHECK (length(tree) = 32),
  PRIMARY KEY (session_id, path_hash, tree)
) WITHOUT ROWID;
