"""A fault at every write, one at a time (SQLite's own test method).

For merge, split and activate, the store is made to fail at its k-th
write (counting an attempt, each part of a change set -- the parts before
it written --, or commit), for every k
the operation makes, once or from then on.  The operation must then raise
an ``AccountMergeError`` and leave the store as it was (rule I5), apart
from the failure counters and the audit of the failure, which are
written on purpose; after a fault that does not last, the same operation
goes through.  On the naive store (no rollback), some fault leaves a trace:
the test has teeth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from account_merge import Child, MergeService, NotificationLetter
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Storage
from account_merge.testing import CountingVerifier, FakeClock, make_establishment
from naive_storage import NaiveStorage
from security_kit import InjectedFault, InstrumentedStorage, changes, snapshot, violations

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
NEW = "Nouvelle-Clé-Verte-2028"

Operation = Callable[[], object]


def world(storage: Storage) -> tuple[InstrumentedStorage, dict[str, Operation]]:
    """A store where a merge, a split and an activation each write many rows."""
    store = InstrumentedStorage(storage)
    service = MergeService(store, CountingVerifier(), FakeClock())

    def issue(n: int) -> NotificationLetter:
        return service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                     [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai),
                                      Child(f"ine-{n}b", "Autre", "Robert", SCHOOL.uai)])

    principal = issue(1)
    principal_account = service.activate(principal.login, principal.provisional_password, STRONG)
    other, absorbed_by_other, held, letter = issue(2), issue(3), issue(4), issue(5)
    other_account = service.activate(other.login, other.provisional_password, OTHER)
    service.merge(other_account.id, absorbed_by_other.login,
                  absorbed_by_other.provisional_password)
    service.merge(principal_account.id, held.login, held.provisional_password)
    return store, {
        # repoints an absorbed account, moves children, keeps a receipt
        "merge": lambda: service.merge(principal_account.id, other.login, OTHER, "form-1"),
        # a new account, its credential and the children it takes
        "split": lambda: service.split(SCHOOL, principal_account.id),
        "activate": lambda: service.activate(letter.login, letter.provisional_password, NEW),
    }


def writes_of(storage: Storage, name: str) -> int:
    """How many writes the operation makes when nothing fails."""
    store, operations = world(storage)
    with store.counting_writes() as count:
        operations[name]()
    return count()


def run_with_fault(storage: Storage, name: str, k: int, *,
                   persistent: bool) -> tuple[dict[Any, Any], AccountMergeError | None, Any]:
    """Fail the k-th write of the operation: what changed, what was raised, and the world."""
    store, operations = world(storage)
    before = snapshot(store, counters=False)
    store.arm(k, persistent=persistent)
    raised: AccountMergeError | None = None
    try:
        operations[name]()
    except AccountMergeError as error:
        raised = error
    finally:
        store.disarm()
    return changes(before, snapshot(store, counters=False)), raised, (store, operations)


OPERATIONS = ["merge", "split", "activate"]


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("name", OPERATIONS)
def test_a_fault_at_any_write_changes_nothing(
        make_storage: Callable[[], Storage], name: str, persistent: bool) -> None:
    total = writes_of(make_storage(), name)
    assert total >= 5, total
    for k in range(1, total + 1):
        changed, raised, (store, operations) = run_with_fault(make_storage(), name, k,
                                                              persistent=persistent)
        assert isinstance(raised, AccountMergeError), f"write {k}: no error came out"
        assert any(isinstance(e, InjectedFault) for e in (raised, raised.__context__)), raised
        assert changed == {}, f"write {k} of {total} left: {changed}"
        assert violations(store) == [], k
        if not persistent:
            operations[name]()  # the fault has passed: the same operation goes through
            assert violations(store) == [], k


@pytest.mark.parametrize("name", OPERATIONS)
def test_on_a_store_without_rollback_some_fault_leaves_a_trace(name: str) -> None:
    """The test above has teeth: the naive store keeps half-written operations."""
    total = writes_of(NaiveStorage(), name)
    traces = [k for k in range(1, total + 1)
              if run_with_fault(NaiveStorage(), name, k, persistent=False)[0]]
    assert traces, "no fault left a trace on a store that cannot roll back"
