from __future__ import annotations

from dataclasses import fields

import pytest

from gateway.config import SETTINGS, Settings, load_settings, settings_help
from gateway.errors import ConfigError


def test_defaults_match_the_settings_table() -> None:
    loaded = load_settings({})
    for setting in SETTINGS:
        if setting.default is not None:
            assert getattr(loaded, setting.attr) == setting.parse(setting.default), setting.env


def test_every_settings_field_is_read_from_the_environment() -> None:
    assert {f.name for f in fields(Settings)} == {s.attr for s in SETTINGS}


def test_environment_values_are_parsed() -> None:
    s = load_settings({"GATEWAY_PORT": "9000", "GATEWAY_RETRY_SCHEDULE": "0.1, 0.2,0.5",
                       "GATEWAY_ALLOW_PRIVATE_ENDPOINTS": "true", "DATABASE_URL": "postgresql://x"})
    assert (s.port, s.retry_schedule, s.allow_private_endpoints, s.database_url) == (
        9000, (0.1, 0.2, 0.5), True, "postgresql://x")


@pytest.mark.parametrize(("env", "value"), [
    ("GATEWAY_PORT", "http"), ("GATEWAY_PORT", "70000"), ("GATEWAY_RETRY_SCHEDULE", "1,-2"),
    ("GATEWAY_ALLOW_PRIVATE_ENDPOINTS", "maybe"), ("GATEWAY_DELIVERY_TIMEOUT_S", "0"),
    ("GATEWAY_RETRY_JITTER", "1.5"), ("GATEWAY_LOG_LEVEL", "loud"),
])
def test_malformed_values_name_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        load_settings({env: value})


def test_help_lists_every_variable() -> None:
    text = settings_help()
    assert all(s.env in text for s in SETTINGS)


def test_lease_defaults_to_longer_than_the_delivery_timeout() -> None:
    assert load_settings({"GATEWAY_DELIVERY_TIMEOUT_S": "20"}).effective_lease_s > 20
