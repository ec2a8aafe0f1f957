"""The school's register on SQLite: tier ``register`` (schema version 5).

The register's records, the accounts it closed and the links found by
the establishment whose letter gave them; passes page by external id and
by child id through indexes.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

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
from account_merge.storage.sqlite.errors import _DECODING_ERRORS
from account_merge.storage.sqlite.rows import _LINK_COLUMNS, _link_from_row
from account_merge.storage.sqlite.statements import _marks
from account_merge.storage.sqlite.unit_of_work import _CoreUnitOfWork

_REGISTER_COLUMNS = "establishment_uai, external_id, account_id, display_name, email, children"


def _register_from_row(row: Sequence[Any]) -> RegisterRecord:
    return RegisterRecord(row[0], row[1], row[2], row[3], row[4], tuple(
        Child(id=c[0], first_name=c[1], last_name=c[2], establishment_uai=c[3])
        for c in json.loads(row[5])))


def _register_values(record: RegisterRecord) -> tuple[Any, ...]:
    return (record.establishment_uai, record.external_id, record.account_id,
            record.display_name, record.email,
            json.dumps([[c.id, c.first_name, c.last_name, c.establishment_uai]
                        for c in record.children], ensure_ascii=False))


@functools.cache
def _select_register_keys(count: int) -> str:
    either = " OR ".join(["(establishment_uai = ? AND external_id = ?)"] * count)
    return f"SELECT {_REGISTER_COLUMNS} FROM register WHERE {either}"


@functools.cache
def _select_register_accounts(count: int) -> str:
    return (f"SELECT {_REGISTER_COLUMNS} FROM register WHERE account_id IN ({_marks(count)})"
            " ORDER BY account_id, establishment_uai, external_id")


@functools.cache
def _select_origin_links(count: int) -> str:
    columns = ", ".join(f"l.{c.strip()}" for c in _LINK_COLUMNS.split(","))
    return (f"SELECT {columns} FROM links AS l JOIN accounts AS a ON a.id = l.account_id"
            f" WHERE l.origin_establishment_uai = ? AND l.child_id IN ({_marks(count)})"
            f" AND a.role = '{Role.RESPONSABLE.value}' ORDER BY l.account_id, l.seq")


@functools.cache
def _select_closures(count: int) -> str:
    return ("SELECT account_id, establishment_uai, closed_at FROM closures"
            f" WHERE account_id IN ({_marks(count)})")


_REGISTER_PAGE = (f"SELECT {_REGISTER_COLUMNS} FROM register"
                  " WHERE establishment_uai = ? AND external_id > ? ORDER BY external_id LIMIT ?")
_LINKED_CHILDREN_PAGE = (
    "SELECT DISTINCT l.child_id FROM links AS l JOIN accounts AS a ON a.id = l.account_id"
    " WHERE l.origin_establishment_uai = ? AND l.child_id > ?"
    f" AND a.role = '{Role.RESPONSABLE.value}' ORDER BY l.child_id LIMIT ?")
_PUT_REGISTER = (
    f"INSERT INTO register ({_REGISTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (establishment_uai, external_id) DO UPDATE SET"
    " account_id = excluded.account_id, display_name = excluded.display_name,"
    " email = excluded.email, children = excluded.children")
_DROP_REGISTER = "DELETE FROM register WHERE establishment_uai = ? AND external_id = ?"
_PUT_CLOSURE = (
    "INSERT INTO closures (account_id, establishment_uai, closed_at) VALUES (?, ?, ?)"
    " ON CONFLICT (account_id) DO UPDATE SET establishment_uai = excluded.establishment_uai,"
    " closed_at = excluded.closed_at")
_DROP_CLOSURE = "DELETE FROM closures WHERE account_id = ?"


class _RegisterTier(_CoreUnitOfWork):
    """Tier ``register`` of the unit of work."""

    # tier ``register`` ----------------------------------------------------------------
    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        connection = self._connection()
        try:
            found: dict[str, Any] = {}
            if request.entries:
                pairs = [part for key in request.entries for part in key]
                found["entries"] = {
                    (r.establishment_uai, r.external_id): r
                    for r in (_register_from_row(row) for row in connection.execute(
                        _select_register_keys(len(request.entries)), pairs))}
            if request.accounts:
                by_account: dict[str, list[RegisterRecord]] = {a: [] for a in request.accounts}
                for row in connection.execute(_select_register_accounts(len(request.accounts)),
                                              request.accounts):
                    by_account[row[2]].append(_register_from_row(row))
                found["by_account"] = {a: tuple(v) for a, v in by_account.items()}
            if request.origin_links:
                links: dict[str, list[ChildLink]] = {c: [] for c in request.origin_links}
                for row in connection.execute(_select_origin_links(len(request.origin_links)),
                                              (request.establishment, *request.origin_links)):
                    links[row[1]].append(_link_from_row(row))
                found["origin_links"] = {c: tuple(v) for c, v in links.items()}
            if request.closures:
                found["closures"] = {
                    row[0]: Closure(row[0], row[1], datetime.fromisoformat(row[2]))
                    for row in connection.execute(_select_closures(len(request.closures)),
                                                  request.closures)}
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        except _DECODING_ERRORS as error:
            raise self._unreadable("a register record", error) from error
        return RegisterFetched(**found)

    def register_apply(self, changes: RegisterChanges) -> None:
        connection = self._connection()
        try:
            if changes.drop:
                connection.executemany(_DROP_REGISTER, changes.drop)
            if changes.put:
                connection.executemany(_PUT_REGISTER, [_register_values(r) for r in changes.put])
            if changes.close:
                connection.executemany(_PUT_CLOSURE, [
                    (c.account_id, c.establishment_uai, c.closed_at.isoformat())
                    for c in changes.close])
            if changes.reopen:
                connection.executemany(_DROP_CLOSURE, [(a,) for a in changes.reopen])
        except sqlite3.Error as error:
            raise self._storage._error(error) from error

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        connection = self._connection()
        try:
            rows = connection.execute(_REGISTER_PAGE,
                                      (establishment_uai, cursor or "", limit)).fetchall()
            items = tuple(_register_from_row(row) for row in rows)
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        except _DECODING_ERRORS as error:
            raise self._unreadable("a register record", error) from error
        return RegisterPage(items, items[-1].external_id if len(items) == limit else None)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        connection = self._connection()
        try:
            ids = tuple(row[0] for row in connection.execute(
                _LINKED_CHILDREN_PAGE, (establishment_uai, cursor or "", limit)))
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        return RegisterPage(ids, ids[-1] if len(ids) == limit else None)
