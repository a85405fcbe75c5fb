-- Every query the gateway runs, loaded once by name (gateway/store/database.py).
-- Each block starts with "-- name: <name>" and documents its $n arguments. Queries select
-- exactly the columns of the record they make (gateway/store/records.py): never *.
--
-- Deliveries are read as records with two derived columns: due_at (NULL while parked
-- behind a disabled endpoint, whose next_attempt_at is 'infinity') and leased (a
-- dispatcher holds it).
--
-- Events and deliveries are found by (app id, id), their primary keys: every query names
-- both. An event's deliveries are the ids that start with the event's time
-- (gateway_delivery_id), plus, for events from before migration 0005, those in the
-- deliveries_by_event_before_0005 index.

-- --- apps ------------------------------------------------------------------------------

-- name: create_app
-- $1 id, $2 name, $3 api_key_hash, $4 user-token secret (sealed)
INSERT INTO apps (id, name, api_key_hash, user_token_secret) VALUES ($1, $2, $3, $4)
RETURNING id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
          max_topics_per_device;

-- name: app_by_key_hash
-- $1 api_key_hash
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device
FROM apps WHERE api_key_hash = $1;

-- name: get_app
-- $1 app id
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device
FROM apps WHERE id = $1;

-- name: list_apps
-- $1 cursor (id, exclusive, or NULL), $2 limit
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device
FROM apps
WHERE $1::text IS NULL OR id < $1
ORDER BY id DESC LIMIT $2;

-- name: set_app_limits
-- $1 app id; $2 the limits to change (names), $3 their new values (NULL: no rate limit,
-- or the default quota), arrays of one length. A rate-limited app gets its row in
-- app_rate_windows here, so ingest only ever updates it.
WITH changed AS (
    SELECT * FROM unnest($2::text[], $3::int[]) AS c(name, value)
), app AS (
    UPDATE apps SET
        rate_limit = CASE WHEN 'rate_limit' = ANY($2) THEN
            (SELECT value FROM changed WHERE name = 'rate_limit') ELSE rate_limit END,
        max_endpoints = CASE WHEN 'max_endpoints' = ANY($2) THEN
            (SELECT value FROM changed WHERE name = 'max_endpoints') ELSE max_endpoints END,
        max_devices_per_user = CASE WHEN 'max_devices_per_user' = ANY($2) THEN
            (SELECT value FROM changed WHERE name = 'max_devices_per_user')
            ELSE max_devices_per_user END,
        max_topics_per_device = CASE WHEN 'max_topics_per_device' = ANY($2) THEN
            (SELECT value FROM changed WHERE name = 'max_topics_per_device')
            ELSE max_topics_per_device END
    WHERE id = $1
    RETURNING id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
              max_topics_per_device
), window_row AS (
    INSERT INTO app_rate_windows (app_id, second, used)
    SELECT id, 'epoch', 0 FROM app WHERE rate_limit IS NOT NULL
    ON CONFLICT (app_id) DO NOTHING
)
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device
FROM app;

-- name: lock_app
-- $1 app id: held until the transaction ends, so quota checks of one app take turns.
SELECT max_endpoints FROM apps WHERE id = $1 FOR UPDATE;

-- name: take_ingest_rate
-- $1 app ids, $2 events each wants to write now, $3 each app's limit per second (arrays of
-- one length, one entry per app). Counts them against the app's current second, shared
-- by every gateway process; returns how many each may write.
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::int[]) AS w(app_id, n, cap)
), old AS (
    SELECT r.app_id, r.second, r.used FROM app_rate_windows r
    JOIN wanted USING (app_id)
    FOR UPDATE OF r
)
UPDATE app_rate_windows r SET
    second = date_trunc('second', now()),
    used = CASE WHEN old.second = date_trunc('second', now())
                THEN greatest(old.used, least(old.used + wanted.n, wanted.cap))
                ELSE least(wanted.n, wanted.cap) END
FROM old JOIN wanted USING (app_id)
WHERE r.app_id = old.app_id
RETURNING r.app_id,
          r.used - CASE WHEN old.second = date_trunc('second', now()) THEN old.used ELSE 0 END
              AS granted;

-- name: user_token_secret
-- $1 app id
SELECT user_token_secret FROM apps WHERE id = $1;

-- --- endpoints -------------------------------------------------------------------------

-- name: count_endpoints
-- $1 app id
SELECT count(*) AS n FROM endpoints WHERE app_id = $1 AND deleted_at IS NULL;

-- name: create_endpoint
-- $1 id, $2 app id, $3 url, $4 description, $5 event_types (NULL = all), $6 secret (sealed),
-- $7 rate_limit (NULL = none), $8 headers (JSON text, values sealed), $9 filter (JSON
-- text, NULL = every event)
INSERT INTO endpoints (id, app_id, url, description, event_types, secret, rate_limit,
                       headers, filter)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb)
RETURNING id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
          created_at, updated_at, rate_limit, headers, filter, secret;

-- name: list_endpoints
-- $1 app id, $2 cursor (id, exclusive, or NULL), $3 limit
SELECT id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
       created_at, updated_at, rate_limit, headers, filter
FROM endpoints
WHERE app_id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3;

-- name: get_endpoint
-- $1 app id, $2 endpoint id
SELECT id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
       created_at, updated_at, rate_limit, headers, filter
FROM endpoints WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL;

-- name: get_endpoint_for_update
-- $1 app id, $2 endpoint id
SELECT id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
       created_at, updated_at, rate_limit, headers, filter
FROM endpoints WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE;

-- name: get_endpoint_secret
-- $1 app id, $2 endpoint id
SELECT secret, previous_secret_expires_at
FROM endpoints WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL;

-- name: update_endpoint
-- $1 app id, $2 endpoint id, $3 url, $4 description, $5 event_types, $6 status,
-- $7 disabled_reason, $8 rate_limit, $9 headers (JSON text, values sealed), $10 filter
-- (JSON text or NULL)
UPDATE endpoints SET
    url = $3, description = $4, event_types = $5, status = $6, disabled_reason = $7,
    disabled_at = CASE WHEN $6 = 'disabled' THEN coalesce(disabled_at, now()) END,
    rate_limit = $8, headers = $9::jsonb, filter = $10::jsonb,
    updated_at = now()
WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL
RETURNING id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
          created_at, updated_at, rate_limit, headers, filter;

-- name: delete_endpoint
-- $1 app id, $2 endpoint id. Its pending deliveries fail: they have nowhere to go.
WITH gone AS (
    UPDATE endpoints SET deleted_at = now(), updated_at = now()
    WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING id
), failed AS (
    UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, lease_id = NULL,
        last_error = 'endpoint deleted', updated_at = now()
    WHERE endpoint_id IN (SELECT id FROM gone) AND status = 'pending'
)
SELECT id FROM gone;

