"""The service against a plain model, on every store (invariants I1-I5, I7)."""

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from account_merge import InMemoryStorage
from account_merge.ports import Storage
from account_merge.testing.state_machine import _ESTABLISHMENTS, build_state_machine

#: Examples per store: a step costs microseconds in memory and milliseconds on a
#: server, where the conformance suite runs the machine again
#: (tests/test_conformance_sqlalchemy.py).
EXAMPLES = {"memory": 60, "sqlite": 40, "postgresql": 10}


def test_the_service_follows_the_model_on_every_store(
        make_storage: Callable[[], Storage], request: pytest.FixtureRequest) -> None:
    machine = build_state_machine(make_storage, close=lambda s: s.close())
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES[request.node.callspec.params["make_storage"]],
        stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)))


def test_the_model_keeps_the_order_in_which_a_split_moved_the_children() -> None:
    """A split moves children in the order the account holds them, not by id.

    The principal holds Léa and Dylan in that order (merged from a letter
    that listed them so), then Florian from another letter: the split makes
    one account per letter, and the first, merged into another principal
    holding Dylan, must bring Léa only; the model must agree on the order
    of what moved.
    """
    college, lycee = _ESTABLISHMENTS
    machine = build_state_machine(InMemoryStorage)()
    kept = machine.issue_and_activate_a_principal(picks=[0, 1, 2], school=lycee)
    letter = machine.issue_and_activate_a_principal(picks=[2, 0], school=college)
    machine.merge_two_activated_accounts(principal=kept, absorbed=letter, mode="right")
    other = machine.issue_and_activate_a_principal(picks=[1], school=college)
    machine.merge_two_activated_accounts(principal=kept, absorbed=other, mode="right")
    holder = machine.issue_and_activate_a_principal(picks=[0], school=college)

    split_away = machine.split(account=kept, school=college)
    assert len(split_away.values) == 2  # one account per origin letter
    machine.merge_into_an_activated_account(principal=holder, absorbed=split_away.values[0],
                                            mode="right")

    machine.store_matches_model()
    machine.no_child_is_lost()
    machine.teardown()
