"""Side connections: this thread's second connection to a database, for rule 6.

On PostgreSQL inside a host's transaction, failed-attempt counters and the
audit records of failures go through it (see the package docstring).
"""

from __future__ import annotations

import copy
import threading
from contextlib import suppress
from typing import Any, Final

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionDoesNotExist

#: Seconds a side connection waits for a lock before ``concurrent_update``.
DEFAULT_SIDE_LOCK_TIMEOUT: Final = 5.0
#: The suffix of a side connection's alias (registered for its thread only).
_SIDE_SUFFIX: Final = "~account_merge_side"


# -- side connections --------------------------------------------------------------------
class _ThreadSides(threading.local):
    def __init__(self) -> None:
        self.aliases: set[str] = set()


_thread_sides = _ThreadSides()


def _side_alias(main: BaseDatabaseWrapper) -> str:
    """The alias of this thread's side connection to *main*'s database, made if needed.

    The side connection is registered in ``django.db.connections`` for this
    thread only (Django keeps connections per thread), so that the ORM and
    ``transaction.atomic`` can use it; it is not in ``DATABASES``, so
    Django's own connection management leaves it alone.
    """
    alias = f"{main.alias}{_SIDE_SUFFIX}"
    try:
        connections[alias]
    except ConnectionDoesNotExist:
        settings_dict = copy.deepcopy(main.settings_dict)
        options = settings_dict.setdefault("OPTIONS", {})
        options.pop("pool", None)  # a connection of its own, not one of the host's pool
        connections[alias] = type(main)(settings_dict, alias)
        _thread_sides.aliases.add(alias)
    return alias


def close_side_connections(*, only_obsolete: bool = False, **_: Any) -> None:
    """Close this thread's side connections (see the package docstring).

    With *only_obsolete*, close only those Django would close at the end of
    a request (unusable, or older than ``CONN_MAX_AGE``).  The app connects
    it to ``request_started`` and ``request_finished`` that way.
    """
    for alias in sorted(_thread_sides.aliases):
        try:
            side = connections[alias]
        except ConnectionDoesNotExist:
            _thread_sides.aliases.discard(alias)
            continue
        if only_obsolete:
            side.close_if_unusable_or_obsolete()
            continue
        with suppress(DatabaseError):
            side.close()
        del connections[alias]
        _thread_sides.aliases.discard(alias)


def close_obsolete_side_connections(**_: Any) -> None:
    """Receiver of ``request_started`` / ``request_finished``: as Django does for its own."""
    close_side_connections(only_obsolete=True)
