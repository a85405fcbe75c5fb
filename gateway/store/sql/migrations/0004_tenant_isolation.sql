-- Tenant isolation: per-app quotas, a shared ingest rate window, sealable user-token
-- secrets, dashboard sessions that end on the server, fan-outs taken app by app.

-- Per-app limits; NULL takes the operator's default (GATEWAY_MAX_*), and a NULL
-- rate_limit means no ingest rate limit.
ALTER TABLE apps
    ADD COLUMN rate_limit integer CHECK (rate_limit > 0),
    ADD COLUMN max_endpoints integer CHECK (max_endpoints >= 0),
    ADD COLUMN max_devices_per_user integer CHECK (max_devices_per_user >= 0),
    ADD COLUMN max_topics_per_device integer CHECK (max_topics_per_device >= 0);

-- Events accepted in the current second, per rate-limited app: every gateway process
-- counts against the same row.
CREATE TABLE app_rate_windows (
    app_id text PRIMARY KEY REFERENCES apps (id),
    second timestamptz NOT NULL,
    used integer NOT NULL
);

-- The user-token secret as text, so it can be sealed (gateway/crypto.py); existing ones
-- become base64. New apps get theirs from the gateway.
ALTER TABLE apps ALTER COLUMN user_token_secret DROP DEFAULT;
ALTER TABLE apps ALTER COLUMN user_token_secret TYPE text
    USING encode(user_token_secret, 'base64');

-- A dashboard session lives here until it expires or its user signs out: a copied cookie
-- stops working at logout.
CREATE TABLE dashboard_sessions (
    id         text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('admin', 'app')),
    app_id     text REFERENCES apps (id),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);

-- Pending fan-outs by app, so apps take turns (claim_fanout) instead of the oldest event
-- of any app going first.
DROP INDEX events_fanout_pending;
CREATE INDEX events_fanout_pending ON events (app_id, created_at) WHERE fanout_status = 'pending';
