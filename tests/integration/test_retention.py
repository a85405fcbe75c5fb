"""Retention drops whole days of finished work past the window (their partitions, not row
by row), keeps recent days and days something still holds, deletes only the finished rows
of a held day, lets one process prune at a time, and keeps the coming days' partitions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
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
DAY_S = 86400.0

# Moves an id of the gateway's shape ('evt_' + 12 hex digits of milliseconds + the rest)
# back by $2 milliseconds.
SHIFT = """
CREATE FUNCTION pg_temp.shift(id text, ms bigint) RETURNS text LANGUAGE sql AS $$
    SELECT left(id, strpos(id, '_'))
        || lpad(to_hex(('x' || lpad(substr(id, strpos(id, '_') + 1, 12), 16, '0'))
                       ::bit(64)::bigint - ms), 12, '0')
        || substr(id, strpos(id, '_') + 13)
$$"""


async def backdate(dsn: str, days: int) -> None:
    """Make every event, delivery and attempt now in the database ``days`` days older,
    ids and times alike (rows move to that day's partitions, as if made then)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(SHIFT)
            await conn.execute(
                "SELECT gateway_make_partitions(current_date - $1::int, current_date)", days + 1)
            ms, ago = days * 86_400_000, timedelta(days=days)
            await conn.execute(
                "UPDATE events SET id = pg_temp.shift(id, $1),"
                " created_at = created_at - $2::interval", ms, ago)
            await conn.execute(
                "UPDATE deliveries SET id = pg_temp.shift(id, $1),"
                " event_id = pg_temp.shift(event_id, $1),"
                " created_at = created_at - $2::interval,"
                " updated_at = updated_at - $2::interval", ms, ago)
            await conn.execute(
                "UPDATE attempts SET delivery_id = pg_temp.shift(delivery_id, $1),"
                " attempted_at = attempted_at - $2::interval", ms, ago)
            await conn.execute(
                "UPDATE idempotency_keys SET event_id = pg_temp.shift(event_id, $1)", ms)
    finally:
        await conn.close()


def shifted(id_: str, days: int) -> str:
    """The id ``backdate`` gives a row that had ``id_``."""
    prefix, rest = id_.split("_", 1)
    ms = int(rest[:12], 16) - days * 86_400_000
    return f"{prefix}_{ms:012x}{rest[12:]}"


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await conn.close()


async def partitions(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname IN ('events', 'deliveries', 'attempts')")
        return {r["relname"] for r in rows}
    finally:
        await conn.close()


async def day_name(dsn: str, days_ago: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval(
            "SELECT to_char(current_date - $1::int, 'YYYYMMDD')", days_ago))
    finally:
        await conn.close()


async def settled(dsn: str, succeeded: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        done = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'succeeded'")
        return bool(done >= succeeded)
    finally:
        await conn.close()


async def attempted(dsn: str, attempts: int) -> bool:
    """At least ``attempts`` attempts are logged: their results are written, not only sent."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM attempts") >= attempts)
    finally:
        await conn.close()


async def test_a_finished_day_past_the_window_is_dropped_whole_and_recent_days_stay(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    old = [await api.emit(key, "ok.old") for _ in range(5)]
    await eventually(lambda: settled(dsn, 5))
    await backdate(dsn, 3)
    recent = [await api.emit(key, "ok.new") for _ in range(2)]
    await eventually(lambda: settled(dsn, 7))
    old_day, yesterday = await day_name(dsn, 3), await day_name(dsn, 1)
    assert f"events_{old_day}" in await partitions(dsn)
    status, _ = await api.call("GET", f"/v1/events/{shifted(old[0]['id'], 3)}", key)
    assert status == 200  # backdated, still there

    retention = Retention(client.app[appkeys.STORE], max_age_s=DAY_S, batch=2, pause_s=0,
                          metrics=client.app[appkeys.METRICS])
    pruned = await retention.run_once()

    assert (pruned.events, pruned.deliveries, pruned.attempts) == (5, 5, 5)
    assert pruned.batches == 0  # nothing went row by row
    assert pruned.days_dropped >= 1
    left = await partitions(dsn)
    assert not {f"events_{old_day}", f"deliveries_{old_day}", f"attempts_{old_day}"} & left
    assert f"events_{yesterday}" in left  # inside the window: kept, though empty
    for event in old:
        status, _ = await api.call("GET", f"/v1/events/{shifted(event['id'], 3)}", key)
        assert status == 404
    for event in recent:
        status, body = await api.call("GET", f"/v1/events/{event['id']}", key)
        assert status == 200 and body["deliveries"][0]["status"] == "succeeded"
    assert await counts(dsn) == {"events": 2, "deliveries": 2, "attempts": 2,
                                 "idempotency_keys": 0}
    exposition = generate_latest(client.app[appkeys.METRICS].registry).decode()
    assert 'gateway_retention_deleted_rows_total{table="events"} 5.0' in exposition


async def test_a_day_with_pending_work_keeps_its_partitions_and_loses_only_finished_rows(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    # A 503 is retried after a minute: that delivery stays pending through the test.
    client = await aiohttp_client(create_app(replace(settings, retry_schedule=(60.0,)), dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/ok"), event_types=["ok.*"])
    await api.new_endpoint(key, receiver.url("/busy"), event_types=["busy"])
    receiver.answers["/busy"] = [(503, {})]
    finished = [await api.emit(key, "ok.old") for _ in range(7)]
    stuck = await api.emit(key, "busy")
    await eventually(lambda: settled(dsn, 7))
    await receiver.wait_for(1, "/busy")
    # The 503's result written before rows move: backdating is no place for a write in
    # flight (its delivery's id changes under it).
    await eventually(lambda: attempted(dsn, 8))
    await backdate(dsn, 3)
    old_day = await day_name(dsn, 3)
    status, _ = await api.call("GET", f"/v1/events/{shifted(finished[0]['id'], 3)}", key)
    assert status == 200  # backdated, still there

    retention = Retention(client.app[appkeys.STORE], max_age_s=DAY_S, batch=3, pause_s=0)
    pruned = await retention.run_once()

    assert (pruned.deliveries, pruned.attempts, pruned.events) == (7, 7, 7)
    assert pruned.batches >= 6  # 7 deliveries and 7 events, 3 at a time
    assert f"deliveries_{old_day}" in await partitions(dsn)
    for event in finished:
        status, _ = await api.call("GET", f"/v1/events/{shifted(event['id'], 3)}", key)
        assert status == 404
    _, body = await api.call("GET", "/v1/events/" + shifted(stuck["id"], 3), key)
    busy = body["deliveries"][0]
    assert busy["status"] == "pending"
    _, attempts = await api.call("GET", f"/v1/deliveries/{busy['id']}/attempts", key)
    assert len(attempts["data"]) == 1
    assert await counts(dsn) == {"events": 1, "deliveries": 1, "attempts": 1,
                                 "idempotency_keys": 0}


async def test_idempotency_keys_go_after_their_24_hours_and_then_the_key_is_new_again(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    first = await api.emit(key, "ok.old", headers={"Idempotency-Key": "old-key"})
    await api.emit(key, "ok.new", headers={"Idempotency-Key": "new-key"})
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
                           " WHERE key = 'old-key'")
    finally:
        await conn.close()

    pruned = await Retention(client.app[appkeys.STORE], max_age_s=DAY_S, pause_s=0).run_once()

    assert pruned.idempotency_keys == 1
    assert (await counts(dsn))["idempotency_keys"] == 1
    again = await api.emit(key, "ok.old", headers={"Idempotency-Key": "old-key"})
    assert again["id"] != first["id"]
    replay = await api.emit(key, "ok.new", headers={"Idempotency-Key": "new-key"})
    assert replay["id"] != again["id"]


async def test_dropping_a_day_while_ingest_and_delivery_run_loses_no_request(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await asyncio.gather(*(api.emit(key, "ok.old") for _ in range(20)))
    await eventually(lambda: settled(dsn, 20))
    await backdate(dsn, 4)
    retention = Retention(client.app[appkeys.STORE], max_age_s=DAY_S, pause_s=0)

    emitted, pruned = await asyncio.gather(
        asyncio.gather(*(api.emit(key, "ok.new", {"i": i}) for i in range(100))),
        retention.run_once())

    assert pruned.events == 20 and pruned.days_dropped >= 1
    await receiver.wait_for(120, timeout_s=30)
    await eventually(lambda: settled(dsn, 100))
    assert {r.headers["webhook-id"] for r in receiver.requests} >= {e["id"] for e in emitted}
    assert (await counts(dsn))["events"] == 100


async def test_the_coming_days_partitions_are_made_before_their_first_event(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    tomorrow = await day_name(dsn, -1)
    conn = await asyncpg.connect(dsn)
    try:
        for table in ("attempts", "deliveries", "events"):
            await conn.execute(f"DROP TABLE {table}_{tomorrow}")
    finally:
        await conn.close()
    assert f"events_{tomorrow}" not in await partitions(dsn)

    made = await client.app[appkeys.STORE].make_partitions()

    assert made == 3
    assert {f"events_{tomorrow}", f"deliveries_{tomorrow}",
            f"attempts_{tomorrow}"} <= await partitions(dsn)
    assert await client.app[appkeys.STORE].make_partitions() == 0


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
