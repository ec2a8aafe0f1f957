"""Loading many accounts at once, for tests and benchmarks.

A store of a million accounts cannot be filled through the service: each
account would cost an argon2 hash, one by one.  :func:`insert_accounts`
stores accounts whose hash was computed beforehand (many accounts may
share one), as the rows :meth:`~account_merge.MergeService.issue_account`
would have written for them, but without events or audit records.  A
store that has a faster way to do it offers the ``bulk_load`` tier,
:class:`~account_merge.ports.tiers.BulkLoad`
(:class:`~account_merge.storage.sqlite.SQLiteStorage` does: one
``executemany`` per table and chunk); any other store is filled with one
:class:`~account_merge.ports.ChangeSet` per chunk, applied in a unit of
work of its own.

Nothing here is for production data: it trusts its rows, which are not
validated as the service validates what it stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import NamedTuple

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.child import Child, ChildLink
from account_merge.ports.storage import ChangeSet, NewAccount, Storage
from account_merge.ports.tiers import BulkLoad

__all__ = ["DEFAULT_CHUNK", "BulkAccount", "chunks", "insert_accounts"]

#: Accounts written per transaction.
DEFAULT_CHUNK = 20_000


class BulkAccount(NamedTuple):
    """One responsable account with one child, as plain values.

    *status* is PROVISIONAL (the credential is the letter's provisional
    password, valid until *expires_at*) or ACTIVE (the owner's password,
    *expires_at* is ignored).
    """

    account_id: str
    login: str
    login_key: str
    status: AccountStatus
    display_name: str
    establishment_uai: str
    created_at: datetime
    password_hash: str
    expires_at: datetime | None
    child_id: str
    child_first_name: str
    child_last_name: str

    @property
    def credential_kind(self) -> CredentialKind:
        """The kind of credential the account holds."""
        return (CredentialKind.PROVISIONAL if self.status is AccountStatus.PROVISIONAL
                else CredentialKind.PASSWORD)

    @property
    def credential_expires_at(self) -> datetime | None:
        """When the credential expires (only a provisional one does)."""
        return self.expires_at if self.status is AccountStatus.PROVISIONAL else None


def chunks(rows: Iterable[BulkAccount], size: int) -> Iterator[list[BulkAccount]]:
    """*rows* cut in lists of at most *size*, read lazily."""
    if size < 1:
        raise ValueError("size must be at least 1")
    source = iter(rows)
    while chunk := list(islice(source, size)):
        yield chunk


def insert_accounts(
    storage: Storage,
    rows: Iterable[BulkAccount],
    *,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Store *rows*, *chunk* accounts per transaction; return how many.

    Uses the store's ``bulk_insert`` when it has the ``bulk_load`` tier, one
    change set per chunk otherwise.  A login or id already in use raises
    ``LoginTaken``; the chunks before it stay stored, none of its own
    chunk does.  *progress*, if given, is called with the number stored so
    far after each chunk.
    """
    fast = storage.bulk_insert if isinstance(storage, BulkLoad) else None
    done = 0
    for part in chunks(rows, chunk):
        if fast is not None:
            fast(part)
        else:
            _insert_as_change_set(storage, part)
        done += len(part)
        if progress is not None:
            progress(done)
    return done


def _insert_as_change_set(storage: Storage, rows: list[BulkAccount]) -> None:
    accounts, credentials, links = [], [], []
    for row in rows:
        accounts.append(NewAccount(Account(
            id=row.account_id, login=row.login, role=Role.RESPONSABLE, status=row.status,
            display_name=row.display_name, establishment_uai=row.establishment_uai,
            created_at=row.created_at,
        ), row.login_key))
        credentials.append(Credential(
            account_id=row.account_id, password_hash=row.password_hash,
            kind=row.credential_kind, expires_at=row.credential_expires_at,
        ))
        child = Child(row.child_id, row.child_first_name, row.child_last_name,
                      row.establishment_uai)
        links.append(ChildLink(
            account_id=row.account_id, child=child, origin_account_id=row.account_id,
            origin_establishment_uai=row.establishment_uai, via_merge=False,
            linked_at=row.created_at,
        ))
    with storage.unit_of_work(write=True) as uow:
        uow.apply(ChangeSet(new_accounts=accounts, credentials=credentials, link=links))
        uow.commit()
