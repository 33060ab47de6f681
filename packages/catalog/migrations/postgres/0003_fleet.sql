-- The fleet: upload policies, enrollment tokens, endpoints and CVDs.
-- Same logical schema as migrations/sqlite/0003_fleet.sql; keep in step
-- (the reasoning is in the SQLite file's comments). (0004 is reserved.)

-- Upload policies; body is the JSON without id, name and version.
CREATE TABLE upload_policies (
  id         text        NOT NULL PRIMARY KEY,
  name       text        NOT NULL UNIQUE,
  version    integer     NOT NULL CHECK (version >= 1),
  body       jsonb       NOT NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);

-- Enrollment tokens: only the SHA-256 of the secret; uses_left never below 0.
CREATE TABLE enrollment_tokens (
  id           text        NOT NULL PRIMARY KEY,
  token_hash   text        NOT NULL UNIQUE,
  created_by   text        NOT NULL,
  created_at   timestamptz NOT NULL,
  expires_at   timestamptz NOT NULL,
  max_uses     integer     NOT NULL CHECK (max_uses >= 1),
  uses_left    integer     NOT NULL CHECK (uses_left >= 0 AND uses_left <= max_uses),
  policy_id    text REFERENCES upload_policies (id),
  auto_approve boolean     NOT NULL DEFAULT false,
  revoked_at   timestamptz
);

-- Endpoints: credential hash only; machine_id indexed, not unique (clones
-- are stored and flagged); the CVD is found through cvds.endpoint_id.
CREATE TABLE endpoints (
  id                   text        NOT NULL PRIMARY KEY,
  hostname             text        NOT NULL,
  machine_id           text        NOT NULL,
  facts                jsonb       NOT NULL DEFAULT '{}',
  state                text        NOT NULL CHECK (state IN ('pending', 'active', 'disabled')),
  duplicate_machine_id boolean     NOT NULL DEFAULT false,
  credential_hash      text        NOT NULL UNIQUE,
  enrollment_token_id  text REFERENCES enrollment_tokens (id),
  enroll_key_hash      text,
  created_at           timestamptz NOT NULL,
  last_seen_at         timestamptz
);

CREATE INDEX endpoints_machine_id ON endpoints (machine_id);
CREATE UNIQUE INDEX endpoints_enrollment ON endpoints (enrollment_token_id, enroll_key_hash);

-- CVDs: endpoint_id NULL when the endpoint is gone; UNIQUE (one CVD per endpoint).
CREATE TABLE cvds (
  id            text        NOT NULL PRIMARY KEY,
  endpoint_id   text UNIQUE REFERENCES endpoints (id) ON DELETE SET NULL,
  policy_id     text        NOT NULL REFERENCES upload_policies (id),
  created_at    timestamptz NOT NULL,
  snoozed_until timestamptz
);

CREATE INDEX cvds_policy ON cvds (policy_id);
CREATE INDEX enrollment_tokens_policy ON enrollment_tokens (policy_id);
