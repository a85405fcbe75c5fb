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
-- $1 a key's hash. The live app whose key or previous key it is, and until when it works:
-- key_expires_at is NULL for the current key, the end of its grace for the previous one
-- (the caller judges it, on every use of a cached key too).
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device,
       CASE WHEN api_key_hash = $1 THEN NULL ELSE previous_key_expires_at END
           AS key_expires_at
FROM apps
WHERE (api_key_hash = $1 OR (previous_key_hash = $1 AND previous_key_expires_at > now()))
  AND deleted_at IS NULL;

-- name: get_app
-- $1 app id
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device
FROM apps WHERE id = $1 AND deleted_at IS NULL;

-- name: list_apps
-- $1 cursor (id, exclusive, or NULL), $2 limit
SELECT id, name, created_at, rate_limit, max_endpoints, max_devices_per_user,
       max_topics_per_device
FROM apps
WHERE ($1::text IS NULL OR id < $1) AND deleted_at IS NULL
ORDER BY id DESC LIMIT $2;

-- name: delete_app
-- $1 app id. Marks it deleted, which takes effect at once everywhere: its keys and user
-- tokens are refused, it is not listed, no claim takes its deliveries and no fan-out
-- expands its events, and its dashboard sessions end here. Every process hears it on
-- gateway_apps at commit (its key cache, and the cleanup that removes the rest in batches).
WITH gone AS (
    UPDATE apps SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL
    RETURNING id
), ended AS (
    DELETE FROM dashboard_sessions WHERE app_id IN (SELECT id FROM gone)
)
SELECT id, pg_notify('gateway_apps', 'deleted ' || id) FROM gone;

-- name: rotate_app_key
-- $1 app id, $2 the new key's hash, $3 seconds the current key keeps working (0: it ends
-- now). One previous key is kept: one still in its grace from an earlier rotation ends
-- now. The app's dashboard sessions, opened with a key being replaced, end when the
-- previous key does (now, for 0). Every process hears it on gateway_apps at commit (its
-- key cache).
WITH rotated AS (
    UPDATE apps SET
        previous_key_hash = CASE WHEN $3::float8 > 0 THEN api_key_hash END,
        previous_key_expires_at =
            CASE WHEN $3::float8 > 0 THEN now() + make_interval(secs => $3::float8) END,
        api_key_hash = $2
    WHERE id = $1 AND deleted_at IS NULL
    RETURNING id, previous_key_expires_at
), sessions AS (
    UPDATE dashboard_sessions s
    SET expires_at = least(s.expires_at, coalesce(r.previous_key_expires_at, now()))
    FROM rotated r WHERE s.app_id = r.id
)
SELECT previous_key_expires_at, pg_notify('gateway_apps', 'rotated ' || id) FROM rotated;

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
    WHERE id = $1 AND deleted_at IS NULL
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
SELECT user_token_secret FROM apps WHERE id = $1 AND deleted_at IS NULL;

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
          created_at, updated_at, failing_since, circuit_open_until, rate_limit, headers,
          filter, secret;

-- name: list_endpoints
-- $1 app id, $2 cursor (id, exclusive, or NULL), $3 limit
SELECT id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
       created_at, updated_at, failing_since, circuit_open_until, rate_limit, headers, filter
FROM endpoints
WHERE app_id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3;

-- name: get_endpoint
-- $1 app id, $2 endpoint id
SELECT id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
       created_at, updated_at, failing_since, circuit_open_until, rate_limit, headers, filter
FROM endpoints WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL;

-- name: get_endpoint_for_update
-- $1 app id, $2 endpoint id
SELECT id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
       created_at, updated_at, failing_since, circuit_open_until, rate_limit, headers, filter
FROM endpoints WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE;

-- name: get_endpoint_secret
-- $1 app id, $2 endpoint id
SELECT secret, previous_secret_expires_at
FROM endpoints WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL;

-- name: update_endpoint
-- $1 app id, $2 endpoint id, $3 url, $4 description, $5 event_types, $6 rate_limit,
-- $7 headers (JSON text, values sealed), $8 filter (JSON text or NULL). Disabling and
-- enabling go through disable_endpoints and enable_endpoints
-- (gateway/store/endpoint_health.py).
UPDATE endpoints SET
    url = $3, description = $4, event_types = $5, rate_limit = $6, headers = $7::jsonb,
    filter = $8::jsonb, updated_at = now()
WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL
RETURNING id, app_id, url, description, event_types, status, disabled_reason, disabled_at,
          created_at, updated_at, failing_since, circuit_open_until, rate_limit, headers,
          filter;

-- name: endpoints_changed
-- $1 ids of endpoints whose sending changed (a PATCH, a deletion, a secret rotated, a
-- circuit opened, an endpoint disabled). Every process hears it on gateway_apps at commit and hands back
-- the deliveries to them that it holds handed over and not yet started
-- (Dispatcher.forget_endpoints): claimed again, they go as the endpoint now is.
SELECT pg_notify('gateway_apps', 'endpoints ' || array_to_string($1::text[], ' '));

-- name: lock_pending_of_endpoint
-- $1 app id, $2 endpoint id. Before delete_endpoint: its pending deliveries, locked first,
-- in the order a settlement locks (a delivery, then its endpoint), so the two never
-- deadlock.
SELECT 1 FROM deliveries
WHERE app_id = $1 AND endpoint_id = $2 AND status = 'pending'
FOR UPDATE;

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

-- name: disable_endpoints
-- $1 endpoint ids, $2 reason ('gone' | 'failing' | 'manual'). The one way an endpoint is
-- disabled (gateway/store/endpoint_health.py); returns those it disabled.
UPDATE endpoints SET status = 'disabled', disabled_reason = $2,
    disabled_at = now(), updated_at = now()
WHERE id = ANY($1::text[]) AND status = 'active'
RETURNING id, app_id;

-- --- event types (the catalog) -------------------------------------------------------
-- Listed by name; the cursor is the last name of the previous page.

-- name: create_event_type
-- $1 app id, $2 name, $3 description, $4 schema (JSON text, or NULL). No row: the name is
-- taken.
INSERT INTO event_types (app_id, name, description, schema) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (app_id, name) DO NOTHING
RETURNING name, description, schema, created_at, updated_at;

-- name: list_event_types
-- $1 app id, $2 cursor (name, exclusive, or NULL), $3 limit
SELECT name, description, schema, created_at, updated_at
FROM event_types
WHERE app_id = $1 AND ($2::text IS NULL OR name > $2)
ORDER BY name LIMIT $3;

-- name: get_event_type
-- $1 app id, $2 name
SELECT name, description, schema, created_at, updated_at
FROM event_types WHERE app_id = $1 AND name = $2;

-- name: update_event_type
-- $1 app id, $2 name, $3 whether to set the description, $4 the description, $5 whether
-- to set the schema, $6 the schema (JSON text, or NULL to remove it)
UPDATE event_types SET
    description = CASE WHEN $3 THEN $4 ELSE description END,
    schema = CASE WHEN $5 THEN $6::jsonb ELSE schema END,
    updated_at = now()
WHERE app_id = $1 AND name = $2
RETURNING name, description, schema, created_at, updated_at;

-- name: delete_event_type
-- $1 app id, $2 name
DELETE FROM event_types WHERE app_id = $1 AND name = $2 RETURNING name;

-- name: count_event_types
-- $1 app id
SELECT count(*) FROM event_types WHERE app_id = $1;