-- name: rotate_secret
-- $1 app id, $2 endpoint id, $3 new secret, $4 seconds the old secret keeps signing
UPDATE endpoints SET
    previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => $4),
    secret = $3,
    updated_at = now()
WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL
RETURNING secret, previous_secret_expires_at;

-- name: park_deliveries
-- $1 endpoint ids: pending deliveries wait (out of the claim index's way) until re-enabled.
UPDATE deliveries SET next_attempt_at = 'infinity', updated_at = now()
WHERE endpoint_id = ANY($1::text[]) AND status = 'pending' AND lease_id IS NULL;

-- name: unpark_deliveries
-- $1 endpoint id. Wakes the dispatchers when the transaction commits.
WITH woken AS (
    UPDATE deliveries SET next_attempt_at = now(), updated_at = now()
    WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at = 'infinity'
    RETURNING 1
)
SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM woken);

-- name: disable_endpoints
-- $1 endpoint ids, $2 reason
UPDATE endpoints SET status = 'disabled', disabled_reason = $2,
    disabled_at = now(), updated_at = now()
WHERE id = ANY($1::text[]) AND status = 'active';

-- --- events (ingest) -------------------------------------------------------------------

-- name: claim_idempotency_keys
-- $1 app ids, $2 keys, $3 body sha256s, $4 event ids (arrays of one length).
-- Returns the keys this call now owns: new ones and ones older than $5 seconds.
INSERT INTO idempotency_keys (app_id, key, body_sha256, event_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
ON CONFLICT (app_id, key) DO UPDATE SET
    body_sha256 = EXCLUDED.body_sha256, event_id = EXCLUDED.event_id, created_at = now()
WHERE idempotency_keys.created_at < now() - make_interval(secs => $5)
RETURNING app_id, key;

-- name: existing_idempotency_keys
-- $1 app ids, $2 keys, $3 the window in seconds: the keys used within it.
SELECT k.app_id, k.key, k.body_sha256, e.id, e.type, e.created_at
FROM unnest($1::text[], $2::text[]) AS q(app_id, key)
JOIN idempotency_keys k ON k.app_id = q.app_id AND k.key = q.key
JOIN events e ON e.app_id = k.app_id AND e.id = k.event_id
WHERE k.created_at >= now() - make_interval(secs => $3);

-- name: insert_events
-- $1 ids, $2 app ids, $3 types, $4 raw payloads, $5 created_at, $6 push targets as JSON
-- text ({"user_ids", "topics", "notification"}) or NULL (arrays of one length).
-- Creates each event and one pending delivery per active endpoint subscribed to its type
-- whose filter (if it has one) the payload passes, and wakes the dispatchers (and the
-- fan-out, for push targets) at commit: one statement, so without idempotency keys it
-- needs no explicit transaction. Push targets are expanded later by the fan-out. Returns
-- how many webhook deliveries were created.
WITH filtered AS (
    -- Apps of this batch with an endpoint that filters: only their events' payloads are
    -- read again below, as jsonb.
    SELECT DISTINCT app_id FROM endpoints
    WHERE app_id = ANY($2::text[]) AND filter IS NOT NULL AND deleted_at IS NULL
), ev AS (
    INSERT INTO events (id, app_id, type, payload, created_at, push_user_ids, push_topics,
                        notification, fanout_status)
    SELECT u.id, u.app_id, u.type, u.payload, u.created_at,
           CASE WHEN u.push IS NOT NULL THEN
               ARRAY(SELECT jsonb_array_elements_text(u.push::jsonb -> 'user_ids')) END,
           CASE WHEN u.push IS NOT NULL THEN
               ARRAY(SELECT jsonb_array_elements_text(u.push::jsonb -> 'topics')) END,
           u.push::jsonb -> 'notification',
           CASE WHEN u.push IS NOT NULL THEN 'pending' END
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
        AS u(id, app_id, type, payload, created_at, push)
    RETURNING id, app_id, type, created_at, fanout_status,
              CASE WHEN app_id IN (SELECT app_id FROM filtered) THEN payload END AS payload
), dl AS (
    INSERT INTO deliveries (id, app_id, event_id, endpoint_id, kind, next_attempt_at,
                            created_at, updated_at)
    SELECT gateway_delivery_id(ev.id, ep.id), ev.app_id, ev.id, ep.id, 'webhook',
           ev.created_at, ev.created_at, ev.created_at
    FROM ev
    JOIN endpoints ep ON ep.app_id = ev.app_id
        AND ep.status = 'active' AND ep.deleted_at IS NULL
        -- The common cases inline (all types, an exact name); patterns only when there
        -- are some.
        AND (ep.event_types IS NULL OR ev.type = ANY(ep.event_types)
             OR (array_to_string(ep.event_types, ',') LIKE '%*%'
                 AND gateway_type_matches(ep.event_types, ev.type)))
        -- The payload is read as jsonb only for endpoints with a filter (migration 0009).
        AND (ep.filter IS NULL
             OR gateway_filter_matches(ep.filter, gateway_payload_jsonb(ev.payload)))
    RETURNING 1
)
SELECT (SELECT count(*) FROM dl) AS deliveries,
       (SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM dl)) AS woke,
       (SELECT pg_notify('gateway_fanout', '')
        WHERE EXISTS (SELECT 1 FROM ev WHERE fanout_status = 'pending')) AS fanout;

-- name: get_event
-- $1 app id, $2 event id
SELECT id, type, payload, created_at FROM events WHERE app_id = $1 AND id = $2;

-- name: list_events
-- $1 app id, $2 type (or NULL), $3 cursor (id, exclusive, or NULL), $4 limit
SELECT id, type, payload, created_at FROM events
WHERE app_id = $1 AND ($2::text IS NULL OR type = $2) AND ($3::text IS NULL OR id < $3)
ORDER BY id DESC LIMIT $4;

-- name: send_test_event
-- $1 event id, $2 app id, $3 endpoint id, $4 payload (JSON text). A 'gateway.test' event
-- with one delivery, to that endpoint only, when it is active; no row otherwise.
WITH ep AS (
    SELECT id FROM endpoints
    WHERE app_id = $2 AND id = $3 AND deleted_at IS NULL AND status = 'active'
), ev AS (
    INSERT INTO events (id, app_id, type, payload)
    SELECT $1, $2, 'gateway.test', $4 FROM ep
    RETURNING id, app_id, created_at
), dl AS (
    INSERT INTO deliveries (id, app_id, event_id, endpoint_id, kind, next_attempt_at,
                            created_at, updated_at)
    SELECT gateway_delivery_id(ev.id, ep.id), ev.app_id, ev.id, ep.id, 'webhook',
           ev.created_at, ev.created_at, ev.created_at
    FROM ev CROSS JOIN ep
    RETURNING id, event_id
)
SELECT event_id AS id, id AS delivery_id, pg_notify('gateway_deliveries', '') FROM dl;

