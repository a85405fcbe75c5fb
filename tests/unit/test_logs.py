"""Log lines: JSON or text, the request line and its id, and nothing secret on any line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from gateway import logs
from gateway.api.routing import Route, wire

PEM = ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
       "-----END PRIVATE KEY-----\n")


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.parametrize(("raw", "expected"), [
    ("POST https://hooks.example.com/services/T0/B0/XyZ?token=abc failed",
     "POST https://hooks.example.com/... failed"),
    ("http://user:pa55@example.com:8443/x?y=1", "http://example.com:8443/..."),
    ("listening on http://127.0.0.1:8080", "listening on http://127.0.0.1:8080"),
    ("(http://[::1]:8080/a(b)?token=x)", "(http://[::1]:8080/..."),
    ("Authorization: Bearer gk_abcdefghijklmnop", "Authorization: Bearer [redacted]"),
    ("secret whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "secret whsec_[redacted]"),
    ("key gk_AbC-dEf_0123456789", "key gk_[redacted]"),
    ("user ut_eyJhIjoiYiJ9.c2ln", "user ut_[redacted]"),
    ("jwt eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJUIn0.sig-_x", "jwt [redacted jwt]"),
    ("oauth ya29.a0AfH6SMB-x_y", "oauth [redacted token]"),
    ("device " + "ab" * 32, "device [redacted hex]"),
    ("key " + PEM, "key [redacted key]\n"),
    ("fine: evt_0190aabbccdd00112233445566778899 took 12 ms",
     "fine: evt_0190aabbccdd00112233445566778899 took 12 ms"),
])
def test_scrub_cuts_urls_to_their_origin_and_replaces_credentials(raw: str,
                                                                  expected: str) -> None:
    assert logs.scrub(raw) == expected


def test_json_lines_carry_the_extra_fields_and_a_scrubbed_traceback(
        captured: io.StringIO) -> None:
    log = logging.getLogger("gateway.test")
    log.info("attempt %s", "done", extra={"delivery": "dlv_1", "duration_ms": 12,
                                          "error": "GET https://x.example/?sig=s3cr3t"})
    try:
        raise ValueError("cannot reach https://x.example/cb?token=t0ps3cret")
    except ValueError:
        log.exception("boom")
    first, second = lines(captured)
    assert first["msg"] == "attempt done" and first["level"] == "INFO"
    assert first["logger"] == "gateway.test" and first["ts"].endswith("Z")
    assert first["delivery"] == "dlv_1" and first["duration_ms"] == 12
    assert first["error"] == "GET https://x.example/..."
    assert "ValueError" in second["exc"] and "t0ps3cret" not in second["exc"]
    assert "s3cr3t" not in captured.getvalue()


def test_text_format_is_one_readable_line_with_key_value_fields() -> None:
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.configure("text", "INFO", stream=buffer)
    try:
        logging.getLogger("gateway.test").info("sent", extra={"delivery": "dlv_9",
                                                              "url": "https://h/p?q=1"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logs._handler = None
    line = buffer.getvalue().strip()
    assert "INFO gateway.test: sent" in line
    assert "delivery=dlv_9" in line and "url=https://h/..." in line


def test_configure_replaces_only_its_own_handler_and_quiets_chatty_libraries(
        captured: io.StringIO) -> None:
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.formatter is not None
            and isinstance(h.formatter, logs.JSONFormatter)]
    assert len(ours) == 1
    for name in ("httpx", "hpack", "h2", "aiohttp.access"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING
    logging.getLogger("httpx").info("HTTP Request: POST https://api.push.apple.com/3/device/ab")
    assert captured.getvalue() == ""
    with pytest.raises(ValueError, match="json, text"):
        logs.configure("xml", "INFO")


def test_configured_secrets_are_masked_wherever_they_appear(captured: io.StringIO) -> None:
    logs.configure("json", "DEBUG", stream=captured, secrets=("dev-admin-key-42", None, "x"))
    logging.getLogger("gateway.test").warning("key was dev-admin-key-42, x stays")
    assert lines(captured)[0]["msg"] == "key was [redacted], x stays"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_logging() -> Iterator[io.StringIO]:
    """The root logger as ``gateway serve`` sets it up (the buffered handler), text."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    handler = logs.configure("text", "INFO", stream=buffer, buffered=True)
    try:
        yield buffer
    finally:
        root.removeHandler(logs._handler or handler)
        (logs._handler or handler).close()
        root.setLevel(level)
        logs._handler = None


