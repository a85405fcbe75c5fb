"""LISTEN: one connection per process for every channel it hears.

PostgreSQL wakes every backend that LISTENs in a database on each NOTIFY there, whatever
channels it listens to, and each woken backend runs a transaction to read the
notification queue: about 10-20 µs of the database's CPU per listening connection per
notifying commit (bench/notify_cost.py; bench/README.md, "LISTEN connections, claims
under a trickle, and events per commit"). Ingest notifies
on every group commit and the dispatcher on every batch of results, so a process that held
one connection per channel (deliveries, push fan-out, tasks, app changes, the live tail:
five) made every such commit cost the database five wake-ups per process. Here every
:func:`listen_forever` of a process (per event loop and DSN) shares one connection: one
wake-up per process, however many channels it hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.store.database import QUERIES

log = logging.getLogger("gateway.db")

#: What a notification is handed to: (connection, sender's pid, channel, payload).
Callback = Callable[[Any, int, str, object], None]
#: How often a quiet connection is checked (a silently dead socket is noticed).
PING_S = 5.0
#: Longest a LISTEN, UNLISTEN or ping may take before the connection is given up.
JOIN_TIMEOUT_S = 10.0
#: The connection's application_name, so that pg_stat_activity tells it apart.
APPLICATION_NAME = "gateway-listen"


@dataclass(eq=False)
class _Subscriber:
    callbacks: dict[str, Callback]
    on_connected: Callable[[], None]
    on_lost: Callable[[], None]
    #: The connection its callbacks were last put on.
    joined: object = None


class _SharedListener:
    """The one LISTEN connection of a process (an event loop) for one DSN, held while
    anyone listens, reconnecting with backoff after the database goes away."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.subscribers: list[_Subscriber] = []
        self.conn: asyncpg.Connection[Any] | None = None
        self.task: asyncio.Task[None] | None = None
        #: Held while the connection's listeners change (join, leave, reconnect).
        self.lock = asyncio.Lock()

    async def add(self, sub: _Subscriber) -> None:
        self.subscribers.append(sub)
        if self.task is None or self.task.done():
            # A new connection joins every caller, this one included.
            self.task = asyncio.create_task(self._hold(), name="listen")
            return
        # Shielded, as is the leaving: a caller cancelled while its LISTEN is in flight
        # does not cut the query short (asyncpg would cancel it on the server, and its
        # older versions leave such a connection unusable and open).
        await asyncio.shield(self._join_live(sub))

    async def _join_live(self, sub: _Subscriber) -> None:
        async with self.lock:
            conn = self.conn
            if conn is None or sub not in self.subscribers or sub.joined is conn:
                return  # the next connection joins it; it left; or it is joined
            try:
                async with asyncio.timeout(JOIN_TIMEOUT_S):
                    await self._join(sub)
            except Exception as exc:
                # Whatever failed, the reconnect joins it: make sure there is one.
                log.warning("LISTEN %s failed (%s); reconnecting",
                            ",".join(sub.callbacks), exc)
                with contextlib.suppress(Exception):
                    conn.terminate()

    async def remove(self, sub: _Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(sub)
        try:
            await asyncio.shield(self._unlisten(sub))
        finally:
            # Whatever happened there, the last caller to leave ends the connection.
            if not self.subscribers and self.task is not None:
                # Forgotten first: a caller joining meanwhile starts a connection of its
                # own.
                task, self.task = self.task, None
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _unlisten(self, sub: _Subscriber) -> None:
        """``sub``'s callbacks off the connection (UNLISTEN where nobody else hears the
        channel; those never added are passed over), once a join in progress is over; a
        database that does not answer is not waited on."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2), self.lock:
                conn = self.conn
                if not self.subscribers:
                    self.conn = None  # given up: nobody joins it while it closes
                if conn is not None and not conn.is_closed():
                    for channel, callback in sub.callbacks.items():
                        await conn.remove_listener(channel, callback)

    async def _join(self, sub: _Subscriber) -> None:
        """Put ``sub``'s callbacks on the connection (LISTEN where it is the first), then
        tell it it is connected: whatever it missed meanwhile, it looks for now."""
        assert self.conn is not None
        for channel, callback in sub.callbacks.items():
            await self.conn.add_listener(channel, callback)
        sub.joined = self.conn
        _tell(sub.on_connected)

    async def _hold(self) -> None:
        delay = 0.1
        while self.subscribers:
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                async with self.lock, asyncio.timeout(JOIN_TIMEOUT_S):
                    self.conn = conn
                    for sub in list(self.subscribers):
                        if sub in self.subscribers:  # not gone while another joined
                            await self._join(sub)
                delay = 0.1
                while self.subscribers and not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(PING_S):
                            await lost.wait()
                    if not lost.is_set():
                        # Under the lock: one operation at a time on a connection, and a
                        # LISTEN of a joining caller is one.
                        async with self.lock, asyncio.timeout(JOIN_TIMEOUT_S):
                            await conn.execute(QUERIES["ping"])  # a silently dead socket
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                channels = sorted({c for s in self.subscribers for c in s.callbacks})
                log.warning("LISTEN %s connection lost (%s); reconnecting",
                            ",".join(channels), exc)
            finally:
                if self.conn is conn:
                    self.conn = None
                for sub in list(self.subscribers):
                    _tell(sub.on_lost)
                if conn is not None:
                    try:
                        await asyncio.wait_for(conn.close(), 2)
                    except asyncio.CancelledError:
                        conn.terminate()
                        raise
                    except Exception:  # a connection left mid-operation: cut it
                        conn.terminate()
            if self.subscribers:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


#: Each event loop's shared listeners, by DSN.
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _SharedListener]] = (
    weakref.WeakKeyDictionary())


async def listen_forever(
    dsn: str,
    channels: Mapping[str, Callback],
    *,
    on_connected: Callable[[], None] = lambda: None,
    on_lost: Callable[[], None] = lambda: None,
) -> None:
    """Hear ``channels`` until cancelled, on the process's one LISTEN connection for
    ``dsn``. ``on_connected`` runs after each (re)connect, so the caller can catch up on
    what it may have missed while away; ``on_lost`` when the connection goes (and when
    this ends)."""
    # A closure per channel and caller: the connection keeps a set of callbacks per
    # channel, and two callers handing over one function must both be called.
    sub = _Subscriber({channel: _own(callback) for channel, callback in channels.items()},
                      on_connected, on_lost)
    listener = _shared.setdefault(asyncio.get_running_loop(), {}).setdefault(
        dsn, _SharedListener(dsn))
    try:
        await listener.add(sub)
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        try:
            await listener.remove(sub)
        finally:
            _tell(on_lost)


def _tell(hook: Callable[[], None]) -> None:
    """Run a caller's on_connected or on_lost: its failure is its own, not the
    connection's nor the other callers'."""
    try:
        hook()
    except Exception:
        log.exception("a LISTEN caller's hook failed")


def _own(callback: Callback) -> Callback:
    def heard(conn: Any, pid: int, channel: str, payload: object) -> None:
        callback(conn, pid, channel, payload)
    return heard
