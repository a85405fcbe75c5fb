"""Deliveries a fan-out or an ingest commit hands its own dispatcher, made leased
(Dispatcher.hand_over): they go within the target's and the app's rooms, apps in turn,
each once, after any claimable work that waits for the same room, and none is kept past
half its lease or through a stop."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from adapters.base import (
    DeliveryJob,
    DeviceTarget,
    EndpointTarget,
    EventView,
    Outcome,
    Verdict,
)
from gateway.dispatcher import Dispatcher, _Competing
from gateway.errors import DatabaseUnavailable
from gateway.retry import RetryPolicy
from gateway.store.memory_queue import InMemoryQueue
from gateway.store.queue import UNLIMITED, AttemptResult, Claim, Job, Rooms, Settlement
from gateway_client.models import DeliveryStatus
from tests.support import eventually
from tests.unit.test_claim_pacing import CountingQueue

LEASE_S = 30.0


class Provider:
    """A push provider that records each push and holds it until let go (``gate``)."""

    kind = "fcm"

    def __init__(self, *, held: bool = False) -> None:
        self.sent: list[str] = []
        self.in_flight = 0
        self.peak = 0
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()

    async def send(self, job: DeliveryJob) -> Outcome:
        self.sent.append(job.delivery_id)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return Outcome(Verdict.DELIVERED, status_code=200)

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def push(n: int, app_id: str = "app_a") -> DeliveryJob:
    event = EventView(f"evt_{app_id}", "order.created", "{}", datetime.now(UTC))
    return DeliveryJob(f"dlv_{app_id}_{n:03d}", app_id, "fcm", event,
                       device=DeviceTarget(f"dev_{n}", "android", f"token-{n}"),
                       credentials={"project_id": "p"})


def leased(queue: InMemoryQueue, count: int, app_id: str = "app_a") -> list[Job]:
    """``count`` pushes made leased to one lease, as a leased fan-out batch makes them."""
    lease_id = uuid.uuid4()
    return [queue.add_leased(push(n, app_id), LEASE_S, lease_id) for n in range(count)]


def dispatcher(queue: InMemoryQueue, adapter: Provider | Hook, **options: Any) -> Dispatcher:
    settings: dict[str, Any] = {"poll_interval_s": 30, "lease_s": LEASE_S,
                                "push_concurrency": 4, "app_concurrency": 100, **options}
    return Dispatcher(queue, {adapter.kind: adapter}, RetryPolicy((0.05,), jitter=0),
                      **settings)


def all_succeeded(queue: InMemoryQueue) -> Callable[[], Awaitable[bool]]:
    """For :func:`eventually`: every delivery in ``queue`` succeeded."""
    async def check() -> bool:
        return all(e.status is DeliveryStatus.SUCCEEDED for e in queue.entries.values())
    return check


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_handed_over_pushes_go_once_each_within_the_providers_room() -> None:
    queue = InMemoryQueue()
    provider = Provider()
    worker = dispatcher(queue, provider)
    await worker.start()
    try:
        worker.hand_over(leased(queue, 40), now())

        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)
    assert sorted(provider.sent) == sorted(queue.entries)
    assert len(provider.sent) == 40
    assert provider.peak <= 4


async def sent_behind_a_backlog(queue: InMemoryQueue, worker: Dispatcher,
                                adapter: Provider | Hook, backlog: list[Job],
                                other: DeliveryJob) -> list[str]:
    """Hand ``backlog`` over to ``worker`` with ``adapter`` held; once two are in flight,
    make ``other`` due and let its claim find no room; then let everything go. Answers
    what was sent before the adapter was let go."""
    await worker.start()
    try:
        worker.hand_over(backlog, now())
        await eventually(lambda: asyncio.sleep(0, len(adapter.sent) == 2))
        queue.add(other)
        worker.wake()
        await asyncio.sleep(0.05)  # its claim finds no room: it waits
        before = list(adapter.sent)
        adapter.gate.set()

        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)
    return before


async def test_a_claimable_push_waiting_for_room_goes_before_the_handed_over_rest() -> None:
    """Handed-over pushes fill the provider's room only after a claim had its turn: a
    due push of another app that found the room full is sent as soon as it frees, not
    after all that was handed over."""
    queue = InMemoryQueue()
    provider = Provider(held=True)
    other = push(0, app_id="app_b")
    before = await sent_behind_a_backlog(
        queue, dispatcher(queue, provider, push_concurrency=2, claim_interval_s=0), provider,
        leased(queue, 30), other)
    assert other.delivery_id not in before
    assert len(provider.sent) == 31 and len(set(provider.sent)) == 31
    assert provider.sent.index(other.delivery_id) < 6, provider.sent


async def test_apps_handed_over_together_take_turns() -> None:
    queue = InMemoryQueue()
    provider = Provider(held=True)
    worker = dispatcher(queue, provider, push_concurrency=4)
    await worker.start()
    try:
        worker.hand_over(leased(queue, 20, "app_a") + leased(queue, 20, "app_b"), now())
        await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 4))
        assert collections.Counter(s.split("_")[2] for s in provider.sent) == {"a": 2, "b": 2}
        provider.gate.set()
    finally:
        await worker.stop(5)


async def test_pushes_that_waited_too_long_to_start_go_back_and_are_claimed_once() -> None:
    queue = InMemoryQueue()
    provider = Provider()
    worker = dispatcher(queue, provider)
    await worker.start()
    try:
        jobs = leased(queue, 5)
        worker.hand_over(jobs, now() - LEASE_S)  # leased long ago: too late to start
        worker.wake()

        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)
    assert sorted(provider.sent) == sorted(j.delivery.delivery_id for j in jobs)
    # Sent under a claim's lease, not the handed-over one.
    assert all(e.attempts[0].lease_id != jobs[0].lease_id for e in queue.entries.values())


async def test_stopping_hands_back_what_never_started() -> None:
    queue = InMemoryQueue()
    provider = Provider(held=True)
    worker = dispatcher(queue, provider, push_concurrency=2)
    await worker.start()
    jobs = leased(queue, 10)
    worker.hand_over(jobs, now())
    await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 2))
    stopping = asyncio.create_task(worker.stop(0.05))
    await stopping
    unsent = [e for e in queue.entries.values() if e.job.delivery_id not in provider.sent]
    assert len(unsent) == 8
    # Due now for any claimer, not held until their lease lapses.
    assert all(e.lease_id is None and e.due_at <= datetime.now(UTC) for e in unsent)
    assert not provider.gate.is_set()


async def test_a_deleted_apps_handed_over_pushes_are_handed_back_not_sent() -> None:
    """Handed back, a deleted app's deliveries are for its cleanup (claims skip deleted
    apps), not held under a lease until it lapses."""
    queue = InMemoryQueue()
    provider = Provider(held=True)
    worker = dispatcher(queue, provider, push_concurrency=1)
    await worker.start()
    try:
        worker.hand_over(leased(queue, 5, "app_a") + leased(queue, 5, "app_b"), now())
        await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 1))
        await worker.forget_app("app_b")
        unsent_b = [e for e in queue.entries.values()
                    if e.job.app_id == "app_b" and e.job.delivery_id not in provider.sent]

        async def handed_back() -> bool:
            return all(e.lease_id is None for e in unsent_b)
        await eventually(handed_back)
        assert len(unsent_b) >= 4
        assert worker._ready_count == 5 - (len(provider.sent))
    finally:
        await worker.stop(0.05)


async def test_the_fan_out_waits_for_room_to_hand_over_and_is_told_what_fits() -> None:
    queue = InMemoryQueue()
    provider = Provider(held=True)
    worker = dispatcher(queue, provider, push_concurrency=2, handoff_capacity=10)
    await worker.start()
    try:
        assert await worker.room_to_hand_over(8, 0.01) == 8
        worker.hand_over(leased(queue, 8), now())  # 2 start, 6 wait
        assert await worker.room_to_hand_over(8, 0.05) == 4  # waited, then what fits
        provider.gate.set()
        assert await worker.room_to_hand_over(8, 5) == 8
    finally:
        await worker.stop(1)
    stopped = await worker.room_to_hand_over(8, 5)
    assert stopped == 0


async def test_nothing_is_handed_over_when_no_wait_would_leave_an_attempt_its_lease() -> None:
    """A lease too short for a push attempt to wait at all (handoff_wait_s 0): the
    fan-out is told there is no room, and makes its deliveries due for any claimer."""
    worker = dispatcher(InMemoryQueue(), Provider(), handoff_wait_s=0)
    assert await worker.room_to_hand_over(8, 0.01) == 0


class Hook:
    """A webhook receiver that holds every request until let go."""

    kind = "webhook"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, job: DeliveryJob) -> Outcome:
        self.sent.append(job.delivery_id)
        await self.gate.wait()
        return Outcome(Verdict.DELIVERED, status_code=200)

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_another_apps_endpoint_at_its_room_does_not_hold_back_handed_over_pushes(
) -> None:
    """Due webhooks waiting for their endpoint's room compete for nothing a push takes:
    handed-over pushes start as push room frees, not one claim at a time."""
    queue = CountingQueue()
    provider, hook = Provider(), Hook()
    event = EventView("evt_c", "t", "{}", datetime.now(UTC))
    endpoint = EndpointTarget("ep_1", "http://hook/", ("s",))
    for n in range(3):
        queue.add(DeliveryJob(f"dlv_c_{n}", "app_c", "webhook", event, endpoint=endpoint))
    worker = Dispatcher(queue, {"fcm": provider, "webhook": hook},
                        RetryPolicy((0.05,), jitter=0), poll_interval_s=30, lease_s=LEASE_S,
                        endpoint_concurrency=1, push_concurrency=4)
    await worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, len(hook.sent) == 1))
        before = len(queue.claims)
        worker.hand_over(leased(queue, 200), now())
        await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 200))
        assert len(queue.claims) - before <= 5, len(queue.claims) - before
    finally:
        hook.gate.set()
        await worker.stop(1)


class SlowRelease(InMemoryQueue):
    """Releasing leases takes a while (a database under load)."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[uuid.UUID] = []
        self.releasing = asyncio.Event()

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        ids = list(lease_ids)
        self.releasing.set()
        await asyncio.sleep(0.05)
        self.released += ids


