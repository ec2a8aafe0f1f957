"""Every error the library raises.

All of them derive from :class:`AccountMergeError`, which is never raised
directly.  Each class carries a stable ``code`` (a short string a host can
map to its own message or HTTP status) and, where useful, data as
attributes.  Messages never contain a password or a password hash.

The table of codes is pinned by a test and listed in ``docs/errors.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from account_merge.domain.register import RegisterProblem

__all__ = [
    "AccountMergeError",
    "AccountMerged",
    "AccountNotFound",
    "ActivationRequired",
    "ConcurrentUpdate",
    "ExpectationFailed",
    "IdentityRuleRefused",
    "InvalidCredentials",
    "InvalidInput",
    "InvalidRegister",
    "InvalidToken",
    "LoginTaken",
    "NotAuthorized",
    "NotResponsable",
    "NotSupported",
    "NothingToSplit",
    "PasswordPolicyError",
    "PrincipalNotActive",
    "SameAccount",
    "StorageError",
    "TooManyAttempts",
]


class AccountMergeError(Exception):
    """Root of every error raised by account_merge; never raised directly.

    ``code`` is stable across releases; ``message`` is an English sentence
    meant for logs and developers, not for parents.
    """

    code: ClassVar[str] = "account_merge_error"
    default_message: ClassVar[str] = "account_merge error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidCredentials(AccountMergeError):
    """The login and password do not designate a usable account.

    Raised alike for an unknown login, a wrong password, a MERGED account,
    an expired or already used provisional password: the caller cannot tell
    which, by the message or by the time it took.
    """

    code = "invalid_credentials"
    default_message = "invalid login or password"


class NotResponsable(AccountMergeError):
    """Only responsable (parent) accounts can be merged or hold merges."""

    code = "not_responsable"
    default_message = "only responsable accounts can be merged"


class PrincipalNotActive(AccountMergeError):
    """The account acting (the principal) is not ACTIVE."""

    code = "principal_not_active"
    default_message = "the account is not active"


class SameAccount(AccountMergeError):
    """An account cannot be merged into itself."""

    code = "same_account"
    default_message = "an account cannot be merged into itself"


class NotAuthorized(AccountMergeError, PermissionError):
    """The caller has no authority for this operation."""

    code = "not_authorized"
    default_message = "not authorized"


class IdentityRuleRefused(NotAuthorized):
    """The host's identity rule (rule M6) refused the merge."""

    default_message = "the identity rule refused this merge"


class NothingToSplit(AccountMergeError):
    """The account holds no merged child enrolled in that establishment."""

    code = "nothing_to_split"
    default_message = "no child of this establishment joined the account through a merge"


class TooManyAttempts(AccountMergeError):
    """Too many failed attempts; try again in ``retry_after`` seconds."""

    code = "too_many_attempts"
    default_message = "too many failed attempts"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(
            message or f"too many failed attempts; retry in {self.retry_after} s"
        )


class PasswordPolicyError(AccountMergeError, ValueError):
    """The new password does not satisfy the password policy.

    ``rule`` says which rule refused it, one of :attr:`RULES` (stable across
    releases; a host's own policy may leave it None or use its own names);
    ``limit`` is the length at stake for ``too_short`` and ``too_long``.
    """

    code = "password_policy"
    default_message = "the password does not satisfy the password policy"

    #: The rules of the default policy,
    #: :class:`~account_merge.domain.passwords.CnilPasswordPolicy`, and the
    #: service's own ``unchanged`` (the new password is the current one).
    RULES: ClassVar[tuple[str, ...]] = (
        "too_short",
        "too_long",
        "control_characters",
        "contains_login",
        "contains_context",
        "common_password",
        "repetitive",
        "sequential",
        "character_classes",
        "unchanged",
    )

    def __init__(self, message: str | None = None, *, rule: str | None = None,
                 limit: int | None = None) -> None:
        self.rule = rule
        self.limit = limit
        super().__init__(message)


