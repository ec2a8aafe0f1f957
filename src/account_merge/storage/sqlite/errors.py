"""Driver errors of :mod:`sqlite3` translated into the library's errors.

A lock held past the busy timeout becomes
:class:`~account_merge.exceptions.ConcurrentUpdate`, anything else
:class:`~account_merge.exceptions.StorageError` naming the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, StorageError

_CONCURRENCY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

#: What a row the domain refuses raises while it is decoded.
_DECODING_ERRORS = (AccountMergeError, ValueError, KeyError, TypeError, IndexError)


# -- driver errors ---------------------------------------------------------------
def _translate(error: sqlite3.Error, path: str, busy_timeout: float) -> AccountMergeError:
    """The library's error for a driver error on the file at *path*."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(error)
    lowered = text.lower()
    if primary in _CONCURRENCY_CODES or "database is locked" in lowered or "busy" in lowered:
        return ConcurrentUpdate(
            f"{path}: the database stayed locked by another writer for more than "
            f"{busy_timeout:g} s; try again"
        )
    if (primary in _CORRUPTION_CODES or "not a database" in lowered
            or "malformed" in lowered):
        return StorageError(
            path, f"is not a usable account_merge database: the file is corrupt or is "
                  f"not an SQLite database ({text})"
        )
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StorageError(path, f"cannot be opened ({text})")
    return StorageError(path, f"{type(error).__name__}: {text}")


@contextmanager
def _translating(path: str, busy_timeout: float) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as error:
        raise _translate(error, path, busy_timeout) from error


def _is_login_clash(error: sqlite3.IntegrityError) -> bool:
    text = str(error)
    return "UNIQUE" in text and ("accounts.login_key" in text or "accounts.id" in text)
