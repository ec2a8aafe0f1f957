"""Rows to domain objects and back, for the SQLite store.

Datetimes are ISO-8601 text with their UTC offset; the readers of rows a
step reads again keep the objects they decoded last.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.events import OutboxEntry, event_from_payload
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import AccountRecord, StoredReceipt

# Building a domain object validates every field (a row the domain refuses
# is a StorageError), which costs more than reading the row.  The readers
# below keep the objects of the last rows they decoded, keyed by the row
# itself: the same row (a step reads under lock the accounts it proved a
# moment before) gives the same frozen object without decoding it again; a
# changed row is another key.  A few megabytes at most.
_DECODED_ROWS: Final = 1024
_ROLES: Final = {role.value: role for role in Role}
_STATUSES: Final = {status.value: status for status in AccountStatus}
_KINDS: Final = {kind.value: kind for kind in CredentialKind}
_ACTIONS: Final = {action.value: action for action in AuditAction}
_MERGED: Final = AccountStatus.MERGED.value


def _optional_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_optional_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_ACCOUNT_COLUMNS = ("id, login, role, status, display_name, establishment_uai, created_at, "
                    "email, merged_into, last_signed_in_at")


def _account_from_row(row: Sequence[Any]) -> Account:
    return Account(
        id=row[0], login=row[1], role=_ROLES[row[2]], status=_STATUSES[row[3]],
        display_name=row[4], establishment_uai=row[5],
        created_at=datetime.fromisoformat(row[6]), email=row[7], merged_into=row[8],
        last_signed_in_at=_parse_optional_time(row[9]),
    )


def _account_values(account: Account) -> tuple[Any, ...]:
    """The account's columns, in the order of :data:`_ACCOUNT_COLUMNS`."""
    return (account.id, account.login, account.role.value, account.status.value,
            account.display_name, account.establishment_uai, account.created_at.isoformat(),
            account.email, account.merged_into, _optional_time(account.last_signed_in_at))


def _credential_values(credential: Credential) -> tuple[Any, ...]:
    return (credential.account_id, credential.password_hash, credential.kind.value,
            _optional_time(credential.expires_at))


#: An account and its credential (NULLs when it has none), and its login key last.
_RECORD_COLUMNS = ("a.id, a.login, a.role, a.status, a.display_name, a.establishment_uai,"
                   " a.created_at, a.email, a.merged_into, a.last_signed_in_at,"
                   " c.password_hash, c.kind, c.expires_at, a.login_key")


@functools.lru_cache(maxsize=_DECODED_ROWS)
def _record_from_row(row: tuple[Any, ...]) -> AccountRecord:
    account = _account_from_row(row)
    if row[10] is None:
        return AccountRecord(account, None)
    return AccountRecord(account, Credential(
        account_id=account.id, password_hash=row[10], kind=_KINDS[row[11]],
        expires_at=_parse_optional_time(row[12])))


_LINK_COLUMNS = ("account_id, child_id, first_name, last_name, establishment_uai, "
                 "origin_account_id, origin_establishment_uai, via_merge, linked_at")


@functools.lru_cache(maxsize=_DECODED_ROWS)
def _link_from_row(row: tuple[Any, ...]) -> ChildLink:
    child = Child(id=row[1], first_name=row[2], last_name=row[3], establishment_uai=row[4])
    return ChildLink(account_id=row[0], child=child, origin_account_id=row[5],
                     origin_establishment_uai=row[6], via_merge=bool(row[7]),
                     linked_at=datetime.fromisoformat(row[8]))


def _link_values(link: ChildLink) -> tuple[Any, ...]:
    child = link.child
    return (link.account_id, child.id, child.first_name, child.last_name,
            child.establishment_uai, link.origin_account_id, link.origin_establishment_uai,
            int(link.via_merge), link.linked_at.isoformat())


@functools.lru_cache(maxsize=_DECODED_ROWS)
def _throttle_from_row(row: tuple[Any, ...]) -> ThrottleState:
    return ThrottleState(key=row[0], consecutive=row[1],
                         last_failure_at=_parse_optional_time(row[2]),
                         recent=tuple(datetime.fromisoformat(t) for t in json.loads(row[3])))


def _throttle_values(state: ThrottleState) -> tuple[Any, ...]:
    return (state.key, state.consecutive, _optional_time(state.last_failure_at),
            json.dumps([t.isoformat() for t in state.recent]))


def _receipt_from_row(row: Sequence[Any]) -> StoredReceipt:
    return StoredReceipt(principal_id=row[0], key=row[1], login_key=row[2],
                         receipt=MergeReceipt.from_dict(json.loads(row[3])))


def _receipt_values(stored: StoredReceipt) -> tuple[Any, ...]:
    return (stored.principal_id, stored.key, stored.login_key,
            json.dumps(stored.receipt.to_dict(), ensure_ascii=False))


def _outbox_entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(position=row[0], event=event_from_payload(row[1], json.loads(row[2])),
                       published=bool(row[3]))


_AUDIT_COLUMNS = "id, at, action, outcome, actor, account_id, login, detail"


def _audit_from_row(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(at=datetime.fromisoformat(row[1]), action=_ACTIONS[row[2]],
                       outcome=row[3], actor=row[4], account_id=row[5], login=row[6],
                       detail=row[7])


def _audit_values(record: AuditRecord) -> tuple[Any, ...]:
    return (record.at.isoformat(), record.action.value, record.outcome, record.actor,
            record.account_id, record.login, record.detail)
