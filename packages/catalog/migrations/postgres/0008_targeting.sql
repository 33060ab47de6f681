-- Targeting (docs/design/layers.md). Same logical schema as
-- migrations/sqlite/0008_targeting.sql, where the reasoning is written down.

CREATE TABLE collections (
  id         text        NOT NULL PRIMARY KEY,
  name       text        NOT NULL UNIQUE,
  rule       jsonb,
  created_at timestamptz NOT NULL,
  created_by text        NOT NULL
);

CREATE TABLE collection_members (
  collection_id text        NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
  cvd_id        text        NOT NULL REFERENCES cvds (id) ON DELETE CASCADE,
  added_at      timestamptz NOT NULL,
  PRIMARY KEY (collection_id, cvd_id)
);

CREATE INDEX collection_members_cvd ON collection_members (cvd_id);

CREATE TABLE driver_profiles (
  id         text        NOT NULL PRIMARY KEY,
  name       text        NOT NULL UNIQUE,
  folders    jsonb       NOT NULL DEFAULT '[]',
  rules      jsonb       NOT NULL DEFAULT '[]',
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);

CREATE TABLE layer_rules (
  id              integer     NOT NULL PRIMARY KEY CHECK (id = 1),
  do_not_override jsonb       NOT NULL,
  base_capture    jsonb       NOT NULL,
  updated_at      timestamptz NOT NULL,
  updated_by      text        NOT NULL
);

CREATE TABLE cvd_tags (
  cvd_id text NOT NULL REFERENCES cvds (id) ON DELETE CASCADE,
  tag    text NOT NULL,
  PRIMARY KEY (cvd_id, tag)
);

CREATE INDEX cvd_tags_tag ON cvd_tags (tag);
