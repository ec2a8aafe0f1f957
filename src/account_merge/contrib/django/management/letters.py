"""What ``account_merge_reissue`` and ``account_merge_split`` share: an establishment and an
account named on the command line, and letters printed once, or written to a new file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from django.core.management.base import CommandError
from django.utils.translation import get_language, gettext

from account_merge.contrib.django.management.base import TranslatedCommand
from account_merge.contrib.django.service import get_service
from account_merge.domain.account import Account
from account_merge.domain.establishment import Establishment, validate_uai
from account_merge.domain.letter import NotificationLetter
from account_merge.exceptions import AccountMergeError, AccountNotFound, InvalidInput
from account_merge.messages import error_message

__all__ = ["LetterCommand"]


def _failed(error: AccountMergeError) -> CommandError:
    return CommandError(f"{error_message(error, get_language())} ({error.code})")


class LetterCommand(TranslatedCommand):
    """A command of an establishment that prints letters: ``UAI COMPTE [--out FICHIER]``."""

    #: The help of the ``UAI`` argument (translated when the parser is made).
    uai_help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("uai", metavar="UAI", help=gettext(self.uai_help))
        parser.add_argument("account", metavar=gettext("COMPTE"),
                            help=gettext("identifiant ou id du compte"))
        parser.add_argument("--out", metavar=gettext("FICHIER"),
                            help=gettext("écrit le courrier dans ce fichier (nouveau) au lieu "
                                         "de l'afficher"))

    def named(self, options: dict[str, Any]) -> tuple[Establishment, Account]:
        """The establishment and the account the command line names, through the service."""
        service = get_service()
        try:
            uai = validate_uai(options["uai"])
        except AccountMergeError as error:
            raise _failed(error) from None
        establishment = service.find_establishment(uai)
        if establishment is None:
            raise CommandError(gettext("établissement inconnu : %(uai)s") % {"uai": uai})
        reference = options["account"]
        try:
            try:
                return establishment, service.get_account(reference)
            except (AccountNotFound, InvalidInput):
                return establishment, service.find_account(reference)
        except (AccountNotFound, InvalidInput):
            raise CommandError(gettext("compte introuvable : %(account)s") % {
                "account": reference}) from None

    def print_letters(self, options: dict[str, Any],
                      act: Callable[[], Sequence[NotificationLetter]]) -> None:
        """Run *act* and print its letters, separated by a form feed, or write them to
        ``--out``, a new file made before *act* (removed if it fails), readable by its
        owner only: their provisional passwords are shown this once."""
        out = options["out"]
        fd = None
        if out:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as error:
                raise CommandError(gettext("%(problem)s : %(file)s") % {
                    "problem": error.strerror, "file": out}) from None
        try:
            letters = act()
        except AccountMergeError as error:
            if fd is not None:
                os.close(fd)
                os.unlink(out)
            raise _failed(error) from None
        text = "\f\n".join(letter.render() for letter in letters)
        if fd is None:
            self.stdout.write(text, ending="")
            return
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.stderr.write(gettext("Courrier écrit dans %(file)s.") % {"file": out})
