-- Sync Bridge's copy of the project's reference domain (from the shared reference-domain/platform.sql); the project runs from this copy.
-- Reference migration, PLATFORM side: the new micro-services' schemas.
-- uuid ids, timestamptz at microsecond precision, one schema per service,
-- denormalised category, archived_at instead of a flag, JSON for geometry.
-- Needs: wal_level = logical on the server.

CREATE SCHEMA identity;
CREATE SCHEMA org;
CREATE SCHEMA geo;

CREATE TABLE identity.identities (
  id          uuid PRIMARY KEY,
  email       text NOT NULL UNIQUE,
  given_name  text NOT NULL,
  family_name text NOT NULL DEFAULT '',
  kind        text NOT NULL CHECK (kind IN ('member', 'staff')),
  is_admin    boolean NOT NULL DEFAULT false,
  phone_e164  text,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);

CREATE TABLE org.groups (
  id          uuid PRIMARY KEY,
  name        text NOT NULL,
  category    text,                 -- the legacy categories row's name, or NULL
  archived_at timestamptz,          -- NULL = not archived
  notes       text,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);

CREATE TABLE org.memberships (
  id          uuid PRIMARY KEY,
  group_id    uuid NOT NULL REFERENCES org.groups (id) ON DELETE CASCADE,
  identity_id uuid NOT NULL REFERENCES identity.identities (id) ON DELETE CASCADE,
  role        text NOT NULL CHECK (role IN ('lead', 'member')),
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL,
  UNIQUE (group_id, identity_id)
);

CREATE TABLE geo.zones (
  id          uuid PRIMARY KEY,
  group_id    uuid REFERENCES org.groups (id) ON DELETE SET NULL,
  name        text NOT NULL,
  center      jsonb NOT NULL,       -- {"lat": <float>, "lng": <float>}
  radius_m    integer NOT NULL CHECK (radius_m > 0),
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);
