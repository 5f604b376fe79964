-- scripts/bench.d/capture-workload.sql: the `scripts/bench capture` workload on the reference
-- legacy schema (schemas/reference/legacy.sql), loaded by one psql session:
--   psql -X -v ON_ERROR_STOP=1 -v scale=100 -f capture-workload.sql
-- scale is a percentage (100 = the full workload, about 570,000 row changes).
-- Every transaction counts the rows it changed (ROW_COUNT / RETURNING) into the session
-- setting bench.changes, printed at the end as `workload_row_changes=N` (the script
-- cross-checks it against pg_stat_user_tables). No statement cascades (no deletes of
-- users/teams/categories), so a counted row is exactly one pgoutput change.
--
-- Transactions, at scale 100:
--   6 bulk     200 categories; 100,000 users; 20,000 teams; 100,000 team_members;
--              60,000 geofences; 25,000 user updates
--   2,500      of 10..100 rows: geofence inserts/updates/deletes, user inserts/updates
--   80,000     of one row: user insert, user update, team update, team_member delete
--   2 bulk     ~20,000 team_member deletes; ~30,000 geofence updates
\set ON_ERROR_STOP 1
\pset pager off
SET client_min_messages = warning;
SELECT set_config('bench.scale', :'scale', false) \g /dev/null
SELECT set_config('bench.changes', '0', false) \g /dev/null

CREATE FUNCTION pg_temp.counted(n bigint) RETURNS void LANGUAGE sql AS
$$ SELECT set_config('bench.changes', (current_setting('bench.changes')::bigint + n)::text, false) $$;
CREATE FUNCTION pg_temp.scaled(n bigint) RETURNS bigint LANGUAGE sql AS
$$ SELECT greatest(1, n * current_setting('bench.scale')::bigint / 100) $$;

-- 1. bulk transactions (one statement each, each its own transaction)
WITH c AS (
  INSERT INTO categories (name, inserted_at, updated_at)
  SELECT 'category ' || g, now(), now() FROM generate_series(1, 200) g RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

WITH c AS (
  INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at)
  SELECT 'user' || g || '@example.com', 'User ' || g,
         (ARRAY['member', 'member', 'member', 'staff', 'admin'])[1 + g % 5],
         CASE WHEN g % 3 = 0 THEN NULL ELSE '+3360000' || lpad((g % 10000)::text, 4, '0') END,
         now(), now()
  FROM generate_series(1, pg_temp.scaled(100000)) g RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

WITH c AS (
  INSERT INTO teams (name, category_id, archived, notes, inserted_at, updated_at)
  SELECT 'Team ' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + g % 200 END, g % 50 = 0,
         CASE WHEN g % 4 = 0 THEN repeat('notes for team ' || g || '. ', 5) END, now(), now()
  FROM generate_series(1, pg_temp.scaled(20000)) g RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

-- five members per team, distinct users per team
WITH c AS (
  INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
  SELECT t, 1 + ((t - 1) * 5 + k) % (SELECT max(id) FROM users),
         CASE WHEN k = 0 THEN 'lead' ELSE 'member' END, now(), now()
  FROM generate_series(1, (SELECT max(id) FROM teams)) t, generate_series(0, 4) k RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

WITH c AS (
  INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
  SELECT CASE WHEN g % 20 = 0 THEN NULL ELSE 1 + g % (SELECT max(id) FROM teams) END, 'Zone ' || g,
         43 + (g % 1000) * 0.005, -1 + (g % 997) * 0.007, 25 + g % 5000, now(), now()
  FROM generate_series(1, pg_temp.scaled(60000)) g RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

WITH c AS (
  UPDATE users SET phone = '+3361111' || lpad((id % 10000)::text, 4, '0'), updated_at = now()
  WHERE id % 4 = 0 RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

-- 2. transactions of 10..100 rows
DO $$
DECLARE
  txs int := pg_temp.scaled(2500);
  nu bigint := (SELECT max(id) FROM users);
  nt bigint := (SELECT max(id) FROM teams);
  ng bigint := (SELECT max(id) FROM geofences);
  half bigint := greatest(ng / 2, 1);
  del_next bigint := 1;           -- geofences 1.. are deleted in order
  i int; sz int; lo bigint; n bigint;
BEGIN
  FOR i IN 1..txs LOOP
    sz := 10 + (i * 37) % 91;
    CASE i % 5
    WHEN 0 THEN
      INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
      SELECT 1 + (i * 7 + g) % nt, 'Zone m' || i || '.' || g, 45 + g * 0.001, 3 + g * 0.001, 50 + g, now(), now()
      FROM generate_series(1, sz) g;
    WHEN 1 THEN
      lo := 1 + (i::bigint * 101) % greatest(nu - 100, 1);
      UPDATE users SET full_name = 'User ' || id || ' v' || i, updated_at = now()
      WHERE id >= lo AND id < lo + sz;
    WHEN 2 THEN
      INSERT INTO users (email, full_name, role, inserted_at, updated_at)
      SELECT 'm' || i || '.' || g || '@example.com', 'Medium ' || i || '.' || g, 'member', now(), now()
      FROM generate_series(1, sz) g;
    WHEN 3 THEN
      lo := half + 1 + (i::bigint * 53) % greatest(half - 100, 1);
      UPDATE geofences SET radius_m = radius_m + 1, updated_at = now() WHERE id >= lo AND id < lo + sz;
    ELSE
      DELETE FROM geofences WHERE id >= del_next AND id < del_next + sz;
      del_next := del_next + sz;
    END CASE;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_temp.counted(n);
    COMMIT;
  END LOOP;
END $$;

-- 3. single-row transactions
DO $$
DECLARE
  txs int := pg_temp.scaled(80000);
  nu bigint := (SELECT max(id) FROM users);
  nt bigint := (SELECT max(id) FROM teams);
  tm_next bigint := (SELECT min(id) FROM team_members);
  i int; n bigint;
BEGIN
  FOR i IN 1..txs LOOP
    CASE i % 4
    WHEN 0 THEN
      INSERT INTO users (email, full_name, role, inserted_at, updated_at)
      VALUES ('s' || i || '@example.com', 'Single ' || i, 'member', now(), now());
    WHEN 1 THEN
      UPDATE users SET phone = '+3362222' || lpad((i % 10000)::text, 4, '0'), updated_at = now()
      WHERE id = 1 + (i::bigint * 7919) % nu;
    WHEN 2 THEN
      UPDATE teams SET archived = NOT archived, updated_at = now() WHERE id = 1 + (i::bigint * 31) % nt;
    ELSE
      DELETE FROM team_members WHERE id = tm_next;
      tm_next := tm_next + 1;
    END CASE;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_temp.counted(n);
    COMMIT;
  END LOOP;
END $$;

-- 4. two more bulk transactions
WITH c AS (DELETE FROM team_members WHERE id % 5 = 0 RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

WITH c AS (
  UPDATE geofences SET name = name || ' (moved)', latitude = latitude + 0.01, updated_at = now()
  WHERE id > (SELECT max(id) / 2 FROM geofences WHERE name NOT LIKE 'Zone m%') RETURNING 1)
SELECT pg_temp.counted(count(*)) FROM c \g /dev/null

SELECT 'workload_row_changes=' || current_setting('bench.changes') AS result \gset
\echo :result
