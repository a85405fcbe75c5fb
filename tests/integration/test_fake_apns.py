"""The APNs fake against real HTTP/2 clients: httpx (what the gateway uses) and a bare
``h2`` client for what httpx hides (SETTINGS, GOAWAY, stream resets, TLS alerts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.http2 import ConnectError, HTTP2Pool
from fakes.apns import FakeAPNs
from tests.push_support import PushCertificates

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE = "com.example.app"
DEVICE = "a1" * 32

E = TypeVar("E", bound=h2.events.Event)


@dataclass
class Signer:
    """Makes ES256 provider tokens the way a provider server does."""

    private_key: ec.EllipticCurvePrivateKey
    key_id: str = KEY_ID
    team_id: str = TEAM_ID

    def __post_init__(self) -> None:
        # One token for the whole test: a fresh one per request would be token churn.
        self.current = self.token(iat=int(time.time()) - 60)

    @property
    def public_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(
        self,
        *,
        iat: int | None = None,
        key_id: str | None = None,
        team_id: str | None = None,
        private_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        return jwt.encode(
            {"iss": team_id or self.team_id, "iat": int(time.time()) if iat is None else iat},
            private_key or self.private_key,
            algorithm="ES256",
            headers={"kid": key_id or self.key_id},
        )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_ssl(ca: trustme.CA) -> Callable[[], ssl.SSLContext]:
    """A new client context per call: httpcore rewrites a context's ALPN list."""

    def make() -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return context

    return make


@pytest.fixture
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def make_apns(
    server_ssl: ssl.SSLContext, signer: Signer
) -> Callable[..., contextlib.AbstractAsyncContextManager[FakeAPNs]]:
    @contextlib.asynccontextmanager
    async def make(**options: Any) -> AsyncIterator[FakeAPNs]:
        fake = FakeAPNs(server_ssl, **options)
        fake.add_key(
            team_id=TEAM_ID, key_id=KEY_ID, public_key_pem=signer.public_pem, topics=[BUNDLE]
        )
        await fake.start()
        try:
            yield fake
        finally:
            await fake.stop()

    return make


@pytest.fixture
async def apns(
    make_apns: Callable[..., contextlib.AbstractAsyncContextManager[FakeAPNs]],
) -> AsyncIterator[FakeAPNs]:
    async with make_apns() as fake:
        yield fake