@contextlib.contextmanager
def alone() -> Iterator[logging.Handler]:
    """Only the gateway's handler on the root logger, as in the server (pytest adds its
    capture handlers for each test's call): the direct path is taken."""
    root = logging.getLogger()
    ours = logs._handler
    assert ours is not None
    others = [h for h in root.handlers if h is not ours]
    for other in others:
        root.removeHandler(other)
    try:
        assert logs._only_handler(logging.getLogger("gateway.test"), ours, logging.INFO)
        yield ours
    finally:
        for other in others:
            root.addHandler(other)


def _without_time(line: str, fmt: str) -> Any:
    if fmt == "json":
        found = json.loads(line)
        found.pop("ts")
        return found
    return line.split(" ", 2)[2]


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_a_line_emitted_directly_is_the_line_logging_writes_for_it(
        server_logging: io.StringIO, fmt: str) -> None:
    buffer = server_logging
    logs.configure(fmt, "INFO", stream=buffer, buffered=True)
    log = logging.getLogger("gateway.test")
    fields = {"app": "app_1", "attempt": 2, "device": None,
              "error": "GET https://x.example/?sig=s3cr3t", "note": 'two words "quoted"'}
    token = logs.request_id.set("rid-1")
    try:
        with alone() as handler:
            for trusted in (frozenset({"app"}), frozenset({"msg", "app"})):
                message = "attempt delivered to https://h.example/p?q=1"
                log.warning("%s", message, extra={logs.TRUSTED: trusted, **fields})
                logs.emit(log, logging.WARNING, message, dict(fields), trusted)
    finally:
        logs.request_id.reset(token)
    handler.flush()
    via_logging, direct, trusted_via_logging, trusted_direct = buffer.getvalue().splitlines()
    assert _without_time(direct, fmt) == _without_time(via_logging, fmt)
    assert _without_time(trusted_direct, fmt) == _without_time(trusted_via_logging, fmt)
    assert "s3cr3t" not in buffer.getvalue() and "rid-1" in direct
    assert "q=1" not in direct and "q=1" in trusted_direct  # the message scrubbed unless trusted


def test_emitted_lines_are_formatted_in_batches_and_written_in_order_with_the_rest(
        server_logging: io.StringIO) -> None:
    buffer = server_logging
    log = logging.getLogger("gateway.test")
    with alone() as handler:
        assert isinstance(handler, logs.BufferedHandler)
        handler._stopped.set()  # no flusher thread in the way: only this test formats
        handler._thread.join()
        for n in range(handler.batch - 1):
            logs.emit(log, logging.INFO, f"queued-{n}", {"n": n})
        assert handler._parts and not handler._lines  # parts only, none formatted yet
        log.info("through-logging")  # formats what was queued before it, first
        assert not handler._parts
        for n in range(handler.batch):
            logs.emit(log, logging.INFO, f"batched-{n}", {"n": n})
        assert not handler._parts  # a full batch is formatted at once
        logs.emit(log, logging.INFO, "last-info", {})
        written = buffer.getvalue()
        logs.emit(log, logging.WARNING, "a-warning", {"why": "x"})
        assert written == "" and "last-info" in buffer.getvalue()  # written with the warning
    handler.flush()
    messages = [line.split(": ", 1)[1].split(" ")[0] for line in buffer.getvalue().splitlines()]
    assert messages == ([f"queued-{n}" for n in range(handler.batch - 1)]
                        + ["through-logging"]
                        + [f"batched-{n}" for n in range(handler.batch)]
                        + ["last-info", "a-warning"])


def test_a_queued_line_that_cannot_be_formatted_goes_the_way_logging_would_take_it(
        server_logging: io.StringIO) -> None:
    buffer = server_logging

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    log = logging.getLogger("gateway.test")
    with alone() as handler:
        logs.emit(log, logging.INFO, "before", {})
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            logs.emit(log, logging.INFO, "broken", {"value": Unprintable()})
            logs.emit(log, logging.INFO, "after", {})
            handler.flush()
    lines = buffer.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split(" ")[0] for line in lines] == ["before", "after"]
    assert "no text" in stderr.getvalue()  # logging's handleError reports it


