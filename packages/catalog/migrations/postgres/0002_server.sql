-- Management server: accounts, roles, API tokens and the audit log.
-- Same logical schema as migrations/sqlite/0002_server.sql; keep in step.
-- Enrollment tokens, endpoints, CVDs and policies come in later migrations.

-- Roles are named permission sets. Built-in roles are written by the server
-- at every start from the table in code; custom roles are the
-- administrators'. permissions is a JSON array of permission names.
CREATE TABLE roles (
  name        text    NOT NULL PRIMARY KEY,
  builtin     boolean NOT NULL DEFAULT false,
  permissions jsonb   NOT NULL DEFAULT '[]'
);

-- One row per account. password_hash is self-describing
-- ("scrypt$N$r$p$salt$hash"). A user's role must exist.
CREATE TABLE users (
  id                   text        NOT NULL PRIMARY KEY,
  name                 text        NOT NULL UNIQUE,
  password_hash        text        NOT NULL,
  role                 text        NOT NULL REFERENCES roles (name),
  created_at           timestamptz NOT NULL,
  disabled             boolean     NOT NULL DEFAULT false,
  must_change_password boolean     NOT NULL DEFAULT false
);

-- API tokens: only the SHA-256 of the secret is stored; lookups go by it.
CREATE TABLE api_tokens (
  id           text        NOT NULL PRIMARY KEY,
  user_id      text        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  token_hash   text        NOT NULL UNIQUE,
  name         text        NOT NULL,
  created_at   timestamptz NOT NULL,
  expires_at   timestamptz,
  last_used_at timestamptz
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- Append-only audit log; actor is the user name, detail never holds a secret.
CREATE TABLE audit (
  id          bigserial   NOT NULL PRIMARY KEY,
  at          timestamptz NOT NULL,
  actor       text        NOT NULL,
  action      text        NOT NULL,
  object      text        NOT NULL,
  detail      jsonb       NOT NULL DEFAULT '{}',
  remote_addr text        NOT NULL
);

CREATE INDEX audit_at ON audit (at, id);
CREATE INDEX audit_actor ON audit (actor, id);
