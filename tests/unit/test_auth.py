"""What failed keys are counted against, and who may read /metrics without a key."""

from __future__ import annotations

import pytest

from gateway.api.health import _loopback
from gateway.auth import client_of


@pytest.mark.parametrize(("address", "client"), [
    ("203.0.113.9", "203.0.113.9"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.9", "203.0.113.9"),
    (None, "unknown"),
])
def test_failed_keys_count_against_the_ipv4_address_or_the_ipv6_slash_64(
        address: str | None, client: str) -> None:
    assert client_of(address) == client


@pytest.mark.parametrize(("remote", "local"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("", True), (None, True),
    ("10.0.0.5", False), ("172.17.0.1", False), ("2001:db8::1", False), ("garbage", False),
])
def test_metrics_without_a_key_answer_loopback_clients_only(remote: str | None,
                                                            local: bool) -> None:
    assert _loopback(remote) is local
