-- The row clock of Sync Bridge (see postgres/src/clock.rs): the table that
-- keeps each captured row's clock (`origin` and `version`, the row's xmin,
-- are set for a version apply wrote), and syncbridge.install_clock(table, key
-- column, updated_at column), which gives a table the trigger that stamps
-- the versions its applications write. Idempotent; needs the schema
-- syncbridge. Capture and apply run it at start; deploy/sql/*-roles.sql
-- include it for roles that may not create it themselves.
DO $do$ BEGIN
  -- Existence is read from the catalogs themselves, not through
  -- to_regclass and friends: a session's catalog cache can still hold what
  -- it looked up before another session created the object.
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'syncbridge' AND c.relname = 'row_clock') THEN
    CREATE TABLE syncbridge.row_clock (
      relation text NOT NULL,
      row_key  text NOT NULL,
      seconds  bigint NOT NULL,
      tick     bigint NOT NULL,
      origin   text,
      deleted  boolean NOT NULL DEFAULT false,
      version  text,
      PRIMARY KEY (relation, row_key)
    );
    CREATE INDEX row_clock_tombstones ON syncbridge.row_clock (seconds) WHERE deleted;
  END IF;
  -- Whole seconds since the epoch; a timestamp without time zone holds UTC.
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'syncbridge' AND p.proname = 'epoch_seconds' AND p.proargtypes = '1184'::oidvector) THEN
    CREATE FUNCTION syncbridge.epoch_seconds(stamp timestamptz) RETURNS bigint
      LANGUAGE sql IMMUTABLE
      RETURN CASE WHEN isfinite(stamp) THEN floor(extract(epoch FROM stamp))::bigint END;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'syncbridge' AND p.proname = 'epoch_seconds' AND p.proargtypes = '1114'::oidvector) THEN
    CREATE FUNCTION syncbridge.epoch_seconds(stamp timestamp) RETURNS bigint
      LANGUAGE sql IMMUTABLE
      RETURN CASE WHEN isfinite(stamp) THEN floor(extract(epoch FROM stamp))::bigint END;
  END IF;
  -- The next clock of a row: the version's own time when it is later than
  -- the clock of the version it replaces, else that clock's next tick.
  -- Records it (a tombstone for a delete) and returns nothing.
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'syncbridge' AND p.proname = 'stamp_clock' AND p.proargtypes = '25 25 20 20 16'::oidvector) THEN
    CREATE FUNCTION syncbridge.stamp_clock(this_relation text, this_key text, wall bigint,
                                           replaced bigint, deleting boolean) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    DECLARE
      prior_seconds bigint;
      prior_tick bigint;
    BEGIN
      SELECT c.seconds, c.tick INTO prior_seconds, prior_tick
        FROM syncbridge.row_clock c WHERE c.relation = this_relation AND c.row_key = this_key;
      IF prior_seconds IS NULL THEN
        -- a version written before the table had its clock: its updated_at
        prior_seconds := replaced;
        prior_tick := 0;
      END IF;
      wall := coalesce(wall, floor(extract(epoch FROM statement_timestamp()))::bigint);
      IF prior_seconds IS NULL OR wall > prior_seconds THEN
        prior_seconds := wall;
        prior_tick := 0;
      ELSE
        prior_tick := prior_tick + 1;
      END IF;
      INSERT INTO syncbridge.row_clock AS c (relation, row_key, seconds, tick, origin, deleted)
        VALUES (this_relation, this_key, prior_seconds, prior_tick, NULL, deleting)
        ON CONFLICT ON CONSTRAINT row_clock_pkey DO UPDATE SET
          seconds = EXCLUDED.seconds, tick = EXCLUDED.tick, origin = NULL, deleted = EXCLUDED.deleted,
          version = NULL;
    END $fn$;
  END IF;
  -- Gives `target` its clock trigger (named zz_syncbridge_clock: triggers of
  -- one kind fire in name order, so an application's trigger that sets
  -- updated_at runs first). The trigger reads only the key and updated_at
  -- columns, by name: a trigger that reads the whole row would write every
  -- TOASTed value again on each update. Apply's own writes
  -- (syncbridge.applying) are left alone: apply records their clocks.
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'syncbridge' AND p.proname = 'install_clock' AND p.proargtypes = '2205 25 25'::oidvector) THEN
    CREATE FUNCTION syncbridge.install_clock(target regclass, key_column text, stamp_column text)
    RETURNS void LANGUAGE plpgsql AS $fn$
    DECLARE
      relation text;
      stamp_type text;
      function_name text;
      new_stamp text := 'NULL';
      old_stamp text := 'NULL';
    BEGIN
      SELECT n.nspname || '.' || c.relname INTO relation
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE c.oid = target;
      IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                  WHERE tgrelid = target AND tgname = 'zz_syncbridge_clock') THEN
        RETURN;
      END IF;
      SELECT t.typname INTO stamp_type
        FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
       WHERE a.attrelid = target AND a.attname = stamp_column AND NOT a.attisdropped;
      IF stamp_type IN ('timestamp', 'timestamptz') THEN
        new_stamp := format('syncbridge.epoch_seconds(NEW.%I)', stamp_column);
        old_stamp := format('syncbridge.epoch_seconds(OLD.%I)', stamp_column);
      END IF;
      function_name := 'clock_' || substr(md5(relation), 1, 16);
      EXECUTE format($body$
        CREATE OR REPLACE FUNCTION syncbridge.%I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $trigger$
        BEGIN
          IF current_setting('syncbridge.applying', true) = 'on' THEN
            NULL;
          ELSIF TG_OP = 'INSERT' THEN
            PERFORM syncbridge.stamp_clock(%L, NEW.%I::text, %s, NULL, false);
          ELSIF TG_OP = 'UPDATE' THEN
            PERFORM syncbridge.stamp_clock(%L, NEW.%I::text, %s, %s, false);
          ELSE
            PERFORM syncbridge.stamp_clock(%L, OLD.%I::text, NULL, %s, true);
          END IF;
          IF TG_OP = 'DELETE' THEN
            RETURN OLD;
          END IF;
          RETURN NEW;
        END $trigger$;
        $body$,
        function_name,
        relation, key_column, new_stamp,
        relation, key_column, new_stamp, old_stamp,
        relation, key_column, old_stamp);
      EXECUTE format('COMMENT ON FUNCTION syncbridge.%I() IS %L', function_name,
                     'the row clock trigger of ' || relation);
      EXECUTE format('CREATE TRIGGER zz_syncbridge_clock BEFORE INSERT OR UPDATE OR DELETE ON %s '
                     'FOR EACH ROW EXECUTE FUNCTION syncbridge.%I()', target, function_name);
    END $fn$;
  END IF;
END $do$;
