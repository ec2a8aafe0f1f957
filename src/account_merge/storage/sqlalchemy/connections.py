"""Connections: SQLite's transactions, the dialects supported, lock timeouts.

Python's ``sqlite3`` driver does not begin transactions the way the store
needs (it never begins one before a ``SELECT`` or a ``SAVEPOINT``), so a
SQLite engine gets SQLAlchemy's documented recipe: the driver's
``isolation_level`` is ``None`` and a ``begin`` listener emits ``BEGIN``
itself, ``BEGIN IMMEDIATE`` for a writing unit of work.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, event

from account_merge.exceptions import InvalidInput

__all__ = ["BEGIN_IMMEDIATE", "SIDE_LOCK_TIMEOUT", "check_dialect", "milliseconds",
           "prepare_engine"]

_SUPPORTED = ("postgresql", "sqlite")
#: Execution option marking a connection whose transaction must begin IMMEDIATE.
BEGIN_IMMEDIATE = "account_merge_begin_immediate"
#: Seconds a side connection waits for a lock when no lock_timeout is given.
SIDE_LOCK_TIMEOUT = 5.0

_listeners_lock = threading.Lock()


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLAlchemy's documented recipe: sqlite3 must not emit BEGIN itself.
    if getattr(dbapi_connection, "autocommit", None) is not False:
        dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    """Emit BEGIN ourselves; BEGIN IMMEDIATE for a writing unit of work."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    if getattr(dbapi_connection, "autocommit", None) is False:
        return  # Python 3.12's PEP 249 mode: the driver has begun already.
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT" and BEGIN_IMMEDIATE not in options:
        return
    if dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None  # a connection pooled before we came
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(BEGIN_IMMEDIATE) else "BEGIN")


def prepare_engine(engine: Engine) -> None:
    """Apply the pysqlite transaction recipe to a SQLite engine (once)."""
    if engine.dialect.name != "sqlite":
        return
    with _listeners_lock:
        if not event.contains(engine, "begin", _sqlite_begin):
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)


def check_dialect(dialect: Dialect) -> None:
    """Refuse a database other than PostgreSQL and SQLite."""
    if dialect.name not in _SUPPORTED:
        raise InvalidInput(
            "engine", f"SQLAlchemyStorage supports PostgreSQL and SQLite, not {dialect.name}")


def milliseconds(seconds: float) -> str:
    """*seconds* as a PostgreSQL duration setting (at least 1 ms)."""
    return f"{max(1, round(seconds * 1000))}ms"
