"""One policy decides what happens after every attempt, from the adapter's outcome alone."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from adapters.base import Outcome, Verdict, record
from gateway_client.models import DeliveryStatus


@record
class Decision:
    status: DeliveryStatus
    next_attempt_at: datetime | None
    schedule_pos: int


@dataclass
class RetryPolicy:
    """A delay schedule (default like Svix's) with jitter.

    The first attempt is immediate; ``schedule[n]`` is the wait before retry ``n + 1``.
    A Retry-After from the receiver is honoured when it asks for more than the schedule,
    up to ``retry_after_max_s``; it never shortens the schedule.
    """

    schedule: tuple[float, ...]
    jitter: float = 0.2
    retry_after_max_s: float = 3600.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, schedule_pos: int, retry_after_s: float | None = None) -> float:
        base = self.schedule[schedule_pos]
        delay = base * (1 + self.rng.uniform(-self.jitter, self.jitter)) if base else 0.0
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay

    def decide(self, schedule_pos: int, outcome: Outcome, now: datetime) -> Decision:
        if outcome.verdict is Verdict.DELIVERED:
            return Decision(DeliveryStatus.SUCCEEDED, None, schedule_pos)
        if outcome.verdict is Verdict.RETRY and schedule_pos < len(self.schedule):
            delay = self.delay_s(schedule_pos, outcome.retry_after_s)
            return Decision(DeliveryStatus.PENDING, now + timedelta(seconds=delay),
                            schedule_pos + 1)
        return Decision(DeliveryStatus.FAILED, None, schedule_pos)