-- --- deliveries ------------------------------------------------------------------------

-- name: deliveries_of_event
-- $1 app id, $2 event id
SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count,
       nullif(next_attempt_at, 'infinity') AS due_at, lease_id IS NOT NULL AS leased,
       last_attempt_at, last_error, created_at, updated_at
FROM deliveries
WHERE app_id = $1 AND event_id = $2
  AND id >= 'dlv_' || substr($2, 5, 12) AND id < 'dlv_' || substr($2, 5, 12) || 'g'
UNION ALL
SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count,
       nullif(next_attempt_at, 'infinity') AS due_at, lease_id IS NOT NULL AS leased,
       last_attempt_at, last_error, created_at, updated_at
FROM deliveries
WHERE event_id = $2 AND substr(id, 5, 12) <> substr(event_id, 5, 12) AND app_id = $1
ORDER BY id;

-- name: list_deliveries
-- $1 app id, $2 status, $3 endpoint id (each NULL = any), $4 cursor (id, exclusive, or
-- NULL), $5 limit
SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count,
       nullif(next_attempt_at, 'infinity') AS due_at, lease_id IS NOT NULL AS leased,
       last_attempt_at, last_error, created_at, updated_at
FROM deliveries
WHERE app_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR endpoint_id = $3)
  AND ($4::text IS NULL OR id < $4)
ORDER BY id DESC LIMIT $5;

-- name: list_deliveries_of_event
-- $1 app id, $2 event id, $3 status, $4 endpoint id (each NULL = any), $5 cursor (id,
-- exclusive, or NULL), $6 limit
SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count, due_at, leased,
       last_attempt_at, last_error, created_at, updated_at
FROM (
    SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count,
           nullif(next_attempt_at, 'infinity') AS due_at, lease_id IS NOT NULL AS leased,
           last_attempt_at, last_error, created_at, updated_at
    FROM deliveries
    WHERE app_id = $1 AND event_id = $2
      AND id >= 'dlv_' || substr($2, 5, 12) AND id < 'dlv_' || substr($2, 5, 12) || 'g'
    UNION ALL
    SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count,
           nullif(next_attempt_at, 'infinity') AS due_at, lease_id IS NOT NULL AS leased,
           last_attempt_at, last_error, created_at, updated_at
    FROM deliveries
    WHERE event_id = $2 AND substr(id, 5, 12) <> substr(event_id, 5, 12) AND app_id = $1
) d
WHERE ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR endpoint_id = $4)
  AND ($5::text IS NULL OR id < $5)
ORDER BY id DESC LIMIT $6;

-- name: get_delivery
-- $1 app id, $2 delivery id
SELECT id, event_id, endpoint_id, device_id, kind, status, attempt_count,
       nullif(next_attempt_at, 'infinity') AS due_at, lease_id IS NOT NULL AS leased,
       last_attempt_at, last_error, created_at, updated_at
FROM deliveries WHERE app_id = $1 AND id = $2;

-- name: list_attempts
-- $1 delivery ids: every attempt of each, oldest first (the caller scoped them to an app).
SELECT id, delivery_id, attempted_at, duration_ms, outcome, status_code, response_snippet,
       error
FROM attempts WHERE delivery_id = ANY($1::text[]) ORDER BY delivery_id, id;

-- name: requeue_failed
-- $1 app id, then filters (each NULL = any): $2 delivery id, $3 endpoint id, $4 event type
-- filter (exact, 'prefix.*' or '*'), $5 created at or after, $6 created before.
-- The one way a failed delivery goes back in the queue (a manual retry of one, a retry of
-- many): at the start of the schedule; one whose endpoint is disabled waits parked until
-- it is enabled again; those whose endpoint or device was deleted have nowhere to go and
-- stay failed. Returns the requeued ones, and wakes the dispatchers on commit.
WITH requeued AS (
    UPDATE deliveries d SET
        status = 'pending', schedule_pos = 0, lease_id = NULL, updated_at = now(),
        next_attempt_at = CASE WHEN EXISTS (
            SELECT 1 FROM endpoints ep WHERE ep.id = d.endpoint_id AND ep.status = 'disabled')
            THEN 'infinity'::timestamptz ELSE now() END
    FROM events ev
    WHERE ev.app_id = d.app_id AND ev.id = d.event_id AND d.app_id = $1
      AND d.status = 'failed'
      AND (d.endpoint_id IS NOT NULL OR d.device_id IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM endpoints ep
                      WHERE ep.id = d.endpoint_id AND ep.deleted_at IS NOT NULL)
      AND ($2::text IS NULL OR d.id = $2)
      AND ($3::text IS NULL OR d.endpoint_id = $3)
      AND ($4::text IS NULL OR gateway_type_matches(ARRAY[$4::text], ev.type))
      AND ($5::timestamptz IS NULL OR d.created_at >= $5)
      AND ($6::timestamptz IS NULL OR d.created_at < $6)
    RETURNING d.id, d.event_id, d.endpoint_id, d.device_id, d.kind, d.status,
              d.attempt_count, nullif(d.next_attempt_at, 'infinity') AS due_at,
              d.lease_id IS NOT NULL AS leased, d.last_attempt_at, d.last_error,
              d.created_at, d.updated_at
), woke AS (
    SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM requeued)
)
SELECT requeued.* FROM requeued LEFT JOIN woke ON true;

-- --- the queue (gateway/store/postgres_queue.py) -------------------------------------

