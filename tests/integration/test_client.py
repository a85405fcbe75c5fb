"""``gateway_client.GatewayClient`` against the in-process gateway over a real socket, and
its retries against small misbehaving servers in front of it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.sandbox import pem_private
from gateway_client.client import (
    DeliveryOutcome,
    GatewayAPIError,
    GatewayClient,
    GatewayConnectionError,
)
from gateway_client.models import (
    APNsCertificateShown,
    APNsCredentialsShown,
    AppCreated,
    Delivery,
    EndpointCreated,
    EventAccepted,
    EventType,
    RotatedAppKey,
    Task,
    TaskKind,
    TaskStatus,
)
from tests.push_support import PushCertificates
from tests.support import ADMIN_KEY, Api, Receiver, eventually, free_port, serve_on_loopback


def base_url(api: Api) -> str:
    return str(api.session.make_url("")).rstrip("/")


@pytest.fixture
async def app_key(api: Api) -> str:
    return await api.new_app("client-app")


@pytest.fixture
async def gw(api: Api, app_key: str) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(base_url(api), app_key, max_retries=0) as client:
        yield client


async def test_apps_are_created_and_listed_with_the_operator_key(api: Api) -> None:
    async with GatewayClient(base_url(api), ADMIN_KEY) as admin:
        created = await admin.create_app("billing")
        page = await admin.list_apps(limit=250)
    assert isinstance(created, AppCreated) and created.api_key.startswith("gk_")
    assert created.id in [a.id for a in page.data]
    async with GatewayClient(base_url(api), created.api_key) as client:
        assert (await client.list_endpoints()).data == []


async def test_an_apps_key_is_rotated_and_the_app_deleted_through_the_client(
        api: Api) -> None:
    async with GatewayClient(base_url(api), ADMIN_KEY, max_retries=0) as admin:
        created = await admin.create_app("short-lived")
        async with GatewayClient(base_url(api), created.api_key, max_retries=0) as own:
            rotated = await own.rotate_app_key(created.id, grace_s=0)
        assert isinstance(rotated, RotatedAppKey) and rotated.previous_key_expires_at is None
        again = await admin.rotate_app_key(created.id)  # the default grace: a day
        assert again.previous_key_expires_at is not None
        async with GatewayClient(base_url(api), again.api_key, max_retries=0) as client:
            assert (await client.list_endpoints()).data == []
        await admin.delete_app(created.id)
        assert created.id not in [a.id for a in (await admin.list_apps(limit=250)).data]
        with pytest.raises(GatewayAPIError) as gone:
            await admin.delete_app(created.id)
    assert (gone.value.status, gone.value.code) == (404, "not_found")
    async with GatewayClient(base_url(api), again.api_key, max_retries=0) as client:
        with pytest.raises(GatewayAPIError) as refused:
            await client.list_endpoints()
    assert refused.value.status == 401


async def test_endpoints_round_trip_through_every_method(
    gw: GatewayClient, receiver: Receiver
) -> None:
    created = await gw.create_endpoint(receiver.url(), event_types=["order.*"],
                                       description="orders")
    assert isinstance(created, EndpointCreated) and created.secret.startswith("whsec_")
    assert (await gw.get_endpoint(created.id)).event_types == ["order.*"]
    assert [e.id for e in (await gw.list_endpoints(limit=10)).data] == [created.id]
    disabled = await gw.update_endpoint(created.id, status="disabled")
    assert (disabled.status, disabled.disabled_reason, disabled.circuit) == (
        "disabled", "manual", "closed")
    everything = await gw.update_endpoint(created.id, event_types=None, status="active")
    assert (everything.event_types, everything.description, everything.status) == (
        None, "orders", "active")
    assert (await gw.get_endpoint_secret(created.id)).secret == created.secret
    rotated = await gw.rotate_secret(created.id)
    assert rotated.secret != created.secret and rotated.previous_secret_expires_at
    await gw.delete_endpoint(created.id)
    with pytest.raises(GatewayAPIError) as gone:
        await gw.get_endpoint(created.id)
    assert (gone.value.status, gone.value.code) == (404, "not_found")


async def test_event_types_round_trip_through_every_method(gw: GatewayClient) -> None:
    schema = {"type": "object", "required": ["order_id"]}
    created = await gw.create_event_type("order.created", description="placed", schema=schema)
    assert isinstance(created, EventType) and created.schema_ == schema
    assert (await gw.get_event_type("order.created")).description == "placed"
    assert [t.name for t in (await gw.list_event_types(limit=10)).data] == ["order.created"]
    with pytest.raises(GatewayAPIError) as refused:
        await gw.emit("order.created", {})
    assert refused.value.code == "validation_error"
    assert refused.value.details[0]["path"] == "payload.order_id"
    described = await gw.update_event_type("order.created", description="new")
    assert (described.description, described.schema_) == ("new", schema)
    assert (await gw.update_event_type("order.created", schema=None)).schema_ is None
    await gw.emit("order.created", {})
    with pytest.raises(GatewayAPIError) as taken:
        await gw.create_event_type("order.created")
    assert (taken.value.status, taken.value.code) == (409, "event_type_exists")
    await gw.delete_event_type("order.created")
    with pytest.raises(GatewayAPIError) as gone:
        await gw.get_event_type("order.created")
    assert (gone.value.status, gone.value.code) == (404, "not_found")


async def test_endpoint_options_are_set_changed_and_cleared_through_the_client(
    gw: GatewayClient, receiver: Receiver
) -> None:
    created = await gw.create_endpoint(receiver.url(), rate_limit=5,
                                       headers={"X-Tenant": "acme"},
                                       filter={"region": ["eu", "us"]})
    assert (created.rate_limit, created.headers, created.filter) == (
        5, {"X-Tenant": "acme"}, {"region": ["eu", "us"]})
    changed = await gw.update_endpoint(created.id, headers={"X-Other": "1"})
    assert (changed.rate_limit, changed.headers, changed.filter) == (
        5, {"X-Other": "1"}, {"region": ["eu", "us"]})
    cleared = await gw.update_endpoint(created.id, rate_limit=None, headers=None, filter=None)
    assert (cleared.rate_limit, cleared.headers, cleared.filter) == (None, {}, None)
    with pytest.raises(GatewayAPIError) as refused:
        await gw.update_endpoint(created.id, headers={"Webhook-Id": "x"})
    assert refused.value.code == "validation_error"
    assert refused.value.details[0]["path"] == "headers.Webhook-Id"


async def test_events_deliveries_attempts_and_retry_through_the_client(
    gw: GatewayClient, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    endpoint = await gw.create_endpoint(receiver.url())
    accepted = await gw.emit("order.created", {"order_id": 1001})
    assert isinstance(accepted, EventAccepted) and accepted.type == "order.created"
    event = await gw.get_event(accepted.id)
    assert event.payload == {"order_id": 1001} and len(event.deliveries) == 1
    assert [e.id for e in (await gw.list_events(event_type="order.created")).data] == [
        accepted.id]
    assert (await gw.list_events(event_type="other")).data == []

    async def failed() -> list[Delivery]:
        return (await gw.list_deliveries(status="failed", endpoint_id=endpoint.id)).data

    (delivery,) = await eventually(failed)
    assert (await gw.get_delivery(delivery.id)).status == "failed"
    log = await gw.attempts(delivery.id)
    assert [a.status_code for a in log] == [500] * 4
    receiver.answers["/hook"] = [(204, {})]
    assert (await gw.retry_delivery(delivery.id)).status == "pending"
    await eventually(lambda: gw.list_deliveries(status="succeeded", event_id=accepted.id))
    with pytest.raises(GatewayAPIError) as again:
        await gw.retry_delivery(delivery.id)
    assert (again.value.status, again.value.code) == (409, "delivery_not_retryable")


async def test_recover_replay_and_their_tasks_through_the_client(
    gw: GatewayClient, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    since = datetime.now(UTC) - timedelta(minutes=1)
    endpoint = await gw.create_endpoint(receiver.url())
    await gw.emit("order.created", {"n": 1})

    async def in_status(status: Literal["pending", "succeeded", "failed"]) -> list[Delivery]:
        return (await gw.list_deliveries(status=status)).data

    await eventually(lambda: in_status("failed"))
    receiver.answers["/hook"] = [(200, {})]

    recover = await gw.recover_endpoint(endpoint.id, since)
    assert isinstance(recover, Task) and recover.kind is TaskKind.RECOVER
    done = await gw.wait_for_task(recover.id, poll_interval_s=0.05, timeout_s=20)
    assert done.status is TaskStatus.DONE and done.counts == {"scanned": 1, "requeued": 1}
    await eventually(lambda: in_status("succeeded"))

    late = await gw.create_endpoint(receiver.url("/late"))
    replay = await gw.replay_endpoint(late.id, since.isoformat(),
                                      until=datetime.now(UTC) + timedelta(hours=1))
    assert replay.kind is TaskKind.REPLAY
    replayed = await gw.wait_for_task(replay.id, poll_interval_s=0.05, timeout_s=20)
    assert replayed.counts == {"scanned": 1, "created": 1}
    assert (await gw.get_task(replay.id)).finished_at is not None
    assert [t.id for t in (await gw.list_tasks(limit=10)).data] == [replay.id, recover.id]
    await receiver.wait_for(1, "/late")
    with pytest.raises(ValueError, match="timezone"):
        await gw.replay_endpoint(late.id, datetime.now())
    with pytest.raises(GatewayAPIError) as future:
        await gw.recover_endpoint(endpoint.id, datetime.now(UTC) + timedelta(hours=1))
    assert (future.value.status, future.value.details[0]["path"]) == (422, "since")


async def test_emit_with_a_given_idempotency_key_answers_the_first_event(
    gw: GatewayClient,
) -> None:
    first = await gw.emit("order.created", {"n": 1}, idempotency_key="order-1")
    again = await gw.emit("order.created", {"n": 1}, idempotency_key="order-1")
    assert again.id == first.id
    with pytest.raises(GatewayAPIError) as reused:
        await gw.emit("order.created", {"n": 2}, idempotency_key="order-1")
    assert reused.value.code == "idempotency_key_reused"
    other = await gw.emit("order.created", {"n": 1})
    assert other.id != first.id  # a fresh key each call


async def test_user_tokens_and_devices_through_the_client(gw: GatewayClient) -> None:
    token = await gw.create_user_token("alice", ttl_seconds=600)
    assert token.token.startswith("ut_") and token.user_id == "alice"
    fcm_token = "fcm:device/token-1"  # characters that need quoting in a path
    device = await gw.register_device("android", fcm_token, user_id="alice",
                                      topics=["news"], locale="en-GB", app_version="1.2")
    assert (device.token, device.topics, device.status) == (fcm_token, ["news"], "active")
    assert (await gw.register_device("android", fcm_token, user_id="bob")).user_id == "bob"
    assert [d.token for d in (await gw.list_devices(user_id="bob", platform="android")).data
            ] == [fcm_token]
    assert (await gw.get_device(fcm_token)).locale is None
    assert (await gw.set_device_topics(fcm_token, ["sport", "news"])).topics == [
        "sport", "news"]
    await gw.delete_device(fcm_token)
    with pytest.raises(GatewayAPIError) as gone:
        await gw.get_device(fcm_token)
    assert gone.value.status == 404
    async with GatewayClient(gw.base_url, token.token) as mobile:
        mine = await mobile.register_device("ios", "ab" * 32)
        assert mine.user_id == "alice"


async def test_error_answers_become_gateway_api_errors_with_code_and_details(
    api: Api, gw: GatewayClient
) -> None:
    with pytest.raises(GatewayAPIError) as invalid:
        await gw.create_endpoint("not a url")
    assert (invalid.value.status, invalid.value.code) == (422, "validation_error")
    assert invalid.value.details[0]["path"] == "url"
    async with GatewayClient(base_url(api), "gk_unknown") as stranger:
        with pytest.raises(GatewayAPIError) as unknown:
            await stranger.list_events()
    assert (unknown.value.status, unknown.value.code) == (401, "unauthorized")


async def test_tail_yields_outcomes_as_they_happen(
    gw: GatewayClient, receiver: Receiver
) -> None:
    endpoint = await gw.create_endpoint(receiver.url())
    async with gw.tail(event_type="order.*") as outcomes:
        await gw.emit("user.created", {})
        accepted = await gw.emit("order.created", {})
        outcome = await asyncio.wait_for(anext(aiter(outcomes)), 10)
    assert isinstance(outcome, DeliveryOutcome)
    assert (outcome.event_id, outcome.endpoint_id, outcome.outcome, outcome.status_code) == (
        accepted.id, endpoint.id, "delivered", 200)


# --- retries --------------------------------------------------------------------------

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse | None]]


class Front:
    """A server in front of the gateway: each request is first shown to ``behaviour``
    (with its 1-based number); when that answers None it is proxied to the gateway."""

    def __init__(self, upstream: str, behaviour: Behaviour, port: int = 0) -> None:
        self.upstream = upstream
        self.behaviour = behaviour
        self.port = port
        self.seen: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        answer = await self.behaviour(request, len(self.seen))
        if answer is not None:
            return answer
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=body, headers=headers) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(),
                                content_type=upstream.content_type)

    async def start(self) -> Front:
        self._session = aiohttp.ClientSession()
        self._runner, self.port = await serve_on_loopback(self._handle, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@contextlib.asynccontextmanager
async def front(api: Api, behaviour: Behaviour) -> AsyncIterator[Front]:
    server = await Front(base_url(api), behaviour).start()
    try:
        yield server
    finally:
        await server.stop()


def unavailable_first(times: int) -> Behaviour:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse | None:
        if n <= times:
            return web.json_response({"error": {
                "code": "database_unavailable", "message": "retry", "details": []}},
                status=503)
        return None
    return behaviour


def dropped_first(times: int) -> Behaviour:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse | None:
        if n <= times:
            await request.read()
            assert request.transport is not None
            request.transport.close()  # the connection breaks before any answer
            return web.Response(status=500)
        return None
    return behaviour


async def events_of(api: Api, key: str) -> list[dict[str, Any]]:
    _, body = await api.call("GET", "/v1/events", key)
    found: list[dict[str, Any]] = body["data"]
    return found


async def test_emit_retries_503_with_the_same_idempotency_key(api: Api, app_key: str) -> None:
    async with front(api, unavailable_first(2)) as server, \
            GatewayClient(server.url, app_key, max_retries=3, backoff_s=0.01) as client:
        accepted = await client.emit("order.created", {"n": 1})
    keys = [h["Idempotency-Key"] for h in server.seen]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert [e["id"] for e in await events_of(api, app_key)] == [accepted.id]


async def test_503_is_retried_only_max_retries_times(api: Api, app_key: str) -> None:
    async with front(api, unavailable_first(100)) as server, \
            GatewayClient(server.url, app_key, max_retries=2, backoff_s=0.01) as client:
        with pytest.raises(GatewayAPIError) as unavailable:
            await client.list_events()
    assert (unavailable.value.status, unavailable.value.code) == (503, "database_unavailable")
    assert len(server.seen) == 3


async def test_emit_retries_a_broken_connection_with_the_same_idempotency_key(
    api: Api, app_key: str
) -> None:
    async with front(api, dropped_first(2)) as server, \
            GatewayClient(server.url, app_key, max_retries=3, backoff_s=0.01) as client:
        accepted = await client.emit("order.created", {"n": 1}, idempotency_key="k-1")
    assert [h["Idempotency-Key"] for h in server.seen] == ["k-1"] * 3
    assert [e["id"] for e in await events_of(api, app_key)] == [accepted.id]


async def test_a_create_is_not_resent_after_the_connection_broke_mid_request(
    api: Api, app_key: str, receiver: Receiver
) -> None:
    async with front(api, dropped_first(1)) as server, \
            GatewayClient(server.url, app_key, max_retries=3, backoff_s=0.01) as client:
        with pytest.raises(GatewayConnectionError):
            await client.create_endpoint(receiver.url())
    assert len(server.seen) == 1


async def test_emit_retries_a_refused_connection_until_the_gateway_is_up(
    api: Api, app_key: str
) -> None:
    port = free_port()
    late = Front(base_url(api), unavailable_first(0), port=port)

    async def come_up_later() -> None:
        await asyncio.sleep(0.4)
        await late.start()

    starting = asyncio.create_task(come_up_later())
    try:
        async with GatewayClient(f"http://127.0.0.1:{port}", app_key, max_retries=8,
                                 backoff_s=0.05, max_backoff_s=0.2) as client:
            accepted = await client.emit("order.created", {"n": 1})
        await starting
        assert len(late.seen) == 1
        assert [e["id"] for e in await events_of(api, app_key)] == [accepted.id]
    finally:
        await starting
        await late.stop()


async def test_a_refused_connection_is_an_error_once_retries_run_out(app_key: str) -> None:
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", app_key, max_retries=2,
                             backoff_s=0.01) as client:
        with pytest.raises(GatewayConnectionError):
            await client.emit("order.created", {})


async def test_push_credentials_round_trip_through_the_client(api: Api,
                                                             gw: GatewayClient) -> None:
    _, apps = await api.call("GET", "/v1/apps", ADMIN_KEY)
    app_id = apps["data"][0]["id"]
    account = {"type": "service_account", "project_id": "shop", "private_key_id": "abcd1234",
               "private_key": pem_private(rsa.generate_private_key(65537, 2048)),
               "client_email": "push@shop.iam.gserviceaccount.com",
               "token_uri": "https://oauth2.googleapis.com/token"}
    fcm = await gw.set_fcm_credentials(app_id, account)
    assert (fcm.project_id, fcm.private_key_id) == ("shop", "…1234")
    assert "PRIVATE KEY" not in fcm.private_key
    apns = await gw.set_apns_credentials(
        app_id, key_p8=pem_private(ec.generate_private_key(ec.SECP256R1())),
        key_id="ABC123DEFG", team_id="DEF123GHIJ", topic="com.example.shop",
        environment="sandbox")
    assert (apns.key_id, apns.environment) == ("ABC123DEFG", "sandbox")
    shown = await gw.push_credentials(app_id)
    assert shown.fcm is not None and shown.apns is not None
    assert shown.fcm.updated_at is not None and shown.apns.topic == "com.example.shop"


async def test_a_push_certificate_round_trips_through_the_client(api: Api,
                                                                gw: GatewayClient) -> None:
    _, apps = await api.call("GET", "/v1/apps", ADMIN_KEY)
    app_id = apps["data"][0]["id"]
    shown = await gw.set_apns_certificate(
        app_id, certificate_pem=PushCertificates().issue("com.example.shop"),
        environment="sandbox")
    assert (shown.auth, shown.topic, shown.certificate_subject_uid) == (
        "certificate", "com.example.shop", "com.example.shop")
    listed = (await gw.push_credentials(app_id)).apns
    assert isinstance(listed, APNsCertificateShown)
    assert listed.certificate_sha256 == shown.certificate_sha256
    assert listed.certificate_expires_at == shown.certificate_expires_at
    await gw.set_apns_credentials(
        app_id, key_p8=pem_private(ec.generate_private_key(ec.SECP256R1())),
        key_id="ABC123DEFG", team_id="DEF123GHIJ", topic="com.example.shop")
    assert isinstance((await gw.push_credentials(app_id)).apns, APNsCredentialsShown)
    with pytest.raises(GatewayAPIError) as refused:
        await gw.set_apns_certificate(app_id, certificate_pem="not a certificate")
    assert refused.value.details[0]["path"] == "certificate_pem"


async def test_answers_from_a_newer_server_with_unknown_fields_and_values_still_parse(
) -> None:
    """A newer gateway may add fields and status values; this client must not break."""
    newer = {
        "id": "dlv_1", "event_id": "evt_1", "endpoint_id": None, "kind": "webpush",
        "status": "cancelled", "attempt_count": 0, "device_id": None, "in_flight": False,
        "next_attempt_at": None, "last_attempt_at": None, "last_error": None,
        "created_at": "2031-01-01T00:00:00Z", "updated_at": "2031-01-01T00:00:00Z",
        "priority": "high", "labels": {"team": "a"},
    }

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(newer)

    runner, port = await serve_on_loopback(answer)
    try:
        async with GatewayClient(f"http://127.0.0.1:{port}", "gk_x") as client:
            delivery = await client.get_delivery("dlv_1")
    finally:
        await runner.cleanup()
    assert (delivery.kind, delivery.status) == ("webpush", "cancelled")
    assert delivery.created_at == "2031-01-01T00:00:00Z"
    assert not hasattr(delivery, "priority")
