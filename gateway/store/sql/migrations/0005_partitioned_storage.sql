-- Storage for volume (profiled in bench/README.md "Where PostgreSQL's time goes"):
--
-- * events, deliveries and attempts are partitioned by day on their ids (an id starts
--   with its creation time in hex, see gateway/ids.py), so retention drops whole days
--   (gateway/retention.py) instead of deleting row by row, and a day's partition holds
--   its events, their deliveries and those deliveries' attempts: a delivery's id starts
--   with its event's time, and an attempt is filed under its delivery's id.
-- * A delivery's id is derived from its event and its target (gateway_delivery_id), so a
--   second delivery of one event to one endpoint or device cannot exist (the primary key
--   refuses it), and an event's deliveries are one range of ids: no index by event
--   (except for the deliveries made before this migration, whose ids were random).
-- * Ids compare byte-wise (COLLATE "C") in every table: hex ids sort the same either way,
--   and byte comparisons are what B-tree inserts and joins spend their time on. Every id
--   column gets it, or a join would compare under two collations and skip an index.
-- * No foreign keys among the hot tables (each checked every insert and locked the row it
--   names); the gateway writes them together and retention drops them together.
-- * Deliveries keep four indexes: the primary key (app, id) for lookups and listing, the
--   due index the dispatcher claims from, open deliveries (pending or failed) by app and
--   status, and webhook deliveries by endpoint. Attempts keep their primary key and a
--   BRIN index on time (the dashboard's "attempts in the last minute").

-- --- ids byte-wise in the other tables -------------------------------------------------

ALTER TABLE app_rate_windows DROP CONSTRAINT app_rate_windows_app_id_fkey;
ALTER TABLE dashboard_sessions DROP CONSTRAINT dashboard_sessions_app_id_fkey;
ALTER TABLE devices DROP CONSTRAINT devices_app_id_fkey;
ALTER TABLE endpoints DROP CONSTRAINT endpoints_app_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_app_id_fkey;
ALTER TABLE push_credentials DROP CONSTRAINT push_credentials_app_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_device_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_endpoint_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_app_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;

ALTER TABLE apps ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE app_rate_windows ALTER COLUMN app_id TYPE text COLLATE "C";
ALTER TABLE dashboard_sessions ALTER COLUMN app_id TYPE text COLLATE "C";
ALTER TABLE endpoints ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN app_id TYPE text COLLATE "C";
ALTER TABLE devices ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN app_id TYPE text COLLATE "C";
ALTER TABLE push_credentials ALTER COLUMN app_id TYPE text COLLATE "C";
ALTER TABLE idempotency_keys ALTER COLUMN app_id TYPE text COLLATE "C",
    ALTER COLUMN event_id TYPE text COLLATE "C";

ALTER TABLE app_rate_windows ADD CONSTRAINT app_rate_windows_app_id_fkey
    FOREIGN KEY (app_id) REFERENCES apps (id);
ALTER TABLE dashboard_sessions ADD CONSTRAINT dashboard_sessions_app_id_fkey
    FOREIGN KEY (app_id) REFERENCES apps (id);
ALTER TABLE devices ADD CONSTRAINT devices_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps (id);
ALTER TABLE endpoints ADD CONSTRAINT endpoints_app_id_fkey
    FOREIGN KEY (app_id) REFERENCES apps (id);
ALTER TABLE push_credentials ADD CONSTRAINT push_credentials_app_id_fkey
    FOREIGN KEY (app_id) REFERENCES apps (id);

-- --- ids and day partitions ------------------------------------------------------------

-- The id a delivery of this event to this target (endpoint or device id) has: the
-- event's time, then 80 bits of a hash of both.
CREATE FUNCTION gateway_delivery_id(event_id text, target_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'dlv_' || substr(event_id, 5, 12) || left(md5(event_id || '/' || target_id), 20)
$$;

-- The first id of a day (UTC) with this prefix ('evt', 'dlv').
CREATE FUNCTION gateway_day_bound(prefix text, day date) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT prefix || '_'
        || lpad(to_hex((extract(epoch FROM day::timestamp) * 1000)::bigint), 12, '0')
$$;

-- The day (UTC) an id of the gateway's shape was made.
CREATE FUNCTION gateway_id_day(id text) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (to_timestamp(('x' || lpad(substr(id, strpos(id, '_') + 1, 12), 16, '0'))
                         ::bit(64)::bigint / 1000.0) AT TIME ZONE 'UTC')::date
$$;

-- Makes the partitions of events, deliveries and attempts for every day from first_day
-- to last_day that does not have them yet; returns how many tables it made. Processes
-- call it at start and from the retention loop, days ahead.
CREATE FUNCTION gateway_make_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    made integer := 0;
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(727277);
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        FOR part IN SELECT * FROM (VALUES ('events', 'evt'), ('deliveries', 'dlv'),
                                          ('attempts', 'dlv')) AS v(parent, prefix) LOOP
            IF to_regclass(format('%I', part.parent || '_' || to_char(day, 'YYYYMMDD')))
                    IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part.parent || '_' || to_char(day, 'YYYYMMDD'), part.parent,
                               gateway_day_bound(part.prefix, day),
                               gateway_day_bound(part.prefix, day + 1));
                made := made + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- --- the partitioned tables ------------------------------------------------------------

ALTER TABLE events RENAME TO events_before_0005;
ALTER TABLE events_before_0005 DROP CONSTRAINT events_pkey;
ALTER TABLE events_before_0005 DROP CONSTRAINT events_fanout_status_check;
DROP INDEX events_by_app;
DROP INDEX events_fanout_pending;
ALTER TABLE deliveries RENAME TO deliveries_before_0005;
ALTER TABLE deliveries_before_0005 DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries_before_0005 DROP CONSTRAINT deliveries_status_check;
DROP INDEX deliveries_due;
DROP INDEX deliveries_by_app;
DROP INDEX deliveries_by_app_status;
DROP INDEX deliveries_by_event;
DROP INDEX deliveries_by_endpoint;
DROP INDEX deliveries_by_device;
DROP INDEX deliveries_one_per_device;
ALTER TABLE attempts RENAME TO attempts_before_0005;
ALTER TABLE attempts_before_0005 DROP CONSTRAINT attempts_pkey;
DROP INDEX attempts_by_delivery;

CREATE TABLE events (
    app_id        text COLLATE "C" NOT NULL,
    id            text COLLATE "C" NOT NULL,
    type          text NOT NULL,
    -- The payload exactly as the backend sent it (key order, number spelling, escapes):
    -- it is delivered and signed byte for byte. Not jsonb: jsonb reorders keys.
    payload       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    push_user_ids text[],
    push_topics   text[],
    notification  jsonb,
    fanout_status text CHECK (fanout_status IN ('pending', 'done')),
    fanout_cursor text COLLATE "C",
    PRIMARY KEY (app_id, id)
) PARTITION BY RANGE (id);
CREATE INDEX events_fanout_pending ON events (app_id, created_at)
    WHERE fanout_status = 'pending';

CREATE TABLE deliveries (
    app_id          text COLLATE "C" NOT NULL,
    id              text COLLATE "C" NOT NULL,
    event_id        text COLLATE "C" NOT NULL,
    endpoint_id     text COLLATE "C",
    device_id       text COLLATE "C",
    kind            text NOT NULL DEFAULT 'webhook',
    status          text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt_count   integer NOT NULL DEFAULT 0,
    -- Attempts since creation or the last manual retry: the position in the schedule.
    schedule_pos    integer NOT NULL DEFAULT 0,
    -- While pending: when it is due. While claimed: when the claim's lease runs out.
    -- 'infinity' parks the deliveries of a disabled endpoint.
    next_attempt_at timestamptz,
    lease_id        uuid,
    last_attempt_at timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, id)
) PARTITION BY RANGE (id);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_open ON deliveries (app_id, status, id) WHERE status <> 'succeeded';
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, id)
    WHERE endpoint_id IS NOT NULL;