class AccountNotFound(AccountMergeError, LookupError):
    """No account has this id."""

    code = "account_not_found"
    default_message = "no such account"

    def __init__(self, account_id: object, message: str | None = None) -> None:
        self.account_id = account_id
        super().__init__(message or f"no account with id {account_id!r}")


class ConcurrentUpdate(AccountMergeError):
    """A concurrent writer kept the rows busy past the retries and timeouts."""

    code = "concurrent_update"
    default_message = "the accounts were being changed concurrently; try again"


class LoginTaken(ConcurrentUpdate):
    """A store was asked to insert an account whose login (or id) is in use.

    Raised by :meth:`~account_merge.ports.UnitOfWork.apply`; the service
    rolls back and tries another login, so it reaches a host only as the
    ``concurrent_update`` it is when every try failed.
    """

    default_message = "the login is already in use"


class ExpectationFailed(ConcurrentUpdate):
    """A change set's precondition no longer held when it was applied.

    Raised by :meth:`~account_merge.ports.UnitOfWork.apply` when an
    :class:`~account_merge.ports.Expect` fails (the account changed since it
    was read) or an account to replace is gone; nothing of the change set
    may be committed.
    """

    default_message = "the account changed since it was read"


class ActivationRequired(AccountMergeError):
    """Sign-in with a letter's correct provisional password: activate the account first.

    Raised by ``authenticate`` only once the password is proven, so it
    tells nothing to someone who does not hold the letter.  ``account_id``
    names the account to activate.
    """

    code = "activation_required"
    default_message = "this account must be activated before signing in"

    def __init__(self, account_id: str, message: str | None = None) -> None:
        self.account_id = account_id
        super().__init__(message)


class AccountMerged(AccountMergeError):
    """Sign-in with the correct last password of an account merged into another.

    Raised by ``authenticate`` only once the password is proven.  The
    parent signs in with the principal account; if they did not merge it,
    the establishment can split it.  ``account_id`` is the absorbed account.
    """

    code = "account_merged"
    default_message = "this account was merged into another account"

    def __init__(self, account_id: str, message: str | None = None) -> None:
        self.account_id = account_id
        super().__init__(message)


class InvalidToken(AccountMergeError, ValueError):
    """A recovery or confirmation token is unknown, expired, used or forged.

    One error for every case, so that a token's fate is not revealed.
    """

    code = "invalid_token"
    default_message = "the link is invalid or has expired"


class NotSupported(AccountMergeError):
    """The store lacks an optional capability (a storage tier) this call needs.

    ``tier`` names the missing tier, for example ``"tokens"``.
    """

    code = "not_supported"
    default_message = "this store does not support this operation"

    def __init__(self, tier: str, message: str | None = None) -> None:
        self.tier = tier
        super().__init__(message or f"this store lacks the {tier!r} storage tier")


class InvalidInput(AccountMergeError, ValueError):
    """An argument is malformed; ``field`` names it."""

    code = "invalid_input"
    default_message = "invalid input"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidRegister(InvalidInput):
    """A school's register refused whole: ``problems`` names every bad line.

    Raised by :meth:`~account_merge.MergeService.sync_register` (and the
    readers of :mod:`account_merge.registers`) before anything is written.
    Each problem is a :class:`~account_merge.domain.register.RegisterProblem`
    (the line, the responsable's external id, a stable ``kind`` and an
    English text).
    """

    #: How many problems the message spells out (all of them are in ``problems``).
    SHOWN = 20

    def __init__(self, problems: Sequence[RegisterProblem]) -> None:
        self.problems: tuple[RegisterProblem, ...] = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:self.SHOWN])
        more = len(self.problems) - self.SHOWN
        if more > 0:
            shown += f"; and {more} more"
        super().__init__("register", f"{len(self.problems)} problem(s): {shown}")


class StorageError(AccountMergeError):
    """The store cannot be used (corrupt or foreign file, lost connection).

    ``store`` names the store (a file path, a database URL without its
    password).
    """

    code = "storage_error"
    default_message = "the store cannot be used"

    def __init__(self, store: str, message: str) -> None:
        self.store = store
        super().__init__(f"{store}: {message}")