-- name: event_type_schema
-- $1 app id, $2 name: the schema ingest checks that type's payloads against, with its
-- length in characters of JSON (gateway/schemas.py). No row: no entry, or no schema.
SELECT name, schema, length(schema::text) AS chars
FROM event_types WHERE app_id = $1 AND name = $2 AND schema IS NOT NULL;

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
-- $1 ids, $2 app ids, $3 types, $4 raw payloads, $5 created_at (one time for every row),
-- $6 push targets as JSON text ({"user_ids", "topics", "notification"}) or NULL, $7
-- traceparents and $8 tracestates or NULLs (arrays of one length but $5), $9 a lease id
-- and $10 its length in seconds, or NULLs, $11 endpoint ids and $12 app ids the caller
-- has no room for (their deliveries are not leased), or NULLs.
-- Creates each event and one pending delivery per active endpoint subscribed to its type
-- whose filter (if it has one) the payload passes, and wakes the dispatchers (and the
-- fan-out, for push targets) at commit: one statement, so without idempotency keys it
-- needs no explicit transaction. Push targets are expanded later by the fan-out.
-- With a lease ($9), the deliveries to endpoints a claim would take as they come (no
-- rate limit, circuit closed: claim_due_plain's "unusual"), of endpoints and apps the
-- caller has room for, are made leased to the caller,
-- who sends them itself (a handed-over delivery, Dispatcher.hand_over): no claim has to
-- find them, and only the others wake the dispatchers. Answers one row per leased
-- delivery, with what sending it needs of its endpoint (as claim_due answers it), or one
-- row of NULLs when none was leased.
WITH filtered AS (
    -- Apps of this batch with an endpoint that filters: only their events' payloads are
    -- read again below, as jsonb.
    SELECT DISTINCT app_id FROM endpoints
    WHERE app_id = ANY($2::text[]) AND filter IS NOT NULL AND deleted_at IS NULL
), ev AS (
    INSERT INTO events (id, app_id, type, payload, created_at, push_user_ids, push_topics,
                        notification, fanout_status, traceparent, tracestate)
    SELECT u.id, u.app_id, u.type, u.payload, $5::timestamptz,
           CASE WHEN u.push IS NOT NULL THEN
               ARRAY(SELECT jsonb_array_elements_text(u.push::jsonb -> 'user_ids')) END,
           CASE WHEN u.push IS NOT NULL THEN
               ARRAY(SELECT jsonb_array_elements_text(u.push::jsonb -> 'topics')) END,
           u.push::jsonb -> 'notification',
           CASE WHEN u.push IS NOT NULL THEN 'pending' END, u.traceparent, u.tracestate
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $6::text[], $7::text[],
                $8::text[])
        AS u(id, app_id, type, payload, push, traceparent, tracestate)
    RETURNING id, app_id, type, created_at, fanout_status,
              CASE WHEN app_id IN (SELECT app_id FROM filtered) THEN payload END AS payload
), dl AS (
    INSERT INTO deliveries (id, app_id, event_id, endpoint_id, kind, next_attempt_at,
                            lease_id, created_at, updated_at)
    SELECT gateway_delivery_id(ev.id, ep.id), ev.app_id, ev.id, ep.id, 'webhook',
           CASE WHEN l.leased THEN now() + make_interval(secs => $10::float8)
                ELSE ev.created_at END,
           CASE WHEN l.leased THEN $9::uuid END, ev.created_at, ev.created_at
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
    CROSS JOIN LATERAL (
        SELECT $9::uuid IS NOT NULL AND ep.circuit_open_until IS NULL
               AND ep.id <> ALL(coalesce($11::text[], '{}'))
               AND ev.app_id <> ALL(coalesce($12::text[], '{}'))
               AND NOT EXISTS (SELECT 1 FROM endpoint_send_rates r
                               WHERE r.endpoint_id = ep.id AND r.rate_limit IS NOT NULL)
            AS leased
    ) l
    RETURNING id, app_id, event_id, endpoint_id, lease_id IS NOT NULL AS leased
)
SELECT n.woke, n.fanout, d.id, d.app_id, d.event_id, d.endpoint_id, ep.url, ep.secret,
       CASE WHEN ep.previous_secret_expires_at > now() THEN ep.previous_secret END
           AS previous_secret,
       ep.headers
FROM (SELECT (SELECT pg_notify('gateway_deliveries', '')
              WHERE EXISTS (SELECT 1 FROM dl WHERE NOT dl.leased)) AS woke,
             (SELECT pg_notify('gateway_fanout', '')
              WHERE EXISTS (SELECT 1 FROM ev WHERE fanout_status = 'pending')) AS fanout) n
