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
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TextIO

import argon2

import account_merge
from account_merge import (
    Account,
    AccountMergeError,
    Argon2Verifier,
    Child,
    Establishment,
    MergeService,
    NotificationLetter,
    Role,
    Secret,
    exceptions,
    messages,
)
from account_merge.demo import play
from account_merge.domain.establishment import validate_uai
from account_merge.domain.validation import check_text
from account_merge.exceptions import AccountNotFound, InvalidInput
from account_merge.hashpool import default_workers
from account_merge.ports import Storage

__all__ = ["MESSAGES", "CliError", "describe", "error_text", "issue_batch", "main", "open_storage"]

PROG = "account-merge"
DEFAULT_DB = "account-merge.sqlite3"
ENV_DB = "ACCOUNT_MERGE_DB"
ENV_ARGON2 = "ACCOUNT_MERGE_ARGON2"
#: The way back: the key signing links, the links (JSON), the SMTP password.
ENV_SECRET_KEY = "ACCOUNT_MERGE_SECRET_KEY"
ENV_LINKS = "ACCOUNT_MERGE_LINKS"
ENV_SMTP_PASSWORD = "ACCOUNT_MERGE_SMTP_PASSWORD"
ARGON2_PROFILES = ("default", "cheapest")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ENV_LANG = "ACCOUNT_MERGE_LANG"

#: The command line's own error codes (beside the library's), by exit status.
CLI_CODES = (
    "usage", "unknown_establishment", "database_missing", "database_exists",
    "folder_not_empty", "password_missing", "password_mismatch", "invalid_csv",
    "bad_rows", "file_error", "interrupted",
)

_OS_ERRORS: dict[type[OSError], str] = {
    FileNotFoundError: "cli.os.file_not_found",
    FileExistsError: "cli.os.file_exists",
    PermissionError: "cli.os.permission",
    IsADirectoryError: "cli.os.is_a_directory",
    NotADirectoryError: "cli.os.not_a_directory",
}

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


class CliError(Exception):
    """An error of the command line itself: a code, its fields, an exit status."""

    def __init__(self, code: str, status: int = EXIT_ERROR, **fields: object) -> None:
        self.code = code
        self.status = status
        self.fields = fields
        super().__init__(code)


def error_text(code: str, fields: Mapping[str, object], language: str | None = None) -> str:
    """The message of an error code as a clause: no capital, no final period.

    The command line's own wording of a code (``cli.error.<code>``) wins
    over the library's, and a password policy's rule has its own
    (:func:`account_merge.messages.error_key`); a code without message
    gets the generic one.
    """
    key = (f"cli.error.{code}" if messages.has_message(f"cli.error.{code}")
           else messages.error_key(code, fields.get("rule")))
    text = messages.message(key, language, **fields).removesuffix(".")
    return text[:1].lower() + text[1:]


def describe(code: str, fields: Mapping[str, object], language: str | None = None) -> str:
    """The line for an error: ``Erreur : <message> (<code>)`` in French."""
    text = error_text(code, fields, language)
    return messages.message("cli.error_line", language, message=text, code=code)


def _library_fields(error: AccountMergeError) -> dict[str, object]:
    return {k: v for k, v in vars(error).items() if isinstance(v, (str, int))}


# -- storage and service ---------------------------------------------------------


def open_storage(path: str | os.PathLike[str]) -> Storage:
    """The store kept in the SQLite file at *path* (created if missing)."""
    return account_merge.SQLiteStorage(path)


def make_verifier(profile: str) -> Argon2Verifier:
    """The argon2 verifier for *profile*: ``default``, or ``cheapest`` (tests and demos only)."""
    if profile == "cheapest":
        hasher = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
        return Argon2Verifier(hasher, warn_if_weak=False)
    return Argon2Verifier()


