-- scripts/bench.d/apply-baseline.sql: generates the `scripts/bench apply` baseline load.
-- Run in the legacy database after the workload, output to a file:
--   psql -X -qtA -v ON_ERROR_STOP=1 -f apply-baseline.sql -o baseline-load.sql
-- The legacy rows in their platform form (schemas/reference/mapping.md), computed here in SQL:
-- ids are apply's derived ids (below; the uuid v5 part from uuid-ossp), full_name
-- split at the first space, role -> (kind, is_admin), category_id -> categories.name, archived
-- -> archived_at = updated_at, naive UTC timestamps -> timestamptz. Written as one psql script of
-- multi-row `INSERT ... ON CONFLICT (id) DO UPDATE SET ... WHERE newer` statements of 1000 rows,
-- 20 statements per transaction, parents first (groups, identities, memberships): what a
-- hand-written loader would do. Needs the extension uuid-ossp (created in the schema bench_ext).
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SET TimeZone = 'UTC';
CREATE SCHEMA IF NOT EXISTS bench_ext;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" SCHEMA bench_ext;

-- apply's derived id (apply/src/writer/pairing/derived.rs): a version-8 uuid whose hex digits 1-12,
-- 14-16 and 18 are the legacy id's 16 hex digits, and whose digits 17 and 19-32 are those of
-- the uuid v5 of "<entity>:<legacy id>" in apply's namespace.
CREATE FUNCTION pg_temp.pid(entity text, id bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS
$$ SELECT (substr(l, 1, 12) || '8' || substr(l, 13, 3) || substr(c, 17, 1) || substr(l, 16, 1)
           || substr(c, 19, 14))::uuid
   FROM (SELECT lpad(to_hex(id), 16, '0') AS l,
                replace(bench_ext.uuid_generate_v5('5b1d9e0a-3c47-4f2b-9a61-0c2e8d4b7f13',
                                                   entity || ':' || id)::text, '-', '') AS c) AS d $$;

WITH v AS (
  SELECT 1 AS t, g.id, format('(%L,%L,%L,%L,%L,%L,%L)',
           pg_temp.pid('team', g.id), g.name, c.name,
           CASE WHEN g.archived THEN g.updated_at AT TIME ZONE 'UTC' END, g.notes,
           g.inserted_at AT TIME ZONE 'UTC', g.updated_at AT TIME ZONE 'UTC') AS v
  FROM teams g LEFT JOIN categories c ON c.id = g.category_id
  UNION ALL
  SELECT 2, id, format('(%L,%L,%L,%L,%L,%L,%L,%L,%L)',
           pg_temp.pid('user', id), email,
           CASE WHEN strpos(full_name, ' ') > 0 THEN left(full_name, strpos(full_name, ' ') - 1) ELSE full_name END,
           CASE WHEN strpos(full_name, ' ') > 0 THEN substr(full_name, strpos(full_name, ' ') + 1) ELSE '' END,
           CASE role WHEN 'member' THEN 'member' ELSE 'staff' END, role = 'admin', phone,
           inserted_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC')
  FROM users
  UNION ALL
  SELECT 3, id, format('(%L,%L,%L,%L,%L,%L)',
           pg_temp.pid('team_member', id), pg_temp.pid('team', team_id), pg_temp.pid('user', user_id),
           role, inserted_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC')
  FROM team_members
), chunks AS (
  SELECT t, (row_number() OVER (PARTITION BY t ORDER BY id) - 1) / 1000 AS chunk, id, v FROM v
), statements AS (
  SELECT t, chunk,
         CASE t
           WHEN 1 THEN 'INSERT INTO org.groups AS t (id, name, category, archived_at, notes, created_at, updated_at) VALUES '
           WHEN 2 THEN 'INSERT INTO identity.identities AS t (id, email, given_name, family_name, kind, is_admin, phone_e164, created_at, updated_at) VALUES '
           ELSE 'INSERT INTO org.memberships AS t (id, group_id, identity_id, role, created_at, updated_at) VALUES '
         END
         || string_agg(v, ',' ORDER BY id)
         || CASE t
           WHEN 1 THEN ' ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, category = EXCLUDED.category, archived_at = EXCLUDED.archived_at, notes = EXCLUDED.notes, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at'
           WHEN 2 THEN ' ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, kind = EXCLUDED.kind, is_admin = EXCLUDED.is_admin, phone_e164 = EXCLUDED.phone_e164, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at'
           ELSE ' ON CONFLICT (id) DO UPDATE SET group_id = EXCLUDED.group_id, identity_id = EXCLUDED.identity_id, role = EXCLUDED.role, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at'
         END
         || ' WHERE EXCLUDED.updated_at > t.updated_at;' AS sql
  FROM chunks GROUP BY t, chunk
), numbered AS (
  SELECT sql, row_number() OVER (ORDER BY t, chunk) - 1 AS i, count(*) OVER () AS total FROM statements
)
SELECT CASE WHEN i % 20 = 0 THEN E'BEGIN;\n' ELSE '' END || sql
       || CASE WHEN i % 20 = 19 OR i = total - 1 THEN E'\nCOMMIT;' ELSE '' END
FROM numbered ORDER BY i;