LEFT JOIN (dl d JOIN endpoints ep ON ep.id = d.endpoint_id) ON d.leased;

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
-- filter (exact, 'prefix.*' or '*'), $5 created at or after, $6 created before, $7 delivery
-- ids (a batch of a recover task).
-- The one way a failed delivery goes back in the queue (a manual retry of one, a retry of
-- many, a recover task): at the start of the schedule; one whose endpoint is disabled waits parked until
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
      AND ($7::text[] IS NULL OR d.id = ANY($7::text[]))
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
-- Takes due deliveries no other dispatcher holds, of apps not deleted, whose endpoint is
-- active, none past its target's or its app's room, apps in turn (each app's oldest
-- first), so one app's backlog or hanging endpoints never crowd out another's; extends
-- their due time by the lease (a crashed claimer's work comes back by itself), and
-- returns what each needs to be sent.
-- The scan reads due rows without locking them; only the rows this claim changes (taken,
-- booked or parked) are locked, skipping any another claimer holds and re-checking that
-- each is still due, so a claim costs what it takes, not what it looks at. (The common
-- claim, claim_due_plain, locks what it reads instead: see there.)
-- An endpoint whose circuit is not closed (gateway/health.py) gets nothing from the scan:
-- the due deliveries it meets there are parked, out of the due index's way until the
-- circuit closes. A half-open one gets one probe, the oldest of its parked deliveries,
-- taken by marking the endpoint (circuit_probe_until, for the lease), so one probe is out
-- at a time across all dispatchers. A rate-limited endpoint gives what its send schedule
-- allows now; its other due deliveries are not taken but booked the next free send
-- times, oldest first. The first row says how many were parked ("parked") and held back
-- ("held_back"), and how many it saw due but left for want of room ("waiting": the
-- claimer's own deliveries must finish first); when nothing was claimed it is the only
-- row, its id NULL. "passed_over" counts the due rows read that come before the last one
-- taken, in (due time, id) order, and were not taken (every row read, when none was
-- taken): 0 means what was taken is the head of what was read, so a scan of only a
-- little more than the claim may take would have taken the same rows, or others as due
-- (PostgresQueue narrows the next scans then).
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
      -- NOT IN, not <> ALL(ARRAY(...)): the planner takes an array it cannot see for ten
      -- elements and then expects almost no due row to pass, so it reads and sorts every
      -- due row instead of walking deliveries_due in order (bench/soak.py found it).
      AND d.kind NOT IN (SELECT k FROM unnest($6::text[], $7::int[]) AS r(k, room)
                         WHERE room <= 0)
      AND d.app_id NOT IN (SELECT a FROM unnest($8::text[], $9::int[]) AS r(a, room)
                           WHERE room <= 0)
      -- A deleted app's deliveries are never claimed again (the cleanup removes them).
      AND d.app_id NOT IN (SELECT id FROM apps WHERE deleted_at IS NOT NULL)
    -- Due time alone, in deliveries_due's own order (equal times in no set order: as the
    -- index holds them): ordering ties by id as well made the walk read and sort every
    -- row of the scan's last due time, all of a fan-out batch's 1,000 (bench/README.md,
    -- "Push"). When more rows share a due time than the scan reads, which of them go
    -- first is therefore not by id; ranked still orders what was read by (due time, id).
    ORDER BY d.next_attempt_at
    -- A LIMIT the planner cannot read plans like the generic plan does (for a tenth of the
    -- rows): the ordered index walk, stopping after $12, however few rows it expects.
    LIMIT (SELECT $12::bigint)
), tripped AS (
    SELECT e.id FROM endpoints e
    WHERE e.id IN (SELECT endpoint_id FROM candidates) AND e.circuit_open_until IS NOT NULL
), parkable AS (
    -- Share-locked: a circuit closing meanwhile waits for this claim, then resumes what it
    -- parked (gateway/store/endpoint_health.py). One being written right now is skipped:
    -- its deliveries stay due for the next claim.
    SELECT e.id FROM endpoints e
    WHERE e.id IN (SELECT id FROM tripped) AND e.circuit_open_until IS NOT NULL
    FOR SHARE SKIP LOCKED
), half_open AS (
    SELECT e.id, e.app_id FROM endpoints e
    WHERE e.circuit_open_until <= now()
      AND (e.circuit_probe_until IS NULL OR e.circuit_probe_until <= now())
      AND e.status = 'active' AND e.deleted_at IS NULL
      AND e.app_id NOT IN (SELECT a FROM unnest($8::text[], $9::int[]) AS r(a, room)
                           WHERE room <= 0)
      AND e.app_id NOT IN (SELECT id FROM apps WHERE deleted_at IS NOT NULL)
      AND EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.endpoint_id = e.id AND d.next_attempt_at = 'infinity'
                    AND d.status = 'pending')
    ORDER BY e.circuit_open_until
    LIMIT $1
    FOR UPDATE OF e SKIP LOCKED
), probes AS (
    SELECT p.app_id, p.id, h.id AS endpoint_id
    FROM half_open h
    CROSS JOIN LATERAL (
        SELECT d.app_id, d.id FROM deliveries d
        WHERE d.endpoint_id = h.id AND d.app_id = h.app_id
          AND d.next_attempt_at = 'infinity' AND d.status = 'pending'
        ORDER BY d.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) p
), probing AS (
    UPDATE endpoints e SET circuit_probe_until = now() + make_interval(secs => $2)
    FROM probes WHERE e.id = probes.endpoint_id
    RETURNING e.id
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
           -- (least() passes over a NULL: an endpoint with no rate limit has no budget.)
           least(coalesce(ep.room, k.room, $10), b.budget) AS target_room,
           coalesce(ap.room, $11) AS app_room, b.budget
    FROM candidates c
    LEFT JOIN unnest($4::text[], $5::int[]) AS ep(id, room) ON ep.id = c.endpoint_id
    LEFT JOIN unnest($6::text[], $7::int[]) AS k(kind, room)
        ON c.endpoint_id IS NULL AND k.kind = c.kind
    LEFT JOIN unnest($8::text[], $9::int[]) AS ap(id, room) ON ap.id = c.app_id
    LEFT JOIN budgets b ON b.endpoint_id = c.endpoint_id
    WHERE c.endpoint_id IS NULL OR c.endpoint_id NOT IN (SELECT id FROM tripped)
), chosen AS (
    SELECT app_id, id, endpoint_id, next_attempt_at FROM ranked
    WHERE nth_of_target <= target_room AND nth_of_app <= app_room
    ORDER BY nth_of_app, next_attempt_at, id
    LIMIT greatest($1 - (SELECT count(*) FROM probes), 0)
), held AS (
    -- Due deliveries of rate-limited endpoints past what the schedule allows now: the
    -- kth of an endpoint gets its kth next free send time.
    SELECT app_id, id, endpoint_id, nth_of_target - budget - 1 AS k FROM ranked
    WHERE nth_of_target > budget
), locked AS (
    -- The rows this claim changes, locked; one another claimer holds, or took since the
    -- scan (no longer due when re-read under the lock), is left alone.
    SELECT t.app_id, t.id, t.why, t.endpoint_id, t.k, t.next_attempt_at
    FROM (SELECT app_id, id, 'take' AS why, endpoint_id, NULL::bigint AS k, next_attempt_at
          FROM chosen
          UNION ALL
          SELECT app_id, id, 'book', endpoint_id, k, NULL FROM held
          UNION ALL
          SELECT c.app_id, c.id, 'park', c.endpoint_id, NULL, NULL FROM candidates c
          WHERE c.endpoint_id IN (SELECT id FROM parkable)) t
    -- One key lookup per row (a join here may be planned as a scan of every due row).
    -- The re-check is written so that no partial index can serve it, only the primary
    -- key (status and due time are never NULL: the coalesces change no answer): on a
    -- partition with no statistics yet (a day's first minute) the planner took the due
    -- index here and walked every due row for each row taken.
    CROSS JOIN LATERAL (
        SELECT 1 FROM deliveries d
        WHERE d.app_id = t.app_id AND d.id = t.id
          AND coalesce(d.status, '') = 'pending'
          AND coalesce(d.next_attempt_at, 'infinity') <= now()
        FOR UPDATE SKIP LOCKED
    ) still_due
), booking AS (
    -- What this claim books, numbered again without the rows another claimer had.
    SELECT app_id, id, endpoint_id,
           row_number() OVER (PARTITION BY endpoint_id ORDER BY k) - 1 AS k
    FROM locked WHERE why = 'book'
), schedules AS (
    -- Each schedule after this claim (SendRate.spend and SendRate.booking_start).
    SELECT b.endpoint_id, b.interval_s, s.tat, h.held,
           CASE WHEN b.booked_until IS NULL THEN f.free
                ELSE greatest(f.free, b.booked_until + make_interval(secs => b.interval_s))
           END AS first_slot
    FROM budgets b
    CROSS JOIN LATERAL (
        SELECT greatest(b.tat, b.at) + make_interval(secs => b.interval_s * count(*)) AS tat
        FROM locked l WHERE l.why = 'take' AND l.endpoint_id = b.endpoint_id) s
    CROSS JOIN LATERAL (
        SELECT count(*) AS held FROM booking WHERE booking.endpoint_id = b.endpoint_id) h
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
), changes AS (
    -- Every delivery this claim changes, with its new due time: parked (out of the due
    -- index's way), booked (its send time) or taken (due again when the lease runs out).
    SELECT app_id, id, 'park' AS why, 'infinity'::timestamptz AS next_attempt_at
    FROM locked WHERE why = 'park'
    UNION ALL
    SELECT h.app_id, h.id, 'book', s.first_slot + make_interval(secs => s.interval_s * h.k)
    FROM booking h JOIN schedules s ON s.endpoint_id = h.endpoint_id
    UNION ALL
    SELECT app_id, id, 'take', now() + make_interval(secs => $2)
    FROM (SELECT app_id, id FROM locked WHERE why = 'take'
          UNION ALL
          SELECT app_id, id FROM probes WHERE endpoint_id IN (SELECT id FROM probing)) pick
), changed AS (
    -- One UPDATE for all three: each UPDATE of the partitioned table opens every
    -- partition and its indexes when the statement starts, whether or not it changes a
    -- row there, and that start-up was a fifth of a claim's cost (bench/README.md).
    UPDATE deliveries d SET
        next_attempt_at = x.next_attempt_at,
        lease_id = CASE WHEN x.why = 'take' THEN $3 ELSE d.lease_id END,
        updated_at = CASE WHEN x.why = 'park' THEN now() ELSE d.updated_at END
    FROM changes x
    WHERE d.app_id = x.app_id AND d.id = x.id
    RETURNING x.why, d.id, d.app_id, d.event_id, d.endpoint_id, d.device_id, d.kind,
              d.schedule_pos, d.attempt_count
), claimed AS (
    SELECT id, app_id, event_id, endpoint_id, device_id, kind, schedule_pos, attempt_count
    FROM changed WHERE why = 'take'
)
-- One row per claimed delivery, or a single row of NULLs when none was: parked,
-- held_back (how many were booked for later) and waiting are on every row.
SELECT h.held_back, w.waiting, c.id, c.app_id, c.event_id, c.endpoint_id, c.device_id, c.kind,
       c.schedule_pos, c.attempt_count, ev.type AS event_type, ev.payload,
       ev.created_at AS event_created_at, ev.traceparent, ev.tracestate,
       -- An operational delivery's endpoint is the app's operational webhook.
       coalesce(ep.url, ow.url) AS url, coalesce(ep.secret, ow.secret) AS secret,
       CASE WHEN ep.previous_secret_expires_at > now() THEN ep.previous_secret END
           AS previous_secret,
       dv.token AS device_token, dv.platform, dv.status AS device_status,
       CASE WHEN c.kind <> 'webhook' THEN ev.notification END AS notification,
       pc.config AS credentials, ep.headers, n.parked, p.passed_over
FROM (SELECT count(*)::int AS parked FROM changed WHERE why = 'park') n
CROSS JOIN (SELECT count(*)::int AS held_back FROM booking) h
CROSS JOIN (SELECT ((SELECT count(*) FROM ranked) - (SELECT count(*) FROM chosen)
                    - (SELECT count(*) FROM held))::int AS waiting) w
CROSS JOIN (SELECT (count(*) - (SELECT count(*) FROM locked WHERE why = 'take'))::int
                       AS passed_over
            FROM ranked r
            -- The last row taken, by the due time it was read with (no join: a join of
            -- ranked and locked was a nested loop of every pair).
            WHERE coalesce((r.next_attempt_at, r.id) <= (
                SELECT l.next_attempt_at, l.id FROM locked l WHERE l.why = 'take'
                ORDER BY l.next_attempt_at DESC, l.id DESC LIMIT 1), true)) p
LEFT JOIN (claimed c
           JOIN events ev ON ev.app_id = c.app_id AND ev.id = c.event_id
           LEFT JOIN endpoints ep ON ep.id = c.endpoint_id
           LEFT JOIN operational_webhooks ow
               ON c.kind = 'operational' AND ow.id = c.endpoint_id
           LEFT JOIN devices dv ON dv.id = c.device_id
           LEFT JOIN push_credentials pc ON pc.app_id = c.app_id AND pc.provider = c.kind)
    ON true;

-- name: claim_due_plain
-- claim_due for the common case, 0.2-0.4 ms of PostgreSQL's CPU cheaper a claim
-- (bench/README.md, "A plain claim"): the same parameters $1-$12, the same scan, rooms,
-- order, row lock and answer, without what only open circuits and rate limits need
-- (parking, probes, send schedules: their CTEs cost each claim's start-up whether they
-- find anything or not). It takes nothing when claim_due would do any of that: when a
-- candidate's endpoint has a circuit that is not closed or a rate limit, or some
-- endpoint is due a probe. It then answers one row, its id NULL and "unusual" true, and
-- the caller claims with claim_due instead (PostgresQueue). held_back and parked are
-- always 0.
-- Unlike claim_due's, its scan locks the due rows it reads, skipping those another
-- claimer holds: two dispatchers draining one backlog otherwise both chose its head,
-- and each took only what the other had not locked first (bench/README.md, "Two
-- claimers on one backlog": 5,229-5,341 deliveries/s with two processes, 6,466-6,658
-- with one; scanning with the lock, 6,912-7,303 with two and PostgreSQL's CPU a
-- delivery back to one process's). Rows it read and did not take stay locked only
-- until the claim commits.
WITH full_targets AS (
    SELECT array_agg(id) FILTER (WHERE room <= 0) AS endpoints
    FROM unnest($4::text[], $5::int[]) AS r(id, room)
), candidates AS (
    -- As claim_due's candidates, word for word (its comments say why each is so), and
    -- locked (above).
    SELECT d.id, d.app_id, d.endpoint_id, d.kind, d.next_attempt_at
    FROM deliveries d, full_targets f
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.endpoint_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM endpoints e WHERE e.id = d.endpoint_id
          AND (e.status <> 'active' OR e.deleted_at IS NOT NULL)))
      AND (d.endpoint_id IS NULL OR d.endpoint_id <> ALL(coalesce(f.endpoints, '{}')))
      AND d.kind NOT IN (SELECT k FROM unnest($6::text[], $7::int[]) AS r(k, room)
                         WHERE room <= 0)
      AND d.app_id NOT IN (SELECT a FROM unnest($8::text[], $9::int[]) AS r(a, room)
                           WHERE room <= 0)
      AND d.app_id NOT IN (SELECT id FROM apps WHERE deleted_at IS NOT NULL)
    ORDER BY d.next_attempt_at
    LIMIT (SELECT $12::bigint)
    FOR UPDATE OF d SKIP LOCKED
), unusual AS (
    -- Would claim_due park, probe or book? (Its tripped, half_open and rates, unlocked
    -- and unlimited: it may say yes where claim_due then finds nothing to lock, never the
    -- other way.)
    SELECT EXISTS (SELECT 1 FROM endpoints e
                   WHERE e.id IN (SELECT endpoint_id FROM candidates)
                     AND e.circuit_open_until IS NOT NULL)
        OR EXISTS (SELECT 1 FROM endpoint_send_rates r
                   WHERE r.endpoint_id IN (SELECT endpoint_id FROM candidates)
                     AND r.rate_limit IS NOT NULL)
        OR EXISTS (SELECT 1 FROM endpoints e
                   WHERE e.circuit_open_until <= now()
                     AND (e.circuit_probe_until IS NULL OR e.circuit_probe_until <= now())
                     AND e.status = 'active' AND e.deleted_at IS NULL
                     -- As half_open: an app with no room, or deleted, gets no probe (else
                     -- this would send every claim to claim_due for nothing).
                     AND e.app_id NOT IN (SELECT a FROM unnest($8::text[], $9::int[])
                                              AS r(a, room) WHERE room <= 0)
                     AND e.app_id NOT IN (SELECT id FROM apps WHERE deleted_at IS NOT NULL)
                     AND EXISTS (SELECT 1 FROM deliveries d
                                 WHERE d.endpoint_id = e.id
                                   AND d.next_attempt_at = 'infinity'
                                   AND d.status = 'pending')) AS yes
), ranked AS (
    SELECT c.app_id, c.id, c.endpoint_id, c.next_attempt_at,
           row_number() OVER (PARTITION BY coalesce(c.endpoint_id, c.kind)
                              ORDER BY c.next_attempt_at, c.id) AS nth_of_target,
           row_number() OVER (PARTITION BY c.app_id
                              ORDER BY c.next_attempt_at, c.id) AS nth_of_app,
           coalesce(ep.room, k.room, $10) AS target_room,
           coalesce(ap.room, $11) AS app_room
    FROM candidates c
    LEFT JOIN unnest($4::text[], $5::int[]) AS ep(id, room) ON ep.id = c.endpoint_id
    LEFT JOIN unnest($6::text[], $7::int[]) AS k(kind, room)
        ON c.endpoint_id IS NULL AND k.kind = c.kind
    LEFT JOIN unnest($8::text[], $9::int[]) AS ap(id, room) ON ap.id = c.app_id
), chosen AS (
    SELECT app_id, id, endpoint_id, next_attempt_at FROM ranked
    WHERE nth_of_target <= target_room AND nth_of_app <= app_room
      AND NOT (SELECT yes FROM unusual)
    ORDER BY nth_of_app, next_attempt_at, id
    LIMIT $1
), locked AS (
    -- As claim_due's: one key lookup per row, skipping what another claimer holds.
    SELECT t.app_id, t.id, t.next_attempt_at
    FROM chosen t
    CROSS JOIN LATERAL (
        SELECT 1 FROM deliveries d
        WHERE d.app_id = t.app_id AND d.id = t.id
          AND coalesce(d.status, '') = 'pending'
          AND coalesce(d.next_attempt_at, 'infinity') <= now()
        FOR UPDATE SKIP LOCKED
    ) still_due
), claimed AS (
    UPDATE deliveries d SET
        next_attempt_at = now() + make_interval(secs => $2),
        lease_id = $3
    FROM locked x
    WHERE d.app_id = x.app_id AND d.id = x.id
    RETURNING d.id, d.app_id, d.event_id, d.endpoint_id, d.device_id, d.kind,
              d.schedule_pos, d.attempt_count
)
SELECT 0 AS held_back, w.waiting, c.id, c.app_id, c.event_id, c.endpoint_id, c.device_id,
       c.kind, c.schedule_pos, c.attempt_count, ev.type AS event_type, ev.payload,
       ev.created_at AS event_created_at, ev.traceparent, ev.tracestate,
       coalesce(ep.url, ow.url) AS url, coalesce(ep.secret, ow.secret) AS secret,
       CASE WHEN ep.previous_secret_expires_at > now() THEN ep.previous_secret END
           AS previous_secret,
       dv.token AS device_token, dv.platform, dv.status AS device_status,
       CASE WHEN c.kind <> 'webhook' THEN ev.notification END AS notification,
       pc.config AS credentials, ep.headers, 0 AS parked, p.passed_over,
       (SELECT yes FROM unusual) AS unusual
FROM (SELECT ((SELECT count(*) FROM ranked) - (SELECT count(*) FROM chosen))::int
             AS waiting) w
CROSS JOIN (SELECT (count(*) - (SELECT count(*) FROM locked))::int AS passed_over
            FROM ranked r
            WHERE coalesce((r.next_attempt_at, r.id) <= (
                SELECT l.next_attempt_at, l.id FROM locked l
                ORDER BY l.next_attempt_at DESC, l.id DESC LIMIT 1), true)) p
LEFT JOIN (claimed c
           JOIN events ev ON ev.app_id = c.app_id AND ev.id = c.event_id
           LEFT JOIN endpoints ep ON ep.id = c.endpoint_id
           LEFT JOIN operational_webhooks ow
               ON c.kind = 'operational' AND ow.id = c.endpoint_id
           LEFT JOIN devices dv ON dv.id = c.device_id
           LEFT JOIN push_credentials pc ON pc.app_id = c.app_id AND pc.provider = c.kind)
    ON true;

-- name: record_results
-- Arrays of one length: $1 delivery ids, $2 lease ids, $3 new statuses,
-- $4 next attempt times, $5 schedule positions, $6 attempted_at, $7 duration_ms,
-- $8 outcomes, $9 status codes, $10 response snippets, $11 errors, $12 app ids.
-- Every attempt is logged; a delivery changes only while the caller's lease still holds
-- it. Returns what the live tail reports of each delivery that changed (attempt_count
-- counts the attempt just logged), and whether someone watches its app ("tailed").
WITH r AS (
    -- The first array through a sub-select, so that the generic plan is kept: see
    -- settle_delivered.
    SELECT * FROM unnest((SELECT $1::text[]), $2::uuid[], $3::text[], $4::timestamptz[],
                         $5::int[], $6::timestamptz[], $7::int[], $8::text[], $9::int[],
                         $10::text[], $11::text[], $12::text[])
        AS r(delivery_id, lease_id, status, next_attempt_at, schedule_pos, attempted_at,
             duration_ms, outcome, status_code, response_snippet, error, app_id)
), upd AS (
    UPDATE deliveries d SET
        status = r.status, next_attempt_at = r.next_attempt_at,
        schedule_pos = r.schedule_pos, attempt_count = d.attempt_count + 1,
        last_attempt_at = r.attempted_at, last_error = r.error, lease_id = NULL,
        updated_at = now()
    FROM r WHERE d.app_id = r.app_id AND d.id = r.delivery_id AND d.lease_id = r.lease_id
    RETURNING d.id, d.event_id, d.endpoint_id, d.kind, d.app_id, d.attempt_count,
              d.device_id
), logged AS (
    INSERT INTO attempts (delivery_id, app_id, attempted_at, duration_ms, outcome,
                          status_code, response_snippet, error)
    SELECT delivery_id, app_id, attempted_at, duration_ms, outcome, status_code,
           response_snippet, error
    FROM r
)
SELECT upd.id, upd.event_id, ev.type AS event_type, upd.endpoint_id, upd.kind, upd.app_id,
       upd.attempt_count, upd.device_id,
       -- Someone watches the app (live_tails): the live tail is to be told.
       upd.app_id IN (SELECT app_id FROM live_tails WHERE expires_at > now()) AS tailed
FROM upd JOIN events ev ON ev.app_id = upd.app_id AND ev.id = upd.event_id;

-- name: settle_delivered
-- Attempts that were all delivered with nothing else to settle (no device to prune, no
-- credentials refused, no endpoint gone: PostgresQueue.complete checks): what
-- record_results, notify_outcomes and endpoint_health do for them, in one statement and
-- so one transaction and one round trip, the dispatcher's hot path.
-- Per attempt: $1 delivery id, $2 lease id, $3 schedule position, $4 its time as the live
-- tail spells it (gateway_client.models.iso; read as attempted_at too), $5 duration (ms),
-- $6 status code, $7 response snippet, $8 app id, $9 the endpoint it counts towards, or
-- NULL. What record_results takes besides is the same for every delivered attempt
-- (status succeeded, outcome delivered, no next attempt, no error): written here, not
-- sent. (asyncpg encodes a timestamptz element in about 2 us, a text one in 0.8: the
-- time goes once, as text, and the constants not at all.)
-- The live tail gets each delivery that moved on, as outcome_notifications writes it, in
-- notifications under NOTIFY's limit (an item is under 700 bytes: event types are at most
-- 128 characters), for the apps someone is watching (live_tails) and no other. To an endpoint's health a success is what endpoint_health makes of it
-- (gateway/health.py settle): its failures are forgotten and its circuit closes; only
-- endpoints with something to forget are written (locked in id order, as there), and one
-- whose circuit closed gets its parked deliveries back (resume_endpoints).
WITH r AS (
    -- The first array through a sub-select: the planner then counts on as many rows
    -- whatever the arrays hold, as it does in the generic plan, so it keeps that plan. A
    -- custom plan, knowing a small batch, looks cheaper than the generic one and gets
    -- planned on every call: with a month of day partitions that planning cost about
    -- 5 ms, the statement's own work under 1 ms (bench/statement_cost.py).
    SELECT r.delivery_id, r.lease_id, 'succeeded'::text AS status,
           NULL::timestamptz AS next_attempt_at, r.schedule_pos,
           r.at::timestamptz AS attempted_at, r.duration_ms, 'delivered'::text AS outcome,
           r.status_code, r.response_snippet, NULL::text AS error, r.app_id, r.at,
           r.endpoint_id
    FROM unnest((SELECT $1::text[]), $2::uuid[], $3::int[], $4::text[], $5::int[],
                $6::int[], $7::text[], $8::text[], $9::text[])
        AS r(delivery_id, lease_id, schedule_pos, at, duration_ms, status_code,
             response_snippet, app_id, endpoint_id)
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
), tailed AS (
    SELECT DISTINCT app_id FROM live_tails WHERE expires_at > now()
), items AS (
    SELECT json_build_object(
               'delivery_id', u.id, 'event_id', u.event_id, 'event_type', ev.type,
               'endpoint_id', u.endpoint_id, 'kind', u.kind, 'app_id', u.app_id,
               'status', r.status, 'outcome', r.outcome, 'status_code', r.status_code,
               'attempt', u.attempt_count, 'at', r.at)::text AS item,
           row_number() OVER (ORDER BY u.id) AS n
    FROM upd u
    JOIN r ON r.delivery_id = u.id
    JOIN events ev ON ev.app_id = u.app_id AND ev.id = u.event_id
    WHERE u.app_id IN (SELECT app_id FROM tailed)
), told AS (
    SELECT pg_notify('gateway_outcomes', '[' || string_agg(item, ',' ORDER BY n) || ']')
    FROM (SELECT item, n, sum(octet_length(item) + 1) OVER (ORDER BY n) / 7000 AS chunk
          FROM items) c
    GROUP BY chunk
), healed AS (
    SELECT e.id, e.circuit_open_until IS NOT NULL AS was_open
    FROM endpoints e
    WHERE e.id IN (SELECT endpoint_id FROM r WHERE endpoint_id IS NOT NULL)
      AND (e.consecutive_failures > 0 OR e.failing_since IS NOT NULL
           OR e.circuit_open_until IS NOT NULL)
    ORDER BY e.id
    FOR UPDATE OF e
), healthy AS (
    UPDATE endpoints e SET consecutive_failures = 0, failing_since = NULL,
        circuit_open_until = NULL,
        circuit_probe_until = CASE WHEN h.was_open THEN NULL ELSE e.circuit_probe_until END
    FROM healed h
    WHERE e.id = h.id
    RETURNING e.id, e.status, e.deleted_at, h.was_open
), woken AS (
    UPDATE deliveries d SET next_attempt_at = now(), updated_at = now()
    FROM healthy e
    WHERE e.was_open AND e.status = 'active' AND e.deleted_at IS NULL
      AND d.endpoint_id = e.id AND d.next_attempt_at = 'infinity' AND d.status = 'pending'
    RETURNING 1
)
SELECT (SELECT count(*) FROM told) AS notifications,
       (SELECT count(*) FROM healthy) AS healed,
       (SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM woken))
           AS woke;

