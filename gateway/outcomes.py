"""Live tail: delivery outcomes as they happen, for ``GET /v1/deliveries/stream``.

The queue NOTIFYs ``gateway_outcomes`` in the transaction that logs the
attempts, so an outcome reaches every API process whichever process dispatched it. Each
API process holds one LISTEN connection (reconnecting, like the dispatcher's) and fans
each outcome out to its subscribers through bounded per-subscriber queues: a slow
consumer loses outcomes and is told how many, it never holds up the listener or anyone
else. The tail is a live view, not a log: what happens while nobody listens (or while the
LISTEN connection is down) is only in ``GET /v1/deliveries``.

Only apps someone watches are told: each API process keeps a row per app it streams in
``live_tails`` (its ``keeper``), renewed every ``KEEP_EVERY_S`` while it has subscribers,
and a stream opens once its app's row is written. Building a notification for every
settled attempt cost PostgreSQL about a quarter of settling it, mostly for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import DatabaseUnavailable, RateLimited
from gateway.store.database import OUTCOMES_CHANNEL
from gateway.store.listening import listen_forever

log = logging.getLogger("gateway.stream")

#: Outcomes held for one subscriber that is not keeping up; beyond it they are dropped.
QUEUE_SIZE = 1000
#: A comment line this often keeps proxies from closing an idle stream.
HEARTBEAT_S = 15.0
#: A process says which apps it streams this often while it streams any; what it said
#: lasts KEEP_FOR_S (so a process that stops without a word is forgotten by then).
KEEP_EVERY_S = 20.0
KEEP_FOR_S = 60.0
#: After a failed attempt to say so, the next one comes this much later.
KEEP_RETRY_S = 1.0

#: Says, for the process, which apps it streams now, good for so many seconds
#: (``Store.keep_live_tails``).
Keeper = Callable[[Sequence[str], float], Awaitable[None]]

Outcome = dict[str, Any]


def type_matches(pattern: str, event_type: str) -> bool:
    """The endpoints' rule (``gateway_type_matches``): exact, ``prefix.*`` or ``*``."""
    if pattern in ("*", event_type):
        return True
    return pattern.endswith(".*") and len(event_type) > len(pattern) - 1 \
        and event_type.startswith(pattern[:-1])


