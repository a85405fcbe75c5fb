"""What the dispatcher's own machinery costs per delivery, with nothing else in the way.

    .venv/bin/python bench/dispatch_overhead.py [--deliveries 20000] [--rounds 3]

`gateway.dispatcher.Dispatcher` runs in this process against a queue that hands out
prebuilt jobs from a deque (each claim costs what it takes, within the endpoint's room)
and records nothing, and an adapter that answers "delivered" after one event-loop turn. So
there is no PostgreSQL, no HTTP and no signing: what is measured is the claim loop, the
slots, a task per delivery, the retry policy's decision, the attempt's result, metrics
off, and the attempt's log line (INFO, text, through the server's buffered handler into
memory) on or off. Rounds alternate with the line and without; each prints this
process's CPU per delivery (``time.process_time``) and the rate.

Beside `bench/run.py`'s drain (the gateway's CPU per delivery with everything) it says how
much of that is the dispatcher itself, and how much the HTTP client, the claim's rows, the
result writes and the database.

``--queue postgres`` runs the same dispatcher against the gateway's own queue instead
(`PostgresQueue` on a fresh embedded PostgreSQL, or ``DATABASE_URL``; a new database a
round, ``--deliveries`` pending deliveries of one endpoint written before the clock
starts), with the attempt line on and the server's metrics: what the gateway's process
spends a delivery on everything but HTTP (claims and their rows, settlements, asyncpg's
client side, the loop's waits on PostgreSQL), printed beside the rate.

``--queue postgres --push`` measures a push fan-out the same way: ``--deliveries``
Android devices of one app (FCM credentials), one event to them, and this process's
`FanoutRunner` and dispatcher as ``gateway serve`` runs them (the batches written leased
and handed over, the attempt line and metrics on), each push answered "delivered" at
once: the gateway's CPU per push besides the provider's client (`bench/push.py` measures
the client).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from common import Postgres

from adapters.base import DeliveryJob, EndpointTarget, EventView, Outcome, Verdict
from gateway import logs
from gateway.config import Settings
from gateway.dispatcher import Dispatcher
from gateway.metrics import Metrics
from gateway.retry import RetryPolicy
from gateway.store.database import Database, migrate
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import PostgresQueue
from gateway.store.queue import NO_CHANGE, UNLIMITED, AttemptResult, Claim, Job, Rooms, Settlement

ENDPOINT = "ep_0123456789abcdef"
APP = "app_0123456789abcdef"


class DequeQueue:
    """The queue interface over a deque of prebuilt jobs: a claim takes what the
    endpoint's room allows, in order; settling only counts."""

    def __init__(self, jobs: Sequence[DeliveryJob]) -> None:
        self.jobs = collections.deque(jobs)
        self.expected = len(jobs)
        self.settled = 0
        self.all_settled = asyncio.Event()

    def _count(self, results: Sequence[AttemptResult]) -> Settlement:
        self.settled += len(results)
        if self.settled >= self.expected:
            self.all_settled.set()
        return NO_CHANGE

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms = UNLIMITED) -> Claim:
        room = min(limit, rooms.room(APP, "webhook", ENDPOINT)[0])
        taken = [Job(self.jobs.popleft(), lease_id, 0)
                 for _ in range(max(0, min(room, len(self.jobs))))]
        left = len(self.jobs) if len(taken) < limit else 0
        return Claim(taken, held_back=0, waiting=left)

    async def complete(self, results: Sequence[AttemptResult]) -> Settlement:
        return self._count(results)

    async def reschedule(self, results: Sequence[AttemptResult]) -> Settlement:
        return self._count(results)

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        return None

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        return None

    async def next_due_at(self) -> datetime | None:
        return datetime.now(UTC) if self.jobs else None