-- name: prune_device
-- $1 device id, $2 reason, $3 when the provider says the token died (or NULL).
-- A device registered again after that moment is live and stays so. Returns the device
-- when it was pruned now (for device.invalidated).
UPDATE devices SET status = 'pruned', pruned_reason = $2, pruned_at = now(),
    updated_at = now()
WHERE id = $1 AND status = 'active' AND ($3::timestamptz IS NULL OR registered_at <= $3)
RETURNING app_id, id, token, platform, user_id, pruned_reason;

-- name: keep_live_tails
-- $1 an API process's id, $2 the apps it serves live streams of now, $3 seconds its rows
-- last unless renewed. Its rows become exactly those apps', renewed; rows of other
-- processes past their time go, unless another process is removing them right now (two
-- processes each removing the other's after an outage would wait on each other).
WITH dropped AS (
    DELETE FROM live_tails
    WHERE (process_id = $1 AND app_id <> ALL($2::text[]))
       OR (process_id, app_id) IN (SELECT process_id, app_id FROM live_tails
                                   WHERE process_id <> $1 AND expires_at < now()
                                   FOR UPDATE SKIP LOCKED)
    RETURNING 1
), kept AS (
    INSERT INTO live_tails (process_id, app_id, expires_at)
    SELECT $1, a, now() + make_interval(secs => $3)
    FROM (SELECT DISTINCT a FROM unnest($2::text[]) AS a) apps
    ON CONFLICT (process_id, app_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM kept)::int AS kept, (SELECT count(*) FROM dropped)::int AS dropped;

-- name: notify_outcomes
-- $1 JSON arrays of outcomes, each under NOTIFY's 8000-byte limit: one notification each
-- to the live tail (LISTEN gateway_outcomes) when the transaction commits.
SELECT pg_notify('gateway_outcomes', p) FROM unnest($1::text[]) AS p;

-- name: release_leases
-- $1 lease ids: deliveries claimed but not attempted go back to the queue at once, and
-- the dispatchers hear of it.
WITH released AS (
    UPDATE deliveries SET next_attempt_at = now(), lease_id = NULL, updated_at = now()
    WHERE lease_id = ANY($1::uuid[]) AND status = 'pending'
    RETURNING 1
)
SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM released);

-- name: release_deliveries
-- $1 app ids, $2 delivery ids, $3 their lease ids (arrays of one length): these
-- deliveries, leased but not attempted, go back to the queue at once (others of their
-- leases stay where they are), and the dispatchers hear of it.
WITH released AS (
    UPDATE deliveries d SET next_attempt_at = now(), lease_id = NULL, updated_at = now()
    FROM unnest($1::text[], $2::text[], $3::uuid[]) AS r(app_id, id, lease_id)
    WHERE d.app_id = r.app_id AND d.id = r.id AND d.lease_id = r.lease_id
      AND d.status = 'pending'
    RETURNING 1
)
SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM released);

