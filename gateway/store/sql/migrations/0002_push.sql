-- Mobile push: devices, per-app provider credentials, push targets on events, and
-- deliveries addressed to a device.

-- Signs the app's short-lived user tokens (gateway/usertokens.py).
ALTER TABLE apps ADD COLUMN user_token_secret bytea NOT NULL
    DEFAULT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');

CREATE TABLE devices (
    id            text PRIMARY KEY,
    app_id        text NOT NULL REFERENCES apps (id),
    platform      text NOT NULL CHECK (platform IN ('ios', 'android')),
    token         text NOT NULL,
    user_id       text NOT NULL,
    topics        text[] NOT NULL DEFAULT '{}',
    locale        text,
    app_version   text,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'pruned')),
    pruned_reason text,
    pruned_at     timestamptz,
    -- Last time the app registered this token: a provider's "unregistered at T" only
    -- prunes a device registered before T.
    registered_at timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, token)
);
CREATE INDEX devices_by_app ON devices (app_id, id);
CREATE INDEX devices_by_user ON devices (app_id, user_id, id);
CREATE INDEX devices_by_topic ON devices USING gin (topics);

CREATE TABLE push_credentials (
    app_id     text NOT NULL REFERENCES apps (id),
    provider   text NOT NULL CHECK (provider IN ('fcm', 'apns')),
    config     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, provider)
);

ALTER TABLE events
    ADD COLUMN push_user_ids text[],
    ADD COLUMN push_topics   text[],
    ADD COLUMN notification  jsonb,
    -- NULL: no push targets; 'pending': devices still to expand; 'done'.
    ADD COLUMN fanout_status text CHECK (fanout_status IN ('pending', 'done')),
    -- The last device id expanded: fan-out resumes after it after a crash.
    ADD COLUMN fanout_cursor text;
CREATE INDEX events_fanout_pending ON events (created_at) WHERE fanout_status = 'pending';

ALTER TABLE deliveries ADD COLUMN device_id text REFERENCES devices (id) ON DELETE SET NULL;
CREATE UNIQUE INDEX deliveries_one_per_device ON deliveries (event_id, device_id)
    WHERE device_id IS NOT NULL;
CREATE INDEX deliveries_by_device ON deliveries (device_id) WHERE device_id IS NOT NULL;