async def test_a_lease_lost_while_others_are_released_is_released_too() -> None:
    queue = SlowRelease()
    worker = dispatcher(queue, Provider(), poll_interval_s=0.02)
    first, second = uuid.uuid4(), uuid.uuid4()
    worker.lease_lost(first)
    await worker.start()
    try:
        await asyncio.wait_for(queue.releasing.wait(), 10)
        worker.lease_lost(second)  # while the loop is releasing the first
        await eventually(lambda: asyncio.sleep(0, second in queue.released))
    finally:
        await worker.stop(1)
    assert queue.released.count(first) == 1 and queue.released.count(second) == 1


async def test_once_claiming_stopped_nothing_is_claimed_but_what_is_handed_over_is_sent(
) -> None:
    """The process is stopping (its server waits for the requests in flight): due work is
    left to the next process, and so are fan-out batches (no room to hand them over: they
    are made due), while what its last ingest commits hand over goes."""
    queue = InMemoryQueue()
    provider = Provider()
    worker = dispatcher(queue, provider, poll_interval_s=0.05, handoff_capacity=4)
    await worker.start()
    try:
        worker.hand_over(leased(queue, 4, "app_c"), now())  # no room: a fan-out waits
        fan_out = asyncio.create_task(worker.room_to_hand_over(8, 30))
        await asyncio.sleep(0)
        worker.stop_claiming()
        assert await asyncio.wait_for(fan_out, 5) == 0
        assert await worker.room_to_hand_over(8, 30) == 0
        queue.add(push(1))
        handed = leased(queue, 2, "app_b")
        worker.hand_over(handed, now())

        await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 6))
        await asyncio.sleep(0.2)  # a claim, were there one, would have come
    finally:
        await worker.stop(1)
    assert "dlv_app_a_001" not in provider.sent
    assert set(j.delivery.delivery_id for j in handed) <= set(provider.sent)
    assert worker.restarts == 0