-- name: claim_due
-- $1 limit, $2 lease seconds, $3 lease id; the claimer's rooms (gateway/store/queue.py
-- Rooms): $4 endpoint ids with $5 their rooms, $6 push kinds with $7 their rooms, $8 app
-- ids with $9 their rooms (arrays of one length, pairwise), $10 the room of an endpoint
-- and $11 of an app not named; $12 how many due rows one claim looks at; $13 the window
-- (seconds) in which an endpoint's rate_limit holds and $14 the lateness a booked send
-- may have (gateway/sendrate.py).
-- Takes due deliveries no other dispatcher holds and whose endpoint is active, none past
-- its target's or its app's room, apps in turn (each app's oldest first), so one app's
-- backlog or hanging endpoints never crowd out another's; extends their due time by the
-- lease (a crashed claimer's work comes back by itself), and returns what each needs to
-- be sent. A rate-limited endpoint gives what its send schedule allows now; its other
-- due deliveries are not taken but booked the next free send times, oldest first.
WITH full_targets AS (
    SELECT array_agg(id) FILTER (WHERE room <= 0) AS endpoints
    FROM unnest($4::text[], $5::int[]) AS r(id, room)
), candidates AS (
    SELECT d.id, d.app_id, d.endpoint_id, d.kind, d.next_attempt_at
    FROM deliveries d, full_targets f
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      -- Written as OR, not a bare NOT EXISTS: an anti-join would read and sort every due
      -- row before the LIMIT; this walks deliveries_due in order.
      AND (d.endpoint_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM endpoints e WHERE e.id = d.endpoint_id
          AND (e.status <> 'active' OR e.deleted_at IS NOT NULL)))
      -- Targets and apps with no room left are passed over in the scan itself.
      AND (d.endpoint_id IS NULL OR d.endpoint_id <> ALL(coalesce(f.endpoints, '{}')))
      AND d.kind <> ALL(ARRAY(SELECT k FROM unnest($6::text[], $7::int[]) AS r(k, room)
                              WHERE room <= 0))
      AND d.app_id <> ALL(ARRAY(SELECT a FROM unnest($8::text[], $9::int[]) AS r(a, room)
                                WHERE room <= 0))
    ORDER BY d.next_attempt_at, d.id
    LIMIT $12
    FOR UPDATE OF d SKIP LOCKED
), rates AS (
    -- The send schedules of the rate-limited endpoints among the candidates, locked in
    -- id order: the claims of every process take turns on each, and never deadlock.
    SELECT r.endpoint_id, r.tat, r.booked_until, r.rate_limit,
           greatest(1, r.rate_limit / 20) AS burst  -- sendrate.BURST_DIVISOR
    FROM endpoint_send_rates r
    WHERE r.rate_limit IS NOT NULL
      AND r.endpoint_id IN (SELECT endpoint_id FROM candidates)
    ORDER BY r.endpoint_id
    FOR UPDATE OF r
), budgets AS (
    -- How many sends each may start now: the generic cell rate algorithm, as
    -- gateway/sendrate.py SendRate.budget (the clock read once the schedule is ours).
    SELECT endpoint_id, tat, booked_until, at, interval_s, tolerance_s,
           greatest(0, floor((tolerance_s - extract(epoch FROM greatest(tat, at) - at)::float8)
                             / interval_s)::int + 1) AS budget
    FROM (SELECT endpoint_id, tat, booked_until, at, interval_s,
                 interval_s * (burst - 1) + $14::float8 AS tolerance_s
          FROM (SELECT endpoint_id, tat, booked_until, burst, clock_timestamp() AS at,
                       ceil(($13::float8 + $14::float8) / (rate_limit - burst + 1) * 1e6)
                           / 1e6 AS interval_s
                FROM rates) p) r
), ranked AS (
    SELECT c.app_id, c.id, c.endpoint_id, c.next_attempt_at,
           -- One total order (due time, then id) for both counts: the first due row of
           -- any app and target is first in both, so a claim with room takes something.
           row_number() OVER (PARTITION BY coalesce(c.endpoint_id, c.kind)
                              ORDER BY c.next_attempt_at, c.id) AS nth_of_target,
           row_number() OVER (PARTITION BY c.app_id
                              ORDER BY c.next_attempt_at, c.id) AS nth_of_app,
           least(coalesce(ep.room, k.room, $10), coalesce(b.budget, $10)) AS target_room,
           coalesce(ap.room, $11) AS app_room, b.budget
    FROM candidates c
    LEFT JOIN unnest($4::text[], $5::int[]) AS ep(id, room) ON ep.id = c.endpoint_id
    LEFT JOIN unnest($6::text[], $7::int[]) AS k(kind, room)
        ON c.endpoint_id IS NULL AND k.kind = c.kind
    LEFT JOIN unnest($8::text[], $9::int[]) AS ap(id, room) ON ap.id = c.app_id
    LEFT JOIN budgets b ON b.endpoint_id = c.endpoint_id
), chosen AS (
    SELECT app_id, id, endpoint_id FROM ranked
    WHERE nth_of_target <= target_room AND nth_of_app <= app_room
    ORDER BY nth_of_app, next_attempt_at, id
    LIMIT $1
), held AS (
    -- Due deliveries of rate-limited endpoints past what the schedule allows now: the
    -- kth of an endpoint gets its kth next free send time.
    SELECT app_id, id, endpoint_id, nth_of_target - budget - 1 AS k FROM ranked
    WHERE nth_of_target > budget
), schedules AS (
    -- Each schedule after this claim (SendRate.spend and SendRate.booking_start).
    SELECT b.endpoint_id, b.interval_s, s.tat, h.held,
           CASE WHEN b.booked_until IS NULL THEN f.free
                ELSE greatest(f.free, b.booked_until + make_interval(secs => b.interval_s))
           END AS first_slot
    FROM budgets b
    CROSS JOIN LATERAL (
        SELECT greatest(b.tat, b.at) + make_interval(secs => b.interval_s * count(*)) AS tat
        FROM chosen c WHERE c.endpoint_id = b.endpoint_id) s
    CROSS JOIN LATERAL (
        SELECT count(*) AS held FROM held WHERE held.endpoint_id = b.endpoint_id) h
    CROSS JOIN LATERAL (
        SELECT greatest(b.at, greatest(b.tat, b.at)
                              + make_interval(secs => b.interval_s * b.budget
                                                      - b.tolerance_s)) AS free) f
), moved AS (
    UPDATE endpoint_send_rates r SET
        tat = s.tat,
        booked_until = CASE WHEN s.held > 0
            THEN s.first_slot + make_interval(secs => s.interval_s * (s.held - 1))
            ELSE r.booked_until END
    FROM schedules s WHERE r.endpoint_id = s.endpoint_id
), booked AS (
    UPDATE deliveries d
    SET next_attempt_at = s.first_slot + make_interval(secs => s.interval_s * h.k)
    FROM held h JOIN schedules s ON s.endpoint_id = h.endpoint_id
    WHERE d.app_id = h.app_id AND d.id = h.id
), claimed AS (
    UPDATE deliveries d
    SET next_attempt_at = now() + make_interval(secs => $2), lease_id = $3
    FROM chosen WHERE d.app_id = chosen.app_id AND d.id = chosen.id
    RETURNING d.id, d.app_id, d.event_id, d.endpoint_id, d.device_id, d.kind, d.schedule_pos,
              d.attempt_count
)
-- One row per claimed delivery, or a single row of NULLs when none was: held_back (how
-- many were booked for later) is on every row.
SELECT h.held_back, c.id, c.app_id, c.event_id, c.endpoint_id, c.device_id, c.kind,
       c.schedule_pos, c.attempt_count, ev.type AS event_type, ev.payload,
       ev.created_at AS event_created_at, ep.url, ep.secret,
       CASE WHEN ep.previous_secret_expires_at > now() THEN ep.previous_secret END
           AS previous_secret,
       dv.token AS device_token, dv.platform, dv.status AS device_status,
       CASE WHEN c.kind <> 'webhook' THEN ev.notification END AS notification,
       pc.config AS credentials, ep.headers
FROM (SELECT count(*)::int AS held_back FROM held) h
LEFT JOIN (claimed c
           JOIN events ev ON ev.app_id = c.app_id AND ev.id = c.event_id
           LEFT JOIN endpoints ep ON ep.id = c.endpoint_id
           LEFT JOIN devices dv ON dv.id = c.device_id
           LEFT JOIN push_credentials pc ON pc.app_id = c.app_id AND pc.provider = c.kind)
    ON true;

-- name: record_results
-- Arrays of one length: $1 delivery ids, $2 lease ids, $3 new statuses,
-- $4 next attempt times, $5 schedule positions, $6 attempted_at, $7 duration_ms,
-- $8 outcomes, $9 status codes, $10 response snippets, $11 errors, $12 app ids.
-- Every attempt is logged; a delivery changes only while the caller's lease still holds
-- it. Returns what the live tail reports of each delivery that changed (attempt_count
-- counts the attempt just logged).
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int[],
                         $6::timestamptz[], $7::int[], $8::text[], $9::int[], $10::text[],
                         $11::text[], $12::text[])
        AS r(delivery_id, lease_id, status, next_attempt_at, schedule_pos, attempted_at,
             duration_ms, outcome, status_code, response_snippet, error, app_id)
), upd AS (
    UPDATE deliveries d SET
        status = r.status, next_attempt_at = r.next_attempt_at,
        schedule_pos = r.schedule_pos, attempt_count = d.attempt_count + 1,
        last_attempt_at = r.attempted_at, last_error = r.error, lease_id = NULL,
        updated_at = now()
    FROM r WHERE d.app_id = r.app_id AND d.id = r.delivery_id AND d.lease_id = r.lease_id
    RETURNING d.id, d.event_id, d.endpoint_id, d.kind, d.app_id, d.attempt_count
), logged AS (
    INSERT INTO attempts (delivery_id, app_id, attempted_at, duration_ms, outcome,
                          status_code, response_snippet, error)
    SELECT delivery_id, app_id, attempted_at, duration_ms, outcome, status_code,
           response_snippet, error
    FROM r
)
SELECT upd.id, upd.event_id, ev.type AS event_type, upd.endpoint_id, upd.kind, upd.app_id,
       upd.attempt_count
