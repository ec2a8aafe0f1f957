"""Races on PostgreSQL: real parallel connections, one per thread, committing for real.

Each thread has its own Django connection (so its own server session)
and closes it when done, as threads outside requests must.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections, transaction
from django_stores import empty_store
from fast_verifier import fast_django_verifier

from account_merge import Child, MergeService
from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage import close_side_connections
from account_merge.exceptions import AccountMergeError
from account_merge.testing import CountingVerifier, FakeClock, make_establishment
from account_merge.testing import race as race_threads

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"

pytestmark = [pytest.mark.django_db(transaction=True, databases=["postgres"]),
              pytest.mark.usefixtures("django_postgres")]


@pytest.fixture
def service() -> MergeService:
    return MergeService(empty_store("postgres"), fast_django_verifier(), FakeClock())


def race(workers: int, call: Callable[[int], Any]) -> list[Any]:
    """call(i) in *workers* threads released together; results or library errors."""
    return race_threads(workers, call, after=connections.close_all)


def child(n: int) -> Child:
    return Child(f"ine-{n}", f"Enfant{n}", "Robert", COLLEGE.uai)


def test_letters_issued_at_once_for_one_name_get_distinct_logins(service: MergeService) -> None:
    letters = race(8, lambda i: service.issue_account(COLLEGE, "Claire Robert", [child(i)]))
    assert all(not isinstance(letter, AccountMergeError) for letter in letters), letters
    assert len({letter.login for letter in letters}) == 8
    assert m.Account.objects.using("postgres").count() == 8


def test_two_letters_naming_one_child_at_once_store_the_child_once(
        service: MergeService) -> None:
    parents = ["Claire Robert", "Marc Robert"]
    letters = race(2, lambda i: service.issue_account(COLLEGE, parents[i], [child(1)]))
    assert m.Child.objects.using("postgres").count() == 1
    for letter in letters:
        assert service.children(letter.account_id) == (child(1),)


def test_a_split_racing_a_merge_loses_no_child(service: MergeService) -> None:
    """Rule I4 under a race: the establishment splits while the parent merges again."""
    first, second, third = (service.issue_account(COLLEGE, "Claire Robert", [child(n)])
                            for n in (1, 2, 3))
    principal = service.activate(first.login, first.provisional_password, STRONG)
    service.merge(principal.id, second.login, second.provisional_password)

    def act(i: int) -> Any:
        if i == 0:
            return service.split(COLLEGE, principal.id)
        return service.merge(principal.id, third.login, third.provisional_password)

    split, merged = race(2, act)
    assert not isinstance(split, AccountMergeError), split
    assert not isinstance(merged, AccountMergeError), merged
    # A split makes one account per letter the moved children came with.
    held = [c.id for holder in (principal.id, *split.new_account_ids)
            for c in service.children(holder)]
    assert sorted(held) == ["ine-1", "ine-2", "ine-3"]


def test_wrong_guesses_from_requests_at_once_are_counted_despite_their_rollbacks() -> None:
    """Ten requests (host transactions that roll back) guess one letter's password at once.

    Their counts meet on the side connections: only the attempts before the
    back-off run a verification, and every failure is on record.
    """
    verifier = CountingVerifier()
    service = MergeService(empty_store("postgres"), verifier, FakeClock())
    letter = service.issue_account(COLLEGE, "Claire Robert", [child(1)])
    principals = [service.activate(
        (mine := service.issue_account(COLLEGE, f"Parent {i}", [child(10 + i)])).login,
        mine.provisional_password, STRONG) for i in range(10)]
    verifier.reset()

    def guess(i: int) -> Any:
        try:
            with transaction.atomic(using="postgres"):
                return service.merge(principals[i].id, letter.login, "WRONG123")
        finally:
            close_side_connections()

    codes = sorted(r.code for r in race(10, guess))
    backoff = service.throttle.backoff_after
    assert verifier.verifications == backoff
    assert codes == ["invalid_credentials"] * backoff + ["too_many_attempts"] * (10 - backoff)
    failures = [r for r in service.audit_trail(None, limit=100) if r.action.value == "merge"]
    assert len(failures) == 10