-- name: next_due_at
-- When the next delivery falls due, or the next open circuit turns half-open (its parked
-- deliveries then have a probe to send).
SELECT least(
    (SELECT min(next_attempt_at) FROM deliveries
     WHERE status = 'pending' AND next_attempt_at < 'infinity'),
    (SELECT min(circuit_open_until) FROM endpoints
     WHERE circuit_open_until > now() AND status = 'active' AND deleted_at IS NULL)) AS due;

-- --- push fan-out ----------------------------------------------------------------------

-- name: claim_fanout
-- $1 the app this process served last ('' at first). One event whose push targets still
-- need expanding, locked for this transaction: apps take turns in id order, each its
-- oldest event first, so one app's backlog of fan-outs never holds up another's. Deleted
-- apps' events are never expanded.
WITH deleted AS (
    SELECT ARRAY(SELECT id FROM apps WHERE deleted_at IS NOT NULL) AS ids
), turn AS (
    SELECT coalesce(
        (SELECT app_id FROM events, deleted
         WHERE fanout_status = 'pending' AND app_id > $1 AND app_id <> ALL(deleted.ids)
         ORDER BY app_id LIMIT 1),
        (SELECT app_id FROM events, deleted
         WHERE fanout_status = 'pending' AND app_id <> ALL(deleted.ids)
         ORDER BY app_id LIMIT 1)) AS app_id
)
SELECT id, app_id, push_user_ids, push_topics, fanout_cursor FROM events
WHERE fanout_status = 'pending' AND app_id = (SELECT app_id FROM turn)
ORDER BY created_at
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: claim_any_fanout
-- When the app whose turn it is has all its fan-outs held by other processes: the oldest
-- event of any app not deleted.
SELECT id, app_id, push_user_ids, push_topics, fanout_cursor FROM events
WHERE fanout_status = 'pending'
  AND app_id NOT IN (SELECT id FROM apps WHERE deleted_at IS NOT NULL)
ORDER BY created_at
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: fanout_devices
-- $1 app id, $2 cursor (device id, exclusive, or NULL), $3 user ids, $4 topics, $5 limit.
-- The next batch of live devices the event targets, in id order (a stable cursor).
SELECT id, platform, token FROM devices
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

-- name: fanout_event
-- $1 app id, $2 event id: what the deliveries of an event's fan-out send, for deliveries
-- made leased (insert_leased_device_deliveries): the event as claim_due answers it, and
-- the app's credentials for each provider (NULL when it has none).
SELECT ev.type, ev.payload, ev.created_at, ev.traceparent, ev.tracestate,
       ev.notification,
       (SELECT config FROM push_credentials WHERE app_id = $1 AND provider = 'apns')
           AS apns_credentials,
       (SELECT config FROM push_credentials WHERE app_id = $1 AND provider = 'fcm')
           AS fcm_credentials
