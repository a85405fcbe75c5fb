"""The live tail's pure parts: NOTIFY chunking, filters, bounded fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway import outcomes
from gateway.api.deliveries import sse
from gateway.errors import DatabaseUnavailable
from gateway.outcomes import OutcomeStream, Subscription, type_matches
from gateway.store.postgres_queue import MAX_NOTIFY_BYTES, outcome_notifications
from gateway.store.queue import AttemptResult
from gateway_client.models import AttemptOutcome, DeliveryStatus
from tests.support import eventually


def record(n: int) -> AttemptResult:
    return AttemptResult(
        delivery_id=f"dlv_{n:026d}", app_id="app_1", lease_id=uuid.uuid4(),
        status=DeliveryStatus.SUCCEEDED,
        next_attempt_at=None, schedule_pos=0, attempted_at=datetime(2030, 1, 2, tzinfo=UTC),
        duration_ms=5, outcome=AttemptOutcome.DELIVERED, status_code=200,
        response_snippet="secret!", error=None)


def details(n: int) -> dict[str, Any]:
    return {"event_id": f"evt_{n:026d}", "event_type": "t" * 128,
            "endpoint_id": f"ep_{n:026d}", "kind": "webhook", "app_id": "app_1",
            "attempt_count": 1}


def test_outcomes_are_chunked_under_the_notify_limit_in_order_without_snippets() -> None:
    records = [record(n) for n in range(500)]
    found = {r.delivery_id: details(n) for n, r in enumerate(records)}
    chunks = outcome_notifications(records, found)
    assert len(chunks) > 1
    assert all(len(c.encode()) <= MAX_NOTIFY_BYTES < 8000 for c in chunks)
    items = [item for c in chunks for item in json.loads(c)]
    assert [i["delivery_id"] for i in items] == [r.delivery_id for r in records]
    assert items[0]["at"] == "2030-01-02T00:00:00Z" and items[0]["attempt"] == 1
    assert "secret!" not in "".join(chunks)


def test_a_delivery_gone_from_the_database_is_left_out() -> None:
    assert outcome_notifications([record(1)], {}) == []


@pytest.mark.parametrize(("pattern", "event_type", "expected"), [
    ("*", "a.b", True), ("order.created", "order.created", True),
    ("order.*", "order.created", True), ("order.*", "order.a.b", True),
    ("order.*", "order", False), ("order.*", "order.", False), ("order.*", "orders.x", False),
    ("order.created", "order.created.x", False),
])
def test_event_type_filters_match_like_endpoint_subscriptions(
    pattern: str, event_type: str, expected: bool
) -> None:
    assert type_matches(pattern, event_type) is expected


async def test_a_full_subscriber_drops_and_counts_while_others_still_get_everything() -> None:
    stream = OutcomeStream("postgresql://unused", queue_size=2)
    with stream.subscribe("app_1") as slow:
        stream.queue_size = 100
        with stream.subscribe("app_1") as fast, stream.subscribe("app_2") as other:
            stream.publish([{"app_id": "app_1", "delivery_id": str(n)} for n in range(5)])
            assert (slow.queue.qsize(), slow.dropped, stream.dropped_total) == (2, 3, 3)
            assert fast.queue.qsize() == 5 and other.queue.empty()
        slow.close()
        assert [slow.queue.get_nowait() for _ in range(2)][-1] is None
    assert stream.subscriber_count() == 0


def test_subscriptions_filter_by_endpoint_and_type() -> None:
    sub = Subscription("app_1", endpoint_id="ep_1", event_type="order.*")
    assert sub.matches({"endpoint_id": "ep_1", "event_type": "order.paid"})
    assert not sub.matches({"endpoint_id": "ep_2", "event_type": "order.paid"})
    assert not sub.matches({"endpoint_id": "ep_1", "event_type": "user.created"})


def test_sse_frames_name_the_event_and_its_id() -> None:
    frame = sse("delivery", {"a": 1}, "dlv_1:2")
    assert frame == b'event: delivery\nid: dlv_1:2\ndata: {"a":1}\n\n'


class Keeper:
    """Records what a stream says it streams; fails the first ``failures`` times; holds
    each word until ``go`` is set, when ``held``."""

    def __init__(self, failures: int = 0, held: bool = False) -> None:
        self.said: list[list[str]] = []
        self.ttls: list[float] = []
        self.failures = failures
        self.go = asyncio.Event()
        if not held:
            self.go.set()
        self.saying = asyncio.Event()

    async def __call__(self, apps: Sequence[str], ttl_s: float) -> None:
        self.ttls.append(ttl_s)
        self.saying.set()
        await self.go.wait()
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("the database is away")
        self.said.append(list(apps))


async def quiet_listen(self: OutcomeStream) -> None:
    """No LISTEN connection: these tests are about what the stream says."""
    await asyncio.get_running_loop().create_future()


@contextlib.asynccontextmanager
async def saying_to(keeper: Keeper, monkeypatch: pytest.MonkeyPatch,
                    keep_every_s: float) -> AsyncIterator[OutcomeStream]:
    """A started stream that says what it streams to ``keeper``; stopped on the way out
    (whatever the keeper was holding let go first)."""
    monkeypatch.setattr(OutcomeStream, "_listen", quiet_listen)
    stream = OutcomeStream("postgresql://unused", keeper=keeper, keep_every_s=keep_every_s)
    await stream.start()
    try:
        yield stream
    finally:
        keeper.go.set()
        await stream.stop()


async def test_a_stream_opens_once_its_process_said_it_streams_the_app(
        monkeypatch: pytest.MonkeyPatch) -> None:
    keeper = Keeper()
    async with saying_to(keeper, monkeypatch, keep_every_s=60) as stream:
        assert keeper.said == []  # nothing streamed, nothing said
        with stream.subscribe("app_1"), stream.subscribe("app_2"):
            await asyncio.wait_for(stream.watched("app_2"), 5)
            assert keeper.said[-1] == ["app_1", "app_2"]
            assert set(keeper.ttls) == {outcomes.KEEP_FOR_S}
            with stream.subscribe("app_1"):
                await asyncio.wait_for(stream.watched("app_1"), 5)
        await eventually(lambda: asyncio.sleep(0, keeper.said[-1] == []))


async def test_a_stream_reopened_while_its_app_is_being_unsaid_waits_for_the_next_word(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's last stream closed and the word leaving it out is on its way: a stream
    of it opening now waits for the word after, which says it again."""
    keeper = Keeper()
    async with saying_to(keeper, monkeypatch, keep_every_s=60) as stream:
        with stream.subscribe("app_1"):
            await asyncio.wait_for(stream.watched("app_1"), 5)
        keeper.go.clear()
        keeper.saying.clear()
        await asyncio.wait_for(keeper.saying.wait(), 5)  # saying [] now, held
        with stream.subscribe("app_1"):
            opened = asyncio.ensure_future(stream.watched("app_1"))
            await asyncio.sleep(0.05)
            assert not opened.done()
            keeper.go.set()
            await asyncio.wait_for(opened, 5)
            assert keeper.said[-2:] == [[], ["app_1"]]


