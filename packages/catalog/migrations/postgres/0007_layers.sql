-- Layers (docs/design/layers.md). Same logical schema as
-- migrations/sqlite/0007_layers.sql, where the reasoning is written down.

CREATE TABLE layers (
  id          text        NOT NULL PRIMARY KEY,
  name        text        NOT NULL UNIQUE,
  kind        text        NOT NULL CHECK (kind IN ('base', 'app', 'driver')),
  description text        NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL
);

CREATE TABLE layer_versions (
  layer_id         text        NOT NULL REFERENCES layers (id),
  version          integer     NOT NULL CHECK (version >= 1),
  label            text        NOT NULL,
  snapshot         bytea       NOT NULL CHECK (length(snapshot) = 32),
  tree             bytea       NOT NULL CHECK (length(tree) = 32),
  os_id            text,
  os_version       text,
  manifest         jsonb       NOT NULL,
  files            bigint      NOT NULL DEFAULT 0,
  bytes            bigint      NOT NULL DEFAULT 0,
  packages         integer     NOT NULL DEFAULT 0,
  source_cvd       text,
  source_snapshots jsonb       NOT NULL DEFAULT '[]',
  created_at       timestamptz NOT NULL,
  created_by       text        NOT NULL,
  PRIMARY KEY (layer_id, version),
  UNIQUE (layer_id, label)
);

CREATE TABLE cvd_reference (
  cvd_id    text        NOT NULL PRIMARY KEY,
  marked_at timestamptz NOT NULL,
  marked_by text        NOT NULL
);

CREATE TABLE captures (
  id            text        NOT NULL PRIMARY KEY,
  cvd_id        text        NOT NULL,
  state         text        NOT NULL CHECK (state IN ('open', 'finished', 'cancelled')),
  pre_snapshot  bytea       NOT NULL CHECK (length(pre_snapshot) = 32),
  post_snapshot bytea       CHECK (post_snapshot IS NULL OR length(post_snapshot) = 32),
  params        jsonb       NOT NULL DEFAULT '{}',
  layer_id      text,
  layer_version integer,
  created_at    timestamptz NOT NULL,
  finished_at   timestamptz
);

CREATE INDEX captures_cvd ON captures (cvd_id, created_at);

CREATE TABLE assignments (
  id           text        NOT NULL PRIMARY KEY,
  target_kind  text        NOT NULL CHECK (target_kind IN ('cvd', 'collection')),
  target_id    text        NOT NULL,
  base_layer   text,
  base_version integer,
  apps         jsonb       NOT NULL DEFAULT '[]',
  assigned_at  timestamptz NOT NULL,
  assigned_by  text        NOT NULL
);

CREATE INDEX assignments_target ON assignments (target_kind, target_id, assigned_at);

CREATE TABLE images (
  key        text        NOT NULL PRIMARY KEY,
  snapshot   bytea       NOT NULL CHECK (length(snapshot) = 32),
  layers     jsonb       NOT NULL,
  manifest   jsonb       NOT NULL,
  created_at timestamptz NOT NULL
);

CREATE INDEX images_snapshot ON images (snapshot);

CREATE TABLE cvd_images (
  cvd_id        text        NOT NULL PRIMARY KEY,
  target_image  bytea       CHECK (target_image IS NULL OR length(target_image) = 32),
  target_at     timestamptz,
  applied_image bytea       CHECK (applied_image IS NULL OR length(applied_image) = 32),
  applied_at    timestamptz
);

ALTER TABLE tasks DROP CONSTRAINT tasks_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_check
  CHECK (kind IN ('system', 'full', 'recover', 'files', 'apply'));
