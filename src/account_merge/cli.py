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
import getpass
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import argon2

import account_merge
from account_merge import (
    Account,
    AccountMergeError,
    Argon2Verifier,
    Child,
    Establishment,
    MergeService,
    Role,
    Secret,
    exceptions,
    messages,
)
from account_merge.demo import play
from account_merge.domain.establishment import validate_uai
from account_merge.exceptions import AccountNotFound, InvalidInput
from account_merge.hashpool import default_workers
from account_merge.ports import Storage
from account_merge.registers import (
    SCHOOL_CSV_COLUMNS,
    JobError,
    ProgressBar,
    ask,
    describe,
    error_text,
    issue_batch,
    open_register,
    sync_file,
)

__all__ = ["MESSAGES", "CliError", "describe", "error_text", "issue_batch", "main", "open_register",
           "open_storage"]

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
    "bad_rows", "file_error", "interrupted", "letters_folder", "other_establishment",
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


#: An error of the command line itself (a code, its fields, an exit status);
#: the jobs on files raise it too (:mod:`account_merge.registers`).
CliError = JobError


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
        progress = ProgressBar(total, session.err, label=_("cli.purge.progress")).update
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


# -- issue-batch and sync ---------------------------------------------------------------

#: The columns of ``issue-batch`` (kept here for compatibility).
CSV_COLUMNS = SCHOOL_CSV_COLUMNS


def cmd_issue_batch(session: _Session) -> int:
    args = session.args
    session.require_db()
    return issue_batch(session.service, Path(args.csv), Path(args.out), encoding=args.encoding,
                       workers=args.workers, out=session.out, err=session.err,
                       add_establishment=ADD_ESTABLISHMENT)


def cmd_sync(session: _Session) -> int:
    args = session.args
    session.require_db()
    establishment = session.establishment(args.uai)
    register = open_register(Path(args.file), establishment.uai, kind=args.format,
                             eleves=args.eleves, everyone=args.all_responsables)
    sync_file(session.service, establishment, register,
              folder=Path(args.out) if args.out else None, partial=args.partial, yes=args.yes,
              dry_run=args.dry_run, workers=args.workers,
              confirm=lambda: ask(_("sync.confirm"), out=session.out),
              out=session.out, err=session.err)
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

    sync = command("sync", cmd_sync,
                   "account-merge sync 0869999B ResponsablesAvecAdresses.xml --out courriers/")
    sync.add_argument("uai", metavar="UAI", help=_("cli.sync.uai"))
    sync.add_argument("file", metavar=_("cli.metavar.file"), help=_("cli.sync.file"))
    sync.add_argument("--format", choices=("csv", "siecle"), help=_("cli.sync.format"))
    sync.add_argument("--eleves", metavar=_("cli.metavar.file"), help=_("cli.sync.eleves"))
    sync.add_argument("--all-responsables", action="store_true",
                      help=_("cli.sync.all_responsables"))
    sync.add_argument("--partial", action="store_true", help=_("cli.sync.partial"))
    sync.add_argument("--dry-run", action="store_true", help=_("cli.sync.dry_run"))
    sync.add_argument("--yes", action="store_true", help=_("cli.sync.yes"))
    sync.add_argument("--out", metavar=_("cli.metavar.folder"), help=_("cli.sync.out"))
    sync.add_argument("--workers", type=_positive, default=default_workers(), metavar="N",
                      help=_("cli.batch.workers"))

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