FROM upd JOIN events ev ON ev.app_id = upd.app_id AND ev.id = upd.event_id;

-- name: prune_device
-- $1 device id, $2 reason, $3 when the provider says the token died (or NULL).
-- A device registered again after that moment is live and stays so.
UPDATE devices SET status = 'pruned', pruned_reason = $2, pruned_at = now(),
    updated_at = now()
WHERE id = $1 AND status = 'active' AND ($3::timestamptz IS NULL OR registered_at <= $3);

-- name: notify_outcomes
-- $1 JSON arrays of outcomes, each under NOTIFY's 8000-byte limit: one notification each
-- to the live tail (LISTEN gateway_outcomes) when the transaction commits.
SELECT pg_notify('gateway_outcomes', p) FROM unnest($1::text[]) AS p;

-- name: release_leases
-- $1 lease ids: deliveries claimed but not attempted go back to the queue at once.
UPDATE deliveries SET next_attempt_at = now(), lease_id = NULL, updated_at = now()
WHERE lease_id = ANY($1::uuid[]) AND status = 'pending';

-- name: next_due_at
SELECT min(next_attempt_at) AS due FROM deliveries
WHERE status = 'pending' AND next_attempt_at < 'infinity';

-- --- push fan-out ----------------------------------------------------------------------

-- name: claim_fanout
-- $1 the app this process served last ('' at first). One event whose push targets still
-- need expanding, locked for this transaction: apps take turns in id order, each its
-- oldest event first, so one app's backlog of fan-outs never holds up another's.
WITH turn AS (
    SELECT coalesce(
        (SELECT app_id FROM events WHERE fanout_status = 'pending' AND app_id > $1
         ORDER BY app_id LIMIT 1),
        (SELECT app_id FROM events WHERE fanout_status = 'pending'
         ORDER BY app_id LIMIT 1)) AS app_id
)
SELECT id, app_id, push_user_ids, push_topics, fanout_cursor FROM events
WHERE fanout_status = 'pending' AND app_id = (SELECT app_id FROM turn)
ORDER BY created_at
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: claim_any_fanout
-- When the app whose turn it is has all its fan-outs held by other processes: the oldest
-- event of any app.
SELECT id, app_id, push_user_ids, push_topics, fanout_cursor FROM events
WHERE fanout_status = 'pending'
ORDER BY created_at
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: fanout_devices
-- $1 app id, $2 cursor (device id, exclusive, or NULL), $3 user ids, $4 topics, $5 limit.
-- The next batch of live devices the event targets, in id order (a stable cursor).
SELECT id, platform FROM devices
WHERE app_id = $1 AND status = 'active' AND ($2::text IS NULL OR id > $2)
  AND (user_id = ANY(coalesce($3::text[], '{}')) OR topics && coalesce($4::text[], '{}'))
ORDER BY id LIMIT $5;

-- name: insert_device_deliveries
-- $1 event id, $2 app id, $3 device ids, $4 kinds ('apns' | 'fcm') (arrays of one length).
-- Idempotent: a batch replayed after a crash creates nothing twice. Wakes the dispatchers
-- on commit.
WITH made AS (
    INSERT INTO deliveries (id, app_id, event_id, device_id, kind, next_attempt_at)
    SELECT gateway_delivery_id($1, u.device_id), $2, $1, u.device_id, u.kind, now()
    FROM unnest($3::text[], $4::text[]) AS u(device_id, kind)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM made);

-- name: advance_fanout
-- $1 event id, $2 last device id expanded, $3 finished?, $4 app id
UPDATE events SET fanout_cursor = coalesce($2, fanout_cursor),
    fanout_status = CASE WHEN $3 THEN 'done' ELSE 'pending' END
