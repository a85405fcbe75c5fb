"""Push fan-out: expands each event's push targets (users, topics) into one delivery per
live device, in batches, apart from ingest, so a topic of any size never holds up a 202.

Each batch commits with its cursor (:meth:`~gateway.store.queue.Fanout.expand`), so a
crash resumes where it stopped; any number of processes may run one.

In a process that also dispatches, a batch's deliveries are made leased to that
dispatcher and handed to it (:meth:`~gateway.store.queue.Fanout.expand_leased`,
:meth:`~gateway.dispatcher.Dispatcher.hand_over`): no claim has to find and take each
one, and no dispatcher is woken for them. The fan-out then expands only as fast as its
dispatcher takes them (at most its ``handoff_capacity`` wait there); a dispatcher with no
room for a poll interval gets a batch made due for any claimer instead, so a fan-out never
waits on one process. If the process dies, the leases bring its deliveries back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from gateway.dispatcher import Dispatcher, WakeSource
from gateway.errors import DatabaseUnavailable
from gateway.store.queue import Fanout

log = logging.getLogger("gateway.fanout")

#: Devices expanded into deliveries per transaction.
FANOUT_BATCH = 1000


class FanoutRunner:
    def __init__(self, fanout: Fanout, *, wake_source: WakeSource | None = None,
                 poll_interval_s: float = 1.0, batch: int = FANOUT_BATCH,
                 dispatcher: Dispatcher | None = None) -> None:
        self.fanout = fanout
        #: This process's dispatcher, which takes the batches it has room for.
        self.dispatcher = dispatcher
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
                expanded = await self._step()
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

    async def _step(self) -> int | None:
        """One batch: handed over leased to this process's dispatcher as far as it has
        room, else made due for any claimer. How many devices it covered, None when no
        fan-out waits."""
        dispatcher = self.dispatcher
        if dispatcher is not None:
            room = await dispatcher.room_to_hand_over(self.batch, self.poll_interval_s)
            if room:
                lease_id = uuid.uuid4()
                leased_at = asyncio.get_running_loop().time()
                try:
                    expanded = await self.fanout.expand_leased(room, dispatcher.lease_s,
                                                               lease_id)
                except BaseException:
                    # It may have committed (an answer lost, or a stop cancelling it):
                    # its deliveries go back before the next claim, or at the stop.
                    dispatcher.lease_lost(lease_id)
                    raise
                if expanded is None:
                    return None
                dispatcher.hand_over(expanded.jobs, leased_at)
                return expanded.devices
        return await self.fanout.expand(self.batch)
