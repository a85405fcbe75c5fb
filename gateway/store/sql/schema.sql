-- The schema the migrations make (gateway/store/schema.py writes this file;
-- a test checks it). Partitions, made as time passes, are left out.

CREATE TABLE app_rate_windows (
    app_id text NOT NULL,
    second timestamp with time zone NOT NULL,
    used integer NOT NULL
);
ALTER TABLE app_rate_windows ADD CONSTRAINT app_rate_windows_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id);
ALTER TABLE app_rate_windows ADD CONSTRAINT app_rate_windows_pkey PRIMARY KEY (app_id);

CREATE TABLE apps (
    id text NOT NULL,
    name text NOT NULL,
    api_key_hash bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    user_token_secret text NOT NULL,
    rate_limit integer,
    max_endpoints integer,
    max_devices_per_user integer,
    max_topics_per_device integer,
    deleted_at timestamp with time zone,
    previous_key_hash bytea,
    previous_key_expires_at timestamp with time zone
);
ALTER TABLE apps ADD CONSTRAINT apps_api_key_hash_key UNIQUE (api_key_hash);
ALTER TABLE apps ADD CONSTRAINT apps_max_devices_per_user_check CHECK ((max_devices_per_user >= 0));
ALTER TABLE apps ADD CONSTRAINT apps_max_endpoints_check CHECK ((max_endpoints >= 0));
ALTER TABLE apps ADD CONSTRAINT apps_max_topics_per_device_check CHECK ((max_topics_per_device >= 0));
ALTER TABLE apps ADD CONSTRAINT apps_pkey PRIMARY KEY (id);
ALTER TABLE apps ADD CONSTRAINT apps_rate_limit_check CHECK ((rate_limit > 0));
CREATE UNIQUE INDEX apps_by_previous_key ON public.apps USING btree (previous_key_hash) WHERE (previous_key_hash IS NOT NULL);
CREATE INDEX apps_deleted ON public.apps USING btree (deleted_at, id) WHERE (deleted_at IS NOT NULL);

CREATE TABLE attempts (
    delivery_id text NOT NULL,
    id bigint DEFAULT nextval('attempt_ids'::regclass) NOT NULL,
    app_id text NOT NULL,
    attempted_at timestamp with time zone NOT NULL,
    duration_ms integer NOT NULL,
    outcome text NOT NULL,
    status_code integer,
    response_snippet text,
    error text
) PARTITION BY RANGE (delivery_id);
ALTER TABLE attempts ADD CONSTRAINT attempts_pkey PRIMARY KEY (delivery_id, id);
CREATE INDEX attempts_recent ON ONLY public.attempts USING brin (attempted_at);

CREATE TABLE dashboard_sessions (
    id text NOT NULL,
    kind text NOT NULL,
    app_id text,
    expires_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE dashboard_sessions ADD CONSTRAINT dashboard_sessions_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id);
ALTER TABLE dashboard_sessions ADD CONSTRAINT dashboard_sessions_kind_check CHECK ((kind = ANY (ARRAY['admin'::text, 'app'::text])));
ALTER TABLE dashboard_sessions ADD CONSTRAINT dashboard_sessions_pkey PRIMARY KEY (id);
CREATE INDEX dashboard_sessions_by_expiry ON public.dashboard_sessions USING btree (expires_at);

CREATE TABLE deliveries (
    app_id text NOT NULL,
    id text NOT NULL,
    event_id text NOT NULL,
    endpoint_id text,
    device_id text,
    kind text DEFAULT 'webhook'::text NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempt_count integer DEFAULT 0 NOT NULL,
    schedule_pos integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone,
    lease_id uuid,
    last_attempt_at timestamp with time zone,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
) PARTITION BY RANGE (id);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY (app_id, id);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'succeeded'::text, 'failed'::text])));
CREATE INDEX deliveries_by_endpoint ON ONLY public.deliveries USING btree (endpoint_id, id) WHERE (endpoint_id IS NOT NULL);
CREATE INDEX deliveries_by_event_before_0005 ON ONLY public.deliveries USING btree (event_id) WHERE (substr(id, 5, 12) <> substr(event_id, 5, 12));
CREATE INDEX deliveries_due ON ONLY public.deliveries USING btree (next_attempt_at) WHERE (status = 'pending'::text);
CREATE INDEX deliveries_open ON ONLY public.deliveries USING btree (app_id, status, id) WHERE (status <> 'succeeded'::text);
CREATE INDEX deliveries_parked ON ONLY public.deliveries USING btree (endpoint_id, id) WHERE ((next_attempt_at = 'infinity'::timestamp with time zone) AND (status = 'pending'::text));

