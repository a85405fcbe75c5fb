"""The FCM fake answers as Google does, driven by real clients over loopback.

Access tokens come from google-auth's own service-account flow (the JWT-bearer grant the
gateway uses); messages go out with aiohttp, some of them built by pyfcm.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import service_account
from pyfcm import FCMNotification

from fakes.fcm import (
    FCM_SCOPE,
    GOOGLE_TOKEN_URI,
    JWT_BEARER_GRANT,
    MAX_MESSAGE_BYTES,
    MAX_TOPIC_MESSAGE_BYTES,
    FakeFCM,
)

PROJECT = "demo-project"
OTHER_PROJECT = "other-project"
DEVICE = "dGVzdC1kZXZpY2UtdG9rZW4"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class Account:
    project_id: str
    client_email: str
    key_id: str
    private_pem: str
    public_pem: str


@functools.cache
def _key_pair(slot: int) -> tuple[str, str]:
    """(private PEM, public PEM); cached because RSA generation is slow."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


def make_account(project_id: str, slot: int = 0) -> Account:
    private, public = _key_pair(slot)
    return Account(
        project_id=project_id,
        client_email=f"gateway-{slot}@{project_id}.iam.gserviceaccount.com",
        key_id=f"key-{slot}",
        private_pem=private,
        public_pem=public,
    )


def register(fake: FakeFCM, account: Account) -> Account:
    fake.add_service_account(
        project_id=account.project_id,
        client_email=account.client_email,
        public_key_pem=account.public_pem,
        private_key_id=account.key_id,
    )
    return account


