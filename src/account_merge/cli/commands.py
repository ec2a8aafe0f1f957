"""The subcommands' parser: argparse in this run's language, errors with a code.

Each actor's module (:mod:`~account_merge.cli.school`,
:mod:`~account_merge.cli.parent`, :mod:`~account_merge.cli.operator`)
adds its subcommands through a :class:`Commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from account_merge import messages
from account_merge.cli.session import (
    DEFAULT_DB,
    ENV_DB,
    ENV_LANG,
    EXIT_USAGE,
    CliError,
    Session,
    _,
)
from account_merge.registers import SCHOOL_CSV_COLUMNS

__all__ = ["Commands", "Handler", "Parser", "example", "positive"]

#: What a subcommand runs: it returns the exit status.
Handler = Callable[[Session], int]

#: argparse's own English messages, and the key of their translation.
_ARGPARSE_MESSAGES = (
    ("the following arguments are required:", "cli.argparse.required"),
    ("unrecognized arguments:", "cli.argparse.unrecognized"),
    ("invalid choice:", "cli.argparse.invalid_choice"),
    ("(choose from", "cli.argparse.choose_from"),
    ("expected one argument", "cli.argparse.one_argument"),
    ("invalid int value:", "cli.argparse.invalid_int"),
    ("not allowed with argument", "cli.argparse.not_allowed"),
    ("one of the arguments", "cli.argparse.one_of"),
    ("is required", "cli.argparse.is_required"),
)


def _translated(text: str) -> str:
    """An argparse message with argparse's English replaced by this run's language."""
    for english, key in _ARGPARSE_MESSAGES:
        text = text.replace(english, _(key))
    return text


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def add_usage(self, usage: str | None, actions: Any, groups: Any,
                  prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups,
                          prefix=_("cli.usage_prefix") if prefix is None else prefix)


class Parser(argparse.ArgumentParser):
    """An argument parser that speaks this run's language and reports errors with a code."""

    def __init__(self, *args: Any, help_option: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs["add_help"] = False
        super().__init__(*args, **kwargs)
        self._positionals.title = _("cli.arguments")
        self._optionals.title = _("cli.options")
        if help_option:
            self.add_argument("-h", "--help", action="help", help=_("cli.help"))

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CliError("usage", EXIT_USAGE, detail=_translated(message))


def positive(text: str) -> int:
    """An argument that must be a positive int."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(_("cli.positive_expected", text=repr(text)))
    return value


def example(*lines: str) -> str:
    """The epilog of a subcommand's help: an example."""
    return _("cli.example") + "\n" + "\n".join(f"  {line}" for line in lines)


def common_options() -> Parser:
    """--db and --lang, accepted before or after the subcommand."""
    common = Parser(help_option=False)
    common.add_argument(
        "--db", metavar=_("cli.metavar.file"), default=argparse.SUPPRESS,
        help=_("cli.db_help", env=ENV_DB, default=DEFAULT_DB))
    common.add_argument(
        "--lang", choices=messages.LANGUAGES, default=argparse.SUPPRESS,
        help=_("cli.lang_help", env=ENV_LANG))
    return common


class Commands:
    """Where the actors' modules add their subcommands."""

    def __init__(self, subparsers: Any, common: Parser) -> None:
        self.subparsers = subparsers
        self.common = common

    def add(self, name: str, handler: Handler, example_line: str,
            description: bool = True, key: str | None = None) -> argparse.ArgumentParser:
        """A subcommand whose texts are ``cli.<key>.summary`` and ``.description``
        (*key* is *name* unless given)."""
        key = key or name
        summary = _(f"cli.{key}.summary")
        sub: argparse.ArgumentParser = self.subparsers.add_parser(
            name, parents=[self.common], help=summary,
            description=_(f"cli.{key}.description", columns=",".join(SCHOOL_CSV_COLUMNS))
            if description else summary,
            epilog=example(example_line))
        sub.set_defaults(handler=handler)
        return sub

    def group(self, name: str, example_line: str) -> Commands:
        """A subcommand with subcommands of its own (``establishment add``)."""
        parser = self.subparsers.add_parser(
            name, parents=[self.common], help=_(f"cli.{name}.summary"),
            description=_(f"cli.{name}.description"), epilog=example(example_line))
        return Commands(parser.add_subparsers(title=_("cli.commands"),
                                              metavar=_("cli.metavar.command"), required=True),
                        self.common)