CREATE TABLE devices (
    id text NOT NULL,
    app_id text NOT NULL,
    platform text NOT NULL,
    token text NOT NULL,
    user_id text NOT NULL,
    topics text[] DEFAULT '{}'::text[] NOT NULL,
    locale text,
    app_version text,
    status text DEFAULT 'active'::text NOT NULL,
    pruned_reason text,
    pruned_at timestamp with time zone,
    registered_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE devices ADD CONSTRAINT devices_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id);
ALTER TABLE devices ADD CONSTRAINT devices_app_id_token_key UNIQUE (app_id, token);
ALTER TABLE devices ADD CONSTRAINT devices_pkey PRIMARY KEY (id);
ALTER TABLE devices ADD CONSTRAINT devices_platform_check CHECK ((platform = ANY (ARRAY['ios'::text, 'android'::text])));
ALTER TABLE devices ADD CONSTRAINT devices_status_check CHECK ((status = ANY (ARRAY['active'::text, 'pruned'::text])));
CREATE INDEX devices_by_app ON public.devices USING btree (app_id, id);
CREATE INDEX devices_by_topic ON public.devices USING gin (topics);
CREATE INDEX devices_by_user ON public.devices USING btree (app_id, user_id, id);

CREATE TABLE endpoint_send_rates (
    endpoint_id text NOT NULL,
    rate_limit integer,
    tat timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    booked_until timestamp with time zone
);
ALTER TABLE endpoint_send_rates ADD CONSTRAINT endpoint_send_rates_endpoint_id_fkey FOREIGN KEY (endpoint_id) REFERENCES endpoints(id) ON DELETE CASCADE;
ALTER TABLE endpoint_send_rates ADD CONSTRAINT endpoint_send_rates_pkey PRIMARY KEY (endpoint_id);
ALTER TABLE endpoint_send_rates ADD CONSTRAINT endpoint_send_rates_rate_limit_check CHECK ((rate_limit > 0));

CREATE TABLE endpoints (
    id text NOT NULL,
    app_id text NOT NULL,
    url text NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    event_types text[],
    status text DEFAULT 'active'::text NOT NULL,
    disabled_reason text,
    disabled_at timestamp with time zone,
    secret text NOT NULL,
    previous_secret text,
    previous_secret_expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    deleted_at timestamp with time zone,
    rate_limit integer,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    filter jsonb,
    failing_since timestamp with time zone,
    consecutive_failures integer DEFAULT 0 NOT NULL,
    circuit_open_until timestamp with time zone,
    circuit_probe_until timestamp with time zone
);
ALTER TABLE endpoints ADD CONSTRAINT endpoints_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id);
ALTER TABLE endpoints ADD CONSTRAINT endpoints_disabled_reason_check CHECK ((disabled_reason = ANY (ARRAY['gone'::text, 'failing'::text, 'manual'::text])));
ALTER TABLE endpoints ADD CONSTRAINT endpoints_pkey PRIMARY KEY (id);
ALTER TABLE endpoints ADD CONSTRAINT endpoints_rate_limit_check CHECK ((rate_limit > 0));
ALTER TABLE endpoints ADD CONSTRAINT endpoints_status_check CHECK ((status = ANY (ARRAY['active'::text, 'disabled'::text])));
CREATE INDEX endpoints_by_app ON public.endpoints USING btree (app_id, id) WHERE (deleted_at IS NULL);
CREATE INDEX endpoints_tripped ON public.endpoints USING btree (circuit_open_until) WHERE (circuit_open_until IS NOT NULL);

CREATE TABLE event_types (
    app_id text NOT NULL,
    name text NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    schema jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE event_types ADD CONSTRAINT event_types_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id) ON DELETE CASCADE;
ALTER TABLE event_types ADD CONSTRAINT event_types_pkey PRIMARY KEY (app_id, name);

CREATE TABLE events (
    app_id text NOT NULL,
    id text NOT NULL,
    type text NOT NULL,
    payload text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    push_user_ids text[],
    push_topics text[],
    notification jsonb,
    fanout_status text,
    fanout_cursor text,
    traceparent text,
    tracestate text
) PARTITION BY RANGE (id);
ALTER TABLE events ADD CONSTRAINT events_fanout_status_check CHECK ((fanout_status = ANY (ARRAY['pending'::text, 'done'::text])));
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (app_id, id);
CREATE INDEX events_fanout_pending ON ONLY public.events USING btree (app_id, created_at) WHERE (fanout_status = 'pending'::text);

