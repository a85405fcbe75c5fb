"""A faithful fake of Google's FCM HTTP v1 API and its OAuth2 token endpoint.

It serves plain HTTP on loopback from the current event loop: the gateway's sandbox mode
runs it in-process, and the tests use it in place of Google. It checks what Google
checks, and answers in Google's shapes:

* ``POST /token`` is the OAuth2 JWT-bearer grant (RFC 7523) as ``oauth2.googleapis.com``
  runs it: an RS256 assertion from a known service account, audience Google's token URI
  (google-auth always signs for it, whatever ``token_uri`` says) or this fake's own
  ``token_url``, scope including ``firebase.messaging`` (or ``cloud-platform``), a
  lifetime of at most an hour. Failures are RFC 6749 bodies (``invalid_grant``,
  ``invalid_scope``, ``unsupported_grant_type``, ``invalid_request``).
* ``POST /v1/projects/{project_id}/messages:send`` checks the bearer token (401
  UNAUTHENTICATED when missing, unknown or expired; 403 PERMISSION_DENIED when the token
  belongs to another project), then parses the body as Google's protobuf JSON parser
  does (unknown names, wrong types and a second ``target`` are 400 INVALID_ARGUMENT with
  only a ``google.rpc.BadRequest`` detail; snake_case and lowerCamelCase names are both
  accepted), then applies FCM's own rules (a recipient, valid topic or condition, no
  reserved data keys, at most 4096 bytes or 2048 for topic and condition messages),
  which are 400 INVALID_ARGUMENT with an ``FcmError`` and a ``BadRequest`` detail, in an
  order that alternates because Google's order varies.

The size of a message is the UTF-8 length of its compact JSON without its target
(``token``, ``topic`` or ``condition``): FCM counts the payload, not the address.

Errors for a device token, by script or by name:

* :meth:`FakeFCM.fail` queues answers for one device token; each send to it takes the
  next one (after the message itself passed validation, as on the real service).
* Sandbox convention, so errors can be seen without scripting: a device token that
  starts with ``fcm-unregistered``, ``fcm-mismatch``, ``fcm-quota``, ``fcm-unavailable``
  or ``fcm-internal`` always answers UNREGISTERED (404), SENDER_ID_MISMATCH (403),
  QUOTA_EXCEEDED (429, ``Retry-After: 60``), UNAVAILABLE (503) or INTERNAL (500).

A ``validate_only`` request is checked like any other, device-token errors included
(Google's dry run also reports a dead token), and answers 200 without being recorded.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fakes.received import ReceivedPush

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "FCM_SCOPE",
    "GOOGLE_TOKEN_URI",
    "JWT_BEARER_GRANT",
    "MAX_MESSAGE_BYTES",
    "MAX_TOPIC_MESSAGE_BYTES",
    "QUOTA_RETRY_AFTER_S",
    "SANDBOX_TOKEN_PREFIXES",
    "SCRIPTABLE_ERRORS",
    "FakeFCM",
    "ReceivedPush",
]

GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"
#: Older token URIs Google still accepts as an assertion's audience.
_LEGACY_AUDIENCES: Final = (
    "https://accounts.google.com/o/oauth2/token",
    "https://www.googleapis.com/oauth2/v4/token",
)
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
#: The umbrella scope; an access token for it may send FCM messages too.
CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
MAX_MESSAGE_BYTES: Final = 4096
MAX_TOPIC_MESSAGE_BYTES: Final = 2048
MAX_ASSERTION_LIFETIME_S: Final = 3600
#: How far in the future an assertion's ``iat`` may be: clocks drift.
CLOCK_SKEW_S: Final = 60
QUOTA_RETRY_AFTER_S: Final = 60
#: A condition may combine at most this many topics.
MAX_CONDITION_TOPICS: Final = 5

_FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE: Final = "type.googleapis.com/google.rpc.BadRequest"
_ERROR_INFO_TYPE: Final = "type.googleapis.com/google.rpc.ErrorInfo"
_FCM_SERVICE: Final = "fcm.googleapis.com"
_SEND_METHOD: Final = "google.firebase.fcm.v1.FcmService.SendMessage"

#: errorCode -> (HTTP status, canonical status, Google's message).
_FCM_ERRORS: Final[Mapping[str, tuple[int, str, str]]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per "
        "minute' of service 'fcm.googleapis.com'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (
        401,
        "UNAUTHENTICATED",
        "Auth error from APNS or Web Push Service",
    ),
}
#: Every answer :meth:`FakeFCM.fail` can script.
SCRIPTABLE_ERRORS: Final = frozenset(
    {*_FCM_ERRORS, "INVALID_ARGUMENT", "INVALID_ARGUMENT_NO_DETAILS", "HTML_502", "UNAUTHENTICATED"}
)
#: Device-token prefix -> the errorCode such a token always answers (sandbox convention).
SANDBOX_TOKEN_PREFIXES: Final[Mapping[str, str]] = {
    "fcm-unregistered": "UNREGISTERED",
    "fcm-mismatch": "SENDER_ID_MISMATCH",
    "fcm-quota": "QUOTA_EXCEEDED",
    "fcm-unavailable": "UNAVAILABLE",
    "fcm-internal": "INTERNAL",
}

_INVALID_CREDENTIALS: Final = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_MISSING_CREDENTIALS: Final = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_SHORT_LIVED: Final = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
_INVALID_ARGUMENT: Final = "Request contains an invalid argument."
# What Google's front end (not FCM) serves when a backend is unreachable.
_HTML_502: Final = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 502 (Server Error)!!1</title>\n"
    "  <p><b>502.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>502 Bad Gateway. The server encountered a temporary error and could not complete "
    "your request.<p>Please try again in 30 seconds.  <ins>That\u2019s all we know.</ins>\n"
    "</html>\n"
)
#: Device tokens whose messages :func:`_shape` may recognise (FCM's are of these).
_PLAIN_TOKEN: Final = re.compile(r"[A-Za-z0-9:_.\-]{1,4096}")
#: Message shapes remembered as valid; a fan-out of one message needs one.
_SHAPE_CACHE_SIZE: Final = 256
_DURATION: Final = re.compile(r"^\d+(\.\d{1,9})?s$")
_TIMESTAMP: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
)
_TOPIC: Final = re.compile(r"^(/topics/)?[a-zA-Z0-9\-_.~%]+$")
_CONDITION_TOKEN: Final = re.compile(
    r"\s*(?:(?P<topic>'[a-zA-Z0-9\-_.~%]+'\s+in\s+topics\b)|(?P<op>&&|\|\|)|(?P<other>[!()]))"
)


@dataclass(frozen=True)
class _Scalar:
    #: The parser's name for the type in its messages (TYPE_STRING, TYPE_BOOL…).
    label: str


@dataclass(frozen=True)
class _Enum:
    type_name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class _Pattern:
    """A well-known type written as a string (Duration, Timestamp)."""

    type_name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class _Struct:
    """``google.protobuf.Struct``: any JSON object."""


@dataclass(frozen=True)
class _StringMap:
    """``map<string, string>``."""

    entry_type: str


@dataclass(frozen=True)
class _Repeated:
    item: _Type


@dataclass(frozen=True)
class _Message:
    type_name: str
    fields: Mapping[str, _Type]
    #: oneof name -> its members; at most one member may be set.
    oneofs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @functools.cached_property
    def aliases(self) -> Mapping[str, str]:
        """Every accepted spelling of a field name (lowerCamelCase or snake_case) -> the
        snake_case name. Made once per type: the parser looks names up for every field of
        every message."""
        return {_camel(name): name for name in self.fields} | {n: n for n in self.fields}


_Type = _Scalar | _Enum | _Pattern | _Struct | _StringMap | _Repeated | _Message

_STRING = _Scalar("TYPE_STRING")
_BOOL = _Scalar("TYPE_BOOL")
_INT32 = _Scalar("TYPE_INT32")
_FLOAT = _Scalar("TYPE_FLOAT")
_DURATION_TYPE = _Pattern("google.protobuf.Duration", _DURATION)
_TIMESTAMP_TYPE = _Pattern("google.protobuf.Timestamp", _TIMESTAMP)
_V1 = "google.firebase.fcm.v1."

_NOTIFICATION = _Message(
    _V1 + "Notification", {"title": _STRING, "body": _STRING, "image": _STRING}
)
_COLOR = _Message(
    "google.type.Color", {"red": _FLOAT, "green": _FLOAT, "blue": _FLOAT, "alpha": _FLOAT}
)
_LIGHT_SETTINGS = _Message(
    _V1 + "LightSettings",
    {"color": _COLOR, "light_on_duration": _DURATION_TYPE, "light_off_duration": _DURATION_TYPE},
)
_ANDROID_NOTIFICATION = _Message(
    _V1 + "AndroidNotification",
    {
        **{name: _STRING for name in (
            "title", "body", "icon", "color", "sound", "tag", "click_action", "body_loc_key",
            "title_loc_key", "channel_id", "ticker", "image",
        )},
        "body_loc_args": _Repeated(_STRING),
        "title_loc_args": _Repeated(_STRING),
        "sticky": _BOOL,
        "event_time": _TIMESTAMP_TYPE,
        "local_only": _BOOL,
        "notification_priority": _Enum(_V1 + "AndroidNotification.NotificationPriority", (
            "PRIORITY_UNSPECIFIED", "PRIORITY_MIN", "PRIORITY_LOW", "PRIORITY_DEFAULT",
            "PRIORITY_HIGH", "PRIORITY_MAX",
        )),
        "default_sound": _BOOL,
        "default_vibrate_timings": _BOOL,
        "default_light_settings": _BOOL,
        "vibrate_timings": _Repeated(_DURATION_TYPE),
        "visibility": _Enum(_V1 + "AndroidNotification.Visibility", (
            "VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET",
        )),
        "notification_count": _INT32,
        "light_settings": _LIGHT_SETTINGS,
        "bypass_proxy_notification": _BOOL,
        "proxy": _Enum(_V1 + "AndroidNotification.Proxy", (
            "PROXY_UNSPECIFIED", "ALLOW", "DENY", "IF_PRIORITY_LOWERED",
        )),
    },
)
_ANDROID = _Message(
    _V1 + "AndroidConfig",
    {
        "collapse_key": _STRING,
        "priority": _Enum(_V1 + "AndroidMessagePriority", ("NORMAL", "HIGH")),
        "ttl": _DURATION_TYPE,
        "restricted_package_name": _STRING,
        "data": _StringMap(_V1 + "AndroidConfig.DataEntry"),
        "notification": _ANDROID_NOTIFICATION,
        "fcm_options": _Message(_V1 + "AndroidFcmOptions", {"analytics_label": _STRING}),
        "direct_boot_ok": _BOOL,
        "bandwidth_constrained_ok": _BOOL,
        "restricted_satellite_ok": _BOOL,
    },
)
_WEBPUSH = _Message(
    _V1 + "WebpushConfig",
    {
        "headers": _StringMap(_V1 + "WebpushConfig.HeadersEntry"),
        "data": _StringMap(_V1 + "WebpushConfig.DataEntry"),
        "notification": _Struct(),
        "fcm_options": _Message(
            _V1 + "WebpushFcmOptions", {"link": _STRING, "analytics_label": _STRING}
        ),
    },
)
_APNS = _Message(
    _V1 + "ApnsConfig",
    {
        "headers": _StringMap(_V1 + "ApnsConfig.HeadersEntry"),
        "payload": _Struct(),
        "fcm_options": _Message(
            _V1 + "ApnsFcmOptions", {"analytics_label": _STRING, "image": _STRING}
        ),
        "live_activity_token": _STRING,
    },
)
_MESSAGE = _Message(
    _V1 + "Message",
    {
        "name": _STRING,
        "data": _StringMap(_V1 + "Message.DataEntry"),
        "notification": _NOTIFICATION,
        "android": _ANDROID,
        "webpush": _WEBPUSH,
        "apns": _APNS,
        "fcm_options": _Message(_V1 + "FcmOptions", {"analytics_label": _STRING}),
        "token": _STRING,
        "topic": _STRING,
        "condition": _STRING,
    },
    oneofs={"target": ("token", "topic", "condition")},
)
_SEND_REQUEST = _Message(
    _V1 + "SendMessageRequest", {"message": _MESSAGE, "validate_only": _BOOL}
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _shown(value: Any) -> str:
    """A rejected value as the parser quotes it in its messages."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Parser:
    """Walks a request body against the schema; collects every violation, as Google does.

    Returns the value with field names normalised to snake_case (the JSON parser accepts
    both spellings) so FCM's own rules can be checked on one spelling.
    """

    def __init__(self) -> None:
        #: (field path, description) for each violation.
        self.violations: list[tuple[str, str]] = []

    def _invalid(self, path: str, label: str, value: Any) -> None:
        self.violations.append((path, f"Invalid value at '{path}' ({label}), {_shown(value)}"))

    def parse(self, value: Any, kind: _Type, path: str) -> Any:
        if isinstance(kind, _Message):
            return self._message(value, kind, path)
        if isinstance(kind, _Scalar):
            return self._scalar(value, kind, path)
        if isinstance(kind, _Enum):
            return self._enum(value, kind, path)
        if isinstance(kind, _Pattern):
            if isinstance(value, str) and kind.pattern.match(value):
                return value
            self._invalid(path, "type.googleapis.com/" + kind.type_name, value)
            return None
        if isinstance(kind, _Struct):
            if isinstance(value, dict):
                return value
            self._invalid(path, "type.googleapis.com/google.protobuf.Struct", value)
            return None
        if isinstance(kind, _StringMap):
            return self._string_map(value, kind, path)
        if not isinstance(value, list):
            self._invalid(path, _label(kind.item), value)
            return None
        return [self.parse(item, kind.item, f"{path}[{i}]") for i, item in enumerate(value)]

    def _message(self, value: Any, kind: _Message, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self._invalid(path, "type.googleapis.com/" + kind.type_name, value)
            return None
        aliases = kind.aliases
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = aliases.get(key)
            if name is None:
                where = f" at '{path}'" if path else ""
                self.violations.append((
                    path,
                    f'Invalid JSON payload received. Unknown name "{key}"{where}: '
                    "Cannot find field.",
                ))
                continue
            if item is None:
                # JSON null is the default value: the field stays unset.
                continue
            for oneof, members in kind.oneofs.items():
                if name in members and any(m in out for m in members):
                    self.violations.append((
                        path,
                        f"Invalid JSON payload received. Oneof field '{oneof}' is already "
                        f"set. Cannot set '{name}'",
                    ))
            out[name] = self.parse(item, kind.fields[name], _join(path, name))
        return out

    def _scalar(self, value: Any, kind: _Scalar, path: str) -> Any:
        if kind is _STRING:
            ok = isinstance(value, str)
        elif kind is _BOOL:
            ok = isinstance(value, bool)
        elif kind is _INT32:
            # Proto JSON takes integers as numbers or as decimal strings.
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and value.is_integer()
            ) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None)
            ok = ok and -(2**31) <= int(value) < 2**31
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            self._invalid(path, kind.label, value)
        return value

    def _enum(self, value: Any, kind: _Enum, path: str) -> str | None:
        # Google's front end takes enum names in any case ("high") and their numbers.
        if isinstance(value, str) and value.upper() in kind.values:
            return value.upper()
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(
            kind.values
        ):
            return kind.values[value]
        self._invalid(path, "type.googleapis.com/" + kind.type_name, value)
        return None

    def _string_map(self, value: Any, kind: _StringMap, path: str) -> dict[str, str] | None:
        if not isinstance(value, dict):
            self._invalid(path, "type.googleapis.com/" + kind.entry_type, value)
            return None
        for index, item in enumerate(value.values()):
            if not isinstance(item, str):
                self._invalid(f"{path}[{index}].value", _STRING.label, item)
        return value


