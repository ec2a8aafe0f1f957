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
    "AccountIssued",
    "AccountsMerged",
    "EmailChanged",
    "Event",
    "MergeSplit",
    "OutboxEntry",
    "PasswordChanged",
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


_EVENTS: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (AccountIssued, AccountActivated, AccountsMerged, MergeSplit,
                PasswordChanged, EmailChanged)
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
