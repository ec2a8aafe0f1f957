"""DjangoStorage: the store's settings, its units of work and its attempts journals.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.bulk_load import _DjangoBulkLoad
from account_merge.contrib.django.storage.recovery import _DjangoRecovery
from account_merge.contrib.django.storage.register import _DjangoRegister
from account_merge.contrib.django.storage.retention import _DjangoRetention
from account_merge.contrib.django.storage.side import (
    DEFAULT_SIDE_LOCK_TIMEOUT,
    close_side_connections,
)
from account_merge.contrib.django.storage.transaction import _JOURNAL_NAMESPACE
from account_merge.ports.storage import ChangeSet
from account_merge.storage.attempts import (
    AttemptsJournal,
    check_template,
    file_journal,
    memory_journal,
)


class DjangoStorage:
    """The store in a database of the Django project (see the package docstring).

    *using* is a database alias; None lets the project's routers choose.
    *side_lock_timeout* bounds, in seconds, the lock waits of the side
    connection (PostgreSQL, inside a host's transaction).
    *attempts_journal* is where the attempts journal of a SQLite database
    is, a template of :func:`~account_merge.storage.attempts.journal_path`
    (default ``"{database}-attempts.sqlite3"``); every store of one
    database must be given the same.  Nothing connects before the first
    unit of work, and connections are Django's own: one per thread, opened
    and closed as Django does.
    """

    def __init__(self, using: str | None = None, *,
                 side_lock_timeout: float = DEFAULT_SIDE_LOCK_TIMEOUT,
                 attempts_journal: str | os.PathLike[str] | None = None) -> None:
        if isinstance(side_lock_timeout, bool) or not isinstance(side_lock_timeout,
                                                                 int | float) \
                or side_lock_timeout <= 0:
            raise ValueError("side_lock_timeout must be a positive number of seconds")
        self.using = using
        self.side_lock_timeout = float(side_lock_timeout)
        self.attempts_journal = check_template(attempts_journal)
        self._journals: set[AttemptsJournal] = set()
        self._journals_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DjangoStorage(using={self.using!r})"

    def unit_of_work(self, *, write: bool = True) -> _DjangoTieredUnitOfWork:
        """A new unit of work on this thread's connection; use it in a ``with`` block."""
        return _DjangoTieredUnitOfWork(self, write=write)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own, and commit.

        Inside a host's transaction on PostgreSQL, a change set of failed
        attempts only (``changes.only_attempts``) is one transaction of the
        side connection, and nothing reaches the host's; on SQLite, one
        transaction of the attempts journal.
        """
        with self.unit_of_work(write=True) as uow:
            uow.apply(changes)
            uow.commit()

    def close(self) -> None:
        """Close this thread's side connections and journal connections; Django owns the others."""
        close_side_connections()
        with self._journals_lock:
            journals = list(self._journals)
        for journal in journals:
            journal.close()

    def forget_attempts(self, using: str | None = None) -> None:
        """Empty this store's part of the attempts journal of a SQLite database.

        For tests: the journal outlives the rollback of a test case's
        transaction, as it outlives a request's (rule 6), so a suite that
        counts failures starts each test with this.  *using* is the alias
        (default: the store's for writing).  Nothing on another database.
        """
        connection = connections[using or self.alias(write=True)]
        if connection.vendor == "sqlite":
            self._journal_of(connection).forget(_JOURNAL_NAMESPACE)

    def _journal_of(self, connection: BaseDatabaseWrapper) -> AttemptsJournal:
        """The attempts journal of the SQLite database of *connection* (made if needed)."""
        name = str(connection.settings_dict.get("NAME") or "")
        if connection.is_in_memory_db():  # type: ignore[attr-defined]
            found = memory_journal(f"django:{name}")
        else:
            found = file_journal(name, self.attempts_journal)
        with self._journals_lock:
            self._journals.add(found)
        return found

    def alias(self, *, write: bool) -> str:
        """The database alias a unit of work uses."""
        if self.using is not None:
            return self.using
        chosen = router.db_for_write(m.Account) if write else router.db_for_read(m.Account)
        return str(chosen)

    def bulk_insert(self, rows: Sequence[Any]) -> None:
        """Tier ``bulk_load``: store many accounts in one transaction, all or none.

        *rows* are :class:`~account_merge.storage.bulk.BulkAccount` rows; a
        login or id in use raises ``LoginTaken`` and stores none of them.
        """
        with self.unit_of_work(write=True) as uow:
            uow.insert_bulk(rows)
            uow.commit()


class _DjangoTieredUnitOfWork(_DjangoRecovery, _DjangoRegister, _DjangoRetention,
                              _DjangoBulkLoad):
    """The unit of work a :class:`DjangoStorage` gives: the core tier and every optional one."""
