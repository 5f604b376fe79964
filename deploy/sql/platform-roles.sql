-- Least-privilege roles for Sync Bridge in the PLATFORM database (the reference schema).
-- Run once as the tables' owner (or a superuser), connected to the platform database:
--
--   psql "postgres://admin@platform-db:5432/platform" -v ON_ERROR_STOP=1 \
--        -v capture_password="$CAPTURE_PASSWORD" -v apply_password="$APPLY_PASSWORD" \
--        -f deploy/sql/platform-roles.sql
--
-- Optional variables: capture_role (default syncbridge_capture), apply_role
-- (syncbridge_apply), publication (syncbridge_platform: capture's source.publication).
-- Idempotent: roles and the publication are created only when missing.
--
-- capture: LOGIN REPLICATION, SELECT on the published tables and nothing else; the
--   publication is created here, by the owner of the tables.
-- row clock: the table and trigger function of deploy/sql/row-clock.sql, the clock trigger on
--   every captured table, and syncbridge.row_clock in the publication, so that each change
--   travels with its clock (capture cannot install them without owning the tables).
-- apply: DML on the mapped tables (uuid keys: no sequences) and ownership of its own schema
--   `syncbridge`; no CREATE on the database.
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
  \set publication syncbridge_platform
\endif

BEGIN;

SELECT format('CREATE ROLE %I LOGIN REPLICATION PASSWORD %L', :'capture_role', :'capture_password')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'capture_role') \gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'apply_role', :'apply_password')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'apply_role') \gexec

GRANT CONNECT ON DATABASE :"DBNAME" TO :"capture_role", :"apply_role";

-- capture
GRANT USAGE ON SCHEMA identity, org, geo TO :"capture_role";
GRANT SELECT ON identity.identities, org.groups, org.memberships, geo.zones TO :"capture_role";
-- row clock
CREATE SCHEMA IF NOT EXISTS syncbridge AUTHORIZATION :"apply_role";
\ir row-clock.sql
GRANT SELECT, INSERT, UPDATE, DELETE ON syncbridge.row_clock TO :"apply_role";
GRANT USAGE ON SCHEMA syncbridge TO :"capture_role";
GRANT SELECT ON syncbridge.row_clock TO :"capture_role";
SELECT syncbridge.install_clock('identity.identities', 'id', 'updated_at');
SELECT syncbridge.install_clock('org.groups', 'id', 'updated_at');
SELECT syncbridge.install_clock('org.memberships', 'id', 'updated_at');
SELECT syncbridge.install_clock('geo.zones', 'id', 'updated_at');

SELECT format('CREATE PUBLICATION %I FOR TABLE identity.identities, org.groups, org.memberships, geo.zones, syncbridge.row_clock', :'publication')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = :'publication') \gexec
SELECT format('ALTER PUBLICATION %I ADD TABLE syncbridge.row_clock', :'publication')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_publication_tables
                   WHERE pubname = :'publication' AND schemaname = 'syncbridge' AND tablename = 'row_clock') \gexec

-- apply
GRANT USAGE ON SCHEMA identity, org, geo TO :"apply_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON identity.identities, org.groups, org.memberships,
  geo.zones TO :"apply_role";

COMMIT;