def credentials(account: Account, token_uri: str) -> service_account.Credentials:
    info = {
        "type": "service_account",
        "project_id": account.project_id,
        "private_key_id": account.key_id,
        "private_key": account.private_pem,
        "client_email": account.client_email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    creds: service_account.Credentials = service_account.Credentials.from_service_account_info(
        info, scopes=[FCM_SCOPE]
    )
    return creds


async def refresh(creds: service_account.Credentials) -> str:
    """google-auth's synchronous refresh, off the event loop that serves the fake."""
    transport = google.auth.transport.requests.Request()
    # Loopback only: no proxy from the environment may stand in between.
    transport.session.trust_env = False
    try:
        await asyncio.to_thread(creds.refresh, transport)
    finally:
        transport.session.close()
    token = creds.token
    assert isinstance(token, str)
    return token


def assertion(
    account: Account,
    *,
    iat_offset_s: int = 0,
    lifetime_s: int = 3600,
    scope: str | None = FCM_SCOPE,
    audience: str = GOOGLE_TOKEN_URI,
    issuer: str | None = None,
    private_pem: str | None = None,
    algorithm: str = "RS256",
) -> str:
    now = int(time.time()) + iat_offset_s
    claims: dict[str, Any] = {
        "iss": issuer or account.client_email,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
    }
    if scope is not None:
        claims["scope"] = scope
    key = private_pem or account.private_pem
    if algorithm == "HS256":
        key = "a-shared-secret-that-is-long-enough-for-hs256"
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": account.key_id})


@pytest.fixture
async def fake() -> AsyncIterator[FakeFCM]:
    server = FakeFCM()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def account(fake: FakeFCM) -> Account:
    return register(fake, make_account(PROJECT))


@pytest.fixture
async def access_token(fake: FakeFCM, account: Account) -> str:
    return await refresh(credentials(account, fake.token_url))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.json()["error"]
        return error

    def detail(self, kind: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [d for d in self.error["details"] if d["@type"] == kind]
        assert len(found) == 1, self.error
        return found[0]


async def send(
    http: aiohttp.ClientSession,
    fake: FakeFCM,
    token: str | None,
    body: Any,
    project_id: str = PROJECT,
) -> Answer:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(fake.send_url(project_id), data=data, headers=headers) as resp:
        return Answer(resp.status, dict(resp.headers), await resp.text())


async def grant(http: aiohttp.ClientSession, fake: FakeFCM, **form: str) -> Answer:
    async with http.post(fake.token_url, data=form) as resp:
        return Answer(resp.status, dict(resp.headers), await resp.text())


def to_device(token: str = DEVICE, **fields: Any) -> dict[str, Any]:
    return {"message": {"token": token, "notification": {"title": "Hi", "body": "there"}, **fields}}


def padded(limit: int, **target: str) -> dict[str, Any]:
    """A message whose measured size (compact JSON without its target) is ``limit`` bytes."""
    overhead = len(json.dumps({"data": {"k": ""}}, separators=(",", ":")))
    return {"message": {**target, "data": {"k": "x" * (limit - overhead)}}}


def assert_invalid_argument(answer: Answer, field: str, description: str | None = None) -> None:
    assert answer.status == 400
    assert answer.error["status"] == "INVALID_ARGUMENT"
    violations = answer.detail(BAD_REQUEST)["fieldViolations"]
    assert [v.get("field", "") for v in violations] == [field]
    if description is not None:
        assert violations[0]["description"] == description


# --- the token endpoint -----------------------------------------------------------------


async def test_google_auth_service_account_mints_a_token_that_sends_and_is_recorded(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    creds = credentials(account, fake.token_url)
    token = await refresh(creds)
    assert token.startswith("ya29.")
    assert fake.token_requests == 1
    assert creds.expiry is not None and creds.valid
    answer = await send(http, fake, token, to_device(data={"order": "42"}))
    assert answer.status == 200
    name = answer.json()["name"]
    assert name.startswith(f"projects/{PROJECT}/messages/")
    (push,) = fake.received
    assert (push.provider, push.app, push.token) == ("fcm", PROJECT, DEVICE)
    assert push.payload == to_device(data={"order": "42"})["message"]
    assert push.headers["authorization"] == f"Bearer {token}"
    assert push.headers["content-type"] == "application/json"
    assert abs(push.received_at - time.time()) < 5


async def test_token_answer_is_googles_shape_with_the_configured_lifetime(
    http: aiohttp.ClientSession,
) -> None:
    server = FakeFCM(token_ttl_s=120)
    await server.start()
    try:
        account = register(server, make_account(PROJECT))
        answer = await grant(
            http, server, grant_type=JWT_BEARER_GRANT, assertion=assertion(account)
        )
    finally:
        await server.stop()
    assert answer.status == 200
    body = answer.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["expires_in"] == 120 and body["token_type"] == "Bearer"


async def test_assertion_signed_by_an_unregistered_key_is_invalid_grant_through_google_auth(
    fake: FakeFCM,
) -> None:
    registered = register(fake, make_account(PROJECT, slot=0))
    impostor = Account(**{**registered.__dict__, "private_pem": _key_pair(1)[0]})
    with pytest.raises(google.auth.exceptions.RefreshError, match="Invalid JWT Signature"):
        await refresh(credentials(impostor, fake.token_url))
    assert fake.token_requests == 0


@pytest.mark.parametrize("forgery", ["signed-by-another-key", "hs256-not-rs256"])
async def test_bad_signature_is_invalid_grant(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession, forgery: str
) -> None:
    if forgery == "signed-by-another-key":
        signed = assertion(account, private_pem=_key_pair(1)[0])
    else:
        signed = assertion(account, algorithm="HS256")
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=signed)
    assert answer.status == 400
    assert answer.json() == {
        "error": "invalid_grant", "error_description": "Invalid JWT Signature."
    }


@pytest.mark.parametrize(
    ("iat_offset_s", "lifetime_s"),
    [
        pytest.param(-7200, 3600, id="expired"),
        pytest.param(120, 3600, id="issued-in-the-future"),
        pytest.param(0, 3601, id="longer-than-an-hour"),
    ],
)
async def test_assertion_outside_a_short_lived_timeframe_is_invalid_grant(
    fake: FakeFCM,
    account: Account,
    http: aiohttp.ClientSession,
    iat_offset_s: int,
    lifetime_s: int,
) -> None:
    signed = assertion(account, iat_offset_s=iat_offset_s, lifetime_s=lifetime_s)
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=signed)
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "short-lived token" in answer.json()["error_description"]


async def test_assertion_issued_within_the_clock_skew_is_accepted(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    signed = assertion(account, iat_offset_s=30)
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=signed)
    assert answer.status == 200


async def test_unknown_issuer_is_invalid_grant_account_not_found(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    signed = assertion(account, issuer="stranger@elsewhere.iam.gserviceaccount.com")
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=signed)
    assert answer.status == 400
    assert answer.json() == {
        "error": "invalid_grant", "error_description": "Invalid grant: account not found"
    }


@pytest.mark.parametrize(
    ("scope", "description"),
    [
        pytest.param(
            "https://www.googleapis.com/auth/userinfo.email",
            "Invalid OAuth scope or ID token audience provided.",
            id="wrong-scope",
        ),
        pytest.param(None, "Empty or missing scope not allowed.", id="no-scope"),
    ],
)
async def test_assertion_without_the_messaging_scope_is_invalid_scope(
    fake: FakeFCM,
    account: Account,
    http: aiohttp.ClientSession,
    scope: str | None,
    description: str,
) -> None:
    signed = assertion(account, scope=scope)
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=signed)
    assert answer.status == 400
    assert answer.json() == {"error": "invalid_scope", "error_description": description}


