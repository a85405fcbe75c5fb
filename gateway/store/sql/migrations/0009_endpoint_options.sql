-- Endpoint options (issue 10, points 3-5): a send rate limit, custom headers and a payload
-- filter per endpoint. gateway/sendrate.py, gateway/endpoint_headers.py and
-- gateway/filters.py hold the rules; the functions below are their SQL side.

-- rate_limit: sends per second (NULL: no limit). headers: {name: value}, each value sealed
-- like the signing secret (gateway/crypto.py). filter: {dotted path: value or [values]}
-- (NULL: every event). The defaults are constants: adding the columns rewrites nothing.
ALTER TABLE endpoints
    ADD COLUMN rate_limit integer CHECK (rate_limit > 0),
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN filter jsonb;

-- The send schedule of each rate-limited endpoint, shared by every dispatcher process: a
-- claim locks the rows of the endpoints it takes from (in id order) and moves them on in
-- the same statement (claim_due). rate_limit: the endpoint's, copied here under this
-- row's lock when it changes, so a claim reads the limit and the schedule as one (NULL:
-- no limit any more); tat: the generic cell rate algorithm's theoretical arrival time,
-- when the endpoint's schedule is clear; booked_until: the last send time handed to a
-- delivery held back by the limit (the next one held back goes after it).
CREATE TABLE endpoint_send_rates (
    endpoint_id text COLLATE "C" PRIMARY KEY REFERENCES endpoints (id) ON DELETE CASCADE,
    rate_limit integer CHECK (rate_limit > 0),
    tat timestamptz NOT NULL DEFAULT '-infinity',
    booked_until timestamptz
);

-- Does the event payload reach, at the dotted path ``path`` (split into segments), one of
-- the JSON scalars in the array ``wanted``? An object is entered by member name; an array
-- is indexed by a segment of digits, and otherwise looked into: any element (at any
-- depth) may match. A missing member or index, or a path through a scalar, matches
-- nothing; scalars are equal as jsonb is (numbers by value, no coercion between types).
-- The pure-Python twin is gateway/filters.py matches(); tests check that they agree.
CREATE FUNCTION gateway_filter_reaches(node jsonb, path text[], wanted jsonb)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
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
$$;

-- Does ``payload`` pass an endpoint's ``filter`` ({dotted path: a scalar, or an array of
-- scalars any of which will do})? Every entry must match; a NULL filter passes everything.
CREATE FUNCTION gateway_filter_matches(filter jsonb, payload jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM jsonb_each(filter) AS f(path, wanted)
        WHERE NOT gateway_filter_reaches(
            payload, string_to_array(f.path, '.'),
            CASE WHEN jsonb_typeof(f.wanted) = 'array' THEN f.wanted
                 ELSE jsonb_build_array(f.wanted) END))
$$;

-- An event payload (stored as the text the backend sent) as jsonb, for filters. jsonb
-- cannot hold the NUL character, which a payload may escape (\u0000): such escapes become
-- \uffff, which no filter path or value may contain, so a string holding NUL still
-- equals no filter value, as in gateway/filters.py.
CREATE FUNCTION gateway_payload_jsonb(payload text)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN strpos(payload, '\u0000') = 0 THEN payload::jsonb
                ELSE regexp_replace(payload, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\uffff',
                                    'g')::jsonb END
$$;
