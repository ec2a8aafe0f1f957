"""Filling a store with many accounts in seconds, for tests and benchmarks.

>>> from account_merge import InMemoryStorage, MergeService
>>> from account_merge.testing import bulk_load, fast_verifier, make_establishment
>>> verifier = fast_verifier()
>>> storage = InMemoryStorage()
>>> loaded = bulk_load(storage, make_establishment(), 1000,
...                    password_hash=verifier.hash("2BUYJ9C8"))
>>> service = MergeService(storage, verifier)
>>> service.authenticate(loaded.login(7), "2BUYJ9C8")
Traceback (most recent call last):
...
account_merge.exceptions.ActivationRequired: ...
>>> service.activate(loaded.login(7), "2BUYJ9C8", "Un-Mot-De-Passe-42!").id == loaded.account_id(7)
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import attrs

from account_merge.domain.account import AccountStatus
from account_merge.domain.establishment import Establishment
from account_merge.ports import ChangeSet, Fetch, Storage
from account_merge.storage.bulk import DEFAULT_CHUNK, BulkAccount, insert_accounts

__all__ = ["BulkAccounts", "bulk_load"]

_PREFIX = re.compile(r"[a-z][a-z0-9]{0,15}", re.ASCII)


@attrs.frozen
class BulkAccounts:
    """The accounts one :func:`bulk_load` stored, numbered from 0 to ``count - 1``.

    Account *i* has the id :meth:`account_id`, the login :meth:`login` and
    one child, :meth:`child_id`, enrolled in the establishment.
    """

    prefix: str
    count: int
    establishment_uai: str
    status: AccountStatus

    def account_id(self, i: int) -> str:
        """The id of account *i*."""
        return f"{self.prefix}-{i:08d}"

    def login(self, i: int) -> str:
        """The login of account *i* (already in its normalised form)."""
        return f"{self.prefix}.{i}"

    def child_id(self, i: int) -> str:
        """The id of the child of account *i*."""
        return f"{self.prefix}-child-{i:08d}"

    def display_name(self, i: int) -> str:
        """The name of the responsable of account *i*."""
        return f"Responsable {self.prefix} {i}"

    def __len__(self) -> int:
        return self.count


def bulk_load(
    storage: Storage,
    establishment: Establishment,
    count: int,
    *,
    password_hash: str,
    status: AccountStatus = AccountStatus.PROVISIONAL,
    prefix: str = "bulk",
    created_at: datetime | None = None,
    validity: timedelta = timedelta(days=90),
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> BulkAccounts:
    """Store *count* responsable accounts of *establishment*, each with one child.

    Every account gets *password_hash* (hash one password once, with the
    verifier the test uses, and share it): nothing is hashed here, so a
    million accounts take seconds, not days.  *status* is PROVISIONAL
    (letters not yet used, valid for *validity* from *created_at*, now by
    default) or ACTIVE.  *prefix* (lower-case letters and digits, starting
    with a letter) keeps the ids and logins of several loads apart.  The
    rows are those the service writes, without events or audit records;
    see :mod:`account_merge.storage.bulk`.
    """
    if not _PREFIX.fullmatch(prefix):
        raise ValueError("prefix must be 1 to 16 lower-case letters or digits, "
                         "starting with a letter")
    if status is AccountStatus.MERGED:
        raise ValueError("bulk_load stores PROVISIONAL or ACTIVE accounts")
    if count < 0:
        raise ValueError("count must not be negative")
    loaded = BulkAccounts(prefix=prefix, count=count, establishment_uai=establishment.uai,
                          status=status)
    at = created_at if created_at is not None else datetime.now(UTC)
    expires = at + validity
    with storage.unit_of_work(write=True) as uow:
        if establishment.uai not in uow.fetch(
                Fetch(establishments=(establishment.uai,))).establishments:
            uow.apply(ChangeSet(establishments=(establishment,)))
        uow.commit()

    def rows() -> Iterator[BulkAccount]:
        uai = establishment.uai
        for i in range(count):
            login = loaded.login(i)
            yield BulkAccount(
                account_id=loaded.account_id(i), login=login, login_key=login, status=status,
                display_name=loaded.display_name(i), establishment_uai=uai, created_at=at,
                password_hash=password_hash, expires_at=expires,
                child_id=loaded.child_id(i), child_first_name=f"Enfant{i}",
                child_last_name=prefix.capitalize(),
            )

    insert_accounts(storage, rows(), chunk=chunk, progress=progress)
    return loaded
