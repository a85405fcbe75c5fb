-- Background tasks (gateway/tasks.py): recovering an endpoint's failed deliveries and
-- replaying the events it missed, over a window of event times. A task walks the ids of
-- its window (ids start with their creation time) a batch per transaction, and each batch
-- commits with the task's cursor and counts: a process that stops mid-way loses nothing,
-- and whichever process takes the task next goes on from the cursor.
--
-- No foreign keys into events or deliveries (they are partitioned and dropped by day);
-- the app's tasks go with the app.

CREATE TABLE tasks (
    app_id      text COLLATE "C" NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    id          text COLLATE "C" NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('endpoint.recover', 'endpoint.replay')),
    endpoint_id text COLLATE "C" NOT NULL,
    -- The window of event creation times, [since, until).
    since       timestamptz NOT NULL,
    until       timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    -- The last id handled (an event's or a delivery's, by kind); the next batch starts
    -- after it.
    cursor      text COLLATE "C" NOT NULL,
    -- What it did so far, by name ({"scanned": n, "requeued": n} ...).
    counts      jsonb NOT NULL DEFAULT '{}',
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every batch: running tasks take turns, the least recently advanced first.
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (app_id, id),
    CHECK (since < until)
);
CREATE INDEX tasks_running ON tasks (updated_at) WHERE status = 'running';
