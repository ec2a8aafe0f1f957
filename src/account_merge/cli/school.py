"""The establishment's subcommands: its record, letters one by one or from a file,
the register's sync, splits and re-issued letters."""

from __future__ import annotations

from pathlib import Path

from account_merge import Child, Establishment, Role, messages
from account_merge.cli.commands import Commands, positive
from account_merge.cli.session import ADD_ESTABLISHMENT, EXIT_USAGE, CliError, Session, _
from account_merge.hashpool import default_workers
from account_merge.registers import ask, issue_batch, open_register, sync_file

__all__ = ["add_commands", "add_establishment_commands", "add_undo_commands"]


def cmd_establishment_add(session: Session) -> int:
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


def cmd_issue(session: Session) -> int:
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


def cmd_issue_batch(session: Session) -> int:
    args = session.args
    session.require_db()
    return issue_batch(session.service, Path(args.csv), Path(args.out), encoding=args.encoding,
                       workers=args.workers, out=session.out, err=session.err,
                       add_establishment=ADD_ESTABLISHMENT)


def cmd_sync(session: Session) -> int:
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


def cmd_split(session: Session) -> int:
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


def cmd_reissue(session: Session) -> int:
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


def add_establishment_commands(commands: Commands) -> None:
    """``establishment add``."""
    add_example = 'account-merge establishment add 0869999B "Collège des Trois Rivières"'
    establishment = commands.group("establishment", add_example)
    add = establishment.add("add", cmd_establishment_add, add_example, key="establishment.add")
    add.add_argument("uai", metavar="UAI", help=_("cli.establishment.add.uai"))
    add.add_argument("name", metavar=_("cli.metavar.name"), help=_("cli.establishment.add.name"))


def add_commands(commands: Commands) -> None:
    """``issue``, ``issue-batch`` and ``sync``: letters and the register."""
    issue = commands.add(
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

    batch = commands.add("issue-batch", cmd_issue_batch,
                         "account-merge issue-batch eleves.csv --out courriers/", key="batch")
    batch.add_argument("csv", metavar="CSV", help=_("cli.batch.csv"))
    batch.add_argument("--out", required=True, metavar=_("cli.metavar.folder"),
                       help=_("cli.batch.out"))
    batch.add_argument("--workers", type=positive, default=default_workers(), metavar="N",
                       help=_("cli.batch.workers"))
    batch.add_argument("--encoding", default="utf-8-sig", metavar=_("cli.metavar.encoding"),
                       help=_("cli.batch.encoding"))

    sync = commands.add(
        "sync", cmd_sync,
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
    sync.add_argument("--workers", type=positive, default=default_workers(), metavar="N",
                      help=_("cli.batch.workers"))


def add_undo_commands(commands: Commands) -> None:
    """``split`` and ``reissue``: what only the establishment undoes or re-issues."""
    split = commands.add("split", cmd_split, "account-merge split 0869999B claire.robert")
    split.add_argument("uai", metavar="UAI")
    split.add_argument("account", metavar=_("cli.metavar.account"), help=_("cli.split.account"))

    reissue = commands.add("reissue", cmd_reissue,
                           "account-merge reissue 0869999B claire.robert")
    reissue.add_argument("uai", metavar="UAI")
    reissue.add_argument("account", metavar=_("cli.metavar.account"),
                         help=_("cli.reissue.account"))