FROM events ev WHERE ev.app_id = $1 AND ev.id = $2;

-- name: insert_leased_device_deliveries
-- As insert_device_deliveries, but each delivery made is leased to the caller as a claim
-- leases it ($5 lease id, due again when $6 seconds have passed: if the caller dies, the
-- lease brings it back), so no claim needs to take it and no dispatcher is woken. Returns
-- the deliveries made (a batch replayed after a crash makes none twice).
INSERT INTO deliveries (id, app_id, event_id, device_id, kind, next_attempt_at, lease_id)
SELECT gateway_delivery_id($1, u.device_id), $2, $1, u.device_id, u.kind,
       now() + make_interval(secs => $6), $5
FROM unnest($3::text[], $4::text[]) AS u(device_id, kind)
ON CONFLICT DO NOTHING
RETURNING id, device_id, kind;

-- name: advance_fanout
-- $1 event id, $2 last device id expanded, $3 finished?, $4 app id. An event with more to
-- expand notifies the fan-outs on commit, so an idle process races for its next batch
-- (the event is locked during each batch; without this another process would get in
-- only at its next poll, through the gap between two batches).
WITH moved AS (
    UPDATE events SET fanout_cursor = coalesce($2, fanout_cursor),
        fanout_status = CASE WHEN $3 THEN 'done' ELSE 'pending' END
    WHERE app_id = $4 AND id = $1
    RETURNING fanout_status
)
SELECT pg_notify('gateway_fanout', '') FROM moved WHERE fanout_status = 'pending';

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
-- $1 app id, $2 provider ('fcm' | 'apns'), $3 config (JSON text). New credentials are
-- not known to be refused (push.credentials_rejected is told again if they are).
INSERT INTO push_credentials (app_id, provider, config) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (app_id, provider) DO UPDATE SET config = EXCLUDED.config, updated_at = now(),
    rejected_at = NULL, rejected_reason = NULL
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
-- $1 lock key. Session-level, so one process prunes (or cleans up deleted apps, under
-- its own key) at a time; released by retention_unlock.
SELECT pg_try_advisory_lock($1);

-- name: retention_unlock
-- $1 lock key
SELECT pg_advisory_unlock($1);

-- name: make_partitions
-- $1 days back (at least 1), $2 days a partition holds (gateway/retention.py
-- partition_days). Partitions of events, deliveries and attempts for every day (UTC) from
-- that many days ago to as many days ahead as a partition holds (at least two) that has
-- none yet, each to the next boundary (gateway_make_partitions, migration 0014); returns
-- how many tables were made. Every process makes them at start and every hour
-- (gateway/retention.py keep_partitions): a week's margin with week partitions, at most
-- one of them made ahead of need; no more than two days' with day partitions, as every
-- partition, an empty one too, costs each claim and settlement when it starts.
SELECT gateway_make_partitions(today - greatest($1::int, 1), today + greatest($2::int, 2),
                               $2::int) AS made
FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS today) t;  -- UTC days, as ids have them

-- name: time_partitions
-- Every partition of events, deliveries and attempts with the days it holds (first_day
-- to end_day, end_day not included: a week, or a day for those made before migration
-- 0014), oldest first; "detaching" when a DETACH ... CONCURRENTLY was cut short (it
-- needs a FINALIZE).
SELECT b.name, v.parent, b.first_day, b.end_day, b.detaching
FROM (VALUES ('events'), ('deliveries'), ('attempts')) AS v(parent)
CROSS JOIN LATERAL gateway_partition_bounds(v.parent) b
ORDER BY b.first_day, b.end_day, v.parent;

-- name: span_held
-- $1 first day, $2 end day (not included; UTC). Whether anything of those days is still
-- to do: a pending delivery, a fan-out, or (for events from before migration 0005) a
-- pending delivery filed elsewhere.
SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'pending'
               AND id >= gateway_day_bound('dlv', $1) AND id < gateway_day_bound('dlv', $2))
    OR EXISTS (SELECT 1 FROM events WHERE fanout_status = 'pending'
               AND id >= gateway_day_bound('evt', $1) AND id < gateway_day_bound('evt', $2))
    OR EXISTS (SELECT 1 FROM deliveries WHERE status = 'pending'
               AND substr(id, 5, 12) <> substr(event_id, 5, 12)
               AND event_id >= gateway_day_bound('evt', $1)
               AND event_id < gateway_day_bound('evt', $2)) AS held;

-- name: span_rows
-- $1 first day, $2 end day (not included; UTC): how many rows the partitions of those days
-- hold (counted before they are dropped).
SELECT (SELECT count(*) FROM events WHERE id >= gateway_day_bound('evt', $1)
                                      AND id < gateway_day_bound('evt', $2)) AS events,
       (SELECT count(*) FROM deliveries WHERE id >= gateway_day_bound('dlv', $1)
                                          AND id < gateway_day_bound('dlv', $2))
           AS deliveries,
       (SELECT count(*) FROM attempts WHERE delivery_id >= gateway_day_bound('dlv', $1)
                                        AND delivery_id < gateway_day_bound('dlv', $2))
           AS attempts;

-- name: retention_deliveries
-- $1 first day, $2 end day (not included; UTC) of partitions a pending delivery holds,
-- $3 batch size, $4 cutoff. Row by row within those partitions: deletes up to $3 finished
-- (succeeded or failed) deliveries last changed before $4, with their attempts.
WITH doomed AS (
    SELECT app_id, id FROM deliveries
    WHERE id >= gateway_day_bound('dlv', $1) AND id < gateway_day_bound('dlv', $2)
      AND status IN ('succeeded', 'failed') AND updated_at < $4
    LIMIT $3
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
-- $1 first day, $2 end day (not included; UTC) of a partition a pending delivery holds,
-- $3 batch size. Row by row within it: deletes up to $3 events with no delivery left
-- (retention_deliveries took the finished ones; pending ones keep their event) and no
-- push fan-out still to do.
WITH doomed AS (
    SELECT e.app_id, e.id FROM events e
    WHERE e.id >= gateway_day_bound('evt', $1) AND e.id < gateway_day_bound('evt', $2)
      AND (e.fanout_status IS NULL OR e.fanout_status = 'done')
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.app_id = e.app_id AND d.event_id = e.id
                        AND d.id >= 'dlv_' || substr(e.id, 5, 12)
                        AND d.id < 'dlv_' || substr(e.id, 5, 12) || 'g')
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.event_id = e.id
                        AND substr(d.id, 5, 12) <> substr(d.event_id, 5, 12))
    LIMIT $3
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

-- --- deleted apps (gateway/cleanup.py) ------------------------------------------------
-- Everything a deleted app owns goes child first, in batches of $2 rows, each its own
-- short transaction that skips rows someone else holds. Deletes name every table
-- explicitly, by app_id: no ON DELETE CASCADE is relied on (events, deliveries and attempts
-- may be partitioned, without foreign keys). Each returns how many rows went, by table.

-- name: deleted_apps
-- $1 seconds a deletion is left to settle before the app's own row may go (requests that
-- were in flight when it was deleted have finished by then). Oldest deletion first.
SELECT id, deleted_at <= now() - make_interval(secs => $1) AS settled
FROM apps WHERE deleted_at IS NOT NULL
ORDER BY deleted_at, id;

-- name: cleanup_deliveries
-- $1 app id, $2 batch size. Deliveries with their attempts; one a dispatcher is sending
-- right now (its lease still runs) waits until the attempt is logged or the lease is over.
-- A parked delivery ('infinity') is sent by no one, though it may keep the lease of a
-- claimer that lapsed before the claim that parked it.
WITH doomed AS (
    SELECT id FROM deliveries
    WHERE app_id = $1
      AND (lease_id IS NULL OR next_attempt_at <= now() OR next_attempt_at = 'infinity')
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone_attempts AS (
    DELETE FROM attempts a USING doomed WHERE a.delivery_id = doomed.id RETURNING 1
), gone AS (
    DELETE FROM deliveries d USING doomed
    WHERE d.app_id = $1 AND d.id = doomed.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone)::int AS deliveries,
       (SELECT count(*) FROM gone_attempts)::int AS attempts;

-- name: cleanup_events
-- $1 app id, $2 batch size. Events with no delivery left.
WITH doomed AS (
    SELECT e.id FROM events e
    WHERE e.app_id = $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.app_id = $1 AND d.event_id = e.id)
    ORDER BY e.id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM events e USING doomed WHERE e.app_id = $1 AND e.id = doomed.id RETURNING 1
)
SELECT count(*)::int AS events FROM gone;

-- name: cleanup_idempotency_keys
-- $1 app id, $2 batch size
WITH doomed AS (
    SELECT key FROM idempotency_keys WHERE app_id = $1
    ORDER BY key LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM idempotency_keys k USING doomed
    WHERE k.app_id = $1 AND k.key = doomed.key RETURNING 1
)
SELECT count(*)::int AS idempotency_keys FROM gone;

