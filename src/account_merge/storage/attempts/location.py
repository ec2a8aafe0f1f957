"""Where the attempts journal of a database is, and one journal object per database.

:func:`journal_path` gives the file from a template; :func:`file_journal`
and :func:`memory_journal` give every store of a process the same
:class:`~account_merge.storage.attempts.AttemptsJournal` for the same
database.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import Hashable
from string import Formatter
from typing import Any, Final

from account_merge.exceptions import InvalidInput
from account_merge.storage.attempts.journal import AttemptsJournal

#: Where the journal of a database file is, unless configured otherwise.
DEFAULT_TEMPLATE: Final = "{database}-attempts.sqlite3"

_PLACEHOLDERS: Final = frozenset({"database", "name"})


# -- where the journal is ------------------------------------------------------------------
def check_template(template: str | os.PathLike[str] | None) -> str:
    """*template* checked (``{database}`` and ``{name}`` only), or the default one."""
    if template is None:
        return DEFAULT_TEMPLATE
    text = os.fspath(template)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("attempts_journal", "must be the path of a file, or None")
    try:
        fields = {field for _, field, _, _ in Formatter().parse(text) if field is not None}
    except ValueError as error:
        raise InvalidInput("attempts_journal", f"is not a valid template ({error})") from None
    unknown = sorted(fields - _PLACEHOLDERS)
    if unknown:
        raise InvalidInput("attempts_journal",
                           f"knows {{database}} and {{name}} only, not {{{unknown[0]}}}")
    return text


def journal_path(database: str | os.PathLike[str],
                 template: str | os.PathLike[str] | None = None) -> str:
    """The attempts journal of the SQLite database file *database*, from *template*.

    ``{database}`` is the database's absolute path, symbolic links
    resolved; ``{name}`` its file name.  A template without them names
    one fixed file (for one database only).
    """
    real = os.path.realpath(os.fspath(database))
    return os.path.realpath(check_template(template).format(
        database=real, name=os.path.basename(real)))


# -- one journal per database in a process -------------------------------------------------
_registry_lock = threading.Lock()
_files: dict[tuple[str, str], AttemptsJournal] = {}
_named: dict[str, AttemptsJournal] = {}
_held: weakref.WeakKeyDictionary[Any, AttemptsJournal] = weakref.WeakKeyDictionary()


def file_journal(database: str | os.PathLike[str],
                 template: str | os.PathLike[str] | None = None) -> AttemptsJournal:
    """The journal of the SQLite database file *database* (see :func:`journal_path`)."""
    real = os.path.realpath(os.fspath(database))
    path = journal_path(real, template)
    default = journal_path(real)
    if path == real:
        raise InvalidInput("attempts_journal", "names the database itself")
    with _registry_lock:
        journal = _files.get((real, path))
        if journal is None:
            journal = _files[real, path] = AttemptsJournal(
                path, database=real, signpost=None if path == default else default)
        return journal


def memory_journal(owner: Hashable) -> AttemptsJournal:
    """The in-memory journal of an in-memory database, one per *owner* in this process.

    *owner* names the database: a string (Django's test database name), or
    the object that holds it (an engine), kept weakly, so that the journal
    goes with it.
    """
    with _registry_lock:
        journal = _named.get(owner) if isinstance(owner, str) else _held.get(owner)
        if journal is None:
            name = f"file:/account-merge-attempts-{uuid.uuid4().hex}?vfs=memdb"
            database = owner if isinstance(owner, str) else f"{type(owner).__name__} in memory"
            journal = AttemptsJournal(name, database=database, memory=True)
            if isinstance(owner, str):
                _named[owner] = journal
            else:
                _held[owner] = journal
        return journal
