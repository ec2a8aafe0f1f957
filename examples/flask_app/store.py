"""The example's own tables, beside the library's: staff, their attempts, the audit, sessions.

A real ENT has these already (its directory, its session store); this
example keeps them small, in the same database as the library's tables
(``ACCOUNT_MERGE_DATABASE_URL``), through SQLAlchemy on an engine of its
own:

- ``<prefix>staff``: the establishment's staff, each with a login and an
  argon2 hash made by the library's verifier (never a shared code);
- ``<prefix>staff_attempts``: the failed sign-ins of staff, per login and
  client, counted *before* the password is checked, in one transaction
  that locks the counter (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR
  UPDATE`` on PostgreSQL), so that concurrent guesses cannot run more
  checks than the limits allow;
- ``<prefix>staff_audit``: who tried what, when, and how it ended (never a
  password);
- ``<prefix>sessions``: the open sessions, by a digest of the token kept
  in the signed cookie, so that signing out, a new password or a reset
  ends them everywhere, copies of the cookie included.

The prefix is ``ENT_TABLE_PREFIX`` (``ent_``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.dialects import postgresql, sqlite

from account_merge.domain.throttle import ThrottleState

#: The longest login a staff member may have, and how much of a typed one is audited.
MAX_LOGIN = 64


def _sqlite_begin_immediate(engine: sa.Engine) -> None:
    """SQLite: the driver must not begin transactions itself; ours take the write lock at once.

    Without this, a transaction that reads a counter before writing it
    could not write once another request has (SQLite refuses to turn a
    read into a write then), and two requests could read the same count.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """The example's tables on *url*, with the table names prefixed by *prefix*."""

    def __init__(self, url: str, prefix: str = "ent_") -> None:
        options: dict[str, Any] = {}
        if url.startswith("sqlite"):
            options["connect_args"] = {"timeout": 20}
        self.engine = sa.create_engine(url, **options)
        if self.engine.dialect.name == "sqlite":
            _sqlite_begin_immediate(self.engine)
        self.metadata = sa.MetaData()
        self.staff = sa.Table(
            f"{prefix}staff", self.metadata,
            sa.Column("login", sa.String(MAX_LOGIN), primary_key=True),
            sa.Column("display_name", sa.String(200), nullable=False),
            sa.Column("uai", sa.String(8), nullable=False),
            sa.Column("password_hash", sa.String(255), nullable=False),
        )
        self.attempts = sa.Table(
            f"{prefix}staff_attempts", self.metadata,
            sa.Column("key", sa.String(200), primary_key=True),
            sa.Column("consecutive", sa.Integer, nullable=False),
            sa.Column("last_failure_at", sa.DateTime(timezone=True)),
        )
        self.audit = sa.Table(
            f"{prefix}staff_audit", self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("action", sa.String(40), nullable=False),
            sa.Column("outcome", sa.String(40), nullable=False),
            sa.Column("actor", sa.String(MAX_LOGIN)),
            sa.Column("login", sa.String(MAX_LOGIN)),
            sa.Column("detail", sa.String(500)),
        )
        self.sessions = sa.Table(
            f"{prefix}sessions", self.metadata,
            sa.Column("digest", sa.String(64), primary_key=True),
            sa.Column("subject", sa.String(200), nullable=False, index=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )

    def create_tables(self) -> None:
        """Create the tables if missing (this example has no migrations)."""
        self.metadata.create_all(self.engine)

    def drop_tables(self) -> None:
        """Drop the tables (tests)."""
        self.metadata.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A transaction, committed at the end of the block, rolled back on an error."""
        with self.engine.begin() as connection:
            yield connection

    # -- staff -------------------------------------------------------------------------

    def add_staff(self, login: str, display_name: str, uai: str, password_hash: str) -> None:
        """Add a staff member, or give an existing one a new name and password."""
        with self.transaction() as conn:
            conn.execute(self.staff.delete().where(self.staff.c.login == login))
            conn.execute(self.staff.insert().values(login=login, display_name=display_name,
                                                    uai=uai, password_hash=password_hash))

    def find_staff(self, login: str) -> sa.Row[Any] | None:
        """The staff member with this login, or None."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.staff).where(
                self.staff.c.login == login)).first()

    # -- failed attempts ------------------------------------------------------------------

    def _upsert(self, conn: sa.Connection) -> Any:
        return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)

    def count_attempt(self, key: str, now: datetime,
                      wait: Callable[[ThrottleState, datetime], float]) -> float:
        """Count one attempt under *key* unless ``wait(state, now)`` says to wait; the wait.

        In one transaction holding the counter's lock: a wait over 0
        counts nothing (the attempt is refused); otherwise the attempt is
        counted before its password is checked (a success gives it back,
        :meth:`clear_attempts`).
        """
        with self.transaction() as conn:
            insert = self._upsert(conn)(self.attempts).values(key=key, consecutive=0,
                                                              last_failure_at=None)
            conn.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
            query = sa.select(self.attempts).where(self.attempts.c.key == key)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).one()
            last = row.last_failure_at
            if last is not None and last.tzinfo is None:  # SQLite keeps no time zone
                last = last.replace(tzinfo=now.tzinfo)
            state = ThrottleState(key, row.consecutive, last)
            delay = float(wait(state, now))
            if delay > 0:
                return delay
            conn.execute(self.attempts.update().where(self.attempts.c.key == key).values(
                consecutive=row.consecutive + 1, last_failure_at=now))
            return 0.0

    def clear_attempts(self, key: str) -> None:
        """A success: the count under *key* starts again."""
        with self.transaction() as conn:
            conn.execute(self.attempts.delete().where(self.attempts.c.key == key))

    # -- the audit ----------------------------------------------------------------------

    def record(self, at: datetime, action: str, outcome: str, *, actor: str | None = None,
               login: str | None = None, detail: str | None = None) -> None:
        """Write one audit record (a typed login is cut to 64 characters)."""
        with self.transaction() as conn:
            conn.execute(self.audit.insert().values(
                at=at, action=action, outcome=outcome, actor=actor,
                login=login[:MAX_LOGIN] if login is not None else None,
                detail=detail[:500] if detail is not None else None))

    def audit_trail(self, limit: int = 50) -> list[sa.Row[Any]]:
        """The latest audit records, newest first."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.audit).order_by(
                self.audit.c.id.desc()).limit(limit)))

    # -- sessions -----------------------------------------------------------------------

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def open_session(self, subject: str, now: datetime) -> str:
        """A new session of *subject*; its token, for the signed cookie."""
        token = secrets.token_urlsafe(32)
        with self.transaction() as conn:
            conn.execute(self.sessions.insert().values(digest=self._digest(token),
                                                       subject=subject, created_at=now))
        return token

    def session_subject(self, token: str) -> str | None:
        """Whose the open session *token* is, or None if it was ended."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(self.sessions.c.subject).where(
                self.sessions.c.digest == self._digest(token))).scalar_one_or_none()
        return found

    def end_session(self, token: str) -> None:
        """End one session (signing out)."""
        with self.transaction() as conn:
            conn.execute(self.sessions.delete().where(
                self.sessions.c.digest == self._digest(token)))

    def end_sessions_of(self, subject: str) -> int:
        """End every session of *subject* (a new password, a reset); how many."""
        with self.transaction() as conn:
            done = conn.execute(self.sessions.delete().where(self.sessions.c.subject == subject))
        return int(done.rowcount or 0)


def init_app(app: Flask) -> Store:
    """The example's store on the application's database, its tables created if missing."""
    url = app.config.get("ACCOUNT_MERGE_DATABASE_URL")
    if not url:
        url = f"sqlite:///{app.config['ACCOUNT_MERGE_SQLITE_PATH']}"
    store = Store(url, str(app.config.get("ENT_TABLE_PREFIX", "ent_")))
    store.create_tables()
    app.extensions["ent_store"] = store
    return store


def get_store_of(app: Flask) -> Store:
    """*app*'s store."""
    found = app.extensions["ent_store"]
    assert isinstance(found, Store)
    return found


def get_store() -> Store:
    """The current application's store."""
    return get_store_of(current_app)