-- name: cleanup_endpoints
-- $1 app id, $2 batch size. Endpoints no delivery names any more.
WITH doomed AS (
    SELECT ep.id FROM endpoints ep
    WHERE ep.app_id = $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.app_id = $1 AND d.endpoint_id = ep.id)
    ORDER BY ep.id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM endpoints ep USING doomed WHERE ep.app_id = $1 AND ep.id = doomed.id
    RETURNING 1
)
SELECT count(*)::int AS endpoints FROM gone;

-- name: cleanup_devices
-- $1 app id, $2 batch size. Devices no delivery names any more.
WITH doomed AS (
    SELECT dv.id FROM devices dv
    WHERE dv.app_id = $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.app_id = $1 AND d.device_id = dv.id)
    ORDER BY dv.id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM devices dv USING doomed WHERE dv.app_id = $1 AND dv.id = doomed.id
    RETURNING 1
)
SELECT count(*)::int AS devices FROM gone;

-- name: cleanup_push_credentials
-- $1 app id, $2 batch size
WITH doomed AS (
    SELECT provider FROM push_credentials WHERE app_id = $1
    ORDER BY provider LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM push_credentials p USING doomed
    WHERE p.app_id = $1 AND p.provider = doomed.provider RETURNING 1
)
SELECT count(*)::int AS push_credentials FROM gone;

-- name: cleanup_live_tails
-- $1 app id, $2 batch size
WITH gone AS (
    DELETE FROM live_tails
    WHERE (process_id, app_id) IN (SELECT process_id, app_id FROM live_tails
                                   WHERE app_id = $1 LIMIT $2)
    RETURNING 1
)
SELECT count(*)::int AS live_tails FROM gone;

-- name: cleanup_app_rate_windows
-- $1 app id, $2 batch size (one row at most)
WITH gone AS (
    DELETE FROM app_rate_windows
    WHERE app_id IN (SELECT app_id FROM app_rate_windows WHERE app_id = $1 LIMIT $2)
    RETURNING 1
)
SELECT count(*)::int AS app_rate_windows FROM gone;

-- name: cleanup_dashboard_sessions
-- $1 app id, $2 batch size. delete_app ended them; a sign-in that raced it may have left one.
WITH doomed AS (
    SELECT id FROM dashboard_sessions WHERE app_id = $1
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM dashboard_sessions s USING doomed WHERE s.id = doomed.id RETURNING 1
)
SELECT count(*)::int AS dashboard_sessions FROM gone;

-- name: cleanup_event_types
-- $1 app id, $2 batch size. The app's event type catalog.
WITH doomed AS (
    SELECT name FROM event_types WHERE app_id = $1
    ORDER BY name LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM event_types t USING doomed
    WHERE t.app_id = $1 AND t.name = doomed.name RETURNING 1
)
SELECT count(*)::int AS event_types FROM gone;

-- name: cleanup_operational_webhooks
-- $1 app id, $2 batch size (an app has one at most).
WITH gone AS (
    DELETE FROM operational_webhooks WHERE app_id = $1 AND $2::int > 0 RETURNING 1
)
SELECT count(*)::int AS operational_webhooks FROM gone;

-- name: cleanup_tasks
-- $1 app id, $2 batch size. The app's background tasks (none runs once it is deleted).
WITH doomed AS (
    SELECT id FROM tasks WHERE app_id = $1
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM tasks t USING doomed WHERE t.app_id = $1 AND t.id = doomed.id RETURNING 1
)
SELECT count(*)::int AS tasks FROM gone;

-- name: cleanup_app
-- $1 app id. The deleted app's own row, last, once no row of any table refers to it.
DELETE FROM apps
WHERE id = $1 AND deleted_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM deliveries WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM events WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM endpoints WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM devices WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM push_credentials WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM app_rate_windows WHERE app_id = $1)
  AND NOT EXISTS (SELECT 1 FROM dashboard_sessions WHERE app_id = $1)
RETURNING id;

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


-- --- operational webhooks (issue 10: gateway/operational.py) -------------------------
-- An app's operational events are events and deliveries of kind 'operational' filed
-- under its operational feed ('ops:' || app id, gateway/operational.py feed_of), each
-- delivery's endpoint_id the operational webhook's id (claim_due reads its url and
-- secret from there).

-- name: put_operational_webhook
-- $1 app id, $2 id, $3 url, $4 event_types (NULL = all), $5 secret (sealed as
-- "endpoint:<$2>"). Setting it again changes url and event_types and keeps its id and
-- secret: the row returned holds the ones in force.
INSERT INTO operational_webhooks (app_id, id, url, event_types, secret)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (app_id) DO UPDATE SET
    url = EXCLUDED.url, event_types = EXCLUDED.event_types, updated_at = now()
RETURNING id, url, event_types, secret, created_at, updated_at;

-- name: get_operational_webhook
-- $1 app id
SELECT id, url, event_types, created_at, updated_at
FROM operational_webhooks WHERE app_id = $1;

-- name: delete_operational_webhook
-- $1 app id, $2 its operational feed. Its pending deliveries fail: they have nowhere to go.
WITH gone AS (
    DELETE FROM operational_webhooks WHERE app_id = $1 RETURNING id
), failed AS (
    UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, lease_id = NULL,
        last_error = 'operational webhook deleted', updated_at = now()
    WHERE app_id = $2 AND endpoint_id IN (SELECT id FROM gone) AND status = 'pending'
)
SELECT id FROM gone;

-- name: emit_operational
-- Arrays of one length: $1 app ids, $2 their operational feeds, $3 event ids (new, from
-- gateway/ids.py), $4 types, $5 data (JSON text). In the caller's transaction, queues
-- each for its app's operational webhook when the app has one taking that type: an
-- event and one pending delivery of kind 'operational' under the feed. For an app
-- without one it costs a primary-key lookup. Wakes the dispatchers at commit; returns
-- how many were queued.
WITH wanted AS (
    SELECT u.feed, u.id, u.type, u.data, ow.id AS webhook_id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS u(app_id, feed, id, type, data)
    JOIN operational_webhooks ow ON ow.app_id = u.app_id
    WHERE gateway_type_matches(ow.event_types, u.type)
), ev AS (
    INSERT INTO events (id, app_id, type, payload)
    SELECT id, feed, type, data FROM wanted
), dl AS (
    INSERT INTO deliveries (id, app_id, event_id, endpoint_id, kind, next_attempt_at)
    SELECT gateway_delivery_id(id, webhook_id), feed, id, webhook_id, 'operational', now()
    FROM wanted
    RETURNING 1
)
SELECT (SELECT count(*) FROM dl)::int AS queued,
       (SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM dl)) AS woke;

-- name: reject_credentials
-- Arrays of one length, one entry per app and provider: $1 app ids, $2 providers, $3 what
-- each provider answered; $4 seconds after which a refusal already told is told again.
-- Returns the credentials whose refusal is to be told now (push.credentials_rejected):
-- not refused before, or told more than $4 seconds ago; they are marked told.
UPDATE push_credentials pc SET rejected_at = now(), rejected_reason = u.reason
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(app_id, provider, reason)
WHERE pc.app_id = u.app_id AND pc.provider = u.provider
  AND (pc.rejected_at IS NULL OR pc.rejected_at < now() - make_interval(secs => $4))
RETURNING pc.app_id, pc.provider, pc.rejected_reason;

-- name: secrets_of_operational_webhooks
-- $1 cursor (id, exclusive; '' to start), $2 limit
SELECT id, secret FROM operational_webhooks WHERE id > $1 ORDER BY id LIMIT $2;

-- name: reseal_operational_webhook
-- $1 id, $2 secret
UPDATE operational_webhooks SET secret = $2 WHERE id = $1;

-- --- background tasks: recover, replay (gateway/tasks.py, gateway/store/tasks.py) -----
-- A task walks the ids of its window (ids start with their creation time), a batch per
-- transaction; each batch commits with the task's cursor and counts.

