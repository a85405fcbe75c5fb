"""One LISTEN connection per process: every listen_forever of an event loop shares it,
each caller hears only its channels, callers come and go, and the connection comes back
after the database drops it (gateway/store/listening.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from gateway.store import listening as listening_module
from gateway.store.database import QUERIES
from gateway.store.listening import APPLICATION_NAME, listen_forever
from tests.support import Api, eventually


class Heard:
    """What one caller of listen_forever heard, and how often it was told it is connected
    and that it lost the connection."""

    def __init__(self) -> None:
        self.payloads: list[tuple[str, str]] = []
        self.connected = 0
        self.lost = 0

    def callback(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        self.payloads.append((channel, str(payload)))

    def on_connected(self) -> None:
        self.connected += 1

    def on_lost(self) -> None:
        self.lost += 1


@contextlib.asynccontextmanager
async def listening(dsn: str, heard: Heard, *channels: str) -> AsyncIterator[None]:
    task = asyncio.create_task(listen_forever(
        dsn, dict.fromkeys(channels, heard.callback), on_connected=heard.on_connected,
        on_lost=heard.on_lost))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def observer(dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def listen_backends(conn: asyncpg.Connection[Any]) -> list[int]:
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = "
                            "current_database() AND application_name = $1", APPLICATION_NAME)
    return [r["pid"] for r in rows]


async def until(check: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return check()
    await eventually(holds, timeout_s=5)


async def test_callers_share_one_connection_and_each_hears_only_its_channels(dsn: str) -> None:
    a, b = Heard(), Heard()
    async with observer(dsn) as conn:
        async with listening(dsn, a, "test_one", "test_shared"), \
                listening(dsn, b, "test_two", "test_shared"):
            await until(lambda: a.connected == 1 and b.connected == 1)
            assert len(await listen_backends(conn)) == 1
            for channel, payload in (("test_one", "1"), ("test_two", "2"), ("test_shared", "s")):
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
            await until(lambda: len(a.payloads) == 2 and len(b.payloads) == 2)
            assert a.payloads == [("test_one", "1"), ("test_shared", "s")]
            assert b.payloads == [("test_two", "2"), ("test_shared", "s")]
        assert a.lost == 1 and b.lost == 1


async def test_a_caller_that_leaves_stops_hearing_and_the_others_go_on(dsn: str) -> None:
    a, b = Heard(), Heard()
    async with observer(dsn) as conn:
        async with listening(dsn, a, "test_left"):
            async with listening(dsn, b, "test_left", "test_kept"):
                await until(lambda: a.connected == 1 and b.connected == 1)
            await conn.execute("SELECT pg_notify('test_kept', 'after')")
            await conn.execute("SELECT pg_notify('test_left', 'after')")
            await until(lambda: len(a.payloads) == 1)
            assert a.payloads == [("test_left", "after")]
            assert b.payloads == []  # both were sent before the one a heard
            assert len(await listen_backends(conn)) == 1
        # The last caller gone, so is the connection.
        async def none_left() -> bool:
            return await listen_backends(conn) == []
        await eventually(none_left, timeout_s=5)


async def test_a_caller_that_joins_a_live_connection_is_told_and_hears(dsn: str) -> None:
    a, b = Heard(), Heard()
    async with observer(dsn) as conn, listening(dsn, a, "test_first"):
        await until(lambda: a.connected == 1)
        async with listening(dsn, b, "test_late"):
            await until(lambda: b.connected == 1)
            assert a.connected == 1  # nobody else is told again
            await conn.execute("SELECT pg_notify('test_late', 'x')")
            await until(lambda: b.payloads == [("test_late", "x")])
        assert a.lost == 0


async def test_every_caller_is_told_of_a_lost_connection_and_of_its_return(dsn: str) -> None:
    a, b = Heard(), Heard()
    async with observer(dsn) as conn, listening(dsn, a, "test_back_a"), \
            listening(dsn, b, "test_back_b"):
        await until(lambda: a.connected == 1 and b.connected == 1)
        [pid] = await listen_backends(conn)
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        await until(lambda: a.lost == 1 and b.lost == 1)
        await until(lambda: a.connected == 2 and b.connected == 2)
        assert len(await listen_backends(conn)) == 1
        await conn.execute("SELECT pg_notify('test_back_a', 'a')")
        await conn.execute("SELECT pg_notify('test_back_b', 'b')")
        await until(lambda: a.payloads == [("test_back_a", "a")]
                    and b.payloads == [("test_back_b", "b")])


async def test_a_gateway_process_holds_one_listen_connection_for_all_its_channels(
        api: Api, dsn: str) -> None:
    """API, dispatcher, push fan-out, tasks, app changes and the live tail all listen
    (they hear five channels) on one connection: each NOTIFY wakes one backend for it."""
    async with observer(dsn) as conn:
        async def one() -> bool:
            return len(await listen_backends(conn)) == 1
        await eventually(one, timeout_s=5)
        await asyncio.sleep(0.3)  # nobody opens another one later
        assert len(await listen_backends(conn)) == 1


async def test_a_caller_cancelled_while_it_joins_leaves_nothing_behind(dsn: str) -> None:
    a, b = Heard(), Heard()
    async with observer(dsn) as conn, listening(dsn, a, "test_join"):
        await until(lambda: a.connected == 1)
        for steps in range(5):  # cancelled at once, and after each step of its join
            async with listening(dsn, b, "test_join", "test_gone"):
                for _ in range(steps):
                    await asyncio.sleep(0)
        await conn.execute("SELECT pg_notify('test_gone', 'x')")
        await conn.execute("SELECT pg_notify('test_join', 'y')")
        await until(lambda: a.payloads == [("test_join", "y")])
        assert b.payloads == []
        assert len(await listen_backends(conn)) == 1


async def test_a_caller_that_joins_as_the_last_one_leaves_still_hears(dsn: str) -> None:
    a, b = Heard(), Heard()
    async with observer(dsn) as conn:
        first = asyncio.create_task(listen_forever(dsn, {"test_handover": a.callback},
                                                   on_connected=a.on_connected))
        await until(lambda: a.connected == 1)
        first.cancel()  # the connection is being given up...
        async with listening(dsn, b, "test_handover"):  # ...as another caller joins
            await asyncio.gather(first, return_exceptions=True)
            await until(lambda: b.connected >= 1)
            await conn.execute("SELECT pg_notify('test_handover', 'z')")
            await until(lambda: b.payloads == [("test_handover", "z")])

            async def one() -> bool:  # the connection given up is gone soon after
                return len(await listen_backends(conn)) == 1
            await eventually(one, timeout_s=5)
        assert a.payloads == []


async def test_a_caller_that_joins_during_a_ping_is_served(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection's ping and a joining caller's LISTEN take turns (asyncpg runs one
    operation at a time on a connection): the joiner neither fails nor waits for a
    reconnect that never comes."""
    monkeypatch.setattr(listening_module, "PING_S", 0.05)
    monkeypatch.setitem(QUERIES, "ping", "SELECT pg_sleep(0.3)")
    a, b = Heard(), Heard()
    async with observer(dsn) as conn, listening(dsn, a, "test_ping_a"):
        await until(lambda: a.connected == 1)
        await asyncio.sleep(0.1)  # a ping is in flight now
        async with listening(dsn, b, "test_ping_b"):
            await until(lambda: b.connected == 1)
            await conn.execute("SELECT pg_notify('test_ping_b', 'p')")
            await until(lambda: b.payloads == [("test_ping_b", "p")])
        assert a.lost == 0  # the connection was never given up
