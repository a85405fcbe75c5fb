"""The send rate arithmetic (gateway/sendrate.py): whatever the claims' timing, an
endpoint's sends never number more than its limit in any window of 1 s + the margin."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from gateway.sendrate import LAG_TOLERANCE_S, SendRate

START = datetime(2030, 1, 1, tzinfo=UTC)
LONG_AGO = datetime.min.replace(tzinfo=UTC)
#: The clock's resolution: times are microseconds, in PostgreSQL as here.
RESOLUTION_S = 1e-6


def grants(rate: SendRate, claims: list[tuple[datetime, int]]) -> list[datetime]:
    """The send times granted to claims (time, how many it wants), in order."""
    tat = LONG_AGO
    granted: list[datetime] = []
    for at, wanted in claims:
        n = min(wanted, rate.budget(tat, at))
        granted += [at] * n
        tat = rate.spend(tat, at, n)
    return granted


def fullest_window(times: list[datetime], limit: int, window_s: float) -> float:
    """The shortest span holding limit + 1 sends (infinite when none does)."""
    spans = [(times[i + limit] - times[i]).total_seconds() for i in range(len(times) - limit)]
    return min(spans, default=float("inf"))


@pytest.mark.parametrize("limit", [1, 2, 7, 10, 19, 20, 39, 40, 100, 1000])
@pytest.mark.parametrize("margin_s", [0.0, 0.1, 0.3])
def test_no_window_of_a_second_plus_the_margin_holds_more_than_the_limit(
        limit: int, margin_s: float) -> None:
    rate = SendRate(limit, 1.0 + margin_s)
    rng = random.Random(limit * 1000 + int(margin_s * 10))
    for _ in range(20):
        at, claims = START, []
        for _ in range(400):
            # Bursts of claims at one instant, quick ones, and quiet spells.
            at += timedelta(microseconds=rng.choice([0, 0, 1, 50, 900, 20_000, 400_000,
                                                     3_000_000]))
            claims.append((at, rng.choice([1, 1, 5, limit, 10 * limit])))
        sent = grants(rate, claims)
        assert sent, "something is always granted after a quiet start"
        assert fullest_window(sent, limit, rate.window_s) >= rate.window_s - RESOLUTION_S


@pytest.mark.parametrize(("limit", "burst", "share"), [
    (1, 1, 0.869), (10, 1, 0.869), (39, 1, 0.869), (40, 2, 0.847), (100, 5, 0.834),
    (10_000, 500, 0.826)])
def test_a_busy_endpoint_gets_a_little_under_its_limit(limit: int, burst: int,
                                                        share: float) -> None:
    rate = SendRate(limit, 1.1)
    assert rate.burst == burst
    assert rate.tolerance_s == pytest.approx((burst - 1) * rate.interval_s + LAG_TOLERANCE_S)
    # Claims every 10 ms for 100 s, each wanting more than it can get: how many sends a
    # second get out.
    claims = [(START + timedelta(milliseconds=10 * i), 10 * limit) for i in range(10_000)]
    per_second = len(grants(rate, claims)) / 100
    assert per_second <= limit
    assert per_second / limit == pytest.approx(share, abs=0.01)


def test_after_a_quiet_spell_a_burst_goes_at_once_then_sends_are_spaced() -> None:
    rate = SendRate(100, 1.1)
    # The burst, and what the lateness a booked send may have allows besides.
    burst = rate.burst + math.floor(LAG_TOLERANCE_S / rate.interval_s)
    assert rate.budget(LONG_AGO, START) == burst == 9
    tat = rate.spend(LONG_AGO, START, burst)
    assert rate.budget(tat, START) == 0
    assert rate.budget(tat, START + timedelta(seconds=rate.interval_s)) == 1


def test_a_send_claimed_a_little_late_does_not_push_the_next_one_back() -> None:
    rate = SendRate(10, 1.1)
    tat = rate.spend(LONG_AGO, START, 1)
    slot = START + timedelta(seconds=rate.interval_s)
    late = slot + timedelta(seconds=LAG_TOLERANCE_S / 2)
    assert rate.budget(tat, late) == 1
    tat = rate.spend(tat, late, 1)
    # The next one, claimed on time at its own slot, still conforms.
    assert rate.budget(tat, slot + timedelta(seconds=rate.interval_s)) == 1


def test_held_back_sends_are_booked_after_those_booked_before_them() -> None:
    rate = SendRate(10, 1.1)
    tat = rate.spend(LONG_AGO, START, 1)
    first = rate.booking_start(tat, START, None)
    assert first == tat - timedelta(seconds=rate.tolerance_s)
    booked_until = first + timedelta(seconds=4 * rate.interval_s)
    assert rate.booking_start(tat, START, booked_until) == \
        booked_until + timedelta(seconds=rate.interval_s)
    # A horizon already in the past books from the next free time.
    assert rate.booking_start(tat, START, START - timedelta(hours=1)) == first
