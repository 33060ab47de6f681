-- Auto-assignment rules and remote control of endpoints (docs/design/server.md,
-- "Auto-assignment rules" and "Remote sync and snooze"). Same logical schema
-- as migrations/postgres/0010_autoassign.sql.

-- Auto-assignment rules: evaluated in position order (lowest first) on an
-- enrolling endpoint's facts; the first whose rule matches gives the
-- endpoint a new CVD with policy_id and the tags (a JSON array of CVD
-- tags). rule is a JSON CollectionRule without tags (hostname, os, vendor,
-- model globs). position is not unique: an insert before another rule
-- shifts the rules from there on by one, in one transaction. A policy
-- named here cannot be deleted.
CREATE TABLE autoassign_rules (
  id         TEXT    NOT NULL PRIMARY KEY,
  name       TEXT    NOT NULL UNIQUE,
  position   INTEGER NOT NULL,
  rule       TEXT    NOT NULL,
  policy_id  TEXT    NOT NULL REFERENCES upload_policies (id),
  tags       TEXT    NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL,
  created_by TEXT    NOT NULL
);

CREATE INDEX autoassign_rules_position ON autoassign_rules (position, id);
CREATE INDEX autoassign_rules_policy ON autoassign_rules (policy_id);

-- Whether the rules apply to endpoints enrolling with the token (0: they
-- stay pending unless the token auto-approves; recovery tokens).
ALTER TABLE enrollment_tokens ADD COLUMN autoassign INTEGER NOT NULL DEFAULT 1 CHECK (autoassign IN (0, 1));

-- An administrator's requests to the CVD's agent, read by it from
-- agent/self: upload now (sync_requested_at: the newest request; the
-- agent uploads once when it sees a newer one) and the snooze
-- (snoozed_until, already there since 0003), with who asked.
ALTER TABLE cvds ADD COLUMN sync_requested_at INTEGER;
ALTER TABLE cvds ADD COLUMN sync_requested_by TEXT;
ALTER TABLE cvds ADD COLUMN snoozed_by TEXT;
