-- Layers (docs/design/layers.md): layers and their versions, reference
-- CVDs, app captures in progress, assignments, composed images and each
-- CVD's target and applied image. Same logical schema as
-- migrations/postgres/0007_layers.sql. Tasks gain the kind 'apply'.
--
-- A layer version's tree and an image's tree live in the repository, each
-- behind a snapshot record (kind 'layer' or 'image'), so prune keeps them
-- like any snapshot and retention (which only looks at cvd:… tags) never
-- forgets them. These tables hold what the server decides with: names,
-- numbers, OS releases and the manifests (JSON).

CREATE TABLE layers (
  id          TEXT    NOT NULL PRIMARY KEY,
  name        TEXT    NOT NULL UNIQUE,
  kind        TEXT    NOT NULL CHECK (kind IN ('base', 'app', 'driver')),
  description TEXT    NOT NULL DEFAULT '',
  created_at  INTEGER NOT NULL
);

-- Versions count from 1 per layer; labels (`1.6`) are unique per layer.
-- snapshot is the layer's snapshot record, tree its root tree. files,
-- bytes and packages are the manifest's counts, kept apart so listings
-- never read a manifest (a base layer's holds every dpkg stanza).
CREATE TABLE layer_versions (
  layer_id         TEXT    NOT NULL REFERENCES layers (id),
  version          INTEGER NOT NULL CHECK (version >= 1),
  label            TEXT    NOT NULL,
  snapshot         BLOB    NOT NULL CHECK (length(snapshot) = 32),
  tree             BLOB    NOT NULL CHECK (length(tree) = 32),
  os_id            TEXT,
  os_version       TEXT,
  manifest         TEXT    NOT NULL,
  files            INTEGER NOT NULL DEFAULT 0,
  bytes            INTEGER NOT NULL DEFAULT 0,
  packages         INTEGER NOT NULL DEFAULT 0,
  source_cvd       TEXT,
  source_snapshots TEXT    NOT NULL DEFAULT '[]',
  created_at       INTEGER NOT NULL,
  created_by       TEXT    NOT NULL,
  PRIMARY KEY (layer_id, version),
  UNIQUE (layer_id, label)
);

-- CVDs marked reference: layers are captured only from these.
CREATE TABLE cvd_reference (
  cvd_id    TEXT    NOT NULL PRIMARY KEY,
  marked_at INTEGER NOT NULL,
  marked_by TEXT    NOT NULL
);

-- App captures: opened with the capture-pre snapshot, finished with the
-- capture-post one (then layer_id/layer_version name what it made).
CREATE TABLE captures (
  id            TEXT    NOT NULL PRIMARY KEY,
  cvd_id        TEXT    NOT NULL,
  state         TEXT    NOT NULL CHECK (state IN ('open', 'finished', 'cancelled')),
  pre_snapshot  BLOB    NOT NULL CHECK (length(pre_snapshot) = 32),
  post_snapshot BLOB    CHECK (post_snapshot IS NULL OR length(post_snapshot) = 32),
  params        TEXT    NOT NULL DEFAULT '{}',
  layer_id      TEXT,
  layer_version INTEGER,
  created_at    INTEGER NOT NULL,
  finished_at   INTEGER
);

CREATE INDEX captures_cvd ON captures (cvd_id, created_at);

-- Assignments: the newest one reaching a CVD (its own, or one of a
-- collection it belongs to) wins. A NULL version means "the newest".
-- apps is a JSON array of {layer, version?} in order.
CREATE TABLE assignments (
  id           TEXT    NOT NULL PRIMARY KEY,
  target_kind  TEXT    NOT NULL CHECK (target_kind IN ('cvd', 'collection')),
  target_id    TEXT    NOT NULL,
  base_layer   TEXT,
  base_version INTEGER,
  apps         TEXT    NOT NULL DEFAULT '[]',
  assigned_at  INTEGER NOT NULL,
  assigned_by  TEXT    NOT NULL
);

CREATE INDEX assignments_target ON assignments (target_kind, target_id, assigned_at);

-- Composed images by key (SHA-256 of the canonical JSON of the layer
-- versions composed): the image's snapshot record and its merged manifest.
CREATE TABLE images (
  key        TEXT    NOT NULL PRIMARY KEY,
  snapshot   BLOB    NOT NULL CHECK (length(snapshot) = 32),
  layers     TEXT    NOT NULL,
  manifest   TEXT    NOT NULL,
  created_at INTEGER NOT NULL
);

CREATE INDEX images_snapshot ON images (snapshot);

-- What each CVD should have (target) and what its endpoint last applied.
CREATE TABLE cvd_images (
  cvd_id        TEXT    NOT NULL PRIMARY KEY,
  target_image  BLOB    CHECK (target_image IS NULL OR length(target_image) = 32),
  target_at     INTEGER,
  applied_image BLOB    CHECK (applied_image IS NULL OR length(applied_image) = 32),
  applied_at    INTEGER
);

-- Tasks gain the kind 'apply'. SQLite cannot change a CHECK in place: the
-- table is rebuilt (it holds task history only; nothing references it).
CREATE TABLE tasks_new (
  id          TEXT    NOT NULL PRIMARY KEY,
  cvd_id      TEXT    NOT NULL,
  endpoint_id TEXT    NOT NULL,
  kind        TEXT    NOT NULL CHECK (kind IN ('system', 'full', 'recover', 'files', 'apply')),
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
INSERT INTO tasks_new SELECT id, cvd_id, endpoint_id, kind, params, state, progress, result, error,
  created_by, created_at, updated_at, started_at, finished_at FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
CREATE INDEX tasks_endpoint ON tasks (endpoint_id, state);
CREATE INDEX tasks_cvd ON tasks (cvd_id, created_at);
CREATE INDEX tasks_created ON tasks (created_at);
CREATE UNIQUE INDEX tasks_active ON tasks (cvd_id) WHERE state IN ('queued', 'running');
