-- Management server: accounts, roles, API tokens and the audit log.
-- Same logical schema as migrations/postgres/0002_server.sql; keep in step.
-- Enrollment tokens, endpoints, CVDs and policies come in later migrations.

-- Roles are named permission sets. Built-in roles (builtin = 1) are written
-- by the server at every start from the table in code, so a new release can
-- extend them; custom roles are the administrators'. permissions is a JSON
-- array of permission names: roles are few and always read whole.
CREATE TABLE roles (
  name        TEXT    NOT NULL PRIMARY KEY,
  builtin     INTEGER NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
  permissions TEXT    NOT NULL DEFAULT '[]'
);

-- One row per account. password_hash is self-describing
-- ("scrypt$N$r$p$salt$hash"), so parameters can be raised without a
-- migration. A user's role must exist: deleting a role in use fails.
-- Times are INTEGER milliseconds since the Unix epoch.
CREATE TABLE users (
  id                   TEXT    NOT NULL PRIMARY KEY,
  name                 TEXT    NOT NULL UNIQUE,
  password_hash        TEXT    NOT NULL,
  role                 TEXT    NOT NULL REFERENCES roles (name),
  created_at           INTEGER NOT NULL,
  disabled             INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
  must_change_password INTEGER NOT NULL DEFAULT 0 CHECK (must_change_password IN (0, 1))
);

-- API tokens: only the SHA-256 of the secret is stored (tokens are 32 random
-- bytes, so a fast hash is enough); lookups go by that hash. Deleting a user
-- deletes their tokens.
CREATE TABLE api_tokens (
  id           TEXT    NOT NULL PRIMARY KEY,
  user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  token_hash   TEXT    NOT NULL UNIQUE,
  name         TEXT    NOT NULL,
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER,
  last_used_at INTEGER
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- Append-only audit log. actor is the user name (kept as text so entries
-- outlive the account); object names what was acted on ("user:alice").
-- detail is a JSON object and never holds a secret.
CREATE TABLE audit (
  id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
  at          INTEGER NOT NULL,
  actor       TEXT    NOT NULL,
  action      TEXT    NOT NULL,
  object      TEXT    NOT NULL,
  detail      TEXT    NOT NULL DEFAULT '{}',
  remote_addr TEXT    NOT NULL
);

CREATE INDEX audit_at ON audit (at, id);
CREATE INDEX audit_actor ON audit (actor, id);
