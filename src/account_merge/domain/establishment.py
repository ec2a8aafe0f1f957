"""The establishment (établissement): a school, identified by its UAI."""

from __future__ import annotations

import re
from typing import Any

import attrs

from account_merge.domain.validation import check_text
from account_merge.exceptions import InvalidInput

__all__ = ["Establishment", "uai_check_letter", "validate_uai"]

_UAI_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
_UAI = re.compile(r"[0-9]{7}[A-Z]", re.ASCII)


def uai_check_letter(digits: str) -> str:
    """The check letter of a UAI whose first seven characters are *digits*."""
    return _UAI_LETTERS[int(digits) % 23]


def validate_uai(value: Any) -> str:
    """Return the UAI in upper case, or raise ``InvalidInput`` saying why not."""
    if not isinstance(value, str):
        raise InvalidInput("uai", f"must be a string, not {type(value).__name__}")
    uai = value.strip().upper()
    if not _UAI.fullmatch(uai):
        raise InvalidInput("uai", "must be 7 digits followed by a check letter, like 0860001K")
    expected = uai_check_letter(uai[:7])
    if uai[7] != expected:
        raise InvalidInput("uai", f"check letter of {uai[:7]} must be {expected}")
    return uai


def _uai(_: object, __: object, value: str) -> None:
    validate_uai(value)


def _normalise(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _name(_: object, __: object, value: str) -> None:
    check_text("establishment name", value, max_length=200)


@attrs.frozen
class Establishment:
    """A school.  ``uai`` is its Unité Administrative Immatriculée."""

    uai: str = attrs.field(converter=_normalise, validator=_uai)
    name: str = attrs.field(validator=_name)
