-- Restore sessions and tasks (docs/design/restore.md, "Protocol" and
-- "Tasks"). Same logical schema as migrations/sqlite/0006_restores.sql,
-- where the reasoning is written down.

CREATE TABLE restore_sessions (
  id          text        NOT NULL PRIMARY KEY,
  cvd_id      text        NOT NULL,
  snapshot    bytea       NOT NULL CHECK (length(snapshot) = 32),
  root        bytea       NOT NULL CHECK (length(root) = 32),
  path        text,
  opened_by   text        NOT NULL,
  state       text        NOT NULL CHECK (state IN ('open', 'closed', 'expired')),
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL,
  closed_at   timestamptz,
  bytes_sent  bigint      NOT NULL DEFAULT 0,
  chunks_sent bigint      NOT NULL DEFAULT 0,
  trees_sent  bigint      NOT NULL DEFAULT 0
);

CREATE INDEX restore_sessions_cvd ON restore_sessions (cvd_id, created_at);
CREATE INDEX restore_sessions_open ON restore_sessions (expires_at) WHERE state = 'open';

CREATE TABLE tasks (
  id          text        NOT NULL PRIMARY KEY,
  cvd_id      text        NOT NULL,
  endpoint_id text        NOT NULL,
  kind        text        NOT NULL CHECK (kind IN ('system', 'full', 'recover', 'files')),
  params      jsonb       NOT NULL DEFAULT '{}',
  state       text        NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
  progress    jsonb,
  result      jsonb,
  error       jsonb,
  created_by  text        NOT NULL,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL,
  started_at  timestamptz,
  finished_at timestamptz
);

CREATE INDEX tasks_endpoint ON tasks (endpoint_id, state);
CREATE INDEX tasks_cvd ON tasks (cvd_id, created_at);
CREATE INDEX tasks_created ON tasks (created_at);
CREATE UNIQUE INDEX tasks_active ON tasks (cvd_id) WHERE state IN ('queued', 'running');
