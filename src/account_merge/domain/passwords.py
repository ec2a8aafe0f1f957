"""Provisional passwords and the policy for passwords chosen by parents."""

from __future__ import annotations

import math
import secrets
import unicodedata
from collections.abc import Sequence
from typing import Protocol

import attrs

from account_merge.exceptions import PasswordPolicyError

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "PROVISIONAL_ALPHABET",
    "CnilPasswordPolicy",
    "PasswordPolicy",
    "generate_provisional_password",
    "provisional_entropy_bits",
]

#: Upper-case letters and digits without the look-alikes I, O, 0 and 1.
PROVISIONAL_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

#: Longer passwords are refused before any hashing (a denial-of-service guard).
MAX_PASSWORD_LENGTH = 1024


def generate_provisional_password(length: int = 8) -> str:
    """A random provisional password, like the seed's ``2BUYJ9C8``.

    Drawn with :mod:`secrets` from :data:`PROVISIONAL_ALPHABET` (32
    symbols, 5 bits each): 8 characters carry 40 bits.
    """
    return "".join(secrets.choice(PROVISIONAL_ALPHABET) for _ in range(length))


def provisional_entropy_bits(length: int) -> float:
    """Entropy in bits of a provisional password of *length* characters."""
    return length * math.log2(len(PROVISIONAL_ALPHABET))


class PasswordPolicy(Protocol):
    """**Protocol:** decides whether a new password may be used.

    ``check`` raises :class:`~account_merge.exceptions.PasswordPolicyError`
    with a message that says what is missing; it returns nothing otherwise.
    *context* holds other words the password must not contain (the names
    on the account, the e-mail address).
    """

    def check(self, password: str, *, login: str, context: Sequence[str] = ()) -> None: ...


def _classes(password: str) -> set[str]:
    found = set()
    for ch in password:
        if ch.islower():
            found.add("lower")
        elif ch.isupper():
            found.add("upper")
        elif ch.isdigit():
            found.add("digit")
        elif not unicodedata.category(ch).startswith("C"):
            found.add("special")
    return found


@attrs.frozen
class CnilPasswordPolicy:
    """CNIL délibération 2022-100, case of a password used alone.

    The CNIL asks for about 80 bits of entropy and gives equivalent rules;
    this policy accepts a password that follows one of them:

    - at least 12 characters with upper case, lower case, digits and
      special characters;
    - at least 14 characters with upper case, lower case and digits;
    - at least 20 characters of any kind (a passphrase of several words).

    It always refuses fewer than ``min_length`` characters, more than
    :data:`MAX_PASSWORD_LENGTH`, control characters, and a password that
    contains the login.
    """

    min_length: int = 12

    def check(self, password: str, *, login: str, context: Sequence[str] = ()) -> None:
        """Raise ``PasswordPolicyError`` unless *password* may be used."""
        if len(password) > MAX_PASSWORD_LENGTH:
            raise PasswordPolicyError(
                f"the password must be at most {MAX_PASSWORD_LENGTH} characters")
        if len(password) < self.min_length:
            raise PasswordPolicyError(f"the password must be at least {self.min_length} characters")
        if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in password):
            raise PasswordPolicyError("the password must not contain control characters")
        if login and login.casefold() in password.casefold():
            raise PasswordPolicyError("the password must not contain the login")
        classes = _classes(password)
        n = len(password)
        if n >= 20:
            return
        if n >= 14 and {"lower", "upper", "digit"} <= classes:
            return
        if n >= 12 and {"lower", "upper", "digit", "special"} <= classes:
            return
        raise PasswordPolicyError(
            "the password needs 12 characters with upper and lower case, digits and "
            "special characters, or 14 with upper and lower case and digits, or 20 of any kind"
        )
