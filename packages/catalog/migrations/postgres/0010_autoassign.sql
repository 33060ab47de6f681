-- Auto-assignment rules and remote control of endpoints. Same logical
-- schema as migrations/sqlite/0010_autoassign.sql, where the reasoning is
-- written down.

CREATE TABLE autoassign_rules (
  id         text        NOT NULL PRIMARY KEY,
  name       text        NOT NULL UNIQUE,
  position   integer     NOT NULL,
  rule       jsonb       NOT NULL,
  policy_id  text        NOT NULL REFERENCES upload_policies (id),
  tags       jsonb       NOT NULL DEFAULT '[]',
  created_at timestamptz NOT NULL,
  created_by text        NOT NULL
);

CREATE INDEX autoassign_rules_position ON autoassign_rules (position, id);
CREATE INDEX autoassign_rules_policy ON autoassign_rules (policy_id);

ALTER TABLE enrollment_tokens ADD COLUMN autoassign boolean NOT NULL DEFAULT true;

ALTER TABLE cvds ADD COLUMN sync_requested_at timestamptz;
ALTER TABLE cvds ADD COLUMN sync_requested_by text;
ALTER TABLE cvds ADD COLUMN snoozed_by text;
