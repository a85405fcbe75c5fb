-- Trace context: the W3C traceparent (version 00, checked by gateway/tracing.py) and
-- tracestate (at most 512 characters) an event was emitted with; every delivery attempt
-- of the event joins that trace. NULL when the event came without one.
ALTER TABLE events
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate  text;
