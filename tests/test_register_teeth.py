"""The state machine catches the register sync's bugs it is meant to catch.

Each test plants one bug in the sync (or in what it relies on) and checks
that the state machine then fails; the unmodified service passes it
(tests/test_state_machine.py).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import run_state_machine_as_test

from account_merge import InMemoryStorage
from account_merge.domain import proofs
from account_merge.domain.account import AccountStatus
from account_merge.domain.register import HolderPlan, plan_holder, reopened_status
from account_merge.exceptions import AccountMergeError
from account_merge.service import credential_check, merging, register, splitting
from account_merge.testing.state_machine import build_state_machine

SETTINGS = settings(max_examples=2000, stateful_step_count=40, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None,
                    phases=(Phase.generate,))


def assert_machine_fails() -> None:
    with pytest.raises((AssertionError, FlakyFailure, AccountMergeError)) as raised:
        run_state_machine_as_test(build_state_machine(InMemoryStorage), settings=SETTINGS)
    assert not isinstance(raised.value, pytest.fail.Exception)


def test_it_catches_a_newly_listed_child_left_unattached(monkeypatch: pytest.MonkeyPatch) -> None:
    def never_attaching(*args: Any) -> HolderPlan:
        plan = plan_holder(*args)
        return attrs.evolve(plan, link=tuple(lk for lk in plan.link if lk not in plan.attached),
                            attached=())

    monkeypatch.setattr(register, "plan_holder", never_attaching)
    assert_machine_fails()


def test_it_catches_a_second_letter_for_a_known_responsable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The duplicate-prone batch: every run issues every responsable a letter again."""
    monkeypatch.setattr(register._Sync, "compare", lambda self: None)
    assert_machine_fails()


def test_it_catches_a_child_lost_with_the_letter_merged_into_a_leaving_account(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that forgets the letters merged into the account, keeping only its own."""
    def own_letter_only(holder: Any, kind: Any, links: Any, held: Any, *rest: Any) -> HolderPlan:
        return plan_holder(holder, kind, links,
                           [r for r in held if r.account_id == holder.id], *rest)

    monkeypatch.setattr(register, "plan_holder", own_letter_only)
    assert_machine_fails()


def test_it_catches_a_whole_register_that_lets_no_child_leave(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_leavers(holder: Any, kind: Any, links: Any, held: Any, uai: Any, enrolled: Any,
                   now: Any) -> HolderPlan:
        return plan_holder(holder, kind, links, held, uai, None, now)

    monkeypatch.setattr(register, "plan_holder", no_leavers)
    assert_machine_fails()


def test_it_catches_a_closed_account_that_still_signs_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = proofs.openable_hash

    def closed_opens(account: Any, credential: Any, now: Any,
                     purpose: proofs.Purpose) -> str | None:
        if account is not None and account.status is AccountStatus.CLOSED:
            account = attrs.evolve(account, status=reopened_status(credential.kind))
        return original(account, credential, now, purpose)

    monkeypatch.setattr(credential_check, "openable_hash", closed_opens)
    monkeypatch.setattr(merging, "openable_hash", closed_opens)
    assert_machine_fails()


def test_it_catches_a_split_that_forgets_the_register(monkeypatch: pytest.MonkeyPatch) -> None:
    """A split that ignores who else the register lists for the children it moves."""
    monkeypatch.setattr(splitting, "_register_view",
                        lambda *args: splitting._RegisterView())
    assert_machine_fails()
