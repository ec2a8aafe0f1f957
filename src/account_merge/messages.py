"""What to tell a parent or an operator for each error code, in French.

Hosts show :func:`error_message` (or :func:`message` for a bare code)
instead of the errors' English ``message``, which is meant for logs::

    try:
        service.merge(principal_id, login, password)
    except AccountMergeError as error:
        form.add_error(None, error_message(error))

A message may hold ``{field}`` placeholders, filled from the error's
attributes by :func:`error_message` (``too_many_attempts`` says in how many
seconds to try again).  Only French exists for now; any other *language*
gets the French text.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from account_merge.exceptions import AccountMergeError

__all__ = ["FALLBACK", "FRENCH", "error_message", "message"]

#: The code of a message for an error whose code has none.
FALLBACK: Final = "account_merge_error"

#: The French message of each of the library's error codes.
FRENCH: Final[Mapping[str, str]] = MappingProxyType({
    "invalid_credentials": "identifiant ou mot de passe incorrect",
    "not_responsable": "seuls les comptes responsables peuvent être regroupés",
    "principal_not_active": "le compte principal n'est pas activé",
    "same_account": "un compte ne peut pas être regroupé avec lui-même",
    "not_authorized": "opération non autorisée",
    "nothing_to_split": (
        "aucun enfant de cet établissement n'a rejoint ce compte par un regroupement"
    ),
    "too_many_attempts": "trop de tentatives ; réessayez dans {retry_after} s",
    "password_policy": (
        "le mot de passe ne respecte pas la politique : au moins 12 caractères avec "
        "majuscules, minuscules, chiffres et caractères spéciaux, ou 14 avec majuscules, "
        "minuscules et chiffres, ou 20 de toute sorte, sans l'identifiant, et différent "
        "de l'ancien"
    ),
    "account_not_found": "compte introuvable : {account_id}",
    "concurrent_update": "le compte était modifié au même moment ; réessayez",
    "invalid_input": "donnée invalide : {field}",
    "storage_error": "la base ne peut pas être utilisée : {store}",
    FALLBACK: "une erreur est survenue ; réessayez plus tard",
})

_CATALOGUES: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType({"fr": FRENCH})


def message(code: str, language: str = "fr") -> str:
    """The message for an error *code*, placeholders unfilled.

    An unknown code gets a generic message; an unknown *language*, French.
    """
    catalogue = _CATALOGUES.get(language, FRENCH)
    return catalogue.get(code, catalogue[FALLBACK])


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "?"


def error_message(error: AccountMergeError, language: str = "fr") -> str:
    """The message for *error*, its placeholders filled from its attributes."""
    fields = _Fields({k: v for k, v in vars(error).items() if isinstance(v, (str, int))})
    return message(error.code, language).format_map(fields)