async def test_a_word_that_failed_is_said_again_soon_and_a_stream_waits_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "KEEP_RETRY_S", 0.01)
    keeper = Keeper(failures=2)
    # Renewed only every minute: the stream opens this soon only because a failed word is
    # said again after KEEP_RETRY_S.
    async with saying_to(keeper, monkeypatch, keep_every_s=60) as stream:
        with stream.subscribe("app_1"):
            await asyncio.wait_for(stream.watched("app_1"), 5)
            assert keeper.said == [["app_1"]] and keeper.failures == 0
    # Stopping forgets what it said rather than leaving it to run out.
    assert keeper.said[-1] == []


async def test_a_word_is_said_again_before_it_runs_out_and_trusted_only_until_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    keeper = Keeper()
    async with saying_to(keeper, monkeypatch, keep_every_s=0.05) as stream:
        with stream.subscribe("app_1"):
            await eventually(lambda: asyncio.sleep(0, len(keeper.said) >= 3))
            assert all(said == ["app_1"] for said in keeper.said)
            # A word older than its time counts for nothing, even while the next one
            # cannot be said.
            keeper.go.clear()
            stream.keep_for_s = 0.01
            await asyncio.sleep(0.05)
            opened = asyncio.ensure_future(stream.watched("app_1"))
            await asyncio.sleep(0.05)
            assert not opened.done()
            stream.keep_for_s = outcomes.KEEP_FOR_S
            keeper.go.set()
            await asyncio.wait_for(opened, 5)


async def test_without_a_keeper_a_stream_opens_at_once() -> None:
    stream = OutcomeStream("postgresql://unused")
    with stream.subscribe("app_1"):
        await asyncio.wait_for(stream.watched("app_1"), 1)
