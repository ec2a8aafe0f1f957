"""Rows of the app's models to domain objects and back, and the times in them.

The columns hold UTC times, aware or naive as ``USE_TZ`` says; the domain
only sees aware UTC times.  What a change set names twice is written once
(:func:`_last_by`), as a bulk statement needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from django.conf import settings

from account_merge.contrib.django import models as m
from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.events import OutboxEntry, event_from_payload
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.register import RegisterRecord
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import AccountRecord, StoredReceipt

T = TypeVar("T")

_MERGED: Final = AccountStatus.MERGED.value

_ACCOUNT_FIELDS: Final = ("login", "role", "status", "display_name", "establishment_uai",
                          "created_at", "email", "merged_into", "merged_seq",
                          "last_signed_in_at")
_LINK_FIELDS: Final = ("first_name", "last_name", "establishment_uai", "origin_account_id",
                       "origin_establishment_uai", "via_merge", "linked_at")


# -- times -------------------------------------------------------------------------------
def _to_db(value: datetime) -> datetime:
    utc = value.astimezone(UTC)
    return utc if settings.USE_TZ else utc.replace(tzinfo=None)


def _optional_to_db(value: datetime | None) -> datetime | None:
    return None if value is None else _to_db(value)


def _from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _optional_from_db(value: datetime | None) -> datetime | None:
    return None if value is None else _from_db(value)


# -- rows <-> domain ---------------------------------------------------------------------
def _account_from_row(row: m.Account) -> Account:
    return Account(
        id=row.id, login=row.login, role=Role(row.role), status=AccountStatus(row.status),
        display_name=row.display_name, establishment_uai=row.establishment_uai,
        created_at=_from_db(row.created_at), email=row.email, merged_into=row.merged_into_id,
        last_signed_in_at=_optional_from_db(row.last_signed_in_at),
    )


def _account_row(account: Account, *, login_key: str | None = None,
                 merged_seq: int | None = None) -> m.Account:
    row = m.Account(
        id=account.id, login=account.login, role=account.role.value,
        status=account.status.value, display_name=account.display_name,
        establishment_uai=account.establishment_uai, created_at=_to_db(account.created_at),
        email=account.email, merged_into_id=account.merged_into, merged_seq=merged_seq,
        last_signed_in_at=_optional_to_db(account.last_signed_in_at),
    )
    if login_key is not None:
        row.login_key = login_key
    return row


def _credential_from_row(row: m.Credential) -> Credential:
    return Credential(account_id=row.account_id, password_hash=row.password_hash,
                      kind=CredentialKind(row.kind),
                      expires_at=_optional_from_db(row.expires_at))


def _credential_row(credential: Credential) -> m.Credential:
    return m.Credential(account_id=credential.account_id,
                        password_hash=credential.password_hash, kind=credential.kind.value,
                        expires_at=_optional_to_db(credential.expires_at))


def _record_from_row(row: m.Account) -> AccountRecord:
    # select_related("credential") cached the credential, or its absence.
    credential: m.Credential | None = getattr(row, "credential", None)
    return AccountRecord(_account_from_row(row),
                         None if credential is None else _credential_from_row(credential))


def _link_from_row(row: m.ChildLink) -> ChildLink:
    # The child as the letter that carried it named it (rule 5): the link's columns.
    child = Child(id=row.child_id, first_name=row.first_name, last_name=row.last_name,
                  establishment_uai=row.establishment_uai)
    return ChildLink(account_id=row.account_id, child=child,
                     origin_account_id=row.origin_account_id,
                     origin_establishment_uai=row.origin_establishment_uai,
                     via_merge=row.via_merge, linked_at=_from_db(row.linked_at))


def _link_row(link: ChildLink) -> m.ChildLink:
    child = link.child
    return m.ChildLink(account_id=link.account_id, child_id=child.id,
                       first_name=child.first_name, last_name=child.last_name,
                       establishment_uai=child.establishment_uai,
                       origin_account_id=link.origin_account_id,
                       origin_establishment_uai=link.origin_establishment_uai,
                       via_merge=link.via_merge, linked_at=_to_db(link.linked_at))


def _throttle_from_row(row: m.Throttle) -> ThrottleState:
    return ThrottleState(key=row.key, consecutive=row.consecutive,
                         last_failure_at=_optional_from_db(row.last_failure_at),
                         recent=tuple(_from_db(datetime.fromisoformat(t)) for t in row.recent))


def _throttle_row(state: ThrottleState) -> m.Throttle:
    return m.Throttle(key=state.key, consecutive=state.consecutive,
                      last_failure_at=_optional_to_db(state.last_failure_at),
                      recent=[t.astimezone(UTC).isoformat() for t in state.recent])


def _receipt_from_row(row: m.Receipt) -> StoredReceipt:
    return StoredReceipt(principal_id=row.principal_id, key=row.key, login_key=row.login_key,
                         receipt=MergeReceipt.from_dict(row.receipt))


def _outbox_entry_from_row(row: m.OutboxEvent) -> OutboxEntry:
    return OutboxEntry(position=row.position, event=event_from_payload(row.name, row.payload),
                       published=row.published)


def _audit_from_row(row: m.AuditEntry) -> AuditRecord:
    return AuditRecord(at=_from_db(row.at), action=AuditAction(row.action), outcome=row.outcome,
                       actor=row.actor, account_id=row.account_id, login=row.login,
                       detail=row.detail)


def _audit_row(record: AuditRecord) -> m.AuditEntry:
    return m.AuditEntry(at=_to_db(record.at), action=record.action.value,
                        outcome=record.outcome, actor=record.actor,
                        account_id=record.account_id, login=record.login,
                        detail=record.detail)


def _register_from_row(row: m.RegisterEntry) -> RegisterRecord:
    return RegisterRecord(row.establishment_uai, row.external_id, row.account_id,
                          row.display_name, row.email, tuple(
                              Child(id=c[0], first_name=c[1], last_name=c[2],
                                    establishment_uai=c[3]) for c in row.children))


def _register_row(record: RegisterRecord) -> m.RegisterEntry:
    return m.RegisterEntry(
        establishment_uai=record.establishment_uai, external_id=record.external_id,
        account_id=record.account_id, display_name=record.display_name, email=record.email,
        children=[[c.id, c.first_name, c.last_name, c.establishment_uai]
                  for c in record.children])


def _last_by(items: Iterable[T], key: Any) -> list[T]:
    """*items* without repeats of a key: each key's last item, at its first place."""
    kept: dict[Any, T] = {}
    for item in items:
        kept[key(item)] = item
    return list(kept.values())


def _notice_row(state: NoticeState) -> m.Notice:
    return m.Notice(id=state.id, event_id=state.position, role=state.role,
                    status=state.status.value, attempts=state.attempts,
                    updated_at=_optional_to_db(state.updated_at))


def _notice_from_row(row: m.Notice) -> NoticeState:
    return NoticeState(id=row.id, position=int(row.event_id), role=row.role,
                       status=NoticeStatus(row.status), attempts=row.attempts,
                       updated_at=_optional_from_db(row.updated_at))
