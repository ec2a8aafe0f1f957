"""The ENT operator's subcommands: the demo, notices, the audit trail, events, and
retention (purge, a parent's data)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from account_merge import messages
from account_merge.cli.commands import Commands, positive
from account_merge.cli.session import ENV_SMTP_PASSWORD, EXIT_USAGE, CliError, Session, _
from account_merge.demo import play
from account_merge.registers import ProgressBar

__all__ = ["add_commands", "add_demo_command"]


def cmd_demo(session: Session) -> int:
    db = session.db
    if db.exists() and db.stat().st_size > 0:
        if not session.args.force:
            raise CliError("database_exists", EXIT_USAGE, path=str(db))
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    play(session.service, session.out, db=shlex.quote(str(db)))
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


def cmd_deliver_notices(session: Session) -> int:
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


def cmd_audit(session: Session) -> int:
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


def cmd_events(session: Session) -> int:
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


def cmd_purge(session: Session) -> int:
    session.require_db()
    service = session.service
    progress = None
    if not session.args.dry_run and session.err.isatty():
        # The bar needs a total: what a dry run finds (it changes nothing).
        total = service.purge(dry_run=True).handled
        progress = ProgressBar(total, session.err, label=_("cli.purge.progress")).update
    report = service.purge(dry_run=session.args.dry_run, progress=progress)
    print(messages.render_purge_report(report), file=session.out)
    return 0


def cmd_export(session: Session) -> int:
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


def add_demo_command(commands: Commands) -> None:
    """``demo``: the seed's story on a SQLite file."""
    demo = commands.add("demo", cmd_demo, "account-merge --db demo.sqlite3 demo")
    demo.add_argument("--force", action="store_true", help=_("cli.demo.force"))


def add_commands(commands: Commands) -> None:
    """``deliver-notices``, ``audit``, ``events``, ``purge`` and ``export``."""
    deliver = commands.add("deliver-notices", cmd_deliver_notices,
                           "account-merge deliver-notices --smtp smtp.example.org --starttls"
                           " --from ne-pas-repondre@ent.example")
    where = deliver.add_mutually_exclusive_group(required=True)
    where.add_argument("--smtp", metavar=_("cli.metavar.host"), help=_("cli.deliver.smtp"))
    where.add_argument("--folder", metavar=_("cli.metavar.folder"),
                       help=_("cli.deliver.folder"))
    deliver.add_argument("--from", dest="sender", required=True,
                         metavar=_("cli.metavar.address"), help=_("cli.deliver.sender"))
    deliver.add_argument("--port", type=positive, metavar="N", help=_("cli.deliver.port"))
    tls = deliver.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help=_("cli.deliver.starttls"))
    tls.add_argument("--tls", action="store_true", help=_("cli.deliver.tls"))
    deliver.add_argument("--user", metavar=_("cli.metavar.user"),
                         help=_("cli.deliver.user", env=ENV_SMTP_PASSWORD))
    deliver.add_argument("--limit", type=positive, default=100, metavar="N",
                         help=_("cli.deliver.limit"))

    audit = commands.add("audit", cmd_audit,
                         "account-merge audit --account claire.robert --limit 20",
                         description=False)
    audit.add_argument("--account", metavar=_("cli.metavar.account"),
                       help=_("cli.audit.account"))
    audit.add_argument("--limit", type=positive, default=50, metavar="N",
                       help=_("cli.audit.limit"))

    events = commands.add("events", cmd_events,
                          "account-merge events --limit 10 --mark-published", description=False)
    events.add_argument("--limit", type=positive, default=100, metavar="N",
                        help=_("cli.events.limit"))
    events.add_argument("--mark-published", action="store_true", help=_("cli.events.mark"))

    purge = commands.add("purge", cmd_purge, "account-merge purge --dry-run")
    purge.add_argument("--dry-run", action="store_true", help=_("cli.purge.dry_run"))
    export = commands.add("export", cmd_export,
                          "account-merge export claire.robert --out claire.robert.json")
    export.add_argument("account", metavar=_("cli.metavar.account"),
                        help=_("cli.export.account"))
    export.add_argument("--out", required=True, metavar=_("cli.metavar.file"),
                        help=_("cli.export.out"))
