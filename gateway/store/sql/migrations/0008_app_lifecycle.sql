-- App lifecycle: deleting an app (marked at once, its rows removed in the background by
-- gateway/cleanup.py) and rotating its API key with a grace period for the previous one.

ALTER TABLE apps
    -- Set when the app is deleted: from then on its keys and user tokens are refused, it
    -- is not listed, and no claim or fan-out takes its work. The row goes last, once
    -- nothing refers to it any more.
    ADD COLUMN deleted_at timestamptz,
    -- The key that was current before the last rotation (hashed like api_key_hash), and
    -- until when it still works. NULL when there is none, or it ended at once.
    ADD COLUMN previous_key_hash bytea,
    ADD COLUMN previous_key_expires_at timestamptz;

CREATE UNIQUE INDEX apps_by_previous_key ON apps (previous_key_hash)
    WHERE previous_key_hash IS NOT NULL;
-- The deleted apps: read by every claim and fan-out (to pass their work over) and by the
-- cleanup.
CREATE INDEX apps_deleted ON apps (deleted_at, id) WHERE deleted_at IS NOT NULL;
