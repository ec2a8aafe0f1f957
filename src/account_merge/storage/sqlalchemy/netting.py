"""A change set as its net effect, for a store that writes it in one statement.

:class:`~account_merge.ports.ChangeSet` is applied in ten ordered parts.
In one statement of data-modifying CTEs every part reads the same
snapshot and none sees another's writes, and no row may be changed twice;
so the parts are first folded into their net effect, row by row, in
the order of the contract:

- an account inserted and replaced (or signed in) in the same change set
  is inserted as it ends up; a sign-in of a replaced account sets the
  replacement's ``last_signed_in_at``; the last replacement of an id wins;
- a credential written and then dropped is dropped;
- a link removed and added again goes to the end of its account's list
  (``fresh``), as removing then adding does; a link added twice keeps the
  place of the first with the values of the last;
- the last state of a counter, receipt or establishment wins;
- accounts newly merged into an account are ranked in the order they come
  (inserted ones first), which gives the order of absorption;
- ``touched`` are the accounts whose credential, links, absorbed accounts
  or receipts change while their own row does not: their row is rewritten
  as is, so that a reader who locked one of them can tell it changed (see
  :mod:`account_merge.storage.sqlalchemy.postgres`).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from account_merge.domain.account import Account, Credential
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import ChangeSet, Expect, NewAccount, StoredReceipt

__all__ = ["NetChanges", "net"]


@attrs.frozen
class NetChanges:
    """What a change set leaves behind, part by part (see the module docstring)."""

    expect: tuple[Expect, ...]
    must_exist: tuple[str, ...]
    establishments: tuple[Establishment, ...]
    new_accounts: tuple[NewAccount, ...]
    replaced: tuple[Account, ...]
    ranks: dict[str, int]  # account id -> rank among those newly merged into one account
    sign_ins: tuple[tuple[str, datetime], ...]
    credentials: tuple[Credential, ...]
    drop_credentials: tuple[str, ...]
    unlink: tuple[tuple[str, str], ...]
    link: tuple[ChildLink, ...]
    fresh: tuple[tuple[str, str], ...]
    throttles: tuple[ThrottleState, ...]
    receipts: tuple[StoredReceipt, ...]
    events: tuple[Event, ...]
    published: tuple[int, ...]
    audit: tuple[AuditRecord, ...]
    touched: tuple[str, ...]


def net(changes: ChangeSet) -> NetChanges:
    """The net effect of *changes* (see the module docstring)."""
    new_ids = {n.account.id for n in changes.new_accounts}
    replaced: dict[str, Account] = {}
    for account in changes.accounts:
        replaced[account.id] = account
    signed: dict[str, datetime] = {}
    for sign_in in changes.sign_ins:
        signed[sign_in.account_id] = sign_in.at
    for account_id, at in list(signed.items()):
        if account_id in replaced:
            replaced[account_id] = attrs.evolve(replaced.pop(account_id), last_signed_in_at=at)
            del signed[account_id]
    new_accounts = []
    for new in changes.new_accounts:
        account = new.account
        if account.id in replaced:
            account = replaced.pop(account.id)
        if account.id in signed:
            account = attrs.evolve(account, last_signed_in_at=signed.pop(account.id))
        new_accounts.append(NewAccount(account, new.login_key))
    ranks: dict[str, int] = {}
    per_holder: dict[str, int] = {}
    for account in [n.account for n in new_accounts] + list(replaced.values()):
        if account.merged_into is not None:
            per_holder[account.merged_into] = per_holder.get(account.merged_into, 0) + 1
            ranks[account.id] = per_holder[account.merged_into]

    dropped = set(changes.drop_credentials)
    credentials = {c.account_id: c for c in changes.credentials if c.account_id not in dropped}
    linked: dict[tuple[str, str], ChildLink] = {}
    for link in changes.link:
        linked[(link.account_id, link.child.id)] = link
    unlinked = list(dict.fromkeys((link.account_id, link.child.id) for link in changes.unlink))
    fresh = tuple(pair for pair in unlinked if pair in linked)
    written = new_ids | set(replaced) | set(signed)
    aggregates = (
        [c.account_id for c in credentials.values()] + list(dropped)
        + [pair[0] for pair in unlinked] + [pair[0] for pair in linked]
        + [r.principal_id for r in changes.receipts]
        + [a.merged_into for a in [n.account for n in new_accounts] + list(replaced.values())
           if a.merged_into is not None]
    )
    return NetChanges(
        expect=changes.expect,
        must_exist=tuple(dict.fromkeys(i for i in [*replaced, *signed] if i not in new_ids)),
        establishments=tuple({e.uai: e for e in changes.establishments}.values()),
        new_accounts=tuple(new_accounts),
        replaced=tuple(replaced.values()),
        ranks=ranks,
        sign_ins=tuple(signed.items()),
        credentials=tuple(credentials.values()),
        drop_credentials=tuple(sorted(dropped)),
        unlink=tuple(pair for pair in unlinked if pair not in linked),
        link=tuple(linked.values()),
        fresh=fresh,
        throttles=tuple({s.key: s for s in changes.throttles}.values()),
        receipts=tuple({(r.principal_id, r.key): r for r in changes.receipts}.values()),
        events=changes.events,
        published=tuple(dict.fromkeys(changes.published)),
        audit=changes.audit,
        touched=tuple(sorted({i for i in aggregates if i not in written})),
    )
