"""manage.py account_merge_deliver_notices: send what parents should hear about.

Run it periodically (cron, a task scheduler): it makes the pending
notices from the outbox (password-reset and confirmation links, login
reminders, changes of password or address, letters re-issued, merges)
and sends them with Django's e-mail (``EMAIL_BACKEND``,
``DEFAULT_FROM_EMAIL``), at most ``--limit`` a run.  A notice that cannot
be sent is tried again at the next run.  Its links need
``ACCOUNT_MERGE["SECRET_KEY"]`` and ``ACCOUNT_MERGE["LINKS"]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import CommandError
from django.utils.translation import get_language, gettext, gettext_noop

from account_merge.contrib.django.mail import DjangoMailer
from account_merge.contrib.django.management.base import TranslatedCommand
from account_merge.contrib.django.service import get_service
from account_merge.exceptions import AccountMergeError
from account_merge.messages import error_message


class Command(TranslatedCommand):
    help = gettext_noop("Envoie les messages en attente (réinitialisation, confirmation "
                        "d'adresse, regroupement...) par la messagerie de Django.")


    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, default=100, metavar="N",
                            help=gettext("nombre de messages au plus (défaut : 100)"))

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            sent = get_service().deliver_notices(DjangoMailer(), options["limit"],
                                                 language=get_language())
        except AccountMergeError as error:
            raise CommandError(
                f"{error_message(error, get_language())} ({error.code})") from None
        self.stdout.write(gettext("%(count)d message(s) envoyé(s).") % {"count": sent})
