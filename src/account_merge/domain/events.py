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
    "AccountPurged",
    "AccountReopened",
    "AccountsMerged",
    "ChildAttached",
    "ChildDetached",
    "EmailChanged",
    "EmailVerificationRequested",
    "Event",
    "LetterReissued",
    "LoginReminderRequested",
    "MergeSplit",
    "OutboxEntry",
    "PasswordChanged",
    "PasswordReset",
    "PasswordResetRequested",
    "RegisterSynced",
    "account_ids_of",
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
    """An account's e-mail address was changed (confirmed by the link sent to it).

    ``old_email`` is the address it replaced (None: the account had none),
    ``new_email`` the address now on record; the old address is told.
    """

    name: ClassVar[str] = "email_changed"
    account_id: str
    old_email: str | None = None
    new_email: str | None = None


# -- the way back: recovery, e-mail confirmation, letters re-issued --------------------
@attrs.frozen
class PasswordResetRequested(Event):
    """Someone asked to reset the password of a login or address ("mot de passe oublié ?").

    ``account_ids`` are the accounts a reset may open (none when the login
    or address matched no ACTIVE account with a confirmed address: the
    request is recorded alike either way); ``bindings`` the binding of each
    (:meth:`~account_merge.domain.tokens.TokenSigner.binding`), from which
    the notice's link is signed again when it is sent.  No token is stored.
    """

    name: ClassVar[str] = "password_reset_requested"
    account_ids: tuple[str, ...]
    bindings: tuple[str, ...]


@attrs.frozen
class PasswordReset(Event):
    """A password was reset with a token; the account's address is told."""

    name: ClassVar[str] = "password_reset"
    account_id: str


@attrs.frozen
class LoginReminderRequested(Event):
    """Someone asked for the logins of an address ("identifiant oublié ?").

    ``account_ids`` are the ACTIVE accounts whose confirmed address it is
    (none if it is nobody's: the request is recorded alike either way).
    """

    name: ClassVar[str] = "login_reminder_requested"
    account_ids: tuple[str, ...]


@attrs.frozen
class EmailVerificationRequested(Event):
    """An address is to be confirmed by the link sent to it (``email``, not yet on record).

    ``binding`` is the account's binding when it was asked, from which the
    link is signed again when the notice is sent.
    """

    name: ClassVar[str] = "email_verification_requested"
    account_id: str
    email: str
    binding: str


@attrs.frozen
class LetterReissued(Event):
    """An establishment printed a new letter for an account; its old password is dead.

    ``email`` is the address confirmed before, if any, which is told.
    """

    name: ClassVar[str] = "letter_reissued"
    account_id: str
    establishment_uai: str
    email: str | None = None


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


# -- retention -----------------------------------------------------------------------------
@attrs.frozen
class AccountPurged(Event):
    """The retention policy deleted an account (``reason``: ``unactivated``, ``unused``,
    ``closed`` or ``absorbed``).

    The account is named by its ``pseudonym``
    (:func:`account_merge.domain.retention.pseudonym`), never by its id:
    nothing the library keeps names a deleted account.  A host that keeps
    data of its own about accounts finds which by computing the pseudonym
    of the ids it holds (or reads ``PurgeReport.account_ids`` as the purge
    returns).
    """

    name: ClassVar[str] = "account_purged"
    pseudonym: str
    reason: str
    establishment_uai: str


_EVENTS: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (AccountIssued, AccountActivated, AccountsMerged, MergeSplit,
                PasswordChanged, EmailChanged, PasswordResetRequested, PasswordReset,
                LoginReminderRequested, EmailVerificationRequested, LetterReissued,
                ChildAttached, ChildDetached, AccountClosed, AccountReopened, RegisterSynced,
                AccountPurged)
}

#: The fields of events that hold one account id, and the one that holds several.
_ID_FIELDS = ("account_id", "principal_id", "absorbed_id", "new_account_id")


def account_ids_of(event: Event) -> tuple[str, ...]:
    """The ids of the accounts *event* names (in its id fields), in field order."""
    ids = [value for name in _ID_FIELDS if isinstance(value := getattr(event, name, None), str)]
    return (*ids, *getattr(event, "account_ids", ()))


def event_from_payload(name: str, payload: dict[str, Any]) -> Event:
    """The event that ``to_payload`` described."""
    cls = _EVENTS[name]
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name not in payload and field.default is not attrs.NOTHING:
            continue  # a field added since the event was written: its default
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
