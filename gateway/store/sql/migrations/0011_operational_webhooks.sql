-- Operational webhooks (issue 10, point 6): each app may name one URL the gateway tells
-- about its own resources (endpoint.disabled, endpoint.enabled, delivery.exhausted,
-- device.invalidated, push.credentials_rejected; gateway/operational.py).
--
-- Those notices travel as events and deliveries like any other, so the queue, retries,
-- attempts and metrics all apply: each is an event with one delivery of kind
-- 'operational' whose endpoint_id is the operational webhook's id, filed under the app's
-- operational feed, app id 'ops:' || the app's id. The app's own listings (events,
-- deliveries, dashboard) name its own id and so never show them.

CREATE TABLE operational_webhooks (
    app_id      text COLLATE "C" PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    -- What its deliveries name as their endpoint_id; kept when the webhook is changed.
    id          text COLLATE "C" NOT NULL UNIQUE,
    url         text NOT NULL,
    -- NULL: every operational event type. Patterns as an endpoint's event_types take.
    event_types text[],
    -- Standard Webhooks signing secret, sealed (gateway/crypto.py) as "endpoint:<id>".
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- When the provider's refusal of the app's credentials was last told, and its reason:
-- push.credentials_rejected goes out when this is set, not for every push refused, and
-- again an hour later if they are still refused. New credentials clear it.
ALTER TABLE push_credentials
    ADD COLUMN rejected_at timestamptz,
    ADD COLUMN rejected_reason text;
