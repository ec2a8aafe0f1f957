"""The parent's subcommands: activate a letter's account, merge another into it, list
the children."""

from __future__ import annotations

import re

from account_merge.cli.commands import Commands
from account_merge.cli.session import Session, _, account_line

__all__ = ["add_commands"]


def cmd_activate(session: Session) -> int:
    session.require_db()
    login = session.args.login
    provisional = session.password(_("cli.prompt.provisional"))
    new = session.new_password(_("cli.prompt.new"))
    account = session.service.activate(login, provisional, new, email=session.args.email)
    print(_("cli.activated", login=account.login), file=session.out)
    return 0


def cmd_merge(session: Session) -> int:
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
    session.print_children(principal)
    return 0


def cmd_children(session: Session) -> int:
    session.require_db()
    account = session.account(session.args.account)
    print(account_line(account), file=session.out)
    if account.merged_into is not None:
        account = session.service.resolve(account.id)
        print(_("cli.merged_into", login=account.login, id=account.id), file=session.out)
    session.print_children(account)
    return 0


def add_commands(commands: Commands) -> None:
    """``activate``, ``merge`` and ``children``."""
    activate = commands.add("activate", cmd_activate, "account-merge activate claire.robert")
    activate.add_argument("login", metavar=_("cli.metavar.login"))
    activate.add_argument("--email", help=_("cli.issue.email"))

    merge = commands.add("merge", cmd_merge,
                         "account-merge merge claire.robert claire.robert.42")
    merge.add_argument("principal", metavar="PRINCIPAL", help=_("cli.merge.principal"))
    merge.add_argument("login", metavar=_("cli.metavar.login"), help=_("cli.merge.login"))

    children = commands.add("children", cmd_children, "account-merge children claire.robert",
                            description=False)
    children.add_argument("account", metavar=_("cli.metavar.login_or_id"))
