"""The service against a plain model, on every store (invariants I1-I5, I7)."""

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from account_merge.ports import Storage
from account_merge.testing.state_machine import build_state_machine

#: Examples per store: a step costs microseconds in memory and milliseconds on a
#: server, where the conformance suite runs the machine again (tests/test_storage_sqlalchemy.py).
EXAMPLES = {"memory": 60, "sqlite": 40, "postgresql": 10}


def test_the_service_follows_the_model_on_every_store(
        make_storage: Callable[[], Storage], request: pytest.FixtureRequest) -> None:
    machine = build_state_machine(make_storage, close=lambda s: s.close())
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES[request.node.callspec.params["make_storage"]],
        stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)))
