"""manage.py account_merge_reissue UAI COMPTE: a new letter for a lost one.

The establishment *UAI*, whose letter carried a child now on the account
(its login or id), prints a new letter with the same login and a new
provisional password, on standard output or into ``--out FICHIER``
(created, readable by its owner only): the password is shown this once.
The old password stops working at once.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import get_language, gettext, gettext_noop

from account_merge.contrib.django.models import Account as AccountRow
from account_merge.contrib.django.models import Establishment as EstablishmentRow
from account_merge.contrib.django.service import get_service
from account_merge.domain.establishment import Establishment, validate_uai
from account_merge.domain.logins import login_key
from account_merge.exceptions import AccountMergeError
from account_merge.messages import error_message


class Command(BaseCommand):
    help = gettext_noop("Réédite le courrier perdu d'un compte qui porte un enfant de "
                        "l'établissement UAI : même identifiant, nouveau mot de passe "
                        "provisoire.")

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        self.help = gettext(self.help)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("uai", metavar="UAI",
                            help=gettext("l'établissement qui réédite le courrier"))
        parser.add_argument("account", metavar=gettext("COMPTE"),
                            help=gettext("identifiant ou id du compte"))
        parser.add_argument("--out", metavar=gettext("FICHIER"),
                            help=gettext("écrit le courrier dans ce fichier (nouveau) au lieu "
                                         "de l'afficher"))

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            uai = validate_uai(options["uai"])
        except AccountMergeError as error:
            raise CommandError(
                f"{error_message(error, get_language())} ({error.code})") from None
        stored = EstablishmentRow.objects.filter(uai=uai).first()
        if stored is None:
            raise CommandError(gettext("établissement inconnu : %(uai)s") % {"uai": uai})
        reference = options["account"]
        account = (AccountRow.objects.filter(id=reference).first()
                   or AccountRow.objects.filter(login_key=login_key(reference)).first())
        if account is None:
            raise CommandError(gettext("compte introuvable : %(account)s") % {
                "account": reference})
        out = options["out"]
        fd = None
        if out:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as error:
                raise CommandError(gettext("%(problem)s : %(file)s") % {
                    "problem": error.strerror, "file": out}) from None
        try:
            letter = get_service().reissue_letter(Establishment(stored.uai, stored.name),
                                                  account.id)
        except AccountMergeError as error:
            if fd is not None:
                os.close(fd)
                os.unlink(out)
            raise CommandError(
                f"{error_message(error, get_language())} ({error.code})") from None
        self.stderr.write(gettext("Courrier réédité par %(uai)s pour le compte %(login)s.")
                          % {"uai": uai, "login": letter.login})
        if fd is None:
            self.stdout.write(letter.render(), ending="")
            return
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(letter.render())
        self.stderr.write(gettext("Courrier écrit dans %(file)s.") % {"file": out})
