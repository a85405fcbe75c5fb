-- The status rules of the two hot tables, deliveries and events, as domains instead of
-- CHECK constraints: the same values allowed, the same error for any other.
--
-- A CHECK constraint costs every statement that writes one of these partitioned tables:
-- PostgreSQL reads the constraint back from its stored text (stringToNode) for each
-- partition the statement writes, and evaluates it on every updated row, whatever the
-- update changes (a claim moves only the due time and the lease). A domain's rule is
-- parsed once per session and checked only where a value is given to the column.
-- Measured with `bench/statement_cost.py --committed --variants statusdomain`: about 8 %
-- of PostgreSQL's CPU for an ingest batch of 13 events, 6-12 % for a batch of one.
--
-- In two steps, so that no table is rewritten: the columns first become domains without
-- a rule (text to a domain over text changes no stored byte), then each domain gets its
-- rule NOT VALID: the rows already there were checked by the CHECK constraint it
-- replaces, and every value written from now on is checked. The indexes whose key or
-- predicate names a status are rebuilt (deliveries_due, deliveries_open,
-- deliveries_parked, events_fanout_pending): they hold only the pending and failed
-- deliveries and the pending fan-outs, not the delivered history.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE events DROP CONSTRAINT events_fanout_status_check;

CREATE DOMAIN gateway_delivery_status AS text;
CREATE DOMAIN gateway_fanout_status AS text;

ALTER TABLE deliveries ALTER COLUMN status TYPE gateway_delivery_status;
ALTER TABLE events ALTER COLUMN fanout_status TYPE gateway_fanout_status;

ALTER DOMAIN gateway_delivery_status ADD CONSTRAINT gateway_delivery_status_check
    CHECK (VALUE IN ('pending', 'succeeded', 'failed')) NOT VALID;
ALTER DOMAIN gateway_fanout_status ADD CONSTRAINT gateway_fanout_status_check
    CHECK (VALUE IN ('pending', 'done')) NOT VALID;
