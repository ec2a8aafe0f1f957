"""The way back's storage tiers on SQLAlchemy: ``email_index`` and ``notices``.

Plain SQLAlchemy Core on the unit of work's connection, the same on
PostgreSQL and SQLite (upserts through each dialect's ``INSERT ... ON
CONFLICT``).  Every read goes through an index: the key of the address
(``email_index_key_idx``), the pending notices (``notices_pending_idx``,
partial), the outbox's primary key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.ports.storage import AccountRecord
from account_merge.storage.sqlalchemy import rows
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["TierStatements"]

_STATUSES = {status.value: status for status in NoticeStatus}
_NOTICE_COLUMNS = ("id", "position", "role", "status", "attempts", "updated_at")


def _notice_values(state: NoticeState) -> dict[str, Any]:
    return {"id": state.id, "position": state.position, "role": state.role,
            "status": state.status.value, "attempts": state.attempts,
            "updated_at": state.updated_at}


def _read_notice(row: Sequence[Any]) -> NoticeState:
    return NoticeState(id=row[0], position=int(row[1]), role=row[2], status=_STATUSES[row[3]],
                       attempts=int(row[4]), updated_at=row[5])


class TierStatements:
    """The statements of the tiers ``email_index`` and ``notices`` for one store's tables."""

    def __init__(self, tables: Tables) -> None:
        self._t = tables
        self._cache: dict[tuple[str, str], Any] = {}

    def _stmt(self, conn: Connection, name: str, build: Callable[[Any], Any]) -> Any:
        """The statement *name* for *conn*'s dialect, built once."""
        dialect = conn.dialect.name
        key = (name, dialect)
        stmt = self._cache.get(key)
        if stmt is None:
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            stmt = self._cache[key] = build(insert)
        return stmt

    # -- email_index -------------------------------------------------------------------
    def index_email(self, conn: Connection, account_id: str, key: str | None) -> None:
        e = self._t.email_index
        if key is None:
            conn.execute(self._stmt(conn, "unindex", lambda _: e.delete().where(
                e.c.account_id == bindparam("account_id"))), {"account_id": account_id})
            return

        def build(insert: Any) -> Any:
            stmt = insert(e)
            return stmt.on_conflict_do_update(index_elements=["account_id"],
                                              set_={"key": stmt.excluded.key})

        conn.execute(self._stmt(conn, "index", build), {"account_id": account_id, "key": key})

    def accounts_by_email(self, conn: Connection, key: str, limit: int) -> list[AccountRecord]:
        e, a, c = self._t.email_index, self._t.accounts, self._t.credentials
        stmt = self._stmt(conn, "by email", lambda _: select(
            *(a.c[n] for n in rows.ACCOUNT_COLUMNS), *(c.c[n] for n in rows.CREDENTIAL_COLUMNS),
        ).select_from(e.join(a, a.c.id == e.c.account_id)
                      .outerjoin(c, c.c.account_id == a.c.id))
            .where(e.c.key == bindparam("key")).order_by(e.c.account_id)
            .limit(bindparam("limit")))
        return [rows.read_record(row)
                for row in conn.execute(stmt, {"key": key, "limit": max(0, limit)})]

    # -- notices ------------------------------------------------------------------------
    def notice_cursor(self, conn: Connection) -> int:
        n = self._t.notice_cursor
        stmt = self._stmt(conn, "cursor", lambda _: select(n.c.position).where(n.c.id == 1))
        found = conn.execute(stmt).scalar_one_or_none()
        return 0 if found is None else int(found)

    def outbox_after(self, conn: Connection, position: int, limit: int) -> list[OutboxEntry]:
        o = self._t.outbox
        stmt = self._stmt(conn, "outbox after", lambda _: select(
            *(o.c[n] for n in rows.OUTBOX_COLUMNS)).where(o.c.position > bindparam("position"))
            .order_by(o.c.position).limit(bindparam("limit")))
        return [rows.read_outbox(row)
                for row in conn.execute(stmt, {"position": position, "limit": max(0, limit)})]

    def add_notices(self, conn: Connection, states: Sequence[NoticeState], cursor: int) -> None:
        t = self._t
        if states:
            conn.execute(self._stmt(conn, "add notices", lambda insert: insert(
                t.notices).on_conflict_do_nothing(index_elements=["id"])),
                [_notice_values(s) for s in states])

        def build(insert: Any) -> Any:
            stmt = insert(t.notice_cursor)
            higher = (func.greatest if conn.dialect.name == "postgresql" else func.max)(
                t.notice_cursor.c.position, stmt.excluded.position)
            return stmt.on_conflict_do_update(index_elements=["id"], set_={"position": higher})

        conn.execute(self._stmt(conn, "raise cursor", build), {"id": 1, "position": cursor})

    def pending_notices(self, conn: Connection,
                        limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        n, o = self._t.notices, self._t.outbox
        stmt = self._stmt(conn, "pending", lambda _: select(
            *(n.c[c] for c in _NOTICE_COLUMNS), *(o.c[c] for c in rows.OUTBOX_COLUMNS),
        ).select_from(n.join(o, o.c.position == n.c.position))
            .where(n.c.status == NoticeStatus.PENDING.value)
            .order_by(n.c.position, n.c.id).limit(bindparam("limit")))
        width = len(_NOTICE_COLUMNS)
        return [(_read_notice(row[:width]), rows.read_outbox(row[width:]))
                for row in conn.execute(stmt, {"limit": max(0, limit)})]

    def update_notices(self, conn: Connection, states: Sequence[NoticeState]) -> None:
        if not states:
            return
        n = self._t.notices
        stmt = self._stmt(conn, "update notices", lambda _: n.update().where(
            n.c.id == bindparam("b_id")).values(
            position=bindparam("b_position"), role=bindparam("b_role"),
            status=bindparam("b_status"), attempts=bindparam("b_attempts"),
            updated_at=bindparam("b_updated_at")))
        conn.execute(stmt, [{f"b_{k}": v for k, v in _notice_values(s).items()}
                            for s in states])
