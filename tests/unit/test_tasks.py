"""The pure parts of background tasks: the window a task covers, the id bounds it walks,
and the CLI's ``--since 2d``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.errors import ValidationError
from gateway.ids import new_id, time_bound
from gateway.tasks import window
from gateway_client.commands import instant
from gateway_client.models import TaskKind

NOW = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)


def made_at(ms: int, fill: str) -> str:
    """An event id of that millisecond, with the least or greatest random part."""
    return f"evt_{ms:012x}{fill * 20}"


def test_ids_made_in_a_window_sort_between_its_bounds_and_none_equals_one() -> None:
    ms = int(NOW.timestamp() * 1000)
    start = time_bound("evt", NOW)
    end = time_bound("evt", NOW + timedelta(seconds=1))
    assert made_at(ms - 1, "f") < start < made_at(ms, "0") < made_at(ms + 999, "f") < end
    assert end < made_at(ms + 1000, "0")
    now = datetime.now(UTC)
    assert time_bound("evt", now - timedelta(minutes=1)) < new_id("evt") \
        < time_bound("evt", now + timedelta(minutes=1))
    assert time_bound("dlv", datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == "dlv_0000000003e8"
    assert time_bound("evt", NOW) == time_bound("evt", NOW.astimezone(timezone(
        timedelta(hours=5))))


def test_until_defaults_to_now_and_stops_there() -> None:
    since = NOW - timedelta(hours=2)
    assert window(TaskKind.RECOVER, since, None, NOW) == (since, NOW)
    assert window(TaskKind.RECOVER, since, NOW + timedelta(days=1), NOW) == (since, NOW)
    assert window(TaskKind.REPLAY, since, NOW - timedelta(hours=1), NOW) == (
        since, NOW - timedelta(hours=1))


@pytest.mark.parametrize(("since", "until", "field"), [
    (NOW + timedelta(seconds=1), None, "since"),
    (NOW - timedelta(hours=1), NOW - timedelta(hours=2), "until"),
    (NOW - timedelta(hours=1), NOW - timedelta(hours=1), "until"),
    (NOW, None, "since"),
])
def test_a_window_that_is_empty_or_starts_in_the_future_is_refused(
    since: datetime, until: datetime | None, field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        window(TaskKind.RECOVER, since, until, NOW)
    assert refused.value.details[0]["path"] == field


def test_a_replay_looks_back_no_further_than_retention_and_a_recover_as_far_as_asked() -> None:
    long_ago = NOW - timedelta(days=90)
    assert window(TaskKind.REPLAY, long_ago, None, NOW, retention_days=30) == (
        NOW - timedelta(days=30), NOW)
    assert window(TaskKind.REPLAY, long_ago, None, NOW, retention_days=0) == (long_ago, NOW)
    assert window(TaskKind.RECOVER, long_ago, None, NOW, retention_days=30) == (long_ago, NOW)
    with pytest.raises(ValidationError, match="GATEWAY_RETENTION_DAYS"):
        window(TaskKind.REPLAY, long_ago, long_ago + timedelta(days=1), NOW, retention_days=30)


def test_the_cli_takes_iso_times_as_given_and_durations_as_time_ago() -> None:
    assert instant("2030-01-31T10:00:00Z") == "2030-01-31T10:00:00Z"
    assert instant("90m", NOW) == "2030-01-31T10:30:00Z"
    assert instant("6h", NOW) == "2030-01-31T06:00:00Z"
    assert instant("2d", NOW) == "2030-01-29T12:00:00Z"
    assert instant("30s", NOW) == "2030-01-31T11:59:30Z"
