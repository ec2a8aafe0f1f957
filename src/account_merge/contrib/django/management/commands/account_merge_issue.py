"""manage.py account_merge_issue: the letters of a school's CSV, as ``account-merge issue-batch``.

The CSV has the columns of ``account-merge issue-batch`` (see
``docs/cli.md``): ``uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom``,
one row per pupil and responsable; the rows of one responsable of one
establishment make one letter.  Each letter is written to
``DOSSIER/<login>.txt`` with an index ``DOSSIER/courriers.csv`` (without
passwords).  The establishments must exist (admin, « Établissements »).
A responsable issued a letter by an earlier run gets no second one (see
:func:`account_merge.registers.issue_batch`); ``account_merge_sync`` syncs
a whole register.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError
from django.utils.translation import get_language, gettext, gettext_noop

from account_merge.contrib.django.management.base import TranslatedCommand, positive
from account_merge.contrib.django.service import get_service
from account_merge.exceptions import AccountMergeError
from account_merge.hashpool import default_workers
from account_merge.messages import error_message, using_language
from account_merge.registers import JobError, describe, issue_batch

#: Where a Django project adds an establishment (translated when shown).
ADD_ESTABLISHMENT = gettext_noop("ajoutez-le dans l'administration, « Établissements »")



class Command(TranslatedCommand):
    help = gettext_noop("Crée un compte et un courrier de notification par famille d'un "
                        "fichier CSV d'établissement (colonnes de « account-merge issue-batch »).")


    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("csv", metavar="CSV",
                            help=gettext("le fichier exporté par l'établissement"))
        parser.add_argument("--out", required=True, metavar=gettext("DOSSIER"),
                            help=gettext("dossier (nouveau ou vide) où écrire les courriers"))
        parser.add_argument("--workers", type=positive, default=default_workers(),
                            metavar="N",
                            help=gettext("processus de hachage (défaut : un par cœur)"))
        parser.add_argument("--encoding", default="utf-8-sig", metavar=gettext("ENCODAGE"),
                            help=gettext("encodage du CSV (défaut : utf-8, avec ou sans BOM)"))

    def handle(self, *args: Any, **options: Any) -> None:
        # The batch prints whole lines itself.
        self.stdout.ending = self.stderr.ending = ""
        # The batch's own texts follow the language Django is in.
        with using_language(get_language()):
            try:
                issue_batch(get_service(), Path(options["csv"]), Path(options["out"]),
                            encoding=options["encoding"], workers=options["workers"],
                            out=self.stdout, err=self.stderr,
                            add_establishment=gettext(ADD_ESTABLISHMENT))
            except JobError as error:
                raise CommandError(describe(error.code, error.fields)) from None
            except AccountMergeError as error:
                raise CommandError(f"{error_message(error)} ({error.code})") from None
            except OSError as error:
                raise CommandError(gettext("%(problem)s : %(file)s") % {
                    "problem": error.strerror or error, "file": error.filename}) from None
