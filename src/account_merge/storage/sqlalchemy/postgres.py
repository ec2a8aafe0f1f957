"""The PostgreSQL statements: one per fetch, one per change set.

A step of a use case talks to PostgreSQL in one round trip each way:
:meth:`PostgresStatements.fetch` builds the one statement that reads (and
locks, and counts) what a :class:`~account_merge.ports.Fetch` names, and
:meth:`PostgresStatements.apply` the one statement of data-modifying CTEs
that writes a :class:`~account_merge.ports.ChangeSet` (built by
:mod:`~account_merge.storage.sqlalchemy.postgres_writes`).  Statements are
plain SQL with array or JSON parameters, so their text depends only on
which parts are present: each text is built once per store and shape,
and the server (psycopg prepares what runs often) plans it once per
connection.

How one statement keeps the contract:

- **Counting** (``Fetch.count``) is ``INSERT ... ON CONFLICT (key) DO
  UPDATE ... RETURNING``: the conflict locks the counter row and the update
  applies to its latest version, so concurrent counts are all counted.
  ``RETURNING`` gives the new row; the row keeps the state before the
  count in ``previous_failure_at`` and ``previous_recent`` (and the count
  before is one less), which is what ``Fetched.throttles`` gives back.
  Counters read with ``lock=True`` go through the same statement with
  nothing to add, which locks them, existing or not.
- **Lock order**: the counters, sorted by key, are locked first; the
  accounts' ``SELECT ... ORDER BY id FOR UPDATE`` waits for the counters
  (its condition reads the counters' CTE), so accounts come second, by id.
- **Reading after a lock wait.**  At READ COMMITTED a statement reads one
  snapshot, taken before it waited for a lock; a locked row comes back in
  its latest version, but the rest (links, absorbed accounts, receipts)
  would be read as they were before the holder of the lock committed.  So
  every change set rewrites the row of each account whose credential,
  links, absorbed accounts or receipts it changes, and the fetch compares
  the locked version of each account (its ``ctid``) with the one of its
  snapshot: when one differs (or the account was deleted meanwhile, by
  the retention tier), the store reads again, in a second statement, now
  that it holds the locks.  Without contention, one statement.
- **Preconditions** (``Expect``, and the accounts to replace) are one CTE
  that every write of the statement is conditioned on: when it fails,
  nothing is written and the statement says so.  A login or id in use
  makes the insert fail, and with it the whole statement.
- **The outbox**: its positions come from the one row of ``outbox_head``,
  whose update locks it until commit, so positions are gap-free and
  become visible in commit order.
- **lock_timeout** is set by the statement itself (``set_config(...,
  true)``, before anything waits), so it costs no round trip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs
from sqlalchemy import Dialect, Table

from account_merge.domain.account import AccountStatus
from account_merge.domain.establishment import Establishment
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.storage.sqlalchemy import rows
from account_merge.storage.sqlalchemy.netting import net
from account_merge.storage.sqlalchemy.postgres_writes import (
    TableNames,
    apply_params,
    apply_shape,
    build_apply,
    in_list,
    put_values,
)
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["ApplyOutcome", "PostgresStatements", "Statement"]

#: SQL text and its parameters (psycopg's ``%(name)s`` style).
Statement = tuple[str, dict[str, Any]]

_ACCOUNT_JSON = "json_build_array({a}.id, {a}.login, {a}.role, {a}.status, {a}.display_name, " \
    "{a}.establishment_uai, {a}.created_at, {a}.email, {a}.merged_into, {a}.last_signed_in_at"


@attrs.frozen
class _Sql:
    """A statement's text and the parameters it uses (psycopg converts and caches
    the text of a statement only when it is given at most 50 parameters)."""

    text: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Sql:
        return cls(text, tuple(sorted(set(re.findall(r"%\((\w+)\)s", text)))))

    def bind(self, params: dict[str, Any]) -> Statement:
        return self.text, {name: params[name] for name in self.names}


@attrs.frozen
class _FetchShape:
    """What a fetch names, counted: the key of its statement's text."""

    ids: int
    logins: int
    lock: bool
    links: int
    absorbed: int
    keys: int
    throttles: str  # "", "read" or "upsert"
    receipts: int
    establishments: int
    timeout: bool


@attrs.frozen
class ApplyOutcome:
    """What the statement of a change set says: did its preconditions hold?"""

    expected: bool
    present: bool