class Delivered:
    """Answers "delivered" after one turn of the event loop, as a quick receiver would."""

    kind = "webhook"

    async def send(self, job: DeliveryJob) -> Outcome:
        await asyncio.sleep(0)
        return Outcome(Verdict.DELIVERED, status_code=200, duration_ms=1)

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def one_round(deliveries: int, endpoint_room: int) -> tuple[float, float]:
    """CPU seconds per delivery and deliveries per second for one drain of the deque."""
    event = EventView("evt_0123456789abcdef0123456789abcdef", "order.created", "{}",
                      datetime.now(UTC))
    endpoint = EndpointTarget(ENDPOINT, "http://127.0.0.1:9/hook", ("whsec_x",))
    queue = DequeQueue([DeliveryJob(f"dlv_{n:032x}", APP, "webhook", event, endpoint=endpoint)
                        for n in range(deliveries)])
    worker = Dispatcher(queue, {"webhook": Delivered()}, RetryPolicy((1.0,), jitter=0),
                        poll_interval_s=0.05, lease_s=60, endpoint_concurrency=endpoint_room)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await worker.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(queue.all_settled.wait(), 120)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await worker.stop(1)
    if queue.settled < deliveries:
        raise SystemExit(f"only {queue.settled} of {deliveries} settled in 120 s")
    return cpu / deliveries, deliveries / wall


class CountedQueue(PostgresQueue):
    """The gateway's queue, counting the deliveries it has settled."""

    def __init__(self, expected: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.settled = 0
        self.all_settled = asyncio.Event()

    async def complete(self, results: Sequence[AttemptResult]) -> Settlement:
        settlement = await super().complete(results)
        self.settled += len(results)
        if self.settled >= self.expected:
            self.all_settled.set()
        return settlement


async def _fresh_database(pg: Postgres, name: str, settings: Settings) -> Database:
    """A new, migrated database, connected as the gateway connects."""
    dsn = await pg.fresh_database(name, 0)
    await migrate(dsn)
    return await Database.connect(dsn, max_size=settings.db_pool_size)


async def postgres_round(pg: Postgres, n: int, deliveries: int,
                         endpoint_room: int) -> tuple[float, float]:
    """CPU seconds per delivery and deliveries per second for one drain of ``deliveries``
    pending deliveries through PostgresQueue, each answered "delivered" at once."""
    settings = Settings()
    db = await _fresh_database(pg, f"dispatch_overhead_{n}", settings)
    try:
        store = Store(db)
        app = await store.create_app("dispatch-overhead")
        await store.create_endpoint(app.id, "http://127.0.0.1:9/hook", "", None)
        for start in range(0, deliveries, 500):
            await store.write_events([EventDraft(app.id, "order.created", '{"n":1}')
                                      for _ in range(min(500, deliveries - start))])
        queue = CountedQueue(deliveries, db, store.sealer, settings.health_rules,
                             rate_margin_s=settings.endpoint_rate_margin_s)
        worker = Dispatcher(queue, {"webhook": Delivered()}, RetryPolicy((1.0,), jitter=0),
                            poll_interval_s=0.05, lease_s=60,
                            endpoint_concurrency=endpoint_room,
                            batch=settings.dispatch_batch, metrics=Metrics())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await worker.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.all_settled.wait(), 300)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await worker.stop(1)
    finally:
        await db.close()
    if queue.settled < deliveries:
        raise SystemExit(f"only {queue.settled} of {deliveries} settled in 300 s")
    return cpu / deliveries, deliveries / wall


class PushDelivered(Delivered):
    kind = "fcm"


FCM_CONFIG = {"type": "service_account", "project_id": "p", "client_email": "a@b.c",
              "private_key_id": "k", "private_key": "-----BEGIN PRIVATE KEY-----\nx\n"}


