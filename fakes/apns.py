"""A faithful fake of Apple's APNs provider API, served in-process.

It speaks HTTP/2 over TLS (ALPN ``h2`` only) with the ``h2`` state machine directly on an
asyncio TLS server, so what a client does at the connection level is what Apple sees:
one SETTINGS ``MAX_CONCURRENT_STREAMS = 1`` until a request on the connection carried a
valid provider token, then 1000; flow control; stream resets; long-lived idle
connections; a GOAWAY carrying ``{"reason": "Shutdown"}`` on :meth:`FakeAPNs.stop`.

Requests are checked the way Apple documents ("Sending notification requests to APNs",
"Handling notification responses from APNs", "Establishing a token-based connection to
APNs", "Establishing a certificate-based connection to APNs"): only
``POST /3/device/<hex token>``; ES256 provider tokens (``kid`` of a key added with
:meth:`FakeAPNs.add_key`, ``iss`` its team, ``iat`` under an hour old); one team per
connection; a new token for the team on the same connection sooner than
``min_token_refresh_s`` after the previous one gives 429 TooManyProviderTokenUpdates;
``apns-topic`` one of the team's bundle ids (or ``<bundle>.voip``, ``.complication``,
``.pushkit.fileprovider``, ``.location-query``, ``.push-type.liveactivity``,
``.voip-ptt``) and consistent with ``apns-push-type``; ``apns-priority``,
``apns-expiration``, ``apns-collapse-id`` (at most 64 bytes), ``apns-id`` (canonical
UUID); no repeated headers; a JSON object payload with an ``aps`` dictionary of at most
4096 bytes (5120 for VoIP). Every answer carries ``apns-id``; errors carry
``{"reason": ...}`` and 410 also ``"timestamp"`` in milliseconds.

Certificate-based connections, once :meth:`FakeAPNs.trust_client_certificates` named the
CA that issues them: a connection may present a TLS client certificate (or none, and use
provider tokens). One the CA did not sign, or outside its validity, fails the handshake
with the TLS alert OpenSSL sends for it (``unknown ca``, ``certificate expired``), as
Apple's servers do. A trusted one authenticates every request on its connection (the
``authorization`` header is then ignored, as Apple documents) for the bundle id in its
subject UID (and that id's push-type suffixes): with no UID it answers 403
BadCertificate; made for the other environment only (Apple's development or production
push extension, see ``environment``) 403 BadCertificateEnvironment; another topic 400
TopicDisallowed; no ``apns-topic`` at all means the certificate's own topic.

Conventions for sandbox users: a device token whose hex starts with ``dead`` answers
410 Unregistered (timestamp = now, in ms); one starting with ``bad0`` answers
400 BadDeviceToken. Tests can also script answers per token with :meth:`FakeAPNs.fail`
and :meth:`FakeAPNs.unregister`.

Apple silently throttles a background push sent with priority 10 (or with no priority,
which means 10) instead of rejecting it; the fake accepts it too and counts it in
:attr:`FakeAPNs.background_priority_violations`, so tests can assert it never happens.
Apple answers after a network round trip; ``response_delay_s`` simulates that, which
makes concurrent streams on one connection observable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import ssl
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from fakes.received import ReceivedPush

#: HTTP status of every reason Apple documents, for answers and for :meth:`FakeAPNs.fail`.
STATUS_BY_REASON: dict[str, int] = {
    "BadCollapseId": 400,
    "BadDeviceToken": 400,
    "BadExpirationDate": 400,
    "BadMessageId": 400,
    "BadPriority": 400,
    "BadTopic": 400,
    "DeviceTokenNotForTopic": 400,
    "DuplicateHeaders": 400,
    "IdleTimeout": 400,
    "InvalidPushType": 400,
    "MissingDeviceToken": 400,
    "MissingTopic": 400,
    "PayloadEmpty": 400,
    "TopicDisallowed": 400,
    "BadCertificate": 403,
    "BadCertificateEnvironment": 403,
    "ExpiredProviderToken": 403,
    "Forbidden": 403,
    "InvalidProviderToken": 403,
    "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403,
    "BadEnvironmentKeyIdInToken": 403,
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}

PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    }
)

#: Push types whose topic is the bundle id plus a fixed suffix.
TOPIC_SUFFIX_BY_PUSH_TYPE: dict[str, str] = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
}

MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
MAX_COLLAPSE_ID_BYTES = 64
#: Apple refuses provider tokens whose ``iat`` is more than an hour old.
MAX_PROVIDER_TOKEN_AGE_S = 3600
#: Tolerated clock difference for an ``iat`` in the future.
PROVIDER_TOKEN_CLOCK_SKEW_S = 60
#: Device tokens are 32 bytes today; Apple says not to rely on the length, so allow more.
MIN_DEVICE_TOKEN_HEX = 64
MAX_DEVICE_TOKEN_HEX = 200
#: ``SETTINGS_MAX_CONCURRENT_STREAMS`` before and after a valid provider token.
UNAUTHENTICATED_MAX_STREAMS = 1
AUTHENTICATED_MAX_STREAMS = 1000

_DEVICE_PATH = "/3/device"
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
_TOPIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
_HEX = frozenset("0123456789abcdefABCDEF")
#: Recorded on a ReceivedPush: what a provider controls besides path and body.
_RECORDED_HEADER_PREFIX = "apns-"
#: Verified tokens cached per connection; a client rotates hourly, so this stays tiny.
_VERIFIED_CACHE_SIZE = 16
#: How long stop() lets a client read the GOAWAY and close before cutting it off.
_CLOSE_GRACE_S = 1.0
#: A client that has not finished its TLS handshake by then is cut off.
_HANDSHAKE_TIMEOUT_S = 30.0
_READ_SIZE = 65536
#: Extensions of Apple's push certificates saying which environment they work in
#: (Apple WWDR CPS); a universal "Apple Push Services" certificate carries both.
DEVELOPMENT_CERTIFICATE_OID = "1.2.840.113635.100.6.3.1"
PRODUCTION_CERTIFICATE_OID = "1.2.840.113635.100.6.3.2"
_ENVIRONMENT_OIDS = {DEVELOPMENT_CERTIFICATE_OID: "sandbox",
                     PRODUCTION_CERTIFICATE_OID: "production"}


class _Rejection(Exception):
    """An answer other than 200, raised from deep inside the checks."""

    def __init__(self, reason: str, timestamp_ms: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timestamp_ms = timestamp_ms


@dataclass(frozen=True)
class _Key:
    team_id: str
    key_id: str
    public_key: ec.EllipticCurvePublicKey
    topics: frozenset[str]


@dataclass(frozen=True)
class _ClientCertificate:
    """What a certificate-based connection's client certificate says."""

    #: SHA-256 of the certificate (DER), hex: whose pushes these are.
    sha256: str
    #: The bundle id in the subject UID, if any.
    topics: frozenset[str]
    #: "sandbox" and/or "production" when it carries Apple's environment extensions;
    #: empty means it does not say.
    environments: frozenset[str]

    @classmethod
    def read(cls, der: bytes) -> _ClientCertificate:
        cert = x509.load_der_x509_certificate(der)
        uids = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.USER_ID)]
        return cls(
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
            topics=frozenset(str(u) for u in uids),
            environments=frozenset(_ENVIRONMENT_OIDS[e.oid.dotted_string]
                                   for e in cert.extensions
                                   if e.oid.dotted_string in _ENVIRONMENT_OIDS),
        )


