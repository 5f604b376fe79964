-- Least-privilege roles for Sync Bridge in the LEGACY database (the reference schema).
-- Run once as the tables' owner (or a superuser), connected to the legacy database:
--
--   psql "postgres://admin@legacy-db:5432/legacy" -v ON_ERROR_STOP=1 \
--        -v capture_password="$CAPTURE_PASSWORD" -v apply_password="$APPLY_PASSWORD" \
--        -f deploy/sql/legacy-roles.sql
--
-- Optional variables: capture_role (default syncbridge_capture), apply_role
-- (syncbridge_apply), publication (syncbridge_legacy: capture's source.publication).
-- Idempotent: roles and the publication are created only when missing.
--
-- capture: LOGIN REPLICATION, SELECT on the published tables and nothing else. It does not
--   own the tables, so it cannot create the publication: this script does, as the owner.
-- row clock: the table and trigger function of deploy/sql/row-clock.sql, the clock trigger on
--   every captured table, and syncbridge.row_clock in the publication, so that each change
--   travels with its clock (capture cannot install them without owning the tables).
-- apply: DML on the mapped tables, USAGE on their id sequences (rows born on the platform
--   side take the next legacy id), and ownership of its own schema `syncbridge`; no CREATE on
--   the database.
\set ON_ERROR_STOP on
\if :{?capture_role}
\else
  \set capture_role syncbridge_capture
\endif
\if :{?apply_role}
\else
  \set apply_role syncbridge_apply
\endif
\if :{?publication}
\else
  \set publication syncbridge_legacy
\endif

BEGIN;

SELECT format('CREATE ROLE %I LOGIN REPLICATION PASSWORD %L', :'capture_role', :'capture_password')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'capture_role') \gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'apply_role', :'apply_password')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'apply_role') \gexec

GRANT CONNECT ON DATABASE :"DBNAME" TO :"capture_role", :"apply_role";

-- capture
GRANT USAGE ON SCHEMA public TO :"capture_role";
GRANT SELECT ON public.users, public.categories, public.teams, public.team_members,
  public.geofences TO :"capture_role";
-- row clock
CREATE SCHEMA IF NOT EXISTS syncbridge AUTHORIZATION :"apply_role";
\ir row-clock.sql
GRANT SELECT, INSERT, UPDATE, DELETE ON syncbridge.row_clock TO :"apply_role";
GRANT USAGE ON SCHEMA syncbridge TO :"capture_role";
GRANT SELECT ON syncbridge.row_clock TO :"capture_role";
SELECT syncbridge.install_clock('public.users', 'id', 'updated_at');
SELECT syncbridge.install_clock('public.categories', 'id', 'updated_at');
SELECT syncbridge.install_clock('public.teams', 'id', 'updated_at');
SELECT syncbridge.install_clock('public.team_members', 'id', 'updated_at');
SELECT syncbridge.install_clock('public.geofences', 'id', 'updated_at');

SELECT format('CREATE PUBLICATION %I FOR TABLE public.users, public.categories, public.teams, public.team_members, public.geofences, syncbridge.row_clock', :'publication')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = :'publication') \gexec
SELECT format('ALTER PUBLICATION %I ADD TABLE syncbridge.row_clock', :'publication')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_publication_tables
                   WHERE pubname = :'publication' AND schemaname = 'syncbridge' AND tablename = 'row_clock') \gexec

-- apply
GRANT USAGE ON SCHEMA public TO :"apply_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON public.users, public.categories, public.teams,
  public.team_members, public.geofences TO :"apply_role";
GRANT USAGE ON SEQUENCE public.users_id_seq, public.categories_id_seq, public.teams_id_seq,
  public.team_members_id_seq, public.geofences_id_seq TO :"apply_role";

COMMIT;
