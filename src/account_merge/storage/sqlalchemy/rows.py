"""Rows to the library's values and back, explicitly.

Both ways of reading (SQLAlchemy Core rows on SQLite, JSON arrays built
by one statement on PostgreSQL) give the columns in the same order, so
one decoder serves both.  A datetime comes as an aware ``datetime`` or as
ISO 8601 text; a JSON column as text or as the decoded value.  A row the
domain refuses raises ``InvalidInput``, which the store reports as a
``StorageError``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry, event_from_payload
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import AccountRecord, StoredReceipt

__all__ = [
    "ACCOUNT_COLUMNS",
    "AUDIT_COLUMNS",
    "CREDENTIAL_COLUMNS",
    "LINK_COLUMNS",
    "OUTBOX_COLUMNS",
    "RECEIPT_COLUMNS",
    "THROTTLE_COLUMNS",
    "account_values",
    "audit_values",
    "credential_values",
    "iso",
    "link_values",
    "read_account",
    "read_audit",
    "read_establishment",
    "read_link",
    "read_outbox",
    "read_receipt",
    "read_record",
    "read_throttle",
    "receipt_json",
    "recent_json",
]

Row = Sequence[Any]

#: The columns of each kind of row, in the order the decoders read them.
ACCOUNT_COLUMNS = ("id", "login", "role", "status", "display_name", "establishment_uai",
                   "created_at", "email", "merged_into", "last_signed_in_at")
CREDENTIAL_COLUMNS = ("account_id", "password_hash", "kind", "expires_at")
LINK_COLUMNS = ("account_id", "child_id", "first_name", "last_name", "establishment_uai",
                "origin_account_id", "origin_establishment_uai", "via_merge", "linked_at")
THROTTLE_COLUMNS = ("key", "consecutive", "last_failure_at", "recent")
RECEIPT_COLUMNS = ("principal_id", "key", "login_key", "receipt")
OUTBOX_COLUMNS = ("position", "name", "payload", "published")
AUDIT_COLUMNS = ("at", "action", "outcome", "actor", "account_id", "login", "detail")


def iso(value: datetime) -> str:
    """*value* in UTC as fixed-width ISO 8601 text (how ``recent`` keeps its times)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _time(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a datetime: {type(value).__name__}")
    if value.tzinfo is None:  # pragma: no cover - a column written by someone else
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def _json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


# -- reading ----------------------------------------------------------------------------


def read_account(row: Row) -> Account:
    """An account from its columns (:data:`ACCOUNT_COLUMNS`)."""
    return Account(
        id=row[0], login=row[1], role=Role(row[2]), status=AccountStatus(row[3]),
        display_name=row[4], establishment_uai=row[5], created_at=_time(row[6]),
        email=row[7], merged_into=row[8], last_signed_in_at=_maybe_time(row[9]),
    )


def read_record(row: Row) -> AccountRecord:
    """An account and its credential (:data:`ACCOUNT_COLUMNS`, then :data:`CREDENTIAL_COLUMNS`,
    whose ``account_id`` is None for an account without credential)."""
    n = len(ACCOUNT_COLUMNS)
    credential = None
    if row[n] is not None:
        credential = Credential(account_id=row[n], password_hash=row[n + 1],
                                kind=CredentialKind(row[n + 2]),
                                expires_at=_maybe_time(row[n + 3]))
    return AccountRecord(read_account(row), credential)


def read_link(row: Row) -> ChildLink:
    """A link and its child as its letter named it (:data:`LINK_COLUMNS`)."""
    return ChildLink(
        account_id=row[0],
        child=Child(id=row[1], first_name=row[2], last_name=row[3], establishment_uai=row[4]),
        origin_account_id=row[5], origin_establishment_uai=row[6], via_merge=bool(row[7]),
        linked_at=_time(row[8]),
    )


def read_throttle(row: Row) -> ThrottleState:
    """A counter (:data:`THROTTLE_COLUMNS`; ``recent`` None reads as empty)."""
    recent = _json_value(row[3]) or ()
    return ThrottleState(key=row[0], consecutive=int(row[1]),
                         last_failure_at=_maybe_time(row[2]),
                         recent=tuple(_time(t) for t in recent))


def read_receipt(row: Row) -> StoredReceipt:
    """A stored receipt (:data:`RECEIPT_COLUMNS`)."""
    return StoredReceipt(principal_id=row[0], key=row[1], login_key=row[2],
                         receipt=MergeReceipt.from_dict(_json_value(row[3])))


def read_outbox(row: Row) -> OutboxEntry:
    """An outbox entry (:data:`OUTBOX_COLUMNS`)."""
    return OutboxEntry(position=int(row[0]),
                       event=event_from_payload(row[1], _json_value(row[2])),
                       published=bool(row[3]))


def read_audit(row: Row) -> AuditRecord:
    """An audit record (:data:`AUDIT_COLUMNS`)."""
    return AuditRecord(at=_time(row[0]), action=AuditAction(row[1]), outcome=row[2],
                       actor=row[3], account_id=row[4], login=row[5], detail=row[6])


def read_establishment(row: Row) -> Establishment:
    """An establishment (uai, name)."""
    return Establishment(uai=row[0], name=row[1])


# -- writing -------------------------------------------------------------------------------


def account_values(account: Account) -> dict[str, Any]:
    """The columns of *account* (without ``login_key`` and ``merged_seq``)."""
    return {
        "id": account.id, "login": account.login, "role": account.role.value,
        "status": account.status.value, "display_name": account.display_name,
        "establishment_uai": account.establishment_uai, "created_at": account.created_at,
        "email": account.email, "merged_into": account.merged_into,
        "last_signed_in_at": account.last_signed_in_at,
    }


def credential_values(credential: Credential) -> dict[str, Any]:
    """The columns of *credential*."""
    return {"account_id": credential.account_id, "password_hash": credential.password_hash,
            "kind": credential.kind.value, "expires_at": credential.expires_at}


def link_values(link: ChildLink) -> dict[str, Any]:
    """The columns of *link* (``seq`` aside), the child as its letter named it."""
    child = link.child
    return {
        "account_id": link.account_id, "child_id": child.id, "first_name": child.first_name,
        "last_name": child.last_name, "establishment_uai": child.establishment_uai,
        "origin_account_id": link.origin_account_id,
        "origin_establishment_uai": link.origin_establishment_uai,
        "via_merge": link.via_merge, "linked_at": link.linked_at,
    }


def recent_json(state: ThrottleState) -> list[str]:
    """The failure times of *state* as JSON-ready text."""
    return [iso(t) for t in state.recent]


def receipt_json(stored: StoredReceipt) -> dict[str, Any]:
    """The receipt of *stored* as a JSON-ready value."""
    return stored.receipt.to_dict()


def audit_values(record: AuditRecord) -> dict[str, Any]:
    """The columns of *record* (``seq`` aside)."""
    return {"at": record.at, "action": record.action.value, "outcome": record.outcome,
            "actor": record.actor, "account_id": record.account_id, "login": record.login,
            "detail": record.detail}
