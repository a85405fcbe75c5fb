"""The durable-ingest ceiling: the least a server can do to accept an event durably.

A bare aiohttp handler and asyncpg: it reads the event's type, stores the event and one
pending delivery row per subscribed endpoint, and answers 202 with the event's id after
the commit, with the gateway's batching (concurrent requests share one statement: the
first waits a loop tick, at most two flushes in flight, at most 500 rows each; a
flusher that finds the other free takes half of 64 or more waiting and leaves it the
rest, and beside a flush in flight a second starts only for 32 or more). No
authentication, no validation, no logging, no idempotency keys, no push targets: the
gap between this and the gateway is the gateway's own overhead, and what PostgreSQL
spends per event here is the least the durable contract costs it.

Its schema keeps what delivering needs and no more: events by id, deliveries by id with
the index a dispatcher claims from (pending, by due time), and the NOTIFY that wakes one.

    python bench/minimal_server.py DATABASE_URL PORT [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

SCHEMA = """
DROP TABLE IF EXISTS min_deliveries, min_events;
CREATE TABLE min_events (
    id uuid PRIMARY KEY, app_id text NOT NULL, type text NOT NULL, payload text NOT NULL,
    created_at timestamptz NOT NULL);
CREATE TABLE min_deliveries (
    id uuid PRIMARY KEY, event_id uuid NOT NULL, endpoint_id text NOT NULL,
    status text NOT NULL, next_attempt_at timestamptz NOT NULL);
CREATE INDEX min_deliveries_due ON min_deliveries (next_attempt_at) WHERE status = 'pending';
"""

INSERT = """
WITH ev AS (
    INSERT INTO min_events (id, app_id, type, payload, created_at)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
    RETURNING id, created_at
), dl AS (
    INSERT INTO min_deliveries (id, event_id, endpoint_id, status, next_attempt_at)
    SELECT gen_random_uuid(), ev.id, 'ep_1', 'pending', ev.created_at FROM ev
    RETURNING 1
)
SELECT pg_notify('min_deliveries', '') WHERE EXISTS (SELECT 1 FROM dl)
"""


class Batcher:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queue: list[tuple[str, str, asyncio.Future[datetime]]] = []
        self.flushers = 0
        self.writing = 0

    async def submit(self, event_type: str, payload: str) -> datetime:
        future: asyncio.Future[datetime] = asyncio.get_running_loop().create_future()
        self.queue.append((event_type, payload, future))
        self.start_flusher()
        return await future

    def start_flusher(self) -> None:
        if self.flushers < 2 and not (self.flushers and len(self.queue) < 32):
            self.flushers += 1
            asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        try:
            await asyncio.sleep(0)
            while self.queue:
                take = 500
                if self.writing and len(self.queue) < 32:
                    break  # the flush in flight takes them when it is done
                if not self.writing and len(self.queue) >= 64:  # halves of 32 or more
                    take = min(500, -(-len(self.queue) // 2))
                batch, self.queue = self.queue[:take], self.queue[take:]
                if self.queue:
                    self.start_flusher()
                now = datetime.now(UTC)
                ids = [uuid.uuid4() for _ in batch]
                self.writing += 1
                try:
                    async with self.pool.acquire() as conn:
                        await conn.execute(INSERT, ids, ["app_1"] * len(batch),
                                           [b[0] for b in batch], [b[1] for b in batch],
                                           [now] * len(batch))
                except Exception as exc:
                    for _, _, future in batch:
                        future.set_exception(exc)
                    continue
                finally:
                    self.writing -= 1
                for _, _, future in batch:
                    future.set_result(now)
        finally:
            self.flushers -= 1
            if self.queue:  # left by a flush that ended abnormally
                self.start_flusher()


def make_app(batcher: Batcher) -> web.Application:
    """``POST /v1/events`` (the event and its delivery through ``batcher``, then 202 with
    the event's id) and ``GET /readyz``."""

    async def accept(request: web.Request) -> web.Response:
        body = await request.read()
        event_type = str(json.loads(body)["type"])
        created_at = await batcher.submit(event_type, body.decode())
        event_id = "evt_" + uuid.uuid4().hex
        return web.Response(status=202, content_type="application/json", text=(
            f'{{"id": "{event_id}", "type": "{event_type}", '
            f'"created_at": "{created_at.isoformat().replace("+00:00", "Z")}"}}'))

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post("/v1/events", accept)
    app.router.add_get("/readyz", ready)
    return app


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def serve(dsn: str, port: int) -> None:
    # No reset query on release (the gateway's pool skips it too): it is a transaction of
    # its own per batch, which is no part of storing an event.
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4, reset=_no_reset)
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
    runner = web.AppRunner(make_app(Batcher(pool)), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    deadline = time.monotonic() + 3600  # bounded even if nobody stops it
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
    await runner.cleanup()
    await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("port", type=int)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.dsn, args.port))
    else:
        asyncio.run(serve(args.dsn, args.port))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
