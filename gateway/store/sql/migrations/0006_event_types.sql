-- The event type catalog: per app, a name with a description and, optionally, a JSON
-- Schema (Draft 2020-12) every payload of that type must match at ingest. Events do not
-- reference it: a type without an entry is still accepted, and deleting an entry
-- touches no event. Ids and names compare byte-wise (COLLATE "C"), as every id column
-- does: the catalog lists in the same order whatever the database's locale.

CREATE TABLE event_types (
    app_id      text COLLATE "C" NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name        text COLLATE "C" NOT NULL,
    description text NOT NULL DEFAULT '',
    schema      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, name)
);
