-- Sync Bridge's copy of the project's reference domain (from the shared reference-domain/legacy.sql); the project runs from this copy.
-- Reference migration, LEGACY side: a monolith's schema with Phoenix/Ecto habits.
-- bigint serial ids, naive UTC timestamps at second precision, a normalised
-- categories table, booleans where the new side keeps timestamps.
-- Needs: wal_level = logical on the server.

CREATE TABLE users (
  id          bigserial PRIMARY KEY,
  email       varchar(255) NOT NULL UNIQUE,
  full_name   varchar(255) NOT NULL,
  role        varchar(16)  NOT NULL CHECK (role IN ('member', 'staff', 'admin')),
  phone       varchar(32),
  inserted_at timestamp(0) without time zone NOT NULL,  -- UTC by convention
  updated_at  timestamp(0) without time zone NOT NULL   -- UTC by convention
);

CREATE TABLE categories (
  id          bigserial PRIMARY KEY,
  name        varchar(255) NOT NULL UNIQUE,
  inserted_at timestamp(0) without time zone NOT NULL,
  updated_at  timestamp(0) without time zone NOT NULL
);

CREATE TABLE teams (
  id          bigserial PRIMARY KEY,
  name        varchar(255) NOT NULL,
  category_id bigint REFERENCES categories (id),
  archived    boolean NOT NULL DEFAULT false,
  notes       text,                                      -- can be large (TOAST)
  inserted_at timestamp(0) without time zone NOT NULL,
  updated_at  timestamp(0) without time zone NOT NULL
);

CREATE TABLE team_members (
  id          bigserial PRIMARY KEY,
  team_id     bigint NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
  user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  role        varchar(16) NOT NULL CHECK (role IN ('lead', 'member')),
  inserted_at timestamp(0) without time zone NOT NULL,
  updated_at  timestamp(0) without time zone NOT NULL,
  UNIQUE (team_id, user_id)
);

CREATE TABLE geofences (
  id          bigserial PRIMARY KEY,
  team_id     bigint REFERENCES teams (id) ON DELETE SET NULL,
  name        varchar(255) NOT NULL,
  latitude    double precision NOT NULL,
  longitude   double precision NOT NULL,
  radius_m    integer NOT NULL CHECK (radius_m > 0),
  inserted_at timestamp(0) without time zone NOT NULL,
  updated_at  timestamp(0) without time zone NOT NULL
);
