"""Checks of the arguments a host passes to the service; each failure is ``invalid_input``."""

from __future__ import annotations

from collections.abc import Iterable

from account_merge.domain.establishment import Establishment
from account_merge.domain.passwords import MAX_PASSWORD_LENGTH
from account_merge.domain.secret import Secret, reveal
from account_merge.domain.validation import MAX_LOGIN_LENGTH, has_control_characters
from account_merge.exceptions import InvalidInput

__all__ = ["MAX_LIMIT", "establishment_arg", "limit_arg", "login_arg", "password_arg",
           "positions_arg"]

#: No store holds more rows than this: a larger limit means "all of them".
MAX_LIMIT = 2**62


def login_arg(value: object, field: str = "login") -> str:
    """A login as typed: 1 to 64 printable characters."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    if not value.strip() or len(value) > MAX_LOGIN_LENGTH or has_control_characters(value):
        raise InvalidInput(field, f"must be 1 to {MAX_LOGIN_LENGTH} printable characters")
    return value


def password_arg(field: str, value: str | Secret | object) -> str:
    """The text of a password given as ``str`` or :class:`Secret`, at most 1024 characters."""
    text = reveal(field, value)
    if len(text) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_PASSWORD_LENGTH} characters")
    return text


def establishment_arg(value: object) -> Establishment:
    """An :class:`Establishment` the host vouches for."""
    if not isinstance(value, Establishment):
        raise InvalidInput("establishment", "must be an Establishment")
    return value


def limit_arg(limit: object) -> int:
    """A positive int, capped at :data:`MAX_LIMIT`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", "must be a positive int")
    return min(limit, MAX_LIMIT)


def positions_arg(positions: object) -> tuple[int, ...]:
    """Outbox positions: a sequence of ints (out-of-range ones dropped)."""
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable):
        raise InvalidInput("positions", "must be a sequence of ints")
    wanted = list(positions)
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in wanted):
        raise InvalidInput("positions", "must be a sequence of ints")
    return tuple(p for p in wanted if 1 <= p <= MAX_LIMIT)
