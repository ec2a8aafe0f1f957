"""Driver errors as the library's own (rule 3 of :mod:`account_merge.ports.storage`).

Serialization failures, deadlocks and lock timeouts (SQLSTATE 40001,
40P01, 55P03; "database is locked" on SQLite) become ``ConcurrentUpdate``;
a login or id in use, ``LoginTaken``; anything else ``StorageError``
naming the database by its URL without the password.  Never the SQL
parameters: only the first line of the driver's message, with the
password masked should it appear there.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, LoginTaken, StorageError

__all__ = ["sqlstate", "store_name", "translate"]

#: SQLSTATEs of a lost race: serialization failure, deadlock, lock timeout.
_CONCURRENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_UNIQUE_VIOLATION = "23505"
_UNDEFINED_TABLE = "42P01"
_UNDEFINED_COLUMN = "42703"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def sqlstate(orig: BaseException | None) -> str | None:
    """The SQLSTATE of a PostgreSQL driver error, or None."""
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _sqlite_code(orig: BaseException | None) -> int | None:
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _constraint(orig: BaseException | None) -> str | None:
    name = getattr(getattr(orig, "diag", None), "constraint_name", None)
    return name if isinstance(name, str) else None


def _first_line(error: BaseException | None, url: URL | None) -> str:
    text = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text or type(error).__name__


def store_name(url: URL | None) -> str:
    """The store, as errors name it: the URL without its password."""
    if url is None:
        return "the session's database"
    return url.render_as_string(hide_password=True)


def translate(error: sa_exc.DBAPIError, url: URL | None, *,
              login_constraints: Collection[str] = ()) -> AccountMergeError:
    """The library's error for a driver error.

    A unique violation of one of *login_constraints* (the accounts' keys,
    when inserting accounts) is ``LoginTaken``; of another key, a
    concurrent writer got there first: ``ConcurrentUpdate``.
    """
    orig = error.orig
    state = sqlstate(orig)
    code = _sqlite_code(orig)
    reason = _first_line(orig, url)
    if state in _CONCURRENT_SQLSTATES or code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return ConcurrentUpdate(f"{ConcurrentUpdate.default_message} ({reason})")
    if state == _UNIQUE_VIOLATION or (
            isinstance(error, sa_exc.IntegrityError) and "UNIQUE" in reason):
        if _constraint(orig) in login_constraints:
            return LoginTaken("a login or id of the change set is in use")
        return ConcurrentUpdate(f"{ConcurrentUpdate.default_message} ({reason})")
    store = store_name(url)
    if state == _UNDEFINED_TABLE or "no such table" in reason:
        return StorageError(store, f"{reason} (create the tables with create_schema() "
                                   "or your migrations)")
    if state == _UNDEFINED_COLUMN or "no such column" in reason or "has no column" in reason:
        return StorageError(store, f"{reason} (tables of an earlier release: run "
                                   "upgrade_schema() or your migrations)")
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return StorageError(store, f"cannot use the database: {reason}")
    return StorageError(store, reason)