async def test_when_claiming_stops_with_the_claim_loop_dead_handed_over_deliveries_go(
) -> None:
    """A loop that died (a bug; it is not restarted once claiming stopped) after a claim
    that took all it asked for, which left every room to the next claim: that claim
    never comes, and what the last commits hand over takes the room instead."""
    queue = InMemoryQueue()
    provider = Provider()
    worker = dispatcher(queue, provider)
    await worker.start()
    try:
        assert worker._loop_task is not None
        worker._loop_task.cancel()
        await asyncio.gather(worker._loop_task, return_exceptions=True)
        worker._claims_waiting = _Competing(everywhere=True)
        handed = leased(queue, 2)
        worker.hand_over(handed, now())
        assert provider.sent == []

        worker.stop_claiming()
        await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 2))
    finally:
        await worker.stop(1)


class Gone(InMemoryQueue):
    """A database that is no longer there: releasing fails with whatever the driver says."""

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        raise RuntimeError('database "gw_x" does not exist')


async def test_a_stop_goes_on_when_lost_leases_cannot_be_handed_back() -> None:
    worker = dispatcher(Gone(), Provider())
    await worker.start()
    worker.lease_lost(uuid.uuid4())
    worker.stop_claiming()  # the loop must not hand it back first
    await worker.stop(0.1)  # no exception: the lease lapses by itself


