"""The ``flask account-merge`` commands, registered by ``init_app``.

What they print (letters, reports, errors) is in French unless ``--lang
en`` or ``ACCOUNT_MERGE_LANG=en``, as with the ``account-merge`` command
line, whose jobs they share (:mod:`account_merge.registers`); their help
is English.  In session mode they use
:attr:`~account_merge.contrib.flask.AccountMergeState.command_service`,
whose use cases commit their own transactions.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from flask.cli import AppGroup

from account_merge import messages
from account_merge.contrib.flask import get_state
from account_merge.domain.establishment import Establishment
from account_merge.exceptions import AccountMergeError, AccountNotFound, InvalidInput
from account_merge.ports import Mailer
from account_merge.registers import (
    EXIT_ERROR,
    JobError,
    ProgressBar,
    ask,
    describe,
    describe_os_error,
    issue_batch,
    open_register,
    sync_file,
)
from account_merge.service import MergeService

__all__ = ["cli"]

cli = AppGroup("account-merge", help="account_merge: its tables, establishments, letters, "
                                     "the register, notices and retention.")


@cli.command("create-schema")
def _create_schema_command() -> None:
    """Create the library's tables if missing (apps without migrations)."""
    get_state().create_schema()
    click.echo("account_merge: schema ready")


@cli.command("upgrade-schema")
def _upgrade_schema_command() -> None:
    """Create missing tables, upgrade those of an earlier release (apps without migrations)."""
    for step in get_state().upgrade_schema():
        click.echo(f"account_merge: {step}")
    click.echo("account_merge: schema up to date")


# What the commands print (letters, reports, errors) is in French unless --lang en or
# ACCOUNT_MERGE_LANG=en, as with the account-merge command line; their help is English.


class _CommandFailed(click.ClickException):
    """A command's error: one line on standard error, ``Erreur : <message> (<code>)``."""

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def _language_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--lang", "language", type=click.Choice(messages.LANGUAGES),
        envvar="ACCOUNT_MERGE_LANG", show_envvar=True, default=messages.DEFAULT_LANGUAGE,
        help="Language of what the command prints.")(command)


@contextlib.contextmanager
def _job(language: str) -> Iterator[None]:
    """Run a command's work in *language*; its errors end the command with one line."""
    with messages.using_language(language):
        try:
            yield
        except JobError as error:
            raise _CommandFailed(describe(error.code, error.fields)) from None
        except AccountMergeError as error:
            fields = {k: v for k, v in vars(error).items() if isinstance(v, str | int)}
            raise _CommandFailed(describe(error.code, fields)) from None
        except OSError as error:
            raise _CommandFailed(describe_os_error(error)) from None


def _fail(code: str, **fields: object) -> NoReturn:
    raise JobError(code, EXIT_ERROR, **fields)


def _establishment(service: MergeService, uai: str) -> Establishment:
    """The establishment the store knows under *uai*, or ``unknown_establishment``."""
    from account_merge.domain.establishment import validate_uai  # noqa: PLC0415

    found = service.find_establishment(validate_uai(uai))
    if found is None:
        _fail("unknown_establishment", uai=uai, hint=messages.message("flask.add_establishment"))
    return found


def _account_id(service: MergeService, reference: str) -> str:
    """The id of the account whose login or id is *reference*."""
    try:
        return service.get_account(reference).id
    except (AccountNotFound, InvalidInput):
        return service.find_account(reference).id


_establishment_group = AppGroup("establishment", help="The establishments the store serves.")
cli.add_command(_establishment_group)


@_establishment_group.command("add")
@click.argument("uai")
@click.argument("name")
@_language_option
def _establishment_add_command(uai: str, name: str, language: str) -> None:
    """Register the establishment UAI (or rename it): issue and reissue need it."""
    with _job(language):
        done = get_state().command_service.register_establishment(
            Establishment(uai, name), actor="flask account-merge")
        click.echo(messages.message("cli.establishment.added", uai=done.uai, name=done.name))


@cli.command("issue")
@click.argument("csv_file", metavar="CSV", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "folder", required=True, metavar="FOLDER",
              type=click.Path(file_okay=False, path_type=Path),
              help="A new or empty folder for the letters (one file each, and courriers.csv).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes hashing the passwords (default: one per CPU).")
@click.option("--encoding", default="utf-8-sig", show_default=True,
              help="Encoding of the CSV.")
@_language_option
def _issue_command(csv_file: Path, folder: Path, workers: int | None, encoding: str,
                   language: str) -> None:
    """Issue one account and its letter per family of a school's CSV.

    The CSV is the one of ``account-merge issue-batch``
    (uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom); its
    establishments must be registered (``flask account-merge establishment add``).
    """
    with _job(language):
        issue_batch(get_state().command_service, csv_file, folder, encoding=encoding,
                    workers=workers,
                    out=sys.stdout, err=sys.stderr,
                    add_establishment=messages.message("flask.add_establishment"))


@cli.command("reissue")
@click.argument("uai")
@click.argument("account", metavar="ACCOUNT")
@click.option("--out", "file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the letter to this new file (its owner only may read it).")
@_language_option
def _reissue_command(uai: str, account: str, file: Path | None, language: str) -> None:
    """Print a new letter for a lost one: same login, new provisional password.

    The establishment UAI reissues it for ACCOUNT (a login or an id); the old
    password stops working at once.  The letter is shown this once.
    """
    with _job(language):
        service = get_state().command_service
        establishment = _establishment(service, uai)
        account_id = _account_id(service, account)
        descriptor = None
        if file is not None:
            descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            letter = service.reissue_letter(establishment, account_id)
        except BaseException:
            if descriptor is not None:
                os.close(descriptor)
                os.unlink(file)  # type: ignore[arg-type]
            raise
        click.echo(messages.message("cli.reissue.done", uai=establishment.uai,
                                    login=letter.login, id=letter.account_id), err=True)
        text = messages.render_letter(letter)
        if descriptor is None:
            click.echo(text, nl=False)
            return
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)


