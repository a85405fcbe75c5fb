-- Apps someone is watching live (GET /v1/deliveries/stream), one row per API process
-- that serves such a stream and app. The queue tells the live tail (NOTIFY
-- gateway_outcomes) only of these apps' outcomes: building and queueing a notification
-- for every settled attempt cost PostgreSQL about a quarter of settling it, mostly for
-- nobody (bench/README.md, "The live tail's notifications").
--
-- A process keeps its rows while it has subscribers and renews them before expires_at;
-- a row past it (its process stopped without saying so) counts for nothing and is
-- removed by the next process that writes its own.

CREATE TABLE live_tails (
    process_id uuid NOT NULL,
    app_id     text COLLATE "C" NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (process_id, app_id)
);
CREATE INDEX live_tails_by_app ON live_tails (app_id, expires_at);
