"""Domain events, written to the outbox in the same transaction as the change.

Events carry ids, never secrets.  Each has a stable ``name`` and turns
into a JSON-ready payload and back, so any store can keep them as text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import attrs

__all__ = [
    "AccountActivated",
    "AccountClosed",
    "AccountIssued",
    "AccountReopened",
    "AccountsMerged",
    "ChildAttached",
    "ChildDetached",
    "EmailChanged",
    "Event",
    "MergeSplit",
    "OutboxEntry",
    "PasswordChanged",
    "RegisterSynced",
    "event_from_payload",
]


@attrs.frozen
class Event:
    """Base of every event; ``occurred_at`` is the service clock's time."""

    name: ClassVar[str] = "event"
    occurred_at: datetime

    def to_payload(self) -> dict[str, Any]:
        """The event's fields as JSON-ready values."""
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out


@attrs.frozen
class AccountIssued(Event):
    """An establishment issued an account and its letter."""

    name: ClassVar[str] = "account_issued"
    account_id: str
    establishment_uai: str
    role: str
    child_ids: tuple[str, ...]


@attrs.frozen
class AccountActivated(Event):
    """A provisional account was activated with a password of its owner's."""

    name: ClassVar[str] = "account_activated"
    account_id: str


@attrs.frozen
class AccountsMerged(Event):
    """``absorbed_id`` was merged into ``principal_id``."""

    name: ClassVar[str] = "accounts_merged"
    principal_id: str
    absorbed_id: str
    moved_child_ids: tuple[str, ...]


@attrs.frozen
class MergeSplit(Event):
    """An establishment moved children of a merged account to a new account."""

    name: ClassVar[str] = "merge_split"
    principal_id: str
    new_account_id: str
    establishment_uai: str
    moved_child_ids: tuple[str, ...]


@attrs.frozen
class PasswordChanged(Event):
    """An account's password was changed (or rehashed on new parameters)."""

    name: ClassVar[str] = "password_changed"
    account_id: str


@attrs.frozen
class EmailChanged(Event):
    """An account's e-mail address was changed."""

    name: ClassVar[str] = "email_changed"
    account_id: str


# -- the school's register ---------------------------------------------------------


@attrs.frozen
class ChildAttached(Event):
    """A register sync attached a newly listed child to a live account (no letter)."""

    name: ClassVar[str] = "child_attached"
    account_id: str
    child_id: str
    establishment_uai: str


@attrs.frozen
class ChildDetached(Event):
    """A register sync removed a child the establishment's register no longer lists."""

    name: ClassVar[str] = "child_detached"
    account_id: str
    child_id: str
    establishment_uai: str


@attrs.frozen
class AccountClosed(Event):
    """A register sync left the account with no child: it opens nothing any more."""

    name: ClassVar[str] = "account_closed"
    account_id: str
    establishment_uai: str


@attrs.frozen
class AccountReopened(Event):
    """A register sync listed a child again for a closed account: it opens again."""

    name: ClassVar[str] = "account_reopened"
    account_id: str
    establishment_uai: str


@attrs.frozen
class RegisterSynced(Event):
    """An establishment's register was synced (``mode``: ``full`` or ``partial``)."""

    name: ClassVar[str] = "register_synced"
    establishment_uai: str
    mode: str
    issued: int
    attached: int
    detached: int
    closed: int


_EVENTS: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (AccountIssued, AccountActivated, AccountsMerged, MergeSplit,
                PasswordChanged, EmailChanged,
                ChildAttached, ChildDetached, AccountClosed, AccountReopened, RegisterSynced)
}


def event_from_payload(name: str, payload: dict[str, Any]) -> Event:
    """The event that ``to_payload`` described."""
    cls = _EVENTS[name]
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        value = payload[field.name]
        if field.name == "occurred_at":
            value = datetime.fromisoformat(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


@attrs.frozen
class OutboxEntry:
    """An event in the outbox, at its ``position`` (increasing, gap-free per store)."""

    position: int
    event: Event
    published: bool = False
