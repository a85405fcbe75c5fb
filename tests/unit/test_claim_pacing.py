"""Claims under a steady trickle: wake-ups that come close together share one claim
(GATEWAY_CLAIM_INTERVAL_S), a backlog is claimed without pause, and every delivery still
goes (gateway/dispatcher.py CLAIM_INTERVAL_S)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from adapters.base import DeliveryJob, EndpointTarget, EventView, Outcome, Verdict
from gateway.dispatcher import Dispatcher
from gateway.retry import RetryPolicy
from gateway.store.memory_queue import InMemoryQueue
from gateway.store.queue import Claim, Rooms
from gateway_client.models import DeliveryStatus
from tests.support import eventually


class CountingQueue(InMemoryQueue):
    """The in-memory queue, counting claims and what each took."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[int] = []

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms | None = None) -> Claim:
        got = await super().claim(limit, lease_s, lease_id, *(() if rooms is None else (rooms,)))
        self.claims.append(len(got))
        return got


class Delivered:
    kind = "webhook"

    async def send(self, job: DeliveryJob) -> Outcome:
        return Outcome(Verdict.DELIVERED, status_code=200)

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def dispatcher(queue: CountingQueue, **options: Any) -> Dispatcher:
    """A dispatcher on ``queue`` whose deliveries all succeed at once; a poll interval
    (30 s) that would show in any wait for it."""
    settings: dict[str, Any] = {"poll_interval_s": 30, "lease_s": 30, **options}
    return Dispatcher(queue, {"webhook": Delivered()}, RetryPolicy((0.05,), jitter=0),
                      **settings)


def job(n: int) -> DeliveryJob:
    event = EventView(f"evt_{n}", "order.created", "{}", datetime.now(UTC))
    return DeliveryJob(f"dlv_{n:03d}", "app_1", "webhook", event,
                       endpoint=EndpointTarget("ep_1", "http://hook/", ("s",)))


async def trickle(claim_interval_s: float, events: int) -> CountingQueue:
    """``events`` deliveries added one at a time, each announced by a wake-up, as ingest
    commits announce theirs; the dispatcher's claims counted until all are delivered."""
    queue = CountingQueue()
    worker = dispatcher(queue, claim_interval_s=claim_interval_s)
    await worker.start()
    try:
        await eventually(_claimed_once(queue))  # the first, empty claim at start
        await asyncio.sleep(claim_interval_s * 1.2)  # long after it: claim at once
        for n in range(events):
            queue.add(job(n))
            worker.wake()
            await asyncio.sleep(0.002)  # the loop claims between wake-ups if it may

        async def delivered() -> bool:
            return all(e.status is DeliveryStatus.SUCCEEDED for e in queue.entries.values())
        await eventually(delivered, timeout_s=10)
    finally:
        await worker.stop(1)
    return queue


def _claimed_once(queue: CountingQueue) -> Any:
    async def check() -> bool:
        return bool(queue.claims)
    return check


async def test_wake_ups_close_together_share_one_claim() -> None:
    queue = await trickle(claim_interval_s=0.5, events=20)
    # The first wake-up after a quiet claims at once; the others (40 ms) fall within the
    # interval, and the next claim takes all they announced.
    taken = [n for n in queue.claims if n]
    assert taken[0] == 1 and sum(taken) == 20
    assert len(taken) <= 3


async def test_without_an_interval_every_wake_up_claims() -> None:
    queue = await trickle(claim_interval_s=0.0, events=20)
    taken = [n for n in queue.claims if n]
    assert sum(taken) == 20
    assert len(taken) >= 10


async def deliver_all(queue: CountingQueue, **options: Any) -> None:
    """A dispatcher whose claim interval (30 s unless told) would show in any claim it
    paced, until everything in ``queue`` is delivered."""
    worker = dispatcher(queue, **{"claim_interval_s": 30.0, "lease_s": 60, **options})
    await worker.start()
    try:
        async def delivered() -> bool:
            return all(e.status is DeliveryStatus.SUCCEEDED for e in queue.entries.values())
        await eventually(delivered, timeout_s=10)
    finally:
        await worker.stop(1)


async def test_a_backlog_is_claimed_without_pause() -> None:
    """A claim that took all it asked for is followed at once by the next: 50 due with a
    batch of 10 take 5 claims in far less than the interval."""
    queue = CountingQueue()
    for n in range(50):
        queue.add(job(n))
    await deliver_all(queue, batch=10)
    assert queue.claims[:5] == [10] * 5


class BooksAllItSees(CountingQueue):
    """Its first claim takes nothing and books three deliveries for an endpoint's rate
    limit, while other due work waits behind them (claim_due's window full of one
    rate-limited endpoint's deliveries); from then on, the in-memory queue."""

    def __init__(self) -> None:
        super().__init__()
        self.booked = False
        self.told_due = False

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms | None = None) -> Claim:
        if not self.booked:
            self.booked = True
            self.claims.append(0)
            return Claim([], held_back=3, waiting=0)
        return await super().claim(limit, lease_s, lease_id, rooms)

    async def next_due_at(self) -> datetime | None:
        if self.booked and not self.told_due:
            self.told_due = True
            return datetime.now(UTC)  # what waits behind the booked ones is due now
        return await super().next_due_at()