CREATE TABLE idempotency_keys (
    app_id text NOT NULL,
    key text NOT NULL,
    body_sha256 bytea NOT NULL,
    event_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (app_id, key);

CREATE TABLE live_tails (
    process_id uuid NOT NULL,
    app_id text NOT NULL,
    expires_at timestamp with time zone NOT NULL
);
ALTER TABLE live_tails ADD CONSTRAINT live_tails_pkey PRIMARY KEY (process_id, app_id);
CREATE INDEX live_tails_by_app ON public.live_tails USING btree (app_id, expires_at);

CREATE TABLE operational_webhooks (
    app_id text NOT NULL,
    id text NOT NULL,
    url text NOT NULL,
    event_types text[],
    secret text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE operational_webhooks ADD CONSTRAINT operational_webhooks_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id) ON DELETE CASCADE;
ALTER TABLE operational_webhooks ADD CONSTRAINT operational_webhooks_id_key UNIQUE (id);
ALTER TABLE operational_webhooks ADD CONSTRAINT operational_webhooks_pkey PRIMARY KEY (app_id);

CREATE TABLE push_credentials (
    app_id text NOT NULL,
    provider text NOT NULL,
    config jsonb NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    rejected_at timestamp with time zone,
    rejected_reason text
);
ALTER TABLE push_credentials ADD CONSTRAINT push_credentials_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id);
ALTER TABLE push_credentials ADD CONSTRAINT push_credentials_pkey PRIMARY KEY (app_id, provider);
ALTER TABLE push_credentials ADD CONSTRAINT push_credentials_provider_check CHECK ((provider = ANY (ARRAY['fcm'::text, 'apns'::text])));

CREATE TABLE tasks (
    app_id text NOT NULL,
    id text NOT NULL,
    kind text NOT NULL,
    endpoint_id text NOT NULL,
    since timestamp with time zone NOT NULL,
    until timestamp with time zone NOT NULL,
    status text DEFAULT 'running'::text NOT NULL,
    cursor text NOT NULL,
    counts jsonb DEFAULT '{}'::jsonb NOT NULL,
    error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone
);
ALTER TABLE tasks ADD CONSTRAINT tasks_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps(id) ON DELETE CASCADE;
ALTER TABLE tasks ADD CONSTRAINT tasks_check CHECK ((since < until));
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_check CHECK ((kind = ANY (ARRAY['endpoint.recover'::text, 'endpoint.replay'::text])));
ALTER TABLE tasks ADD CONSTRAINT tasks_pkey PRIMARY KEY (app_id, id);
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK ((status = ANY (ARRAY['running'::text, 'done'::text, 'failed'::text])));
CREATE INDEX tasks_running ON public.tasks USING btree (updated_at) WHERE (status = 'running'::text);

CREATE OR REPLACE FUNCTION public.gateway_day_bound(prefix text, day date)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT prefix || '_'
        || lpad(to_hex((extract(epoch FROM day::timestamp) * 1000)::bigint), 12, '0')
$function$;

