"""MergeService.issue_accounts: a school's letters, hashed over worker processes."""

from __future__ import annotations

import os

import argon2
import pytest

from account_merge import (
    AccountStatus,
    Argon2Verifier,
    Child,
    Establishment,
    InMemoryStorage,
    MergeService,
)
from account_merge.exceptions import InvalidInput
from account_merge.ports import Fetch

COLLEGE = Establishment("0860001J", "Collège des Trois Rivières")


def cheap_service() -> MergeService:
    hasher = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
    return MergeService(InMemoryStorage(), Argon2Verifier(hasher, warn_if_weak=False))


def family(n: int) -> tuple[str, list[Child]]:
    return f"Responsable {n}", [Child(f"E{n}", f"Enfant{n}", "Robert", COLLEGE.uai)]


class WhereVerifier:
    """A picklable verifier whose hashes name the process that made them."""

    def hash(self, password: str) -> str:
        return f"made-in-{os.getpid()}"

    def verify(self, password_hash: str | None, password: str) -> bool:
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_issues_one_account_per_family_in_order(workers: int) -> None:
    service = cheap_service()

    letters = list(service.issue_accounts(COLLEGE, (family(n) for n in range(5)),
                                          workers=workers))

    assert [letter.display_name for letter in letters] == [f"Responsable {n}" for n in range(5)]
    for letter in letters:
        assert service.get_account(letter.account_id).status is AccountStatus.PROVISIONAL
        assert service.children(letter.account_id) == letter.children


def test_hashes_in_workers_with_the_verifier_parameters() -> None:
    """A hash made in a worker opens the account in the parent: same parameters."""
    service = cheap_service()
    letter = next(service.issue_accounts(COLLEGE, [family(1)], workers=2))

    account = service.activate(letter.login, letter.provisional_password, "Un-Mot-De-Passe-42!")

    assert account.status is AccountStatus.ACTIVE


def test_hashes_in_worker_processes_and_stores_in_this_one() -> None:
    storage = InMemoryStorage()
    service = MergeService(storage, WhereVerifier())

    letters = list(service.issue_accounts(COLLEGE, (family(n) for n in range(6)), workers=2))

    with storage.unit_of_work(write=False) as uow:
        hashes = {uow.fetch(Fetch(accounts=[letter.account_id])).accounts[  # type: ignore[union-attr]
                      letter.account_id].credential.password_hash
                  for letter in letters}
    assert f"made-in-{os.getpid()}" not in hashes
    assert len(hashes) >= 1


def test_an_invalid_family_stops_the_batch_after_the_families_before_it() -> None:
    service = cheap_service()
    families = [family(0), family(1), ("", [Child("E9", "A", "B", COLLEGE.uai)]), family(3)]

    issued = []
    with pytest.raises(InvalidInput):
        issued.extend(service.issue_accounts(COLLEGE, families, workers=2))

    assert [letter.display_name for letter in issued] == ["Responsable 0", "Responsable 1"]


@pytest.mark.parametrize("workers", [1, 2])
def test_reports_progress_once_per_letter_before_yielding_it(workers: int) -> None:
    service = cheap_service()
    reported: list[int] = []
    seen_when_yielded: list[int] = []

    for _letter in service.issue_accounts(COLLEGE, (family(n) for n in range(5)),
                                          workers=workers, progress=reported.append):
        seen_when_yielded.append(reported[-1])

    assert reported == [1, 2, 3, 4, 5]
    assert seen_when_yielded == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("workers", [0, -1, 257, 2_147_483_647, True, 2.0])
def test_a_number_of_workers_out_of_bounds_is_refused_before_any_work(workers: object) -> None:
    service = cheap_service()
    service.register_establishment(COLLEGE)
    with pytest.raises(InvalidInput) as refused:
        list(service.issue_accounts(COLLEGE, [family(1)], workers=workers))  # type: ignore[arg-type]
    assert refused.value.field == "workers"
    with pytest.raises(InvalidInput):
        service.sync_register(COLLEGE, [], workers=workers)  # type: ignore[arg-type]
    assert [r.action.value for r in service.audit_trail(None, 10)] == ["register_establishment"]