class _Session:
    """What a subcommand works with: the file, the store, the service, the terminal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.db = Path(getattr(args, "db", None) or os.environ.get(ENV_DB) or DEFAULT_DB)
        profile = getattr(args, "argon2", None) or os.environ.get(ENV_ARGON2) or "default"
        if profile not in ARGON2_PROFILES:
            raise CliError("usage", EXIT_USAGE,
                           detail=_("cli.unknown_profile", profile=profile,
                                    choices=", ".join(ARGON2_PROFILES)))
        self.profile = profile
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
            self._service = MergeService(self.storage, make_verifier(self.profile),
                                         secret_key=recovery.secret_key, links=recovery.links)
        return self._service

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()

    # -- reading ------------------------------------------------------------------
    def establishment(self, uai: str) -> Establishment:
        """The establishment stored under *uai*, or ``unknown_establishment``."""
        return _stored_establishment(self.service, uai)

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


#: How to add an unknown establishment, in ``unknown_establishment``: None
#: for the command line's own advice, in the language of the run.
ADD_ESTABLISHMENT: str | None = None


def _stored_establishment(service: MergeService, uai: str,
                          hint: str | None = ADD_ESTABLISHMENT) -> Establishment:
    """The establishment stored under *uai*, or ``unknown_establishment``."""
    found = service.find_establishment(validate_uai(uai))
    if found is None:
        raise CliError("unknown_establishment", uai=uai,
                       hint=hint if hint is not None else _("cli.add_establishment"))
    return found


def _recovery_settings() -> Any:
    """The secret key and links of the environment (``ACCOUNT_MERGE_SECRET_KEY``, ``_LINKS``)."""
    from account_merge.service.bootstrap import read_settings  # noqa: PLC0415

    return read_settings({"SECRET_KEY": os.environ.get(ENV_SECRET_KEY),
                          "LINKS": os.environ.get(ENV_LINKS)},
                         name=lambda key: f"ACCOUNT_MERGE_{key}")


# -- output helpers ------------------------------------------------------------------


def _print_children(session: _Session, account: Account) -> None:
    out = session.out
    attached = session.service.attached_children(account.id)
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


def _account_line(account: Account) -> str:
    return _("cli.account_line", login=account.login, name=account.display_name,
             status=_(f"status.{account.status.value}"), role=_(f"role.{account.role.value}"),
             id=account.id)


# -- subcommands -------------------------------------------------------------------


def cmd_demo(session: _Session) -> int:
    db = session.db
    if db.exists() and db.stat().st_size > 0:
        if not session.args.force:
            raise CliError("database_exists", EXIT_USAGE, path=str(db))
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    play(session.service, session.out, db=shlex.quote(str(db)))
    return 0


def cmd_establishment_add(session: _Session) -> int:
    establishment = session.service.register_establishment(
        Establishment(session.args.uai, session.args.name), actor="cli")
    print(_("cli.establishment.added", uai=establishment.uai, name=establishment.name),
          file=session.out)
    return 0


def _parse_child(spec: str, uai: str) -> Child:
    parts = spec.split(":")
    if len(parts) != 3:
        raise CliError("usage", EXIT_USAGE,
                       detail=_("cli.child_format", spec=repr(spec)))
    return Child(parts[0], parts[1], parts[2], uai)


def cmd_issue(session: _Session) -> int:
    args = session.args
    session.require_db()
    establishment = session.establishment(args.uai)
    children = [_parse_child(spec, establishment.uai) for spec in args.child or ()]
    letter = session.service.issue_account(
        establishment, display_name=args.name, children=children,
        role=Role(args.role), email=args.email)
    print(messages.render_letter(letter), end="", file=session.out)
    print(_("cli.issue.created", login=letter.login, id=letter.account_id), file=session.err)
    return 0


def cmd_activate(session: _Session) -> int:
    session.require_db()
    login = session.args.login
    provisional = session.password(_("cli.prompt.provisional"))
    new = session.new_password(_("cli.prompt.new"))
    account = session.service.activate(login, provisional, new, email=session.args.email)
    print(_("cli.activated", login=account.login), file=session.out)
    return 0


def cmd_merge(session: _Session) -> int:
    session.require_db()
    args, service = session.args, session.service
    password = session.password(_("cli.prompt.principal", login=args.principal))
    principal = service.authenticate(args.principal, password)
    other = session.password(_("cli.prompt.other", login=args.login))
    service.merge(principal.id, args.login, other)
    out = session.out
    print(_("screen.merge_confirmation_title").upper(), file=out)
    print(file=out)
    for sentence in re.split(r"(?<=\.) ", _("merge_confirmation")):
        print(sentence, file=out)
    print(file=out)
    _print_children(session, principal)
    return 0


def cmd_children(session: _Session) -> int:
    session.require_db()
    account = session.account(session.args.account)
    print(_account_line(account), file=session.out)
    if account.merged_into is not None:
        account = session.service.resolve(account.id)
        print(_("cli.merged_into", login=account.login, id=account.id), file=session.out)
    _print_children(session, account)
    return 0


def cmd_split(session: _Session) -> int:
    session.require_db()
    establishment = session.establishment(session.args.uai)
    account = session.account(session.args.account)
    receipt = session.service.split(establishment, account.id)
    out = session.out
    moved = ", ".join(f"{c.first_name} {c.last_name}" for c in receipt.moved)
    ids = ", ".join(receipt.new_account_ids)
    print(_("cli.split.done", uai=establishment.uai, names=moved, id=ids), file=out)
    for letter in receipt.letters:
        print(file=out)
        print(messages.render_letter(letter), end="", file=out)
    return 0


def cmd_reissue(session: _Session) -> int:
    session.require_db()
    establishment = session.establishment(session.args.uai)
    account = session.account(session.args.account)
    letter = session.service.reissue_letter(establishment, account.id)
    out = session.out
    print(_("cli.reissue.done", uai=establishment.uai, login=letter.login,
            id=letter.account_id), file=out)
    print(file=out)
    print(messages.render_letter(letter), end="", file=out)
    return 0


class _FolderMailer:
    """Writes each notice as ``<id>.eml`` in a folder, for a mail system that picks them up."""

    def __init__(self, folder: Path, sender: str) -> None:
        self.folder = folder
        self.sender = sender

    def send(self, notice: Any) -> None:
        from account_merge.mailers import notice_message  # noqa: PLC0415

        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{notice.id}.eml"
        target.write_bytes(bytes(notice_message(notice, self.sender)))
        target.chmod(0o600)  # it may hold a link that opens an account


def cmd_deliver_notices(session: _Session) -> int:
    session.require_db()
    from account_merge.mailers import SmtpMailer  # noqa: PLC0415

    args = session.args
    mailer: Any
    if args.folder is not None:
        mailer = _FolderMailer(Path(args.folder), args.sender)
    else:
        password = None
        if args.user is not None:
            password = os.environ.get(ENV_SMTP_PASSWORD) or session.password(
                _("cli.prompt.smtp_password"))
        mailer = SmtpMailer(args.smtp, args.port, sender=args.sender, starttls=args.starttls,
                            implicit_tls=args.tls, username=args.user, password=password)
    sent = session.service.deliver_notices(mailer, args.limit)
    print(_("cli.deliver.done", count=sent), file=session.out)
    return 0


def cmd_audit(session: _Session) -> int:
    session.require_db()
    account_id = None
    if session.args.account is not None:
        account_id = session.account(session.args.account).id
    for record in session.service.audit_trail(account_id, session.args.limit):
        fields = [record.at.isoformat(timespec="seconds"), record.action.value, record.outcome]
        for label, value in (("actor", record.actor), ("account_field", record.account_id),
                             ("login", record.login), ("detail", record.detail)):
            if value is not None:
                fields.append(f"{_('cli.audit.' + label)}={value}")
        print("  ".join(fields), file=session.out)
    return 0


def cmd_events(session: _Session) -> int:
    session.require_db()
    service = session.service
    entries = service.unpublished_events(session.args.limit)
    for entry in entries:
        payload = json.dumps(entry.event.to_payload(), ensure_ascii=False, sort_keys=True)
        print(f"{entry.position}  {entry.event.name}  {payload}", file=session.out)
    if session.args.mark_published and entries:
        service.mark_published([entry.position for entry in entries])
        print(_("cli.events.marked", count=len(entries)), file=session.err)
    return 0


# -- retention: purge and export ---------------------------------------------------------


def cmd_purge(session: _Session) -> int:
    session.require_db()
    service = session.service
    progress = None
    if not session.args.dry_run and session.err.isatty():
        # The bar needs a total: what a dry run finds (it changes nothing).
        total = sum(service.purge(dry_run=True).to_dict()[k] for k in _PURGE_COUNTS)
        progress = _Progress(total, session.err, label=_("cli.purge.progress")).update
    report = service.purge(dry_run=session.args.dry_run, progress=progress)
    data = report.to_dict()
    print(_("cli.purge.dry_run_title" if report.dry_run else "cli.purge.done_title"),
          file=session.out)
    print(_("cli.purge.report", **data["deleted"],
            **{k: v for k, v in data.items() if k != "deleted"}), file=session.out)
    return 0


#: The counts of a purge report that a progress bar adds up.
_PURGE_COUNTS = ("accounts", "erased_hashes", "audit_deleted", "audit_pseudonymised",
                 "events_deleted", "counters_deleted")


def cmd_export(session: _Session) -> int:
    session.require_db()
    account = session.account(session.args.account)
    data = session.service.export_personal_data(account.id)
    path = Path(session.args.out)
    # Readable by its owner only: it holds a parent's personal data.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    print(_("cli.export.done", login=account.login, path=path), file=session.out)
    return 0


# -- issue-batch -----------------------------------------------------------------------

CSV_COLUMNS = ("uai", "eleve_id", "eleve_prenom", "eleve_nom", "responsable_id", "responsable_nom")

#: The CSV column of each field the library names in ``invalid_input``.
_CSV_FIELDS = {
    "uai": "uai",
    "child id": "eleve_id",
    "child first_name": "eleve_prenom",
    "child last_name": "eleve_nom",
    "responsable_nom": "responsable_nom",
}


class _Family:
    """The rows of one letter: a responsable of one establishment and their children."""

    def __init__(self, uai: str, responsable_id: str, name: str, line: int) -> None:
        self.uai = uai
        self.responsable_id = responsable_id
        self.name = name
        self.first_line = line
        self.children: list[Child] = []
        self.child_lines: dict[str, int] = {}
        self.bad_lines: list[int] = []


class _Batch:
    """A school's CSV, checked row by row before anything is issued."""

    def __init__(self) -> None:
        self.families: dict[tuple[str, str], _Family] = {}
        self.errors: list[tuple[int, str]] = []
        self.pupils: dict[str, tuple[Child, int]] = {}

    def bad(self, line: int, message: str, family: _Family | None) -> None:
        self.errors.append((line, message))
        if family is not None:
            family.bad_lines.append(line)

    @property
    def good(self) -> list[_Family]:
        return [f for f in self.families.values() if not f.bad_lines]

    @property
    def refused(self) -> list[_Family]:
        return [f for f in self.families.values() if f.bad_lines]


