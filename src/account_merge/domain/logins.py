"""Logins: readable, derived from the responsable's name, unique once normalised."""

from __future__ import annotations

import re
import secrets
import unicodedata

__all__ = ["derive_login", "derive_logins", "login_key"]

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def login_key(login: str) -> str:
    """The form under which logins are unique: NFKC, case-folded, stripped."""
    return unicodedata.normalize("NFKC", login).casefold().strip()


def _base(display_name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", display_name)
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    base = _NOT_ALNUM.sub(".", ascii_only.lower()).strip(".")[:24].strip(".")
    return base or "responsable"


def _with_digits(base: str, attempt: int) -> str:
    if attempt == 0:
        return base
    digits = 2 if attempt < 4 else 4 if attempt < 8 else 6
    return f"{base}.{secrets.randbelow(10**digits):0{digits}d}"


def derive_login(display_name: str, attempt: int = 0) -> str:
    """A readable login for *display_name*: ``claire.robert``, then with digits.

    Attempt 0 gives the plain form; later attempts add a random number so
    that a common name needs few tries whatever the size of the store.
    """
    return _with_digits(_base(display_name), attempt)


def derive_logins(display_name: str, count: int) -> list[str]:
    """``derive_login(display_name, attempt)`` for attempts 0 to *count* - 1.

    The name is turned into its plain form once, not once per attempt.
    """
    base = _base(display_name)
    return [_with_digits(base, attempt) for attempt in range(count)]