class SlowWrites(InMemoryQueue):
    """Results are written only while ``open`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def complete(self, results: Sequence[AttemptResult]) -> Settlement:
        await self.open.wait()
        return await super().complete(results)


async def test_handed_over_pushes_go_on_as_soon_as_results_waiting_to_be_written_are() -> None:
    """Results being written count against the dispatcher's room (twice its concurrency):
    when that room is full, a written result is what frees it, and the handed-over
    deliveries still waiting start then, not at the next poll (30 s here)."""
    queue = SlowWrites()
    provider = Provider()
    worker = dispatcher(queue, provider, concurrency=2)
    await worker.start()
    try:
        worker.hand_over(leased(queue, 12), now())
        # Two sent, two more sent while the first two wait to be written: room full.
        await eventually(lambda: asyncio.sleep(0, len(provider.sent) == 4))
        await asyncio.sleep(0.05)
        assert len(provider.sent) == 4
        queue.open.set()

        await eventually(all_succeeded(queue), timeout_s=5)
    finally:
        await worker.stop(1)
    assert sorted(provider.sent) == sorted(queue.entries)


# --- webhooks an ingest commit hands over ------------------------------------------------

def webhook(n: int, app_id: str, endpoint_id: str) -> DeliveryJob:
    event = EventView(f"evt_{app_id}_{n:03d}", "order.created", "{}", datetime.now(UTC))
    return DeliveryJob(f"dlv_{app_id}_{n:03d}", app_id, "webhook", event,
                       endpoint=EndpointTarget(endpoint_id, "http://x/", ("s",)))


async def test_a_due_delivery_goes_before_a_handed_over_backlog_that_fills_the_overall_room(
) -> None:
    """The overall bound, not only a target's: a due delivery of another app waiting for
    any free slot takes the next one, not the 29th."""
    queue = InMemoryQueue()
    hook = Hook()
    lease = uuid.uuid4()
    other = webhook(0, "app_b", "ep_b")
    await sent_behind_a_backlog(
        queue, dispatcher(queue, hook, claim_interval_s=0, concurrency=2), hook,
        [queue.add_leased(webhook(n, "app_a", f"ep_a{n % 5}"), LEASE_S, lease)
         for n in range(30)], other)
    assert len(hook.sent) == 31 and len(set(hook.sent)) == 31
    assert hook.sent.index(other.delivery_id) < 5, hook.sent


async def test_apps_take_turns_with_handed_over_webhooks_whatever_their_endpoints() -> None:
    """Turns go to apps, then to each app's endpoints, and carry over from one freed slot
    to the next: an app with ten endpoints does not go ten times for another's once, and
    the first app handed over does not go first every time."""
    queue = InMemoryQueue()
    hook = Hook()
    hook.gate.set()
    worker = dispatcher(queue, hook, claim_interval_s=0, concurrency=2, app_concurrency=100)
    await worker.start()
    try:
        lease = uuid.uuid4()
        jobs = [queue.add_leased(webhook(n, "app_a", f"ep_a{n % 10}"), LEASE_S, lease)
                for n in range(40)]
        jobs += [queue.add_leased(webhook(n, "app_b", "ep_b"), LEASE_S, lease)
                 for n in range(20)]
        jobs += [queue.add_leased(webhook(n, "app_c", "ep_c"), LEASE_S, lease)
                 for n in range(20)]
        worker.hand_over(jobs, now())
        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)
    first = collections.Counter(s.split("_")[2] for s in hook.sent[:30])
    assert all(first[app] >= 8 for app in "abc"), "".join(s.split("_")[2] for s in hook.sent)


async def test_an_ingest_lease_leaves_out_endpoints_and_apps_without_room_here() -> None:
    queue = InMemoryQueue()
    hook = Hook()
    worker = dispatcher(queue, hook, claim_interval_s=0, concurrency=4,
                        endpoint_concurrency=2, app_concurrency=3)
    await worker.start()
    try:
        offer = worker.handoff()
        assert offer is not None
        assert (offer.full_endpoints, offer.full_apps) == ([], [])
        lease = uuid.uuid4()
        # ep_1 full (2 sending), app_a full (2 sending + 1 waiting for ep_1's room).
        worker.hand_over([queue.add_leased(webhook(n, "app_a", "ep_1"), LEASE_S, lease)
                          for n in range(3)], now())
        await eventually(lambda: asyncio.sleep(0, len(hook.sent) == 2))
        offer = worker.handoff()
        assert offer is not None
        assert (offer.full_endpoints, offer.full_apps) == (["ep_1"], ["app_a"])
        worker.hand_over([queue.add_leased(webhook(n, "app_b", f"ep_b{n}"), LEASE_S, lease)
                          for n in range(2)], now())
        await eventually(lambda: asyncio.sleep(0, len(hook.sent) == 4))
        assert worker.handoff() is None  # no room left here at all
        hook.gate.set()
        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)


async def test_an_app_at_its_room_does_not_lose_its_turn_to_the_apps_handed_over_first(
) -> None:
    """Slots free one at a time: each goes to the next app in turn, so the third app
    handed over does not wait for the first two to finish."""
    queue = InMemoryQueue()
    hook = Hook()
    hook.gate.set()
    worker = dispatcher(queue, hook, claim_interval_s=0, concurrency=4, app_concurrency=2)
    await worker.start()
    try:
        lease = uuid.uuid4()
        worker.hand_over([queue.add_leased(webhook(n, app, f"ep_{app}"), LEASE_S, lease)
                          for app in ("app_a", "app_b", "app_c") for n in range(20)], now())
        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)
    first = collections.Counter(s.split("_")[2] for s in hook.sent[:15])
    assert all(first[app] >= 4 for app in "abc"), "".join(s.split("_")[2] for s in hook.sent)


def handed_back_of(queue: InMemoryQueue, jobs: Sequence[Job]
                   ) -> Callable[[], Awaitable[bool]]:
    """For :func:`eventually`: each of ``jobs`` went back to the queue (and may have been
    claimed again since, under a new lease)."""
    async def check() -> bool:
        return all(queue.entries[j.delivery.delivery_id].lease_id != j.lease_id
                   for j in jobs)
    return check


async def one_sent_others_waiting(count: int, queue: InMemoryQueue | None = None
                                  ) -> tuple[InMemoryQueue, Hook, Dispatcher, list[Job]]:
    """A started dispatcher with ``count`` webhooks to ``ep_1`` handed over: one sent
    and held, the rest waiting for the endpoint's one slot."""
    queue = InMemoryQueue() if queue is None else queue
    hook = Hook()
    worker = dispatcher(queue, hook, claim_interval_s=0, endpoint_concurrency=1)
    await worker.start()
    lease = uuid.uuid4()
    jobs = [queue.add_leased(webhook(n, "app_a", "ep_1"), LEASE_S, lease)
            for n in range(count)]
    worker.hand_over(jobs, now())
    await eventually(lambda: asyncio.sleep(0, len(hook.sent) == 1))
    return queue, hook, worker, jobs


