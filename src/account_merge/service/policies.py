"""Policies: every tunable of the service, in one object.

:class:`Policies` is what a host changes to make the library its own: the
password policy, the throttle, the identity rule of merges, the life of
provisional passwords.  The Django settings and the Flask configuration
both build one with :func:`account_merge.service.bootstrap.policies_from_settings`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs

from account_merge.domain.account import Account
from account_merge.domain.logins import login_key
from account_merge.domain.passwords import CnilPasswordPolicy, PasswordPolicy
from account_merge.domain.retention import RetentionPolicy
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import InvalidInput

__all__ = [
    "MAX_PROVISIONAL_LENGTH",
    "MIN_PROVISIONAL_LENGTH",
    "IdentityRule",
    "Policies",
    "same_display_name",
]

#: A host's extra condition on merges (rule M6): True allows the merge.
IdentityRule = Callable[[Account, Account], bool]

#: Bounds of a provisional password's length (characters of A-Z0-9).
MIN_PROVISIONAL_LENGTH, MAX_PROVISIONAL_LENGTH = 6, 64


def same_display_name(principal: Account, absorbed: Account) -> bool:
    """An identity rule like ÉduConnect's: both accounts bear the same name."""
    return login_key(principal.display_name) == login_key(absorbed.display_name)


def _password_policy(_: Any, __: Any, value: Any) -> None:
    if not callable(getattr(value, "check", None)):
        raise InvalidInput("password_policy",
                           "must have a check(password, *, login, context) method")


def _identity_rule(_: Any, __: Any, value: Any) -> None:
    if value is not None and not callable(value):
        raise InvalidInput("identity_rule", "must be callable")


def _throttle(_: Any, __: Any, value: Any) -> None:
    if not isinstance(value, ThrottlePolicy):
        raise InvalidInput("throttle", "must be a ThrottlePolicy")


def _validity(_: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidInput(attribute.name, "must be a positive timedelta")


def _length(_: Any, __: Any, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, int)
            or not MIN_PROVISIONAL_LENGTH <= value <= MAX_PROVISIONAL_LENGTH):
        raise InvalidInput("provisional_length",
                           f"must be an int from {MIN_PROVISIONAL_LENGTH} "
                           f"to {MAX_PROVISIONAL_LENGTH}")


def _retention(_: Any, __: Any, value: Any) -> None:
    if not isinstance(value, RetentionPolicy):
        raise InvalidInput("retention", "must be a RetentionPolicy")


def _attempts(_: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(attribute.name, "must be a positive int")
def _count(_: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise InvalidInput(attribute.name, "must be an int from 1 to 100000")


@attrs.frozen(kw_only=True)
class Policies:
    """The service's tunables, each with a documented default.

    - ``password_policy``: decides whether a new password may be used
      (default :class:`~account_merge.domain.passwords.CnilPasswordPolicy`);
    - ``throttle``: the limits on failed attempts
      (:class:`~account_merge.ThrottlePolicy`);
    - ``identity_rule``: an extra condition on merges (rule M6), None for
      none; :func:`same_display_name` is one;
    - ``provisional_validity``: how long a letter's provisional password
      opens its account (90 days);
    - ``provisional_length``: characters of a provisional password (8, about
      40 bits; 10 gives CNIL's 50 bits).

    The way back (recovery and notices):

    - ``reset_validity``: how long a password-reset link works (1 hour);
    - ``email_confirmation_validity``: how long an e-mail confirmation link
      works (24 hours, NIST SP 800-63B's bound for e-mailed codes);
    - ``notice_attempts``: failed sends after which a notice is given up
      (10; one attempt per ``deliver_notices`` run).

    The school's register:

    - ``register_page``: records a register sync reads per unit of work
      (1000); ``register_batch``: live accounts a sync settles per unit of
      work, under lock (100).

    Retention (``purge``):

    - ``retention``: how long each kind of record is kept
      (:class:`~account_merge.domain.retention.RetentionPolicy`, each
      default with the rule it follows).
    """

    password_policy: PasswordPolicy = attrs.field(factory=CnilPasswordPolicy,
                                                  validator=_password_policy)
    throttle: ThrottlePolicy = attrs.field(factory=ThrottlePolicy, validator=_throttle)
    identity_rule: IdentityRule | None = attrs.field(default=None, validator=_identity_rule)
    provisional_validity: timedelta = attrs.field(default=timedelta(days=90),
                                                  validator=_validity)
    provisional_length: int = attrs.field(default=8, validator=_length)
    # the way back
    reset_validity: timedelta = attrs.field(default=timedelta(hours=1), validator=_validity)
    email_confirmation_validity: timedelta = attrs.field(default=timedelta(hours=24),
                                                         validator=_validity)
    notice_attempts: int = attrs.field(default=10, validator=_attempts)
    # The school's register (service/register.py).
    register_page: int = attrs.field(default=1000, validator=_count)
    register_batch: int = attrs.field(default=100, validator=_count)
    # retention
    retention: RetentionPolicy = attrs.field(factory=RetentionPolicy, validator=_retention)
