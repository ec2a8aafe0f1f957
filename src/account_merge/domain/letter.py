"""The notification letter (courrier de notification) sent on paper."""

from __future__ import annotations

from datetime import datetime

import attrs

from account_merge.domain.child import Child
from account_merge.domain.establishment import Establishment
from account_merge.domain.secret import Secret

__all__ = ["NotificationLetter"]


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
        """The letter's text, in French, as the parent receives it."""
        names = _french_list([f"{c.first_name} {c.last_name}" for c in self.children])
        pour = f" pour {names}" if names else ""
        return (
            f"{self.establishment.name} ({self.establishment.uai})\n"
            f"À l'attention de {self.display_name}\n"
            "\n"
            "En ce qui concerne votre compte d'accès aux services en ligne :\n"
            "\n"
            "Vous trouverez ci-dessous l'identifiant et le mot de passe de votre compte "
            "internet pour accéder aux services proposés par "
            f"{self.establishment.name}{pour} :\n"
            "\n"
            f"Identifiant : {self.login}\n"
            f"Mot de passe * : {self.provisional_password.reveal()}\n"
            "\n"
            "* Mot de passe provisoire, à modifier lors de la première connexion, "
            f"valable jusqu'au {self.expires_at:%d/%m/%Y}.\n"
        )