async def test_a_changed_endpoints_unstarted_webhooks_go_back_and_so_do_later_ones_leased_before(
) -> None:
    """forget_endpoints (an endpoint changed, heard on gateway_apps): what waits for it
    goes back to the queue, and so does what a commit leased before the change was heard
    and hands over after, which may carry the endpoint as it was; a lease taken after
    the change is heard is kept, as are other endpoints' deliveries."""
    queue, hook, worker, waiting = await one_sent_others_waiting(3)
    try:
        leased_before = now()
        worker.forget_endpoints(["ep_1"])
        late = [queue.add_leased(webhook(n, "app_b", endpoint), LEASE_S, uuid.uuid4())
                for n, endpoint in ((10, "ep_1"), (11, "ep_2"))]
        worker.hand_over(late, leased_before)
        fresh = queue.add_leased(webhook(12, "app_c", "ep_3"), LEASE_S, uuid.uuid4())
        worker.hand_over([fresh], now())
        back = [waiting[1], waiting[2], late[0]]

        async def handed_back() -> bool:
            return all(queue.entries[j.delivery.delivery_id].lease_id is None for j in back)
        await eventually(handed_back)
        await eventually(lambda: asyncio.sleep(0, len(hook.sent) == 3))
        assert hook.sent[1:] == [late[1].delivery.delivery_id, fresh.delivery.delivery_id]
    finally:
        hook.gate.set()
        await worker.stop(1)