@cli.command("deliver-notices")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Notices sent at most.")
@click.option("--smtp", metavar="HOST",
              help="Send through this SMTP server (default: the mailer given to init_app).")
@click.option("--port", type=click.IntRange(min=1), help="The SMTP server's port.")
@click.option("--from", "sender", metavar="ADDRESS", help="The sender's address (with --smtp).")
@click.option("--starttls", is_flag=True, help="STARTTLS (with --smtp).")
@click.option("--tls", is_flag=True, help="Implicit TLS (with --smtp).")
@click.option("--user", metavar="USER", help="SMTP user; the password is read from "
              "ACCOUNT_MERGE_SMTP_PASSWORD, or asked.")
@_language_option
def _deliver_notices_command(limit: int, smtp: str | None, port: int | None,
                             sender: str | None, starttls: bool, tls: bool, user: str | None,
                             language: str) -> None:
    """Send the pending notices (reset links, confirmations, merges...): run it periodically."""
    with _job(language):
        state = get_state()
        mailer: Mailer
        if smtp is not None:
            from account_merge.mailers import SmtpMailer  # noqa: PLC0415

            if sender is None:
                raise click.UsageError("--smtp needs --from")
            password = None
            if user is not None:
                password = os.environ.get("ACCOUNT_MERGE_SMTP_PASSWORD") or click.prompt(
                    messages.message("cli.prompt.smtp_password").rstrip(": \u00a0"),
                    hide_input=True)
            mailer = SmtpMailer(smtp, port, sender=sender, starttls=starttls, implicit_tls=tls,
                                username=user, password=password)
        elif state.mailer is not None:
            mailer = state.mailer
        else:
            raise click.UsageError("no mailer: give --smtp HOST --from ADDRESS, or "
                                   "init_app(app, mailer=...)")
        sent = state.command_service.deliver_notices(mailer, limit, language=language)
        click.echo(messages.message("cli.deliver.done", count=sent))




@cli.command("sync")
@click.argument("uai")
@click.argument("register_file", metavar="FILE",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "folder", metavar="FOLDER", type=click.Path(file_okay=False,
                                                                   path_type=Path),
              help="A new or empty folder for the new responsables' letters.")
@click.option("--format", "kind", type=click.Choice(["csv", "siecle"]),
              help="The file's format (default: SIECLE for .xml, else CSV).")
@click.option("--eleves", metavar="FILE", help="SIECLE's ElevesSansAdresses.xml (default: "
              "beside the register).")
@click.option("--all-responsables", is_flag=True,
              help="SIECLE: every responsable, not only the legal ones.")
@click.option("--partial", is_flag=True,
              help="The file is a delta: only the responsables it lists change.")
@click.option("--dry-run", is_flag=True, help="Show the preview, apply nothing.")
@click.option("--yes", is_flag=True, help="Apply without asking.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes hashing the new letters' passwords (default: one per CPU).")
@_language_option
def _sync_command(uai: str, register_file: Path, folder: Path | None, kind: str | None,
                  eleves: str | None, all_responsables: bool, partial: bool, dry_run: bool,
                  yes: bool, workers: int | None, language: str) -> None:
    """Sync the establishment UAI's accounts with its register (SIECLE's XML or a CSV).

    The preview is printed as a table, then asked about (unless --yes or
    --dry-run); the new responsables' letters are written to --out.  See
    docs/register.md.
    """
    with _job(language):
        service = get_state().command_service
        establishment = _establishment(service, uai)
        register = open_register(register_file, establishment.uai, kind=kind, eleves=eleves,
                                 everyone=all_responsables)
        sync_file(service, establishment, register, folder=folder, partial=partial, yes=yes,
                  dry_run=dry_run, workers=workers,
                  confirm=lambda: ask(messages.message("sync.confirm"), out=sys.stdout),
                  out=sys.stdout, err=sys.stderr)


@cli.command("purge")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@_language_option
def _purge_command(dry_run: bool, language: str) -> None:
    """Delete what the retention policy says is due: run it every night (docs/privacy.md).

    In small batches: it may be stopped and run again; run twice in a row,
    the second run does nothing.
    """
    with _job(language):
        service = get_state().command_service
        progress = None
        if not dry_run and sys.stderr.isatty():
            total = service.purge(dry_run=True).handled
            progress = ProgressBar(total, sys.stderr,
                                   label=messages.message("cli.purge.progress")).update
        click.echo(messages.render_purge_report(service.purge(dry_run=dry_run,
                                                              progress=progress)))


@cli.command("export")
@click.argument("account", metavar="ACCOUNT")
@click.option("--out", "file", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The new file to write (readable by its owner only).")
@_language_option
def _export_command(account: str, file: Path, language: str) -> None:
    """Write everything the library keeps about ACCOUNT (a login or an id) as JSON (RGPD art. 15).

    Give the file to the account's holder only.
    """
    with _job(language):
        service = get_state().command_service
        account_id = _account_id(service, account)
        data = service.export_personal_data(account_id)
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        login = service.get_account(account_id).login
        click.echo(messages.message("cli.export.done", login=login, path=file))