WHERE app_id = $4 AND id = $1;

-- --- devices ---------------------------------------------------------------------------

-- name: lock_user_devices
-- $1 app id, $2 user id: held until the transaction ends, so one user's registrations
-- take turns against the devices-per-user limit.
SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 727276));

-- name: count_user_devices
-- $1 app id, $2 user id, $3 a token not to count (the one being registered)
SELECT count(*) AS n FROM devices
WHERE app_id = $1 AND user_id = $2 AND status = 'active' AND token <> $3;

-- name: upsert_device
-- $1 new id, $2 app id, $3 platform, $4 token, $5 user id, $6 topics, $7 locale,
-- $8 app version. Registering again updates it (a token that changed hands moves to the
-- new user) and revives a pruned token. "inserted" tells new from updated.
INSERT INTO devices (id, app_id, platform, token, user_id, topics, locale, app_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (app_id, token) DO UPDATE SET
    platform = EXCLUDED.platform, user_id = EXCLUDED.user_id, topics = EXCLUDED.topics,
    locale = EXCLUDED.locale, app_version = EXCLUDED.app_version, status = 'active',
    pruned_reason = NULL, pruned_at = NULL, registered_at = now(), updated_at = now()
RETURNING id, platform, token, user_id, topics, locale, app_version, status, pruned_reason,
          pruned_at, registered_at, created_at, updated_at, (xmax = 0) AS inserted;

-- name: get_device
-- $1 app id, $2 token, $3 user id (NULL = any user)
SELECT id, platform, token, user_id, topics, locale, app_version, status, pruned_reason,
       pruned_at, registered_at, created_at, updated_at
FROM devices
WHERE app_id = $1 AND token = $2 AND ($3::text IS NULL OR user_id = $3);

-- name: list_devices
-- $1 app id, $2 user id, $3 topic, $4 platform, $5 status, $6 search: a user id exactly or
-- the start of a token (each NULL = any), $7 cursor (id, exclusive, or NULL), $8 limit
SELECT id, platform, token, user_id, topics, locale, app_version, status, pruned_reason,
       pruned_at, registered_at, created_at, updated_at
FROM devices
WHERE app_id = $1
  AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR topics @> ARRAY[$3::text])
  AND ($4::text IS NULL OR platform = $4)
  AND ($5::text IS NULL OR status = $5)
  AND ($6::text IS NULL OR user_id = $6 OR starts_with(token, $6))
  AND ($7::text IS NULL OR id < $7)
ORDER BY id DESC LIMIT $8;

-- name: set_device_topics
-- $1 app id, $2 token, $3 user id (NULL = any), $4 topics
UPDATE devices SET topics = $4, updated_at = now()
WHERE app_id = $1 AND token = $2 AND ($3::text IS NULL OR user_id = $3)
RETURNING id, platform, token, user_id, topics, locale, app_version, status, pruned_reason,
          pruned_at, registered_at, created_at, updated_at;

-- name: delete_device
-- $1 app id, $2 token, $3 user id (NULL = any). Its pending pushes fail first.
WITH gone AS (
    SELECT id FROM devices
    WHERE app_id = $1 AND token = $2 AND ($3::text IS NULL OR user_id = $3)
), failed AS (
    UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, lease_id = NULL,
        last_error = 'device deleted', updated_at = now()
    WHERE device_id IN (SELECT id FROM gone) AND status = 'pending'
)
DELETE FROM devices WHERE id IN (SELECT id FROM gone)
RETURNING id;

-- --- push credentials ------------------------------------------------------------------

-- name: put_credentials
-- $1 app id, $2 provider ('fcm' | 'apns'), $3 config (JSON text)
INSERT INTO push_credentials (app_id, provider, config) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (app_id, provider) DO UPDATE SET config = EXCLUDED.config, updated_at = now()
RETURNING provider, config, updated_at;

-- name: list_credentials
-- $1 app id
SELECT provider, config, updated_at FROM push_credentials WHERE app_id = $1 ORDER BY provider;

-- --- dashboard (gateway/dashboard) ---------------------------------------------------
-- Event type filters take what an endpoint's event_types takes: an exact name,
-- 'prefix.*' or '*'.

-- name: dashboard_events
-- $1 app id, $2 event type filter, $3 delivery status (events with a delivery in it),
-- $4 created at or after, $5 created before, $6 id prefix (each NULL = any),
-- $7 cursor (id, exclusive, or NULL), $8 limit. Each event with its deliveries counted.
SELECT e.id, e.type, e.created_at, c.deliveries, c.pending, c.succeeded, c.failed
FROM events e
CROSS JOIN LATERAL (
    SELECT count(*) AS deliveries,
           count(*) FILTER (WHERE d.status = 'pending') AS pending,
           count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE d.status = 'failed') AS failed
    FROM (SELECT status FROM deliveries
          WHERE app_id = e.app_id AND event_id = e.id
            AND id >= 'dlv_' || substr(e.id, 5, 12)
            AND id < 'dlv_' || substr(e.id, 5, 12) || 'g'
          UNION ALL
          SELECT status FROM deliveries
          WHERE event_id = e.id AND substr(id, 5, 12) <> substr(event_id, 5, 12)
            AND app_id = e.app_id) d
) c
WHERE e.app_id = $1
  AND ($2::text IS NULL OR gateway_type_matches(ARRAY[$2::text], e.type))
  AND ($3::text IS NULL OR CASE $3 WHEN 'pending' THEN c.pending WHEN 'succeeded'
                                   THEN c.succeeded ELSE c.failed END > 0)
  AND ($4::timestamptz IS NULL OR e.created_at >= $4)
  AND ($5::timestamptz IS NULL OR e.created_at < $5)
  AND ($6::text IS NULL OR starts_with(e.id, $6))
  AND ($7::text IS NULL OR e.id < $7)
ORDER BY e.id DESC LIMIT $8;

-- name: dashboard_deliveries
-- $1 app id, $2 status, $3 endpoint id, $4 event type filter, $5 created at or after,
-- $6 created before (each NULL = any), $7 cursor (id, exclusive, or NULL), $8 limit.
-- Deliveries, newest first, with their event's type and their target.
SELECT d.id, d.event_id, d.endpoint_id, d.device_id, d.kind, d.status, d.attempt_count,
       nullif(d.next_attempt_at, 'infinity') AS due_at, d.lease_id IS NOT NULL AS leased,
       d.last_attempt_at, d.last_error, d.created_at, d.updated_at,
       ev.type AS event_type, ep.url AS endpoint_url, dv.token AS device_token,
       dv.platform AS device_platform
