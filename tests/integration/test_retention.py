"""Retention drops whole partitions of finished work past the window (not row by row),
keeps recent ones and those something still holds, deletes only the finished rows of a
held one, lets one process prune at a time, and keeps the coming days' partitions made: a
week each (to the next Monday), a week ahead."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest

from gateway import appkeys
from gateway.app import create_app
from gateway.config import Settings
from gateway.retention import Retention, partition_days
from gateway.store.database import QUERIES, migrate
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
                "SELECT gateway_make_partitions(today - $1::int, today)"
                " FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS today) t", days + 1)
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


async def spans(dsn: str) -> dict[str, tuple[str, date, date]]:
    """Every partition: its parent, first day and end day (not included)."""
    conn = await asyncpg.connect(dsn)
    try:
        return {r["name"]: (r["parent"], r["first_day"], r["end_day"])
                for r in await conn.fetch(QUERIES["time_partitions"])}
    finally:
        await conn.close()


async def holding(dsn: str, parent: str, days_ago: int) -> str:
    """The partition of ``parent`` that holds the day ``days_ago`` days ago."""
    day = await today(dsn) - timedelta(days=days_ago)
    (name,) = [name for name, (p, first, end) in (await spans(dsn)).items()
               if p == parent and first <= day < end]
    return name


async def today(dsn: str) -> date:
    conn = await asyncpg.connect(dsn)
    try:
        return date.fromisoformat(str(await conn.fetchval(
            "SELECT (now() AT TIME ZONE 'UTC')::date")))
    finally:
        await conn.close()


def covered(spans_: dict[str, tuple[str, date, date]], parent: str) -> list[tuple[date, date]]:
    """The days ``parent``'s partitions hold, as (first, end) in order."""
    return sorted((first, end) for p, first, end in spans_.values() if p == parent)


def gapless(days: list[tuple[date, date]]) -> bool:
    """Each span starts where the one before ends: no day without a partition, none in
    two."""
    return all(a[1] == b[0] for a, b in itertools.pairwise(days))


def next_monday(day: date) -> date:
    return day + timedelta(days=7 - day.weekday())


async def day_name(dsn: str, days_ago: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval(
            "SELECT to_char((now() AT TIME ZONE 'UTC')::date - $1::int, 'YYYYMMDD')",
            days_ago))
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