class _TLSStream:
    """The fake's side of one TLS connection, driven through :class:`ssl.MemoryBIO` rather
    than asyncio's TLS transport. When a server-side handshake fails, asyncio aborts the
    socket without sending the TLS alert that says why (CPython's ``sslproto`` does not
    flush its outgoing buffer before ``_fatal_error``); Apple's servers send it, and a
    provider acts on it (a refused client certificate is not worth retrying)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 context: ssl.SSLContext) -> None:
        self._reader = reader
        self._writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    async def handshake(self) -> None:
        """Raises :class:`ssl.SSLError` once the alert went out, OSError if the client left."""
        while True:
            try:
                self.ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send()
                if not await self._receive():
                    raise ConnectionResetError("the client left during the TLS handshake") \
                        from None
            except ssl.SSLError:
                self._send()  # the alert
                raise
        self._send()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end (close_notify or EOF)."""
        while True:
            try:
                return self.ssl_object.read(size)
            except ssl.SSLWantReadError:
                self._send()
                if not await self._receive():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def write(self, data: bytes) -> None:
        try:
            self.ssl_object.write(data)
        except ssl.SSLError:
            return  # the TLS session failed; the read loop is ending the connection
        self._send()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        """close_notify, then close the socket."""
        with contextlib.suppress(ssl.SSLError):
            self.ssl_object.unwrap()  # wants the client's close_notify too: not waited for
        self._send()
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def abort(self) -> None:
        self._writer.transport.abort()

    async def _receive(self) -> bool:
        data = await self._reader.read(_READ_SIZE)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    def _send(self) -> None:
        pending = self._outgoing.read()
        if pending and not self._writer.is_closing():
            self._writer.write(pending)


