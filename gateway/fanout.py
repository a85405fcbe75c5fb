"""Push fan-out: expands each event's push targets (users, topics) into one delivery per
live device, in batches, apart from ingest, so a topic of any size never holds up a 202.

Each batch commits with its cursor (:meth:`~gateway.store.queue.Fanout.expand`), so a
crash resumes where it stopped; any number of processes may run one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.dispatcher import WakeSource
from gateway.errors import DatabaseUnavailable
from gateway.store.queue import Fanout

log = logging.getLogger("gateway.fanout")

#: Devices expanded into deliveries per transaction.
FANOUT_BATCH = 1000


class FanoutRunner:
    def __init__(self, fanout: Fanout, *, wake_source: WakeSource | None = None,
                 poll_interval_s: float = 1.0, batch: int = FANOUT_BATCH) -> None:
        self.fanout = fanout
        self.wake_source = wake_source
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="fanout")]
        if self.wake_source is not None:
            self._tasks.append(asyncio.create_task(self.wake_source(self._wake.set),
                                                   name="fanout-wakeups"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            self._wake.clear()
            try:
                expanded = await self.fanout.expand(self.batch)
            except DatabaseUnavailable as exc:
                log.warning("fan-out paused: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval_s)
                continue
            except Exception:
                log.exception("fan-out step failed")
                await asyncio.sleep(self.poll_interval_s)
                continue
            backoff = 0.05
            if expanded is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
