"""account-merge: the command line of account_merge, for establishments and testers.

``account-merge demo`` plays the story of the regroupement de comptes on a
SQLite file; the other subcommands act on that file as an establishment's
operator would (issue accounts and letters, split a merge) or as a parent
would (activate, merge, list the children).  See ``docs/cli.md``.

Passwords are never read from the command line: a hidden prompt asks for
them, or, when standard input is not a terminal, they are read from it, one
per line.  Errors print one line ending with the error's code, on standard
error; the exit status is 1 for an error of the library or of the data, 2
for a wrong use of the command.  Everything is said in French unless
``--lang en`` or ``ACCOUNT_MERGE_LANG=en`` asks for English; the texts
live in :mod:`account_merge.messages`.

One module per actor holds its subcommands: :mod:`~account_merge.cli.school`
(the establishment), :mod:`~account_merge.cli.parent`,
:mod:`~account_merge.cli.operator` (the ENT's operator: the demo, notices,
audit, events, retention); :mod:`~account_merge.cli.session` what they
share, :mod:`~account_merge.cli.commands` the parser's parts, and
:mod:`~account_merge.cli.run` the run of one command.
"""

from __future__ import annotations

from account_merge.cli.run import build_parser, main
from account_merge.cli.session import (
    DEFAULT_DB,
    ENV_DB,
    ENV_LANG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    MESSAGES,
    PROG,
    CliError,
    make_verifier,
    open_storage,
)
from account_merge.registers import (
    SCHOOL_CSV_COLUMNS,
    describe,
    error_text,
    issue_batch,
    open_register,
)

#: The columns of ``issue-batch`` (kept here for compatibility).
CSV_COLUMNS = SCHOOL_CSV_COLUMNS

__all__ = [
    "CSV_COLUMNS", "DEFAULT_DB", "ENV_DB", "ENV_LANG", "EXIT_ERROR", "EXIT_INTERRUPTED",
    "EXIT_USAGE", "MESSAGES", "PROG", "CliError", "build_parser", "describe", "error_text",
    "issue_batch", "main", "make_verifier", "open_register", "open_storage",
]