-- Deliveries made before this migration have ids of their own time, not their event's:
-- those (and only those) are found by event here.
CREATE INDEX deliveries_by_event_before_0005 ON deliveries (event_id)
    WHERE substr(id, 5, 12) <> substr(event_id, 5, 12);

CREATE SEQUENCE attempt_ids;
SELECT setval('attempt_ids', coalesce((SELECT max(id) FROM attempts_before_0005), 0) + 1,
              false);
CREATE TABLE attempts (
    delivery_id      text COLLATE "C" NOT NULL,
    id               bigint NOT NULL DEFAULT nextval('attempt_ids'),
    app_id           text COLLATE "C" NOT NULL,
    attempted_at     timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    outcome          text NOT NULL,
    status_code      integer,
    response_snippet text,
    error            text,
    PRIMARY KEY (delivery_id, id)
) PARTITION BY RANGE (delivery_id);
CREATE INDEX attempts_recent ON attempts USING brin (attempted_at);

-- Partitions for every day that has rows, and the days around today.
SELECT gateway_make_partitions(
    least(current_date - 1, (SELECT gateway_id_day(min(id)) FROM events_before_0005),
          (SELECT gateway_id_day(min(id)) FROM deliveries_before_0005)),
    greatest(current_date + 7, (SELECT gateway_id_day(max(id)) FROM events_before_0005),
             (SELECT gateway_id_day(max(id)) FROM deliveries_before_0005)));

INSERT INTO events (app_id, id, type, payload, created_at, push_user_ids, push_topics,
                    notification, fanout_status, fanout_cursor)
SELECT app_id, id, type, payload, created_at, push_user_ids, push_topics, notification,
       fanout_status, fanout_cursor
FROM events_before_0005;
INSERT INTO deliveries (app_id, id, event_id, endpoint_id, device_id, kind, status,
                        attempt_count, schedule_pos, next_attempt_at, lease_id,
                        last_attempt_at, last_error, created_at, updated_at)
SELECT app_id, id, event_id, endpoint_id, device_id, kind, status, attempt_count,
       schedule_pos, next_attempt_at, lease_id, last_attempt_at, last_error, created_at,
       updated_at
FROM deliveries_before_0005;
INSERT INTO attempts (delivery_id, id, app_id, attempted_at, duration_ms, outcome,
                      status_code, response_snippet, error)
SELECT a.delivery_id, a.id, d.app_id, a.attempted_at, a.duration_ms, a.outcome,
       a.status_code, a.response_snippet, a.error
FROM attempts_before_0005 a JOIN deliveries_before_0005 d ON d.id = a.delivery_id;

DROP TABLE attempts_before_0005, deliveries_before_0005, events_before_0005;
DROP FUNCTION gateway_id(text);