def _label(kind: _Type) -> str:
    if isinstance(kind, _Scalar):
        return kind.label
    if isinstance(kind, _Message | _Enum | _Pattern):
        return "type.googleapis.com/" + kind.type_name
    if isinstance(kind, _StringMap):
        return "type.googleapis.com/" + kind.entry_type
    if isinstance(kind, _Struct):
        return "type.googleapis.com/google.protobuf.Struct"
    return _label(kind.item)


def _reserved_data_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in ("from", "message_type") or lowered.startswith(("google", "gcm"))


def _condition_ok(condition: str) -> bool:
    """FCM's condition grammar: quoted topics ``in topics`` joined by ``&&``, ``||``, ``!``,
    parentheses; at most five topics."""
    tokens: list[str] = []
    position = 0
    while position < len(condition.rstrip()):
        match = _CONDITION_TOKEN.match(condition, position)
        if match is None:
            return False
        tokens.append("T" if match.group("topic") else match.group(0).strip())
        position = match.end()
    if not tokens or tokens.count("T") > MAX_CONDITION_TOPICS:
        return False
    at = 0

    def term() -> bool:
        nonlocal at
        if at >= len(tokens):
            return False
        token = tokens[at]
        at += 1
        if token == "!":
            return term()
        if token == "(":
            if not expression() or at >= len(tokens) or tokens[at] != ")":
                return False
            at += 1
            return True
        return token == "T"

    def expression() -> bool:
        nonlocal at
        if not term():
            return False
        while at < len(tokens) and tokens[at] in ("&&", "||"):
            at += 1
            if not term():
                return False
        return True

    return expression() and at == len(tokens)


