"""Group commit: many concurrent callers, one transaction per batch.

A commit costs a round trip and an fsync whatever it holds, so ingest and the
dispatcher's result writes queue their rows here and a flusher writes whatever has
gathered while the previous flush was in flight. Under no load a batch is one row and
adds no wait; under load batches grow by themselves.

Where callers wait on their items (ingest's answers), commits are made of shares
(``min_share``): a flusher that finds another flusher free takes only its share of a
large queue and leaves the rest to that one, so two commits are in flight; and while one
commit is in flight, a second starts only for a share's worth, fewer items waiting for
the first to finish. Otherwise a burst of callers (every client's request at once) is
written in one batch, answered at once, and comes back at once: the process then handles
the whole burst, waits idle for its one commit, and so on in lock-step, about a third of
its time waiting (``bench/ingest_overhead.py``). Shared, the callers one commit answers
are handled while the other commit is in flight, and the process stays busy. A second
commit of a few items only costs the database a statement (several processes' trickles
of them made `gateway serve --workers 2` slower than one worker).

A batch shares one write, so one bad item must not fail the others (they are other
callers' requests, other tenants' too): a batch whose write fails is split in halves and
each half written on its own, down to the one item that fails, which alone gets the
error. Only a failure that would fail any write (``fails_together``: the database is
away) fails the whole batch at once. Writing the halves takes several round trips, so
with shares nothing waits for them: another flusher takes what comes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("gateway.batching")

#: Flushes a batch; returns one result (or the exception for that item) per item, in order.
FlushFn = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]


class GroupCommit(Generic[T, R]):
    def __init__(
        self, flush: FlushFn[T, R], *, max_batch: int = 500, max_flushers: int = 2,
        name: str = "batch", fails_together: tuple[type[BaseException], ...] = (),
        min_interval_s: float = 0.0, min_share: int | None = None,
    ) -> None:
        """``min_interval_s``: a batch is taken no sooner than this after the previous one
        was (0: at once). Where each write costs the database the same however little it
        holds and nobody waits on it (the dispatcher's results), a trickle of items then
        shares writes; where a caller waits on its item (ingest's answer), it stays 0.

        ``min_share``: what is queued is shared between the free flushers when each share
        holds at least this many items, and a commit starts beside one in flight only
        for at least this many (None: a flusher takes all it may, whenever one is
        free). Below that, the statements' own cost outweighs the overlap: where the
        process has no idle time to fill, smaller statements only cost the database more
        a row."""
        self._flush = flush
        self._min_share = min_share
        #: Flushers in a write, and of those, how many are writing a failed batch's
        #: halves (several round trips: nothing waits on them, see _waits_for_commit).
        self._writing = 0
        self._splitting = 0
        self._min_interval_s = min_interval_s
        self._taken_at = -min_interval_s
        self._fails_together = fails_together
        self._max_batch = max_batch
        self._max_flushers = max_flushers
        self._name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future is its result once its batch is written (or raises).
        Not a coroutine: awaiting the future alone saves a frame on the hottest path."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_flusher()
        return future

    def _start_flusher(self) -> None:
        # A second flusher starts while the first is busy, so a commit is always being
        # prepared while another is in flight (with shares: once a share waits).
        if len(self._flushers) < self._max_flushers and not self._waits_for_commit():
            task = asyncio.create_task(self._drain(), name=f"{self._name}-flusher")
            self._flushers.add(task)
            task.add_done_callback(self._done)

    def _waits_for_commit(self) -> bool:
        """Fewer than a share wait, beside a commit in flight whose flusher takes them
        when it is done (one statement's round trip: not a failed batch's halves)."""
        return (self._min_share is not None and self._writing > self._splitting
                and len(self._queue) < self._min_share)

    def _done(self, flusher: asyncio.Task[None]) -> None:
        if flusher in self._flushers:  # cancelled before it ever ran: no finally ran
            self._forget(flusher)

    def _forget(self, flusher: asyncio.Task[None]) -> None:
        """A flusher is done. If it ended abnormally (cancelled) with items left that
        waited for it, another takes them."""
        self._flushers.discard(flusher)
        if self._queue and not self._closed:
            self._start_flusher()

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let callers of this loop tick join the first batch
            while self._queue:
                if self._min_interval_s:
                    loop = asyncio.get_running_loop()
                    pause = self._taken_at + self._min_interval_s - loop.time()
                    if pause > 0:
                        await asyncio.sleep(pause)
                        continue  # another flusher may have taken the queue meanwhile
                    self._taken_at = loop.time()
                take = self._max_batch
                if self._min_share is not None:
                    if self._waits_for_commit():
                        break
                    free = self._max_flushers - self._writing
                    if free > 1 and len(self._queue) >= free * self._min_share:
                        # This flusher's share; a free one takes the rest at once.
                        take = min(take, -(-len(self._queue) // free))
                batch = self._queue[:take]
                del self._queue[:take]
                if self._queue:
                    self._start_flusher()
                self._writing += 1
                try:
                    await self._write(batch)
                finally:
                    self._writing -= 1
        finally:
            # In the same step as the last look at the queue, not in a done callback: the
            # callers this flusher answered last run before such a callback, and what they
            # submit then must find room for a flusher of its own.
            task = asyncio.current_task()
            assert task is not None
            self._forget(task)

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]], *,
                     halves: bool = False) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError as exc:
            _settle(batch, exc)
            raise
        except BaseException as exc:
            if len(batch) == 1 or isinstance(exc, self._fails_together):
                _settle(batch, exc)
                return
            log.warning("%s: a batch of %d failed (%r); writing its halves apart",
                        self._name, len(batch), exc)
            half = len(batch) // 2
            outermost = not halves
            if outermost:  # several round trips: what waits for this flusher need not
                self._splitting += 1
                if self._queue:
                    self._start_flusher()
            try:
                await self._write(batch[:half], halves=True)
                await self._write(batch[half:], halves=True)
            finally:
                if outermost:
                    self._splitting -= 1
            return
        if len(results) != len(batch):
            # Which answer is whose is unknown: each item gets an error, none waits for
            # ever, none gets another's answer.
            log.error("%s: a flush answered %d results for a batch of %d items",
                      self._name, len(results), len(batch))
            _settle(batch, RuntimeError(
                f"{self._name}: the write answered {len(results)} results for "
                f"{len(batch)} items"))
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Finish every queued item, then refuse new ones."""
        self._closed = True
        while self._flushers:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._flushers, return_exceptions=True)


def _settle(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