@pytest.fixture
async def client(client_ssl: Callable[[], ssl.SSLContext]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(http2=True, verify=client_ssl(), timeout=10) as http:
        yield http


def apns_headers(signer: Signer, **overrides: str | None) -> dict[str, str]:
    """A valid request's headers; ``None`` removes one, ``apns_topic=`` sets apns-topic."""
    headers: dict[str, str | None] = {
        "authorization": f"bearer {signer.current}",
        "apns-topic": BUNDLE,
        "apns-push-type": "alert",
        "apns-priority": "10",
    }
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value
    return {name: value for name, value in headers.items() if value is not None}


def alert(size: int | None = None) -> bytes:
    """An alert payload, padded to exactly ``size`` bytes when given."""
    body = {"aps": {"alert": {"title": "Hi", "body": "there"}}, "pad": ""}
    raw = json.dumps(body, separators=(",", ":")).encode()
    if size is not None:
        body["pad"] = "x" * (size - len(raw))
        raw = json.dumps(body, separators=(",", ":")).encode()
        assert len(raw) == size
    return raw


async def push(
    http: httpx.AsyncClient,
    fake: FakeAPNs,
    headers: Mapping[str, str] | list[tuple[str, str]],
    *,
    token: str = DEVICE,
    body: bytes | None = None,
    method: str = "POST",
    path: str | None = None,
) -> httpx.Response:
    return await http.request(
        method,
        fake.base_url + (path if path is not None else f"/3/device/{token}"),
        headers=headers,
        content=alert() if body is None else body,
    )


def reason(response: httpx.Response) -> str:
    value = response.json()["reason"]
    assert isinstance(value, str)
    return value


class RawClient:
    """A bare h2 client over TLS with ALPN h2."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.history: list[h2.events.Event] = []
        self._unclaimed: list[h2.events.Event] = []

    @classmethod
    async def connect(cls, fake: FakeAPNs, context: ssl.SSLContext) -> RawClient:
        context.set_alpn_protocols(["h2"])
        port = int(fake.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        raw = cls(reader, writer)
        raw.h2.initiate_connection()
        await raw.flush()
        return raw

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    def request(self, headers: Mapping[str, str], body: bytes | None, *, end: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        pseudo = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", f"/3/device/{DEVICE}"),
        ]
        self.h2.send_headers(stream_id, [*pseudo, *headers.items()], end_stream=end and not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=end)
        return stream_id

    async def next(self, kind: type[E]) -> E:
        async with asyncio.timeout(5):
            while True:
                for event in self._unclaimed:
                    if isinstance(event, kind):
                        self._unclaimed.remove(event)
                        return event
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("server closed the connection")
                events = self.h2.receive_data(data)
                self.history.extend(events)
                self._unclaimed.extend(events)
                await self.flush()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


# -- acceptance ---------------------------------------------------------------------------


async def test_valid_push_is_accepted_and_recorded_byte_faithfully(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    body = '{"aps":{"alert":{"title":"Hé","body":"☃"},"badge":3},"z":1,"a":[true,null]}'.encode()
    apns_id = str(uuid.uuid4())
    headers = apns_headers(signer, apns_id=apns_id, apns_collapse_id="c" * 64, apns_expiration="0")

    response = await push(client, apns, headers, body=body)

    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.content == b""
    assert response.headers["apns-id"] == apns_id
    [received] = apns.received
    assert received.provider == "apns"
    assert received.app == BUNDLE
    assert received.token == DEVICE
    assert received.payload == json.loads(body)
    assert apns.received_bodies == [body]
    assert received.headers == headers
    assert abs(received.received_at - time.time()) < 5


async def test_apns_id_is_generated_when_the_request_has_none(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    ok = await push(client, apns, apns_headers(signer))
    failed = await push(client, apns, apns_headers(signer, apns_topic=None))

    for response in (ok, failed):
        assert str(uuid.UUID(response.headers["apns-id"])) == response.headers["apns-id"].lower()
    assert ok.headers["apns-id"] != failed.headers["apns-id"]


async def test_voip_push_may_carry_5120_bytes_and_alert_4096(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    voip = apns_headers(signer, apns_push_type="voip", apns_topic=f"{BUNDLE}.voip")

    assert (await push(client, apns, voip, body=alert(5120))).status_code == 200
    assert (await push(client, apns, apns_headers(signer), body=alert(4096))).status_code == 200
    assert [r.app for r in apns.received] == [f"{BUNDLE}.voip", BUNDLE]


async def test_background_push_with_priority_10_is_accepted_but_counted(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    background = b'{"aps":{"content-available":1}}'
    for priority, violations in (("5", 0), ("10", 1), (None, 2)):
        headers = apns_headers(signer, apns_push_type="background", apns_priority=priority)
        response = await push(client, apns, headers, body=background)
        assert response.status_code == 200
        assert apns.background_priority_violations == violations


# -- connection behaviour ------------------------------------------------------------------


async def test_one_connection_carries_many_concurrent_pushes_after_a_valid_token(
    make_apns: Callable[..., contextlib.AbstractAsyncContextManager[FakeAPNs]],
    client_ssl: Callable[[], ssl.SSLContext],
    signer: Signer,
) -> None:
    async with (
        make_apns(response_delay_s=0.05) as fake,
        httpx.AsyncClient(http2=True, verify=client_ssl()) as client,
    ):
        headers = apns_headers(signer)
        assert (await push(client, fake, headers)).status_code == 200

        # 50 x 3000 bytes is more than the default 64 KiB window: flow control must work.
        responses = await asyncio.gather(
            *(push(client, fake, headers, token=f"{i:064x}", body=alert(3000)) for i in range(50))
        )
        await asyncio.sleep(0.2)  # an idle connection stays open
        assert (await push(client, fake, headers)).status_code == 200

        assert [r.status_code for r in responses] == [200] * 50
        assert fake.connections_opened == 1
        assert fake.open_connections == 1
        assert fake.max_concurrent_streams_seen > 1
        assert len(fake.received) == 52


async def test_before_a_valid_token_a_connection_allows_one_stream(
    make_apns: Callable[..., contextlib.AbstractAsyncContextManager[FakeAPNs]],
    client_ssl: Callable[[], ssl.SSLContext],
    signer: Signer,
) -> None:
    forged = signer.token(private_key=ec.generate_private_key(ec.SECP256R1()))
    headers = apns_headers(signer, authorization=f"bearer {forged}")
    async with (
        make_apns(response_delay_s=0.02) as fake,
        httpx.AsyncClient(http2=True, verify=client_ssl()) as client,
    ):
        responses = await asyncio.gather(*(push(client, fake, headers) for _ in range(10)))

        assert {(r.status_code, reason(r)) for r in responses} == {(403, "InvalidProviderToken")}
        assert fake.connections_opened == 1
        assert fake.max_concurrent_streams_seen == 1


async def test_settings_advertise_one_stream_then_1000_after_a_valid_token(
    apns: FakeAPNs, client_ssl: Callable[[], ssl.SSLContext], signer: Signer
) -> None:
    raw = await RawClient.connect(apns, client_ssl())
    try:
        initial = await raw.next(h2.events.RemoteSettingsChanged)
        limit = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
        assert initial.changed_settings[limit].new_value == 1

        raw.request(apns_headers(signer), alert())
        await raw.flush()
        raised = await raw.next(h2.events.RemoteSettingsChanged)
        answer = await raw.next(h2.events.ResponseReceived)

        assert raised.changed_settings[limit].new_value == 1000
        assert raw.history.index(raised) < raw.history.index(answer)
        assert dict(answer.headers or [])[b":status"] == b"200"
    finally:
        await raw.close()


async def test_a_stream_reset_by_the_client_does_not_disturb_the_connection(
    apns: FakeAPNs, client_ssl: Callable[[], ssl.SSLContext], signer: Signer
) -> None:
    raw = await RawClient.connect(apns, client_ssl())
    try:
        abandoned = raw.request(apns_headers(signer), alert(), end=False)
        raw.h2.reset_stream(abandoned)
        raw.request(apns_headers(signer), alert())
        await raw.flush()

        answer = await raw.next(h2.events.ResponseReceived)

        assert dict(answer.headers or [])[b":status"] == b"200"
        assert len(apns.received) == 1
    finally:
        await raw.close()


async def test_client_offering_only_http1_is_refused(
    apns: FakeAPNs, client_ssl: Callable[[], ssl.SSLContext], signer: Signer
) -> None:
    async with httpx.AsyncClient(http2=False, verify=client_ssl()) as http1:
        with pytest.raises(httpx.TransportError):
            await push(http1, apns, apns_headers(signer))
    assert apns.received == []


async def test_stop_sends_goaway_with_shutdown_reason(
    apns: FakeAPNs, client_ssl: Callable[[], ssl.SSLContext]
) -> None:
    raw = await RawClient.connect(apns, client_ssl())
    try:
        await raw.next(h2.events.RemoteSettingsChanged)
        stopping = asyncio.create_task(apns.stop())
        goaway = await raw.next(h2.events.ConnectionTerminated)
        assert goaway.additional_data == b'{"reason":"Shutdown"}'
    finally:
        await raw.close()
    await stopping
    assert apns.open_connections == 0


# -- provider tokens -------------------------------------------------------------------------


async def test_new_token_sooner_than_20_minutes_on_one_connection_is_429(
    apns: FakeAPNs,
    client: httpx.AsyncClient,
    client_ssl: Callable[[], ssl.SSLContext],
    signer: Signer,
) -> None:
    first = apns_headers(signer)
    churned = apns_headers(signer, authorization=f"bearer {signer.token(iat=int(time.time()))}")

    assert (await push(client, apns, first)).status_code == 200
    rejected = await push(client, apns, churned)
    assert (rejected.status_code, reason(rejected)) == (429, "TooManyProviderTokenUpdates")
    assert (await push(client, apns, first)).status_code == 200

    async with httpx.AsyncClient(http2=True, verify=client_ssl()) as fresh_connection:
        assert (await push(fresh_connection, apns, churned)).status_code == 200


async def test_token_refreshed_after_the_window_is_accepted(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    now = int(time.time())
    old = apns_headers(signer, authorization=f"bearer {signer.token(iat=now - 1500)}")
    new = apns_headers(signer, authorization=f"bearer {signer.token(iat=now - 200)}")

    assert (await push(client, apns, old)).status_code == 200
    assert (await push(client, apns, new)).status_code == 200


async def test_token_refresh_window_is_configurable(
    make_apns: Callable[..., contextlib.AbstractAsyncContextManager[FakeAPNs]],
    client_ssl: Callable[[], ssl.SSLContext],
    signer: Signer,
) -> None:
    now = int(time.time())
    async with (
        make_apns(min_token_refresh_s=1) as fake,
        httpx.AsyncClient(http2=True, verify=client_ssl()) as client,
    ):
        for iat in (now - 10, now - 5):
            headers = apns_headers(signer, authorization=f"bearer {signer.token(iat=iat)}")
            assert (await push(client, fake, headers)).status_code == 200


async def test_a_second_team_on_one_connection_is_rejected(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = Signer(other_key, key_id="OTHERKEY01", team_id="OTHERTEAM1")
    apns.add_key(
        team_id=other.team_id,
        key_id=other.key_id,
        public_key_pem=other.public_pem,
        topics=["com.other.app"],
    )

    assert (await push(client, apns, apns_headers(signer))).status_code == 200
    rejected = await push(client, apns, apns_headers(other, apns_topic="com.other.app"))

    assert (rejected.status_code, reason(rejected)) == (403, "InvalidProviderToken")


# -- every documented error ------------------------------------------------------------------


def _hs256(signer: Signer) -> str:
    return jwt.encode(
        {"iss": TEAM_ID, "iat": int(time.time())},
        "a-shared-secret-long-enough-for-hs256",
        algorithm="HS256",
        headers={"kid": KEY_ID},
    )


ERROR_CASES: list[tuple[str, Callable[[Signer], dict[str, Any]], int, str]] = [
    (
        "missing provider token",
        lambda s: {"headers": apns_headers(s, authorization=None)},
        403,
        "MissingProviderToken",
    ),
    (
        "bad signature",
        lambda s: {
            "headers": apns_headers(
                s,
                authorization="bearer "
                + s.token(private_key=ec.generate_private_key(ec.SECP256R1())),
            )
        },
        403,
        "InvalidProviderToken",
    ),
    (
        "unknown kid",
        lambda s: {
            "headers": apns_headers(s, authorization="bearer " + s.token(key_id="UNKNOWNKEY"))
        },
        403,
        "InvalidProviderToken",
    ),
    (
        "iss of another team",
        lambda s: {
            "headers": apns_headers(s, authorization="bearer " + s.token(team_id="OTHERTEAM1"))
        },
        403,
        "InvalidProviderToken",
    ),
    (
        "not ES256",
        lambda s: {"headers": apns_headers(s, authorization="bearer " + _hs256(s))},
        403,
        "InvalidProviderToken",
    ),
    (
        "not a JWT",
        lambda s: {"headers": apns_headers(s, authorization="bearer abc.def")},
        403,
        "InvalidProviderToken",
    ),
    (
        "iat in the future",
        lambda s: {
            "headers": apns_headers(
                s, authorization="bearer " + s.token(iat=int(time.time()) + 600)
            )
        },
        403,
        "InvalidProviderToken",
    ),
    (
        "expired token",
        lambda s: {
            "headers": apns_headers(
                s, authorization="bearer " + s.token(iat=int(time.time()) - 3601)
            )
        },
        403,
        "ExpiredProviderToken",
    ),
    ("missing topic", lambda s: {"headers": apns_headers(s, apns_topic=None)}, 400, "MissingTopic"),
    (
        "disallowed topic",
        lambda s: {"headers": apns_headers(s, apns_topic="com.other.app")},
        400,
        "TopicDisallowed",
    ),
    (
        "malformed topic",
        lambda s: {"headers": apns_headers(s, apns_topic="not a topic!")},
        400,
        "BadTopic",
    ),
    (
        "invalid push type",
        lambda s: {"headers": apns_headers(s, apns_push_type="sms")},
        400,
        "InvalidPushType",
    ),
    (
        "voip push type to the plain bundle topic",
        lambda s: {"headers": apns_headers(s, apns_push_type="voip")},
        400,
        "DeviceTokenNotForTopic",
    ),
    (
        "voip topic with alert push type",
        lambda s: {"headers": apns_headers(s, apns_topic=f"{BUNDLE}.voip")},
        400,
        "InvalidPushType",
    ),
    ("bad priority", lambda s: {"headers": apns_headers(s, apns_priority="7")}, 400, "BadPriority"),
    (
        "bad expiration",
        lambda s: {"headers": apns_headers(s, apns_expiration="tomorrow")},
        400,
        "BadExpirationDate",
    ),
    (
        "collapse id over 64 bytes",
        lambda s: {"headers": apns_headers(s, apns_collapse_id="c" * 65)},
        400,
        "BadCollapseId",
    ),
    (
        "apns-id not a UUID",
        lambda s: {"headers": apns_headers(s, apns_id="42")},
        400,
        "BadMessageId",
    ),
    (
        "duplicate headers",
        lambda s: {"headers": [*apns_headers(s).items(), ("apns-topic", BUNDLE)]},
        400,
        "DuplicateHeaders",
    ),
    (
        "non-hex device token",
        lambda s: {"headers": apns_headers(s), "token": "zz" * 32},
        400,
        "BadDeviceToken",
    ),
    (
        "short device token",
        lambda s: {"headers": apns_headers(s), "token": "ab" * 16},
        400,
        "BadDeviceToken",
    ),
    (
        "missing device token",
        lambda s: {"headers": apns_headers(s), "path": "/3/device/"},
        400,
        "MissingDeviceToken",
    ),
    (
        "bad path",
        lambda s: {"headers": apns_headers(s), "path": f"/3/devices/{DEVICE}"},
        404,
        "BadPath",
    ),
    (
        "wrong method",
        lambda s: {"headers": apns_headers(s), "method": "PUT"},
        405,
        "MethodNotAllowed",
    ),
    ("empty payload", lambda s: {"headers": apns_headers(s), "body": b""}, 400, "PayloadEmpty"),
    (
        "payload without aps",
        lambda s: {"headers": apns_headers(s), "body": b'{"a":1}'},
        400,
        "PayloadEmpty",
    ),
    (
        "payload not JSON",
        lambda s: {"headers": apns_headers(s), "body": b"hello"},
        400,
        "PayloadEmpty",
    ),
    (
        "payload over 4096 bytes",
        lambda s: {"headers": apns_headers(s), "body": alert(4097)},
        413,
        "PayloadTooLarge",
    ),
    (
        "voip payload over 5120 bytes",
        lambda s: {
            "headers": apns_headers(s, apns_push_type="voip", apns_topic=f"{BUNDLE}.voip"),
            "body": alert(5121),
        },
        413,
        "PayloadTooLarge",
    ),
]


@pytest.mark.parametrize(
    ("request_of", "status", "expected_reason"),
    [pytest.param(make, status, why, id=name) for name, make, status, why in ERROR_CASES],
)
async def test_invalid_request_is_answered_with_apples_status_and_reason(
    apns: FakeAPNs,
    client: httpx.AsyncClient,
    signer: Signer,
    request_of: Callable[[Signer], dict[str, Any]],
    status: int,
    expected_reason: str,
) -> None:
    response = await push(client, apns, **request_of(signer))

    assert (response.status_code, reason(response)) == (status, expected_reason)
    assert set(response.json()) == {"reason"}
    uuid.UUID(response.headers["apns-id"])
    assert apns.received == []


async def test_unregistered_token_answers_410_with_its_timestamp(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    apns.unregister(DEVICE, 1_700_000_000_123)

    response = await push(client, apns, apns_headers(signer))

    assert response.status_code == 410
    assert response.json() == {"reason": "Unregistered", "timestamp": 1_700_000_000_123}


async def test_sandbox_tokens_starting_dead_or_bad0_fail(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    before_ms = int(time.time() * 1000)
    dead = await push(client, apns, apns_headers(signer), token="dead" + "0" * 60)
    bad = await push(client, apns, apns_headers(signer), token="bad0" + "0" * 60)

    assert dead.status_code == 410
    assert dead.json()["reason"] == "Unregistered"
    assert before_ms <= dead.json()["timestamp"] <= int(time.time() * 1000)
    assert (bad.status_code, reason(bad)) == (400, "BadDeviceToken")


async def test_scripted_failures_are_answered_in_order_then_pushes_succeed(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    scripted = [
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
        ("Shutdown", 503),
        ("DeviceTokenNotForTopic", 400),
        ("ExpiredProviderToken", 403),
        ("BadDeviceToken", 400),
    ]
    apns.fail(DEVICE, *(why for why, _ in scripted))

    answers = [await push(client, apns, apns_headers(signer)) for _ in scripted]
    other_device = await push(client, apns, apns_headers(signer), token="b2" * 32)
    after = await push(client, apns, apns_headers(signer))

    assert [(r.status_code, reason(r)) for r in answers] == [(s, w) for w, s in scripted]
    assert other_device.status_code == 200
    assert after.status_code == 200
    assert [r.token for r in apns.received] == ["b2" * 32, DEVICE]


async def test_fail_refuses_an_undocumented_reason(apns: FakeAPNs) -> None:
    with pytest.raises(ValueError, match="NoSuchReason"):
        apns.fail(DEVICE, "NoSuchReason")


async def test_clear_forgets_pushes_and_scripts(
    apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    assert (await push(client, apns, apns_headers(signer))).status_code == 200
    apns.fail(DEVICE, "InternalServerError")
    apns.unregister("c3" * 32, 1)

    apns.clear()

    assert apns.received == []
    assert (await push(client, apns, apns_headers(signer))).status_code == 200
    assert (await push(client, apns, apns_headers(signer), token="c3" * 32)).status_code == 200


# -- certificate-based connections ---------------------------------------------------------


@pytest.fixture(scope="module")
def push_ca() -> PushCertificates:
    return PushCertificates()


@pytest.fixture
def cert_ssl(
    client_ssl: Callable[[], ssl.SSLContext], tmp_path: Path
) -> Callable[[str], ssl.SSLContext]:
    """A client context presenting this certificate-and-key PEM."""

    def make(pem: str) -> ssl.SSLContext:
        context = client_ssl()
        path = tmp_path / f"client-{uuid.uuid4().hex}.pem"
        path.write_text(pem)
        context.load_cert_chain(path)
        return context

    return make


@pytest.fixture
async def cert_apns(
    make_apns: Callable[..., contextlib.AbstractAsyncContextManager[FakeAPNs]],
    push_ca: PushCertificates,
) -> AsyncIterator[FakeAPNs]:
    async with make_apns(environment="production") as fake:
        fake.trust_client_certificates(push_ca.ca_pem)
        yield fake


async def _refusal(fake: FakeAPNs, context: ssl.SSLContext) -> str:
    """The TLS alert the fake ends this connection's handshake with."""
    raw: RawClient | None = None
    try:
        raw = await RawClient.connect(fake, context)  # TLS 1.3: the alert comes after
        await raw.next(h2.events.RemoteSettingsChanged)
    except ssl.SSLError as exc:
        return str(exc.reason)
    finally:
        if raw is not None:
            await raw.close()
    raise AssertionError("the handshake was not refused")


async def test_a_trusted_client_certificate_authenticates_its_connection_without_a_token(
    cert_apns: FakeAPNs, push_ca: PushCertificates,
    cert_ssl: Callable[[str], ssl.SSLContext], signer: Signer,
) -> None:
    context = cert_ssl(push_ca.issue(BUNDLE))
    async with httpx.AsyncClient(http2=True, verify=context) as http:
        response = await push(http, cert_apns, apns_headers(signer, authorization=None))
        # Apple ignores a provider token on a certificate connection, even a forged one.
        forged = signer.token(private_key=ec.generate_private_key(ec.SECP256R1()))
        ignored = await push(http, cert_apns, apns_headers(signer,
                                                           authorization=f"bearer {forged}"))
    assert (response.status_code, ignored.status_code) == (200, 200)
    assert len({p.sender for p in cert_apns.received}) == 1
    assert len(cert_apns.received[0].sender) == 64  # the certificate's SHA-256, hex


async def test_a_certificate_connection_may_open_1000_streams_from_the_start(
    cert_apns: FakeAPNs, push_ca: PushCertificates, cert_ssl: Callable[[str], ssl.SSLContext]
) -> None:
    raw = await RawClient.connect(cert_apns, cert_ssl(push_ca.issue(BUNDLE)))
    try:
        initial = await raw.next(h2.events.RemoteSettingsChanged)
        limit = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
        assert initial.changed_settings[limit].new_value == 1000
    finally:
        await raw.close()


async def test_without_apns_topic_a_certificate_connection_pushes_to_its_bundle(
    cert_apns: FakeAPNs, push_ca: PushCertificates,
    cert_ssl: Callable[[str], ssl.SSLContext], signer: Signer,
) -> None:
    async with httpx.AsyncClient(http2=True, verify=cert_ssl(push_ca.issue(BUNDLE))) as http:
        response = await push(http, cert_apns,
                              apns_headers(signer, authorization=None, apns_topic=None))
    assert response.status_code == 200
    assert [p.app for p in cert_apns.received] == [BUNDLE]


@pytest.mark.parametrize(("uid", "topic", "status", "why"), [
    (BUNDLE, "com.other.app", 400, "TopicDisallowed"),
    (BUNDLE, "not a topic!", 400, "BadTopic"),
    (None, BUNDLE, 403, "BadCertificate"),
])
async def test_a_certificate_connection_is_refused_topics_its_certificate_does_not_name(
    cert_apns: FakeAPNs, push_ca: PushCertificates,
    cert_ssl: Callable[[str], ssl.SSLContext], signer: Signer,
    uid: str | None, topic: str, status: int, why: str,
) -> None:
    async with httpx.AsyncClient(http2=True, verify=cert_ssl(push_ca.issue(uid))) as http:
        response = await push(http, cert_apns,
                              apns_headers(signer, authorization=None, apns_topic=topic))
    assert (response.status_code, reason(response)) == (status, why)
    assert cert_apns.received == []


async def test_a_certificate_for_the_other_environment_is_bad_certificate_environment(
    cert_apns: FakeAPNs, push_ca: PushCertificates,
    cert_ssl: Callable[[str], ssl.SSLContext], signer: Signer,
) -> None:
    development = push_ca.issue(BUNDLE, environments=["sandbox"])
    async with httpx.AsyncClient(http2=True, verify=cert_ssl(development)) as http:
        response = await push(http, cert_apns, apns_headers(signer, authorization=None))
    assert (response.status_code, reason(response)) == (403, "BadCertificateEnvironment")


async def test_a_certificate_another_ca_issued_fails_the_handshake_with_unknown_ca(
    cert_apns: FakeAPNs, cert_ssl: Callable[[str], ssl.SSLContext]
) -> None:
    stranger = PushCertificates("Not Apple")
    alert = await _refusal(cert_apns, cert_ssl(stranger.issue(BUNDLE)))
    assert alert == "TLSV1_ALERT_UNKNOWN_CA"
    assert cert_apns.handshakes_refused == 1 and cert_apns.connections_opened == 0


async def test_an_expired_certificate_fails_the_handshake_with_certificate_expired(
    cert_apns: FakeAPNs, push_ca: PushCertificates, cert_ssl: Callable[[str], ssl.SSLContext]
) -> None:
    past = datetime.now(UTC) - timedelta(days=30)
    expired = push_ca.issue(BUNDLE, valid_from=past - timedelta(days=365), valid_until=past)
    assert await _refusal(cert_apns, cert_ssl(expired)) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


async def test_token_connections_still_work_where_client_certificates_are_trusted(
    cert_apns: FakeAPNs, client: httpx.AsyncClient, signer: Signer
) -> None:
    assert (await push(client, cert_apns, apns_headers(signer))).status_code == 200
    missing = await push(client, cert_apns, apns_headers(signer, apns_topic=None))
    assert (missing.status_code, reason(missing)) == (400, "MissingTopic")


async def test_required_client_certificates_refuse_a_connection_without_one(
    cert_apns: FakeAPNs, push_ca: PushCertificates, client_ssl: Callable[[], ssl.SSLContext]
) -> None:
    cert_apns.trust_client_certificates(push_ca.ca_pem, required=True)
    assert await _refusal(cert_apns, client_ssl()) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


@pytest.mark.parametrize(("presented", "alert"), [
    ("none", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    ("another CA's", "TLSV1_ALERT_UNKNOWN_CA"),
])
async def test_the_http2_pool_names_the_alert_a_refused_handshake_ended_with(
    cert_apns: FakeAPNs, cert_ssl: Callable[[str], ssl.SSLContext],
    client_ssl: Callable[[], ssl.SSLContext], push_ca: PushCertificates, presented: str,
    alert: str,
) -> None:
    cert_apns.trust_client_certificates(push_ca.ca_pem, required=True)
    context = (client_ssl() if presented == "none"
               else cert_ssl(PushCertificates("Not Apple").issue(BUNDLE)))
    async with HTTP2Pool(cert_apns.base_url, context) as pool:
        with pytest.raises(ConnectError) as refused:
            await pool.request("POST", f"/3/device/{'ab' * 32}", [], b"{}", timeout_s=10)
    assert refused.value.tls_alert == alert
