"""Attempt results on their way to the queue: each attempt is logged once, whatever fails
on the way (gateway/dispatcher.py ``_write`` and ``_settle``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from gateway.dispatcher import Dispatcher
from gateway.errors import DatabaseUnavailable
from gateway.retry import RetryPolicy
from gateway.store.memory_queue import InMemoryQueue
from gateway.store.queue import AttemptResult, Job, Settlement
from gateway_client.models import AttemptOutcome, DeliveryStatus
from tests.unit.test_claim_pacing import Delivered, job


class ReschedulingFailsOnce(InMemoryQueue):
    """The in-memory queue whose first rescheduling fails as PostgreSQL's does when it
    rolls a transaction back (a deadlock): nothing of it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.reschedules: list[list[str]] = []

    async def reschedule(self, results: Sequence[AttemptResult]) -> Settlement:
        self.reschedules.append([r.delivery_id for r in results])
        if len(self.reschedules) == 1:
            raise DatabaseUnavailable("rolled back to end a deadlock")
        return await super().reschedule(results)


def attempt(claimed: Job, status: DeliveryStatus, outcome: AttemptOutcome) -> AttemptResult:
    now = datetime.now(UTC)
    return AttemptResult(
        delivery_id=claimed.delivery.delivery_id, app_id=claimed.delivery.app_id,
        lease_id=claimed.lease_id, status=status,
        next_attempt_at=now + timedelta(minutes=1) if status is DeliveryStatus.PENDING
        else None,
        schedule_pos=claimed.schedule_pos + 1, attempted_at=now, duration_ms=1,
        outcome=outcome, status_code=200 if outcome is AttemptOutcome.DELIVERED else 503,
        response_snippet=None, error=None, endpoint_id="ep_1")


async def test_a_failed_rescheduling_after_a_committed_completion_logs_no_attempt_twice(
        ) -> None:
    queue = ReschedulingFailsOnce()
    queue.add(job(1))
    queue.add(job(2))
    delivered, retried = await queue.claim(2, 30, uuid.uuid4())
    dispatcher = Dispatcher(queue, {"webhook": Delivered()}, RetryPolicy((60.0,), jitter=0))
    # Both in one batch: the completion commits, then the rescheduling fails.
    await asyncio.gather(
        dispatcher._write(attempt(delivered, DeliveryStatus.SUCCEEDED,
                                  AttemptOutcome.DELIVERED)),
        dispatcher._write(attempt(retried, DeliveryStatus.PENDING, AttemptOutcome.RETRY)))
    assert queue.reschedules == [["dlv_002"], ["dlv_002"]]  # the failed one again, alone
    assert [len(queue.entries[d].attempts) for d in ("dlv_001", "dlv_002")] == [1, 1]
    assert queue.entries["dlv_001"].status is DeliveryStatus.SUCCEEDED
    assert queue.entries["dlv_002"].attempt_count == 1