CREATE OR REPLACE FUNCTION public.gateway_delivery_id(event_id text, target_id text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT 'dlv_' || substr(event_id, 5, 12) || left(md5(event_id || '/' || target_id), 20)
$function$;

CREATE OR REPLACE FUNCTION public.gateway_filter_matches(filter jsonb, payload jsonb)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT NOT EXISTS (
        SELECT 1 FROM jsonb_each(filter) AS f(path, wanted)
        WHERE NOT gateway_filter_reaches(
            payload, string_to_array(f.path, '.'),
            CASE WHEN jsonb_typeof(f.wanted) = 'array' THEN f.wanted
                 ELSE jsonb_build_array(f.wanted) END))
$function$;

CREATE OR REPLACE FUNCTION public.gateway_filter_reaches(node jsonb, path text[], wanted jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
DECLARE
    i integer := 1;
BEGIN
    LOOP
        IF node IS NULL THEN
            RETURN false;
        ELSIF jsonb_typeof(node) = 'array' THEN
            IF i <= cardinality(path) AND path[i] ~ '^(0|[1-9][0-9]{0,8})$' THEN
                node := node -> path[i]::integer;
                i := i + 1;
            ELSE
                RETURN EXISTS (SELECT 1 FROM jsonb_array_elements(node) AS e(value)
                               WHERE gateway_filter_reaches(e.value, path[i:], wanted));
            END IF;
        ELSIF i > cardinality(path) THEN
            RETURN jsonb_typeof(node) <> 'object'
                AND EXISTS (SELECT 1 FROM jsonb_array_elements(wanted) AS w(value)
                            WHERE w.value = node);
        ELSIF jsonb_typeof(node) = 'object' THEN
            node := node -> path[i];
            i := i + 1;
        ELSE
            RETURN false;
        END IF;
    END LOOP;
END
$function$;

CREATE OR REPLACE FUNCTION public.gateway_id_day(id text)
 RETURNS date
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT (to_timestamp(('x' || lpad(substr(id, strpos(id, '_') + 1, 12), 16, '0'))
                         ::bit(64)::bigint / 1000.0) AT TIME ZONE 'UTC')::date
$function$;

CREATE OR REPLACE FUNCTION public.gateway_make_partitions(first_day date, last_day date)
 RETURNS integer
 LANGUAGE sql
AS $function$
    SELECT gateway_make_partitions(first_day, last_day, 1)
$function$;

CREATE OR REPLACE FUNCTION public.gateway_make_partitions(first_day date, last_day date, width integer)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
DECLARE
    day date;
    span_end date;
    next_start date;
    made integer := 0;
    part record;
    name text;
    n integer;
BEGIN
    IF width < 1 THEN
        RAISE EXCEPTION 'a partition holds at least one day, not %', width;
    END IF;
    PERFORM pg_advisory_xact_lock(727277);
    FOR part IN SELECT * FROM (VALUES ('events', 'evt'), ('deliveries', 'dlv'),
                                      ('attempts', 'dlv')) AS v(parent, prefix) LOOP
        day := first_day;
        WHILE day <= last_day LOOP
            SELECT b.end_day INTO span_end FROM gateway_partition_bounds(part.parent) b
            WHERE b.first_day <= day AND day < b.end_day;
            IF FOUND THEN
                day := span_end;
                CONTINUE;
            END IF;
            SELECT min(b.first_day) INTO next_start FROM gateway_partition_bounds(part.parent) b
            WHERE b.first_day > day;
            span_end := least(day + width - (day - date '1970-01-05') % width,
                              coalesce(next_start, 'infinity'::date));
            -- A table of that name that is not a partition (one left detached by a drop
            -- cut short) must not stop partitions being made: the next free name is taken.
            name := part.parent || '_from' || to_char(day, 'YYYYMMDD');
            n := 1;
            WHILE to_regclass(format('%I', name)) IS NOT NULL LOOP
                n := n + 1;
                name := part.parent || '_from' || to_char(day, 'YYYYMMDD') || '_' || n;
            END LOOP;
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           name, part.parent, gateway_day_bound(part.prefix, day),
                           gateway_day_bound(part.prefix, span_end));
            made := made + 1;
            day := span_end;
        END LOOP;
    END LOOP;
    RETURN made;
END
$function$;

CREATE OR REPLACE FUNCTION public.gateway_partition_bounds(parent text)
 RETURNS TABLE(name text, first_day date, end_day date, detaching boolean)
 LANGUAGE sql
 STABLE
AS $function$
    -- A partition's bounds are ids of the gateway's shape (prefix, '_', 12 hex digits of
    -- milliseconds), the first day's and the day after the last one's. A partition with
    -- other bounds (MINVALUE, a DEFAULT one, ...) is not one of the gateway's: left out.
    SELECT b.name, gateway_id_day(b.bounds[1]), gateway_id_day(b.bounds[2]), b.detaching
    FROM (SELECT c.relname::text AS name, i.inhdetachpending AS detaching,
                 regexp_match(pg_get_expr(c.relpartbound, c.oid),
                              '^FOR VALUES FROM [(]''([a-z]+_[0-9a-f]{12})''[)] '
                              || 'TO [(]''([a-z]+_[0-9a-f]{12})''[)]') AS bounds
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relnamespace = current_schema()::regnamespace AND p.relname = parent) b
    WHERE b.bounds IS NOT NULL
$function$;

CREATE OR REPLACE FUNCTION public.gateway_payload_jsonb(payload text)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN strpos(payload, '\u0000') = 0 THEN payload::jsonb
                ELSE regexp_replace(payload, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\uffff',
                                    'g')::jsonb END
$function$;

CREATE OR REPLACE FUNCTION public.gateway_type_matches(patterns text[], event_type text)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT patterns IS NULL OR EXISTS (
        SELECT 1 FROM unnest(patterns) AS p
        WHERE p = '*'
           OR p = event_type
           OR (right(p, 2) = '.*'
               AND length(event_type) > length(p) - 1
               AND starts_with(event_type, left(p, -1)))
    )
$function$;
