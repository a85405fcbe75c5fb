"""Per-endpoint send rate limits (``"rate_limit": N`` sends per second).

The promise: an endpoint with ``rate_limit`` N has at most N sends started in any
window of ``1 s + GATEWAY_ENDPOINT_RATE_MARGIN_S`` (a sliding window, on the database's
clock, over the moments its sends are granted), across every dispatcher process of the
instance. The margin (default 0.1 s) absorbs the spread between granting a send and the
request reaching the receiver, so the receiver sees at most N in any sliding second
unless one request is delayed by more than the margin against another.

How: the generic cell rate algorithm (GCRA), one row per endpoint in
``endpoint_send_rates`` that every claim of every process locks and moves on in the claim
statement itself (``claim_due``). A send conforms when ``now >= tat - tolerance``; each
one moves ``tat`` (the theoretical arrival time) to ``max(tat, now) + interval``. Two
conforming sends N apart are at least ``N * interval - tolerance`` apart, which the
parameters below make equal to the window. After a quiet spell a claim may start up to a
twentieth of the limit at once; sends are otherwise spaced evenly, which keeps an
endpoint a little under its limit (87% of it up to 39/s, 83% at 100/s and above). What
a claim cannot start is held back: not claimed (it holds no dispatch slot), not
attempted (its attempts do not grow), and given the next free send time after those
already handed out (booked, oldest first), when it falls due again. The tolerance
includes :data:`LAG_TOLERANCE_S`, so a booked delivery claimed a little after its time
still finds its send conforming.

This module is the arithmetic, used by the in-memory queue and spelt again in SQL in
``claim_due``; the tests hold both to the promise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

#: GATEWAY_ENDPOINT_RATE_MARGIN_S's default: the limit holds over 1.1 s.
DEFAULT_RATE_MARGIN_S = 0.1
#: How late after its booked time a held-back delivery may be claimed and still find its
#: send conforming (a dispatcher's wake-up and claim take a few milliseconds).
LAG_TOLERANCE_S = 0.05
#: A claim may start up to 1/BURST_DIVISOR of an endpoint's limit at once.
BURST_DIVISOR = 20


@dataclass(frozen=True)
class SendRate:
    """One endpoint's limit: ``limit`` sends in any ``window_s`` (1 s + the margin)."""

    limit: int
    window_s: float

    @property
    def burst(self) -> int:
        """Sends a claim may start at once when the endpoint has been idle."""
        return max(1, self.limit // BURST_DIVISOR)

    @property
    def interval_s(self) -> float:
        """The spacing of sends beyond the burst, rounded up to the microsecond (the
        clock's resolution), so that rounding never brings sends closer."""
        exact = (self.window_s + LAG_TOLERANCE_S) / (self.limit - self.burst + 1)
        return math.ceil(exact * 1e6) / 1e6

    @property
    def tolerance_s(self) -> float:
        return (self.burst - 1) * self.interval_s + LAG_TOLERANCE_S

    def budget(self, tat: datetime, now: datetime) -> int:
        """How many sends may start at ``now``."""
        ahead_s = (max(tat, now) - now).total_seconds()
        return max(0, math.floor((self.tolerance_s - ahead_s) / self.interval_s) + 1)

    def spend(self, tat: datetime, now: datetime, sends: int) -> datetime:
        """``tat`` after ``sends`` sends started at ``now``."""
        return max(tat, now) + timedelta(seconds=sends * self.interval_s)

    def booking_start(self, tat: datetime, now: datetime,
                      booked_until: datetime | None) -> datetime:
        """The send time the first delivery held back at ``now`` gets, ``tat`` being the
        schedule after the whole budget was spent (held-back deliveries are booked after
        those booked before them, each ``interval_s`` after the last)."""
        free = max(now, tat - timedelta(seconds=self.tolerance_s))
        if booked_until is None:
            return free
        return max(free, booked_until + timedelta(seconds=self.interval_s))
