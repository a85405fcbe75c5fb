from __future__ import annotations

import pytest

from adapters.addresses import address_forbidden, ip_literal
from adapters.base import parse_retry_after


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1",
])
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert address_forbidden(address)


@pytest.mark.parametrize("address", [
    "::127.0.0.1", "::10.0.0.1", "::ffff:0:127.0.0.1", "::ffff:0:169.254.169.254",
    "2002:7f00:1::", "2002:a00:1::1", "2002:a9fe:a9fe::", "64:ff9b::127.0.0.1",
    "64:ff9b::10.1.2.3", "64:ff9b::169.254.169.254", "64:ff9b:1::8.8.8.8", "::", "::1%lo",
])
def test_ipv6_spellings_of_refused_ipv4_addresses_are_forbidden_too(address: str) -> None:
    assert address_forbidden(address)


@pytest.mark.parametrize("address", [
    "93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1",
    "64:ff9b::8.8.8.8",
])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not address_forbidden(address)


@pytest.mark.parametrize(("host", "address"), [
    ("127.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"), ("0X7F.0.0.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"), ("10.0.0.1.", "10.0.0.1"), ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"), ("169.254.43518", "169.254.169.254"), ("8.8.8.8", "8.8.8.8"),
    ("[::1]", "::1"),
])
def test_an_ip_address_in_any_form_a_browser_reads_is_an_address(host: str,
                                                                  address: str) -> None:
    assert str(ip_literal(host)) == address


@pytest.mark.parametrize("host", [
    "example.com", "127.0.0.1.1", "256.0.0.1", "127.16777216", "4294967296", "08.0.0.1",
    "0x7g.0.0.1", "127..1", ".127.0.0.1", "127.0.0.1..", "", "1e3", "١٢٧.0.0.1",
    "1_0.0.0.1", "9" * 5000,
])
def test_what_no_browser_reads_as_an_ipv4_address_is_a_name(host: str) -> None:
    assert ip_literal(host) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412420.0) == 60
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("\u00b9") is None  # a digit to str.isdigit, not to float()