@dataclass(eq=False)
class Subscription:
    """One SSE client: its app, its filters and the outcomes waiting for it."""

    app_id: str
    endpoint_id: str | None = None
    event_type: str | None = None
    queue_size: int = QUEUE_SIZE
    #: Dropped since the client was last told, and in all.
    dropped: int = 0
    dropped_total: int = 0
    closed: bool = False
    queue: asyncio.Queue[Outcome | None] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.queue_size)

    def matches(self, outcome: Outcome) -> bool:
        if self.endpoint_id is not None and outcome.get("endpoint_id") != self.endpoint_id:
            return False
        return self.event_type is None or type_matches(self.event_type,
                                                       str(outcome.get("event_type")))

    def offer(self, outcome: Outcome) -> bool:
        """Queue it without waiting; a full queue drops it and counts."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(outcome)
        except asyncio.QueueFull:
            self.dropped += 1
            self.dropped_total += 1
            return False
        return True

    def close(self) -> None:
        """End the stream: the handler finds ``None`` next, even behind a full queue."""
        if self.closed:
            return
        self.closed = True
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class OutcomeStream:
    """One LISTEN connection per process, fanned out to this process's subscribers."""

    def __init__(self, dsn: str, *, queue_size: int | None = None,
                 heartbeat_s: float | None = None, max_per_app: int = 10,
                 keeper: Keeper | None = None, keep_every_s: float = KEEP_EVERY_S,
                 keep_for_s: float = KEEP_FOR_S) -> None:
        self.dsn = dsn
        #: None: every app's outcomes reach this process (nothing to say).
        self.keeper = keeper
        self.keep_every_s = keep_every_s
        self.keep_for_s = keep_for_s
        self.max_per_app = max_per_app
        self.queue_size = queue_size if queue_size is not None else QUEUE_SIZE
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else HEARTBEAT_S
        self.listening = asyncio.Event()
        #: Outcomes dropped for slow subscribers since start (all subscribers).
        self.dropped_total = 0
        self._subscribers: dict[str, set[Subscription]] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        #: The apps the last word said, and when it was said (loop time); the apps a
        #: word being said now says (None: none is); a word is wanted (they changed).
        self._kept: frozenset[str] = frozenset()
        self._kept_at = -math.inf
        self._saying: frozenset[str] | None = None
        self._keep_wanted = asyncio.Event()
        self._kept_changed = asyncio.Condition()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="outcome-stream-listen")]
        if self.keeper is not None:
            self._tasks.append(asyncio.create_task(self._keep(), name="outcome-stream-keep"))

    async def stop(self) -> None:
        self._stopping = True
        self.close_subscribers()
        async with self._kept_changed:
            self._kept_changed.notify_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.keeper is not None and self._kept:
            # Forget our rows now rather than when they run out.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.keeper((), self.keep_for_s)

    def _said(self, app_id: str) -> bool:
        """``app_id``'s row is written and stays: the last word said it, has not run
        out, and no word being said leaves it out."""
        fresh = asyncio.get_running_loop().time() - self._kept_at < self.keep_for_s
        return (app_id in self._kept and fresh
                and (self._saying is None or app_id in self._saying))

    async def watched(self, app_id: str) -> None:
        """Return once outcomes of ``app_id`` reach this process: its row is written
        (at once without a keeper)."""
        if self.keeper is None or self._said(app_id):
            return
        self._keep_wanted.set()
        async with self._kept_changed:
            await self._kept_changed.wait_for(lambda: self._said(app_id) or self._stopping)

    async def _keep(self) -> None:
        """Say which apps this process streams whenever they change, and again before
        the last word runs out."""
        assert self.keeper is not None
        while True:
            self._keep_wanted.clear()
            apps = frozenset(self._subscribers)
            wait = self.keep_every_s
            if apps or self._kept:
                said_at = asyncio.get_running_loop().time()
                self._saying = apps
                try:
                    await self.keeper(sorted(apps), self.keep_for_s)
                except DatabaseUnavailable as exc:  # the next word says it all
                    log.warning("cannot say which apps this process streams live: %s", exc)
                    wait = min(wait, KEEP_RETRY_S)
                except Exception:
                    log.exception("cannot say which apps this process streams live")
                    wait = min(wait, KEEP_RETRY_S)
                else:
                    async with self._kept_changed:
                        self._kept, self._kept_at = apps, said_at
                        self._kept_changed.notify_all()
                finally:
                    self._saying = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._keep_wanted.wait()

    def close_subscribers(self) -> None:
        for subs in self._subscribers.values():
            for sub in subs:
                sub.close()

    def end_app(self, app_id: str) -> None:
        """End the streams of an app that was deleted."""
        for sub in self._subscribers.get(app_id, ()):
            sub.close()

    @contextlib.contextmanager
    def subscribe(self, app_id: str, *, endpoint_id: str | None = None,
                  event_type: str | None = None) -> Iterator[Subscription]:
        if len(self._subscribers.get(app_id, ())) >= self.max_per_app:
            raise RateLimited(f"This app has {self.max_per_app} delivery streams open here, "
                              "the most one process serves; close one first.",
                              retry_after_s=5)
        sub = Subscription(app_id, endpoint_id, event_type, self.queue_size)
        if self._stopping:
            sub.close()
        if app_id not in self._subscribers:
            self._keep_wanted.set()
        self._subscribers.setdefault(app_id, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subscribers.get(app_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[app_id]
                    self._keep_wanted.set()

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def publish(self, outcomes: list[Outcome]) -> None:
        """Hand each outcome to the subscribers of its app whose filters take it."""
        for outcome in outcomes:
            for sub in self._subscribers.get(str(outcome.get("app_id")), ()):
                if sub.matches(outcome) and not sub.offer(outcome) and not sub.closed:
                    self.dropped_total += 1

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not self._subscribers:
            return
        try:
            outcomes = json.loads(str(payload))
        except ValueError:
            log.warning("ignoring a malformed %s notification", OUTCOMES_CHANNEL)
            return
        if isinstance(outcomes, list):
            self.publish([o for o in outcomes if isinstance(o, dict)])

    async def _listen(self) -> None:
        """Hold the LISTEN connection; reconnect after the database returns."""
        await listen_forever(self.dsn, {OUTCOMES_CHANNEL: self._on_notify},
                             on_connected=self.listening.set, on_lost=self.listening.clear)