FROM deliveries d
JOIN events ev ON ev.app_id = d.app_id AND ev.id = d.event_id
LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
LEFT JOIN devices dv ON dv.id = d.device_id
WHERE d.app_id = $1
  AND ($2::text IS NULL OR d.status = $2)
  AND ($3::text IS NULL OR d.endpoint_id = $3)
  AND ($4::text IS NULL OR gateway_type_matches(ARRAY[$4::text], ev.type))
  AND ($5::timestamptz IS NULL OR d.created_at >= $5)
  AND ($6::timestamptz IS NULL OR d.created_at < $6)
  AND ($7::text IS NULL OR d.id < $7)
ORDER BY d.id DESC LIMIT $8;

-- name: dashboard_event_deliveries
-- $1 app id, $2 event id, $3 limit. The event's deliveries, oldest first, with their
-- target.
SELECT d.id, d.event_id, d.endpoint_id, d.device_id, d.kind, d.status, d.attempt_count,
       nullif(d.next_attempt_at, 'infinity') AS due_at, d.lease_id IS NOT NULL AS leased,
       d.last_attempt_at, d.last_error, d.created_at, d.updated_at,
       ev.type AS event_type, ep.url AS endpoint_url, dv.token AS device_token,
       dv.platform AS device_platform
FROM (SELECT * FROM deliveries
      WHERE app_id = $1 AND event_id = $2
        AND id >= 'dlv_' || substr($2, 5, 12) AND id < 'dlv_' || substr($2, 5, 12) || 'g'
      UNION ALL
      SELECT * FROM deliveries
      WHERE event_id = $2 AND substr(id, 5, 12) <> substr(event_id, 5, 12)
        AND app_id = $1) d
JOIN events ev ON ev.app_id = d.app_id AND ev.id = d.event_id
LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
LEFT JOIN devices dv ON dv.id = d.device_id
ORDER BY d.id LIMIT $3;

-- name: dashboard_health
-- $1 app id (NULL = every app). Queue depth, the oldest pending delivery, and attempts in
-- the last minute (from the BRIN index on attempt times: the recent blocks only).
SELECT
    (SELECT count(*) FROM deliveries
     WHERE status = 'pending' AND ($1::text IS NULL OR app_id = $1)) AS pending,
    (SELECT min(created_at) FROM deliveries
     WHERE status = 'pending' AND ($1::text IS NULL OR app_id = $1)) AS oldest_pending_at,
    (SELECT count(*) FROM attempts
     WHERE attempted_at > now() - interval '1 minute'
       AND ($1::text IS NULL OR app_id = $1)) AS attempts_last_minute,
    now() AS now;

-- --- dashboard sessions ------------------------------------------------------------

-- name: create_session
-- $1 id, $2 kind ('admin' | 'app'), $3 app id, $4 seconds it lasts
INSERT INTO dashboard_sessions (id, kind, app_id, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4));

-- name: session_alive
-- $1 id
SELECT 1 AS alive FROM dashboard_sessions WHERE id = $1 AND expires_at > now();

-- name: end_session
-- $1 id
DELETE FROM dashboard_sessions WHERE id = $1;

-- name: prune_sessions
DELETE FROM dashboard_sessions WHERE expires_at < now();

-- --- metrics ---------------------------------------------------------------------------

-- name: delivery_backlog
-- For /metrics, database-wide: pending deliveries (due, scheduled, in flight or parked),
-- and how many seconds the most overdue due one has waited (0 when none is overdue).
-- Both come from the deliveries_due partial index.
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(next_attempt_at)
                        FILTER (WHERE next_attempt_at <= now())), 0)::float8 AS oldest_due_s
FROM deliveries WHERE status = 'pending';

-- --- retention (gateway/retention.py) ------------------------------------------------

-- name: retention_try_lock
-- $1 lock key. Session-level, so one process prunes at a time; released by retention_unlock.
SELECT pg_try_advisory_lock($1);

-- name: retention_unlock
-- $1 lock key
SELECT pg_advisory_unlock($1);

-- name: make_partitions
-- The day partitions of events, deliveries and attempts from yesterday to a week ahead
-- (UTC) that do not exist yet; returns how many tables were made.
SELECT gateway_make_partitions(current_date - 1, current_date + 7) AS made;

-- name: day_partitions
-- Every day partition of events, deliveries and attempts, oldest first; "detaching" when
-- a DETACH ... CONCURRENTLY was cut short (it needs a FINALIZE).
SELECT c.relname AS name, p.relname AS parent, i.inhdetachpending AS detaching
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relnamespace = current_schema()::regnamespace
  AND p.relname IN ('events', 'deliveries', 'attempts')
ORDER BY c.relname;

-- name: day_held
-- $1 a day (UTC). Whether anything of that day is still to do: a pending delivery, a
-- fan-out, or (for events from before migration 0005) a pending delivery filed elsewhere.
SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'pending'
               AND id >= gateway_day_bound('dlv', $1) AND id < gateway_day_bound('dlv', $1 + 1))
    OR EXISTS (SELECT 1 FROM events WHERE fanout_status = 'pending'
               AND id >= gateway_day_bound('evt', $1) AND id < gateway_day_bound('evt', $1 + 1))
    OR EXISTS (SELECT 1 FROM deliveries WHERE status = 'pending'
               AND substr(id, 5, 12) <> substr(event_id, 5, 12)
               AND event_id >= gateway_day_bound('evt', $1)
               AND event_id < gateway_day_bound('evt', $1 + 1)) AS held;

-- name: day_rows
-- $1 a day (UTC): how many rows its partitions hold (counted before they are dropped).
SELECT (SELECT count(*) FROM events WHERE id >= gateway_day_bound('evt', $1)
                                      AND id < gateway_day_bound('evt', $1 + 1)) AS events,
       (SELECT count(*) FROM deliveries WHERE id >= gateway_day_bound('dlv', $1)
                                          AND id < gateway_day_bound('dlv', $1 + 1))
           AS deliveries,
       (SELECT count(*) FROM attempts WHERE delivery_id >= gateway_day_bound('dlv', $1)
                                        AND delivery_id < gateway_day_bound('dlv', $1 + 1))
           AS attempts;

