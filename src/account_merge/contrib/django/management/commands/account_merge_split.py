"""manage.py account_merge_split UAI COMPTE: the establishment breaks a merge.

The children of establishment *UAI* that joined the account (its login or
id) through a merge move to new accounts, one per letter they came with,
whose letters are printed on standard output, or written to ``--out
FICHIER`` (created, readable by its owner only), separated by a form
feed: their provisional passwords are shown this once.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext, gettext_noop

from account_merge.contrib.django.management.letters import LetterCommand
from account_merge.contrib.django.service import get_service
from account_merge.domain.letter import NotificationLetter


class Command(LetterCommand):
    help = gettext_noop("Casse un regroupement : les enfants de l'établissement UAI arrivés "
                        "dans le compte par un regroupement passent à un nouveau compte, dont "
                        "le courrier est imprimé.")

    uai_help = gettext_noop("l'établissement qui casse le regroupement")

    def handle(self, *args: Any, **options: Any) -> None:
        establishment, account = self.named(options)

        def split() -> tuple[NotificationLetter, ...]:
            receipt = get_service().split(establishment, account.id)
            for letter in receipt.letters:
                moved = ", ".join(f"{c.first_name} {c.last_name}" for c in letter.children)
                self.stderr.write(gettext(
                    "Regroupement cassé par %(uai)s : %(children)s rattaché(s) au nouveau "
                    "compte %(login)s.") % {"uai": establishment.uai, "children": moved,
                                            "login": letter.login})
            return receipt.letters

        self.print_letters(options, split)
