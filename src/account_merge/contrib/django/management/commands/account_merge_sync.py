"""manage.py account_merge_sync UAI FICHIER: the establishment syncs its accounts with its register.

The register is SIECLE's ``ResponsablesAvecAdresses.xml`` (the pupils'
names from ``ElevesSansAdresses.xml`` beside it, or ``--eleves``) or a CSV
(see ``docs/register.md``).  The changes are previewed as a table, then,
unless ``--yes``, confirmed at the prompt; ``--dry-run`` only previews.
New responsables' letters are written to ``--out DOSSIER`` (new or empty),
one file each with an index ``courriers.csv``.  The establishment must
exist (admin, « Établissements »).  Everything goes through the service
(:meth:`~account_merge.MergeService.sync_register`), as
``account-merge sync`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError
from django.utils.translation import get_language, gettext, gettext_noop

from account_merge.contrib.django.management.base import TranslatedCommand, positive
from account_merge.contrib.django.service import get_service
from account_merge.domain.establishment import validate_uai
from account_merge.exceptions import AccountMergeError
from account_merge.hashpool import default_workers
from account_merge.messages import error_message, message, using_language
from account_merge.registers import JobError, ask, describe, open_register, sync_file


class Command(TranslatedCommand):
    help = gettext_noop("Synchronise les comptes d'un établissement avec son registre "
                        "(SIECLE ou CSV) : aperçu, confirmation, puis courriers des "
                        "nouveaux responsables.")


    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("uai", metavar="UAI",
                            help=gettext("l'établissement dont c'est le registre"))
        parser.add_argument("file", metavar=gettext("FICHIER"),
                            help=gettext("le registre : XML de SIECLE (.xml) ou CSV"))
        parser.add_argument("--format", choices=("csv", "siecle"),
                            help=gettext("format du fichier (défaut : selon son extension)"))
        parser.add_argument("--eleves", metavar=gettext("FICHIER"),
                            help=gettext("ElevesSansAdresses.xml de SIECLE (défaut : à côté "
                                         "du registre)"))
        parser.add_argument("--all-responsables", action="store_true",
                            help=gettext("SIECLE : tous les responsables, pas seulement les "
                                         "légaux"))
        parser.add_argument("--partial", action="store_true",
                            help=gettext("le fichier n'est qu'un extrait : ne change que les "
                                         "responsables qu'il liste"))
        parser.add_argument("--dry-run", action="store_true",
                            help=gettext("affiche l'aperçu sans rien appliquer"))
        parser.add_argument("--yes", action="store_true",
                            help=gettext("applique sans demander confirmation"))
        parser.add_argument("--out", metavar=gettext("DOSSIER"),
                            help=gettext("dossier (nouveau ou vide) où écrire les courriers"))
        parser.add_argument("--workers", type=positive, default=default_workers(),
                            metavar="N",
                            help=gettext("processus de hachage (défaut : un par cœur)"))

    def handle(self, *args: Any, **options: Any) -> None:
        # The job prints whole lines itself.
        self.stdout.ending = self.stderr.ending = ""
        with using_language(get_language()):
            try:
                service = get_service()
                establishment = service.find_establishment(validate_uai(options["uai"]))
                if establishment is None:
                    raise CommandError(gettext("établissement inconnu : %(uai)s") % {
                        "uai": options["uai"]})
                register = open_register(Path(options["file"]), establishment.uai,
                                         kind=options["format"], eleves=options["eleves"],
                                         everyone=options["all_responsables"])
                sync_file(service, establishment, register,
                          folder=Path(options["out"]) if options["out"] else None,
                          partial=options["partial"], yes=options["yes"],
                          dry_run=options["dry_run"], workers=options["workers"],
                          confirm=lambda: ask(message("sync.confirm"), out=self.stdout),
                          out=self.stdout, err=self.stderr)
            except JobError as error:
                raise CommandError(describe(error.code, error.fields)) from None
            except AccountMergeError as error:
                raise CommandError(f"{error_message(error)} ({error.code})") from None
            except OSError as error:
                raise CommandError(gettext("%(problem)s : %(file)s") % {
                    "problem": error.strerror or error, "file": error.filename}) from None
