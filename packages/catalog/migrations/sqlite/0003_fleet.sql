-- The fleet: upload policies, enrollment tokens, endpoints and CVDs.
-- Same logical schema as migrations/postgres/0003_fleet.sql; keep in step.
-- Times are INTEGER milliseconds since the Unix epoch. (0004 is reserved.)

-- Upload policies. body is the policy's JSON without id, name and version
-- (rule lists, interval, retention, bandwidth), validated by the server
-- with @strata/core's validatePolicy before it is written. version is
-- bumped on every edit so agents can tell that theirs is stale.
CREATE TABLE upload_policies (
  id         TEXT    NOT NULL PRIMARY KEY,
  name       TEXT    NOT NULL UNIQUE,
  version    INTEGER NOT NULL CHECK (version >= 1),
  body       TEXT    NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

-- Enrollment tokens ("set_…"): only the SHA-256 of the secret is stored.
-- uses_left counts down atomically at each enrollment (never below 0);
-- a revoked token keeps its row so endpoints can still name where they
-- came from. policy_id is the policy an auto-approved endpoint's new CVD
-- gets (the Default policy when NULL); a policy named here cannot be
-- deleted.
CREATE TABLE enrollment_tokens (
  id           TEXT    NOT NULL PRIMARY KEY,
  token_hash   TEXT    NOT NULL UNIQUE,
  created_by   TEXT    NOT NULL,
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER NOT NULL,
  max_uses     INTEGER NOT NULL CHECK (max_uses >= 1),
  uses_left    INTEGER NOT NULL CHECK (uses_left >= 0 AND uses_left <= max_uses),
  policy_id    TEXT REFERENCES upload_policies (id),
  auto_approve INTEGER NOT NULL DEFAULT 0 CHECK (auto_approve IN (0, 1)),
  revoked_at   INTEGER
);

-- Endpoints. credential_hash is the SHA-256 of the "sep_…" credential.
-- facts is the JSON the agent reported at enrollment (claims, not proofs).
-- machine_id is indexed, not unique: a second endpoint reporting a known
-- machine id (a clone, a re-install) is stored too, flagged
-- duplicate_machine_id. (enrollment_token_id, enroll_key_hash) makes a
-- retried enrollment (same Idempotency-Key, same token) find its endpoint
-- instead of creating a second one; enroll_key_hash is the SHA-256 of the
-- key. The endpoint's CVD is found through cvds.endpoint_id: one fact in
-- one place, so moving a CVD to a replacement endpoint is one UPDATE.
CREATE TABLE endpoints (
  id                   TEXT    NOT NULL PRIMARY KEY,
  hostname             TEXT    NOT NULL,
  machine_id           TEXT    NOT NULL,
  facts                TEXT    NOT NULL DEFAULT '{}',
  state                TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'disabled')),
  duplicate_machine_id INTEGER NOT NULL DEFAULT 0 CHECK (duplicate_machine_id IN (0, 1)),
  credential_hash      TEXT    NOT NULL UNIQUE,
  enrollment_token_id  TEXT REFERENCES enrollment_tokens (id),
  enroll_key_hash      TEXT,
  created_at           INTEGER NOT NULL,
  last_seen_at         INTEGER
);

CREATE INDEX endpoints_machine_id ON endpoints (machine_id);
CREATE UNIQUE INDEX endpoints_enrollment ON endpoints (enrollment_token_id, enroll_key_hash);

-- CVDs. endpoint_id is NULL for a CVD whose endpoint is gone, and UNIQUE:
-- an endpoint has at most one CVD. A CVD always has exactly one policy.
CREATE TABLE cvds (
  id            TEXT    NOT NULL PRIMARY KEY,
  endpoint_id   TEXT UNIQUE REFERENCES endpoints (id) ON DELETE SET NULL,
  policy_id     TEXT    NOT NULL REFERENCES upload_policies (id),
  created_at    INTEGER NOT NULL,
  snoozed_until INTEGER
);

CREATE INDEX cvds_policy ON cvds (policy_id);
CREATE INDEX enrollment_tokens_policy ON enrollment_tokens (policy_id);
