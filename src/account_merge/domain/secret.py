"""A secret value that never shows itself by accident."""

from __future__ import annotations

from typing import Any

from account_merge.exceptions import InvalidInput

__all__ = ["Secret", "reveal"]

_MASK = "********"


class Secret:
    """Wraps a password so that ``repr``, ``str`` and formatting mask it.

    ``reveal()`` gives the text.  Two secrets are never equal to each
    other (comparison would invite non-constant-time checks), and a secret
    cannot be pickled.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise InvalidInput("password", f"must be a string, not {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The secret text."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")

    def __len__(self) -> int:
        return len(self._value)

    __hash__ = None  # type: ignore[assignment]


def reveal(field: str, value: object) -> str:
    """The text of a password given as ``str`` or :class:`Secret`."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, str):
        return value
    raise InvalidInput(field, f"must be a string or a Secret, not {type(value).__name__}")
