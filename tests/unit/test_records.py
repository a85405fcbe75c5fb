"""The values made per delivery (adapters.base.record): plain slotted dataclasses at run
time, frozen to the type checker, and hashable by their fields as frozen ones are."""

from __future__ import annotations

from datetime import UTC, datetime

from adapters.base import DeliveryJob, EndpointTarget, EventView, Outcome, Verdict


def test_per_delivery_records_hash_and_compare_by_their_fields() -> None:
    at = datetime(2030, 1, 2, tzinfo=UTC)
    one = EventView("evt_1", "order.created", "{}", at)
    same = EventView("evt_1", "order.created", "{}", at)
    other = EventView("evt_2", "order.created", "{}", at)
    assert one == same and hash(one) == hash(same)
    assert len({one, same, other}) == 2
    target = EndpointTarget("ep_1", "https://example.com/", ("whsec_x",), (("x-a", "1"),))
    job = DeliveryJob("dlv_1", "app_1", "webhook", one, endpoint=target)
    assert {job: 1}[DeliveryJob("dlv_1", "app_1", "webhook", same, endpoint=target)] == 1
    assert hash(Outcome(Verdict.DELIVERED, 3)) == hash(Outcome(Verdict.DELIVERED, 3))
