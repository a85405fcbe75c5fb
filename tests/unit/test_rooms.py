"""A claimer's rooms (gateway/store/queue.py Rooms), less what a claim already took."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from adapters.base import DeliveryJob, EndpointTarget, EventView
from gateway.store.queue import Job, Rooms


def job(app_id: str, endpoint_id: str | None, kind: str = "webhook") -> Job:
    event = EventView("evt_1", "t", "{}", datetime.now(UTC))
    endpoint = EndpointTarget(endpoint_id, "http://x/", ("s",)) if endpoint_id else None
    return Job(DeliveryJob("dlv_1", app_id, kind, event, endpoint=endpoint), uuid.uuid4(), 0)


def test_rooms_less_the_jobs_taken_count_down_each_target_and_app() -> None:
    rooms = Rooms(endpoints={"busy": 2}, apps={"a": 5}, endpoint=10, app=20)
    left = rooms.less([job("a", "busy"), job("a", "busy"), job("b", "idle"),
                       job("b", None, "fcm")])
    assert left.room("a", "webhook", "busy") == (0, 3)
    assert left.room("b", "webhook", "idle") == (9, 18)
    assert left.room("b", "fcm", None) == (9, 18)
    assert rooms.room("a", "webhook", "busy") == (2, 5)  # the original is unchanged
