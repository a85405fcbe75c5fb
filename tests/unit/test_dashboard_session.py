"""Dashboard sessions and what a sandbox push looks like on a phone: pure logic."""

from __future__ import annotations

import time

from gateway import dashboard


def test_a_session_signed_with_the_operator_key_reads_back_in_another_process() -> None:
    now = time.time()
    operator_key = "operator-key-one"  # long enough not to turn up in base64 by chance
    token = dashboard.issue_session(dashboard.session_key(operator_key), "app", "app_1", now)
    # Another gateway process derives the same key from the same GATEWAY_ADMIN_KEY.
    session = dashboard.read_session(dashboard.session_key(operator_key), token, now + 60)
    assert session is not None and session.kind == "app" and session.app_id == "app_1"
    assert session.expires_at == int(now) + 12 * 3600
    assert operator_key not in token


def test_forged_tampered_and_expired_sessions_are_refused() -> None:
    key = dashboard.session_key("k1")
    now = time.time()
    token = dashboard.issue_session(key, "app", "app_1", now)
    assert dashboard.read_session(dashboard.session_key("k2"), token, now) is None
    assert dashboard.read_session(key, token, now + 12 * 3600 + 1) is None
    admin_body = dashboard.issue_session(key, "admin", None, now).split(".")[0]
    assert dashboard.read_session(key, admin_body + "." + token.split(".")[1], now) is None
    for junk in ("", ".", "abc", "abc.def", token + "x", "é.é"):
        assert dashboard.read_session(key, junk, now) is None


def test_the_csrf_token_belongs_to_one_session() -> None:
    key = dashboard.session_key("k1")
    now = time.time()
    one = dashboard.read_session(key, dashboard.issue_session(key, "admin", None, now), now)
    two = dashboard.read_session(key, dashboard.issue_session(key, "admin", None, now + 1),
                                 now)
    assert one is not None and two is not None
    assert dashboard.csrf_token(key, one) == dashboard.csrf_token(key, one)
    assert dashboard.csrf_token(key, one) != dashboard.csrf_token(key, two)


def test_sandbox_pushes_read_as_phone_notifications() -> None:
    apns = dashboard.notification("apns", {
        "aps": {"alert": {"title": "Bob", "subtitle": "Chat", "body": "Hi"}, "badge": 2},
        "chat": "42"}, 0.0)
    assert (apns.title, apns.subtitle, apns.body) == ("Bob", "Chat", "Hi")
    assert ("badge", "2") in apns.details and ("chat", '"42"') in apns.details
    quiet = dashboard.notification("apns", {"aps": {"content-available": 1}}, 0.0)
    assert quiet.background
    fcm = dashboard.notification("fcm", {
        "token": "t", "notification": {"title": "Sale", "body": "Today"},
        "android": {"priority": "high", "notification": {"body": "Today only"}},
        "data": {"order": "7"}}, 0.0)
    assert (fcm.title, fcm.body) == ("Sale", "Today only")
    assert ("order", "7") in fcm.details and ("priority", '"high"') in fcm.details
