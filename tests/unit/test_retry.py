from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from adapters.base import Outcome, Verdict
from gateway.retry import RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SVIX = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def test_delivered_outcome_succeeds() -> None:
    d = RetryPolicy(SVIX).decide(0, Outcome(Verdict.DELIVERED), NOW)
    assert (d.status, d.next_attempt_at) == ("succeeded", None)


def test_retryable_outcome_waits_the_scheduled_delay_within_jitter() -> None:
    policy = RetryPolicy(SVIX, jitter=0.2, rng=random.Random(1))
    for pos, base in enumerate(SVIX):
        d = policy.decide(pos, Outcome(Verdict.RETRY), NOW)
        assert d.status == "pending" and d.schedule_pos == pos + 1
        assert d.next_attempt_at is not None
        wait = (d.next_attempt_at - NOW).total_seconds()
        assert base * 0.8 <= wait <= base * 1.2


def test_jitter_spreads_retries_apart() -> None:
    policy = RetryPolicy(SVIX, jitter=0.2, rng=random.Random(7))
    waits = {policy.delay_s(1) for _ in range(20)}
    assert len(waits) > 10


def test_schedule_exhausted_fails_the_delivery() -> None:
    d = RetryPolicy((1.0, 2.0)).decide(2, Outcome(Verdict.RETRY), NOW)
    assert (d.status, d.next_attempt_at) == ("failed", None)


@pytest.mark.parametrize("verdict", [Verdict.FAILED, Verdict.GONE])
def test_permanent_outcomes_fail_without_retry(verdict: Verdict) -> None:
    d = RetryPolicy(SVIX).decide(0, Outcome(verdict), NOW)
    assert d.status == "failed"


def test_retry_after_longer_than_schedule_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy((5.0,), jitter=0, retry_after_max_s=120)
    assert policy.decide(0, Outcome(Verdict.RETRY, retry_after_s=60), NOW).next_attempt_at == (
        NOW + timedelta(seconds=60))
    assert policy.decide(0, Outcome(Verdict.RETRY, retry_after_s=10**6), NOW).next_attempt_at == (
        NOW + timedelta(seconds=120))


def test_retry_after_shorter_than_schedule_never_shortens_it() -> None:
    policy = RetryPolicy((30.0,), jitter=0)
    d = policy.decide(0, Outcome(Verdict.RETRY, retry_after_s=1), NOW)
    assert d.next_attempt_at == NOW + timedelta(seconds=30)
