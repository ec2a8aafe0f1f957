"""manage.py account_merge_reissue UAI COMPTE: a new letter for a lost one.

The establishment *UAI*, whose letter carried a child now on the account
(its login or id), prints a new letter with the same login and a new
provisional password, on standard output or into ``--out FICHIER``
(created, readable by its owner only): the password is shown this once.
The old password stops working at once.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext, gettext_noop

from account_merge.contrib.django.management.letters import LetterCommand
from account_merge.contrib.django.service import get_service
from account_merge.domain.letter import NotificationLetter


class Command(LetterCommand):
    help = gettext_noop("Réédite le courrier perdu d'un compte qui porte un enfant de "
                        "l'établissement UAI : même identifiant, nouveau mot de passe "
                        "provisoire.")

    uai_help = gettext_noop("l'établissement qui réédite le courrier")

    def handle(self, *args: Any, **options: Any) -> None:
        establishment, account = self.named(options)

        def reissue() -> list[NotificationLetter]:
            letter = get_service().reissue_letter(establishment, account.id)
            self.stderr.write(gettext("Courrier réédité par %(uai)s pour le compte %(login)s.")
                              % {"uai": establishment.uai, "login": letter.login})
            return [letter]

        self.print_letters(options, reissue)
