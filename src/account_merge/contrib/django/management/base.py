"""What the app's management commands share: their help in the language active when they
run, and the argparse type of a positive count."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils.translation import gettext

__all__ = ["TranslatedCommand", "positive"]


class TranslatedCommand(BaseCommand):
    """A command whose ``help`` (a ``gettext_noop`` text) is translated when it runs."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Translated here, in the language active when the command runs.
        self.help = gettext(self.help)
        return super().create_parser(prog_name, subcommand, **kwargs)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            gettext("entier positif attendu, pas %(value)r") % {"value": text})
    return value
