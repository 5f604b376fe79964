-- scripts/bench.d/apply-latency-load.sql: the `scripts/bench apply` steady load for the latency
-- measurement, on the legacy database, by one session:
--   psql -X -v ON_ERROR_STOP=1 -v rate=1000 -v seconds=30 -f apply-latency-load.sql
-- Ten times a second (on a fixed schedule from the start, not drifting with the time each
-- insert takes) one autocommit INSERT of rate/10 users. Each row's phone is 'lat:' and its
-- insert time (clock_timestamp(), microseconds since the epoch): the platform side compares its
-- arrival with it. Prints `latency_rows=N` and `latency_late_ticks=N` (ticks that started
-- behind schedule: the load could not keep the rate).
-- synchronous_commit = on (the server default, which the local stack turns off): with it off, a
-- commit reaches the walsender only when the WAL writer flushes (wal_writer_delay, 200ms), which
-- would add up to ~200ms to every row's latency that production (synchronous_commit on) does
-- not have.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET synchronous_commit = on;
SELECT set_config('bench.rate', :'rate', false), set_config('bench.seconds', :'seconds', false) \g /dev/null
SELECT set_config('bench.rows', '0', false), set_config('bench.late', '0', false) \g /dev/null

DO $$
DECLARE
  per_tick int := current_setting('bench.rate')::int / 10;
  ticks    int := current_setting('bench.seconds')::int * 10;
  start    timestamptz := clock_timestamp();
  pause    float8;
  late     int := 0;
  n        bigint := 0;
  inserted bigint;
BEGIN
  FOR i IN 0 .. ticks - 1 LOOP
    INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at)
    SELECT 'latency' || i || '.' || g || '@example.com', 'Latency ' || i || '.' || g, 'member',
           'lat:' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
           clock_timestamp(), clock_timestamp()
    FROM generate_series(1, per_tick) g;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    n := n + inserted;
    COMMIT;
    pause := extract(epoch FROM start + (i + 1) * interval '100 milliseconds' - clock_timestamp());
    IF pause > 0 THEN
      PERFORM pg_sleep(pause);
    ELSE
      late := late + 1;
    END IF;
  END LOOP;
  PERFORM set_config('bench.rows', n::text, false), set_config('bench.late', late::text, false);
END $$;

SELECT 'latency_rows=' || current_setting('bench.rows');
SELECT 'latency_late_ticks=' || current_setting('bench.late');