# ---------------------------------------------------------------------------------------
# Answers.


def _google_error(
    http_status: int,
    status: str,
    message: str,
    details: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": http_status, "message": message, "status": status}
    if details is not None:
        error["details"] = list(details)
    # Google pretty-prints with two spaces; some clients log the body as is.
    return web.Response(
        status=http_status,
        text=json.dumps({"error": error}, indent=2, ensure_ascii=False) + "\n",
        content_type="application/json",
        charset="UTF-8",
        headers=headers,
    )


def _fcm_error(code: str) -> dict[str, str]:
    return {"@type": _FCM_ERROR_TYPE, "errorCode": code}


def _bad_request(violations: Sequence[tuple[str, str]]) -> dict[str, Any]:
    entries: list[dict[str, str]] = []
    for path, description in violations:
        # The parser leaves ``field`` out for the request's own (top-level) fields.
        entries.append({"field": path, "description": description} if path else {
            "description": description
        })
    return {"@type": _BAD_REQUEST_TYPE, "fieldViolations": entries}


def _oauth_error(error: str, description: str | None = None) -> web.Response:
    body = {"error": error} if description is None else {
        "error": error, "error_description": description
    }
    return web.json_response(body, status=400, dumps=lambda v: json.dumps(v, indent=2))


def _unauthenticated(reason: str, message: str = _INVALID_CREDENTIALS) -> web.Response:
    challenge = 'Bearer realm="https://accounts.google.com/"'
    if reason != "CREDENTIALS_MISSING":
        challenge += ', error="invalid_token"'
    info = {
        "@type": _ERROR_INFO_TYPE,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": _FCM_SERVICE, "method": _SEND_METHOD},
    }
    return _google_error(401, "UNAUTHENTICATED", message, [info], {"WWW-Authenticate": challenge})


class _InvalidMessage(Exception):
    """A message FCM itself refuses (as opposed to the JSON parser)."""

    def __init__(self, message: str, path: str, description: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.description = description


@dataclass(frozen=True)
class _AccountKey:
    key_id: str | None
    public_key: RSAPublicKey


@dataclass
class _Account:
    project_id: str
    keys: list[_AccountKey]


@dataclass
class _Grant:
    project_id: str
    expires_at: float
    client_email: str = ""
    revoked: bool = False


# ---------------------------------------------------------------------------------------


class FakeFCM:
    """Google's FCM HTTP v1 send endpoint and OAuth2 token endpoint, on loopback.

    Register service accounts with :meth:`add_service_account`, :meth:`start`, point a
    client's token URI at :attr:`token_url` and its FCM base at :attr:`base_url`.
    """

    def __init__(self, *, token_ttl_s: int = 3599) -> None:
        self.token_ttl_s = token_ttl_s
        #: Every accepted (200, not ``validate_only``) message, in order.
        self.received: list[ReceivedPush] = []
        #: How many access tokens were minted.
        self.token_requests = 0
        self._accounts: dict[str, _Account] = {}
        self._grants: dict[str, _Grant] = {}
        self._scripts: dict[str, deque[str]] = {}
        # Google's order of error details varies; alternating makes both orders certain.
        self._invalid_argument_answers = 0
        #: Messages that passed every check, by :func:`_shape` -> their ``validate_only``.
        self._valid_shapes: dict[bytes, bool] = {}
        # Binds to the loop on first use (Python 3.10+), so it may be made outside one.
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self.app = web.Application()
        self.app.router.add_post("/token", self._token)
        self.app.router.add_post("/v1/projects/{project_id}/messages:send", self._send)

    # -- set-up ---------------------------------------------------------------------------

    def add_service_account(
        self,
        *,
        project_id: str,
        client_email: str,
        public_key_pem: str,
        private_key_id: str | None = None,
    ) -> None:
        """Trust RS256 assertions from ``client_email`` signed with this key.

        ``public_key_pem`` is a public key or an X.509 certificate (Google publishes a
        service account's keys as certificates). Adding another key for the same account
        trusts both, as Google does after a key rotation. Access tokens minted for the
        account may send for ``project_id`` only.
        """
        data = public_key_pem.encode()
        if b"BEGIN CERTIFICATE" in data:
            public_key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = load_pem_public_key(data)
        if not isinstance(public_key, RSAPublicKey):
            raise ValueError("service account keys are RSA keys")
        account = self._accounts.setdefault(client_email, _Account(project_id, []))
        if account.project_id != project_id:
            raise ValueError(f"{client_email} already belongs to project {account.project_id}")
        account.keys.append(_AccountKey(private_key_id, public_key))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host``:``port`` (0: a free port) from the running event loop."""
        if self._runner is not None:
            raise RuntimeError("FakeFCM is already started")
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._base_url = f"http://{shown}:{bound_port}"
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and its connections. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``; messages go to :meth:`send_url`."""
        if self._base_url is None:
            raise RuntimeError("FakeFCM is not started")
        return self._base_url

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint: a service account's ``token_uri``."""
        return f"{self.base_url}/token"

    def send_url(self, project_id: str) -> str:
        """``{base_url}/v1/projects/{project_id}/messages:send``."""
        return f"{self.base_url}/v1/projects/{project_id}/messages:send"

    # -- scripting ------------------------------------------------------------------------

    def fail(self, device_token: str, *errors: str) -> None:
        """Queue answers for ``device_token``: each send to it takes the next one.

        Entries are FCM errorCodes (UNREGISTERED, SENDER_ID_MISMATCH, QUOTA_EXCEEDED,
        UNAVAILABLE, INTERNAL, THIRD_PARTY_AUTH_ERROR, INVALID_ARGUMENT) or
        INVALID_ARGUMENT_NO_DETAILS (a 400 without ``details``), HTML_502 (Google's front
        end's HTML page) and UNAUTHENTICATED (401 as for an expired access token).
        """
        unknown = [e for e in errors if e not in SCRIPTABLE_ERRORS]
        if unknown:
            raise ValueError(f"cannot script {unknown}; choose from {sorted(SCRIPTABLE_ERRORS)}")
        self._scripts.setdefault(device_token, deque()).extend(errors)

    def expire_access_tokens(self) -> None:
        """Every access token minted so far now answers 401 UNAUTHENTICATED."""
        for grant in self._grants.values():
            grant.revoked = True

    def clear(self) -> None:
        """Forget received messages and scripted answers."""
        self.received.clear()
        self._scripts.clear()

    def forget_sender(self, client_email: str) -> None:
        """Stop trusting this service account, as when it is deleted (its access tokens
        answer 401 from now on), and forget the messages it sent."""
        self._accounts.pop(client_email, None)
        for grant in self._grants.values():
            if grant.client_email == client_email:
                grant.revoked = True
        self.received[:] = [p for p in self.received if p.sender != client_email]

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedPush]:
        """Wait until at least ``count`` messages were received; return them all."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    # -- the token endpoint ---------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = form.get("grant_type")
        if grant_type != JWT_BEARER_GRANT:
            shown = grant_type if isinstance(grant_type, str) else ""
            return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {shown}")
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or not assertion:
            return _oauth_error("invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "Invalid JWT: the assertion is not a JWS")
        account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            return _oauth_error("invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256" or not self._signed_by(assertion, header, account):
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not {GOOGLE_TOKEN_URI, self.token_url, *_LEGACY_AUDIENCES} & set(map(str, audiences)):
            return _oauth_error(
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_URI}",
            )
        if not _in_timeframe(claims.get("iat"), claims.get("exp"), time.time()):
            return _oauth_error("invalid_grant", _SHORT_LIVED)
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            return _oauth_error("invalid_scope", "Empty or missing scope not allowed.")
        if not {FCM_SCOPE, CLOUD_PLATFORM_SCOPE} & set(scope.split()):
            # Google would mint a token for another valid scope and FCM would then answer
            # 403 insufficient scopes; refusing here reports the same mistake earlier.
            return _oauth_error(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        access_token = "ya29.fake." + secrets.token_urlsafe(48)
        self._grants[access_token] = _Grant(account.project_id, time.time() + self.token_ttl_s,
                                            str(claims.get("iss")))
        self.token_requests += 1
        return web.json_response(
            {"access_token": access_token, "expires_in": self.token_ttl_s, "token_type": "Bearer"}
        )

    @staticmethod
    def _signed_by(assertion: str, header: Mapping[str, Any], account: _Account) -> bool:
        kid = header.get("kid")
        # Google picks the key by ``kid`` and tries every key of the account without one.
        candidates = [k for k in account.keys if kid is None or k.key_id in (None, kid)]
        for candidate in candidates:
            try:
                jwt.decode(
                    assertion,
                    candidate.public_key,
                    algorithms=["RS256"],
                    # Time and audience are checked afterwards, for Google's own messages.
                    options={
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
            except jwt.PyJWTError:
                continue
            return True
        return False

    # -- the send endpoint ----------------------------------------------------------------

    def _sender(self, request: web.Request) -> str:
        """The service account whose access token authorized this request."""
        header = request.headers.get("Authorization", "")
        token = header.partition(" ")[2].strip() or request.query.get("access_token", "")
        grant = self._grants.get(token)
        return grant.client_email if grant is not None else ""

    def _authorize(self, request: web.Request, project_id: str) -> web.Response | None:
        header = request.headers.get("Authorization")
        if header is None:
            # Google APIs also take the token as a query parameter.
            token = request.query.get("access_token")
            if token is None:
                return _unauthenticated("CREDENTIALS_MISSING", _MISSING_CREDENTIALS)
        else:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer":
                return _unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED")
        grant = self._grants.get(token.strip())
        if grant is None:
            return _unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED")
        if grant.revoked or grant.expires_at <= time.time():
            return _unauthenticated("ACCESS_TOKEN_EXPIRED")
        if grant.project_id != project_id:
            resource = f"projects/{project_id}"
            return _google_error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/{resource}' (or it may not exist).",
                [{
                    "@type": _ERROR_INFO_TYPE,
                    "reason": "IAM_PERMISSION_DENIED",
                    "domain": "cloudresourcemanager.googleapis.com",
                    "metadata": {
                        "permission": "cloudmessaging.messages.create",
                        "resource": resource,
                    },
                }],
            )
        return None

    async def _send(self, request: web.Request) -> web.Response:
        project_id = request.match_info["project_id"]
        denied = self._authorize(request, project_id)
        if denied is not None:
            return denied
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            text = f"Invalid JSON payload received. {exc}"
            return _google_error(400, "INVALID_ARGUMENT", text, [_bad_request([("", text)])])
        if not isinstance(body, dict):
            text = "Invalid JSON payload received. Root element must be a message."
            return _google_error(400, "INVALID_ARGUMENT", text, [_bad_request([("", text)])])
        shape = _shape(raw, body)
        validate_only = self._valid_shapes.get(shape) if shape is not None else None
        if validate_only is not None:
            # A message that passed every check before, but for its device token.
            device_token: str = body["message"]["token"]
        else:
            parser = _Parser()
            parsed = parser.parse(body, _SEND_REQUEST, "")
            if parser.violations:
                text = "\n".join(description for _, description in parser.violations)
                return _google_error(
                    400, "INVALID_ARGUMENT", text, [_bad_request(parser.violations)]
                )
            try:
                target = _check_message(parsed.get("message"), body.get("message"))
            except _InvalidMessage as exc:
                return self._invalid_argument(exc.message, exc.path, exc.description)
            device_token = target if parsed["message"].get("token") is not None else ""
            validate_only = bool(parsed.get("validate_only"))
            if shape is not None:
                if len(self._valid_shapes) >= _SHAPE_CACHE_SIZE:
                    self._valid_shapes.clear()
                self._valid_shapes[shape] = validate_only
        if device_token:
            scripted = self._next_answer(device_token)
            if scripted is not None:
                return self._scripted(scripted)
        if validate_only:
            return web.json_response({"name": f"projects/{project_id}/messages/fake_message_id"})
        message_id = f"0:{int(time.time() * 1000)}%{secrets.token_hex(8)}"
        self.received.append(ReceivedPush(
            provider="fcm",
            app=project_id,
            token=device_token,
            payload=body["message"],
            headers={
                k.lower(): v for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length", "connection", "transfer-encoding")
            },
            received_at=time.time(),
            sender=self._sender(request),
        ))
        async with self._arrived:
            self._arrived.notify_all()
        return web.json_response({"name": f"projects/{project_id}/messages/{message_id}"})

    def _next_answer(self, device_token: str) -> str | None:
        script = self._scripts.get(device_token)
        if script:
            return script.popleft()
        for prefix, code in SANDBOX_TOKEN_PREFIXES.items():
            if device_token.startswith(prefix):
                return code
        return None

    def _scripted(self, answer: str) -> web.Response:
        if answer == "INVALID_ARGUMENT":
            return self._invalid_argument(
                "The registration token is not a valid FCM registration token",
                "message.token",
                "Invalid registration token",
            )
        if answer == "INVALID_ARGUMENT_NO_DETAILS":
            return _google_error(400, "INVALID_ARGUMENT", _INVALID_ARGUMENT)
        if answer == "HTML_502":
            return web.Response(status=502, text=_HTML_502, content_type="text/html",
                                charset="UTF-8")
        if answer == "UNAUTHENTICATED":
            return _unauthenticated("ACCESS_TOKEN_EXPIRED")
        http_status, status, message = _FCM_ERRORS[answer]
        headers = {"Retry-After": str(QUOTA_RETRY_AFTER_S)} if answer == "QUOTA_EXCEEDED" else None
        return _google_error(http_status, status, message, [_fcm_error(answer)], headers)

    def _invalid_argument(self, message: str, path: str, description: str) -> web.Response:
        details: list[dict[str, Any]] = [
            _fcm_error("INVALID_ARGUMENT"), _bad_request([(path, description)])
        ]
        if self._invalid_argument_answers % 2:
            details.reverse()
        self._invalid_argument_answers += 1
        return _google_error(400, "INVALID_ARGUMENT", message, details)


def _shape(raw: bytes, body: dict[str, Any]) -> bytes | None:
    """The request body with its device token cut out, when the checks cannot depend on
    anything else; None otherwise.

    Every check (the JSON parser's and FCM's own, the size too, which leaves the target
    out) gives one answer for a whole family of messages that differ only in
    ``message.token``, as long as that token is a plain non-empty string. So a fan-out
    of one message to many devices is checked once: a token of URL-safe characters
    (never escaped in JSON, never structural) that occurs exactly once in the raw body,
    quoted, as the value of a ``"token"`` member, is replaced by its length. Two bodies
    with the same shape are then the same JSON but for that one string; and if the one
    occurrence were not ``message.token`` itself (another ``token`` member, with
    ``message.token`` spelled with escapes), equal shapes would make the bodies equal
    byte for byte."""
    message = body.get("message")
    token = message.get("token") if isinstance(message, dict) else None
    if not isinstance(token, str) or not _PLAIN_TOKEN.fullmatch(token):
        return None
    encoded = token.encode()
    at = raw.find(encoded)
    if at < 1 or raw.find(encoded, at + 1) >= 0:
        return None
    end = at + len(encoded)
    if raw[at - 1 : at] != b'"' or raw[end : end + 1] != b'"':
        return None
    before = raw[: at - 1].rstrip(b" \t\r\n")
    if not before.endswith(b":") or not before[:-1].rstrip(b" \t\r\n").endswith(b'"token"'):
        return None
    return raw[:at] + b"\x00" + str(len(encoded)).encode() + raw[end:]


def _in_timeframe(iat: Any, exp: Any, now: float) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (iat, exp))
    return (
        numbers
        and iat <= now + CLOCK_SKEW_S
        and exp > now
        and exp - iat <= MAX_ASSERTION_LIFETIME_S
    )


def _check_message(message: dict[str, Any] | None, received: Any) -> str:
    """FCM's own rules for a parsed message; returns its target (token, topic or condition).

    ``received`` is the message as sent, measured for size as it came.
    """
    if message is None:
        raise _InvalidMessage(_INVALID_ARGUMENT, "message", "The message is not set.")
    limit = MAX_MESSAGE_BYTES
    if message.get("token") is not None:
        target: str = message["token"]
        if not target:
            raise _InvalidMessage(
                "The registration token is not a valid FCM registration token",
                "message.token",
                "Invalid registration token",
            )
    elif message.get("topic") is not None:
        target = message["topic"]
        limit = MAX_TOPIC_MESSAGE_BYTES
        if not _TOPIC.match(target):
            raise _InvalidMessage(_INVALID_ARGUMENT, "message.topic", "Invalid topic name")
    elif message.get("condition") is not None:
        target = message["condition"]
        # A condition is delivered through topics, so the topic limit applies.
        limit = MAX_TOPIC_MESSAGE_BYTES
        if not _condition_ok(target):
            raise _InvalidMessage(
                _INVALID_ARGUMENT, "message.condition", "Invalid condition expression provided."
            )
    else:
        unset = "Recipient of the message is not set."
        raise _InvalidMessage(unset, "message", unset)
    for path, data in (
        ("message.data", message.get("data")),
        ("message.android.data", (message.get("android") or {}).get("data")),
    ):
        for key in data or {}:
            if _reserved_data_key(key):
                raise _InvalidMessage(
                    _INVALID_ARGUMENT, path, f"Invalid data payload key: {key}"
                )
    measured = {
        k: v for k, v in received.items() if k not in ("token", "topic", "condition")
    }
    size = len(json.dumps(measured, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        raise _InvalidMessage(
            "Message is too big",
            "message",
            f"Message is too big: {size} bytes, the limit is {limit}",
        )
    return target
