"""Accounts, their roles and states, and their stored credential."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from account_merge.domain.validation import (
    MAX_EMAIL_LENGTH,
    check_aware,
    check_identifier,
    check_text,
)
from account_merge.exceptions import InvalidInput

__all__ = [
    "Account",
    "AccountStatus",
    "Credential",
    "CredentialKind",
    "Role",
    "validate_email",
]


class Role(enum.Enum):
    """Whose account it is: a legal guardian's, or a pupil's own."""

    RESPONSABLE = "responsable"
    ELEVE = "eleve"


class AccountStatus(enum.Enum):
    """The life of an account: PROVISIONAL -> ACTIVE, either -> MERGED.

    CLOSED is set by the school's register only (see
    :mod:`account_merge.domain.register`): an account left with no child
    opens nothing and merges with nothing; it keeps its credential, so
    that the register can open it again, as it was, if its responsable
    comes back with a child.
    """

    PROVISIONAL = "provisional"
    ACTIVE = "active"
    MERGED = "merged"
    CLOSED = "closed"


class CredentialKind(enum.Enum):
    """A provisional password from a letter, or the password the owner chose."""

    PROVISIONAL = "provisional"
    PASSWORD = "password"


def validate_email(value: object) -> str:
    """A plausible e-mail address (one ``@``, no spaces or control characters)."""
    text = check_text("email", value, max_length=MAX_EMAIL_LENGTH).strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise InvalidInput("email", "must look like name@example.org")
    if any(ch.isspace() for ch in text):
        raise InvalidInput("email", "must not contain spaces")
    return text


def _email(_: object, __: object, value: str | None) -> None:
    if value is not None:
        validate_email(value)


def _merged_into(instance: Account, _: object, value: str | None) -> None:
    if (value is None) != (instance.status is not AccountStatus.MERGED):
        raise InvalidInput("merged_into", "is set exactly when the account is MERGED")
    if value is not None:
        check_identifier("merged_into", value)


@attrs.frozen
class Account:
    """An account, as the library and its host see it.

    It never holds a password or a hash: the credential is stored apart
    (:class:`Credential`).  Accounts are immutable values; the service
    stores a changed copy (``attrs.evolve``).  ``last_signed_in_at`` is the
    time of the last successful sign-in (None before the first).
    """

    id: str = attrs.field(validator=lambda _, __, v: check_identifier("account id", v))
    login: str = attrs.field(validator=lambda _, __, v: check_text("login", v, max_length=64))
    role: Role = attrs.field(validator=attrs.validators.instance_of(Role))
    status: AccountStatus = attrs.field(validator=attrs.validators.instance_of(AccountStatus))
    display_name: str = attrs.field(validator=lambda _, __, v: check_text("display_name", v))
    establishment_uai: str
    created_at: datetime = attrs.field(validator=lambda _, __, v: check_aware("created_at", v))
    email: str | None = attrs.field(default=None, validator=_email)
    merged_into: str | None = attrs.field(default=None, validator=_merged_into)
    last_signed_in_at: datetime | None = attrs.field(
        default=None, validator=lambda _, __, v: v is None or check_aware("last_signed_in_at", v))

    @property
    def is_live(self) -> bool:
        """True for an account in use: PROVISIONAL or ACTIVE (not absorbed, not closed)."""
        return self.status in (AccountStatus.PROVISIONAL, AccountStatus.ACTIVE)


@attrs.frozen
class Credential:
    """The stored proof of an account: an argon2 hash, never the password.

    A PROVISIONAL credential expires at ``expires_at`` and is replaced at
    activation.  A MERGED account keeps the credential it had when it was
    absorbed, so that its owner signing in with it can be told where the
    account went (``account_merged``); it opens nothing any more.
    """

    account_id: str
    password_hash: str = attrs.field(repr=False)
    kind: CredentialKind
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        """True if this is a provisional credential past its expiry."""
        return self.expires_at is not None and now >= self.expires_at