-- name: create_task
-- $1 id, $2 app id, $3 kind, $4 endpoint id, $5 since, $6 until, $7 cursor (where the
-- window's ids begin; no id equals it), $8 counts (JSON text). No row when the app has no
-- such endpoint. Wakes the task runners on commit.
WITH ep AS (
    SELECT id FROM endpoints WHERE app_id = $2 AND id = $4 AND deleted_at IS NULL
), made AS (
    INSERT INTO tasks (app_id, id, kind, endpoint_id, since, until, cursor, counts)
    SELECT $2, $1, $3, ep.id, $5, $6, $7, $8::jsonb FROM ep
    RETURNING app_id, id, kind, status, endpoint_id, since, until, cursor, counts, error,
              created_at, updated_at, finished_at
), woke AS (
    SELECT pg_notify('gateway_tasks', '') WHERE EXISTS (SELECT 1 FROM made)
)
SELECT made.* FROM made LEFT JOIN woke ON true;

-- name: get_task
-- $1 app id, $2 task id
SELECT app_id, id, kind, status, endpoint_id, since, until, cursor, counts, error,
       created_at, updated_at, finished_at
FROM tasks WHERE app_id = $1 AND id = $2;

-- name: list_tasks
-- $1 app id, $2 cursor (id, exclusive, or NULL), $3 limit
SELECT app_id, id, kind, status, endpoint_id, since, until, cursor, counts, error,
       created_at, updated_at, finished_at
FROM tasks
WHERE app_id = $1 AND ($2::text IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3;

-- name: claim_task
-- The running task advanced least recently that no other process holds, locked for this
-- transaction (one batch): running tasks of every app move in turn.
SELECT app_id, id, kind, status, endpoint_id, since, until, cursor, counts, error,
       created_at, updated_at, finished_at
FROM tasks WHERE status = 'running'
  -- A deleted app's tasks stop with it (the cleanup removes them).
  AND app_id NOT IN (SELECT id FROM apps WHERE deleted_at IS NOT NULL)
ORDER BY updated_at, id
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: task_custom_plans
-- For the rest of a task's transaction: plan each query for its arguments (requeue_failed
-- takes "any" or a batch of ids; a plan made for both would walk every failed delivery of
-- the app).
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: task_recover_batch
-- $1 app id, $2 endpoint id, $3 cursor (delivery id, exclusive), $4 the window's end
-- (delivery id bound, exclusive), $5 batch size. The endpoint's next deliveries in the
-- window, whatever their status, in id order: a bounded walk of deliveries_by_endpoint;
-- requeue_failed takes the failed ones among them.
SELECT id FROM deliveries
WHERE endpoint_id = $2 AND app_id = $1 AND id > $3 AND id < $4
ORDER BY id LIMIT $5;

-- name: task_replay_batch
-- $1 app id, $2 endpoint id, $3 cursor (event id, exclusive), $4 the window's end (event id
-- bound, exclusive), $5 batch size. The app's next events in the window, and for each one
-- the endpoint takes (its event types and filter, matched as insert_events matches them)
-- and has no delivery for, a new delivery: due now, or parked while the endpoint is disabled. A
-- delivery's id is derived from its event and endpoint (gateway_delivery_id), so one that
-- exists already (from ingest or an earlier replay) stays as it is. Returns how many
-- events it looked at, the last one's id, and how many deliveries it made; wakes the
-- dispatchers on commit.
WITH batch AS (
    SELECT id, type, payload FROM events
    WHERE app_id = $1 AND id > $3 AND id < $4
    ORDER BY id LIMIT $5
), made AS (
    INSERT INTO deliveries (id, app_id, event_id, endpoint_id, kind, next_attempt_at)
    SELECT gateway_delivery_id(ev.id, ep.id), ep.app_id, ev.id, ep.id, 'webhook',
           CASE WHEN ep.status = 'active' THEN now() ELSE 'infinity'::timestamptz END
    FROM batch ev
    JOIN endpoints ep ON ep.app_id = $1 AND ep.id = $2 AND ep.deleted_at IS NULL
        AND (ep.event_types IS NULL OR ev.type = ANY(ep.event_types)
             OR (array_to_string(ep.event_types, ',') LIKE '%*%'
                 AND gateway_type_matches(ep.event_types, ev.type)))
        -- and its filter, as insert_events applies it
        AND (ep.filter IS NULL
             OR gateway_filter_matches(ep.filter, gateway_payload_jsonb(ev.payload)))
    -- Deliveries made before migration 0005 have ids of their own: found by event.
    WHERE NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.event_id = ev.id
                        AND substr(d.id, 5, 12) <> substr(d.event_id, 5, 12)
                        AND d.app_id = $1 AND d.endpoint_id = ep.id)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch)::int AS scanned,
       (SELECT max(id) FROM batch) AS last_id,
       (SELECT count(*) FROM made)::int AS created,
       (SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM made)) AS woke;

-- name: advance_task
-- $1 app id, $2 task id, $3 cursor, $4 counts (JSON text), $5 finished?
UPDATE tasks SET cursor = $3, counts = $4::jsonb, updated_at = now(),
    status = CASE WHEN $5 THEN 'done' ELSE status END,
    finished_at = CASE WHEN $5 THEN now() END
WHERE app_id = $1 AND id = $2
RETURNING app_id, id, kind, status, endpoint_id, since, until, cursor, counts, error,
          created_at, updated_at, finished_at;

-- name: fail_task
-- $1 app id, $2 task id, $3 error
UPDATE tasks SET status = 'failed', error = $3, updated_at = now(), finished_at = now()
WHERE app_id = $1 AND id = $2
RETURNING app_id, id, kind, status, endpoint_id, since, until, cursor, counts, error,
          created_at, updated_at, finished_at;

-- --- endpoint health (gateway/health.py, gateway/store/endpoint_health.py) -----------

-- name: endpoint_health
-- $1 endpoint ids, $2 whether each attempt succeeded, $3 when each was made (arrays of one
-- length: the attempts sent to an endpoint), $4 failures in a row that open a circuit,
-- $5 its cooldown in seconds, $6 seconds of nothing but failures that disable an
-- endpoint. Carries out gateway/health.py settle() for each endpoint, writing only those
-- whose health changes (an endpoint whose attempts succeed is never written); returns
-- each written one, whether its circuit opened or closed, and whether to disable it.
WITH a AS (
    SELECT * FROM unnest($1::text[], $2::bool[], $3::timestamptz[]) AS a(endpoint_id, ok, at)
), tally AS (
    SELECT a.endpoint_id, b.last_ok,
           count(*) FILTER (WHERE NOT a.ok AND (b.last_ok IS NULL OR a.at > b.last_ok))::int
               AS failed,
           min(a.at) FILTER (WHERE NOT a.ok AND (b.last_ok IS NULL OR a.at > b.last_ok))
               AS first_failed
    FROM a
    JOIN (SELECT endpoint_id, max(at) FILTER (WHERE ok) AS last_ok FROM a
          GROUP BY endpoint_id) b USING (endpoint_id)
    GROUP BY a.endpoint_id, b.last_ok
), old AS (
    -- Locked in id order, so two writers of the same endpoints never deadlock.
    SELECT e.id, e.consecutive_failures, e.failing_since, e.circuit_open_until,
           e.circuit_probe_until
    FROM endpoints e JOIN tally t ON t.endpoint_id = e.id
    WHERE t.failed > 0 OR e.consecutive_failures > 0 OR e.failing_since IS NOT NULL
       OR e.circuit_open_until IS NOT NULL
    ORDER BY e.id
    FOR UPDATE OF e
), new AS (
    SELECT o.id, o.circuit_open_until AS was_open_until, o.circuit_probe_until, t.failed,
           CASE WHEN t.last_ok IS NOT NULL THEN t.failed
                ELSE o.consecutive_failures + t.failed END AS failures,
           CASE WHEN t.last_ok IS NOT NULL THEN t.first_failed
                ELSE coalesce(o.failing_since, t.first_failed) END AS failing_since,
           t.last_ok
    FROM old o JOIN tally t ON t.endpoint_id = o.id
), decided AS (
    SELECT n.*, CASE
        WHEN n.failed > 0 AND (n.failures >= $4 OR n.was_open_until IS NOT NULL)
            THEN now() + make_interval(secs => $5)
        WHEN n.last_ok IS NOT NULL THEN NULL
        ELSE n.was_open_until END AS open_until
    FROM new n
)
UPDATE endpoints e SET
    consecutive_failures = d.failures, failing_since = d.failing_since,
    circuit_open_until = d.open_until,
    circuit_probe_until = CASE WHEN d.open_until IS DISTINCT FROM d.was_open_until
                               THEN NULL ELSE d.circuit_probe_until END
FROM decided d
WHERE e.id = d.id
RETURNING e.id, e.app_id,
          d.was_open_until IS NULL AND d.open_until IS NOT NULL AS opened,
          d.was_open_until IS NOT NULL AND d.open_until IS NULL AS closed,
          coalesce(d.failed > 0 AND d.failing_since <= now() - make_interval(secs => $6),
                   false) AS disable;

-- name: enable_endpoints
-- $1 endpoint ids: active, with a clean slate (no reason, not failing, circuit closed).
-- Then resume_endpoints, in a statement of its own.
-- Returns each with whether it was disabled before (for endpoint.enabled).
WITH before AS (
    SELECT id, status FROM endpoints
    WHERE id = ANY($1::text[]) AND deleted_at IS NULL
    FOR UPDATE
)
UPDATE endpoints e SET status = 'active', disabled_reason = NULL, disabled_at = NULL,
    failing_since = NULL, consecutive_failures = 0, circuit_open_until = NULL,
    circuit_probe_until = NULL, updated_at = now()
FROM before b
WHERE e.id = b.id
RETURNING e.id, e.app_id, b.status = 'disabled' AS was_disabled;

-- name: resume_endpoints
-- $1 endpoint ids: the parked deliveries of those that are active with a closed circuit
-- are due now (from the deliveries_parked index). Wakes the dispatchers on commit.
WITH woken AS (
    UPDATE deliveries d SET next_attempt_at = now(), updated_at = now()
    FROM endpoints e
    WHERE e.id = ANY($1::text[]) AND e.status = 'active' AND e.deleted_at IS NULL
      AND e.circuit_open_until IS NULL
      AND d.endpoint_id = e.id AND d.next_attempt_at = 'infinity' AND d.status = 'pending'
    RETURNING 1
)
SELECT pg_notify('gateway_deliveries', '') WHERE EXISTS (SELECT 1 FROM woken);

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