async def test_due_work_behind_deliveries_booked_for_a_rate_limit_is_claimed_at_once() -> None:
    """A claim that only booked deliveries for later leaves what is due behind them to the
    next claim, which goes at once: no wake-up is waited for, so no claim interval."""
    queue = BooksAllItSees()
    for n in range(5):
        queue.add(job(n))
    await deliver_all(queue)
    assert queue.claims[:2] == [0, 5]


class OthersFirst(CountingQueue):
    """Another claimer gets there first for the first ``empty`` claims here (all of them
    unless told): each takes nothing, and says ``waiting`` due deliveries wait beyond what
    it chose (0: another took what there was; more: another holds what this one chose).
    Then the in-memory queue."""

    def __init__(self, empty: int | None = None, waiting: int = 0) -> None:
        super().__init__()
        self.empty = empty
        self.waiting = waiting

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms | None = None) -> Claim:
        if self.empty is None or len(self.claims) < self.empty:
            self.claims.append(0)
            return Claim([], waiting=self.waiting)
        return await super().claim(limit, lease_s, lease_id, rooms)


async def claims_over_wake_ups(stretch: int) -> int:
    """Claims a dispatcher makes while woken every 2 ms for 0.6 s, its claims always
    empty, with an interval of 50 ms: about one an interval without the stretch."""
    queue = OthersFirst()
    worker = dispatcher(queue, claim_interval_s=0.05, empty_claim_stretch=stretch)
    await worker.start()
    try:
        await eventually(_claimed_once(queue))
        before = len(queue.claims)
        for _ in range(300):
            worker.wake()
            await asyncio.sleep(0.002)
        return len(queue.claims) - before
    finally:
        await worker.stop(1)


async def test_a_dispatcher_whose_woken_claims_find_nothing_claims_less_often() -> None:
    """Another dispatcher takes what each wake-up announces: after each empty claim the
    pause doubles, up to EMPTY_CLAIM_STRETCH intervals, instead of claiming again every
    interval for nothing."""
    paced = await claims_over_wake_ups(stretch=1)
    stretched = await claims_over_wake_ups(stretch=4)
    assert paced >= 6  # about 12: one an interval
    assert stretched * 2 <= paced, (stretched, paced)


async def test_a_claim_that_takes_something_ends_the_stretch() -> None:
    """After woken claims that found nothing (the stretch at its most), the first that
    takes something puts the pause back to one interval: a trickle announced every 2 ms
    for 0.6 s is then claimed about once an interval (50 ms), not once every four."""
    empty = 6
    queue = OthersFirst(empty=empty)
    worker = dispatcher(queue, claim_interval_s=0.05)
    await worker.start()
    try:
        for _ in range(100):  # the empty claims, each woken
            worker.wake()
            await asyncio.sleep(0.01)
            if len(queue.claims) >= empty:
                break
        assert len(queue.claims) >= empty
        for n in range(300):
            queue.add(job(n))
            worker.wake()
            await asyncio.sleep(0.002)
    finally:
        await worker.stop(1)
    taken = [n for n in queue.claims[empty:] if n]
    assert len(taken) >= 8, queue.claims  # about 12; stretched, about 3


async def test_an_idle_dispatcher_claims_again_soon_when_another_holds_the_backlog() -> None:
    """A claim that took nothing because another claimer locked what it chose, while due
    work waits beyond it, is followed by another within a few claim intervals: with
    nothing of its own in flight there is no room of its own to wait for (this dispatcher
    waited the poll interval, here 30 s, and a second dispatcher took 2 % of a drain)."""
    queue = OthersFirst(empty=3, waiting=5)  # another's claim holds the head of the five
    for n in range(5):
        queue.add(job(n))
    await deliver_all(queue, claim_interval_s=0.01, lease_s=30)
    assert queue.claims[:4] == [0, 0, 0, 5]


async def claims_while_held(stretch: int) -> int:
    """Claims an idle dispatcher makes in 0.5 s while another holds what it chooses, with
    an interval of 10 ms: about one an interval without the stretch."""
    queue = OthersFirst(waiting=500)  # another transaction holds the head rows for good
    worker = dispatcher(queue, claim_interval_s=0.01, empty_claim_stretch=stretch)
    await worker.start()
    try:
        await asyncio.sleep(0.5)
    finally:
        await worker.stop(1)
    return len(queue.claims)


async def test_an_idle_dispatchers_claims_stretch_while_another_holds_what_they_choose() -> None:
    """The claims of a dispatcher with nothing in flight, each finding what it chose held by
    another claimer, come less often while they keep finding nothing, as woken claims do:
    not one every interval for as long as the other holds the rows."""
    paced = await claims_while_held(stretch=1)
    stretched = await claims_while_held(stretch=4)
    assert paced >= 10  # about 40: one an interval
    assert stretched * 2 <= paced, (stretched, paced)
