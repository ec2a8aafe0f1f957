"""Tier ``register`` of SQLAlchemyStorage, in SQLAlchemy Core, on PostgreSQL and SQLite alike.

The register's records (``<prefix>register``: the children as JSON, ``[id,
first name, last name, UAI]`` sorted by id), the accounts it closed
(``<prefix>closures``), and the links found by the establishment whose
letter gave them (index ``<prefix>links_origin_idx``).  The passes of a
sync read a page at a time, by external id and by child id, in the
order of the database's collation, resuming after the last key read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, tuple_, update

from account_merge.domain.account import Role
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.register import RegisterRecord
from account_merge.ports.register import (
    Closure,
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.storage.sqlalchemy.rows import LINK_COLUMNS, read_link
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["RegisterStatements"]

_COLUMNS = ("establishment_uai", "external_id", "account_id", "display_name", "email",
            "children")


def _children(value: Any) -> list[list[str]]:
    return json.loads(value) if isinstance(value, str) else list(value)


def _record(row: Sequence[Any]) -> RegisterRecord:
    return RegisterRecord(row[0], row[1], row[2], row[3], row[4], tuple(
        Child(id=c[0], first_name=c[1], last_name=c[2], establishment_uai=c[3])
        for c in _children(row[5])))


def _values(record: RegisterRecord) -> dict[str, Any]:
    return {"establishment_uai": record.establishment_uai, "external_id": record.external_id,
            "account_id": record.account_id, "display_name": record.display_name,
            "email": record.email,
            "children": [[c.id, c.first_name, c.last_name, c.establishment_uai]
                         for c in record.children]}


class RegisterStatements:
    """What the register tier runs on a connection of the store."""

    def __init__(self, tables: Tables) -> None:
        self.t = tables

    def fetch(self, conn: Connection, request: RegisterFetch) -> RegisterFetched:
        register, closures, links, accounts = (self.t.register, self.t.closures, self.t.links,
                                               self.t.accounts)
        columns = [register.c[name] for name in _COLUMNS]
        found: dict[str, Any] = {}
        if request.entries:
            keys = tuple_(register.c.establishment_uai, register.c.external_id)
            rows = conn.execute(select(*columns).where(
                or_(*(and_(register.c.establishment_uai == uai, register.c.external_id == ext)
                      for uai, ext in request.entries)) if len(request.entries) < 50
                else keys.in_(list(request.entries))))
            found["entries"] = {(r.establishment_uai, r.external_id): r
                                for r in (_record(row) for row in rows)}
        if request.accounts:
            by_account: dict[str, list[RegisterRecord]] = {a: [] for a in request.accounts}
            for row in conn.execute(select(*columns)
                                    .where(register.c.account_id.in_(request.accounts))
                                    .order_by(register.c.account_id,
                                              register.c.establishment_uai,
                                              register.c.external_id)):
                by_account[row[2]].append(_record(row))
            found["by_account"] = {a: tuple(v) for a, v in by_account.items()}
        if request.origin_links:
            origin: dict[str, list[ChildLink]] = {c: [] for c in request.origin_links}
            for row in conn.execute(
                    select(*(links.c[name] for name in LINK_COLUMNS))
                    .join(accounts, accounts.c.id == links.c.account_id)
                    .where(links.c.origin_establishment_uai == request.establishment,
                           links.c.child_id.in_(request.origin_links),
                           accounts.c.role == Role.RESPONSABLE.value)
                    .order_by(links.c.account_id, links.c.seq)):
                origin[row[1]].append(read_link(row))
            found["origin_links"] = {c: tuple(v) for c, v in origin.items()}
        if request.closures:
            found["closures"] = {
                row[0]: Closure(row[0], row[1], row[2])
                for row in conn.execute(
                    select(closures.c.account_id, closures.c.establishment_uai,
                           closures.c.closed_at)
                    .where(closures.c.account_id.in_(request.closures)))}
        return RegisterFetched(**found)

    def apply(self, conn: Connection, changes: RegisterChanges) -> None:
        register, closures = self.t.register, self.t.closures
        for uai, ext in changes.drop:
            conn.execute(delete(register).where(register.c.establishment_uai == uai,
                                                register.c.external_id == ext))
        if changes.put:
            # Replaced by key: those stored are updated, the others inserted.
            keys = [r.key for r in changes.put]
            stored = {(row[0], row[1]) for row in conn.execute(
                select(register.c.establishment_uai, register.c.external_id)
                .where(tuple_(register.c.establishment_uai,
                              register.c.external_id).in_(keys)))}
            new = [_values(r) for r in changes.put if r.key not in stored]
            if new:
                conn.execute(insert(register), new)
            for record in changes.put:
                if record.key in stored:
                    values = _values(record)
                    conn.execute(update(register).where(
                        register.c.establishment_uai == record.establishment_uai,
                        register.c.external_id == record.external_id).values(
                        account_id=values["account_id"], display_name=values["display_name"],
                        email=values["email"], children=values["children"]))
        if changes.close:
            ids = [c.account_id for c in changes.close]
            conn.execute(delete(closures).where(closures.c.account_id.in_(ids)))
            conn.execute(insert(closures), [
                {"account_id": c.account_id, "establishment_uai": c.establishment_uai,
                 "closed_at": c.closed_at} for c in changes.close])
        if changes.reopen:
            conn.execute(delete(closures).where(closures.c.account_id.in_(changes.reopen)))

    def page(self, conn: Connection, establishment_uai: str, cursor: str | None,
             limit: int) -> RegisterPage:
        register = self.t.register
        query = (select(*(register.c[name] for name in _COLUMNS))
                 .where(register.c.establishment_uai == establishment_uai)
                 .order_by(register.c.external_id).limit(limit))
        if cursor is not None:
            query = query.where(register.c.external_id > cursor)
        items = tuple(_record(row) for row in conn.execute(query))
        return RegisterPage(items, items[-1].external_id if len(items) == limit else None)

    def linked_children(self, conn: Connection, establishment_uai: str, cursor: str | None,
                        limit: int) -> RegisterPage:
        links, accounts = self.t.links, self.t.accounts
        query = (select(links.c.child_id).distinct()
                 .join(accounts, accounts.c.id == links.c.account_id)
                 .where(links.c.origin_establishment_uai == establishment_uai,
                        accounts.c.role == Role.RESPONSABLE.value)
                 .order_by(links.c.child_id).limit(limit))
        if cursor is not None:
            query = query.where(links.c.child_id > cursor)
        ids = tuple(row[0] for row in conn.execute(query))
        return RegisterPage(ids, ids[-1] if len(ids) == limit else None)