async def test_finished_partitions_past_the_window_are_dropped_whole_and_recent_ones_stay(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    emitted = [await api.emit(key, "ok.old") for _ in range(5)]
    await eventually(lambda: settled(dsn, 5))
    await backdate(dsn, 3)
    recent = [await api.emit(key, "ok.new") for _ in range(2)]
    await eventually(lambda: settled(dsn, 7))
    old = {await holding(dsn, table, 3) for table in ("events", "deliveries", "attempts")}
    kept = await holding(dsn, "events", 1)
    assert kept not in old
    status, _ = await api.call("GET", f"/v1/events/{shifted(emitted[0]['id'], 3)}", key)
    assert status == 200  # backdated, still there

    retention = Retention(client.app[appkeys.STORE], max_age_s=DAY_S, batch=2, pause_s=0,
                          metrics=client.app[appkeys.METRICS])
    pruned = await retention.run_once()

    assert (pruned.events, pruned.deliveries, pruned.attempts) == (5, 5, 5)
    assert pruned.batches == 0  # nothing went row by row
    assert pruned.partitions_dropped >= 1
    left = await partitions(dsn)
    assert not old & left
    assert kept in left  # inside the window: kept, though empty
    for event in emitted:
        status, _ = await api.call("GET", f"/v1/events/{shifted(event['id'], 3)}", key)
        assert status == 404
    for event in recent:
        status, body = await api.call("GET", f"/v1/events/{event['id']}", key)
        assert status == 200 and body["deliveries"][0]["status"] == "succeeded"
    assert await counts(dsn) == {"events": 2, "deliveries": 2, "attempts": 2,
                                 "idempotency_keys": 0}
    exposition = generate_latest(client.app[appkeys.METRICS].registry).decode()
    assert 'gateway_retention_deleted_rows_total{table="events"} 5.0' in exposition


async def test_partitions_with_pending_work_stay_and_lose_only_their_finished_rows(
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
    held = await holding(dsn, "deliveries", 3)
    status, _ = await api.call("GET", f"/v1/events/{shifted(finished[0]['id'], 3)}", key)
    assert status == 200  # backdated, still there

    retention = Retention(client.app[appkeys.STORE], max_age_s=DAY_S, batch=3, pause_s=0)
    pruned = await retention.run_once()

    assert (pruned.deliveries, pruned.attempts, pruned.events) == (7, 7, 7)
    assert pruned.batches >= 6  # 7 deliveries and 7 events, 3 at a time
    assert held in await partitions(dsn)
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

    assert pruned.events == 20 and pruned.partitions_dropped >= 1
    await receiver.wait_for(120, timeout_s=30)
    await eventually(lambda: settled(dsn, 100))
    assert {r.headers["webhook-id"] for r in receiver.requests} >= {e["id"] for e in emitted}
    assert (await counts(dsn))["events"] == 100


async def test_the_coming_days_partitions_are_made_before_their_first_event(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    gone = {table: await holding(dsn, table, -1) for table in ("attempts", "deliveries",
                                                               "events")}
    conn = await asyncpg.connect(dsn)
    try:
        for name in gone.values():
            await conn.execute(f"DROP TABLE {name}")
    finally:
        await conn.close()
    assert not set(gone.values()) & await partitions(dsn)

    made = await client.app[appkeys.STORE].make_partitions()

    assert made == 3
    assert {table: await holding(dsn, table, -1) for table in gone} == gone
    assert await client.app[appkeys.STORE].make_partitions() == 0


async def test_a_new_database_has_partitions_from_yesterday_to_a_week_ahead_each_to_a_monday(
        empty_database: str) -> None:
    dsn = empty_database
    await migrate(dsn)
    now, found = await today(dsn), await spans(dsn)
    for parent in ("events", "deliveries", "attempts"):
        days = covered(found, parent)
        assert days[0][0] <= now - timedelta(days=1) and days[-1][1] > now + timedelta(days=7)
        assert gapless(days)
        assert days[-1][0] <= now + timedelta(days=7)  # none made further ahead
    # Migration 0005's day partitions ahead went; those made since run to a Monday.
    ahead = {name: (first, end) for name, (_, first, end) in found.items() if first > now}
    assert ahead and all(end == next_monday(first) for first, end in ahead.values())
    # Named so that a process of the version before cannot read a day in the name (it
    # would drop the partition whole once that day is past the window).
    for name in ahead:
        assert "_from" in name
        with pytest.raises(ValueError):
            datetime.strptime(name.rsplit("_", 1)[-1], "%Y%m%d")


async def test_the_upgrade_of_a_database_in_use_keeps_its_day_partitions_ahead(
        empty_database: str) -> None:
    """Migration 0014 on a database an older version kept, with rows: its day partitions
    a week ahead stay (no lock on tables in use) and the days after them get wide ones as
    they come within a week."""
    dsn = empty_database
    await migrate(dsn)
    now = await today(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        for name, (_, first, _) in (await spans(dsn)).items():
            if first > now:
                await conn.execute(f"DROP TABLE {name}")
        for ahead in range(1, 8):  # what the version before made
            day = now + timedelta(days=ahead)
            for parent, prefix in (("events", "evt"), ("deliveries", "dlv"),
                                   ("attempts", "dlv")):
                await conn.execute(
                    f"CREATE TABLE {parent}_{day:%Y%m%d} PARTITION OF {parent} FOR VALUES "
                    f"FROM (gateway_day_bound('{prefix}', '{day}'::date)) "
                    f"TO (gateway_day_bound('{prefix}', '{day}'::date + 1))")
        await conn.execute(
            "INSERT INTO events (app_id, id, type, payload, created_at) VALUES "
            "('app_x', gateway_day_bound('evt', (now() AT TIME ZONE 'UTC')::date) || 'x',"
            " 't', '{}', now())")
        before = await spans(dsn)
        # The upgrade as a starting process runs it: migration 0014, then the partitions.
        await conn.execute("DELETE FROM schema_migrations WHERE version = 14")
    finally:
        await conn.close()

    assert await migrate(dsn) == [14]

    assert await spans(dsn) == before
    conn = await asyncpg.connect(dsn)
    try:  # an old process's hourly call, after the upgrade: day partitions, no overlap
        made = await conn.fetchval("SELECT gateway_make_partitions($1::date - 1, $1::date + 9)",
                                   now)
    finally:
        await conn.close()
    after = await spans(dsn)
    assert made == 6  # days 8 and 9 ahead, for each table
    for parent in ("events", "deliveries", "attempts"):
        days = covered(after, parent)
        assert gapless(days) and days[-1][1] == now + timedelta(days=10)


async def test_a_partition_is_dropped_only_once_its_last_day_is_past_the_window(
        aiohttp_client: Any, empty_database: str, settings: Settings,
        receiver: Receiver) -> None:
    dsn = empty_database
    await migrate(dsn)
    now = await today(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        for name in await spans(dsn):
            await conn.execute(f"DROP TABLE {name}")
        # One partition wholly past a day's window, one that starts past it and ends in it.
        for first, end in ((now - timedelta(days=9), now - timedelta(days=5)),
                           (now - timedelta(days=5), now + timedelta(days=3))):
            for parent, prefix in (("events", "evt"), ("deliveries", "dlv"),
                                   ("attempts", "dlv")):
                await conn.execute(
                    f"CREATE TABLE {parent}_from{first:%Y%m%d} PARTITION OF {parent} FOR "
                    f"VALUES FROM (gateway_day_bound('{prefix}', '{first}'::date)) "
                    f"TO (gateway_day_bound('{prefix}', '{end}'::date))")
    finally:
        await conn.close()
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    for _ in range(3):
        await api.emit(key, "ok.oldest")
    await eventually(lambda: settled(dsn, 3))
    await backdate(dsn, 7)  # into the first partition
    for _ in range(2):
        await api.emit(key, "ok.old")
    await eventually(lambda: settled(dsn, 5))
    await eventually(lambda: attempted(dsn, 5))
    ms, ago = 4 * 86_400_000, timedelta(days=4)
    conn = await asyncpg.connect(dsn)
    try:  # the two newest 4 days back: in the second partition, past the window
        async with conn.transaction():
            await conn.execute(SHIFT)
            await conn.execute(
                "UPDATE events SET id = pg_temp.shift(id, $1),"
                " created_at = created_at - $2::interval"
                " WHERE created_at > now() - $3::interval", ms, ago, timedelta(days=1))
            await conn.execute(
                "UPDATE deliveries SET id = pg_temp.shift(id, $1),"
                " event_id = pg_temp.shift(event_id, $1),"
                " created_at = created_at - $2::interval,"
                " updated_at = updated_at - $2::interval WHERE created_at > now() - $3::interval",
                ms, ago, timedelta(days=1))
            await conn.execute(
                "UPDATE attempts SET delivery_id = pg_temp.shift(delivery_id, $1),"
                " attempted_at = attempted_at - $2::interval"
                " WHERE attempted_at > now() - $3::interval", ms, ago, timedelta(days=1))
    finally:
        await conn.close()

    pruned = await Retention(client.app[appkeys.STORE], max_age_s=DAY_S, pause_s=0).run_once()

    assert pruned.partitions_dropped == 1
    assert (pruned.events, pruned.deliveries, pruned.attempts) == (3, 3, 3)
    assert pruned.batches == 0  # and nothing row by row: the second is not past the window
    left = await partitions(dsn)
    assert f"events_from{now - timedelta(days=5):%Y%m%d}" in left
    assert f"events_from{now - timedelta(days=9):%Y%m%d}" not in left
    assert await counts(dsn) == {"events": 2, "deliveries": 2, "attempts": 2,
                                 "idempotency_keys": 0}


async def test_a_table_left_with_a_partitions_name_and_a_foreign_partition_stop_nothing(
        aiohttp_client: Any, empty_database: str, settings: Settings) -> None:
    """A table a drop cut short left behind (detached, not dropped) does not stop partitions
    being made, and a partition that is not the gateway's (MINVALUE) does not stop
    retention."""
    dsn = empty_database
    await migrate(dsn)
    now = await today(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        for name, (parent, first, _) in (await spans(dsn)).items():
            if first > now:
                await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {name}")
        await conn.execute(
            "CREATE TABLE events_before_everything PARTITION OF events"
            " FOR VALUES FROM (MINVALUE) TO ('evt_000000000001')")
    finally:
        await conn.close()

    assert await migrate(dsn) == []  # makes the partitions ahead again, under other names

    found = await spans(dsn)
    for parent in ("events", "deliveries", "attempts"):
        assert gapless(covered(found, parent))
        assert covered(found, parent)[-1][1] > now + timedelta(days=7)
    assert f"events_from{now + timedelta(days=1):%Y%m%d}_2" in found
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    pruned = await Retention(client.app[appkeys.STORE], max_age_s=DAY_S, pause_s=0).run_once()
    assert pruned.ran


async def test_a_short_retention_gets_partitions_of_a_day_and_a_long_one_of_a_week(
        empty_database: str) -> None:
    assert [partition_days(n) for n in (0, 1, 3, 7, 8, 14, 28, 30, 365)] == [
        7, 1, 1, 1, 2, 3, 7, 7, 7]
    dsn = empty_database
    await migrate(dsn, partition_days(3))

    now = await today(dsn)
    ahead = [(first, end) for first, end in covered(await spans(dsn), "deliveries")
             if first > now]
    assert ahead == [(now + timedelta(days=n), now + timedelta(days=n + 1)) for n in (1, 2)]


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
