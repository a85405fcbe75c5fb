"""The endpoint health rules (gateway/health.py), which both queues carry out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.health import HEALTHY, Health, HealthRules, circuit, settle
from gateway_client.models import Circuit, Endpoint

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RULES = HealthRules(circuit_failures=3, circuit_cooldown_s=30, disable_after_s=3600)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_first_failure_after_a_success_starts_the_failing_clock() -> None:
    change = settle(HEALTHY, [(False, at(1))], RULES, at(2))
    assert change.health == Health(1, at(1), None, None)
    assert not (change.opened or change.closed or change.disable)


def test_later_failures_keep_the_clock_and_count_on() -> None:
    change = settle(Health(1, at(1)), [(False, at(5)), (False, at(4))], RULES, at(6))
    assert change.health.failing_since == at(1)
    assert change.health.consecutive_failures == 3


def test_the_circuit_opens_at_the_failure_that_makes_enough_in_a_row() -> None:
    change = settle(Health(2, at(1)), [(False, at(5))], RULES, at(6))
    assert change.opened and change.health.circuit_open_until == at(36)


def test_a_success_forgets_the_failures_before_it_and_closes_the_circuit() -> None:
    tripped = Health(7, at(1), at(40), at(50))
    change = settle(tripped, [(False, at(41)), (True, at(42))], RULES, at(43))
    assert change.closed and change.health == HEALTHY


def test_only_what_failed_after_the_batchs_last_success_counts() -> None:
    change = settle(Health(2, at(1)), [(True, at(10)), (False, at(11)), (False, at(9))],
                    RULES, at(12))
    assert change.health == Health(1, at(11), None, None)


def test_a_failed_probe_opens_the_circuit_again_without_counting_an_opening() -> None:
    half_open = Health(5, at(1), at(40), at(100))
    change = settle(half_open, [(False, at(41))], RULES, at(42))
    assert change.health.circuit_open_until == at(72)
    assert change.health.circuit_probe_until is None
    assert not change.opened and not change.closed


def test_an_endpoint_failing_for_the_whole_window_is_to_be_disabled() -> None:
    failing = Health(10, at(0))
    assert not settle(failing, [(False, at(3599))], RULES, at(3599)).disable
    assert settle(failing, [(False, at(3600))], RULES, at(3600)).disable
    # A success in the same batch restarts the clock.
    assert not settle(failing, [(True, at(3600))], RULES, at(3600)).disable


def test_the_circuit_is_shown_from_its_open_until_and_the_clock() -> None:
    assert circuit(None, at(0)) is Circuit.CLOSED
    assert circuit(at(10), at(5)) is Circuit.OPEN
    assert circuit(at(10), at(10)) is Circuit.HALF_OPEN


def test_the_client_reads_an_older_servers_endpoint_as_closed_and_keeps_its_reason() -> None:
    parsed = Endpoint.model_validate({
        "id": "ep_1", "url": "https://example.com/hook", "description": "",
        "event_types": None, "status": "disabled", "disabled_reason": "disabled by API",
        "disabled_at": None, "created_at": "2030-01-01T00:00:00Z",
        "updated_at": "2030-01-01T00:00:00Z"})
    assert (parsed.circuit, parsed.disabled_reason) == (Circuit.CLOSED, "disabled by API")
