"""The optional tiers of the SQLAlchemy unit of work, one mixin per tier.

Each method runs the statements of its tier's class
(:mod:`~account_merge.storage.sqlalchemy.register`,
:mod:`~account_merge.storage.sqlalchemy.tiers`) on the unit of work's
connection; on SQLite, retention also reaches the attempts journal.
:class:`~account_merge.storage.sqlalchemy.unit_of_work.SQLAlchemyUnitOfWork`
inherits them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState
from account_merge.domain.retention import Forgotten
from account_merge.exceptions import ConcurrentUpdate, LoginTaken, StorageError
from account_merge.ports.register import (
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.ports.storage import AccountRecord
from account_merge.storage.attempts import merge_trails
from account_merge.storage.bulk import BulkAccount
from account_merge.storage.sqlalchemy.errors import store_name
from account_merge.storage.sqlalchemy.unit_of_work_base import UnitOfWorkBase

__all__ = ["EmailAndNoticeTierMethods", "RegisterTierMethods", "RetentionTierMethods"]


class RegisterTierMethods(UnitOfWorkBase):
    """Tier ``register`` (storage/sqlalchemy/register.py, on both dialects), and bulk loads."""

    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._register.fetch(conn, request)

    def register_apply(self, changes: RegisterChanges) -> None:
        if not changes:
            return
        self._wrote = True
        conn = self._c()
        with self._translating(inserting=True):
            self._s._register.apply(conn, changes)

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._register.page(conn, establishment_uai, cursor, limit)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        conn = self._c()
        with self._translating():
            return self._s._register.linked_children(conn, establishment_uai, cursor, limit)

    def insert_bulk(self, bulk: Sequence[BulkAccount]) -> None:
        """Insert bulk rows: ``COPY`` on PostgreSQL with psycopg, executemany otherwise."""
        if not bulk:
            return
        self._wrote = True
        conn = self._c()
        if self._pg is not None and conn.dialect.driver == "psycopg":
            self._copy_bulk(conn, bulk)
            return
        try:
            with self._translating(inserting=True):
                self._s._core.insert_bulk(conn, bulk, self._url)
        except LoginTaken as error:
            self._fail(error)
            raise

    def _copy_bulk(self, conn: Connection, bulk: Sequence[BulkAccount]) -> None:
        """``COPY ... FROM STDIN`` into the accounts, credentials and links."""
        import psycopg  # noqa: PLC0415 - only with the psycopg driver

        t = self._s._tables
        quote = conn.dialect.identifier_preparer
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        parts: list[tuple[Any, tuple[str, ...], list[tuple[Any, ...]]]] = [
            (t.accounts, ("id", "login", "login_key", "role", "status", "display_name",
                          "establishment_uai", "created_at"),
             [(r.account_id, r.login, r.login_key, "responsable", r.status.value,
               r.display_name, r.establishment_uai, r.created_at) for r in bulk]),
            (t.credentials, ("account_id", "password_hash", "kind", "expires_at"),
             [(r.account_id, r.password_hash, r.credential_kind.value,
               r.credential_expires_at) for r in bulk]),
            (t.links, ("account_id", "child_id", "first_name", "last_name",
                       "establishment_uai", "origin_account_id", "origin_establishment_uai",
                       "via_merge", "linked_at"),
             [(r.account_id, r.child_id, r.child_first_name, r.child_last_name,
               r.establishment_uai, r.account_id, r.establishment_uai, False, r.created_at)
              for r in bulk]),
        ]
        try:
            with raw.cursor() as cursor:
                for table, columns, values in parts:
                    names = ", ".join(quote.quote(c) for c in columns)
                    with cursor.copy(f"COPY {quote.format_table(table)} ({names}) "
                                     "FROM STDIN") as stream:
                        for row in values:
                            stream.write_row(row)
        except psycopg.errors.UniqueViolation:
            self._fail(ConcurrentUpdate("a login or id of the bulk is taken"))
            raise LoginTaken("a login or id of the bulk") from None
        except psycopg.Error as error:
            wrapped = sa_exc.DBAPIError.instance("COPY", None, error, psycopg.Error)
            translated = (self._s._translate(wrapped, self._url)
                          if isinstance(wrapped, sa_exc.DBAPIError)
                          else StorageError(store_name(self._url), str(error)))
            self._fail(translated)
            raise translated from error


class EmailAndNoticeTierMethods(UnitOfWorkBase):
    """The way back: tiers ``email_index`` and ``notices`` (storage/sqlalchemy/tiers.py)."""

    def index_email(self, account_id: str, key: str | None) -> None:
        self._wrote = True
        conn = self._c()
        with self._translating():
            self._s._tiers.index_email(conn, account_id, key)

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._tiers.accounts_by_email(conn, key, limit)

    def notice_cursor(self) -> int:
        conn = self._c()
        with self._translating():
            return self._s._tiers.notice_cursor(conn)

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._tiers.outbox_after(conn, position, limit)

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        self._wrote = True
        conn = self._c()
        with self._translating():
            self._s._tiers.add_notices(conn, states, cursor)

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._tiers.pending_notices(conn, limit)

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        self._wrote = True
        conn = self._c()
        with self._translating():
            self._s._tiers.update_notices(conn, states)


class RetentionTierMethods(UnitOfWorkBase):
    """Tier ``retention`` (storage/sqlalchemy/tiers.py; the attempts journal on SQLite)."""

    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._retention.accounts_due(conn, kind, before, after, limit)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        self._wrote = True
        conn = self._c()
        with self._translating():
            return self._s._retention.erase_hashes(conn, expired_by, limit)

    def forget(self, forgotten: Forgotten) -> None:
        self._wrote = True
        conn = self._c()
        retention = self._s._retention
        if self._journal is not None:
            with self._translating():
                places = retention.establishments_of(conn, forgotten.account_ids)
            with self._journaling():
                self._journal_c().forget(forgotten, places)
        with self._translating():
            retention.forget(conn, forgotten)

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        self._wrote = True
        conn = self._c()
        retention = self._s._retention
        with self._translating():
            ended = retention.end_audit(conn, before, limit, pseudonymise=pseudonymise)
        if self._journal is None or ended >= limit:
            return ended

        def places(ids: Sequence[str]) -> Mapping[str, str]:
            with self._translating():
                return retention.establishments_of(conn, ids)

        with self._journaling():
            return ended + self._journal_c().end_audit(before, limit - ended,
                                                       pseudonymise=pseudonymise,
                                                       establishments=places)

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._retention.outbox_page(conn, after, limit, published)

    def delete_outbox(self, positions: Sequence[int]) -> int:
        self._wrote = True
        conn = self._c()
        with self._translating():
            return self._s._retention.delete_outbox(conn, positions)

    def delete_counters(self, before: datetime, limit: int) -> int:
        self._wrote = True
        conn = self._c()
        with self._translating():
            deleted = self._s._retention.delete_counters(conn, before, limit)
        if self._journal is None or deleted >= limit:
            return deleted
        with self._journaling():
            return deleted + self._journal_c().delete_counters(before, limit - deleted)

    def held_about(self, forgotten: Forgotten) -> Held:
        conn = self._c()
        with self._translating(), self._decoding():
            audit, counters, receipts = self._s._retention.held_about(conn, forgotten)
        if self._journal is not None:
            with self._journaling():
                journaled, kept = self._journal_c().held_about(forgotten)
            by_key = {c.key: c for c in counters}
            by_key.update((c.key, c) for c in kept)  # the journal's are the current ones
            counters = sorted(by_key.values(), key=lambda c: c.key)
            trail = merge_trails(audit, journaled, len(audit) + len(journaled))
        else:
            trail = [record for _, record in audit]
        return Held(audit=tuple(trail), counters=tuple(counters), receipts=tuple(receipts))
