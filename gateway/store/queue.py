"""The delivery queue, as the dispatcher sees it: a small interface with two
implementations, :class:`~gateway.store.postgres_queue.PostgresQueue` (the real one) and
:class:`~gateway.store.memory_queue.InMemoryQueue` (a faithful fake for tests). The
dispatcher never knows which one it drives; the same tests run against both.

A claim takes due deliveries with a lease: until the lease runs out no other claim takes
them, and if the claimer dies they come back by themselves (at least once). Every
attempt is then settled through :meth:`Queue.complete` (the delivery is over: delivered,
failed for good, or its target gone) or :meth:`Queue.reschedule` (try again later);
either logs the attempt. A delivery moves on only while the caller's lease still holds
it. Claimed work that was never attempted goes back with :meth:`Queue.release`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from adapters.base import DeliveryJob
from gateway_client.models import AttemptOutcome, DeliveryStatus


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery: what to send, and the queue's bookkeeping."""

    delivery: DeliveryJob
    lease_id: uuid.UUID
    #: Position in the retry schedule (attempts since creation or the last manual retry).
    schedule_pos: int
    #: For a push: the device is still live (a pruned one is not pushed again).
    device_active: bool = True


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt's outcome and the delivery's next state."""

    delivery_id: str
    lease_id: uuid.UUID
    status: DeliveryStatus
    #: When to try again (``status`` pending), else None.
    next_attempt_at: datetime | None
    schedule_pos: int
    attempted_at: datetime
    duration_ms: int
    outcome: AttemptOutcome
    status_code: int | None
    response_snippet: str | None
    error: str | None
    #: An endpoint to disable because of this attempt (it answered 410 Gone).
    disable_endpoint_id: str | None = None
    disable_reason: str | None = None
    #: A device to prune because of this attempt (the provider says its token is dead),
    #: unless it was registered again after ``prune_since``.
    prune_device_id: str | None = None
    prune_reason: str | None = None
    prune_since: datetime | None = None


class Queue(Protocol):
    """What the dispatcher needs of the deliveries table."""

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    skip_kinds: Sequence[str] = ()) -> list[Job]:
        """Up to ``limit`` due deliveries no one holds, leased for ``lease_s`` seconds,
        oldest due first; none of the ``skip_kinds``, and none whose endpoint is disabled
        or deleted."""
        ...

    async def complete(self, results: Sequence[AttemptResult]) -> None:
        """Log each attempt; its delivery is over (succeeded or failed), its endpoint
        disabled or its device pruned when the result says so."""
        ...

    async def reschedule(self, results: Sequence[AttemptResult]) -> None:
        """Log each attempt; its delivery is due again at ``next_attempt_at``."""
        ...

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        """Hand back unattempted claims at once: they are due now."""
        ...

    async def next_due_at(self) -> datetime | None:
        """When the next waiting delivery falls due (None: nothing waits)."""
        ...


class Fanout(Protocol):
    """Expands events' push targets into one delivery per device."""

    async def expand(self, batch: int) -> int | None:
        """One batch of one event's devices; how many it covered, None when none waits."""
        ...
