"""The state machine catches the bugs it is meant to catch.

Each test plants one bug in the service and checks that the state machine
then fails; the unmodified service passes it (tests/test_state_machine.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import run_state_machine_as_test

from account_merge import InMemoryStorage
from account_merge.domain import proofs, rules
from account_merge.domain import retention as retention_rules
from account_merge.exceptions import AccountMergeError
from account_merge.service import merging, retention, splitting
from account_merge.testing.state_machine import build_state_machine

# No shrinking: finding the failure is the point, and shrinking is slow.
SETTINGS = settings(max_examples=2000, stateful_step_count=40, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None,
                    phases=(Phase.generate,))


def assert_machine_fails() -> None:
    with pytest.raises((AssertionError, FlakyFailure, AccountMergeError)) as raised:
        run_state_machine_as_test(build_state_machine(InMemoryStorage), settings=SETTINGS)
    assert not isinstance(raised.value, pytest.fail.Exception)


def test_it_catches_absorbed_accounts_left_two_hops_away(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_repointing(*args: Any) -> rules.MergePlan:
        return attrs.evolve(rules.plan_merge(*args), repointed=())

    monkeypatch.setattr(merging, "plan_merge", no_repointing)
    assert_machine_fails()


def test_it_catches_a_child_held_twice_after_a_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    def duplicating(principal: Any, absorbed: Any, principal_links: Any, absorbed_links: Any,
                    previously: Any, now: Any) -> rules.MergePlan:
        plan = rules.plan_merge(principal, absorbed, [], absorbed_links, previously, now)
        return attrs.evolve(plan, children=tuple(l.child for l in principal_links) + plan.moved)

    monkeypatch.setattr(merging, "plan_merge", duplicating)
    assert_machine_fails()


def test_it_catches_a_split_that_takes_children_of_another_establishment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def greedy(establishment: Any, account: Any, links: Any) -> rules.SplitPlan:
        plan = rules.plan_split(establishment, account, links)
        extra = tuple(link for link in links if link.via_merge and link not in plan.removed)
        first = plan.groups[0]
        return rules.SplitPlan(
            removed=plan.removed + extra,
            groups=(rules.SplitGroup(first.origin_account_id, first.links + extra),
                    *plan.groups[1:]))

    monkeypatch.setattr(splitting, "plan_split", greedy)
    assert_machine_fails()


def test_it_catches_a_split_that_hands_one_responsable_another_ones_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 12.3: every merged child of the school went to one new account."""
    def one_account(establishment: Any, account: Any, links: Any) -> rules.SplitPlan:
        plan = rules.plan_split(establishment, account, links)
        return rules.SplitPlan(removed=plan.removed, groups=(rules.SplitGroup(
            plan.groups[0].origin_account_id, plan.removed),))

    monkeypatch.setattr(splitting, "plan_split", one_account)
    assert_machine_fails()


def test_it_catches_a_merge_that_skips_the_password_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = proofs.openable_hash

    def lax(account: Any, credential: Any, now: Any, purpose: proofs.Purpose) -> str | None:
        if purpose is proofs.Purpose.MERGE and credential is not None:
            return str(credential.password_hash)  # ignores expiry and status
        return original(account, credential, now, purpose)

    monkeypatch.setattr(merging, "openable_hash", lax)
    assert_machine_fails()


def test_it_catches_a_purge_that_leaves_the_absorbed_accounts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def without_absorbed(due: Any, absorbed: Any, children: Any, **options: Any) -> Any:
        return retention_rules.plan_purge(due, {}, children, **options)

    monkeypatch.setattr(retention, "plan_purge", without_absorbed)
    assert_machine_fails()


def test_it_catches_a_purge_that_deletes_accounts_used_within_the_year(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's query and the check under lock both take 300 days for a year."""
    def hasty(policy: Any) -> Any:
        return attrs.evolve(policy, unused=timedelta(days=300))

    monkeypatch.setattr(retention, "unused_cutoff",
                        lambda policy, now: retention_rules.unused_cutoff(hasty(policy), now))
    monkeypatch.setattr(retention, "due_reason",
                        lambda account, credential, policy, **options: retention_rules.due_reason(
                            account, credential, hasty(policy), **options))
    assert_machine_fails()
