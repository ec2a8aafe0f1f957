"""Tier ``bulk_load`` on SQLite: many accounts stored in one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from account_merge.domain.account import Role
from account_merge.exceptions import LoginTaken
from account_merge.storage.bulk import BulkAccount
from account_merge.storage.sqlite.errors import _is_login_clash
from account_merge.storage.sqlite.rows import _LINK_COLUMNS, _optional_time
from account_merge.storage.sqlite.statements import _PUT_CHILD, _PUT_CREDENTIAL

if TYPE_CHECKING:
    from account_merge.storage.sqlite.store import _SQLiteUnitOfWork


class _BulkLoadTier:
    """Tier ``bulk_load`` of the store (:class:`~account_merge.ports.tiers.BulkLoad`)."""

    if TYPE_CHECKING:
        def unit_of_work(self, *, write: bool = True) -> _SQLiteUnitOfWork: ...

        def _translating(self) -> AbstractContextManager[None]: ...

    def bulk_insert(self, rows: Sequence[BulkAccount]) -> None:
        """Store *rows* in one transaction, one ``executemany`` per table.

        Tier ``bulk_load`` (:class:`~account_merge.ports.tiers.BulkLoad`),
        the fast path of :func:`account_merge.storage.bulk.insert_accounts`,
        for tests and benchmarks that need a large store: the accounts and
        their hashes are taken as they are, without events or audit
        records.  A login or id already in use raises ``LoginTaken`` and
        stores none of *rows*.
        """
        responsable = Role.RESPONSABLE.value
        times: dict[datetime | None, str | None] = {None: None}

        def text(at: datetime | None) -> str | None:
            # Bulk rows share a few instants: format each once.
            if at not in times:
                times[at] = _optional_time(at)
            return times[at]

        with self.unit_of_work(write=True) as uow:
            connection = uow._connection()
            with self._translating():
                try:
                    connection.executemany(
                        "INSERT INTO accounts (id, login, login_key, role, status, display_name,"
                        " establishment_uai, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(r.account_id, r.login, r.login_key, responsable, r.status.value,
                          r.display_name, r.establishment_uai, text(r.created_at))
                         for r in rows])
                except sqlite3.IntegrityError as error:
                    if _is_login_clash(error):
                        raise LoginTaken("a login or id of the bulk is in use") from None
                    raise
                connection.executemany(
                    _PUT_CREDENTIAL,
                    [(r.account_id, r.password_hash, r.credential_kind.value,
                      text(r.credential_expires_at)) for r in rows])
                connection.executemany(
                    _PUT_CHILD,
                    [(r.child_id, r.child_first_name, r.child_last_name, r.establishment_uai)
                     for r in rows])
                connection.executemany(
                    f"INSERT INTO links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    [(r.account_id, r.child_id, r.child_first_name, r.child_last_name,
                      r.establishment_uai, r.account_id, r.establishment_uai,
                      text(r.created_at)) for r in rows])
            uow.commit()
