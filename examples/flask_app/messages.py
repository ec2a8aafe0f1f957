"""What to tell a parent when the library refuses: its French message per error code."""

from __future__ import annotations

from account_merge.cli import MESSAGES
from account_merge.exceptions import AccountMergeError

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
