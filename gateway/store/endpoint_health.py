"""An endpoint's state in PostgreSQL beyond its configuration: disabled or not, and its
health (:mod:`gateway.health`).

Every change goes through here, inside the caller's transaction: the dispatcher's
(attempts settled: 410 Gone, health, auto-disable) and the API's (``PATCH``). So there is
one way to disable an endpoint, whatever the reason, and one way to enable it, and each
tells the app's operational webhook (``endpoint.disabled``, ``endpoint.enabled``).

Closing a circuit and enabling an endpoint resume its parked deliveries in a statement of
their own, after the one that changed the endpoint: a claim that parks an endpoint's
deliveries share-locks the endpoint row, so the change waits for that claim to commit,
and the resuming statement, with a fresh snapshot, sees what it parked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.health import HealthRules
from gateway.operational import endpoint_disabled, endpoint_enabled
from gateway.store.database import QUERIES
from gateway.store.operational import emit_operational
from gateway.store.queue import AttemptResult, Settlement
from gateway_client.models import AttemptOutcome, DisabledReason

if TYPE_CHECKING:
    from gateway.store.database import Connection


#: Endpoint ids a notification carries at most (a payload is under 8,000 bytes).
_ANNOUNCED_AT_ONCE = 100


async def announce_changed(conn: Connection, endpoint_ids: Sequence[str]) -> None:
    """Tell every process, at commit, that these endpoints' sending changed: deliveries
    to them handed over and waiting for room go back to the queue, to be claimed as the
    endpoints now are (not sent to a URL since changed, or past an open circuit)."""
    ids = sorted(set(endpoint_ids))
    for start in range(0, len(ids), _ANNOUNCED_AT_ONCE):
        await conn.execute(QUERIES["endpoints_changed"],
                           ids[start:start + _ANNOUNCED_AT_ONCE])


async def disable_endpoints(conn: Connection, endpoint_ids: Sequence[str],
                            reason: DisabledReason) -> list[tuple[str, str]]:
    """Disable the active ones among ``endpoint_ids`` for ``reason`` and park their
    pending deliveries (they wait until it is enabled again); returns (app id, endpoint
    id) of each endpoint this disabled."""
    if not endpoint_ids:
        return []
    rows = await conn.fetch(QUERIES["disable_endpoints"], sorted(set(endpoint_ids)),
                            reason.value)
    disabled = [(r["app_id"], r["id"]) for r in rows]
    if disabled:
        await conn.execute(QUERIES["park_deliveries"], [e for _, e in disabled])
        await announce_changed(conn, [e for _, e in disabled])
        await emit_operational(conn, [endpoint_disabled(app_id, endpoint_id, reason.value)
                                      for app_id, endpoint_id in disabled])
    return disabled


async def enable_endpoints(conn: Connection, endpoint_ids: Sequence[str]) -> None:
    """Make them active with a clean slate (no reason, not failing, circuit closed) and
    resume their parked deliveries."""
    rows = await conn.fetch(QUERIES["enable_endpoints"], list(endpoint_ids))
    await conn.execute(QUERIES["resume_endpoints"], list(endpoint_ids))
    await emit_operational(conn, [endpoint_enabled(r["app_id"], r["id"])
                                  for r in rows if r["was_disabled"]])


async def settle_health(conn: Connection, results: Sequence[AttemptResult],
                        rules: HealthRules) -> Settlement:
    """Count the attempts that were sent to endpoints towards their health: resume what a
    closed circuit held back, disable what answered 410 Gone (reason ``gone``), then what
    failed for the whole window (``failing``).

    The health statement locks the endpoints it writes in id order, and every endpoint
    disabled here is among them (a 410 is a failure), so concurrent settlements never
    lock two endpoints in opposite orders.
    """
    sent = [r for r in results if r.endpoint_id is not None]
    rows = await conn.fetch(
        QUERIES["endpoint_health"], [r.endpoint_id for r in sent],
        [r.outcome is AttemptOutcome.DELIVERED for r in sent], [r.attempted_at for r in sent],
        rules.circuit_failures, float(rules.circuit_cooldown_s),
        float(rules.disable_after_s)) if sent else []
    closed = [r["id"] for r in rows if r["closed"]]
    opened = [r["id"] for r in rows if r["opened"]]
    if opened:
        await announce_changed(conn, opened)
    if closed:
        await conn.execute(QUERIES["resume_endpoints"], closed)
    await disable_endpoints(conn, [r.disable_endpoint_id for r in results
                                   if r.disable_endpoint_id], DisabledReason.GONE)
    disabled = await disable_endpoints(conn, [r["id"] for r in rows if r["disable"]],
                                       DisabledReason.FAILING)
    return Settlement(
        circuits_opened=tuple((r["app_id"], r["id"]) for r in rows if r["opened"]),
        disabled_failing=tuple(disabled))