async def test_while_endpoint_changes_go_unheard_ingest_leases_nothing_and_then_hands_back(
) -> None:
    """Hearing lost (the LISTEN connection down): a commit is leased nothing, for a change
    then would go unheard; heard again, what waits for an endpoint and what was leased
    before goes back to the queue, any endpoint having possibly changed meanwhile."""
    queue, hook, worker, jobs = await one_sent_others_waiting(3)
    try:
        assert worker.handoff() is not None
        leased_before = now()
        worker.hearing(False)
        assert worker.handoff() is None
        await eventually(handed_back_of(queue, jobs[1:]))  # waiting: back at once
        unheard = queue.add_leased(webhook(8, "app_b", "ep_3"), LEASE_S, uuid.uuid4())
        worker.hand_over([unheard], now())
        await eventually(handed_back_of(queue, [unheard]))
        worker.hearing(True)
        assert worker.handoff() is not None
        late = queue.add_leased(webhook(9, "app_b", "ep_2"), LEASE_S, uuid.uuid4())
        worker.hand_over([late], leased_before)
        await eventually(handed_back_of(queue, [jobs[1], jobs[2], late]))
    finally:
        hook.gate.set()
        await worker.stop(1)


class Outage(InMemoryQueue):
    """A database that is away while ``down``: claims and hand-backs fail as the store
    says they do then (DatabaseUnavailable), and each failed hand-back is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed_hand_backs = 0

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms = UNLIMITED) -> Claim:
        if self.down:
            raise DatabaseUnavailable("the database is away")
        return await super().claim(limit, lease_s, lease_id, rooms)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        if self.down:
            self.failed_hand_backs += 1
            raise DatabaseUnavailable("the database is away")
        await super().release_jobs(jobs)


async def test_webhooks_a_hand_back_failed_to_return_go_back_once_the_database_is_back(
) -> None:
    """The database goes away, and with it the LISTEN connection: the waiting webhooks'
    hand-back fails. They go back to the queue when the database is back (before the
    next claim), not when their leases lapse (30 s here), and are sent once each."""
    queue, hook, worker, jobs = await one_sent_others_waiting(3, Outage())
    assert isinstance(queue, Outage)
    try:
        queue.down = True
        worker.hearing(False)
        await eventually(lambda: asyncio.sleep(0, queue.failed_hand_backs >= 1))
        worker.hearing(True)
        queue.down = False

        await eventually(handed_back_of(queue, jobs[1:]), timeout_s=5)
        hook.gate.set()
        await eventually(all_succeeded(queue), timeout_s=5)
    finally:
        hook.gate.set()
        await worker.stop(1)
    assert sorted(hook.sent) == sorted(j.delivery.delivery_id for j in jobs)


class Broken(InMemoryQueue):
    """Hand-backs fail with an error that is no outage (a bug, a driver's complaint)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        self.failed += 1
        raise RuntimeError("invalid input syntax for type uuid")


async def test_a_hand_back_failing_for_another_reason_than_an_outage_holds_up_no_claim(
) -> None:
    """Tried again, it would fail before every claim: it is left to its lease."""
    queue = Broken()
    hook = Hook()
    hook.gate.set()
    worker = dispatcher(queue, hook, poll_interval_s=0.05)
    await worker.start()
    try:
        late = queue.add_leased(webhook(1, "app_a", "ep_1"), LEASE_S, uuid.uuid4())
        worker.hand_over([late], now() - worker.handoff_wait_s - 1)
        await eventually(lambda: asyncio.sleep(0, queue.failed >= 1))
        await asyncio.sleep(0.2)  # claims go on meanwhile
        queue.add(webhook(2, "app_a", "ep_1"))

        await eventually(lambda: asyncio.sleep(0, hook.sent == ["dlv_app_a_002"]),
                         timeout_s=5)
    finally:
        await worker.stop(1)
    assert worker.restarts == 0
    assert queue.entries["dlv_app_a_001"].lease_id == late.lease_id  # left to its lease


async def test_a_hand_over_that_can_no_longer_start_in_time_goes_straight_back() -> None:
    """Not kept waiting behind deliveries handed over in time (only the head of a
    target's queue is checked for lateness as room frees)."""
    queue, hook, worker, _ = await one_sent_others_waiting(2)
    try:
        job = queue.add_leased(webhook(7, "app_a", "ep_1"), LEASE_S, uuid.uuid4())
        worker.hand_over([job], now() - worker.handoff_wait_s - 1)
        await eventually(handed_back_of(queue, [job]))
    finally:
        hook.gate.set()
        await worker.stop(1)


async def test_a_late_hand_over_queued_behind_a_later_one_goes_back_when_it_comes_up() -> None:
    """Two commits' hand-overs may arrive in either order: one leased earlier waits
    behind one leased later. Past its start-by it goes back to the queue when it reaches
    the head, even when a look for late ones ran while the later one was the head: it
    is claimed again, not sent under the lease it waited out."""
    queue = InMemoryQueue()
    provider = Provider(held=True)
    worker = dispatcher(queue, provider, push_concurrency=1, handoff_wait_s=0.2)
    await worker.start()
    try:
        first, later, earlier = (queue.add_leased(push(n), LEASE_S, uuid.uuid4())
                                 for n in range(3))
        worker.hand_over([first], now())  # takes the provider's only slot
        await eventually(lambda: _sent(provider, 1))
        leased_at = now()
        worker.hand_over([later], leased_at)  # start by leased_at + 0.2
        worker.hand_over([earlier], leased_at - 0.1)  # start by leased_at + 0.1, behind it
        await asyncio.sleep(0.12)  # the earlier one is late, the later one not yet
        worker.hand_over([], now())  # a look for late ones, the later one at the head
        provider.gate.set()  # the first finishes, the later one starts
        await eventually(all_succeeded(queue), timeout_s=10)
    finally:
        await worker.stop(1)
    (attempt,) = queue.entries[earlier.delivery.delivery_id].attempts
    assert attempt.lease_id != earlier.lease_id


async def _sent(provider: Provider, count: int) -> bool:
    return len(provider.sent) >= count
