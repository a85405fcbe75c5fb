"""Retention deletes finished work past its age in small batches, keeps what is recent or
still pending, lets one process prune at a time, and keeps the tables from growing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import asyncpg
from prometheus_client import generate_latest

from gateway import appkeys
from gateway.app import create_app
from gateway.config import Settings
from gateway.retention import Retention
from gateway.store.postgres import RETENTION_LOCK_KEY
from tests.support import Api, Receiver, eventually

TABLES = ("events", "deliveries", "attempts", "idempotency_keys")


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await conn.close()


async def settled(dsn: str, succeeded: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        done = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'succeeded'")
        return bool(done >= succeeded)
    finally:
        await conn.close()


async def test_old_finished_work_goes_in_batches_and_recent_or_pending_work_stays(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    # A 503 is retried after a minute: that delivery stays pending through the test.
    client = await aiohttp_client(create_app(replace(settings, retry_schedule=(60.0,)), dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/ok"), event_types=["ok.*"])
    await api.new_endpoint(key, receiver.url("/busy"), event_types=["busy"])
    receiver.answers["/busy"] = [(503, {})]
    old = [await api.emit(key, "ok.old") for _ in range(7)]
    await api.emit(key, "ok.old", headers={"Idempotency-Key": "old-key"})
    stuck = await api.emit(key, "busy")
    await eventually(lambda: settled(dsn, 8))
    await receiver.wait_for(1, "/busy")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    finally:
        await conn.close()
    await asyncio.sleep(1.2)
    recent = [await api.emit(key, "ok.new") for _ in range(2)]
    await api.emit(key, "ok.new", headers={"Idempotency-Key": "new-key"})
    await eventually(lambda: settled(dsn, 11))

    retention = Retention(client.app[appkeys.STORE], max_age_s=1.0, batch=3, pause_s=0,
                          metrics=client.app[appkeys.METRICS])
    pruned = await retention.run_once()

    assert (pruned.deliveries, pruned.attempts, pruned.events, pruned.idempotency_keys) == \
        (8, 8, 8, 1)
    assert pruned.batches >= 6  # 8 deliveries and 8 events, 3 at a time
    for event in old:
        status, _ = await api.call("GET", f"/v1/events/{event['id']}", key)
        assert status == 404
    for event in [*recent, stuck]:
        status, body = await api.call("GET", f"/v1/events/{event['id']}", key)
        assert status == 200 and len(body["deliveries"]) == 1
    _, body = await api.call("GET", "/v1/events/" + stuck["id"], key)
    busy = body["deliveries"][0]
    assert busy["status"] == "pending"
    _, attempts = await api.call("GET", f"/v1/deliveries/{busy['id']}/attempts", key)
    assert len(attempts["data"]) == 1
    left = await counts(dsn)
    assert left == {"events": 4, "deliveries": 4, "attempts": 4, "idempotency_keys": 1}
    # The key past its 24 h is gone, so the same key makes a new event now.
    again = await api.emit(key, "ok.old", headers={"Idempotency-Key": "old-key"})
    assert again["id"] not in {e["id"] for e in old}
    exposition = generate_latest(client.app[appkeys.METRICS].registry).decode()
    assert 'gateway_retention_deleted_rows_total{table="events"} 8.0' in exposition


async def test_only_one_process_prunes_at_a_time(aiohttp_client: Any, dsn: str,
                                                 settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", RETENTION_LOCK_KEY)
        pruned = await Retention(client.app[appkeys.STORE], max_age_s=0).run_once()
        assert not pruned.ran
    finally:
        await holder.close()
    assert (await Retention(client.app[appkeys.STORE], max_age_s=0).run_once()).ran


async def test_retention_runs_beside_the_dispatcher_unless_turned_off(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    with_dispatcher = await aiohttp_client(create_app(settings, dsn))
    assert appkeys.RETENTION in with_dispatcher.app
    api_only = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    assert appkeys.RETENTION not in api_only.app
    kept = await aiohttp_client(create_app(replace(settings, retention_days=0), dsn))
    assert appkeys.RETENTION not in kept.app


async def test_soak_with_a_tiny_window_the_tables_stop_growing(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    retention = Retention(client.app[appkeys.STORE], max_age_s=0.5, batch=20, pause_s=0.01,
                          interval_s=0.2, first_run_after_s=0)
    per_round, rounds = 30, 10
    sizes = []
    retention.start()
    try:
        for n in range(rounds):
            await asyncio.gather(*(api.emit(key, "soak.tick", {"round": n})
                                   for _ in range(per_round)))
            await receiver.wait_for(per_round * (n + 1))
            await asyncio.sleep(0.3)
            sizes.append(await counts(dsn))
    finally:
        await retention.stop()
    assert len(receiver.requests) == per_round * rounds
    for table in ("events", "deliveries", "attempts"):
        seen = [s[table] for s in sizes]
        # Everything older than the window (about two rounds) is gone each time: the
        # table holds a few rounds' worth, not everything ever ingested.
        assert max(seen) <= 4 * per_round, (table, seen)
        assert max(seen[rounds // 2:]) <= max(seen[: rounds // 2]) + per_round, (table, seen)
