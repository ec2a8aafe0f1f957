"""The optional storage tiers on SQLAlchemy: ``email_index``, ``notices``, ``retention``.

Plain SQLAlchemy Core on the unit of work's connection, the same on
PostgreSQL and SQLite (upserts through each dialect's ``INSERT ... ON
CONFLICT``).  Every read goes through an index: the key of the address
(``email_index_key_idx``), the pending notices (``notices_pending_idx``,
partial), the outbox's primary key, and for retention the indexes of
:func:`~account_merge.storage.sqlalchemy.schema.make_metadata`'s
``_retention_indexes`` (the queries repeat the WHERE of the partial ones
with the same literals, so that PostgreSQL's planner can use them).  What
the attempts journal of a SQLite database keeps is the unit of work's
business (:mod:`~account_merge.storage.sqlalchemy.tier_methods`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Text,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite

from account_merge.domain.account import AccountStatus, CredentialKind
from account_merge.domain.audit import AuditRecord
from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    PSEUDONYMISED,
    Forgotten,
    ascii_lower,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.retention import DueKind, DuePage
from account_merge.ports.storage import AccountRecord
from account_merge.storage.sqlalchemy import rows
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["RetentionStatements", "TierStatements"]

_PROVISIONAL = CredentialKind.PROVISIONAL.value

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


# -- retention ------------------------------------------------------------------------------
_ESTABLISHMENT = "establishment:"


class RetentionStatements:
    """The statements of the ``retention`` tier for one store's tables (see the module)."""

    def __init__(self, tables: Tables, tiers: TierStatements) -> None:
        self._t = tables
        self._tiers = tiers

    def _stmt(self, conn: Connection, name: str, build: Callable[[Any], Any]) -> Any:
        return self._tiers._stmt(conn, f"retention {name}", build)

    def _record_columns(self) -> list[Any]:
        a, c = self._t.accounts, self._t.credentials
        return [*(a.c[n] for n in rows.ACCOUNT_COLUMNS), *(c.c[n] for n in rows.CREDENTIAL_COLUMNS)]

    def accounts_due(self, conn: Connection, kind: DueKind, before: datetime,
                     after: tuple[datetime, str] | None, limit: int) -> DuePage:
        a, c = self._t.accounts, self._t.credentials
        if kind is DueKind.UNACTIVATED:
            when, key = c.c.expires_at, c.c.account_id
            source = c.join(a, a.c.id == c.c.account_id)
            where = [c.c.kind == literal_column(f"'{_PROVISIONAL}'"),
                     a.c.status == literal_column(f"'{AccountStatus.PROVISIONAL.value}'")]
        elif kind is DueKind.UNUSED:
            when, key = a.c.last_signed_in_at, a.c.id
            source = a.outerjoin(c, c.c.account_id == a.c.id)
            where = [a.c.status == literal_column(f"'{AccountStatus.ACTIVE.value}'")]
        else:  # closed by the register: by the closure's time
            k = self._t.closures
            when, key = k.c.closed_at, k.c.account_id
            source = k.join(a, a.c.id == k.c.account_id).outerjoin(
                c, c.c.account_id == a.c.id)
            where = [a.c.status == literal_column(f"'{AccountStatus.CLOSED.value}'")]

        def build(_: Any) -> Any:
            conditions = [*where, when <= bindparam("before", type_=when.type)]
            if after is not None:
                conditions.append(tuple_(when, key) > tuple_(
                    bindparam("after_at", type_=when.type), bindparam("after_id")))
            return (select(*self._record_columns(), when).select_from(source)
                    .where(*conditions).order_by(when, key).limit(bindparam("limit")))

        stmt = self._stmt(conn, f"due {kind.value} {after is not None}", build)
        found = conn.execute(stmt, {"before": before, "limit": max(0, limit),
                                    "after_at": after[0] if after else None,
                                    "after_id": after[1] if after else None}).all()
        records = tuple(rows.read_record(row) for row in found)
        last = found[-1] if found and len(found) == limit else None
        return DuePage(records=records,
                       after=(last[-1], records[-1].account.id) if last is not None else None)

    def erase_hashes(self, conn: Connection, expired_by: datetime, limit: int) -> int:
        a, c = self._t.accounts, self._t.credentials
        stmt = self._stmt(conn, "to erase", lambda _: select(c.c.account_id, a.c.status)
                          .select_from(c.join(a, a.c.id == c.c.account_id))
                          .where(c.c.kind == literal_column(f"'{_PROVISIONAL}'"),
                                 c.c.password_hash != literal_column(f"'{ERASED_HASH}'"),
                                 c.c.expires_at <= bindparam("by", type_=c.c.expires_at.type))
                          .order_by(c.c.expires_at).limit(bindparam("limit")))
        found = conn.execute(stmt, {"by": expired_by, "limit": max(0, limit)}).all()
        merged = [i for i, status in found if status == AccountStatus.MERGED.value]
        others = [i for i, status in found if status != AccountStatus.MERGED.value]
        # Counted as written: a concurrent purge may have erased some meanwhile.
        not_erased = c.c.password_hash != literal_column(f"'{ERASED_HASH}'")
        erased = 0
        if merged:
            erased += conn.execute(self._stmt(conn, "drop merged", lambda _: c.delete().where(
                c.c.account_id.in_(bindparam("ids", expanding=True)), not_erased)),
                {"ids": merged}).rowcount
        if others:
            erased += conn.execute(self._stmt(conn, "erase", lambda _: c.update().where(
                c.c.account_id.in_(bindparam("ids", expanding=True)), not_erased).values(
                password_hash=ERASED_HASH)), {"ids": others}).rowcount
        return int(erased)

    def _pseudonymised(self) -> dict[str, Any]:
        """The SET of an UPDATE that pseudonymises the current audit row
        (:func:`~account_merge.domain.retention.pseudonymised`), its account read first."""
        au, a = self._t.audit, self._t.accounts
        established = func.substr(au.c.actor, 1, len(_ESTABLISHMENT)) == _ESTABLISHMENT
        uai = func.coalesce(
            case((established, func.substr(au.c.actor, len(_ESTABLISHMENT) + 1))),
            select(a.c.establishment_uai).where(a.c.id == au.c.account_id).scalar_subquery())
        return {"detail": literal(PSEUDONYMISED, Text) + func.coalesce(
                    literal("; establishment ", Text) + uai, literal("", Text)),
                "actor": case((established, au.c.actor), else_=null()),
                "account_id": null(), "login": null()}

    def _naming(self) -> tuple[Any, ...]:
        """The conditions on the audit records naming :ids or a :logins typed (lower-cased),
        one per index (a UNION of them makes SQLite scan the table)."""
        au = self._t.audit
        return (au.c.account_id.in_(bindparam("ids", expanding=True)),
                au.c.actor.in_(bindparam("ids", expanding=True)),
                func.lower(au.c.login).in_(bindparam("logins", expanding=True)))

    @staticmethod
    def _named(forgotten: Forgotten) -> dict[str, Any]:
        return {"ids": list(forgotten.account_ids),
                "logins": [ascii_lower(t) for t in forgotten.logins]}

    def _mentions(self) -> Any:
        au = self._t.audit
        detail: Any = au.c.detail
        return (au.c.at == bindparam("b_at", type_=au.c.at.type),
                func.replace(detail, bindparam("b_id"), "") != detail)

    def forget(self, conn: Connection, forgotten: Forgotten) -> None:
        t = self._t
        au = t.audit
        named = self._named(forgotten)
        for n, condition in enumerate(self._naming()):
            conn.execute(self._stmt(conn, f"pseudonymise named {n}", _pseudonymising(
                au, condition, self._pseudonymised())), named)
        if forgotten.created:
            conn.execute(self._stmt(conn, "mentions", lambda _: au.update().where(
                *self._mentions()).values(detail=func.replace(
                    au.c.detail, bindparam("b_id"), DELETED_ACCOUNT))),
                [{"b_at": at, "b_id": account_id} for at, account_id in forgotten.created])
        self.delete_named_counters(conn, forgotten)
        ids = list(forgotten.account_ids)
        if not ids:
            return
        for table, column in ((t.receipts, "principal_id"), (t.email_index, "account_id"),
                              (t.register, "account_id"), (t.closures, "account_id"),
                              (t.links, "account_id"), (t.credentials, "account_id")):
            conn.execute(self._stmt(conn, f"forget {table.name}",
                                    _deleting(table, column)), {"ids": ids})
        a = t.accounts
        conn.execute(self._stmt(conn, "forget absorbed", lambda _: a.delete().where(
            a.c.id.in_(bindparam("ids", expanding=True)), a.c.merged_into.is_not(None))),
            {"ids": ids})
        conn.execute(self._stmt(conn, "forget accounts", lambda _: a.delete().where(
            a.c.id.in_(bindparam("ids", expanding=True)))), {"ids": ids})

    def delete_named_counters(self, conn: Connection, forgotten: Forgotten) -> None:
        """Delete the counters *forgotten* names (kept in the database): its keys, then
        each prefix's range (one statement each: an OR of hundreds of them is too deep)."""
        th = self._t.throttles
        if forgotten.counter_keys:
            conn.execute(self._stmt(conn, "forget counters", lambda _: th.delete().where(
                th.c.key.in_(bindparam("keys", expanding=True)))),
                {"keys": list(forgotten.counter_keys)})
        if forgotten.counter_prefixes:
            conn.execute(self._stmt(conn, "forget counter range", lambda _: th.delete().where(
                th.c.key >= bindparam("low"), th.c.key < bindparam("high"))),
                [{"low": p, "high": _prefix_end(p)} for p in forgotten.counter_prefixes])

    def named_counters(self, conn: Connection, forgotten: Forgotten) -> list[ThrottleState]:
        """The stored counters *forgotten* names, by key."""
        th = self._t.throttles
        columns = [th.c[name] for name in rows.THROTTLE_COLUMNS]
        found: dict[str, Any] = {}
        if forgotten.counter_keys:
            found.update((row[0], row) for row in conn.execute(self._stmt(
                conn, "named counters", lambda _: select(*columns).where(
                    th.c.key.in_(bindparam("keys", expanding=True)))),
                {"keys": list(forgotten.counter_keys)}))
        for prefix in forgotten.counter_prefixes:
            found.update((row[0], row) for row in conn.execute(self._stmt(
                conn, "counter range", lambda _: select(*columns).where(
                    th.c.key >= bindparam("low"), th.c.key < bindparam("high"))),
                {"low": prefix, "high": _prefix_end(prefix)}))
        return [rows.read_throttle(found[key]) for key in sorted(found)]

    def end_audit(self, conn: Connection, before: datetime, limit: int, *,
                  pseudonymise: bool) -> int:
        au = self._t.audit

        def due(names_only: bool) -> Any:
            conditions = [au.c.at < bindparam("before", type_=au.c.at.type)]
            if names_only:
                conditions.append(self._names_someone())
            return (select(au.c.seq).where(*conditions).order_by(au.c.at, au.c.seq)
                    .limit(bindparam("limit")))

        values = {"before": before, "limit": max(0, limit)}
        if not pseudonymise:
            stmt = self._stmt(conn, "end audit", lambda _: au.delete().where(
                au.c.seq.in_(due(False))))
            return int(conn.execute(stmt, values).rowcount)
        stmt = self._stmt(conn, "pseudonymise old", lambda _: au.update().where(
            au.c.seq.in_(due(True))).values(**self._pseudonymised()))
        return int(conn.execute(stmt, values).rowcount)

    def _names_someone(self) -> Any:
        au = self._t.audit
        return or_(au.c.account_id.is_not(None), au.c.login.is_not(None),
                   and_(au.c.actor.is_not(None),
                        func.substr(au.c.actor, 1, len(_ESTABLISHMENT)) != _ESTABLISHMENT),
                   and_(au.c.detail.is_not(None),
                        func.substr(au.c.detail, 1, len(PSEUDONYMISED)) != PSEUDONYMISED))

    def outbox_page(self, conn: Connection, after: int, limit: int,
                    published: bool | None) -> list[OutboxEntry]:
        o = self._t.outbox

        def build(_: Any) -> Any:
            conditions = [o.c.position > bindparam("after")]
            if published is not None:
                conditions.append(o.c.published == (true() if published else false()))
            return (select(*(o.c[n] for n in rows.OUTBOX_COLUMNS)).where(*conditions)
                    .order_by(o.c.position).limit(bindparam("limit")))

        stmt = self._stmt(conn, f"outbox page {published}", build)
        return [rows.read_outbox(row)
                for row in conn.execute(stmt, {"after": after, "limit": max(0, limit)})]

    def delete_outbox(self, conn: Connection, positions: Sequence[int]) -> int:
        t = self._t
        o, n, head = t.outbox, t.notices, t.outbox_head
        wanted = sorted(set(positions))
        if not wanted:
            return 0
        pending = set(conn.execute(self._stmt(conn, "pending positions", lambda _: select(
            n.c.position).where(n.c.position.in_(bindparam("positions", expanding=True)),
                                n.c.status == NoticeStatus.PENDING.value)),
            {"positions": wanted}).scalars())
        doomed = [p for p in wanted if p not in pending]
        if not doomed:
            return 0

        def raise_head(insert: Any) -> Any:
            stmt = insert(head).from_select(["id", "last_position"], select(
                literal(1), func.coalesce(func.max(o.c.position), 0)).where(true()))
            higher = (func.greatest if conn.dialect.name == "postgresql" else func.max)(
                head.c.last_position, stmt.excluded.last_position)
            return stmt.on_conflict_do_update(index_elements=["id"],
                                              set_={"last_position": higher})

        conn.execute(self._stmt(conn, "raise head", raise_head))
        conn.execute(self._stmt(conn, "forget notices", lambda _: n.delete().where(
            n.c.position.in_(bindparam("positions", expanding=True)))), {"positions": doomed})
        return int(conn.execute(self._stmt(conn, "forget events", lambda _: o.delete().where(
            o.c.position.in_(bindparam("positions", expanding=True)))),
            {"positions": doomed}).rowcount)

    def delete_counters(self, conn: Connection, before: datetime, limit: int) -> int:
        th = self._t.throttles
        stmt = self._stmt(conn, "counters at rest", lambda _: th.delete().where(
            th.c.key.in_(select(th.c.key).where(or_(
                th.c.last_failure_at.is_(None),
                th.c.last_failure_at < bindparam("before", type_=th.c.last_failure_at.type)))
                .limit(bindparam("limit")))))
        return int(conn.execute(stmt, {"before": before, "limit": max(0, limit)}).rowcount)

    def held_about(self, conn: Connection, forgotten: Forgotten) -> tuple[
            list[tuple[int, AuditRecord]], list[ThrottleState],
            list[tuple[str, str, MergeReceipt]]]:
        """The audit records (with their seq), counters and receipts *forgotten* names."""
        t = self._t
        au, r = t.audit, t.receipts
        columns = [*(au.c[name] for name in rows.AUDIT_COLUMNS), au.c.seq]
        audit: dict[int, AuditRecord] = {}
        for n, condition in enumerate(self._naming()):
            stmt = self._stmt(conn, f"held audit {n}", _selecting(columns, condition))
            audit.update((row[-1], rows.read_audit(row))
                         for row in conn.execute(stmt, self._named(forgotten)))
        for at, account_id in forgotten.created:
            stmt = self._stmt(conn, "held mentions", lambda _: select(*columns).where(
                *self._mentions()))
            audit.update((row[-1], rows.read_audit(row))
                         for row in conn.execute(stmt, {"b_at": at, "b_id": account_id}))
        counters = self.named_counters(conn, forgotten)
        receipts = [rows.read_receipt(row) for row in conn.execute(self._stmt(
            conn, "held receipts", lambda _: select(*(r.c[name] for name in rows.RECEIPT_COLUMNS))
            .where(r.c.principal_id.in_(bindparam("ids", expanding=True)))
            .order_by(r.c.principal_id, r.c.key)), {"ids": list(forgotten.account_ids)})]
        return (sorted(audit.items()), counters,
                [(stored.principal_id, stored.key, stored.receipt) for stored in receipts])

    def establishments_of(self, conn: Connection, ids: Sequence[str]) -> dict[str, str]:
        """The establishment of each of these accounts (those stored)."""
        if not ids:
            return {}
        a = self._t.accounts
        stmt = self._stmt(conn, "establishments of", lambda _: select(
            a.c.id, a.c.establishment_uai).where(a.c.id.in_(bindparam("ids", expanding=True))))
        return {row[0]: row[1] for row in conn.execute(stmt, {"ids": list(ids)})}


def _pseudonymising(audit: Any, condition: Any, values: dict[str, Any]) -> Callable[[Any], Any]:
    """A builder of the pseudonymisation of the audit records that meet *condition*."""
    return lambda _: audit.update().where(condition).values(**values)


def _selecting(columns: list[Any], condition: Any) -> Callable[[Any], Any]:
    """A builder of the reading of *columns* of the rows that meet *condition*."""
    return lambda _: select(*columns).where(condition)


def _deleting(table: Any, column: str) -> Callable[[Any], Any]:
    """A builder of the deletion of *table*'s rows whose *column* is in ``:ids``."""
    return lambda _: table.delete().where(table.c[column].in_(bindparam("ids", expanding=True)))


def _prefix_end(prefix: str) -> str:
    """The first text after every text that starts with *prefix* (binary order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
