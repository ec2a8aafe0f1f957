"""account-merge: the command line of account_merge, for establishments and testers.

``account-merge demo`` plays the story of the regroupement de comptes on a
SQLite file; the other subcommands act on that file as an establishment's
operator would (issue accounts and letters, split a merge) or as a parent
would (activate, merge, list the children).  See ``docs/cli.md``.

Passwords are never read from the command line: a hidden prompt asks for
them, or, when standard input is not a terminal, they are read from it, one
per line.  Errors print one French line ending with the error's code, on
standard error; the exit status is 1 for an error of the library or of the
data, 2 for a wrong use of the command.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TextIO

import argon2

import account_merge
from account_merge import (
    Account,
    AccountMergeError,
    AccountStatus,
    Argon2Verifier,
    Child,
    Establishment,
    MergeService,
    NotificationLetter,
    Role,
    Secret,
)
from account_merge.demo import play
from account_merge.domain.establishment import validate_uai
from account_merge.domain.validation import check_text
from account_merge.exceptions import AccountNotFound, InvalidInput
from account_merge.hashpool import default_workers
from account_merge.messages import FALLBACK, FRENCH
from account_merge.ports import Storage

__all__ = ["MESSAGES", "CliError", "describe", "issue_batch", "main", "open_storage"]

PROG = "account-merge"
DEFAULT_DB = "account-merge.sqlite3"
ENV_DB = "ACCOUNT_MERGE_DB"
ENV_ARGON2 = "ACCOUNT_MERGE_ARGON2"
ARGON2_PROFILES = ("default", "cheapest")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The French message for each error code: the library's (from
#: :mod:`account_merge.messages`) and the command line's own.
#: ``{name}`` fields are filled from the error's attributes.
MESSAGES: dict[str, str] = {
    **{code: text for code, text in FRENCH.items() if code != FALLBACK},
    # the command line's own
    "usage": "{detail}",
    "unknown_establishment": "établissement inconnu : {uai} ({hint})",
    "database_missing": (
        "base introuvable : {path} (créez-la avec « account-merge demo » ou "
        "« account-merge establishment add »)"
    ),
    "database_exists": (
        "la base {path} existe déjà ; choisissez un autre fichier avec --db, "
        "ou --force pour la remplacer"
    ),
    "folder_not_empty": "le dossier {path} n'est pas vide ; choisissez un dossier vide ou nouveau",
    "password_missing": "mot de passe attendu sur l'entrée standard (un par ligne)",
    "password_mismatch": "les deux saisies du nouveau mot de passe diffèrent",
    "invalid_csv": "fichier CSV inutilisable : {detail}",
    "bad_rows": (
        "{rows} ligne(s) invalide(s) : {refused} famille(s) non traitée(s), "
        "{issued} courrier(s) émis"
    ),
    "file_error": "{detail} : {path}",
    "interrupted": "interrompu",
}

_OS_ERRORS: dict[type[OSError], str] = {
    FileNotFoundError: "fichier introuvable",
    FileExistsError: "le fichier existe déjà",
    PermissionError: "permission refusée",
    IsADirectoryError: "c'est un dossier",
    NotADirectoryError: "ce n'est pas un dossier",
}

_STATUS = {
    AccountStatus.PROVISIONAL: "provisoire",
    AccountStatus.ACTIVE: "actif",
    AccountStatus.MERGED: "regroupé",
}

_ARGPARSE_FRENCH = (
    ("the following arguments are required:", "arguments obligatoires manquants :"),
    ("unrecognized arguments:", "arguments non reconnus :"),
    ("invalid choice:", "choix invalide :"),
    ("(choose from", "(choix possibles :"),
    ("expected one argument", "une valeur attendue"),
    ("invalid int value:", "entier invalide :"),
    ("not allowed with argument", "incompatible avec l'argument"),
)


class CliError(Exception):
    """An error of the command line itself: a code, its fields, an exit status."""

    def __init__(self, code: str, status: int = EXIT_ERROR, **fields: object) -> None:
        self.code = code
        self.status = status
        self.fields = fields
        super().__init__(code)


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "?"


def describe(code: str, fields: dict[str, object]) -> str:
    """The French line for an error: ``Erreur : <message> (<code>)``."""
    template = MESSAGES.get(code, code.replace("_", " "))
    return f"Erreur : {template.format_map(_Fields(fields))} ({code})"


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
                           detail=f"profil argon2 inconnu : {profile} "
                                  f"(choix possibles : {', '.join(ARGON2_PROFILES)})")
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
            self._service = MergeService(self.storage, make_verifier(self.profile))
        return self._service

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()

    # -- reading ------------------------------------------------------------------
    def establishment(self, uai: str) -> Establishment:
        """The establishment stored under *uai*, or ``unknown_establishment``."""
        return _stored_establishment(self.storage, uai)

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
            again = self.password("Confirmez le nouveau mot de passe : ")
            if again.reveal() != password.reveal():
                raise CliError("password_mismatch", EXIT_USAGE)
        return password


#: How to add an unknown establishment, in ``unknown_establishment``.
ADD_ESTABLISHMENT = "ajoutez-le avec « account-merge establishment add »"


def _stored_establishment(storage: Storage, uai: str,
                          hint: str = ADD_ESTABLISHMENT) -> Establishment:
    """The establishment stored under *uai*, or ``unknown_establishment``."""
    uai = validate_uai(uai)
    with storage.unit_of_work(write=False) as uow:
        found = uow.get_establishment(uai)
    if found is None:
        raise CliError("unknown_establishment", uai=uai, hint=hint)
    return found


# -- output helpers ------------------------------------------------------------------


def _print_children(session: _Session, account: Account) -> None:
    out = session.out
    attached = session.service.attached_children(account.id)
    print("Enfants rattachés au compte", file=out)
    if not attached:
        print("  (aucun enfant)", file=out)
    for item in attached:
        child = item.child
        via = " · par regroupement" if item.via_merge else ""
        print(f"  {child.first_name} {child.last_name}", file=out)
        print(f"    Responsable : {item.responsable} · élève {child.id} · "
              f"{child.establishment_uai}{via}", file=out)


def _account_line(account: Account) -> str:
    return (f"Compte {account.login} — {account.display_name} "
            f"({_STATUS[account.status]}, {account.role.value}, id {account.id})")


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
    establishment = Establishment(session.args.uai, session.args.name)
    with session.storage.unit_of_work() as uow:
        uow.put_establishment(establishment)
        uow.commit()
    print(f"Établissement enregistré : {establishment.uai} {establishment.name}",
          file=session.out)
    return 0


def _parse_child(spec: str, uai: str) -> Child:
    parts = spec.split(":")
    if len(parts) != 3:
        raise CliError("usage", EXIT_USAGE,
                       detail=f"--child attend ID:Prénom:Nom, pas {spec!r}")
    return Child(parts[0], parts[1], parts[2], uai)


def cmd_issue(session: _Session) -> int:
    args = session.args
    session.require_db()
    establishment = session.establishment(args.uai)
    children = [_parse_child(spec, establishment.uai) for spec in args.child or ()]
    letter = session.service.issue_account(
        establishment, display_name=args.name, children=children,
        role=Role(args.role), email=args.email)
    print(letter.render(), end="", file=session.out)
    print(f"Compte {letter.login} créé (id {letter.account_id}).", file=session.err)
    return 0


def cmd_activate(session: _Session) -> int:
    session.require_db()
    login = session.args.login
    provisional = session.password("Mot de passe provisoire : ")
    new = session.new_password("Nouveau mot de passe : ")
    account = session.service.activate(login, provisional, new, email=session.args.email)
    print(f"Compte {account.login} activé.", file=session.out)
    return 0


def cmd_merge(session: _Session) -> int:
    session.require_db()
    args, service = session.args, session.service
    password = session.password(f"Mot de passe du compte principal {args.principal} : ")
    principal = service.authenticate(args.principal, password)
    other = session.password(
        f"Mot de passe (ou mot de passe provisoire du courrier) de {args.login} : ")
    receipt = service.merge(principal.id, args.login, other)
    out = session.out
    print("CONFIRMATION DE REGROUPEMENT DE COMPTES", file=out)
    print(file=out)
    for sentence in re.split(r"(?<=\.) ", receipt.message):
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
        print(f"Regroupé dans le compte {account.login} (id {account.id}) :", file=session.out)
    _print_children(session, account)
    return 0


def cmd_split(session: _Session) -> int:
    session.require_db()
    establishment = session.establishment(session.args.uai)
    account = session.account(session.args.account)
    receipt = session.service.split(establishment, account.id)
    out = session.out
    moved = ", ".join(f"{c.first_name} {c.last_name}" for c in receipt.moved)
    print(f"Regroupement cassé par {establishment.uai} : {moved} rattaché(s) à un "
          f"nouveau compte (id {receipt.new_account_id}).", file=out)
    print(file=out)
    print(receipt.letter.render(), end="", file=out)
    return 0


def cmd_audit(session: _Session) -> int:
    session.require_db()
    account_id = None
    if session.args.account is not None:
        account_id = session.account(session.args.account).id
    for record in session.service.audit_trail(account_id, session.args.limit):
        fields = [record.at.isoformat(timespec="seconds"), record.action.value, record.outcome]
        for label, value in (("acteur", record.actor), ("compte", record.account_id),
                             ("identifiant", record.login), ("détail", record.detail)):
            if value is not None:
                fields.append(f"{label}={value}")
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
        print(f"{len(entries)} événement(s) marqué(s) publié(s).", file=session.err)
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


def _check_row(storage: Storage, batch: _Batch, row: dict[str | None, Any], line: int,
               known: dict[str, Establishment | None], hint: str) -> None:
    """Check one row; a bad row is reported with its line and spoils its family."""
    responsable_id = _cell(row, "responsable_id")
    name = _cell(row, "responsable_nom")
    key = (_cell(row, "uai").upper(), responsable_id)
    family = batch.families.get(key)
    if family is None and responsable_id:
        family = batch.families[key] = _Family(key[0], responsable_id, name, line)
    if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
        batch.bad(line, "nombre de colonnes incorrect", family)
        return
    if family is None:
        batch.bad(line, "responsable_id vide : la ligne n'appartient à aucune famille", None)
        return
    try:
        uai = validate_uai(key[0])
        if uai not in known:
            with storage.unit_of_work(write=False) as uow:
                known[uai] = uow.get_establishment(uai)
        if known[uai] is None:
            raise CliError("unknown_establishment", uai=uai, hint=hint)
        check_text("responsable_nom", name)
        child = Child(_cell(row, "eleve_id"), _cell(row, "eleve_prenom"),
                      _cell(row, "eleve_nom"), uai)
    except InvalidInput as error:
        column = _CSV_FIELDS.get(error.field, error.field)
        batch.bad(line, describe(error.code, {"field": column}).removeprefix("Erreur : "),
                  family)
        return
    except CliError as error:
        batch.bad(line, describe(error.code, error.fields).removeprefix("Erreur : "), family)
        return
    if name != family.name:
        batch.bad(line, f"nom du responsable différent de la ligne {family.first_line}", family)
        return
    if child.id in family.child_lines:
        batch.bad(line, f"élève {child.id} déjà listé ligne {family.child_lines[child.id]}",
                  family)
        return
    seen = batch.pupils.get(child.id)
    if seen is not None and seen[0] != child:
        batch.bad(line, f"élève {child.id} décrit autrement ligne {seen[1]}", family)
        return
    batch.pupils.setdefault(child.id, (child, line))
    family.children.append(child)
    family.child_lines[child.id] = line


def _read_batch(storage: Storage, path: Path, encoding: str, hint: str) -> _Batch:
    with path.open(encoding=encoding, newline="") as handle:
        header = handle.readline()
        delimiter = ";" if header.count(";") > header.count(",") else ","
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = [c.strip() for c in reader.fieldnames or ()]
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise CliError("invalid_csv", detail=f"colonnes manquantes : {', '.join(missing)} "
                                                 f"(attendues : {','.join(CSV_COLUMNS)})")
        reader.fieldnames = columns
        batch = _Batch()
        known: dict[str, Establishment | None] = {}
        try:
            for row in reader:
                _check_row(storage, batch, row, reader.line_num, known, hint)
        except (csv.Error, UnicodeDecodeError) as error:
            raise CliError("invalid_csv",
                           detail=f"ligne {reader.line_num + 1} : {error}") from None
    return batch


class Output(Protocol):
    """Where a command writes: a text stream (a file, ``sys.stdout``, a Django command's)."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...

    def isatty(self) -> bool: ...


class _Progress:
    """A progress bar on standard error (a line every tenth when it is not a terminal)."""

    def __init__(self, total: int, stream: Output) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self._shown = -1

    def update(self, done: int) -> None:
        step = done * (100 if self.tty else 10) // max(1, self.total)
        if step == self._shown and done != self.total:
            return
        self._shown = step
        width = 30
        filled = width * done // max(1, self.total)
        bar = "█" * filled + "·" * (width - filled)
        text = f"Courriers [{bar}] {done}/{self.total}"
        if self.tty:
            end = "\n" if done == self.total else ""
            print(f"\r{text}", end=end, file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


def _write_letter(folder: Path, letter: NotificationLetter) -> Path:
    path = folder / f"{letter.login}.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(letter.render())
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
    add_establishment: str = ADD_ESTABLISHMENT,
) -> int:
    """Issue the letters of a school's CSV into *folder*, as ``issue-batch`` does.

    The establishments named in the CSV must be in the service's store.
    Every row is checked first; the families without a bad row are issued
    (hashing on *workers* processes), each letter written to
    ``folder/<login>.txt`` with an index ``folder/courriers.csv``.  Returns
    0, or raises :class:`CliError` (``folder_not_empty``, ``invalid_csv``,
    ``bad_rows`` after issuing the good families).  *add_establishment*
    tells how to add an establishment the CSV names but the store lacks.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CliError("folder_not_empty", EXIT_USAGE, path=str(folder))
    storage = service.storage
    batch = _read_batch(storage, csv_path, encoding, add_establishment)
    for line, message in sorted(batch.errors):
        print(f"ligne {line} : {message}", file=err)
    for family in batch.refused:
        lines = ", ".join(str(n) for n in sorted({family.first_line, *family.bad_lines,
                                                   *family.child_lines.values()}))
        print(f"famille {family.responsable_id} ({family.uai}) non traitée : lignes {lines}",
              file=err)
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
            establishment = _stored_establishment(storage, uai, add_establishment)
            letters: Iterator[NotificationLetter] = service.issue_accounts(
                establishment, ((f.name, f.children) for f in families), workers=workers)
            for family, letter in zip(families, letters, strict=True):
                path = _write_letter(folder, letter)
                index.writerow([uai, family.responsable_id, family.name, letter.login,
                                letter.account_id, path.name])
                index_file.flush()
                issued += 1
                progress.update(issued)
    print(f"{issued} courrier(s) écrit(s) dans {folder} (index : {folder / 'courriers.csv'}).",
          file=out)
    if batch.errors:
        raise CliError("bad_rows", rows=len({line for line, _ in batch.errors}),
                       refused=len(batch.refused), issued=issued)
    return 0


# -- the parser --------------------------------------------------------------------------


def _french(message: str) -> str:
    for english, french in _ARGPARSE_FRENCH:
        message = message.replace(english, french)
    return message


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def add_usage(self, usage: str | None, actions: Any, groups: Any,
                  prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups,
                          prefix="utilisation : " if prefix is None else prefix)


class _Parser(argparse.ArgumentParser):
    """An argument parser that speaks French and reports errors with a code."""

    def __init__(self, *args: Any, help_option: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs["add_help"] = False
        super().__init__(*args, **kwargs)
        self._positionals.title = "arguments"
        self._optionals.title = "options"
        if help_option:
            self.add_argument("-h", "--help", action="help",
                              help="affiche cette aide et quitte")

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CliError("usage", EXIT_USAGE, detail=_french(message))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"entier positif attendu, pas {text!r}")
    return value


def _common() -> _Parser:
    """--db and --argon2, accepted before or after the subcommand."""
    common = _Parser(help_option=False)
    common.add_argument(
        "--db", metavar="FICHIER", default=argparse.SUPPRESS,
        help=f"la base SQLite (défaut : ${ENV_DB}, sinon ./{DEFAULT_DB})")
    common.add_argument("--argon2", choices=ARGON2_PROFILES, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    return common


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``account-merge`` and its subcommands."""
    common = _common()
    parser = _Parser(
        prog=PROG, parents=[common],
        description="Regroupement de comptes responsables : démonstration, émission des\n"
                    "courriers, activation, regroupement et séparation de comptes, sur une\n"
                    "base SQLite.",
        epilog="Exemple :\n  account-merge demo\n  account-merge children claire.robert\n\n"
               "Aide d'une commande : account-merge COMMANDE --help",
    )
    commands = parser.add_subparsers(title="commandes", metavar="COMMANDE", required=True)

    def command(name: str, handler: Callable[[_Session], int], summary: str, example: str,
                description: str = "") -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, parents=[common], help=summary,
            description=(description or summary),
            epilog="Exemple :\n  " + example)
        sub.set_defaults(handler=handler)
        return sub

    demo = command(
        "demo", cmd_demo, "joue l'histoire du regroupement de comptes, en français",
        "account-merge --db demo.sqlite3 demo",
        "Joue l'histoire d'un regroupement de comptes comme le parent la voit : deux "
        "courriers\nd'un collège, l'activation du compte « Principal », le regroupement, "
        "la confirmation,\npuis la séparation par le collège.  La démonstration crée une "
        "base neuve et la laisse\nen place pour essayer les autres commandes ; elle refuse "
        "d'écraser une base existante\nnon vide, sauf avec --force.")
    demo.add_argument("--force", action="store_true",
                      help="remplace la base si elle existe déjà (elle est effacée)")

    establishment = commands.add_parser(
        "establishment", parents=[common], help="gère les établissements",
        description="Gère les établissements connus de la base.",
        epilog="Exemple :\n  account-merge establishment add 0869999B "
               "\"Collège des Trois Rivières\"")
    establishment_commands = establishment.add_subparsers(
        title="commandes", metavar="COMMANDE", required=True)
    add = establishment_commands.add_parser(
        "add", parents=[common], help="enregistre un établissement (ou renomme)",
        description="Enregistre un établissement, ou change son nom.  Crée la base si "
                    "elle n'existe pas.",
        epilog="Exemple :\n  account-merge establishment add 0869999B "
               "\"Collège des Trois Rivières\"")
    add.set_defaults(handler=cmd_establishment_add)
    add.add_argument("uai", metavar="UAI", help="l'UAI : 7 chiffres et une lettre de contrôle")
    add.add_argument("name", metavar="NOM", help="le nom affiché sur les courriers")

    issue = command(
        "issue", cmd_issue, "crée un compte et imprime son courrier de notification",
        "account-merge issue --uai 0869999B --name \"Claire Robert\" "
        "--child D0001:Dylan:Robert")
    issue.add_argument("--uai", required=True, help="l'établissement qui émet le courrier")
    issue.add_argument("--name", required=True, metavar="NOM",
                       help="le nom du titulaire du compte (le responsable)")
    issue.add_argument("--child", action="append", metavar="ID:PRÉNOM:NOM",
                       help="un enfant rattaché au compte (répétable)")
    issue.add_argument("--role", choices=[r.value for r in Role], default=Role.RESPONSABLE.value,
                       help="compte responsable (défaut) ou compte élève")
    issue.add_argument("--email", help="adresse électronique du titulaire")

    batch = command(
        "issue-batch", cmd_issue_batch,
        "crée les comptes et courriers d'un fichier CSV d'établissement",
        "account-merge issue-batch eleves.csv --out courriers/",
        "Crée un compte et un courrier par famille d'un CSV d'établissement.\n\n"
        f"Colonnes : {','.join(CSV_COLUMNS)}\n"
        "Une ligne par couple élève-responsable ; les lignes de même uai et responsable_id\n"
        "forment une famille, donc un courrier.  Séparateur « , » ou « ; ».  Toutes les\n"
        "lignes sont vérifiées d'abord : une famille dont une ligne est invalide n'est pas\n"
        "émise du tout (ses lignes sont signalées avec leur numéro), les autres le sont.\n"
        "Chaque courrier est écrit dans DOSSIER/<identifiant>.txt, avec un index\n"
        "DOSSIER/courriers.csv (sans mot de passe).  Le hachage des mots de passe\n"
        "provisoires est réparti sur tous les cœurs.  Statut 1 s'il y a des lignes invalides.")
    batch.add_argument("csv", metavar="CSV", help="le fichier exporté par l'établissement")
    batch.add_argument("--out", required=True, metavar="DOSSIER",
                       help="dossier (nouveau ou vide) où écrire les courriers")
    batch.add_argument("--workers", type=_positive, default=default_workers(), metavar="N",
                       help="processus de hachage (défaut : un par cœur)")
    batch.add_argument("--encoding", default="utf-8-sig", metavar="ENCODAGE",
                       help="encodage du CSV (défaut : utf-8, avec ou sans BOM)")

    activate = command(
        "activate", cmd_activate,
        "active un compte avec le mot de passe provisoire de son courrier",
        "account-merge activate claire.robert",
        "Active un compte : demande le mot de passe provisoire du courrier puis le nouveau\n"
        "mot de passe (deux fois au terminal).  Hors terminal, les lit sur l'entrée\n"
        "standard, un par ligne : printf '%s\\n' \"$PROVISOIRE\" \"$NOUVEAU\" | ...")
    activate.add_argument("login", metavar="IDENTIFIANT")
    activate.add_argument("--email", help="adresse électronique du titulaire")

    merge = command(
        "merge", cmd_merge, "regroupe un autre compte responsable dans le compte principal",
        "account-merge merge claire.robert claire.robert.42",
        "Regroupe le compte IDENTIFIANT dans le compte PRINCIPAL : demande le mot de passe\n"
        "du compte principal, puis celui de l'autre compte (le mot de passe provisoire de\n"
        "son courrier s'il n'a jamais été activé).  Hors terminal, les lit sur l'entrée\n"
        "standard, un par ligne.")
    merge.add_argument("principal", metavar="PRINCIPAL", help="identifiant du compte gardé")
    merge.add_argument("login", metavar="IDENTIFIANT", help="identifiant du compte à regrouper")

    children = command(
        "children", cmd_children, "liste les enfants rattachés à un compte",
        "account-merge children claire.robert")
    children.add_argument("account", metavar="IDENTIFIANT_OU_ID")

    split = command(
        "split", cmd_split,
        "casse un regroupement : l'établissement crée un nouveau compte et son courrier",
        "account-merge split 0869999B claire.robert",
        "Casse un regroupement pour l'établissement UAI : ses enfants arrivés dans le compte\n"
        "par un regroupement passent à un nouveau compte, dont le courrier est imprimé.")
    split.add_argument("uai", metavar="UAI")
    split.add_argument("account", metavar="COMPTE", help="identifiant ou id du compte")

    audit = command(
        "audit", cmd_audit, "affiche le journal d'audit, le plus ancien d'abord",
        "account-merge audit --account claire.robert --limit 20")
    audit.add_argument("--account", metavar="COMPTE",
                       help="seulement ce compte (identifiant ou id)")
    audit.add_argument("--limit", type=_positive, default=50, metavar="N",
                       help="nombre d'entrées, les dernières (défaut : 50)")

    events = command(
        "events", cmd_events, "affiche les événements non publiés, dans l'ordre",
        "account-merge events --limit 10 --mark-published")
    events.add_argument("--limit", type=_positive, default=100, metavar="N",
                        help="nombre d'événements (défaut : 100)")
    events.add_argument("--mark-published", action="store_true",
                        help="marque publiés les événements affichés")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``account-merge`` with *argv* (default: the process's arguments)."""
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
        detail = next((text for kind, text in _OS_ERRORS.items() if isinstance(error, kind)),
                      error.strerror or type(error).__name__)
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
