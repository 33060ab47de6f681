-- Upload sessions of the agent protocol (docs/design/protocol.md). Same
-- logical schema as migrations/sqlite/0004_uploads.sql.

-- Blobs kept alive by a holder (an open upload session). Prune marks them.
CREATE TABLE pins (
  holder text  NOT NULL,
  id     bytea NOT NULL CHECK (length(id) = 32),
  PRIMARY KEY (holder, id)
);

CREATE INDEX pins_id ON pins (id);

CREATE TABLE upload_sessions (
  id              text        NOT NULL PRIMARY KEY,
  cvd_id          text        NOT NULL,
  parent          bytea,
  nonce           bytea       NOT NULL,
  kind            text        NOT NULL,
  state           text        NOT NULL CHECK (state IN ('open', 'committed', 'aborted', 'expired')),
  idempotency_key text,
  created_at      timestamptz NOT NULL,
  updated_at      timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL,
  finished_at     timestamptz,
  snapshot        bytea,
  chunks_sent     bigint      NOT NULL DEFAULT 0,
  chunks_proven   bigint      NOT NULL DEFAULT 0,
  trees_uploaded  bigint      NOT NULL DEFAULT 0,
  bytes_received  bigint      NOT NULL DEFAULT 0,
  failed_proofs   bigint      NOT NULL DEFAULT 0,
  resumes         integer     NOT NULL DEFAULT 0,
  report          jsonb
);

CREATE UNIQUE INDEX upload_sessions_open ON upload_sessions (cvd_id) WHERE state = 'open';
CREATE INDEX upload_sessions_cvd ON upload_sessions (cvd_id, created_at);

CREATE TABLE upload_trees (
  session_id text  NOT NULL,
  path_hash  bytea NOT NULL CHECK (length(path_hash) = 32),
  tree       bytea NOT NULL CHECK (length(tree) = 32),
  PRIMARY KEY (session_id, path_hash, tree)
);
