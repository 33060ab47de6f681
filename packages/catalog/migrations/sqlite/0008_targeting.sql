-- Targeting (docs/design/layers.md, "Assignment and composition" and
-- "Drivers"): collections of CVDs, driver profiles, the editable layer
-- rules and administrators' tags on CVDs. Same logical schema as
-- migrations/postgres/0008_targeting.sql.

-- Collections. rule is NULL for a static collection (members added by
-- hand, in collection_members) and a JSON CollectionRule for a dynamic one:
-- its members are the CVDs whose endpoint facts and tags match the rule
-- when somebody asks, never stored (a changed fact or tag moves a CVD in
-- or out at once).
CREATE TABLE collections (
  id         TEXT    NOT NULL PRIMARY KEY,
  name       TEXT    NOT NULL UNIQUE,
  rule       TEXT,
  created_at INTEGER NOT NULL,
  created_by TEXT    NOT NULL
);

-- Members of static collections. A CVD that goes takes its memberships
-- with it; a collection that goes takes its members.
CREATE TABLE collection_members (
  collection_id TEXT    NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
  cvd_id        TEXT    NOT NULL REFERENCES cvds (id) ON DELETE CASCADE,
  added_at      INTEGER NOT NULL,
  PRIMARY KEY (collection_id, cvd_id)
);

CREATE INDEX collection_members_cvd ON collection_members (cvd_id);

-- Driver profiles: folders is a JSON array of layer ids (kind driver; the
-- newest version of each is composed), rules a JSON array of DriverRule
-- objects (a profile matches an endpoint when any rule does).
CREATE TABLE driver_profiles (
  id         TEXT    NOT NULL PRIMARY KEY,
  name       TEXT    NOT NULL UNIQUE,
  folders    TEXT    NOT NULL DEFAULT '[]',
  rules      TEXT    NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

-- The editable layer rules (`strata layer rules`): one row, absent until
-- somebody sets them (the defaults are code: @strata/core's
-- DEFAULT_DO_NOT_OVERRIDE and BASE_CAPTURE_RULES).
CREATE TABLE layer_rules (
  id              INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
  do_not_override TEXT    NOT NULL,
  base_capture    TEXT    NOT NULL,
  updated_at      INTEGER NOT NULL,
  updated_by      TEXT    NOT NULL
);

-- Administrators' tags on CVDs (collection rules match them). On the CVD,
-- not the endpoint: a replacement machine that takes the CVD over keeps
-- its tags, as it keeps its assignments and static collections.
CREATE TABLE cvd_tags (
  cvd_id TEXT NOT NULL REFERENCES cvds (id) ON DELETE CASCADE,
  tag    TEXT NOT NULL,
  PRIMARY KEY (cvd_id, tag)
);

CREATE INDEX cvd_tags_tag ON cvd_tags (tag);
