"""The notification letter (courrier de notification) sent on paper."""

from __future__ import annotations

import unicodedata
from datetime import datetime

import attrs

from account_merge.domain.child import Child
from account_merge.domain.establishment import Establishment
from account_merge.domain.secret import Secret

__all__ = ["NotificationLetter", "establishment_with_article"]


#: The words an establishment's name starts with, by gender (accents and case aside).
_FEMININE = frozenset({"ecole", "cite", "institution", "maison", "section", "unite"})
_MASCULINE = frozenset({
    "college", "lycee", "groupe", "groupement", "etablissement", "ensemble", "institut",
    "centre", "pole", "internat", "campus", "erea", "lp", "lpo", "lgt", "legt", "lep",
    "ime", "itep", "cfa", "greta",
})
_ARTICLES = ("le ", "la ", "les ", "l'", "l\N{RIGHT SINGLE QUOTATION MARK}")


def _plain(word: str) -> str:
    """*word* without accents, in lower case: ``"École"`` -> ``"ecole"``."""
    decomposed = unicodedata.normalize("NFD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def establishment_with_article(name: str) -> str:
    """The establishment's name as a French sentence says it after « par »: with its article.

    ``"le Collège des Trois Rivières"``, ``"le Lycée Camille Guérin"``,
    ``"l'École élémentaire Jules Ferry"``, ``"la Cité scolaire Jean Moulin"``;
    a name that starts with its own article stays as it is (``"La
    Providence"``), and a name whose first word says no kind of school
    is introduced as ``"l'établissement Saint-Joseph"``.
    """
    if _plain(name).startswith(_ARTICLES):
        return name
    first = _plain(name.split(maxsplit=1)[0].split("-", 1)[0]) if name.strip() else ""
    if first not in _FEMININE and first not in _MASCULINE:
        return f"l'établissement {name}"
    if first[:1] in "aeiouy":
        return f"l'{name}"
    return f"{'la' if first in _FEMININE else 'le'} {name}"


def _french_list(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " et " + names[-1]


@attrs.frozen
class NotificationLetter:
    """A letter carrying a login and its provisional password.

    The password (a :class:`Secret`) exists only on the letter just issued:
    it is never stored, and ``repr``/``str`` mask it.  ``render()`` gives
    the letter's text in French, password included, for printing.
    """

    account_id: str
    login: str
    provisional_password: Secret
    establishment: Establishment
    display_name: str
    children: tuple[Child, ...]
    issued_at: datetime
    expires_at: datetime

    def render(self) -> str:
        """The letter's text, in French, as the parent receives it.

        French typography: a no-break space (U+00A0) before each colon.
        """
        names = _french_list([f"{c.first_name} {c.last_name}" for c in self.children])
        pour = f" pour {names}" if names else ""
        return (
            f"{self.establishment.name} ({self.establishment.uai})\n"
            f"À l'attention de {self.display_name}\n"
            "\n"
            "En ce qui concerne votre compte d'accès aux services en ligne\u00a0:\n"
            "\n"
            "Vous trouverez ci-dessous l'identifiant et le mot de passe de votre compte "
            "internet pour accéder aux services proposés par "
            f"{establishment_with_article(self.establishment.name)}{pour}\u00a0:\n"
            "\n"
            f"Identifiant\u00a0: {self.login}\n"
            f"Mot de passe *\u00a0: {self.provisional_password.reveal()}\n"
            "\n"
            "* Mot de passe provisoire, à modifier lors de la première connexion, "
            f"valable jusqu'au {self.expires_at:%d/%m/%Y}.\n"
        )