async def test_wrong_audience_is_invalid_grant_and_the_fakes_own_token_url_is_accepted(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    wrong = assertion(account, audience="https://example.com/token")
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=wrong)
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "audience" in answer.json()["error_description"]
    own = assertion(account, audience=fake.token_url)
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion=own)
    assert answer.status == 200


async def test_other_grant_types_are_unsupported_grant_type(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    answer = await grant(http, fake, grant_type="client_credentials", assertion=assertion(account))
    assert answer.status == 400
    assert answer.json()["error"] == "unsupported_grant_type"


async def test_malformed_assertion_is_invalid_grant(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    answer = await grant(http, fake, grant_type=JWT_BEARER_GRANT, assertion="not.a.jwt")
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_grant"


# --- authentication and authorisation on send ---------------------------------------------


async def test_send_without_credentials_is_401_unauthenticated(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, None, to_device())
    assert answer.status == 401
    assert answer.error["status"] == "UNAUTHENTICATED"
    assert answer.error["code"] == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert fake.received == []


async def test_send_with_an_unknown_access_token_is_401_invalid_credentials(
    fake: FakeFCM, account: Account, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, "ya29.made-up", to_device())
    assert answer.status == 401
    assert answer.error["status"] == "UNAUTHENTICATED"
    assert answer.error["message"].startswith("Request had invalid authentication credentials.")


async def test_expire_access_tokens_makes_sends_401_until_a_new_token_is_minted(
    fake: FakeFCM, account: Account, access_token: str, http: aiohttp.ClientSession
) -> None:
    assert (await send(http, fake, access_token, to_device())).status == 200
    fake.expire_access_tokens()
    answer = await send(http, fake, access_token, to_device())
    assert answer.status == 401
    assert answer.error["status"] == "UNAUTHENTICATED"
    assert answer.error["message"].startswith("Request had invalid authentication credentials.")
    assert not any(d["@type"] == FCM_ERROR for d in answer.error.get("details", []))
    fresh = await refresh(credentials(account, fake.token_url))
    assert (await send(http, fake, fresh, to_device())).status == 200
    assert fake.token_requests == 2 and len(fake.received) == 2


async def test_access_token_of_another_project_is_permission_denied_not_sender_id_mismatch(
    fake: FakeFCM, http: aiohttp.ClientSession
) -> None:
    other = register(fake, make_account(OTHER_PROJECT, slot=1))
    token = await refresh(credentials(other, fake.token_url))
    answer = await send(http, fake, token, to_device(), project_id=PROJECT)
    assert answer.status == 403
    assert answer.error["status"] == "PERMISSION_DENIED"
    assert not any(d["@type"] == FCM_ERROR for d in answer.error["details"])
    assert (await send(http, fake, token, to_device(), project_id=OTHER_PROJECT)).status == 200


# --- message validation -------------------------------------------------------------------


async def test_pyfcm_built_message_is_accepted_as_sent(
    fake: FakeFCM, account: Account, access_token: str, http: aiohttp.ClientSession
) -> None:
    creds = credentials(account, fake.token_url)
    class LocalFCM(FCMNotification):  # type: ignore[misc]  # pyfcm < 2.1 reads it in __init__
        FCM_END_POINT_BASE = f"{fake.base_url}/v1/projects"

    fcm = LocalFCM(credentials=creds, project_id=PROJECT)
    assert fcm.fcm_end_point == fake.send_url(PROJECT)
    body = fcm.parse_payload(
        fcm_token=DEVICE,
        notification_title="Order shipped",
        notification_body="It is on its way",
        data_payload={"order_id": "42", "kind": "shipping"},
        android_config={
            "priority": "high",
            "ttl": "3600s",
            "collapse_key": "orders",
            "notification": {"channel_id": "orders", "sound": "default"},
        },
        apns_config={
            "headers": {"apns-priority": "10", "apns-push-type": "alert"},
            "payload": {"aps": {"badge": 1, "sound": "default"}},
        },
    )
    assert isinstance(body, bytes)
    answer = await send(http, fake, access_token, body)
    assert answer.status == 200, answer.text
    (push,) = fake.received
    assert push.payload == json.loads(body)["message"]
    assert push.payload["android"]["priority"] == "high"


async def test_unknown_top_level_field_is_rejected_with_a_bad_request_violation(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, {**to_device(), "dry_run": True})
    expected = 'Invalid JSON payload received. Unknown name "dry_run": Cannot find field.'
    assert answer.error["message"] == expected
    assert_invalid_argument(answer, "", expected)
    assert [d["@type"] for d in answer.error["details"]] == [BAD_REQUEST]


async def test_unknown_message_field_is_rejected_as_google_words_it(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, to_device(x=1))
    expected = "Invalid JSON payload received. Unknown name \"x\" at 'message': Cannot find field."
    assert answer.error["message"] == expected
    assert_invalid_argument(answer, "message", expected)
    assert fake.received == []


async def test_unknown_notification_field_and_non_string_title_are_rejected(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, to_device(notification={"subtitle": "x"}))
    assert_invalid_argument(answer, "message.notification")
    answer = await send(http, fake, access_token, to_device(notification={"title": 5}))
    assert_invalid_argument(
        answer, "message.notification.title",
        "Invalid value at 'message.notification.title' (TYPE_STRING), 5",
    )


async def test_non_string_data_value_is_invalid_argument_naming_the_entry(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, to_device(data={"a": "1", "b": 2}))
    expected = "Invalid value at 'message.data[1].value' (TYPE_STRING), 2"
    assert answer.error["message"] == expected
    assert_invalid_argument(answer, "message.data[1].value", expected)


@pytest.mark.parametrize("key", ["from", "message_type", "google.sent_time", "gcm.n.e", "googleX"])
async def test_reserved_data_key_is_invalid_argument(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession, key: str
) -> None:
    answer = await send(http, fake, access_token, to_device(data={"ok": "1", key: "x"}))
    assert_invalid_argument(answer, "message.data")
    assert answer.detail(FCM_ERROR)["errorCode"] == "INVALID_ARGUMENT"
    assert key in answer.detail(BAD_REQUEST)["fieldViolations"][0]["description"]


async def test_message_over_4096_bytes_is_too_big_and_4096_is_accepted(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, padded(MAX_MESSAGE_BYTES, token=DEVICE))
    assert answer.status == 200, answer.text
    answer = await send(http, fake, access_token, padded(MAX_MESSAGE_BYTES + 1, token=DEVICE))
    assert answer.error["message"] == "Message is too big"
    assert_invalid_argument(answer, "message")
    assert answer.detail(FCM_ERROR)["errorCode"] == "INVALID_ARGUMENT"
    assert len(fake.received) == 1


async def test_one_message_fanned_out_to_many_tokens_is_checked_and_recorded_per_token(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    # The fake checks a message's shape once per fan-out; every token still gets its own
    # answer, its own script and its own record.
    tokens = [f"fan-out-{i}:APA91b" + "x" * 40 for i in range(3)]
    fake.fail(tokens[2], "UNREGISTERED")
    answers = [await send(http, fake, access_token, to_device(token)) for token in tokens]
    assert [a.status for a in answers] == [200, 200, 404]
    assert [p.token for p in fake.received] == tokens[:2]
    assert [p.payload for p in fake.received] == [to_device(t)["message"] for t in tokens[:2]]


async def test_a_message_differing_from_an_accepted_one_beyond_its_token_is_checked_anew(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    assert (await send(http, fake, access_token, to_device("first"))).status == 200
    wrong_type = to_device("second")
    wrong_type["message"]["notification"]["title"] = 5
    assert_invalid_argument(await send(http, fake, access_token, wrong_type),
                            "message.notification.title")
    assert (await send(http, fake, access_token,
                       padded(MAX_MESSAGE_BYTES, token="third"))).status == 200
    too_big = await send(http, fake, access_token, padded(MAX_MESSAGE_BYTES + 1, token="fourth"))
    assert too_big.error["message"] == "Message is too big"
    assert [p.token for p in fake.received] == ["first", "third"]


async def test_topic_message_limit_is_2048_bytes(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, padded(MAX_TOPIC_MESSAGE_BYTES, topic="news"))
    assert answer.status == 200, answer.text
    assert fake.received[0].token == ""
    answer = await send(
        http, fake, access_token, padded(MAX_TOPIC_MESSAGE_BYTES + 1, topic="news")
    )
    assert answer.status == 400
    assert answer.error["message"] == "Message is too big"


async def test_two_targets_are_rejected_by_the_oneof_and_none_is_recipient_not_set(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, to_device(topic="news"))
    expected = (
        "Invalid JSON payload received. Oneof field 'target' is already set. Cannot set 'topic'"
    )
    assert_invalid_argument(answer, "message", expected)
    answer = await send(http, fake, access_token, {"message": {"data": {"a": "b"}}})
    assert answer.status == 400
    assert answer.error["message"] == "Recipient of the message is not set."
    assert answer.detail(FCM_ERROR)["errorCode"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("condition", "accepted"),
    [
        ("'a' in topics && ('b' in topics || !('c' in topics))", True),
        ("'a' in topics &&", False),
        (" || ".join(f"'t{i}' in topics" for i in range(6)), False),
    ],
)
async def test_condition_grammar_and_its_five_topic_limit(
    fake: FakeFCM,
    access_token: str,
    http: aiohttp.ClientSession,
    condition: str,
    accepted: bool,
) -> None:
    answer = await send(http, fake, access_token, {"message": {"condition": condition}})
    assert (answer.status == 200) is accepted, answer.text


async def test_android_priority_is_case_insensitive_and_ttl_must_be_a_duration_string(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    for android in ({"priority": "HIGH", "ttl": "0s"}, {"priority": "normal", "ttl": "3.5s"}):
        assert (await send(http, fake, access_token, to_device(android=android))).status == 200
    answer = await send(http, fake, access_token, to_device(android={"priority": "urgent"}))
    assert_invalid_argument(answer, "message.android.priority")
    for ttl in ("3600", 3600, "1.0000000001s", "-1s"):
        answer = await send(http, fake, access_token, to_device(android={"ttl": ttl}))
        assert_invalid_argument(answer, "message.android.ttl")


async def test_apns_headers_must_be_strings_and_payload_an_object(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(
        http, fake, access_token, to_device(apns={"headers": {"apns-priority": 10}})
    )
    assert_invalid_argument(answer, "message.apns.headers[0].value")
    answer = await send(http, fake, access_token, to_device(apns={"payload": "aps"}))
    assert_invalid_argument(answer, "message.apns.payload")
    webpush = {"headers": {"TTL": "60"}, "notification": {"title": "t"}}
    answer = await send(http, fake, access_token, to_device(webpush=webpush,
                                                             fcm_options={"analytics_label": "l"}))
    assert answer.status == 200, answer.text


async def test_lower_camel_case_field_names_are_accepted_like_snake_case(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    body = to_device(android={"collapseKey": "c", "notification": {"channelId": "x"}},
                     fcmOptions={"analyticsLabel": "l"})
    answer = await send(http, fake, access_token, body)
    assert answer.status == 200, answer.text


async def test_validate_only_answers_200_without_recording(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    for flag in ("validate_only", "validateOnly"):
        answer = await send(http, fake, access_token, {**to_device(), flag: True})
        assert answer.status == 200
        assert answer.json() == {"name": f"projects/{PROJECT}/messages/fake_message_id"}
    assert fake.received == []


async def test_body_that_is_not_json_is_invalid_argument(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    answer = await send(http, fake, access_token, b"{not json")
    assert answer.status == 400
    assert answer.error["status"] == "INVALID_ARGUMENT"
    assert answer.error["message"].startswith("Invalid JSON payload received.")


# --- device-token errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status", "status"),
    [
        ("UNREGISTERED", 404, "NOT_FOUND"),
        ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED"),
        ("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED"),
        ("UNAVAILABLE", 503, "UNAVAILABLE"),
        ("INTERNAL", 500, "INTERNAL"),
        ("THIRD_PARTY_AUTH_ERROR", 401, "UNAUTHENTICATED"),
    ],
)
async def test_scripted_fcm_error_answers_once_in_googles_shape(
    fake: FakeFCM,
    access_token: str,
    http: aiohttp.ClientSession,
    code: str,
    http_status: int,
    status: str,
) -> None:
    fake.fail(DEVICE, code)
    answer = await send(http, fake, access_token, to_device())
    assert answer.status == http_status
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.error["code"] == http_status and answer.error["status"] == status
    assert answer.error["details"] == [{"@type": FCM_ERROR, "errorCode": code}]
    assert (answer.headers.get("Retry-After") == "60") is (code == "QUOTA_EXCEEDED")
    assert fake.received == []
    assert (await send(http, fake, access_token, to_device())).status == 200


async def test_scripted_invalid_argument_carries_both_details_in_varying_order(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    fake.fail(DEVICE, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    orders = []
    for _ in range(2):
        answer = await send(http, fake, access_token, to_device())
        assert answer.status == 400 and answer.error["status"] == "INVALID_ARGUMENT"
        assert answer.detail(FCM_ERROR)["errorCode"] == "INVALID_ARGUMENT"
        assert answer.detail(BAD_REQUEST)["fieldViolations"] == [
            {"field": "message.token", "description": "Invalid registration token"}
        ]
        orders.append(tuple(d["@type"] for d in answer.error["details"]))
    assert set(orders) == {(FCM_ERROR, BAD_REQUEST), (BAD_REQUEST, FCM_ERROR)}


async def test_scripted_invalid_argument_without_details_has_no_details_key(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    fake.fail(DEVICE, "INVALID_ARGUMENT_NO_DETAILS")
    answer = await send(http, fake, access_token, to_device())
    assert answer.status == 400
    assert answer.json() == {"error": {
        "code": 400, "message": "Request contains an invalid argument.",
        "status": "INVALID_ARGUMENT",
    }}


async def test_scripted_html_502_is_an_html_page_not_json(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    fake.fail(DEVICE, "HTML_502")
    answer = await send(http, fake, access_token, to_device())
    assert answer.status == 502
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "<html" in answer.text and "502 Bad Gateway" in answer.text
    with pytest.raises(json.JSONDecodeError):
        answer.json()


async def test_scripted_unauthenticated_is_a_401_like_an_expired_access_token(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    fake.fail(DEVICE, "UNAUTHENTICATED")
    answer = await send(http, fake, access_token, to_device())
    assert answer.status == 401
    assert answer.error["status"] == "UNAUTHENTICATED"
    assert answer.error["message"].startswith("Request had invalid authentication credentials.")
    assert not any(d["@type"] == FCM_ERROR for d in answer.error["details"])
    assert (await send(http, fake, access_token, to_device())).status == 200


async def test_scripted_answers_are_consumed_in_order_then_sends_succeed(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    fake.fail(DEVICE, "UNAVAILABLE", "QUOTA_EXCEEDED")
    fake.fail(DEVICE, "INTERNAL")
    statuses = [(await send(http, fake, access_token, to_device())).status for _ in range(4)]
    assert statuses == [503, 429, 500, 200]
    other = await send(http, fake, access_token, to_device("another-device"))
    assert other.status == 200


async def test_scripted_answer_is_not_consumed_by_a_message_that_fails_validation(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    fake.fail(DEVICE, "UNREGISTERED")
    assert (await send(http, fake, access_token, to_device(x=1))).status == 400
    assert (await send(http, fake, access_token, to_device())).status == 404


@pytest.mark.parametrize(
    ("device", "http_status", "code"),
    [
        ("fcm-unregistered-1", 404, "UNREGISTERED"),
        ("fcm-mismatch", 403, "SENDER_ID_MISMATCH"),
        ("fcm-quota-abc", 429, "QUOTA_EXCEEDED"),
        ("fcm-unavailable-2", 503, "UNAVAILABLE"),
        ("fcm-internal-x", 500, "INTERNAL"),
    ],
)
async def test_sandbox_token_prefixes_always_answer_their_error(
    fake: FakeFCM,
    access_token: str,
    http: aiohttp.ClientSession,
    device: str,
    http_status: int,
    code: str,
) -> None:
    for _ in range(2):
        answer = await send(http, fake, access_token, to_device(device))
        assert answer.status == http_status
        assert answer.detail(FCM_ERROR)["errorCode"] == code
    assert fake.received == []


async def test_clear_forgets_received_messages_and_scripts(
    fake: FakeFCM, access_token: str, http: aiohttp.ClientSession
) -> None:
    assert (await send(http, fake, access_token, to_device("first"))).status == 200
    fake.fail(DEVICE, "UNREGISTERED")
    fake.clear()
    assert fake.received == []
    assert (await send(http, fake, access_token, to_device())).status == 200
    assert [p.token for p in await fake.wait_for(1)] == [DEVICE]


def test_scripting_an_unknown_error_code_is_refused() -> None:
    with pytest.raises(ValueError, match="NOT_A_CODE"):
        FakeFCM().fail(DEVICE, "NOT_A_CODE")
