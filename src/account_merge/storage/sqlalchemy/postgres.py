"""The PostgreSQL statements: one per fetch, one per change set.

A step of a use case talks to PostgreSQL in one round trip each way:
:meth:`PostgresStatements.fetch` builds the one statement that reads (and
locks, and counts) what a :class:`~account_merge.ports.Fetch` names, and
:meth:`PostgresStatements.apply` the one statement of data-modifying CTEs
that writes a :class:`~account_merge.ports.ChangeSet`.  Statements are
plain SQL with array parameters (``unnest``), so their text depends only
on which parts are present: each text is built once per store and shape,
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
  snapshot: when one differs, the store reads again, in a second
  statement, now that it holds the locks.  Without contention, one
  statement.
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

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from sqlalchemy import Dialect, Table

from account_merge.domain.account import AccountStatus
from account_merge.domain.establishment import Establishment
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.storage.sqlalchemy import rows
from account_merge.storage.sqlalchemy.netting import NetChanges, net
from account_merge.storage.sqlalchemy.schema import Tables

__all__ = ["ApplyOutcome", "PostgresStatements", "Statement"]

#: SQL text and its parameters (psycopg's ``%(name)s`` style).
Statement = tuple[str, dict[str, Any]]

_ACCOUNT_JSON = "json_build_array({a}.id, {a}.login, {a}.role, {a}.status, {a}.display_name, " \
    "{a}.establishment_uai, {a}.created_at, {a}.email, {a}.merged_into, {a}.last_signed_in_at"


def _array(name: str, sql_type: str) -> str:
    return f"CAST(%({name})s AS {sql_type}[])"


def _unnest(alias: str, columns: Sequence[tuple[str, str, str]], *,
            ordinality: bool = False) -> str:
    """``unnest(...) AS alias(...)`` over array parameters: (column, parameter, type)."""
    arrays = ", ".join(_array(param, sql_type) for _, param, sql_type in columns)
    names = ", ".join(column for column, _, _ in columns) + (", ord" if ordinality else "")
    return f"unnest({arrays}) {'WITH ORDINALITY ' if ordinality else ''}AS {alias}({names})"


@attrs.frozen
class _FetchShape:
    accounts: bool
    lock: bool
    links: bool
    absorbed: bool
    throttles: str  # "", "read" or "upsert"
    receipts: bool
    establishments: bool
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
        self._fetch_sql: dict[_FetchShape, str] = {}
        self._apply_sql: dict[tuple[bool, ...], str] = {}

    # -- fetch ------------------------------------------------------------------------------
    def fetch(self, request: Fetch, *, lock: bool, timeout: str | None) -> Statement:
        """The statement reading *request*; *lock* is false in a read-only unit of work."""
        keys = sorted({*request.throttles, *request.count})
        upsert = bool(request.count) or (lock and bool(request.throttles))
        shape = _FetchShape(
            accounts=bool(request.accounts or request.logins),
            lock=lock and bool(request.accounts), links=bool(request.links),
            absorbed=bool(request.absorbed),
            throttles="" if not keys else "upsert" if upsert else "read",
            receipts=bool(request.receipts), establishments=bool(request.establishments),
            timeout=timeout is not None and (upsert or (lock and bool(request.accounts))))
        sql = self._fetch_sql.get(shape)
        if sql is None:
            sql = self._fetch_sql[shape] = self._build_fetch(shape)
        counted = set(request.count)
        at = request.at
        params: dict[str, Any] = {
            "ids": list(request.accounts), "logins": list(request.logins),
            "link_ids": list(request.links), "absorbed_ids": list(request.absorbed),
            "t_keys": keys, "t_counted": [k in counted for k in keys],
            "at": at, "at_text": rows.iso(at) if at is not None else None,
            "keep": request.keep,
            "r_principals": [p for p, _ in request.receipts],
            "r_keys": [k for _, k in request.receipts],
            "uais": list(request.establishments), "lock_timeout": timeout,
        }
        return sql, params

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
            keys = _unnest("k", [("key", "t_keys", "text"), ("counted", "t_counted", "boolean")])
            ctes.append(
                f"thr AS (INSERT INTO {self.throttles} AS t "
                "(key, consecutive, last_failure_at, recent) "
                "SELECT k.key, CASE WHEN k.counted THEN 1 ELSE 0 END, "
                "CASE WHEN k.counted THEN CAST(%(at)s AS timestamptz) END, "
                "CASE WHEN k.counted THEN jsonb_build_array(CAST(%(at_text)s AS text)) "
                "ELSE '[]'::jsonb END "
                f"FROM {keys}"
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
                        f"FROM {self.throttles} WHERE key = ANY({_array('t_keys', 'text')}))")
        if s.lock:
            ctes.append(f"locked AS (SELECT id, ctid FROM {self.accounts} "
                        f"WHERE id = ANY({_array('ids', 'text')}){waits_for} "
                        "ORDER BY id FOR UPDATE)")
        if s.accounts:
            ctes.append(
                f"acc AS (SELECT a.*, a.ctid AS seen, c.account_id AS c_account_id, "
                "c.password_hash, c.kind, c.expires_at "
                f"FROM {self.accounts} a LEFT JOIN {self.credentials} c ON c.account_id = a.id "
                f"WHERE a.id = ANY({_array('ids', 'text')}) "
                f"OR a.login_key = ANY({_array('logins', 'text')}))")
        account = _ACCOUNT_JSON.format(a="a")
        columns = [
            (f"(SELECT json_agg({account}, a.c_account_id, a.password_hash, a.kind, "
             "a.expires_at, a.login_key)) FROM acc a)") if s.accounts else None,
            ("(SELECT json_agg(json_build_array(l.account_id, l.child_id, l.first_name, "
             "l.last_name, l.establishment_uai, l.origin_account_id, "
             "l.origin_establishment_uai, l.via_merge, l.linked_at) "
             f"ORDER BY l.account_id, l.seq) FROM {self.links} l "
             f"WHERE l.account_id = ANY({_array('link_ids', 'text')}))") if s.links else None,
            (f"(SELECT json_agg({account}) ORDER BY a.merged_into, a.merged_seq, a.id) "
             f"FROM {self.accounts} a WHERE a.merged_into = ANY({_array('absorbed_ids', 'text')})"
             f" AND a.status = '{AccountStatus.MERGED.value}')") if s.absorbed else None,
            ("(SELECT json_agg(json_build_array(key, consecutive, previous_failure_at, "
             "previous_recent)) FROM thr)" if s.throttles == "upsert" else
             "(SELECT json_agg(json_build_array(key, consecutive, last_failure_at, recent)) "
             "FROM thr)") if s.throttles else None,
            ("(SELECT json_agg(json_build_array(r.principal_id, r.key, r.login_key, r.receipt))"
             f" FROM {self.receipts} r WHERE (r.principal_id, r.key) IN (SELECT * FROM "
             f"{_unnest('w', [('p', 'r_principals', 'text'), ('k', 'r_keys', 'text')])}))"
             ) if s.receipts else None,
            ("(SELECT json_agg(json_build_array(e.uai, e.name)) "
             f"FROM {self.establishments} e WHERE e.uai = ANY({_array('uais', 'text')}))"
             ) if s.establishments else None,
            ("(SELECT coalesce(bool_or(a.seen IS DISTINCT FROM k.ctid), false) "
             "FROM locked k LEFT JOIN acc a ON a.id = k.id)") if s.lock else None,
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
        fresh = bool(n.fresh) and bool(n.link)
        shape = (bool(n.expect), bool(n.must_exist), timeout is not None,
                 bool(n.establishments), bool(n.new_accounts), bool(n.replaced),
                 bool(n.sign_ins), bool(n.touched), bool(n.credentials),
                 bool(n.drop_credentials), bool(n.unlink), bool(n.link), fresh,
                 bool(n.throttles), bool(n.receipts), bool(n.events), bool(n.published),
                 bool(n.audit))
        sql = self._apply_sql.get(shape)
        if sql is None:
            sql = self._apply_sql[shape] = self._build_apply(*shape)
        return sql, self._apply_params(n, timeout)

    @staticmethod
    def _apply_params(n: NetChanges, timeout: str | None) -> dict[str, Any]:
        def column(items: Sequence[Any], get: Callable[[Any], Any]) -> list[Any]:
            return [get(item) for item in items]

        news = [x.account for x in n.new_accounts]
        params: dict[str, Any] = {
            "lock_timeout": timeout,
            "x_id": column(n.expect, lambda e: e.account_id),
            "x_status": column(n.expect, lambda e: e.status.value),
            "x_hash": column(n.expect, lambda e: e.password_hash),
            "must_exist": list(n.must_exist),
            "e_uai": column(n.establishments, lambda e: e.uai),
            "e_name": column(n.establishments, lambda e: e.name),
            "n_login_key": column(n.new_accounts, lambda x: x.login_key),
            "s_id": [i for i, _ in n.sign_ins], "s_at": [at for _, at in n.sign_ins],
            "touched": list(n.touched),
            "c_id": column(n.credentials, lambda c: c.account_id),
            "c_hash": column(n.credentials, lambda c: c.password_hash),
            "c_kind": column(n.credentials, lambda c: c.kind.value),
            "c_expires": column(n.credentials, lambda c: c.expires_at),
            "drop_ids": list(n.drop_credentials),
            "u_account": [a for a, _ in n.unlink], "u_child": [c for _, c in n.unlink],
            "f_account": [a for a, _ in n.fresh], "f_child": [c for _, c in n.fresh],
            "th_key": column(n.throttles, lambda s: s.key),
            "th_consecutive": column(n.throttles, lambda s: s.consecutive),
            "th_last": column(n.throttles, lambda s: s.last_failure_at),
            "th_recent": column(n.throttles, lambda s: json.dumps(rows.recent_json(s))),
            "r_principal": column(n.receipts, lambda r: r.principal_id),
            "r_key": column(n.receipts, lambda r: r.key),
            "r_login_key": column(n.receipts, lambda r: r.login_key),
            "r_receipt": column(n.receipts, lambda r: json.dumps(rows.receipt_json(r))),
            "ev_count": len(n.events),
            "ev_name": column(n.events, lambda e: e.name),
            "ev_payload": column(n.events, lambda e: json.dumps(e.to_payload())),
            "published": list(n.published),
        }
        for prefix, accounts in (("n", news), ("a", n.replaced)):
            for name in rows.ACCOUNT_COLUMNS:
                params[f"{prefix}_{name}"] = []
            params[f"{prefix}_rank"] = []
            for account in accounts:
                for name, value in rows.account_values(account).items():
                    params[f"{prefix}_{name}"].append(value)
                params[f"{prefix}_rank"].append(n.ranks.get(account.id))
        for name in rows.LINK_COLUMNS:
            params[f"l_{name}"] = [rows.link_values(link)[name] for link in n.link]
        for name in rows.AUDIT_COLUMNS:
            params[f"au_{name}"] = [rows.audit_values(record)[name] for record in n.audit]
        return params

    def _build_apply(self, expect: bool, must_exist: bool, timeout: bool, establishments: bool,
                     new_accounts: bool, replaced: bool, sign_ins: bool, touched: bool,
                     credentials: bool, drop: bool, unlink: bool, link: bool, fresh: bool,
                     throttles: bool, receipts: bool, events: bool, published: bool,
                     audit: bool) -> str:
        ctes: list[str] = []
        guarded = expect or must_exist or timeout
        if guarded:
            expected = "true"
            if expect:
                wanted = _unnest("x", [("id", "x_id", "text"), ("status", "x_status", "text"),
                                       ("hash", "x_hash", "text")])
                expected = (
                    f"NOT EXISTS (SELECT 1 FROM {wanted}"
                    f" LEFT JOIN {self.accounts} a ON a.id = x.id "
                    f"LEFT JOIN {self.credentials} c ON c.account_id = x.id "
                    "WHERE a.id IS NULL OR a.status <> x.status "
                    "OR c.password_hash IS DISTINCT FROM x.hash)")
            present = "true"
            if must_exist:
                present = (f"(SELECT count(*) FROM {self.accounts} "
                           f"WHERE id = ANY({_array('must_exist', 'text')})) "
                           f"= cardinality({_array('must_exist', 'text')})")
            source = (" FROM (SELECT set_config('lock_timeout', %(lock_timeout)s, true)) s"
                      if timeout else "")
            ctes.append(f"guard AS (SELECT {expected} AS expected, {present} AS present"
                        f"{source})")
        ok = "(SELECT expected AND present FROM guard)" if guarded else "true"
        text, stamp, flag = "text", "timestamptz", "boolean"
        account_columns = [("id", "text"), ("login", text), ("role", text), ("status", text),
                           ("display_name", text), ("establishment_uai", text),
                           ("created_at", stamp), ("email", text), ("merged_into", text),
                           ("last_signed_in_at", stamp), ("rank", "bigint")]
        rank = ("CASE WHEN v.merged_into IS NULL THEN NULL {same}ELSE (SELECT "
                f"coalesce(max(m.merged_seq), 0) FROM {self.accounts} m "
                "WHERE m.merged_into = v.merged_into) + v.rank END")
        if establishments:
            values = _unnest("v", [("uai", "e_uai", text), ("name", "e_name", text)])
            ctes.append(
                f"w_establishments AS (INSERT INTO {self.establishments} (uai, name) "
                f"SELECT v.uai, v.name FROM {values} "
                f"WHERE {ok} ON CONFLICT (uai) DO UPDATE SET name = excluded.name)")
        if new_accounts:
            cols = [(c, f"n_{c}", t) for c, t in account_columns]
            cols.append(("login_key", "n_login_key", text))
            ctes.append(
                f"w_new AS (INSERT INTO {self.accounts} (id, login, login_key, role, status, "
                "display_name, establishment_uai, created_at, email, merged_into, merged_seq, "
                "last_signed_in_at) SELECT v.id, v.login, v.login_key, v.role, v.status, "
                "v.display_name, v.establishment_uai, v.created_at, v.email, v.merged_into, "
                f"{rank.format(same='')}, v.last_signed_in_at "
                f"FROM {_unnest('v', cols)} WHERE {ok})")
        if replaced:
            cols = [(c, f"a_{c}", t) for c, t in account_columns]
            same = "WHEN v.merged_into = a.merged_into THEN a.merged_seq "
            ctes.append(
                f"w_replaced AS (UPDATE {self.accounts} a SET login = v.login, role = v.role, "
                "status = v.status, display_name = v.display_name, "
                "establishment_uai = v.establishment_uai, created_at = v.created_at, "
                "email = v.email, merged_into = v.merged_into, "
                f"merged_seq = {rank.format(same=same)}, "
                "last_signed_in_at = v.last_signed_in_at "
                f"FROM {_unnest('v', cols)} WHERE a.id = v.id AND {ok})")
        if sign_ins:
            ctes.append(
                f"w_sign_ins AS (UPDATE {self.accounts} a SET last_signed_in_at = v.at "
                f"FROM {_unnest('v', [('id', 's_id', text), ('at', 's_at', stamp)])} "
                f"WHERE a.id = v.id AND {ok})")
        if touched:
            ctes.append(f"w_touched AS (UPDATE {self.accounts} SET id = id "
                        f"WHERE id = ANY({_array('touched', text)}) AND {ok})")
        if credentials:
            cols = [("account_id", "c_id", text), ("password_hash", "c_hash", text),
                    ("kind", "c_kind", text), ("expires_at", "c_expires", stamp)]
            ctes.append(
                f"w_credentials AS (INSERT INTO {self.credentials} (account_id, password_hash, "
                "kind, expires_at) SELECT v.account_id, v.password_hash, v.kind, v.expires_at "
                f"FROM {_unnest('v', cols)} WHERE {ok} ON CONFLICT (account_id) DO UPDATE SET "
                "password_hash = excluded.password_hash, kind = excluded.kind, "
                "expires_at = excluded.expires_at)")
        if drop:
            ctes.append(f"w_drop AS (DELETE FROM {self.credentials} "
                        f"WHERE account_id = ANY({_array('drop_ids', text)}) AND {ok})")
        if unlink:
            ctes.append(
                f"w_unlink AS (DELETE FROM {self.links} l USING "
                f"{_unnest('u', [('a', 'u_account', text), ('c', 'u_child', text)])} "
                f"WHERE l.account_id = u.a AND l.child_id = u.c AND {ok})")
        if link:
            types = {"via_merge": flag, "linked_at": stamp}
            cols = [(c, f"l_{c}", types.get(c, text)) for c in rows.LINK_COLUMNS]
            names = ", ".join(rows.LINK_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in rows.LINK_COLUMNS[2:])
            if fresh:  # removed and added again: to the end of the list
                updates += (", seq = CASE WHEN (l.account_id, l.child_id) IN (SELECT * FROM "
                            f"{_unnest('f', [('a', 'f_account', text), ('c', 'f_child', text)])})"
                            " THEN excluded.seq ELSE l.seq END")
            ctes.append(
                f"w_link AS (INSERT INTO {self.links} AS l ({names}) "
                f"SELECT {', '.join(f'v.{c}' for c in rows.LINK_COLUMNS)} "
                f"FROM {_unnest('v', cols, ordinality=True)} WHERE {ok} ORDER BY v.ord "
                f"ON CONFLICT (account_id, child_id) DO UPDATE SET {updates})")
        if throttles:
            cols = [("key", "th_key", text), ("consecutive", "th_consecutive", "integer"),
                    ("last", "th_last", stamp), ("recent", "th_recent", text)]
            ctes.append(
                f"w_throttles AS (INSERT INTO {self.throttles} (key, consecutive, "
                "last_failure_at, recent) SELECT v.key, v.consecutive, v.last, "
                f"CAST(v.recent AS jsonb) FROM {_unnest('v', cols)} WHERE {ok} "
                "ON CONFLICT (key) DO UPDATE SET consecutive = excluded.consecutive, "
                "last_failure_at = excluded.last_failure_at, recent = excluded.recent, "
                "previous_failure_at = NULL, previous_recent = NULL)")
        if receipts:
            cols = [("principal_id", "r_principal", text), ("key", "r_key", text),
                    ("login_key", "r_login_key", text), ("receipt", "r_receipt", text)]
            ctes.append(
                f"w_receipts AS (INSERT INTO {self.receipts} (principal_id, key, login_key, "
                "receipt) SELECT v.principal_id, v.key, v.login_key, CAST(v.receipt AS jsonb) "
                f"FROM {_unnest('v', cols)} WHERE {ok} ON CONFLICT (principal_id, key) DO "
                "UPDATE SET login_key = excluded.login_key, receipt = excluded.receipt)")
        if events:
            values = _unnest("v", [("name", "ev_name", text), ("payload", "ev_payload", text)],
                             ordinality=True)
            ctes.append(
                f"w_head AS (INSERT INTO {self.outbox_head} AS h (id, last_position) "
                f"SELECT 1, (SELECT coalesce(max(position), 0) FROM {self.outbox}) "
                f"+ %(ev_count)s WHERE {ok} ON CONFLICT (id) DO UPDATE "
                "SET last_position = h.last_position + %(ev_count)s RETURNING last_position)")
            ctes.append(
                f"w_events AS (INSERT INTO {self.outbox} (position, name, payload, published) "
                "SELECT w_head.last_position - %(ev_count)s + v.ord, v.name, "
                f"CAST(v.payload AS jsonb), false FROM w_head, {values})")
        if published:
            ctes.append(
                f"w_published AS (UPDATE {self.outbox} SET published = true "
                f"WHERE position = ANY({_array('published', 'bigint')}) AND NOT published "
                f"AND {ok})")
        if audit:
            types = {"at": stamp}
            cols = [(c, f"au_{c}", types.get(c, text)) for c in rows.AUDIT_COLUMNS]
            ctes.append(
                f"w_audit AS (INSERT INTO {self.audit} ({', '.join(rows.AUDIT_COLUMNS)}) "
                f"SELECT {', '.join(f'v.{c}' for c in rows.AUDIT_COLUMNS)} "
                f"FROM {_unnest('v', cols, ordinality=True)} WHERE {ok} ORDER BY v.ord)")
        final = "SELECT expected, present FROM guard" if guarded else "SELECT true, true"
        return f"WITH {', '.join(ctes)} {final}" if ctes else final

    @staticmethod
    def outcome(row: Sequence[Any] | None) -> ApplyOutcome:
        """Whether the preconditions of the statement of :meth:`apply` held."""
        assert row is not None
        return ApplyOutcome(expected=bool(row[0]), present=bool(row[1]))
