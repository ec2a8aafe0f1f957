"""The SQL text of the core tier's reads and writes, each built once.

A read's text is cached per number of keys, so that the connection's
statement cache serves it prepared.
"""

from __future__ import annotations

import functools

from account_merge.storage.sqlite.rows import (
    _ACCOUNT_COLUMNS,
    _LINK_COLUMNS,
    _MERGED,
    _RECORD_COLUMNS,
)


# -- statements ---------------------------------------------------------------------
# Each text is built once (per number of keys, for the reads), so that the
# connection's statement cache serves it prepared.
def _marks(count: int) -> str:
    return ", ".join("?" * count)


@functools.cache
def _select_records(logins: int, ids: int) -> str:
    """Accounts with their credentials, by *logins* login keys then *ids* ids."""
    where = []
    if logins:
        where.append(f"a.login_key IN ({_marks(logins)})")
    if ids:
        where.append(f"a.id IN ({_marks(ids)})")
    return (f"SELECT {_RECORD_COLUMNS} FROM accounts AS a"
            " LEFT JOIN credentials AS c ON c.account_id = a.id"
            f" WHERE {' OR '.join(where)}")


@functools.cache
def _select_links(ids: int) -> str:
    return (f"SELECT {_LINK_COLUMNS} FROM links WHERE account_id IN ({_marks(ids)})"
            " ORDER BY account_id, seq")


@functools.cache
def _select_absorbed(ids: int) -> str:
    return (f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
            f" WHERE merged_into IN ({_marks(ids)}) AND status = '{_MERGED}'"
            " ORDER BY merged_into, merged_seq")


@functools.cache
def _select_throttles(keys: int) -> str:
    return ("SELECT key, consecutive, last_failure_at, recent FROM throttles"
            f" WHERE key IN ({_marks(keys)})")


@functools.cache
def _select_receipts(count: int) -> str:
    either = " OR ".join(["(principal_id = ? AND key = ?)"] * count)
    return f"SELECT principal_id, key, login_key, receipt FROM receipts WHERE {either}"


@functools.cache
def _select_establishments(count: int) -> str:
    return f"SELECT uai, name FROM establishments WHERE uai IN ({_marks(count)})"


_EXPECT = ("SELECT a.status, c.password_hash FROM accounts AS a"
           " LEFT JOIN credentials AS c ON c.account_id = a.id WHERE a.id = ?")
_PUT_ESTABLISHMENT = ("INSERT INTO establishments (uai, name) VALUES (?, ?)"
                      " ON CONFLICT (uai) DO UPDATE SET name = excluded.name")
# ?1-?10: the account's columns, ?11 its login key.  An account inserted
# already absorbed goes last among those absorbed into the same account.
_INSERT_ACCOUNT = (
    f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}, login_key, merged_seq)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,"
    " CASE WHEN ?9 IS NULL THEN NULL ELSE (SELECT coalesce(max(merged_seq), 0) + 1"
    "  FROM accounts WHERE merged_into = ?9) END)"
)
# An account absorbed into a new holder goes last among the holder's
# absorbed accounts; one whose holder does not change keeps its place.
_UPDATE_ACCOUNT = (
    "UPDATE accounts SET login = ?2, role = ?3, status = ?4, display_name = ?5,"
    " establishment_uai = ?6, created_at = ?7, email = ?8, last_signed_in_at = ?10,"
    " merged_seq = CASE"
    "  WHEN ?9 IS NULL THEN NULL"
    "  WHEN merged_into IS ?9 THEN merged_seq"
    "  ELSE (SELECT coalesce(max(h.merged_seq), 0) + 1 FROM accounts AS h"
    "        WHERE h.merged_into = ?9) END,"
    " merged_into = ?9"
    " WHERE id = ?1"
)
_SIGN_IN = "UPDATE accounts SET last_signed_in_at = ? WHERE id = ?"
_PUT_CREDENTIAL = (
    "INSERT INTO credentials (account_id, password_hash, kind, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (account_id) DO UPDATE SET password_hash = excluded.password_hash,"
    " kind = excluded.kind, expires_at = excluded.expires_at"
)
_DROP_CREDENTIAL = "DELETE FROM credentials WHERE account_id = ?"
_UNLINK = "DELETE FROM links WHERE account_id = ? AND child_id = ?"
_PUT_CHILD = ("INSERT INTO children (id, first_name, last_name, establishment_uai)"
              " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
# A child linked again to the same account keeps its place (its seq).
_LINK = (
    f"INSERT INTO links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account_id, child_id) DO UPDATE SET"
    " first_name = excluded.first_name, last_name = excluded.last_name,"
    " establishment_uai = excluded.establishment_uai,"
    " origin_account_id = excluded.origin_account_id,"
    " origin_establishment_uai = excluded.origin_establishment_uai,"
    " via_merge = excluded.via_merge, linked_at = excluded.linked_at"
)
_PUT_THROTTLE = (
    "INSERT INTO throttles (key, consecutive, last_failure_at, recent) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET consecutive = excluded.consecutive,"
    " last_failure_at = excluded.last_failure_at, recent = excluded.recent"
)
_PUT_RECEIPT = (
    "INSERT INTO receipts (principal_id, key, login_key, receipt) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (principal_id, key) DO UPDATE SET login_key = excluded.login_key,"
    " receipt = excluded.receipt"
)
# ``position`` is one past the largest given: the largest in the outbox, or
# in outbox_head once the purge deleted entries.  Writers are serialised, so
# positions increase in commit order and a rolled-back event leaves no gap.
_APPEND_EVENT = (
    "INSERT INTO outbox (position, name, payload) VALUES (max("
    "coalesce((SELECT max(position) FROM outbox), 0),"
    " coalesce((SELECT last_position FROM outbox_head WHERE one = 1), 0)) + 1, ?, ?)"
)
_MARK_PUBLISHED = "UPDATE outbox SET published = 1 WHERE position = ? AND published = 0"
_APPEND_AUDIT = ("INSERT INTO audit (at, action, outcome, actor, account_id, login, detail)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)")