async def push_round(pg: Postgres, n: int, devices: int) -> tuple[float, float]:
    """CPU seconds per push and pushes per second for one event fanned out to
    ``devices`` devices, expanded and sent by this process, each answered "delivered"."""
    from gateway.fanout import FanoutRunner
    from gateway_client.models import Provider

    settings = Settings()
    db = await _fresh_database(pg, f"dispatch_overhead_push_{n}", settings)
    try:
        store = Store(db)
        app = await store.create_app("dispatch-overhead")
        await store.put_credentials(app.id, Provider.FCM, FCM_CONFIG)
        await db.pool.execute(
            "INSERT INTO devices (id, app_id, platform, token, user_id, topics) "
            "SELECT 'dev_' || lpad(i::text, 9, '0'), $1, 'android', "
            "  'fcm-token-' || lpad(i::text, 8, '0') || ':APA91b' || repeat('x', 100), "
            "  'user-' || i, ARRAY['all'] FROM generate_series(0, $2 - 1) AS i",
            app.id, devices)
        await db.pool.execute("ANALYZE devices")
        queue = CountedQueue(devices, db, store.sealer, settings.health_rules,
                             rate_margin_s=settings.endpoint_rate_margin_s)
        worker = Dispatcher(queue, {"fcm": PushDelivered()}, RetryPolicy((1.0,), jitter=0),
                            poll_interval_s=settings.poll_interval_s,
                            lease_s=settings.effective_lease_s,
                            concurrency=settings.dispatch_concurrency,
                            push_concurrency=settings.push_concurrency,
                            app_concurrency=settings.app_concurrency,
                            batch=settings.dispatch_batch, metrics=Metrics(),
                            handoff_wait_s=settings.handoff_wait_s)
        fanout = FanoutRunner(queue, poll_interval_s=settings.poll_interval_s,
                              dispatcher=worker)
        push = ('{"user_ids": [], "topics": ["all"], '
                '"notification": {"title": "hello", "body": "a push", "data": {"k": "v"}}}')
        await worker.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await store.write_events([EventDraft(app.id, "order.created", '{"n":1}', push=push)])
        fanout.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.all_settled.wait(), 300)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await fanout.stop()
        await worker.stop(1)
        claimed = await db.pool.fetchval("SELECT count(*) FROM deliveries")
    finally:
        await db.close()
    if queue.settled < devices or claimed != devices:
        raise SystemExit(f"only {queue.settled} of {devices} settled in 300 s")
    return cpu / devices, devices / wall


def postgres_main(args: argparse.Namespace) -> None:
    logs.configure("text", "INFO", stream=io.StringIO(), buffered=True)
    pg = Postgres(os.environ.get("DATABASE_URL"),
                  Path(tempfile.mkdtemp(prefix="dispatch-overhead-")) / "data")
    pg.start()
    try:
        runs = [uvloop.run(push_round(pg, n, args.deliveries) if args.push else
                           postgres_round(pg, n, args.deliveries, args.endpoint_room))
                for n in range(args.rounds)]
    finally:
        pg.stop()
    if args.push:
        print(f"push fan-out on PostgresQueue, handed over, attempt line and metrics on: "
              f"{statistics.median(r[0] for r in runs) * 1e6:5.1f} µs CPU per push (rounds: "
              f"{', '.join(f'{r[0] * 1e6:.1f}' for r in runs)}), "
              f"{statistics.median(r[1] for r in runs):,.0f}/s")
        return
    cpu = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[1] for r in runs)
    print(f"PostgresQueue, attempt line and metrics on: {cpu * 1e6:5.1f} µs CPU per delivery "
          f"(rounds: {', '.join(f'{r[0] * 1e6:.1f}' for r in runs)}), {rate:,.0f}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--endpoint-room", type=int, default=64,
                        help="GATEWAY_ENDPOINT_CONCURRENCY (default 64, as bench/run.py)")
    parser.add_argument("--queue", choices=("deque", "postgres"), default="deque",
                        help="deque (default): prebuilt jobs, no database; postgres: the "
                             "gateway's PostgresQueue on a fresh database a round")
    parser.add_argument("--push", action="store_true",
                        help="with --queue postgres: one event fanned out to --deliveries "
                             "devices, expanded and sent by this process")
    args = parser.parse_args()
    if args.push and args.queue != "postgres":
        parser.error("--push runs on --queue postgres")
    if args.queue == "postgres":
        postgres_main(args)
        return
    sink = io.StringIO()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for line in (False, True):
            # The server's handler (buffered, text, INFO), into memory; at WARNING the
            # attempt line is skipped, as it is when an operator raises the level.
            logs.configure("text", "INFO" if line else "WARNING", stream=sink, buffered=True)
            sink.seek(0)
            sink.truncate()
            results[line].append(uvloop.run(one_round(args.deliveries, args.endpoint_room)))
    for line, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        print(f"attempt line {'on ' if line else 'off'}: {cpu * 1e6:5.1f} µs CPU per delivery "
              f"(rounds: {', '.join(f'{r[0] * 1e6:.1f}' for r in runs)}), {rate:,.0f}/s")


if __name__ == "__main__":
    main()
