-- Events, deliveries and attempts get a partition for up to a week (Monday to Monday,
-- UTC), no longer one a day; with day partitions (a short retention) they are made two
-- days ahead, no longer seven.
--
-- Why: every partition, an empty one too, costs each claim and each settlement when the
-- statement starts: a cached plan names every partition, and the executor opens each one
-- and its indexes before it reads a row. That was about 0.1 ms a partition for a claim of
-- 32, so with the default 30 days' retention (38 day partitions) a claim cost PostgreSQL
-- 1.9 times what it cost on a new database, and on a new database the seven empty days
-- ahead cost more than the one day of work (bench/README.md, "How many partitions").
--
-- How wide: a quarter of GATEWAY_RETENTION_DAYS, from one day to seven (seven when it
-- keeps everything), so retention drops whole partitions and keeps finished work at most
-- a quarter longer than it is set to (gateway/retention.py partition_days).
--
-- The day partitions that exist stay what they are, and retention drops them as before;
-- new ones run from the first day no partition holds to the next boundary (or to the next
-- partition, if that comes first), so the two kinds meet without a gap or an overlap.
-- A new one is named "<table>_from<first day>": a process of the version before, which
-- reads a day partition's day from its name and drops it whole when that day is past,
-- cannot read one and leaves it alone (it would otherwise drop days still in the window).
-- In a new database (no app, no event, no delivery: nothing can be ingested before an app
-- exists) the empty day partitions after today that migration 0005 made go; in a database
-- in use they stay and fill up as their days come, so that no lock is taken on tables
-- that claims and ingest are using.
-- Days are UTC days (ids and partition bounds are), whatever the session's time zone.
CREATE OR REPLACE FUNCTION gateway_partition_bounds(parent text)
RETURNS TABLE (name text, first_day date, end_day date, detaching boolean)
LANGUAGE sql STABLE AS $$
    -- A partition's bounds are ids of the gateway's shape (prefix, '_', 12 hex digits of
    -- milliseconds), the first day's and the day after the last one's. A partition with
    -- other bounds (MINVALUE, a DEFAULT one, ...) is not one of the gateway's: left out.
    SELECT b.name, gateway_id_day(b.bounds[1]), gateway_id_day(b.bounds[2]), b.detaching
    FROM (SELECT c.relname::text AS name, i.inhdetachpending AS detaching,
                 regexp_match(pg_get_expr(c.relpartbound, c.oid),
                              '^FOR VALUES FROM [(]''([a-z]+_[0-9a-f]{12})''[)] '
                              || 'TO [(]''([a-z]+_[0-9a-f]{12})''[)]') AS bounds
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relnamespace = current_schema()::regnamespace AND p.relname = parent) b
    WHERE b.bounds IS NOT NULL
$$;

-- Makes partitions of events, deliveries and attempts so that every day from first_day to
-- last_day has one: from each day no partition holds to the next multiple of width days
-- (counted from a Monday, so a width of 7 runs Monday to Monday), or to the next partition
-- if that comes first. Returns how many tables it made.
CREATE OR REPLACE FUNCTION gateway_make_partitions(first_day date, last_day date,
                                                   width integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    span_end date;
    next_start date;
    made integer := 0;
    part record;
    name text;
    n integer;
BEGIN
    IF width < 1 THEN
        RAISE EXCEPTION 'a partition holds at least one day, not %', width;
    END IF;
    PERFORM pg_advisory_xact_lock(727277);
    FOR part IN SELECT * FROM (VALUES ('events', 'evt'), ('deliveries', 'dlv'),
                                      ('attempts', 'dlv')) AS v(parent, prefix) LOOP
        day := first_day;
        WHILE day <= last_day LOOP
            SELECT b.end_day INTO span_end FROM gateway_partition_bounds(part.parent) b
            WHERE b.first_day <= day AND day < b.end_day;
            IF FOUND THEN
                day := span_end;
                CONTINUE;
            END IF;
            SELECT min(b.first_day) INTO next_start FROM gateway_partition_bounds(part.parent) b
            WHERE b.first_day > day;
            span_end := least(day + width - (day - date '1970-01-05') % width,
                              coalesce(next_start, 'infinity'::date));
            -- A table of that name that is not a partition (one left detached by a drop
            -- cut short) must not stop partitions being made: the next free name is taken.
            name := part.parent || '_from' || to_char(day, 'YYYYMMDD');
            n := 1;
            WHILE to_regclass(format('%I', name)) IS NOT NULL LOOP
                n := n + 1;
                name := part.parent || '_from' || to_char(day, 'YYYYMMDD') || '_' || n;
            END LOOP;
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           name, part.parent, gateway_day_bound(part.prefix, day),
                           gateway_day_bound(part.prefix, span_end));
            made := made + 1;
            day := span_end;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- What a process of the version before calls every hour: the day partitions it made
-- before, but filling gaps as this version does, so it never tries a day another
-- partition holds.
CREATE OR REPLACE FUNCTION gateway_make_partitions(first_day date, last_day date)
RETURNS integer
LANGUAGE sql AS $$
    SELECT gateway_make_partitions(first_day, last_day, 1)
$$;

DO $migration$
DECLARE
    part record;
BEGIN
    IF EXISTS (SELECT 1 FROM apps) OR EXISTS (SELECT 1 FROM events)
            OR EXISTS (SELECT 1 FROM deliveries) THEN
        RETURN;  -- a database in use: its day partitions ahead stay (see above)
    END IF;
    FOR part IN
        SELECT b.name FROM (VALUES ('attempts'), ('deliveries'), ('events')) AS v(parent)
        CROSS JOIN LATERAL gateway_partition_bounds(v.parent) b
        WHERE b.first_day > (now() AT TIME ZONE 'UTC')::date
        ORDER BY b.name
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
    END LOOP;
END
$migration$;

-- The coming days' partitions are made right after the migrations (gateway/store/
-- database.py migrate), as wide as the retention allows (gateway/retention.py).
