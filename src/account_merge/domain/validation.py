"""Checks shared by the domain's validators; each failure is ``InvalidInput``."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any

from account_merge.exceptions import InvalidInput

#: Longest display name, first or last name accepted.
MAX_NAME_LENGTH = 100
#: Longest login accepted as input (a derived login is much shorter).
MAX_LOGIN_LENGTH = 64
#: Longest identifier (account id, child id, idempotency key) accepted.
MAX_ID_LENGTH = 64
#: Longest e-mail address (RFC 5321 path limit).
MAX_EMAIL_LENGTH = 254


#: Unicode categories refused in names and logins and escaped in logs: control,
#: format (bidirectional overrides...), surrogate, private use, unassigned, and
#: the line and paragraph separators (U+2028, U+2029), which split log lines.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def has_control_characters(text: str) -> bool:
    """True if *text* holds a control, format, surrogate, unassigned or line-breaking code point."""
    if text.isprintable():  # no "Other" nor "Separator" but the space: none of those (fast path)
        return False
    return any(unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in text)


def check_text(field: str, value: Any, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return *value* if it is a clean, non-blank string of at most *max_length*."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidInput(field, f"must be at most {max_length} characters long")
    if has_control_characters(value):
        raise InvalidInput(field, "must not contain control characters")
    return value


def check_identifier(field: str, value: Any) -> str:
    """An opaque identifier: printable ASCII without spaces, 1 to 64 characters."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidInput(field, f"must be 1 to {MAX_ID_LENGTH} characters long")
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise InvalidInput(field, "must be printable ASCII without spaces")
    return value


def check_aware(field: str, value: Any) -> datetime:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise InvalidInput(field, f"must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(field, "must be timezone-aware")
    return value


def escape_for_log(text: str, max_length: int = MAX_LOGIN_LENGTH) -> str:
    """*text* with control characters escaped and cut, safe for one log line."""
    out = []
    for ch in text[:max_length]:
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES or ch == "\\":
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    if len(text) > max_length:
        out.append("…")
    return "".join(out)