def test_a_line_formatted_later_is_scrubbed_against_the_secrets_it_was_emitted_under(
        server_logging: io.StringIO) -> None:
    buffer = server_logging
    logs.configure("text", "INFO", stream=buffer, buffered=True,
                   secrets=["operator-key-123456"])
    log = logging.getLogger("gateway.test")
    with alone():
        logs.emit(log, logging.INFO, "sent to https://h.example/p?sig=s3cr3t",
                  {"note": "operator-key-123456", "url": "https://h.example/x?token=t0k3n"},
                  frozenset({"app"}))
    # Replaced before anything formatted that line: it keeps the secrets of its time.
    logs.configure("text", "INFO", stream=buffer, buffered=True)
    assert "sent to https://h.example" in buffer.getvalue()
    for secret in ("operator-key-123456", "s3cr3t", "t0k3n"):
        assert secret not in buffer.getvalue()


def test_a_line_whose_formatting_is_interrupted_is_never_written_twice(
        server_logging: io.StringIO) -> None:
    buffer = server_logging

    class Interrupting:
        def __str__(self) -> str:
            raise KeyboardInterrupt

    log = logging.getLogger("gateway.test")
    with alone() as handler:
        assert isinstance(handler, logs.BufferedHandler)
        handler._stopped.set()
        handler._thread.join()
        logs.emit(log, logging.INFO, "first", {})
        logs.emit(log, logging.INFO, "interrupted", {"value": Interrupting()})
        with pytest.raises(KeyboardInterrupt):
            handler.flush()
        logs.emit(log, logging.INFO, "after", {})
        handler.flush()
    lines = [line.split(": ", 1)[1].split(" ")[0] for line in buffer.getvalue().splitlines()]
    assert lines == ["first", "after"]


def test_a_line_goes_through_logging_when_another_handler_would_see_it(
        server_logging: io.StringIO) -> None:
    buffer = server_logging
    other = Collect()
    seen = other.records
    with alone() as handler:
        logging.getLogger().addHandler(other)
        try:
            logs.emit(logging.getLogger("gateway.test"), logging.INFO, "sent",
                      {"delivery": "dlv_1"})
            logs.emit(logging.getLogger("gateway.test"), logging.DEBUG, "quiet", {})
        finally:
            logging.getLogger().removeHandler(other)
    handler.flush()
    assert [(r.getMessage(), r.__dict__["delivery"]) for r in seen] == [("sent", "dlv_1")]
    assert "sent delivery=dlv_1" in buffer.getvalue() and "quiet" not in buffer.getvalue()


async def device(request: web.Request) -> web.Response:
    logs.annotate(request, app="app_1")
    return web.json_response({})


async def broken(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def test_one_request_line_names_the_route_never_the_path_and_echoes_the_request_id(
        aiohttp_client: Any, captured: io.StringIO) -> None:
    app = web.Application(middlewares=[logs.request_log])
    wire(app, [Route("GET", "/v1/devices/{token}", device, "d", "devices", auth=("none",)),
               Route("GET", "/gone", broken, "g", "t", auth=("none",))])
    client = await aiohttp_client(app)
    token = "ab" * 40
    async with client.get(f"/v1/devices/{token}?q={token}",
                          headers={"X-Request-Id": "req-123"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-123"
    async with client.get("/gone", headers={"X-Request-Id": "bad id {with} spaces"}) as resp:
        assert resp.status == 404
        generated = resp.headers["X-Request-Id"]
        assert len(generated) == 32 and generated != "req-123"
    async with client.get(f"/nowhere/{token}") as resp:
        assert resp.status == 404
    requests = [line for line in lines(captured) if line["logger"] == "gateway.http"]
    assert [r["route"] for r in requests] == ["/v1/devices/{token}", "/gone", "(no route)"]
    first = requests[0]
    assert first["request_id"] == "req-123" and first["status"] == 200
    assert first["method"] == "GET" and first["app"] == "app_1"
    assert isinstance(first["duration_ms"], float)
    assert requests[1]["request_id"] == generated and requests[1]["status"] == 404
    assert token not in captured.getvalue()
