"""Custom endpoint headers: names, values and the headers the gateway keeps for itself
(gateway/endpoint_headers.py), and their sealing."""

from __future__ import annotations

import pytest

from gateway import crypto, endpoint_headers
from gateway.endpoint_headers import HeaderError, check, open_headers, seal_headers

KEY = crypto.new_key()


def test_token_names_and_visible_ascii_values_are_kept_as_given() -> None:
    headers = {"Authorization": "Bearer abc.def", "X-Tenant": "acme corp",
               "x-weird!#$%&'*+-.^_`|~": "tab\tok", "X-Empty": ""}
    assert check(headers) == headers
    assert check(None) == {} and check({}) == {}


@pytest.mark.parametrize("name", [
    "webhook-id", "Webhook-Signature", "WEBHOOK-TIMESTAMP", "webhook-anything",
    "Content-Type", "content-length", "Content-Encoding", "content-md5", "Host",
    "User-Agent", "Connection", "keep-alive", "Proxy-Authorization", "proxy-connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade", "traceparent", "TraceState", "Expect",
])
def test_headers_the_gateway_sets_or_that_shape_the_connection_are_refused(
        name: str) -> None:
    with pytest.raises(HeaderError) as caught:
        check({name: "x"})
    assert caught.value.name == name and "sets this header itself" in caught.value.message


@pytest.mark.parametrize(("headers", "name", "needle"), [
    ({"X A": "1"}, "X A", "token"),
    ({"X:A": "1"}, "X:A", "token"),
    ({"": "1"}, "", "token"),
    ({"X-Ä": "1"}, "X-Ä", "token"),
    ({"x" * 257: "1"}, "x" * 257, "token of 1 to 256"),
    ({"X-A": "a\r\nX-Evil: 1"}, "X-A", "no CR, LF, NUL"),
    ({"X-A": "a\nb"}, "X-A", "no CR, LF, NUL"),
    ({"X-A": "a\x00b"}, "X-A", "no CR, LF, NUL"),
    ({"X-A": "a\x7fb"}, "X-A", "control"),
    ({"X-A": "é"}, "X-A", "visible ASCII"),
    ({"X-A": "x" * 4097}, "X-A", "4096"),
    ({"X-A": "1", "x-a": "2"}, "x-a", "twice"),
])
def test_malformed_headers_are_refused_naming_the_header(
        headers: dict[str, str], name: str, needle: str) -> None:
    with pytest.raises(HeaderError) as caught:
        check(headers)
    assert caught.value.name == name and needle in caught.value.message


def test_at_most_32_headers() -> None:
    assert len(check({f"X-{i}": "v" for i in range(32)})) == 32
    with pytest.raises(HeaderError) as caught:
        check({f"X-{i}": "v" for i in range(33)})
    assert caught.value.name == "" and "32" in caught.value.message


def test_values_are_sealed_per_endpoint_and_name_and_open_only_there() -> None:
    sealer = crypto.Sealer(KEY)
    stored = seal_headers(sealer, "ep_1", {"Authorization": "Bearer s3cret"})
    assert "s3cret" not in stored and crypto.PREFIX in stored
    assert open_headers(sealer, "ep_1", stored) == (("Authorization", "Bearer s3cret"),)
    with pytest.raises(crypto.SecretUnreadable):
        open_headers(sealer, "ep_2", stored)
    moved = stored.replace("Authorization", "X-Other")
    with pytest.raises(crypto.SecretUnreadable):
        open_headers(sealer, "ep_1", moved)
    assert endpoint_headers.sealing_context("ep_1", "X-A") == \
        endpoint_headers.sealing_context("ep_1", "x-a")


def test_without_a_key_values_are_stored_plain_and_nothing_is_stored_for_none() -> None:
    plain = crypto.Sealer(None)
    assert open_headers(plain, "ep_1", seal_headers(plain, "ep_1", {"X-A": "1"})) == \
        (("X-A", "1"),)
    assert open_headers(plain, "ep_1", "{}") == () and open_headers(plain, "ep_1", None) == ()
