"""The service against a plain model, on every store (invariants I1-I5, I7)."""

from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from account_merge.ports import Storage
from account_merge.testing.state_machine import build_state_machine


def test_the_service_follows_the_model_on_every_store(
        make_storage: Callable[[], Storage]) -> None:
    machine = build_state_machine(make_storage, close=lambda s: s.close())
    run_state_machine_as_test(machine, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None,
        suppress_health_check=list(HealthCheck)))
