-- Restore sessions and tasks (docs/design/restore.md, "Protocol" and
-- "Tasks"). Same logical schema as migrations/postgres/0006_restores.sql.

-- One row per restore session: a transaction of kind restore. The server
-- keeps no other state for a session (grants are HMACs it recomputes), so
-- any node serves any request of it. root is the tree the session was
-- opened on (the snapshot's root, or the directory `path` named); the
-- counters are what the server sent.
CREATE TABLE restore_sessions (
  id          TEXT    NOT NULL PRIMARY KEY,
  cvd_id      TEXT    NOT NULL,
  snapshot    BLOB    NOT NULL CHECK (length(snapshot) = 32),
  root        BLOB    NOT NULL CHECK (length(root) = 32),
  path        TEXT,
  -- "endpoint:ep_…" or "user:NAME"
  opened_by   TEXT    NOT NULL,
  state       TEXT    NOT NULL CHECK (state IN ('open', 'closed', 'expired')),
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL,
  closed_at   INTEGER,
  bytes_sent  INTEGER NOT NULL DEFAULT 0,
  chunks_sent INTEGER NOT NULL DEFAULT 0,
  trees_sent  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX restore_sessions_cvd ON restore_sessions (cvd_id, created_at);
CREATE INDEX restore_sessions_open ON restore_sessions (expires_at) WHERE state = 'open';

-- Tasks the server queues for an endpoint (a revert, a recovery). No
-- foreign keys: a task is history and outlives its endpoint. params,
-- progress, result and error are JSON (progress is the agent's last
-- report, never trusted for decisions). At most one task per CVD is queued
-- or running: two restores of one machine at once make no sense.
CREATE TABLE tasks (
  id          TEXT    NOT NULL PRIMARY KEY,
  cvd_id      TEXT    NOT NULL,
  endpoint_id TEXT    NOT NULL,
  kind        TEXT    NOT NULL CHECK (kind IN ('system', 'full', 'recover', 'files')),
  params      TEXT    NOT NULL DEFAULT '{}',
  state       TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
  progress    TEXT,
  result      TEXT,
  error       TEXT,
  created_by  TEXT    NOT NULL,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  started_at  INTEGER,
  finished_at INTEGER
);

CREATE INDEX tasks_endpoint ON tasks (endpoint_id, state);
CREATE INDEX tasks_cvd ON tasks (cvd_id, created_at);
CREATE INDEX tasks_created ON tasks (created_at);
CREATE UNIQUE INDEX tasks_active ON tasks (cvd_id) WHERE state IN ('queued', 'running');