class _AnswerEncoder(hpack.Encoder):
    """HPACK for the fake's answers, cheap in CPU: plain literals (h2 asks for Huffman
    coding, which pure-Python hpack makes costly) and ``apns-id``, different in every
    answer, never indexed (it would only churn the table). Any valid HPACK decodes the
    same for the client."""

    def encode(
        self,
        headers: Iterable[
            hpack.HeaderTuple
            | tuple[bytes | str, bytes | str]
            | tuple[bytes | str, bytes | str, bool | None]
        ]
        | dict[bytes | str, bytes | str],
        huffman: bool = True,
    ) -> bytes:
        if not isinstance(headers, dict):
            headers = [
                hpack.NeverIndexedHeaderTuple(h[0], h[1]) if h[0] == b"apns-id" else h
                for h in headers
            ]
        return super().encode(headers, huffman=False)


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    body_bytes: int = 0


@dataclass(frozen=True)
class _Answer:
    status: int
    apns_id: str
    body: bytes


@dataclass(eq=False)
class _Connection:
    h2: h2.connection.H2Connection
    writer: _TLSStream
    #: The client certificate of a certificate-based connection.
    certificate: _ClientCertificate | None = None
    streams: dict[int, _Stream] = field(default_factory=dict)
    #: Scheduled answers (``response_delay_s``), cancelled on RST_STREAM or stop().
    timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    #: Answer bodies waiting for the client to open its flow-control window.
    blocked_bodies: dict[int, bytes] = field(default_factory=dict)
    authenticated: bool = False
    #: Apple binds a connection to the first team whose token it carried.
    team_id: str | None = None
    #: (iat, token) of the provider token this connection currently uses.
    current_token: tuple[int, str] | None = None
    verified: dict[str, tuple[_Key, int]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class FakeAPNs:
    """An in-process APNs provider API (HTTP/2 over TLS) that checks what Apple checks.

    ``ssl_context`` is a server context whose certificate covers 127.0.0.1/localhost;
    the fake restricts it to ALPN ``h2`` and TLS 1.2+. ``min_token_refresh_s`` is Apple's
    minimum provider-token lifetime on a connection (20 minutes); ``response_delay_s``
    delays every answer to simulate the round trip to Apple. ``environment`` is which of
    Apple's two servers the fake plays ("production" or "sandbox"; None: either), which
    only matters to client certificates made for one environment.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        min_token_refresh_s: float = 1200,
        response_delay_s: float = 0.0,
        environment: str | None = None,
    ) -> None:
        ssl_context.set_alpn_protocols(["h2"])
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl_context = ssl_context
        self.min_token_refresh_s = min_token_refresh_s
        self.response_delay_s = response_delay_s
        self.environment = environment
        #: Connections still in their TLS handshake (not yet in ``_connections``).
        self._handshaking: set[_TLSStream] = set()
        #: TLS handshakes the fake failed (a refused client certificate, mostly).
        self.handshakes_refused = 0
        self._keys: dict[str, _Key] = {}
        self._scripted: dict[str, deque[str]] = {}
        self._unregistered: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._port = 0
        self._stopping = False
        #: Every accepted (200) notification, in the order accepted.
        self.received: list[ReceivedPush] = []
        #: The exact request bodies of :attr:`received`, index for index.
        self.received_bodies: list[bytes] = []
        #: TLS connections accepted so far.
        self.connections_opened = 0
        #: The most streams one connection had open at once.
        self.max_concurrent_streams_seen = 0
        #: Background pushes sent with priority 10 (explicit or by omission).
        self.background_priority_violations = 0

    # -- configuration -------------------------------------------------------------------

    def add_key(
        self, *, team_id: str, key_id: str, public_key_pem: str, topics: Iterable[str]
    ) -> None:
        """Trust ES256 provider tokens with header ``kid=key_id`` and claim ``iss=team_id``,
        verified with this P-256 public key (a ``.p8`` private key PEM is accepted too);
        the team may push to these bundle ids and their push-type suffixes."""
        pem = public_key_pem.encode()
        loaded: object
        if b"PRIVATE KEY" in pem:
            loaded = serialization.load_pem_private_key(pem, password=None)
        else:
            loaded = serialization.load_pem_public_key(pem)
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            loaded = loaded.public_key()
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise ValueError("APNs provider keys are P-256 (ES256) keys")
        self._keys[key_id] = _Key(team_id, key_id, loaded, frozenset(topics))

    def trust_client_certificates(self, ca_pem: str, *, required: bool = False) -> None:
        """Accept certificate-based connections whose client certificate this CA (PEM)
        issued. Connections without one still use provider tokens, as on Apple's servers,
        unless ``required``."""
        self._ssl_context.load_verify_locations(cadata=ca_pem)
        self._ssl_context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL

    def fail(self, device_token: str, *reasons: str) -> None:
        """Script answers: each later push to ``device_token`` that passes every check
        consumes the next reason instead of being accepted."""
        unknown = [r for r in reasons if r not in STATUS_BY_REASON]
        if unknown:
            raise ValueError(f"unknown APNs reasons {unknown}; known: {sorted(STATUS_BY_REASON)}")
        self._scripted.setdefault(device_token.lower(), deque()).extend(reasons)

    def unregister(self, device_token: str, timestamp_ms: int) -> None:
        """From now on pushes to ``device_token`` answer 410 Unregistered with this
        ``timestamp`` (when APNs learned the token stopped being valid)."""
        self._unregistered[device_token.lower()] = timestamp_ms

    def forget_sender(self, key_id: str) -> None:
        """Stop trusting this key, as when it is revoked, and forget the pushes sent with
        it."""
        self._keys.pop(key_id, None)
        kept = [i for i, p in enumerate(self.received) if p.sender != key_id]
        self.received[:] = [self.received[i] for i in kept]
        self.received_bodies[:] = [self.received_bodies[i] for i in kept]

    def clear(self) -> None:
        """Forget recorded pushes, scripted answers, unregistrations and the violation
        counter. Connection statistics describe live connections and are kept."""
        self.received.clear()
        self.received_bodies.clear()
        self._scripted.clear()
        self._unregistered.clear()
        self.background_priority_violations = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port; see :attr:`base_url`)."""
        self._stopping = False
        self._server = await asyncio.start_server(self._serve, host, port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, tell every client with GOAWAY ``{"reason": "Shutdown"}`` (as
        Apple does when a server goes away), then close the connections."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for handshaking in list(self._handshaking):
            handshaking.abort()
        connections = list(self._connections)
        for conn in connections:
            for timer in conn.timers.values():
                timer.cancel()
            conn.timers.clear()
            with contextlib.suppress(h2.exceptions.ProtocolError):
                conn.h2.close_connection(additional_data=b'{"reason":"Shutdown"}')
            conn.flush()
            conn.writer.close()
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
            # A client that never reads would hold the TLS close_notify exchange open.
            for conn in connections:
                if conn.task in pending:
                    conn.writer.abort()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT``; notifications go to ``{base_url}/3/device/{token}``."""
        return f"https://127.0.0.1:{self._port}"

    @property
    def open_connections(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    # -- connection handling ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = _TLSStream(reader, writer, self._ssl_context)
        self._handshaking.add(stream)
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT_S):
                await stream.handshake()
        except (OSError, ssl.SSLError, TimeoutError):
            self.handshakes_refused += 1
            await self._close(stream)
            return
        finally:
            self._handshaking.discard(stream)
        self.connections_opened += 1
        ssl_object = stream.ssl_object
        if self._stopping or ssl_object.selected_alpn_protocol() != "h2":
            # The provider API is HTTP/2 only; there is no HTTP/1.1 fallback. A handshake
            # that finished while stop() ran is not served either.
            await self._close(stream)
            return
        der = ssl_object.getpeercert(binary_form=True)
        certificate = _ClientCertificate.read(der) if der else None
        # What the client sends is validated as h2 validates it; the fake's own answers
        # are well-formed by construction, so they skip h2's outbound checks (CPU only).
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False)
        h2_conn = h2.connection.H2Connection(config=config)
        h2_conn.encoder = _AnswerEncoder()
        # Apple allows one stream until the connection proved who it is (a client
        # certificate proves it at once).
        h2_conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: (
                    UNAUTHENTICATED_MAX_STREAMS if certificate is None
                    else AUTHENTICATED_MAX_STREAMS
                ),
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: (
                    h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE
                ),
            },
        )
        conn = _Connection(h2=h2_conn, writer=stream, certificate=certificate,
                           authenticated=certificate is not None,
                           task=asyncio.current_task())
        self._connections.add(conn)
        try:
            h2_conn.initiate_connection()
            conn.flush()
            await self._read_loop(conn)
        finally:
            self._connections.discard(conn)
            for timer in conn.timers.values():
                timer.cancel()
            await self._close(stream)

    async def _read_loop(self, conn: _Connection) -> None:
        # No idle timeout: APNs keeps provider connections open for hours.
        while True:
            try:
                data = await conn.writer.read(_READ_SIZE)
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            try:
                events = conn.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                conn.flush()  # h2 queued the GOAWAY describing the error.
                return
            ready: list[tuple[int, _Answer]] = []
            terminated = False
            opened = False
            for event in events:
                answered = self._on_event(conn, event)
                if answered is not None:
                    ready.append(answered)
                opened = opened or isinstance(event, h2.events.RequestReceived)
                terminated = terminated or isinstance(event, h2.events.ConnectionTerminated)
            if opened:
                # h2 counts the streams as the whole read left them (it handed over the
                # events after processing every frame), so once per read is enough.
                self.max_concurrent_streams_seen = max(
                    self.max_concurrent_streams_seen, conn.h2.open_inbound_streams
                )
            # Answering after the whole read, not stream by stream, is what lets requests
            # that arrived together overlap, as they do on Apple's servers.
            for stream_id, answer in ready:
                if self.response_delay_s > 0:
                    conn.timers[stream_id] = asyncio.get_running_loop().call_later(
                        self.response_delay_s, self._answer_later, conn, stream_id, answer
                    )
                else:
                    self._send_answer(conn, stream_id, answer)
            conn.flush()
            try:
                await conn.writer.drain()
            except (OSError, ssl.SSLError):
                return
            if terminated:
                return

    def _on_event(self, conn: _Connection, event: h2.events.Event) -> tuple[int, _Answer] | None:
        if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
            headers = [(_text(name), _text(value)) for name, value in event.headers or []]
            conn.streams[event.stream_id] = _Stream(headers)
        elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
            # Acknowledge at once (the connection window too, even for reset streams):
            # bodies are tiny and bounded, and a withheld window would stall every stream.
            conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = conn.streams.get(event.stream_id)
            if stream is not None and event.data:
                stream.body_bytes += len(event.data)
                room = MAX_VOIP_PAYLOAD_BYTES + 1 - len(stream.body)
                if room > 0:
                    stream.body += event.data[:room]
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
            stream = conn.streams.pop(event.stream_id, None)
            if stream is not None:
                return event.stream_id, self._answer(conn, stream)
        elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
            conn.streams.pop(event.stream_id, None)
            conn.blocked_bodies.pop(event.stream_id, None)
            timer = conn.timers.pop(event.stream_id, None)
            if timer is not None:
                timer.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id, body in list(conn.blocked_bodies.items()):
                del conn.blocked_bodies[stream_id]
                self._send_body(conn, stream_id, body)
        return None

    def _answer_later(self, conn: _Connection, stream_id: int, answer: _Answer) -> None:
        conn.timers.pop(stream_id, None)
        self._send_answer(conn, stream_id, answer)
        conn.flush()

    def _send_answer(self, conn: _Connection, stream_id: int, answer: _Answer) -> None:
        headers = [(":status", str(answer.status)), ("apns-id", answer.apns_id)]
        try:
            conn.h2.send_headers(stream_id, headers, end_stream=not answer.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # The client reset the stream or the connection is going away.
        if answer.body:
            self._send_body(conn, stream_id, answer.body)

    def _send_body(self, conn: _Connection, stream_id: int, body: bytes) -> None:
        try:
            if conn.h2.local_flow_control_window(stream_id) < len(body):
                conn.blocked_bodies[stream_id] = body
                return
            conn.h2.send_data(stream_id, body, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return

    @staticmethod
    async def _close(stream: _TLSStream) -> None:
        stream.close()
        try:
            await asyncio.wait_for(stream.wait_closed(), _CLOSE_GRACE_S)
        except (TimeoutError, OSError, ssl.SSLError):
            stream.abort()

    # -- the checks ------------------------------------------------------------------------

    def _answer(self, conn: _Connection, stream: _Stream) -> _Answer:
        request_id = _single(stream.headers, "apns-id")
        apns_id = (
            request_id
            if request_id is not None and _UUID_RE.match(request_id)
            else str(uuid.uuid4()).upper()  # Apple's generated ids are upper-case.
        )
        try:
            push = self._check(conn, stream)
        except _Rejection as rejection:
            body: dict[str, Any] = {"reason": rejection.reason}
            if rejection.timestamp_ms is not None:
                body["timestamp"] = rejection.timestamp_ms
            return _Answer(
                STATUS_BY_REASON[rejection.reason],
                apns_id,
                json.dumps(body, separators=(",", ":")).encode(),
            )
        self.received.append(push)
        self.received_bodies.append(bytes(stream.body))
        return _Answer(200, apns_id, b"")

    def _check(self, conn: _Connection, stream: _Stream) -> ReceivedPush:
        pseudo = {name: value for name, value in stream.headers if name.startswith(":")}
        regular = [(name, value) for name, value in stream.headers if not name.startswith(":")]
        if pseudo.get(":method") != "POST":
            raise _Rejection("MethodNotAllowed")
        device_token = _device_token_from_path(pseudo.get(":path", ""))

        names = [name for name, _ in regular]
        if len(names) != len(set(names)):
            raise _Rejection("DuplicateHeaders")
        headers = dict(regular)

        if conn.certificate is not None:
            sender, topics = self._certificate_identity(conn.certificate)
        else:
            key = self._authenticate(conn, headers.get("authorization"))
            sender, topics = key.key_id, key.topics

        topic = headers.get("apns-topic")
        if topic is None:
            # A certificate for one topic implies it; a provider token names no topic.
            if conn.certificate is None or len(topics) != 1:
                raise _Rejection("MissingTopic")
            (topic,) = topics
        if not _TOPIC_RE.match(topic):
            raise _Rejection("BadTopic")
        if not _topic_allowed(topic, topics):
            raise _Rejection("TopicDisallowed")

        push_type = headers.get("apns-push-type")
        if push_type is not None:
            if push_type not in PUSH_TYPES:
                raise _Rejection("InvalidPushType")
            _check_push_type_matches_topic(push_type, topic)

        priority = headers.get("apns-priority")
        if priority is not None and priority not in ("10", "5", "1"):
            raise _Rejection("BadPriority")
        expiration = headers.get("apns-expiration")
        if expiration is not None and not re.fullmatch(r"\d{1,19}", expiration):
            raise _Rejection("BadExpirationDate")
        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise _Rejection("BadCollapseId")
        message_id = headers.get("apns-id")
        if message_id is not None and not _UUID_RE.match(message_id):
            raise _Rejection("BadMessageId")

        if not (
            MIN_DEVICE_TOKEN_HEX <= len(device_token) <= MAX_DEVICE_TOKEN_HEX
            and set(device_token) <= _HEX
        ):
            raise _Rejection("BadDeviceToken")

        payload = _parse_payload(stream, push_type)

        if push_type == "background" and priority in (None, "10"):
            # Apple throttles these silently rather than rejecting them.
            self.background_priority_violations += 1

        self._scripted_or_known_answer(device_token)

        return ReceivedPush(
            sender=sender,
            provider="apns",
            app=topic,
            token=device_token,
            payload=payload,
            headers={
                name: value
                for name, value in regular
                if name.startswith(_RECORDED_HEADER_PREFIX) or name == "authorization"
            },
            received_at=time.time(),
        )

    def _certificate_identity(self, certificate: _ClientCertificate,
                              ) -> tuple[str, frozenset[str]]:
        """Who a certificate-based connection pushes as, and to which topics. The TLS
        handshake already checked its issuer and validity."""
        if not certificate.topics:
            raise _Rejection("BadCertificate")
        if (self.environment is not None and certificate.environments
                and self.environment not in certificate.environments):
            raise _Rejection("BadCertificateEnvironment")
        return certificate.sha256, certificate.topics

    def _authenticate(self, conn: _Connection, authorization: str | None) -> _Key:
        if not authorization:
            raise _Rejection("MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Rejection("InvalidProviderToken")

        cached = conn.verified.get(token)
        if cached is None:
            cached = self._verify(token)
            if len(conn.verified) >= _VERIFIED_CACHE_SIZE:
                conn.verified.clear()
            conn.verified[token] = cached
        key, iat = cached

        now = time.time()
        if iat > now + PROVIDER_TOKEN_CLOCK_SKEW_S:
            raise _Rejection("InvalidProviderToken")
        if now - iat > MAX_PROVIDER_TOKEN_AGE_S:
            raise _Rejection("ExpiredProviderToken")
        # Tokens of more than one team on one connection are not supported by APNs.
        if conn.team_id is not None and conn.team_id != key.team_id:
            raise _Rejection("InvalidProviderToken")

        if not conn.authenticated:
            conn.authenticated = True
            conn.team_id = key.team_id
            # Sent before this stream's answer, so the client sees it first.
            conn.h2.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: AUTHENTICATED_MAX_STREAMS}
            )

        # Apple counts token updates per team on a connection, whichever key signed them.
        previous = conn.current_token
        if (
            previous is not None
            and previous[0] != iat
            and abs(iat - previous[0]) < self.min_token_refresh_s
        ):
            raise _Rejection("TooManyProviderTokenUpdates")
        conn.current_token = (iat, token)
        return key

    def _verify(self, token: str) -> tuple[_Key, int]:
        """The trusted key and ``iat`` of a well-formed, correctly signed provider token."""
        try:
            encoded_header, encoded_claims, encoded_signature = token.split(".")
            header = json.loads(_b64url(encoded_header))
            claims = json.loads(_b64url(encoded_claims))
            signature = _b64url(encoded_signature)
        except ValueError as exc:  # also binascii.Error and JSONDecodeError
            raise _Rejection("InvalidProviderToken") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _Rejection("InvalidProviderToken")
        # Only ES256: never let the token pick a weaker algorithm (or "none").
        if header.get("alg") != "ES256":
            raise _Rejection("InvalidProviderToken")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None or len(signature) != 64:
            raise _Rejection("InvalidProviderToken")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            key.public_key.verify(
                der,
                f"{encoded_header}.{encoded_claims}".encode("ascii"),
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, UnicodeEncodeError) as exc:
            raise _Rejection("InvalidProviderToken") from exc
        iat = claims.get("iat")
        if claims.get("iss") != key.team_id or not isinstance(iat, int) or isinstance(iat, bool):
            raise _Rejection("InvalidProviderToken")
        return key, iat

    def _scripted_or_known_answer(self, device_token: str) -> None:
        token = device_token.lower()
        now_ms = int(time.time() * 1000)
        script = self._scripted.get(token)
        if script:
            reason = script.popleft()
            raise _Rejection(reason, now_ms if reason == "Unregistered" else None)
        if token in self._unregistered:
            raise _Rejection("Unregistered", self._unregistered[token])
        if token.startswith("dead"):
            raise _Rejection("Unregistered", now_ms)
        if token.startswith("bad0"):
            raise _Rejection("BadDeviceToken")


def _device_token_from_path(path: str) -> str:
    if path in (_DEVICE_PATH, _DEVICE_PATH + "/"):
        raise _Rejection("MissingDeviceToken")
    if not path.startswith(_DEVICE_PATH + "/"):
        raise _Rejection("BadPath")
    return path[len(_DEVICE_PATH) + 1 :]


def _topic_allowed(topic: str, bundles: frozenset[str]) -> bool:
    if topic in bundles:
        return True
    return any(
        topic.endswith(suffix) and topic[: -len(suffix)] in bundles
        for suffix in TOPIC_SUFFIX_BY_PUSH_TYPE.values()
    )


def _check_push_type_matches_topic(push_type: str, topic: str) -> None:
    # What Apple answers, as providers report it: a VoIP push to the plain bundle id is
    # DeviceTokenNotForTopic, a ".voip" topic with another push type is InvalidPushType.
    suffix = TOPIC_SUFFIX_BY_PUSH_TYPE.get(push_type)
    if suffix is not None and not topic.endswith(suffix):
        raise _Rejection("DeviceTokenNotForTopic")
    for other_type, other_suffix in TOPIC_SUFFIX_BY_PUSH_TYPE.items():
        if other_type != push_type and topic.endswith(other_suffix):
            raise _Rejection("InvalidPushType")


def _parse_payload(stream: _Stream, push_type: str | None) -> dict[str, Any]:
    if stream.body_bytes == 0:
        raise _Rejection("PayloadEmpty")
    limit = MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES
    if stream.body_bytes > limit:
        raise _Rejection("PayloadTooLarge")
    try:
        payload = json.loads(bytes(stream.body).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    # Apple documents no reason for a body that is not a JSON object with an "aps"
    # dictionary; PayloadEmpty is the nearest documented one (nothing deliverable).
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        raise _Rejection("PayloadEmpty")
    return payload


def _single(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key == name]
    return values[0] if len(values) == 1 else None


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


__all__ = ["PUSH_TYPES", "STATUS_BY_REASON", "FakeAPNs", "ReceivedPush"]