def _cell(row: dict[str | None, Any], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def _check_row(service: MergeService, batch: _Batch, row: dict[str | None, Any], line: int,
               known: dict[str, Establishment | None], hint: str | None) -> None:
    """Check one row; a bad row is reported with its line and spoils its family."""
    responsable_id = _cell(row, "responsable_id")
    name = _cell(row, "responsable_nom")
    key = (_cell(row, "uai").upper(), responsable_id)
    family = batch.families.get(key)
    if family is None and responsable_id:
        family = batch.families[key] = _Family(key[0], responsable_id, name, line)
    if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
        batch.bad(line, _("cli.batch.bad_columns"), family)
        return
    if family is None:
        batch.bad(line, _("cli.batch.no_family"), None)
        return
    try:
        uai = validate_uai(key[0])
        if uai not in known:
            known[uai] = service.find_establishment(uai)
        if known[uai] is None:
            raise CliError("unknown_establishment", uai=uai,
                           hint=hint if hint is not None else _("cli.add_establishment"))
        check_text("responsable_nom", name)
        child = Child(_cell(row, "eleve_id"), _cell(row, "eleve_prenom"),
                      _cell(row, "eleve_nom"), uai)
    except InvalidInput as error:
        column = _CSV_FIELDS.get(error.field, error.field)
        batch.bad(line, f"{error_text(error.code, {'field': column})} ({error.code})", family)
        return
    except CliError as error:
        batch.bad(line, f"{error_text(error.code, error.fields)} ({error.code})", family)
        return
    if name != family.name:
        batch.bad(line, _("cli.batch.other_name", line=family.first_line), family)
        return
    if child.id in family.child_lines:
        batch.bad(line, _("cli.batch.pupil_twice", id=child.id,
                          line=family.child_lines[child.id]), family)
        return
    seen = batch.pupils.get(child.id)
    if seen is not None and seen[0] != child:
        batch.bad(line, _("cli.batch.pupil_differs", id=child.id, line=seen[1]), family)
        return
    batch.pupils.setdefault(child.id, (child, line))
    family.children.append(child)
    family.child_lines[child.id] = line


def _read_batch(service: MergeService, path: Path, encoding: str, hint: str | None) -> _Batch:
    with path.open(encoding=encoding, newline="") as handle:
        header = handle.readline()
        delimiter = ";" if header.count(";") > header.count(",") else ","
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = [c.strip() for c in reader.fieldnames or ()]
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise CliError("invalid_csv", detail=_("cli.batch.missing_columns",
                                                   missing=", ".join(missing),
                                                   expected=",".join(CSV_COLUMNS)))
        reader.fieldnames = columns
        batch = _Batch()
        known: dict[str, Establishment | None] = {}
        try:
            for row in reader:
                _check_row(service, batch, row, reader.line_num, known, hint)
        except (csv.Error, UnicodeDecodeError) as error:
            raise CliError("invalid_csv",
                           detail=_("cli.batch.line", line=reader.line_num + 1,
                                    message=error)) from None
    return batch


class Output(Protocol):
    """Where a command writes: a text stream (a file, ``sys.stdout``, a Django command's)."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...

    def isatty(self) -> bool: ...


class _Progress:
    """A progress bar on standard error (a line every tenth when it is not a terminal)."""

    def __init__(self, total: int, stream: Output, label: str | None = None) -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self._shown = -1

    def after(self, before: int) -> Callable[[int], None]:
        """A progress callback for a batch that follows *before* letters already issued."""
        return lambda done: self.update(before + done)

    def update(self, done: int) -> None:
        step = done * (100 if self.tty else 10) // max(1, self.total)
        if step == self._shown and done != self.total:
            return
        self._shown = step
        width = 30
        filled = width * done // max(1, self.total)
        bar = "█" * filled + "·" * (width - filled)
        text = f"{self.label or _('cli.batch.progress')} [{bar}] {done}/{self.total}"
        if self.tty:
            end = "\n" if done == self.total else ""
            print(f"\r{text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


def _write_letter(folder: Path, letter: NotificationLetter) -> Path:
    path = folder / f"{letter.login}.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(messages.render_letter(letter))
    return path


def cmd_issue_batch(session: _Session) -> int:
    args = session.args
    session.require_db()
    return issue_batch(session.service, Path(args.csv), Path(args.out), encoding=args.encoding,
                       workers=args.workers, out=session.out, err=session.err)


def issue_batch(
    service: MergeService,
    csv_path: Path,
    folder: Path,
    *,
    encoding: str = "utf-8-sig",
    workers: int | None = None,
    out: Output | None = None,
    err: Output | None = None,
    add_establishment: str | None = ADD_ESTABLISHMENT,
) -> int:
    """Issue the letters of a school's CSV into *folder*, as ``issue-batch`` does.

    The establishments named in the CSV must be in the service's store.
    Every row is checked first; the families without a bad row are issued
    (hashing on *workers* processes), each letter written to
    ``folder/<login>.txt`` with an index ``folder/courriers.csv``.  Returns
    0, or raises :class:`CliError` (``folder_not_empty``, ``invalid_csv``,
    ``bad_rows`` after issuing the good families).  *add_establishment*
    tells how to add an establishment the CSV names but the store lacks.
    Texts and letters are in the language of :func:`account_merge.messages.get_language`.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CliError("folder_not_empty", EXIT_USAGE, path=str(folder))
    batch = _read_batch(service, csv_path, encoding, add_establishment)
    for line, problem in sorted(batch.errors):
        print(_("cli.batch.line", line=line, message=problem), file=err)
    for family in batch.refused:
        lines = ", ".join(str(n) for n in sorted({family.first_line, *family.bad_lines,
                                                   *family.child_lines.values()}))
        print(_("cli.batch.family_refused", id=family.responsable_id, uai=family.uai,
                lines=lines), file=err)
    good = batch.good
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    progress = _Progress(len(good), err)
    progress.update(0)
    issued = 0
    with (folder / "courriers.csv").open("x", encoding="utf-8", newline="") as index_file:
        index = csv.writer(index_file)
        index.writerow(["uai", "responsable_id", "responsable_nom", "identifiant",
                        "compte_id", "fichier"])
        by_uai: dict[str, list[_Family]] = {}
        for family in good:
            by_uai.setdefault(family.uai, []).append(family)
        for uai, families in by_uai.items():
            establishment = _stored_establishment(service, uai, add_establishment)
            letters: Iterator[NotificationLetter] = service.issue_accounts(
                establishment, ((f.name, f.children) for f in families), workers=workers,
                progress=progress.after(issued))
            for family, letter in zip(families, letters, strict=True):
                path = _write_letter(folder, letter)
                index.writerow([uai, family.responsable_id, family.name, letter.login,
                                letter.account_id, path.name])
                index_file.flush()
                issued += 1
    print(_("cli.batch.done", count=issued, folder=folder, index=folder / "courriers.csv"),
          file=out)
    if batch.errors:
        raise CliError("bad_rows", rows=len({line for line, _problem in batch.errors}),
                       refused=len(batch.refused), issued=issued)
    return 0


# -- the parser --------------------------------------------------------------------------


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


class _Parser(argparse.ArgumentParser):
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(_("cli.positive_expected", text=repr(text)))
    return value


def _common() -> _Parser:
    """--db, --lang and --argon2, accepted before or after the subcommand."""
    common = _Parser(help_option=False)
    common.add_argument(
        "--db", metavar=_("cli.metavar.file"), default=argparse.SUPPRESS,
        help=_("cli.db_help", env=ENV_DB, default=DEFAULT_DB))
    common.add_argument(
        "--lang", choices=messages.LANGUAGES, default=argparse.SUPPRESS,
        help=_("cli.lang_help", env=ENV_LANG))
    common.add_argument("--argon2", choices=ARGON2_PROFILES, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    return common


def _example(*lines: str) -> str:
    return _("cli.example") + "\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``account-merge`` and its subcommands, in the current language."""
    common = _common()
    parser = _Parser(
        prog=PROG, parents=[common],
        description=_("cli.description"),
        epilog=_example("account-merge demo", "account-merge children claire.robert")
        + "\n\n" + _("cli.command_help"),
    )
    commands = parser.add_subparsers(title=_("cli.commands"), metavar=_("cli.metavar.command"),
                                     required=True)

    def command(name: str, handler: Callable[[_Session], int], example: str,
                description: bool = True) -> argparse.ArgumentParser:
        """A subcommand whose texts are ``cli.<name>.summary`` and ``.description``."""
        key = "batch" if name == "issue-batch" else name
        summary = _(f"cli.{key}.summary")
        sub: argparse.ArgumentParser = commands.add_parser(
            name, parents=[common], help=summary,
            description=_(f"cli.{key}.description", columns=",".join(CSV_COLUMNS))
            if description else summary,
            epilog=_example(example))
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", cmd_demo, "account-merge --db demo.sqlite3 demo")
    demo.add_argument("--force", action="store_true", help=_("cli.demo.force"))

    add_example = 'account-merge establishment add 0869999B "Collège des Trois Rivières"'
    establishment = commands.add_parser(
        "establishment", parents=[common], help=_("cli.establishment.summary"),
        description=_("cli.establishment.description"), epilog=_example(add_example))
    establishment_commands = establishment.add_subparsers(
        title=_("cli.commands"), metavar=_("cli.metavar.command"), required=True)
    add = establishment_commands.add_parser(
        "add", parents=[common], help=_("cli.establishment.add.summary"),
        description=_("cli.establishment.add.description"), epilog=_example(add_example))
    add.set_defaults(handler=cmd_establishment_add)
    add.add_argument("uai", metavar="UAI", help=_("cli.establishment.add.uai"))
    add.add_argument("name", metavar=_("cli.metavar.name"), help=_("cli.establishment.add.name"))

    issue = command(
        "issue", cmd_issue,
        'account-merge issue --uai 0869999B --name "Claire Robert" --child D0001:Dylan:Robert',
        description=False)
    issue.add_argument("--uai", required=True, help=_("cli.issue.uai"))
    issue.add_argument("--name", required=True, metavar=_("cli.metavar.name"),
                       help=_("cli.issue.name"))
    issue.add_argument("--child", action="append", metavar=_("cli.metavar.child"),
                       help=_("cli.issue.child"))
    issue.add_argument("--role", choices=[r.value for r in Role], default=Role.RESPONSABLE.value,
                       help=_("cli.issue.role"))
    issue.add_argument("--email", help=_("cli.issue.email"))

    batch = command("issue-batch", cmd_issue_batch,
                    "account-merge issue-batch eleves.csv --out courriers/")
    batch.add_argument("csv", metavar="CSV", help=_("cli.batch.csv"))
    batch.add_argument("--out", required=True, metavar=_("cli.metavar.folder"),
                       help=_("cli.batch.out"))
    batch.add_argument("--workers", type=_positive, default=default_workers(), metavar="N",
                       help=_("cli.batch.workers"))
    batch.add_argument("--encoding", default="utf-8-sig", metavar=_("cli.metavar.encoding"),
                       help=_("cli.batch.encoding"))

    activate = command("activate", cmd_activate, "account-merge activate claire.robert")
    activate.add_argument("login", metavar=_("cli.metavar.login"))
    activate.add_argument("--email", help=_("cli.issue.email"))

    merge = command("merge", cmd_merge, "account-merge merge claire.robert claire.robert.42")
    merge.add_argument("principal", metavar="PRINCIPAL", help=_("cli.merge.principal"))
    merge.add_argument("login", metavar=_("cli.metavar.login"), help=_("cli.merge.login"))

    children = command("children", cmd_children, "account-merge children claire.robert",
                       description=False)
    children.add_argument("account", metavar=_("cli.metavar.login_or_id"))

    split = command("split", cmd_split, "account-merge split 0869999B claire.robert")
    split.add_argument("uai", metavar="UAI")
    split.add_argument("account", metavar=_("cli.metavar.account"), help=_("cli.split.account"))

    reissue = command("reissue", cmd_reissue, "account-merge reissue 0869999B claire.robert")
    reissue.add_argument("uai", metavar="UAI")
    reissue.add_argument("account", metavar=_("cli.metavar.account"),
                         help=_("cli.reissue.account"))

    deliver = command("deliver-notices", cmd_deliver_notices,
                      "account-merge deliver-notices --smtp smtp.example.org --starttls"
                      " --from ne-pas-repondre@ent.example")
    where = deliver.add_mutually_exclusive_group(required=True)
    where.add_argument("--smtp", metavar=_("cli.metavar.host"), help=_("cli.deliver.smtp"))
    where.add_argument("--folder", metavar=_("cli.metavar.folder"),
                       help=_("cli.deliver.folder"))
    deliver.add_argument("--from", dest="sender", required=True,
                         metavar=_("cli.metavar.address"), help=_("cli.deliver.sender"))
    deliver.add_argument("--port", type=_positive, metavar="N", help=_("cli.deliver.port"))
    tls = deliver.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help=_("cli.deliver.starttls"))
    tls.add_argument("--tls", action="store_true", help=_("cli.deliver.tls"))
    deliver.add_argument("--user", metavar=_("cli.metavar.user"),
                         help=_("cli.deliver.user", env=ENV_SMTP_PASSWORD))
    deliver.add_argument("--limit", type=_positive, default=100, metavar="N",
                         help=_("cli.deliver.limit"))

    audit = command("audit", cmd_audit, "account-merge audit --account claire.robert --limit 20",
                    description=False)
    audit.add_argument("--account", metavar=_("cli.metavar.account"), help=_("cli.audit.account"))
    audit.add_argument("--limit", type=_positive, default=50, metavar="N",
                       help=_("cli.audit.limit"))

    events = command("events", cmd_events, "account-merge events --limit 10 --mark-published",
                     description=False)
    events.add_argument("--limit", type=_positive, default=100, metavar="N",
                        help=_("cli.events.limit"))
    events.add_argument("--mark-published", action="store_true", help=_("cli.events.mark"))

    purge = command("purge", cmd_purge, "account-merge purge --dry-run")
    purge.add_argument("--dry-run", action="store_true", help=_("cli.purge.dry_run"))
    export = command("export", cmd_export,
                     "account-merge export claire.robert --out claire.robert.json")
    export.add_argument("account", metavar=_("cli.metavar.account"),
                        help=_("cli.export.account"))
    export.add_argument("--out", required=True, metavar=_("cli.metavar.file"),
                        help=_("cli.export.out"))
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
    session: _Session | None = None
    try:
        args = parser.parse_args(argv)
        session = _Session(args)
        handler: Callable[[_Session], int] = args.handler
        return handler(session)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except CliError as error:
        print(describe(error.code, error.fields), file=sys.stderr)
        return error.status
    except AccountMergeError as error:
        print(describe(error.code, _library_fields(error)), file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        found = next((key for kind, key in _OS_ERRORS.items() if isinstance(error, kind)), None)
        detail = _(found) if found else error.strerror or type(error).__name__
        print(describe("file_error", {"detail": detail, "path": error.filename}),
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        print(describe("interrupted", {}), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if session is not None:
            session.close()
