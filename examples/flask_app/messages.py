"""What to tell a parent when the library refuses: its French message per error code."""

from __future__ import annotations

from typing import Any

from flask import render_template
from flask.typing import ResponseReturnValue

from account_merge.cli import MESSAGES
from account_merge.exceptions import AccountMergeError, TooManyAttempts

_GENERIC = "le service est momentanément indisponible ; réessayez plus tard"
#: Codes whose message names internals (the store) that a parent need not see.
_PRIVATE = frozenset({"storage_error"})


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "?"


def french(error: AccountMergeError) -> str:
    """The French message of *error*'s code, its ``{fields}`` filled, as a sentence."""
    fields = _Fields({k: v for k, v in vars(error).items() if isinstance(v, str | int)})
    template = _GENERIC if error.code in _PRIVATE else MESSAGES.get(error.code, _GENERIC)
    text = template.format_map(fields)
    return text[:1].upper() + text[1:] + "."


def page(template: str, *, error: str | None = None, cause: AccountMergeError | None = None,
         **context: Any) -> ResponseReturnValue:
    """The page, with its error if any: 400, or 429 with Retry-After when throttled."""
    body = render_template(template, error=error, **context)
    if error is None:
        return body
    if isinstance(cause, TooManyAttempts):
        return body, 429, {"Retry-After": str(cause.retry_after)}
    return body, 400