class PostgresStatements:
    """The statements of one store on PostgreSQL, built once per shape."""

    def __init__(self, tables: Tables, dialect: Dialect) -> None:
        quote = dialect.identifier_preparer

        def name(table: Table) -> str:
            return quote.format_table(table)

        self._t = tables
        self.accounts, self.credentials = name(tables.accounts), name(tables.credentials)
        self.links, self.throttles = name(tables.links), name(tables.throttles)
        self.receipts, self.establishments = name(tables.receipts), name(tables.establishments)
        self.outbox, self.outbox_head = name(tables.outbox), name(tables.outbox_head)
        self.audit = name(tables.audit)
        self._names: TableNames = {
            "accounts": self.accounts, "credentials": self.credentials, "links": self.links,
            "throttles": self.throttles, "receipts": self.receipts,
            "establishments": self.establishments, "outbox": self.outbox,
            "outbox_head": self.outbox_head, "audit": self.audit}
        self._fetch_sql: dict[_FetchShape, _Sql] = {}
        self._apply_sql: dict[tuple[int, ...], _Sql] = {}

    # -- fetch ------------------------------------------------------------------------------
    def fetch(self, request: Fetch, *, lock: bool, timeout: str | None) -> Statement:
        """The statement reading *request*; *lock* is false in a read-only unit of work."""
        keys = sorted({*request.throttles, *request.count})
        upsert = bool(request.count) or (lock and bool(request.throttles))
        shape = _FetchShape(
            ids=len(request.accounts), logins=len(request.logins),
            lock=lock and bool(request.accounts), links=len(request.links),
            absorbed=len(request.absorbed), keys=len(keys),
            throttles="" if not keys else "upsert" if upsert else "read",
            receipts=len(request.receipts), establishments=len(request.establishments),
            timeout=timeout is not None and (upsert or (lock and bool(request.accounts))))
        sql = self._fetch_sql.get(shape)
        if sql is None:
            sql = self._fetch_sql[shape] = _Sql.of(self._build_fetch(shape))
        counted = set(request.count)
        at = request.at
        params: dict[str, Any] = {
            "at": at, "at_text": rows.iso(at) if at is not None else None,
            "keep": request.keep, "lock_timeout": timeout,
        }
        for name, values in (("id", request.accounts), ("login", request.logins),
                             ("link", request.links), ("absorbed", request.absorbed),
                             ("key", keys), ("counted", [k in counted for k in keys]),
                             ("rp", [p for p, _ in request.receipts]),
                             ("rk", [k for _, k in request.receipts]),
                             ("uai", request.establishments)):
            put_values(params, name, values)
        return sql.bind(params)

    def _build_fetch(self, s: _FetchShape) -> str:
        ctes: list[str] = []
        if s.timeout:
            ctes.append("prelude AS (SELECT set_config('lock_timeout', "
                        "%(lock_timeout)s, true) AS v)")
        waits_for = " AND (SELECT v FROM prelude) IS NOT NULL" if s.timeout else ""
        if s.throttles == "upsert":
            recent = ("(SELECT coalesce(jsonb_agg(r.e ORDER BY r.i), '[]'::jsonb) "
                      "FROM jsonb_array_elements(t.recent || excluded.recent) "
                      "WITH ORDINALITY AS r(e, i) "
                      "WHERE r.i > jsonb_array_length(t.recent) + 1 - %(keep)s)")
            keys = ", ".join(f"(%(key{i})s::text, %(counted{i})s::boolean)"
                             for i in range(s.keys))
            ctes.append(
                f"thr AS (INSERT INTO {self.throttles} AS t "
                "(key, consecutive, last_failure_at, recent) "
                "SELECT k.key, CASE WHEN k.counted THEN 1 ELSE 0 END, "
                "CASE WHEN k.counted THEN %(at)s::timestamptz END, "
                "CASE WHEN k.counted THEN jsonb_build_array(%(at_text)s::text) "
                "ELSE '[]'::jsonb END "
                f"FROM (VALUES {keys}) AS k(key, counted)"
                f"{', prelude' if s.timeout else ''} ORDER BY k.key "
                "ON CONFLICT (key) DO UPDATE SET "
                "consecutive = t.consecutive + excluded.consecutive, "
                "last_failure_at = CASE WHEN excluded.consecutive > 0 "
                "THEN excluded.last_failure_at ELSE t.last_failure_at END, "
                f"recent = CASE WHEN excluded.consecutive > 0 THEN {recent} ELSE t.recent END, "
                "previous_failure_at = t.last_failure_at, previous_recent = t.recent "
                "RETURNING key, consecutive, previous_failure_at, previous_recent)")
            waits_for = " AND (SELECT count(*) FROM thr) >= 0"
        elif s.throttles == "read":
            ctes.append(f"thr AS (SELECT key, consecutive, last_failure_at, recent "
                        f"FROM {self.throttles} WHERE key IN {in_list('key', s.keys)})")
        if s.lock:
            ctes.append(f"locked AS (SELECT id, ctid FROM {self.accounts} "
                        f"WHERE id IN {in_list('id', s.ids)}{waits_for} ORDER BY id FOR UPDATE)")
        if s.ids or s.logins:
            found = [f"a.id IN {in_list('id', s.ids)}" if s.ids else "",
                     f"a.login_key IN {in_list('login', s.logins)}" if s.logins else ""]
            ctes.append(
                f"acc AS (SELECT a.*, a.ctid AS seen, c.account_id AS c_account_id, "
                "c.password_hash, c.kind, c.expires_at "
                f"FROM {self.accounts} a LEFT JOIN {self.credentials} c ON c.account_id = a.id "
                f"WHERE {' OR '.join(f for f in found if f)})")
        account = _ACCOUNT_JSON.format(a="a")
        columns = [
            (f"(SELECT json_agg({account}, a.c_account_id, a.password_hash, a.kind, "
             "a.expires_at, a.login_key)) FROM acc a)") if s.ids or s.logins else None,
            ("(SELECT json_agg(json_build_array(l.account_id, l.child_id, l.first_name, "
             "l.last_name, l.establishment_uai, l.origin_account_id, "
             "l.origin_establishment_uai, l.via_merge, l.linked_at) "
             f"ORDER BY l.account_id, l.seq) FROM {self.links} l "
             f"WHERE l.account_id IN {in_list('link', s.links)})") if s.links else None,
            (f"(SELECT json_agg({account}) ORDER BY a.merged_into, a.merged_seq, a.id) "
             f"FROM {self.accounts} a WHERE a.merged_into IN {in_list('absorbed', s.absorbed)}"
             f" AND a.status = '{AccountStatus.MERGED.value}')") if s.absorbed else None,
            ("(SELECT json_agg(json_build_array(key, consecutive, previous_failure_at, "
             "previous_recent)) FROM thr)" if s.throttles == "upsert" else
             "(SELECT json_agg(json_build_array(key, consecutive, last_failure_at, recent)) "
             "FROM thr)") if s.throttles else None,
            ("(SELECT json_agg(json_build_array(r.principal_id, r.key, r.login_key, r.receipt))"
             f" FROM {self.receipts} r WHERE (r.principal_id, r.key) IN ("
             + ", ".join(f"(%(rp{i})s, %(rk{i})s)" for i in range(s.receipts)) + "))"
             ) if s.receipts else None,
            ("(SELECT json_agg(json_build_array(e.uai, e.name)) "
             f"FROM {self.establishments} e WHERE e.uai IN {in_list('uai', s.establishments)})"
             ) if s.establishments else None,
            # An account the lock holder deleted is no longer locked: read again too.
            ("(SELECT coalesce(bool_or(a.seen IS DISTINCT FROM k.ctid), false) "
             f"FROM locked k FULL JOIN (SELECT id, seen FROM acc WHERE id IN "
             f"{in_list('id', s.ids)}) a ON a.id = k.id)") if s.lock else None,
        ]
        select = "SELECT " + ", ".join(c if c is not None else "NULL" for c in columns)
        return (f"WITH {', '.join(ctes)} {select}" if ctes else select)

    def read_fetched(self, row: Sequence[Any], request: Fetch) -> tuple[Fetched, bool]:
        """What the statement of :meth:`fetch` found, and whether it must read again."""
        accounts_rows, links_rows, absorbed_rows, throttle_rows, receipt_rows, uai_rows, stale \
            = row
        by_id: dict[str, AccountRecord] = {}
        by_key: dict[str, AccountRecord] = {}
        for found in accounts_rows or ():
            record = rows.read_record(found)
            by_id[record.account.id] = record
            by_key[found[-1]] = record
        links: dict[str, list[Any]] = {i: [] for i in request.links}
        for found in links_rows or ():
            links[found[0]].append(rows.read_link(found))
        absorbed: dict[str, list[Any]] = {i: [] for i in request.absorbed}
        for found in absorbed_rows or ():
            absorbed[found[8]].append(rows.read_account(found))
        counted = set(request.count)
        throttles = {k: ThrottleState(k) for k in (*request.throttles, *request.count)}
        for found in throttle_rows or ():
            state = rows.read_throttle(found)
            if state.key in counted:
                state = attrs.evolve(state, consecutive=state.consecutive - 1)
            throttles[state.key] = state
        receipts = {}
        for found in receipt_rows or ():
            stored = rows.read_receipt(found)
            receipts[(stored.principal_id, stored.key)] = stored
        establishments: dict[str, Establishment] = {}
        for found in uai_rows or ():
            establishments[found[0]] = rows.read_establishment(found)
        fetched = Fetched(
            by_login={k: by_key[k] for k in request.logins if k in by_key},
            accounts={i: by_id[i] for i in request.accounts if i in by_id},
            links={i: tuple(v) for i, v in links.items()},
            absorbed={i: tuple(v) for i, v in absorbed.items()},
            throttles=throttles,
            receipts={k: receipts[k] for k in request.receipts if k in receipts},
            establishments={u: establishments[u] for u in request.establishments
                            if u in establishments},
        )
        return fetched, bool(stale)

    # -- apply ------------------------------------------------------------------------------
    def apply(self, changes: ChangeSet, *, timeout: str | None) -> Statement | None:
        """The one statement writing *changes* (None when there is nothing to write)."""
        if not changes:
            return None
        n = net(changes)
        shape = apply_shape(n, timeout is not None)
        sql = self._apply_sql.get(shape)
        if sql is None:
            sql = self._apply_sql[shape] = _Sql.of(build_apply(self._names, shape))
        return sql.bind(apply_params(n, timeout))

    @staticmethod
    def outcome(row: Sequence[Any] | None) -> ApplyOutcome:
        """Whether the preconditions of the statement of :meth:`apply` held."""
        assert row is not None
        return ApplyOutcome(expected=bool(row[0]), present=bool(row[1]))
