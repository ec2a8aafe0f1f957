"""manage.py account_merge_split UAI COMPTE: the establishment breaks a merge.

The children of establishment *UAI* that joined the account (its login or
id) through a merge move to new accounts, one per letter they came with,
whose letters are printed on standard output, or written to ``--out
FICHIER`` (created, readable by its owner only), separated by a form
feed: their provisional passwords are shown this once.
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
    help = gettext_noop("Casse un regroupement : les enfants de l'établissement UAI arrivés "
                        "dans le compte par un regroupement passent à un nouveau compte, dont "
                        "le courrier est imprimé.")

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Translated here, in the language active when the command runs.
        self.help = gettext(self.help)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("uai", metavar="UAI",
                            help=gettext("l'établissement qui casse le regroupement"))
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
        # The file is made before the split, so that the letter has somewhere to go.
        out = options["out"]
        fd = None
        if out:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as error:
                raise CommandError(gettext("%(problem)s : %(file)s") % {
                    "problem": error.strerror, "file": out}) from None
        try:
            receipt = get_service().split(Establishment(stored.uai, stored.name), account.id)
        except AccountMergeError as error:
            if fd is not None:
                os.close(fd)
                os.unlink(out)
            raise CommandError(
                f"{error_message(error, get_language())} ({error.code})") from None
        for letter in receipt.letters:
            moved = ", ".join(f"{c.first_name} {c.last_name}" for c in letter.children)
            self.stderr.write(gettext(
                "Regroupement cassé par %(uai)s : %(children)s rattaché(s) au nouveau compte "
                "%(login)s.") % {"uai": uai, "children": moved, "login": letter.login})
        text = "\f\n".join(letter.render() for letter in receipt.letters)
        if fd is None:
            self.stdout.write(text, ending="")
            return
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.stderr.write(gettext("Courrier écrit dans %(file)s.") % {"file": out})
