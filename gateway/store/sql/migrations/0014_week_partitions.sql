-- Events, deliveries and attempts get a partition for up to a week (Monday to Monday,
-- UTC), no longer one a day, and partitions are made only two days ahead, no longer seven.
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
-- partition, if that comes first), so the two kinds meet without a gap or an overlap. A
-- partition is named by its first day, as a day partition is. The empty day partitions
-- after today go now (a row in one, from a host whose clock runs days ahead, keeps it).
CREATE OR REPLACE FUNCTION gateway_partition_bounds(parent text)
RETURNS TABLE (name text, first_day date, end_day date, detaching boolean)
LANGUAGE sql STABLE AS $$
    -- A partition's bounds are ids of the gateway's shape (prefix, '_', 12 hex digits of
    -- milliseconds), the first day's and the day after the last one's.
    SELECT c.relname::text,
           gateway_id_day((regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                        $re$FROM \('([^']*)'\)$re$))[1]),
           gateway_id_day((regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                        $re$TO \('([^']*)'\)$re$))[1]),
           i.inhdetachpending
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.relnamespace = current_schema()::regnamespace AND p.relname = parent
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
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           part.parent || '_' || to_char(day, 'YYYYMMDD'), part.parent,
                           gateway_day_bound(part.prefix, day),
                           gateway_day_bound(part.prefix, span_end));
            made := made + 1;
            day := span_end;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- What a process of the version before calls every hour: week partitions, so that it
-- fills gaps as this version does and never tries a day another partition holds.
CREATE OR REPLACE FUNCTION gateway_make_partitions(first_day date, last_day date)
RETURNS integer
LANGUAGE sql AS $$
    SELECT gateway_make_partitions(first_day, last_day, 7)
$$;

DO $migration$
DECLARE
    part record;
    used boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(727277);
    FOR part IN
        SELECT b.name FROM (VALUES ('attempts'), ('deliveries'), ('events')) AS v(parent)
        CROSS JOIN LATERAL gateway_partition_bounds(v.parent) b
        WHERE b.first_day > current_date AND b.end_day = b.first_day + 1
        ORDER BY b.name
    LOOP
        -- Locked first: a row that arrives between the look and the drop is not lost.
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', part.name);
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', part.name) INTO used;
        IF NOT used THEN
            EXECUTE format('DROP TABLE %I', part.name);
        END IF;
    END LOOP;
END
$migration$;

-- The coming days' partitions are made right after the migrations (gateway/store/
-- database.py migrate), as wide as the retention allows (gateway/retention.py).
