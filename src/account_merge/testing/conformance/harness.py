"""The hook every contract needs (:class:`StorageHarness`), its fixtures, and the
sample data (schools, accounts, children, links) the contracts share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

from account_merge.domain.account import Account, AccountStatus, Role
from account_merge.domain.child import Child, ChildLink
from account_merge.ports.storage import ChangeSet, Fetch, NewAccount, Storage
from account_merge.service import MergeService
from account_merge.testing import FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
OTHER_SCHOOL = make_establishment(860002, "Lycée Camille Guérin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"
HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"
OTHER_HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdDI$aGFzaDI"


def _account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent Numéro {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def _new(*numbers: int, **changes: Any) -> ChangeSet:
    return ChangeSet(new_accounts=tuple(NewAccount(_account(n, **changes), f"parent.{n}")
                                        for n in numbers))


def _child(n: int, school: str = SCHOOL.uai, first: str | None = None) -> Child:
    return Child(f"ine-{n}", first or f"Enfant{n}", "Robert", school)


def _link(account_id: str, n: int, *, via_merge: bool = False, at: datetime = T0,
          school: str = SCHOOL.uai, first: str | None = None) -> ChildLink:
    return ChildLink(account_id=account_id, child=_child(n, school, first),
                     origin_account_id=account_id, origin_establishment_uai=school,
                     via_merge=via_merge, linked_at=at)


class StorageHarness:
    """The hook every contract needs, and the fixtures built on it."""

    #: Examples the state machine runs; raise it for a nightly run.
    state_machine_examples = 25

    def make_storage(self) -> Storage:
        """A fresh, empty store.  Every subclass implements this."""
        raise NotImplementedError("implement make_storage() to run the storage contract")

    def close_storage(self, storage: Storage) -> None:
        """Release a store made by :meth:`make_storage`."""
        storage.close()

    def make_broken_storage(self) -> Storage | None:
        """A store whose backend cannot be used (corrupt file, no server), or None."""
        return None

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage] | None:
        """A store on *storage*'s database inside a host transaction rolled back at exit.

        None (the default) when the store has no such mode.
        """
        return None

    def dump_storage(self, storage: Storage) -> str | None:
        """Every row *storage* holds, in every table it has (and any file beside it), as text.

        None (the default) when the store offers no such view.  Read the
        tables the database has, not those the store knows, so that a table
        added later is dumped too.
        """
        return None

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        store = self.make_storage()
        try:
            yield store
        finally:
            self.close_storage(store)

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(T0)

    @pytest.fixture
    def service(self, storage: Storage, clock: FakeClock) -> MergeService:
        return MergeService(storage, fast_verifier(), clock)

    @staticmethod
    def apply(storage: Storage, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own."""
        with storage.unit_of_work() as uow:
            uow.apply(changes)
            uow.commit()

    @staticmethod
    def fetch(storage: Storage, request: Fetch) -> Any:
        """Read *request* in a read-only unit of work."""
        with storage.unit_of_work(write=False) as uow:
            return uow.fetch(request)

    @staticmethod
    def family(service: MergeService, name: str = "Claire Robert",
               kids: tuple[int, ...] = (1, 2)) -> tuple[Account, list[Any]]:
        """An activated principal and one more letter per extra child."""
        letters = [service.issue_account(SCHOOL, name, [_child(k)]) for k in kids]
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        return principal, letters[1:]
