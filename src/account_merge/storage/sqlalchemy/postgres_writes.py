"""The one statement that writes a change set on PostgreSQL.

Each part of the change set's net effect (:mod:`~account_merge.storage.sqlalchemy.netting`)
is one data-modifying CTE; its rows come as one JSON parameter, read with
``jsonb_to_recordset``, so a statement has a handful of parameters
whatever the number of rows.  Every write is conditioned on the ``guard``
CTE (the ``Expect`` preconditions, and the accounts to replace being
stored), so that when it fails nothing is written; the final ``SELECT``
says which failed.  The text of a statement depends only on which parts
are present.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from account_merge.domain.account import Account
from account_merge.storage.sqlalchemy import rows
from account_merge.storage.sqlalchemy.netting import NetChanges

__all__ = ["TableNames", "apply_params", "apply_shape", "build_apply", "in_list", "put_values"]

#: The quoted names of a store's tables, by short name ("accounts"...).
TableNames = dict[str, str]

_ACCOUNT_TYPES = ("id text, login text, role text, status text, display_name text, "
                  "establishment_uai text, created_at timestamptz, email text, "
                  "merged_into text, last_signed_in_at timestamptz, rank bigint")
_LINK_TYPES = ("o int, account_id text, child_id text, first_name text, last_name text, "
               "establishment_uai text, origin_account_id text, "
               "origin_establishment_uai text, via_merge boolean, linked_at timestamptz")
_AUDIT_TYPES = ("o int, at timestamptz, action text, outcome text, actor text, "
                "account_id text, login text, detail text")
_EXPECT_TYPES = "id text, status text, hash text"
_CREDENTIAL_TYPES = "account_id text, password_hash text, kind text, expires_at timestamptz"
_THROTTLE_TYPES = "key text, consecutive int, last_failure_at timestamptz, recent jsonb"
_RECEIPT_TYPES = "principal_id text, key text, login_key text, receipt jsonb"


def in_list(name: str, count: int) -> str:
    """``(%(name0)s, %(name1)s, ...)``: one parameter per value.

    One parameter per value, rather than an array: the server then plans
    for the number of values it is given, and keeps the plan it made once
    (an array of unknown length is planned for ten values, so the plan
    made for each call's values wins, which costs a planning per call).
    """
    return "(" + ", ".join(f"%({name}{i})s" for i in range(count)) + ")"


def put_values(params: dict[str, Any], name: str, values: Iterable[Any]) -> None:
    """The parameters of :func:`in_list`, in *params*."""
    for i, value in enumerate(values):
        params[f"{name}{i}"] = value


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _json(items: Iterable[Any]) -> str:
    return json.dumps(list(items), separators=(",", ":"), default=_default)


def _records(param: str, types: str) -> str:
    return f"jsonb_to_recordset(%({param})s::jsonb) AS v({types})"


def apply_shape(n: NetChanges, timeout: bool) -> tuple[int, ...]:
    """Which parts the statement of *n* has (and how many ids some name): the key of its text."""
    return (bool(n.expect), len(n.must_exist), timeout, bool(n.establishments),
            bool(n.new_accounts), bool(n.replaced), bool(n.sign_ins), len(n.touched),
            bool(n.credentials), len(n.drop_credentials), bool(n.unlink), bool(n.link),
            bool(n.fresh) and bool(n.link), bool(n.throttles), bool(n.receipts),
            bool(n.events), len(n.published), bool(n.audit))


def apply_params(n: NetChanges, timeout: str | None) -> dict[str, Any]:
    """The parameters of the statement of *n* (the statement uses some of them)."""

    def accounts(items: Iterable[Account], **extra: Callable[[Account], Any]) -> str:
        return _json({**rows.account_values(a), "rank": n.ranks.get(a.id),
                      **{k: get(a) for k, get in extra.items()}} for a in items)

    login_keys = {x.account.id: x.login_key for x in n.new_accounts}
    params = {
        "lock_timeout": timeout,
        "x": _json({"id": e.account_id, "status": e.status.value, "hash": e.password_hash}
                   for e in n.expect),
        "e": _json({"uai": e.uai, "name": e.name} for e in n.establishments),
        "n": accounts((x.account for x in n.new_accounts),
                      login_key=lambda a: login_keys[a.id]),
        "a": accounts(n.replaced),
        "s": _json({"id": i, "at": at} for i, at in n.sign_ins),
        "c": _json(rows.credential_values(c) for c in n.credentials),
        "u": _json({"a": a, "c": c} for a, c in n.unlink),
        "f": _json({"a": a, "c": c} for a, c in n.fresh),
        "l": _json({"o": i, **rows.link_values(link)} for i, link in enumerate(n.link)),
        "th": _json({"key": s.key, "consecutive": s.consecutive,
                     "last_failure_at": s.last_failure_at, "recent": rows.recent_json(s)}
                    for s in n.throttles),
        "r": _json({"principal_id": r.principal_id, "key": r.key, "login_key": r.login_key,
                    "receipt": rows.receipt_json(r)} for r in n.receipts),
        "ev_count": len(n.events),
        "ev": _json({"o": i, "name": e.name, "payload": e.to_payload()}
                    for i, e in enumerate(n.events, 1)),
        "au": _json({"o": i, **rows.audit_values(r)} for i, r in enumerate(n.audit)),
    }
    put_values(params, "must_exist", n.must_exist)
    put_values(params, "touched", n.touched)
    put_values(params, "drop", n.drop_credentials)
    put_values(params, "published", n.published)
    return params


def build_apply(t: TableNames, shape: tuple[int, ...]) -> str:
    """The text of the statement of a change set of this *shape* (see :func:`apply_shape`)."""
    (expect, must_exist, timeout, establishments, new_accounts, replaced, sign_ins, touched,
     credentials, drop, unlink, link, fresh, throttles, receipts, events, published,
     audit) = shape
    ctes: list[str] = []
    guarded = expect or must_exist or timeout
    if guarded:
        expected = present = "true"
        if expect:
            expected = (f"NOT EXISTS (SELECT 1 FROM {_records('x', _EXPECT_TYPES)}"
                        f" LEFT JOIN {t['accounts']} a ON a.id = v.id "
                        f"LEFT JOIN {t['credentials']} c ON c.account_id = v.id "
                        "WHERE a.id IS NULL OR a.status <> v.status "
                        "OR c.password_hash IS DISTINCT FROM v.hash)")
        if must_exist:
            present = (f"(SELECT count(*) FROM {t['accounts']} "
                       f"WHERE id IN {in_list('must_exist', must_exist)}) = {must_exist}")
        source = (" FROM (SELECT set_config('lock_timeout', %(lock_timeout)s, true)) s"
                  if timeout else "")
        ctes.append(f"guard AS (SELECT {expected} AS expected, {present} AS present{source})")
    ok = "(SELECT expected AND present FROM guard)" if guarded else "true"
    seq = ("CASE WHEN v.merged_into IS NULL THEN NULL {same}ELSE (SELECT "
           f"coalesce(max(m.merged_seq), 0) FROM {t['accounts']} m "
           "WHERE m.merged_into = v.merged_into) + v.rank END")
    account_columns = ("login, role, status, display_name, establishment_uai, created_at, "
                       "email, merged_into")
    if establishments:
        ctes.append(f"w_e AS (INSERT INTO {t['establishments']} (uai, name) SELECT v.uai, "
                    f"v.name FROM {_records('e', 'uai text, name text')} WHERE {ok} "
                    "ON CONFLICT (uai) DO UPDATE SET name = excluded.name)")
    if new_accounts:
        values = ", ".join(f"v.{c}" for c in account_columns.split(", "))
        ctes.append(f"w_n AS (INSERT INTO {t['accounts']} (id, login_key, {account_columns}, "
                    f"merged_seq, last_signed_in_at) SELECT v.id, v.login_key, {values}, "
                    f"{seq.format(same='')}, v.last_signed_in_at "
                    f"FROM {_records('n', _ACCOUNT_TYPES + ', login_key text')} WHERE {ok})")
    if replaced:
        sets = ", ".join(f"{c} = v.{c}" for c in account_columns.split(", "))
        same = "WHEN v.merged_into = a.merged_into THEN a.merged_seq "
        ctes.append(f"w_a AS (UPDATE {t['accounts']} a SET {sets}, "
                    f"merged_seq = {seq.format(same=same)}, "
                    f"last_signed_in_at = v.last_signed_in_at "
                    f"FROM {_records('a', _ACCOUNT_TYPES)} WHERE a.id = v.id AND {ok})")
    if sign_ins:
        ctes.append(f"w_s AS (UPDATE {t['accounts']} a SET last_signed_in_at = v.at "
                    f"FROM {_records('s', 'id text, at timestamptz')} "
                    f"WHERE a.id = v.id AND {ok})")
    if touched:
        ctes.append(f"w_t AS (UPDATE {t['accounts']} SET id = id "
                    f"WHERE id IN {in_list('touched', touched)} AND {ok})")
    if credentials:
        ctes.append(f"w_c AS (INSERT INTO {t['credentials']} (account_id, password_hash, kind, "
                    "expires_at) SELECT v.account_id, v.password_hash, v.kind, v.expires_at "
                    f"FROM {_records('c', _CREDENTIAL_TYPES)}"
                    f" WHERE {ok} ON CONFLICT (account_id) DO UPDATE SET "
                    "password_hash = excluded.password_hash, kind = excluded.kind, "
                    "expires_at = excluded.expires_at)")
    if drop:
        ctes.append(f"w_d AS (DELETE FROM {t['credentials']} "
                    f"WHERE account_id IN {in_list('drop', drop)} AND {ok})")
    if unlink:
        ctes.append(f"w_u AS (DELETE FROM {t['links']} l USING {_records('u', 'a text, c text')}"
                    f" WHERE l.account_id = v.a AND l.child_id = v.c AND {ok})")
    if link:
        names = ", ".join(rows.LINK_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in rows.LINK_COLUMNS[2:])
        if fresh:  # removed and added again: to the end of the list
            updates += (", seq = CASE WHEN (l.account_id, l.child_id) IN (SELECT v.a, v.c "
                        f"FROM {_records('f', 'a text, c text')}) THEN excluded.seq "
                        "ELSE l.seq END")
        ctes.append(f"w_l AS (INSERT INTO {t['links']} AS l ({names}) "
                    f"SELECT {', '.join(f'v.{c}' for c in rows.LINK_COLUMNS)} "
                    f"FROM {_records('l', _LINK_TYPES)} WHERE {ok} ORDER BY v.o "
                    f"ON CONFLICT (account_id, child_id) DO UPDATE SET {updates})")
    if throttles:
        ctes.append(f"w_th AS (INSERT INTO {t['throttles']} (key, consecutive, "
                    "last_failure_at, recent) SELECT v.key, v.consecutive, v.last_failure_at, "
                    "v.recent FROM "
                    f"{_records('th', _THROTTLE_TYPES)}"
                    f" WHERE {ok} ON CONFLICT (key) DO UPDATE SET "
                    "consecutive = excluded.consecutive, last_failure_at = "
                    "excluded.last_failure_at, recent = excluded.recent, "
                    "previous_failure_at = NULL, previous_recent = NULL)")
    if receipts:
        ctes.append(f"w_r AS (INSERT INTO {t['receipts']} (principal_id, key, login_key, "
                    "receipt) SELECT v.principal_id, v.key, v.login_key, v.receipt FROM "
                    f"{_records('r', _RECEIPT_TYPES)}"
                    f" WHERE {ok} ON CONFLICT (principal_id, key) DO UPDATE SET "
                    "login_key = excluded.login_key, receipt = excluded.receipt)")
    if events:
        ctes.append(f"w_head AS (INSERT INTO {t['outbox_head']} AS h (id, last_position) "
                    f"SELECT 1, (SELECT coalesce(max(position), 0) FROM {t['outbox']}) "
                    f"+ %(ev_count)s WHERE {ok} ON CONFLICT (id) DO UPDATE "
                    "SET last_position = h.last_position + %(ev_count)s RETURNING last_position)")
        ctes.append(f"w_ev AS (INSERT INTO {t['outbox']} (position, name, payload, published) "
                    "SELECT w_head.last_position - %(ev_count)s + v.o, v.name, v.payload, false "
                    f"FROM w_head, {_records('ev', 'o int, name text, payload jsonb')})")
    if published:
        ctes.append(f"w_p AS (UPDATE {t['outbox']} SET published = true "
                    f"WHERE position IN {in_list('published', published)} AND NOT published "
                    f"AND {ok})")
    if audit:
        names = ", ".join(rows.AUDIT_COLUMNS)
        ctes.append(f"w_au AS (INSERT INTO {t['audit']} ({names}) "
                    f"SELECT {', '.join(f'v.{c}' for c in rows.AUDIT_COLUMNS)} "
                    f"FROM {_records('au', _AUDIT_TYPES)} WHERE {ok} ORDER BY v.o)")
    final = "SELECT expected, present FROM guard" if guarded else "SELECT true, true"
    return f"WITH {', '.join(ctes)} {final}" if ctes else final
