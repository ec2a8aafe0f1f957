"""What every subcommand shares: the file, the store, the service, the messages, the errors.

A :class:`Session` is built from the parsed arguments; its service hashes
with argon2-cffi's default parameters, always (a command line that writes
real letters has no cheaper mode: tests that drive :func:`main` in their
own process replace :func:`make_verifier`).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import account_merge
from account_merge import (
    Account,
    AccountMergeError,
    Argon2Verifier,
    Establishment,
    MergeService,
    Secret,
    exceptions,
    messages,
)
from account_merge.domain.establishment import validate_uai
from account_merge.exceptions import AccountNotFound, InvalidInput
from account_merge.ports import Storage
from account_merge.registers import JobError, error_text

__all__ = [
    "ADD_ESTABLISHMENT", "CLI_CODES", "DEFAULT_DB", "ENV_DB", "ENV_LANG", "ENV_LINKS",
    "ENV_SECRET_KEY", "ENV_SMTP_PASSWORD", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE",
    "MESSAGES", "PROG", "CliError", "Session", "make_verifier", "open_storage",
]

PROG = "account-merge"
DEFAULT_DB = "account-merge.sqlite3"
ENV_DB = "ACCOUNT_MERGE_DB"
ENV_LANG = "ACCOUNT_MERGE_LANG"
#: The way back: the key signing links, the links (JSON), the SMTP password.
ENV_SECRET_KEY = "ACCOUNT_MERGE_SECRET_KEY"
ENV_LINKS = "ACCOUNT_MERGE_LINKS"
ENV_SMTP_PASSWORD = "ACCOUNT_MERGE_SMTP_PASSWORD"

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The command line's own error codes (beside the library's), by exit status.
CLI_CODES = (
    "usage", "unknown_establishment", "database_missing", "database_exists",
    "folder_not_empty", "password_missing", "password_mismatch", "invalid_csv",
    "bad_rows", "file_error", "interrupted", "letters_folder", "other_establishment",
)

#: An error of the command line itself (a code, its fields, an exit status);
#: the jobs on files raise it too (:mod:`account_merge.registers`).
CliError = JobError

#: How to add an unknown establishment, in ``unknown_establishment``: None
#: for the command line's own advice, in the language of the run.
ADD_ESTABLISHMENT: str | None = None


def _(key: str, **fields: object) -> str:
    """The message *key* in the language of this run."""
    return messages.message(key, **fields)


class _Messages(Mapping[str, str]):
    """The French message of each error code (library's and command line's).

    Kept for compatibility; the messages live in :mod:`account_merge.messages`.
    """

    def _codes(self) -> list[str]:
        library = sorted({cls.code for cls in vars(exceptions).values()
                          if isinstance(cls, type) and issubclass(cls, AccountMergeError)
                          and cls is not AccountMergeError})
        return [*library, *CLI_CODES]

    def __getitem__(self, code: str) -> str:
        if code not in self._codes():
            raise KeyError(code)
        return error_text(code, {}, "fr")

    def __iter__(self) -> Iterator[str]:
        return iter(self._codes())

    def __len__(self) -> int:
        return len(self._codes())


#: The French message for each error code, library's and command line's.
#: (Compatibility view of :mod:`account_merge.messages`.)
MESSAGES: Mapping[str, str] = _Messages()


def library_fields(error: AccountMergeError) -> dict[str, object]:
    """The fields of a library error that its message may name."""
    return {k: v for k, v in vars(error).items() if isinstance(v, (str, int))}


def open_storage(path: str | os.PathLike[str]) -> Storage:
    """The store kept in the SQLite file at *path* (created if missing)."""
    return account_merge.SQLiteStorage(path)


def make_verifier() -> Argon2Verifier:
    """The argon2 verifier of the command line: argon2-cffi's defaults."""
    return Argon2Verifier()


def _recovery_settings() -> Any:
    """The secret key and links of the environment (``ACCOUNT_MERGE_SECRET_KEY``, ``_LINKS``)."""
    from account_merge.service.bootstrap import read_settings  # noqa: PLC0415

    return read_settings({"SECRET_KEY": os.environ.get(ENV_SECRET_KEY),
                          "LINKS": os.environ.get(ENV_LINKS)},
                         name=lambda key: f"ACCOUNT_MERGE_{key}")


def stored_establishment(service: MergeService, uai: str,
                         hint: str | None = ADD_ESTABLISHMENT) -> Establishment:
    """The establishment stored under *uai*, or ``unknown_establishment``."""
    found = service.find_establishment(validate_uai(uai))
    if found is None:
        raise CliError("unknown_establishment", uai=uai,
                       hint=hint if hint is not None else _("cli.add_establishment"))
    return found


class Session:
    """What a subcommand works with: the file, the store, the service, the terminal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.db = Path(getattr(args, "db", None) or os.environ.get(ENV_DB) or DEFAULT_DB)
        self._storage: Storage | None = None
        self._service: MergeService | None = None
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr

    def require_db(self) -> None:
        if not self.db.is_file():
            raise CliError("database_missing", path=str(self.db))

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.db)
        return self._storage

    @property
    def service(self) -> MergeService:
        if self._service is None:
            recovery = _recovery_settings()
            self._service = MergeService(self.storage, make_verifier(),
                                         secret_key=recovery.secret_key, links=recovery.links)
        return self._service

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()

    # -- reading ------------------------------------------------------------------
    def establishment(self, uai: str) -> Establishment:
        """The establishment stored under *uai*, or ``unknown_establishment``."""
        return stored_establishment(self.service, uai)

    def account(self, ref: str) -> Account:
        """The account whose id or login is *ref*."""
        try:
            return self.service.get_account(ref)
        except (AccountNotFound, InvalidInput):
            return self.service.find_account(ref)

    def password(self, prompt: str) -> Secret:
        """A password from a hidden prompt, or the next line of a non-terminal stdin."""
        if sys.stdin.isatty():
            try:
                return Secret(getpass.getpass(prompt))
            except EOFError:
                raise CliError("password_missing", EXIT_USAGE) from None
        line = sys.stdin.readline()
        if not line:
            raise CliError("password_missing", EXIT_USAGE)
        return Secret(line.removesuffix("\n").removesuffix("\r"))

    def new_password(self, prompt: str) -> Secret:
        """A new password; at a terminal, typed twice."""
        password = self.password(prompt)
        if sys.stdin.isatty():
            again = self.password(_("cli.prompt.confirm"))
            if again.reveal() != password.reveal():
                raise CliError("password_mismatch", EXIT_USAGE)
        return password

    # -- printing -----------------------------------------------------------------
    def print_children(self, account: Account) -> None:
        """The children attached to *account*, as the Enfants screen lists them."""
        out = self.out
        attached = self.service.attached_children(account.id)
        print(_("screen.children_title"), file=out)
        if not attached:
            print("  " + _("cli.no_children"), file=out)
        for item in attached:
            child = item.child
            via = " · " + _("cli.via_merge") if item.via_merge else ""
            print(f"  {child.first_name} {child.last_name}", file=out)
            detail = _("cli.child_detail", responsable=item.responsable, id=child.id,
                       uai=child.establishment_uai)
            print(f"    {detail}{via}", file=out)


def account_line(account: Account) -> str:
    """One line naming *account*: login, name, status, role, id."""
    return _("cli.account_line", login=account.login, name=account.display_name,
             status=_(f"status.{account.status.value}"), role=_(f"role.{account.role.value}"),
             id=account.id)
