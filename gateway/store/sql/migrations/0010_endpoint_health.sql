-- Endpoint health (issue 10, points 1 and 2): endpoints that keep failing are held back
-- by a circuit breaker and, after GATEWAY_DISABLE_AFTER_S of nothing but failures,
-- disabled; why an endpoint is disabled is one of three words.
--
-- What is tracked lives on the endpoint row, written in the transaction that records the
-- attempts (gateway/store/endpoint_health.py), and only when it changes: an endpoint
-- whose attempts succeed is never written.
--
-- * failing_since: the first failed attempt after the last success (NULL: the last
--   attempt succeeded). Auto-disable compares it with the clock.
-- * consecutive_failures: failed attempts since the last success.
-- * circuit_open_until: NULL while the circuit is closed; after it, the circuit is
--   half-open (one probe may go); before it, open.
-- * circuit_probe_until: a dispatcher has taken the probe until then (its lease), so no
--   other takes a second one.
--
-- While the circuit is not closed the claim sends nothing to the endpoint and parks the
-- due deliveries it meets there (next_attempt_at 'infinity', as for a disabled
-- endpoint); the probe is one of them, and closing the circuit resumes them.

ALTER TABLE endpoints
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN circuit_open_until timestamptz,
    ADD COLUMN circuit_probe_until timestamptz;

-- Reasons were free text ("disabled by API", the dashboard's, a PATCH's own, or the 410
-- text); they become gone, failing or manual.
UPDATE endpoints SET disabled_reason = CASE
    WHEN disabled_reason LIKE '%410 Gone%' THEN 'gone' ELSE 'manual' END
WHERE status = 'disabled';
UPDATE endpoints SET disabled_reason = NULL WHERE status = 'active';
ALTER TABLE endpoints ADD CONSTRAINT endpoints_disabled_reason_check
    CHECK (disabled_reason IN ('gone', 'failing', 'manual'));

-- Endpoints whose circuit is not closed: the claim looks for half-open ones with work
-- to probe, and the dispatcher sleeps until the next cooldown ends.
CREATE INDEX endpoints_tripped ON endpoints (circuit_open_until)
    WHERE circuit_open_until IS NOT NULL;

-- Parked deliveries by endpoint: what enabling an endpoint or closing its circuit
-- resumes, and where a probe is found, without walking the endpoint's whole history.
-- Only parked rows are in it, so ingest and the claim never write to it. (Building it
-- reads the deliveries table once, holding off writes meanwhile.)
CREATE INDEX deliveries_parked ON deliveries (endpoint_id, id)
    WHERE next_attempt_at = 'infinity' AND status = 'pending';