-- name: retention_deliveries
-- $1 a day (UTC) a pending delivery holds, $2 batch size, $3 cutoff. Row by row within
-- that day's partitions: deletes up to $2 finished (succeeded or failed) deliveries last
-- changed before $3, with their attempts.
WITH doomed AS (
    SELECT app_id, id FROM deliveries
    WHERE id >= gateway_day_bound('dlv', $1) AND id < gateway_day_bound('dlv', $1 + 1)
      AND status IN ('succeeded', 'failed') AND updated_at < $3
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone_attempts AS (
    DELETE FROM attempts a USING doomed WHERE a.delivery_id = doomed.id RETURNING 1
), gone AS (
    DELETE FROM deliveries d USING doomed
    WHERE d.app_id = doomed.app_id AND d.id = doomed.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone)::int AS deliveries,
       (SELECT count(*) FROM gone_attempts)::int AS attempts;

-- name: retention_events
-- $1 a day (UTC) a pending delivery holds, $2 batch size. Row by row within that day's
-- partition: deletes up to $2 events with no delivery left (retention_deliveries took the
-- finished ones; pending ones keep their event) and no push fan-out still to do.
WITH doomed AS (
    SELECT e.app_id, e.id FROM events e
    WHERE e.id >= gateway_day_bound('evt', $1) AND e.id < gateway_day_bound('evt', $1 + 1)
      AND (e.fanout_status IS NULL OR e.fanout_status = 'done')
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.app_id = e.app_id AND d.event_id = e.id
                        AND d.id >= 'dlv_' || substr(e.id, 5, 12)
                        AND d.id < 'dlv_' || substr(e.id, 5, 12) || 'g')
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.event_id = e.id
                        AND substr(d.id, 5, 12) <> substr(d.event_id, 5, 12))
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM events e USING doomed
    WHERE e.app_id = doomed.app_id AND e.id = doomed.id RETURNING 1
)
SELECT count(*)::int AS deleted FROM gone;

-- name: retention_idempotency_keys
-- $1 seconds a key stays useful, $2 batch size, $3 app id and $4 key to continue after
-- ('' and '' to start). Walks the primary key $2 keys at a time and deletes the expired
-- ones among them; returns how many went and where to continue (NULL: done).
WITH batch AS (
    SELECT app_id, key FROM idempotency_keys
    WHERE (app_id, key) > ($3::text, $4::text)
    ORDER BY app_id, key LIMIT $2
), doomed AS (
    SELECT k.app_id, k.key FROM idempotency_keys k
    JOIN batch b ON b.app_id = k.app_id AND b.key = k.key
    WHERE k.created_at < now() - make_interval(secs => $1)
    FOR UPDATE OF k SKIP LOCKED
), gone AS (
    DELETE FROM idempotency_keys k USING doomed d
    WHERE k.app_id = d.app_id AND k.key = d.key RETURNING 1
)
SELECT (SELECT count(*) FROM gone)::int AS deleted, last.app_id, last.key
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT app_id, key FROM batch ORDER BY app_id DESC, key DESC LIMIT 1)
    AS last ON true;

-- --- secrets at rest (gateway secrets reseal) ---------------------------------------

-- name: secrets_of_endpoints
-- $1 cursor (id, exclusive; '' to start), $2 limit
SELECT id, secret, previous_secret FROM endpoints WHERE id > $1 ORDER BY id LIMIT $2;

-- name: reseal_endpoint
-- $1 id, $2 secret, $3 previous secret
UPDATE endpoints SET secret = $2, previous_secret = $3 WHERE id = $1;

-- name: secrets_of_credentials
-- $1 and $2 cursor (app id and provider, exclusive; '' and '' to start), $3 limit
SELECT app_id, provider, config FROM push_credentials
WHERE (app_id, provider) > ($1::text, $2::text)
ORDER BY app_id, provider LIMIT $3;

-- name: reseal_credentials
-- $1 app id, $2 provider, $3 config (JSON text)
UPDATE push_credentials SET config = $3::jsonb WHERE app_id = $1 AND provider = $2;

-- name: secrets_of_apps
-- $1 cursor (id, exclusive; '' to start), $2 limit
SELECT id, user_token_secret FROM apps WHERE id > $1 ORDER BY id LIMIT $2;

-- name: reseal_app
-- $1 id, $2 user-token secret
UPDATE apps SET user_token_secret = $2 WHERE id = $1;

-- --- housekeeping ----------------------------------------------------------------------

-- name: ping
SELECT 1;

-- name: migration_lock
-- Held for the session while migrations run: concurrent start-ups take turns.
SELECT pg_advisory_lock(727274);

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version FROM schema_migrations;

-- name: record_migration
-- $1 version, $2 name
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

-- --- endpoint options: rate limits, headers, filters (migration 0009) -----------------

-- name: create_send_rate
-- $1 endpoint id, $2 its rate_limit: the send schedule its claims lock (claim_due).
INSERT INTO endpoint_send_rates (endpoint_id, rate_limit) VALUES ($1, $2);

-- name: reset_send_rate
-- $1 endpoint id, $2 its rate_limit now (NULL: none). The schedule takes the new limit,
-- and held-back deliveries are booked from the next free send time again. Waits for a
-- claim moving the schedule right now (claims waiting behind this one then read the new
-- limit); returns the last send time handed out until then (NULL: none), for
-- release_booked.
WITH old AS (
    SELECT endpoint_id, booked_until FROM endpoint_send_rates WHERE endpoint_id = $1
    FOR UPDATE
), reset AS (
    UPDATE endpoint_send_rates r SET rate_limit = $2, booked_until = NULL
    FROM old WHERE r.endpoint_id = old.endpoint_id
    RETURNING old.booked_until
), made AS (
    INSERT INTO endpoint_send_rates (endpoint_id, rate_limit)
    SELECT $1, $2 WHERE $2::int IS NOT NULL AND NOT EXISTS (SELECT 1 FROM old)
)
SELECT booked_until FROM reset;

-- name: release_booked
-- $1 endpoint id, $2 app id, $3 the last send time booked (reset_send_rate). Its pending
-- deliveries booked a later send time by its rate limit come due at once, to be booked
-- again under the limit it has now (a delivery waiting to be retried within the booked
-- span comes early too). Run after the transaction that changed the limit: a claim locks
-- the schedule while holding deliveries, so taking them in the other order could
-- deadlock. Wakes the dispatchers.
WITH released AS (
    UPDATE deliveries SET next_attempt_at = now()
    WHERE app_id = $2 AND endpoint_id = $1 AND status = 'pending' AND lease_id IS NULL
      AND next_attempt_at > now() AND next_attempt_at <= $3
    RETURNING 1
)
SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM released);

-- name: endpoint_headers_to_reseal
-- $1 cursor (id, exclusive; '' to start), $2 limit: endpoints with custom headers.
SELECT id, headers FROM endpoints WHERE id > $1 AND headers <> '{}' ORDER BY id LIMIT $2;

-- name: reseal_endpoint_headers
-- $1 id, $2 headers (JSON text, values sealed)
UPDATE endpoints SET headers = $2::jsonb WHERE id = $1;
