-- scripts/bench.d/apply-workload.sql: the `scripts/bench apply` throughput workload on the
-- reference legacy schema (schemas/reference/legacy.sql), loaded by one psql session:
--   psql -X -v ON_ERROR_STOP=1 -v scale=100 -f apply-workload.sql
-- scale is a percentage (100 = the full workload: 222,050 inserted rows in 494 transactions).
-- Inserts only (one pgoutput change per row; no cascades), so that the rows on the legacy side
-- are exactly the rows the platform side must end up with, in their platform form.
--
-- At scale 100: 50 categories (one transaction; a legacy-only lookup table, not an entity of its
-- own), then 40 rounds of
--   50 teams (one transaction; category lookup, some archived, some with notes),
--   5,000 users in 7 transactions of 100, 400, 500, 1000, 1000, 1000, 1000 rows,
--   500 team_members (one transaction; this round's users in this round's and earlier teams).
-- Prints `workload_rows=N` (the rows inserted) at the end. All timestamps are naive UTC.
\set ON_ERROR_STOP 1
\pset pager off
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SELECT set_config('bench.scale', :'scale', false) \g /dev/null

INSERT INTO categories (name, inserted_at, updated_at)
SELECT 'category ' || g, now(), now() FROM generate_series(1, 50) g;

DO $$
DECLARE
  scale   bigint := current_setting('bench.scale')::bigint;
  rounds  int := greatest(1, (40 * scale / 100)::int);
  sizes   int[] := ARRAY[100, 400, 500, 1000, 1000, 1000, 1000];
  r       int;
  s       int;
  u0      bigint;   -- users before this round's
  t0      bigint;   -- teams before this round's
  u_round bigint;   -- users of this round so far
BEGIN
  FOR r IN 0 .. rounds - 1 LOOP
    SELECT coalesce(max(id), 0) INTO t0 FROM teams;
    INSERT INTO teams (name, category_id, archived, notes, inserted_at, updated_at)
    SELECT 'Team ' || (t0 + g),
           CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + (t0 + g) % 50 END,
           g % 25 = 0,
           CASE WHEN g % 4 = 0 THEN repeat('notes for team ' || (t0 + g) || '. ', 5) END,
           now(), now()
    FROM generate_series(1, 50) g;
    COMMIT;

    SELECT coalesce(max(id), 0) INTO u0 FROM users;
    u_round := 0;
    FOREACH s IN ARRAY sizes LOOP
      INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at)
      SELECT 'user' || (u0 + u_round + g) || '@example.com',
             CASE WHEN g % 50 = 0 THEN 'Mononym' || (u0 + u_round + g)
                  WHEN g % 20 = 0 THEN 'Given' || g || ' van der Family' || (u0 + u_round + g)
                  ELSE 'Given' || g || ' Family' || (u0 + u_round + g) END,
             (ARRAY['member', 'member', 'member', 'staff', 'admin'])[1 + (u0 + u_round + g) % 5],
             CASE WHEN g % 3 = 0 THEN NULL ELSE '+3360' || lpad(((u0 + u_round + g) % 1000000)::text, 6, '0') END,
             now(), now()
      FROM generate_series(1, s) g;
      u_round := u_round + s;
      COMMIT;
    END LOOP;

    -- 500 memberships: this round's first 500 users, ten per team among this round's 50
    -- teams and earlier ones (distinct (team, user) pairs: each user appears once)
    INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
    SELECT 1 + (g * 7) % (t0 + 50), u0 + 1 + g,
           CASE WHEN g % 10 = 0 THEN 'lead' ELSE 'member' END, now(), now()
    FROM generate_series(0, 499) g;
    COMMIT;
  END LOOP;
END $$;

SELECT 'workload_rows=' || ((SELECT count(*) FROM categories) + (SELECT count(*) FROM teams)
                          + (SELECT count(*) FROM users) + (SELECT count(*) FROM team_members));
