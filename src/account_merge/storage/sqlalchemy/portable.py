"""The statements of SQLAlchemyStorage on SQLite: SQLAlchemy Core, one part at a time.

SQLite has one writer at a time (a writing unit of work begins ``BEGIN
IMMEDIATE``) and no network between the library and the file, so here
clarity beats the fewest statements: a fetch reads each part with a
statement of its own, and a change set is written part after part in the
order of :class:`~account_merge.ports.ChangeSet`, each part checked as it
goes.  Every statement is built once per store, with bound parameters.
The outbox and the audit trail are read the same way on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    delete,
    false,
    func,
    null,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL

from account_merge.domain.account import AccountStatus
from account_merge.domain.audit import AuditRecord
from account_merge.domain.events import OutboxEntry
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.storage.bulk import BulkAccount
from account_merge.storage.sqlalchemy import rows
from account_merge.storage.sqlalchemy.errors import translate
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["CoreStatements"]


class CoreStatements:
    """Reads and writes with SQLAlchemy Core (see the module docstring)."""

    def __init__(self, tables: Tables) -> None:
        self._t = tables
        self._cache: dict[str, Any] = {}

    def _stmt(self, name: str, build: Callable[[], Any]) -> Any:
        stmt = self._cache.get(name)
        if stmt is None:
            stmt = self._cache[name] = build()
        return stmt

    # -- reading ---------------------------------------------------------------------------
    def fetch(self, conn: Connection, request: Fetch) -> Fetched:
        """Read *request*, counting its ``count`` keys (the caller holds the write lock)."""
        t = self._t
        by_id: dict[str, AccountRecord] = {}
        by_key: dict[str, AccountRecord] = {}
        if request.accounts or request.logins:
            a, c = t.accounts, t.credentials
            stmt = self._stmt("accounts", lambda: select(
                *(a.c[n] for n in rows.ACCOUNT_COLUMNS), *(c.c[n] for n in rows.CREDENTIAL_COLUMNS),
                a.c.login_key,
            ).outerjoin(c, c.c.account_id == a.c.id).where(or_(
                a.c.id.in_(bindparam("ids", expanding=True)),
                a.c.login_key.in_(bindparam("logins", expanding=True)))))
            for row in conn.execute(stmt, {"ids": list(request.accounts),
                                           "logins": list(request.logins)}):
                record = rows.read_record(row)
                by_id[record.account.id] = record
                by_key[row[-1]] = record
        links: dict[str, list[Any]] = {i: [] for i in request.links}
        if request.links:
            lt = t.links
            stmt = self._stmt("links", lambda: select(*(lt.c[n] for n in rows.LINK_COLUMNS))
                              .where(lt.c.account_id.in_(bindparam("ids", expanding=True)))
                              .order_by(lt.c.account_id, lt.c.seq))
            for row in conn.execute(stmt, {"ids": list(request.links)}):
                links[row[0]].append(rows.read_link(row))
        absorbed: dict[str, list[Any]] = {i: [] for i in request.absorbed}
        if request.absorbed:
            a = t.accounts
            stmt = self._stmt("absorbed", lambda: select(*(a.c[n] for n in rows.ACCOUNT_COLUMNS))
                              .where(a.c.merged_into.in_(bindparam("ids", expanding=True)),
                                     a.c.status == AccountStatus.MERGED.value)
                              .order_by(a.c.merged_into, a.c.merged_seq, a.c.id))
            for row in conn.execute(stmt, {"ids": list(request.absorbed)}):
                absorbed[row[8]].append(rows.read_account(row))
        throttles = self._throttles(conn, request)
        receipts = {}
        if request.receipts:
            r = t.receipts
            stmt = self._stmt("receipts", lambda: select(
                *(r.c[n] for n in rows.RECEIPT_COLUMNS)).where(
                tuple_(r.c.principal_id, r.c.key).in_(bindparam("keys", expanding=True))))
            for row in conn.execute(stmt, {"keys": list(request.receipts)}):
                stored = rows.read_receipt(row)
                receipts[(stored.principal_id, stored.key)] = stored
        establishments = {}
        if request.establishments:
            e = t.establishments
            stmt = self._stmt("establishments", lambda: select(e.c.uai, e.c.name).where(
                e.c.uai.in_(bindparam("uais", expanding=True))))
            for row in conn.execute(stmt, {"uais": list(request.establishments)}):
                establishments[row[0]] = rows.read_establishment(row)
        return Fetched(
            by_login={k: by_key[k] for k in request.logins if k in by_key},
            accounts={i: by_id[i] for i in request.accounts if i in by_id},
            links={i: tuple(v) for i, v in links.items()},
            absorbed={i: tuple(v) for i, v in absorbed.items()},
            throttles=throttles,
            receipts={k: receipts[k] for k in request.receipts if k in receipts},
            establishments={u: establishments[u] for u in request.establishments
                            if u in establishments},
        )

    def _throttles(self, conn: Connection, request: Fetch) -> dict[str, ThrottleState]:
        keys = [*request.throttles, *request.count]
        found = {k: ThrottleState(k) for k in keys}
        if not keys:
            return found
        th = self._t.throttles
        stmt = self._stmt("throttles", lambda: select(*(th.c[n] for n in rows.THROTTLE_COLUMNS))
                          .where(th.c.key.in_(bindparam("keys", expanding=True))))
        for row in conn.execute(stmt, {"keys": keys}):
            found[row[0]] = rows.read_throttle(row)
        if request.count:
            assert request.at is not None
            at = request.at
            self._put_throttles(conn, [
                ThrottleState(key=k, consecutive=found[k].consecutive + 1, last_failure_at=at,
                              recent=(*found[k].recent, at)[-request.keep:])
                for k in request.count])
        return found

    def kept_throttles(self, conn: Connection) -> list[ThrottleState]:
        """Every counter not at rest (the journal adopts them on SQLite, once)."""
        th = self._t.throttles
        stmt = self._stmt("kept throttles", lambda: select(
            *(th.c[n] for n in rows.THROTTLE_COLUMNS)).where(
            or_(th.c.consecutive > 0, th.c.last_failure_at.is_not(None))))
        return [rows.read_throttle(row) for row in conn.execute(stmt)]

    def unpublished(self, conn: Connection, limit: int) -> list[OutboxEntry]:
        """The oldest unpublished outbox entries, by position."""
        o = self._t.outbox
        stmt = self._stmt("unpublished", lambda: select(*(o.c[n] for n in rows.OUTBOX_COLUMNS))
                          .where(o.c.published == false()).order_by(o.c.position)
                          .limit(bindparam("limit")))
        return [rows.read_outbox(row) for row in conn.execute(stmt, {"limit": limit})]

    def audit_records(self, conn: Connection, account_id: str | None,
                      limit: int) -> list[AuditRecord]:
        """The last *limit* audit records (about *account_id* if given), oldest first."""
        return [record for _, record in self.audit_entries(conn, account_id, limit)]

    def audit_entries(self, conn: Connection, account_id: str | None,
                      limit: int) -> list[tuple[int, AuditRecord]]:
        """:meth:`audit_records` with the ``seq`` of each record."""
        au = self._t.audit
        columns = [au.c[n] for n in rows.AUDIT_COLUMNS] + [au.c.seq]
        if account_id is None:
            stmt = self._stmt("audit", lambda: select(*columns).order_by(au.c.seq.desc())
                              .limit(bindparam("limit")))
        else:
            stmt = self._stmt("audit of", lambda: select(*columns).where(or_(
                au.c.account_id == bindparam("account_id"),
                au.c.actor == bindparam("account_id"))).order_by(au.c.seq.desc())
                .limit(bindparam("limit")))
        found = conn.execute(stmt, {"account_id": account_id, "limit": limit}).all()
        return [(row[-1], rows.read_audit(row)) for row in reversed(found)]

    def last_audit_seq(self, conn: Connection) -> int:
        """The ``seq`` of the last audit record (0 for none)."""
        au = self._t.audit
        stmt = self._stmt("last audit", lambda: select(func.coalesce(func.max(au.c.seq), 0)))
        return int(conn.execute(stmt).scalar_one())

    # -- writing ---------------------------------------------------------------------------
    def apply(self, conn: Connection, changes: ChangeSet, url: URL | None) -> None:
        """Write *changes*, part after part (see :class:`~account_merge.ports.ChangeSet`)."""
        t = self._t
        self._check_expectations(conn, changes)
        if changes.establishments:
            self._upsert(conn, "establishments", ["uai"], [
                {"uai": e.uai, "name": e.name} for e in changes.establishments])
        for new in changes.new_accounts:
            self._insert_account(conn, new.account, new.login_key, url)
        if changes.accounts:
            a = t.accounts
            values: dict[str, Any] = {n: bindparam(f"v_{n}") for n in rows.ACCOUNT_COLUMNS
                                      if n != "id"}
            stmt = self._stmt("replace", lambda: update(a).where(a.c.id == bindparam("v_id"))
                              .values(**values, merged_seq=self._merged_seq()))
            replaced = conn.execute(stmt, [{f"v_{n}": v for n, v in
                                            rows.account_values(x).items()}
                                           for x in changes.accounts]).rowcount
            if replaced != len(changes.accounts):
                raise ExpectationFailed("an account to replace is not stored")
        if changes.sign_ins:
            a = t.accounts
            stmt = self._stmt("sign in", lambda: update(a).where(a.c.id == bindparam("v_id"))
                              .values(last_signed_in_at=bindparam("v_at")))
            for sign_in in changes.sign_ins:
                if conn.execute(stmt, {"v_id": sign_in.account_id,
                                       "v_at": sign_in.at}).rowcount == 0:
                    raise ExpectationFailed(f"no account {sign_in.account_id!r}")
        if changes.credentials:
            self._upsert(conn, "credentials", ["account_id"],
                         [rows.credential_values(c) for c in changes.credentials])
        if changes.drop_credentials:
            c = t.credentials
            stmt = self._stmt("drop credentials", lambda: delete(c).where(
                c.c.account_id.in_(bindparam("ids", expanding=True))))
            conn.execute(stmt, {"ids": list(changes.drop_credentials)})
        if changes.unlink:
            lt = t.links
            stmt = self._stmt("unlink", lambda: delete(lt).where(
                lt.c.account_id == bindparam("a"), lt.c.child_id == bindparam("c")))
            conn.execute(stmt, [{"a": link.account_id, "c": link.child.id}
                                for link in changes.unlink])
        for link in changes.link:  # one at a time: the same link twice keeps its first place
            self._upsert(conn, "links", ["account_id", "child_id"], [rows.link_values(link)])
        if changes.throttles:
            self._put_throttles(conn, list(changes.throttles))
        if changes.receipts:
            self._upsert(conn, "receipts", ["principal_id", "key"], [
                {"principal_id": r.principal_id, "key": r.key, "login_key": r.login_key,
                 "receipt": rows.receipt_json(r)} for r in changes.receipts])
        for event in changes.events:
            self._append_event(conn, event.name, event.to_payload())
        if changes.published:
            o = t.outbox
            stmt = self._stmt("publish", lambda: update(o).where(
                o.c.position.in_(bindparam("positions", expanding=True)),
                o.c.published == false()).values(published=true()))
            conn.execute(stmt, {"positions": list(changes.published)})
        if changes.audit:
            stmt = self._stmt("audit insert", t.audit.insert)
            conn.execute(stmt, [rows.audit_values(record) for record in changes.audit])

    def _check_expectations(self, conn: Connection, changes: ChangeSet) -> None:
        if not changes.expect:
            return
        a, c = self._t.accounts, self._t.credentials
        stmt = self._stmt("expect", lambda: select(a.c.id, a.c.status, c.c.password_hash)
                          .outerjoin(c, c.c.account_id == a.c.id)
                          .where(a.c.id.in_(bindparam("ids", expanding=True))))
        found = {row[0]: (row[1], row[2]) for row in conn.execute(
            stmt, {"ids": [e.account_id for e in changes.expect]})}
        for expected in changes.expect:
            if found.get(expected.account_id) != (expected.status.value, expected.password_hash):
                raise ExpectationFailed()

    def _merged_seq(self) -> Any:
        """Kept when ``merged_into`` does not change, else one past the holder's last."""
        a = self._t.accounts
        earlier = a.alias("earlier")
        merged_into: Any = bindparam("v_merged_into")
        last = (select(func.coalesce(func.max(earlier.c.merged_seq), 0) + 1)
                .where(earlier.c.merged_into == merged_into).scalar_subquery())
        return case((merged_into.is_(None), null()),
                    (a.c.merged_into == merged_into, a.c.merged_seq), else_=last)

    def _insert_account(self, conn: Connection, account: Any, login_key: str,
                        url: URL | None) -> None:
        a = self._t.accounts
        earlier = a.alias("earlier")
        stmt = self._stmt("new account", lambda: sqlite.insert(a).values(
            **{n: bindparam(f"v_{n}") for n in rows.ACCOUNT_COLUMNS},
            login_key=bindparam("v_login_key"),
            merged_seq=case((bindparam("v_merged_into").is_(None), null()), else_=select(
                func.coalesce(func.max(earlier.c.merged_seq), 0) + 1).where(
                earlier.c.merged_into == bindparam("v_merged_into")).scalar_subquery()),
        ).on_conflict_do_nothing().returning(a.c.id))
        values = {f"v_{n}": v for n, v in rows.account_values(account).items()}
        try:
            inserted = conn.execute(stmt, {**values, "v_login_key": login_key}).first()
        except sa_exc.IntegrityError as error:  # pragma: no cover - ON CONFLICT catches it
            raise translate(error, url) from None
        if inserted is None:
            raise LoginTaken(login_key)

    def _upsert(self, conn: Connection, name: str, keys: list[str],
                values: list[dict[str, Any]]) -> None:
        table = getattr(self._t, name)

        def build() -> Any:
            stmt = sqlite.insert(table)
            return stmt.on_conflict_do_update(index_elements=keys, set_={
                c: stmt.excluded[c] for c in values[0] if c not in keys})

        conn.execute(self._stmt(f"upsert {name}", build), values)

    def _put_throttles(self, conn: Connection, states: Sequence[ThrottleState]) -> None:
        self._upsert(conn, "throttles", ["key"], [
            {"key": s.key, "consecutive": s.consecutive, "last_failure_at": s.last_failure_at,
             "recent": rows.recent_json(s)} for s in states])

    def _append_event(self, conn: Connection, name: str, payload: dict[str, Any]) -> None:
        o, head = self._t.outbox, self._t.outbox_head
        # One writer at a time: the next position is one past the last given, the
        # last in the outbox or, once the purge deleted events, in outbox_head.
        given = select(head.c.last_position).where(head.c.id == 1).scalar_subquery()
        stmt = self._stmt("append event", lambda: o.insert().from_select(
            ["position", "name", "payload", "published"],
            select(func.max(func.coalesce(func.max(o.c.position), 0),
                            func.coalesce(given, 0)) + 1,
                   bindparam("name", type_=o.c.name.type),
                   bindparam("payload", type_=o.c.payload.type), false())))
        conn.execute(stmt, {"name": name, "payload": payload})

    # -- bulk ------------------------------------------------------------------------------
    def insert_bulk(self, conn: Connection, bulk: Sequence[BulkAccount], url: URL | None) -> None:
        """Insert bulk rows, one ``executemany`` per table; a login or id in use: ``LoginTaken``."""
        t = self._t
        try:
            conn.execute(t.accounts.insert(), [
                {"id": r.account_id, "login": r.login, "login_key": r.login_key,
                 "role": "responsable", "status": r.status.value,
                 "display_name": r.display_name, "establishment_uai": r.establishment_uai,
                 "created_at": r.created_at} for r in bulk])
        except sa_exc.IntegrityError:
            raise LoginTaken("a login or id of the bulk") from None
        conn.execute(t.credentials.insert(), [
            {"account_id": r.account_id, "password_hash": r.password_hash,
             "kind": r.credential_kind.value, "expires_at": r.credential_expires_at}
            for r in bulk])
        conn.execute(t.links.insert(), [
            {"account_id": r.account_id, "child_id": r.child_id,
             "first_name": r.child_first_name, "last_name": r.child_last_name,
             "establishment_uai": r.establishment_uai, "origin_account_id": r.account_id,
             "origin_establishment_uai": r.establishment_uai, "via_merge": False,
             "linked_at": r.created_at} for r in bulk])
