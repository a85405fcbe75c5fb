-- Core gateway: apps, endpoints, events, deliveries and their attempts.

-- Sortable ids: prefix, 12 hex digits of Unix milliseconds, 20 random hex digits.
-- Python makes the same shape in gateway/ids.py.
CREATE FUNCTION gateway_id(prefix text) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT prefix || '_'
        || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
        || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20)
$$;

-- Does an endpoint's event_types filter (NULL = all) accept this event type?
-- Exact names, '*' for all, or 'prefix.*' for anything strictly below 'prefix.'.
CREATE FUNCTION gateway_type_matches(patterns text[], event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT patterns IS NULL OR EXISTS (
        SELECT 1 FROM unnest(patterns) AS p
        WHERE p = '*'
           OR p = event_type
           OR (right(p, 2) = '.*'
               AND length(event_type) > length(p) - 1
               AND starts_with(event_type, left(p, -1)))
    )
$$;

CREATE TABLE apps (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    api_key_hash bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE endpoints (
    id                         text PRIMARY KEY,
    app_id                     text NOT NULL REFERENCES apps (id),
    url                        text NOT NULL,
    description                text NOT NULL DEFAULT '',
    event_types                text[],
    status                     text NOT NULL DEFAULT 'active'
                                   CHECK (status IN ('active', 'disabled')),
    disabled_reason            text,
    disabled_at                timestamptz,
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    deleted_at                 timestamptz
);
CREATE INDEX endpoints_by_app ON endpoints (app_id, id) WHERE deleted_at IS NULL;

CREATE TABLE events (
    id         text PRIMARY KEY,
    app_id     text NOT NULL REFERENCES apps (id),
    type       text NOT NULL,
    -- The payload exactly as the backend sent it (key order, number spelling, escapes):
    -- it is delivered and signed byte for byte. Not jsonb: jsonb reorders keys and
    -- refuses \u0000.
    payload    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_by_app ON events (app_id, id);

CREATE TABLE idempotency_keys (
    app_id      text NOT NULL REFERENCES apps (id),
    key         text NOT NULL,
    body_sha256 bytea NOT NULL,
    event_id    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, key)
);

CREATE TABLE deliveries (
    id              text PRIMARY KEY,
    app_id          text NOT NULL REFERENCES apps (id),
    event_id        text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id     text REFERENCES endpoints (id),
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
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_app ON deliveries (app_id, id);
CREATE INDEX deliveries_by_app_status ON deliveries (app_id, status, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, id);

CREATE TABLE attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      text NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempted_at     timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    outcome          text NOT NULL,
    status_code      integer,
    response_snippet text,
    error            text
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, id);
