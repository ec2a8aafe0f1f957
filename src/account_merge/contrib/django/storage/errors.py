"""Database errors as the library's: a lost race is ``ConcurrentUpdate``, any other
error a ``StorageError`` naming the alias and the database (never its password).
"""

from __future__ import annotations

from typing import Final

from django.db import DatabaseError, IntegrityError
from django.db.backends.base.base import BaseDatabaseWrapper

from account_merge.contrib.django import models as m
from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, StorageError

#: SQLSTATEs of a lost race on PostgreSQL: serialization failure,
#: deadlock, lock not available (a lock timeout).
_CONCURRENT_SQLSTATES: Final = frozenset({"40001", "40P01", "55P03"})
_UNIQUE_VIOLATION: Final = "23505"
_LOCKED_TEXTS: Final = ("database is locked", "database table is locked")


# -- errors ------------------------------------------------------------------------------
def _describe(connection: BaseDatabaseWrapper) -> str:
    """The store's name in errors: alias, engine and database, never a password."""
    name = connection.settings_dict.get("NAME") or ""
    return f"django:{connection.alias} ({connection.vendor} {name})".replace(" )", ")")


def _sqlstate(error: DatabaseError) -> str | None:
    cause = error.__cause__
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return None if state is None else str(state)


def _is_lost_race(error: DatabaseError) -> bool:
    if _sqlstate(error) in _CONCURRENT_SQLSTATES:
        return True
    text = str(error).lower()
    return any(locked in text for locked in _LOCKED_TEXTS)


def _is_account_clash(error: IntegrityError) -> bool:
    """A unique constraint of the account table (its id or its login key) refused a row."""
    table = m.Account._meta.db_table
    if _sqlstate(error) == _UNIQUE_VIOLATION:
        diag = getattr(error.__cause__, "diag", None)
        return getattr(diag, "table_name", None) == table
    return f"unique constraint failed: {table}." in str(error).lower()


def _translate(error: DatabaseError, connection: BaseDatabaseWrapper) -> AccountMergeError:
    store = _describe(connection)
    if _is_lost_race(error):
        return ConcurrentUpdate(f"{store}: the rows were locked or changed by a concurrent "
                                f"writer ({type(error).__name__}); try again")
    return StorageError(store, f"{type(error).__name__}: {error}")
