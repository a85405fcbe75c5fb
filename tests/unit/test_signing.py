from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import standardwebhooks

from adapters.base import DeliveryJob, EndpointTarget, EventView
from adapters.webhook import WebhookAdapter, iso_timestamp, sign, webhook_body
from gateway.ids import new_webhook_secret
from tests.support import Folding

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    got = sign(VECTOR_SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
               b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secrets_are_whsec_base64_of_at_least_24_random_bytes() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert secret != new_webhook_secret()


def test_body_splices_the_raw_payload_text_unchanged() -> None:
    raw = '{"b": 1.50, "a": [1e3, "\\u0000"], "z": {}}'
    body = webhook_body("evt_1", "order.created", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), raw)
    assert body.endswith(b', "data": ' + raw.encode() + b"}")
    assert body.startswith(b'{"id": "evt_1", "type": "order.created", '
                           b'"timestamp": "2026-01-02T03:04:05.000Z"')


@pytest.mark.parametrize("event_type", ["order.created", 'a"b\\c\u00e9\U0001f600\n\t'])
def test_the_body_spells_id_type_and_timestamp_as_json_dumps_does(event_type: str) -> None:
    created_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    body = webhook_body("evt_1", event_type, created_at, '{"x": 1}')
    head = json.dumps({"id": "evt_1", "type": event_type,
                       "timestamp": "2026-01-02T01:04:05.678Z"})
    assert body == (head[:-1] + ', "data": {"x": 1}}').encode()


def test_the_timestamp_of_two_local_times_an_hour_apart_across_a_fold_differs() -> None:
    first = datetime(2026, 10, 25, 2, 30, tzinfo=Folding())
    again = first.replace(fold=1)  # equal to first as a key, an hour later
    assert iso_timestamp(first) == "2026-10-25T00:30:00.000Z"
    assert iso_timestamp(again) == "2026-10-25T01:30:00.000Z"


def test_headers_verify_with_the_independent_standardwebhooks_library_for_every_secret() -> None:
    new, old = new_webhook_secret(), new_webhook_secret()
    job = DeliveryJob(
        delivery_id="dlv_1", app_id="app_1", kind="webhook",
        event=EventView("evt_1", "a.b", '{"x": 1}', datetime.now(UTC)),
        endpoint=EndpointTarget("ep_1", "http://example.test/", (new, old)),
    )
    body = webhook_body("evt_1", "a.b", job.event.created_at, job.event.payload)
    adapter = WebhookAdapter(timeout_s=1, allow_private=False)
    headers = adapter.headers(job, body, int(datetime.now(UTC).timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        verified = standardwebhooks.Webhook(secret).verify(body.decode(), headers)
        assert verified["data"] == {"x": 1}
