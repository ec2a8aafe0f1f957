"""manage.py account_merge_purge: delete what the retention policy says is due.

Run it every night (cron, a task scheduler): never-activated and unused
accounts, the hashes of expired letters, old audit records, events and
failure counters go as ``ACCOUNT_MERGE["RETENTION_..."]`` says (see
``docs/privacy.md``).  It works in short batches, so it can be stopped
and run again, and a second run at once does nothing.  ``--dry-run``
says what would go and deletes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import CommandError
from django.utils.translation import get_language, gettext, gettext_noop

from account_merge.contrib.django.management.base import TranslatedCommand
from account_merge.contrib.django.service import get_service
from account_merge.exceptions import AccountMergeError
from account_merge.messages import error_message, render_purge_report


class Command(TranslatedCommand):
    help = gettext_noop("Supprime ce que la politique de conservation dit échu (comptes jamais "
                        "activés ou inutilisés, journal d'audit, événements...) ; à lancer "
                        "chaque nuit.")


    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true",
                            help=gettext("dire ce qui serait supprimé, sans rien supprimer"))

    def handle(self, *args: Any, **options: Any) -> None:
        language = get_language()
        try:
            report = get_service().purge(dry_run=options["dry_run"])
        except AccountMergeError as error:
            raise CommandError(f"{error_message(error, language)} ({error.code})") from None
        self.stdout.write(render_purge_report(report, language))
