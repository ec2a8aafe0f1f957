"""The parser of ``account-merge`` and the run of one command: language, errors, exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from account_merge import AccountMergeError, messages
from account_merge.cli import operator, parent, school
from account_merge.cli.commands import Commands, Handler, Parser, common_options, example
from account_merge.cli.session import (
    ENV_LANG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    PROG,
    CliError,
    Session,
    _,
    library_fields,
)
from account_merge.registers import describe, describe_os_error

__all__ = ["build_parser", "main"]



def build_parser() -> argparse.ArgumentParser:
    """The parser of ``account-merge`` and its subcommands, in the current language."""
    common = common_options()
    parser = Parser(
        prog=PROG, parents=[common],
        description=_("cli.description"),
        epilog=example("account-merge demo", "account-merge children claire.robert")
        + "\n\n" + _("cli.command_help"),
    )
    commands = Commands(parser.add_subparsers(title=_("cli.commands"),
                                              metavar=_("cli.metavar.command"), required=True),
                        common)
    operator.add_demo_command(commands)
    school.add_establishment_commands(commands)
    school.add_commands(commands)
    parent.add_commands(commands)
    school.add_undo_commands(commands)
    operator.add_commands(commands)
    return parser


def _language(argv: Sequence[str]) -> str | None:
    """The language asked for by ``--lang`` in *argv*, or by ``ACCOUNT_MERGE_LANG``.

    None when the value names no language with a catalogue (the parser
    then reports ``--lang``'s error; a bad environment value is ignored).
    """
    chosen: str | None = os.environ.get(ENV_LANG)
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word == "--lang" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif word.startswith("--lang="):
            chosen = word.removeprefix("--lang=")
    return messages.normalize_language(chosen) if chosen else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``account-merge`` with *argv* (default: the process's arguments)."""
    words = list(sys.argv[1:] if argv is None else argv)
    with messages.using_language(_language(words) or messages.DEFAULT_LANGUAGE):
        return _run(words)


def _run(argv: list[str]) -> int:
    parser = build_parser()
    session: Session | None = None
    try:
        args = parser.parse_args(argv)
        session = Session(args)
        handler: Handler = args.handler
        return handler(session)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except CliError as error:
        print(describe(error.code, error.fields), file=sys.stderr)
        return error.status
    except AccountMergeError as error:
        print(describe(error.code, library_fields(error)), file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        print(describe_os_error(error), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        print(describe("interrupted", {}), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if session is not None:
            session.close()
