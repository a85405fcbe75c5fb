"""Endpoint health: the rules that hold back an endpoint that keeps failing.

- **Circuit breaker.** After ``circuit_failures`` failed attempts in a row (any answer but
  a 2xx, a timeout, a refused connection) the endpoint's circuit opens: nothing is sent to
  it for ``circuit_cooldown_s``. Then it is half-open: one delivery goes as a probe. A
  success closes the circuit (the deliveries held back go out); a failure opens it again
  for another cooldown.
- **Auto-disable.** An endpoint whose attempts have all failed for ``disable_after_s``
  (since the first failure after its last success) is disabled, reason ``failing``.

The state is four values on the endpoint's row (:class:`Health`), changed only by
attempt results; :func:`settle` is the one statement of the rules, which the PostgreSQL
queue carries out in SQL (``endpoint_health`` in ``sql/queries.sql``) and the in-memory
queue by calling it. The shared queue tests hold both to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway_client.models import Circuit


@dataclass(frozen=True)
class HealthRules:
    """GATEWAY_CIRCUIT_FAILURES, GATEWAY_CIRCUIT_COOLDOWN_S, GATEWAY_DISABLE_AFTER_S."""

    circuit_failures: int = 5
    circuit_cooldown_s: float = 30.0
    #: Five days, as Svix.
    disable_after_s: float = 432_000.0


@dataclass(frozen=True)
class Health:
    """What is kept of one endpoint's recent attempts."""

    consecutive_failures: int = 0
    #: The first failed attempt after the last success; None while the last succeeded.
    failing_since: datetime | None = None
    #: None: the circuit is closed. Before this time it is open, after it half-open.
    circuit_open_until: datetime | None = None
    #: A half-open circuit's probe is out until then (the probe's lease).
    circuit_probe_until: datetime | None = None


#: An endpoint with nothing against it.
HEALTHY = Health()


@dataclass(frozen=True)
class Settled:
    """An endpoint's health after some attempts, and what changed."""

    health: Health
    #: The circuit was closed and is open now.
    opened: bool
    #: The circuit was open or half-open and is closed now: resume what it held back.
    closed: bool
    #: It has failed for the whole disable window: disable it (reason ``failing``).
    disable: bool


def settle(health: Health, attempts: Sequence[tuple[bool, datetime]], rules: HealthRules,
           now: datetime) -> Settled:
    """``health`` after ``attempts`` (succeeded?, attempted at) of one endpoint, settled
    together at ``now``.

    Only what came after the batch's last success counts as failing; a success closes the
    circuit, a failure with ``circuit_failures`` in a row behind it (or any failure while
    the circuit is not closed, such as a failed probe) opens it for another cooldown.
    """
    last_ok = max((at for ok, at in attempts if ok), default=None)
    failed = [at for ok, at in attempts if not ok and (last_ok is None or at > last_ok)]
    if last_ok is not None:
        failures = len(failed)
        failing_since = min(failed, default=None)
    else:
        failures = health.consecutive_failures + len(failed)
        failing_since = health.failing_since or min(failed, default=None)
    open_until, probe_until = health.circuit_open_until, health.circuit_probe_until
    if failed and (failures >= rules.circuit_failures or open_until is not None):
        open_until, probe_until = now + timedelta(seconds=rules.circuit_cooldown_s), None
    elif last_ok is not None:
        open_until, probe_until = None, None
    return Settled(
        Health(failures, failing_since, open_until, probe_until),
        opened=health.circuit_open_until is None and open_until is not None,
        closed=health.circuit_open_until is not None and open_until is None,
        disable=bool(failed) and failing_since is not None
        and now - failing_since >= timedelta(seconds=rules.disable_after_s),
    )


def circuit(open_until: datetime | None, now: datetime) -> Circuit:
    """The circuit as the endpoint answer shows it, from what is stored and the clock."""
    if open_until is None:
        return Circuit.CLOSED
    return Circuit.OPEN if open_until > now else Circuit.HALF_OPEN
