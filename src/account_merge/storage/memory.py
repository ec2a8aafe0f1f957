"""InMemoryStorage: a store in process memory that behaves like a database.

Units of work are serialised by one lock held from ``__enter__`` to
``__exit__``, so concurrent threads see each other's work only once it is
committed (which also makes every ``Fetch(lock=True)`` hold).  Every write
records how to undo itself; leaving a unit of work without ``commit()``
replays the undo log backwards, so nothing is half-written.  It serves
tests, demos and single-process tools; its contents die with the process.

It is also the plainest reading of the storage contract
(:mod:`account_merge.ports.storage`): each rule there is a few lines here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, Self

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry
from account_merge.domain.logins import login_key
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.domain.register import RegisterRecord
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    Forgotten,
    counter_at_rest,
    names_someone,
    pseudonymised,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.register import (
    Closure,
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.ports.storage import (
    AccountRecord,
    ChangeSet,
    Fetch,
    Fetched,
    StoredReceipt,
    write_alone,
)

__all__ = ["InMemoryStorage"]

_MISSING: Any = object()


class _Tables:
    def __init__(self) -> None:
        self.establishments: dict[str, Establishment] = {}
        self.accounts: dict[str, Account] = {}
        self.logins: dict[str, str] = {}
        # merged_into -> absorbed ids, in the order they were absorbed
        self.absorbed: dict[str, dict[str, None]] = {}
        self.credentials: dict[str, Credential] = {}
        self.links: dict[str, dict[str, ChildLink]] = {}
        self.throttles: dict[str, ThrottleState] = {}
        self.receipts: dict[tuple[str, str], StoredReceipt] = {}
        # outbox[position - 1]; None where the retention tier deleted an entry, so
        # that a position is never given twice
        self.outbox: list[OutboxEntry | None] = []
        self.first_unpublished = 0
        # None where the retention tier deleted a record
        self.audit: list[AuditRecord | None] = []
        # tier email_index: account id -> key, and key -> account ids
        self.email_of: dict[str, str] = {}
        self.emails: dict[str, frozenset[str]] = {}
        # tier notices: the states by id, and the last outbox position turned into notices
        self.notices: dict[str, NoticeState] = {}
        self.notice_cursor = 0
        # tier ``register``: records by (uai, external id), paged in insertion order
        # (None where the retention tier deleted a record)
        self.register: dict[tuple[str, str], RegisterRecord] = {}
        self.register_order: dict[str, list[str | None]] = {}
        self.register_position: dict[tuple[str, str], int] = {}
        self.register_by_account: dict[str, dict[tuple[str, str], None]] = {}
        self.closures: dict[str, Closure] = {}
        # links by the establishment whose letter gave them: uai -> child id -> account ids
        # (None in origin_order where the retention tier deleted a child's last link)
        self.origin_links: dict[str, dict[str, dict[str, None]]] = {}
        self.origin_order: dict[str, list[str | None]] = {}
        self.origin_position: dict[tuple[str, str], int] = {}


class InMemoryStorage:
    """A store in memory, with real units of work (see the module docstring)."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()

    def unit_of_work(self, *, write: bool = True) -> _InMemoryUnitOfWork:
        """A new unit of work; use it in a ``with`` block."""
        return _InMemoryUnitOfWork(self._tables, self._lock)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own."""
        write_alone(self, changes)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"InMemoryStorage(accounts={len(self._tables.accounts)})"


class _InMemoryUnitOfWork:
    def __init__(self, tables: _Tables, lock: threading.RLock) -> None:
        self._t = tables
        self._lock = lock
        self._undo: list[Callable[[], None]] = []
        self._open = False

    # transaction -----------------------------------------------------------
    def __enter__(self) -> Self:
        self._lock.acquire()
        self._open = True
        self._undo = []
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.rollback()
        finally:
            self._open = False
            self._lock.release()

    def commit(self) -> None:
        self._check_open()
        self._undo = []

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("use the unit of work in a 'with' block")

    # undoable primitives -----------------------------------------------------
    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        old = table.get(key, _MISSING)
        table[key] = value

        def undo() -> None:
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old

        self._undo.append(undo)

    def _delete(self, table: dict[Any, Any], key: Any) -> None:
        if key in table:
            old = table.pop(key)
            self._undo.append(lambda: table.__setitem__(key, old))

    def _append(self, table: list[Any], value: Any) -> None:
        table.append(value)
        self._undo.append(table.pop)

    # reading ---------------------------------------------------------------
    def _record(self, account_id: str) -> AccountRecord | None:
        account = self._t.accounts.get(account_id)
        if account is None:
            return None
        return AccountRecord(account, self._t.credentials.get(account_id))

    def fetch(self, request: Fetch) -> Fetched:
        self._check_open()
        t = self._t
        by_login = {}
        for key in request.logins:
            found = self._record(t.logins.get(key, ""))
            if found is not None:
                by_login[key] = found
        accounts = {i: r for i in request.accounts if (r := self._record(i)) is not None}
        throttles = {k: t.throttles.get(k, ThrottleState(k)) for k in request.throttles}
        for key in request.count:
            before = t.throttles.get(key)
            throttles[key] = before if before is not None else ThrottleState(key)
            assert request.at is not None
            recent = () if before is None else before.recent
            self._set(t.throttles, key, ThrottleState(
                key=key, consecutive=throttles[key].consecutive + 1,
                last_failure_at=request.at,
                recent=(*recent, request.at)[-request.keep:]))
        return Fetched(
            by_login=by_login,
            accounts=accounts,
            links={i: tuple(t.links.get(i, {}).values()) for i in request.links},
            absorbed={i: tuple(t.accounts[a] for a in t.absorbed.get(i, {})
                               if t.accounts[a].status is AccountStatus.MERGED)
                      for i in request.absorbed},
            throttles=throttles,
            receipts={k: got for k in request.receipts
                      if (got := t.receipts.get(k)) is not None},
            establishments={u: e for u in request.establishments
                            if (e := t.establishments.get(u)) is not None},
        )

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        out = []
        for entry in self._t.outbox[self._t.first_unpublished:]:
            if entry is not None and not entry.published:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        for record in reversed(self._t.audit):
            if record is None:
                continue
            if account_id is None or account_id in (record.account_id, record.actor):
                out.append(record)
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    # writing ---------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        self._check_open()
        t = self._t
        for expected in changes.expect:
            account = t.accounts.get(expected.account_id)
            credential = t.credentials.get(expected.account_id)
            if (account is None or account.status is not expected.status
                    or (credential.password_hash if credential else None)
                    != expected.password_hash):
                raise ExpectationFailed()
        for establishment in changes.establishments:
            self._set(t.establishments, establishment.uai, establishment)
        for new in changes.new_accounts:
            if new.login_key in t.logins or new.account.id in t.accounts:
                raise LoginTaken(new.login_key)
            self._set(t.accounts, new.account.id, new.account)
            self._set(t.logins, new.login_key, new.account.id)
            self._index_absorbed(None, new.account)
        for account in changes.accounts:
            old = t.accounts.get(account.id)
            if old is None:
                raise ExpectationFailed(f"no account {account.id!r} to replace")
            self._set(t.accounts, account.id, account)
            self._index_absorbed(old, account)
        for sign_in in changes.sign_ins:
            old = t.accounts.get(sign_in.account_id)
            if old is None:
                raise ExpectationFailed(f"no account {sign_in.account_id!r}")
            self._set(t.accounts, old.id, attrs.evolve(old, last_signed_in_at=sign_in.at))
        for credential in changes.credentials:
            self._set(t.credentials, credential.account_id, credential)
        for account_id in changes.drop_credentials:
            self._delete(t.credentials, account_id)
        for link in changes.unlink:
            bucket = t.links.get(link.account_id, {})
            if link.child.id in bucket:
                self._index_origin(bucket[link.child.id], None)
                self._set(t.links, link.account_id,
                          {k: v for k, v in bucket.items() if k != link.child.id})
        for link in changes.link:
            bucket = t.links.get(link.account_id, {})
            self._index_origin(bucket.get(link.child.id), link)
            self._set(t.links, link.account_id, {**bucket, link.child.id: link})
        for state in changes.throttles:
            self._set(t.throttles, state.key, state)
        for stored in changes.receipts:
            self._set(t.receipts, (stored.principal_id, stored.key), stored)
        for event in changes.events:
            self._append(t.outbox, OutboxEntry(position=len(t.outbox) + 1, event=event))
        if changes.published:
            self._mark_published(changes.published)
        for record in changes.audit:
            self._append(t.audit, record)

    def _index_absorbed(self, old: Account | None, new: Account) -> None:
        before = old.merged_into if old is not None else None
        if before == new.merged_into:
            return
        t = self._t
        if before is not None:
            bucket = t.absorbed.get(before, {})
            self._set(t.absorbed, before, {k: None for k in bucket if k != new.id})
        if new.merged_into is not None:
            bucket = t.absorbed.get(new.merged_into, {})
            self._set(t.absorbed, new.merged_into, {**bucket, new.id: None})

    def _index_origin(self, old: ChildLink | None, new: ChildLink | None) -> None:
        """Keep the index of links by the establishment whose letter gave them."""
        t = self._t
        if old is not None:
            holders = t.origin_links.get(old.origin_establishment_uai, {})
            accounts = holders.get(old.child.id, {})
            if old.account_id in accounts:
                self._set(holders, old.child.id,
                          {k: None for k in accounts if k != old.account_id})
        if new is not None:
            uai, child_id = new.origin_establishment_uai, new.child.id
            holders = t.origin_links.setdefault(uai, {})
            self._set(holders, child_id, {**holders.get(child_id, {}), new.account_id: None})
            if (uai, child_id) not in t.origin_position:
                order = t.origin_order.setdefault(uai, [])
                self._set(t.origin_position, (uai, child_id), len(order))
                self._append(order, child_id)

    # tier ``register`` -------------------------------------------------------
    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        self._check_open()
        t = self._t
        by_account = {
            account_id: tuple(t.register[key] for key in t.register_by_account.get(account_id, {}))
            for account_id in request.accounts}
        origin: dict[str, tuple[ChildLink, ...]] = {}
        holders = t.origin_links.get(request.establishment or "", {})
        for child_id in request.origin_links:
            origin[child_id] = tuple(
                t.links[a][child_id] for a in holders.get(child_id, {})
                if t.accounts[a].role is Role.RESPONSABLE)
        return RegisterFetched(
            entries={k: r for k in request.entries if (r := t.register.get(k)) is not None},
            by_account=by_account,
            origin_links=origin,
            closures={a: c for a in request.closures if (c := t.closures.get(a)) is not None},
        )

    def register_apply(self, changes: RegisterChanges) -> None:
        self._check_open()
        t = self._t
        for key in changes.drop:
            old = t.register.get(key)
            if old is not None:
                self._delete(t.register, key)
                self._unindex_record(old)
        for record in changes.put:
            key = record.key
            old = t.register.get(key)
            if old is not None:
                self._unindex_record(old)
            self._set(t.register, key, record)
            bucket = t.register_by_account.get(record.account_id, {})
            self._set(t.register_by_account, record.account_id, {**bucket, key: None})
            if key not in t.register_position:
                order = t.register_order.setdefault(record.establishment_uai, [])
                self._set(t.register_position, key, len(order))
                self._append(order, record.external_id)
        for closure in changes.close:
            self._set(t.closures, closure.account_id, closure)
        for account_id in changes.reopen:
            self._delete(t.closures, account_id)

    def _unindex_record(self, record: RegisterRecord) -> None:
        bucket = self._t.register_by_account.get(record.account_id, {})
        self._set(self._t.register_by_account, record.account_id,
                  {k: None for k in bucket if k != record.key})

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        self._check_open()
        t = self._t
        order = t.register_order.get(establishment_uai, [])
        start = int(cursor) if cursor else 0
        items: list[RegisterRecord] = []
        index = start
        while index < len(order) and len(items) < limit:
            external_id = order[index]
            record = t.register.get((establishment_uai, external_id)) \
                if external_id is not None else None
            if record is not None:
                items.append(record)
            index += 1
        return RegisterPage(tuple(items), str(index) if index < len(order) else None)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        self._check_open()
        t = self._t
        order = t.origin_order.get(establishment_uai, [])
        holders = t.origin_links.get(establishment_uai, {})
        start = int(cursor) if cursor else 0
        items: list[str] = []
        index = start
        while index < len(order) and len(items) < limit:
            child_id = order[index]
            if child_id is not None and any(t.accounts[a].role is Role.RESPONSABLE
                                            for a in holders.get(child_id, {})):
                items.append(child_id)
            index += 1
        return RegisterPage(tuple(items), str(index) if index < len(order) else None)

    def _mark_published(self, positions: tuple[int, ...]) -> None:
        outbox = self._t.outbox
        for position in positions:
            index = position - 1
            old = outbox[index] if 0 <= index < len(outbox) else None
            if old is not None and not old.published:
                outbox[index] = attrs.evolve(old, published=True)
                self._undo.append(partial(outbox.__setitem__, index, old))
        first = previous = self._t.first_unpublished
        while first < len(outbox):
            entry = outbox[first]
            if entry is not None and not entry.published:
                break
            first += 1
        if first != previous:
            self._t.first_unpublished = first
            self._undo.append(lambda: setattr(self._t, "first_unpublished", previous))

    # tier email_index ---------------------------------------------------------
    def index_email(self, account_id: str, key: str | None) -> None:
        self._check_open()
        t = self._t
        old = t.email_of.get(account_id)
        if old == key:
            return
        if old is not None:
            rest = t.emails.get(old, frozenset()) - {account_id}
            if rest:
                self._set(t.emails, old, rest)
            else:  # no key of an address nobody has any more
                self._delete(t.emails, old)
            self._delete(t.email_of, account_id)
        if key is not None:
            self._set(t.emails, key, t.emails.get(key, frozenset()) | {account_id})
            self._set(t.email_of, account_id, key)

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        self._check_open()
        found = (self._record(i) for i in sorted(self._t.emails.get(key, ())))
        return [r for r in found if r is not None][:limit]

    # tier notices -----------------------------------------------------------------
    def notice_cursor(self) -> int:
        self._check_open()
        return self._t.notice_cursor

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        self._check_open()
        return self.outbox_page(position, limit)

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        self._check_open()
        t = self._t
        for state in states:
            if state.id not in t.notices:
                self._set(t.notices, state.id, state)
        if cursor > t.notice_cursor:
            previous = t.notice_cursor
            t.notice_cursor = cursor
            self._undo.append(lambda: setattr(t, "notice_cursor", previous))

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        self._check_open()
        pending = sorted((s for s in self._t.notices.values()
                          if s.status is NoticeStatus.PENDING),
                         key=lambda s: (s.position, s.id))[:limit]
        return [(s, entry) for s in pending
                if (entry := self._t.outbox[s.position - 1]) is not None]

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        self._check_open()
        for state in states:
            if state.id in self._t.notices:
                self._set(self._t.notices, state.id, state)

    # tier retention ---------------------------------------------------------------
    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        self._check_open()
        t = self._t
        found: list[tuple[tuple[datetime, str], AccountRecord]] = []
        for account in t.accounts.values():
            credential = t.credentials.get(account.id)
            when: datetime | None = None
            if kind is DueKind.CLOSED and account.status is AccountStatus.CLOSED:
                closure = t.closures.get(account.id)
                when = closure.closed_at if closure is not None else None
            elif kind is DueKind.UNACTIVATED and account.status is AccountStatus.PROVISIONAL:
                if credential is not None and credential.kind is CredentialKind.PROVISIONAL:
                    when = credential.expires_at
            elif kind is DueKind.UNUSED and account.status is AccountStatus.ACTIVE:
                when = account.last_signed_in_at
            if when is None or when > before or (after is not None and (when, account.id) <= after):
                continue
            found.append(((when, account.id), AccountRecord(account, credential)))
        found.sort(key=lambda item: item[0])
        page = found[:max(0, limit)]
        return DuePage(records=tuple(r for _, r in page),
                       after=page[-1][0] if len(page) == limit and page else None)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        self._check_open()
        erased = 0
        for account_id, credential in list(self._t.credentials.items()):
            if erased >= limit:
                break
            if (credential.kind is CredentialKind.PROVISIONAL and credential.expires_at is not None
                    and credential.expires_at <= expired_by
                    and credential.password_hash != ERASED_HASH):
                account = self._t.accounts.get(account_id)
                if account is not None and account.status is AccountStatus.MERGED:
                    self._delete(self._t.credentials, account_id)
                else:
                    self._set(self._t.credentials, account_id,
                              attrs.evolve(credential, password_hash=ERASED_HASH))
                erased += 1
        return erased

    def forget(self, forgotten: Forgotten) -> None:
        self._check_open()
        t = self._t
        ids = set(forgotten.account_ids)
        for index, record in enumerate(t.audit):
            if record is None:
                continue
            changed = record
            if forgotten.names_record(record):
                holder = t.accounts.get(record.account_id or "")
                changed = pseudonymised(record, holder.establishment_uai if holder else None)
            elif (named := forgotten.mentions(record)) is not None:
                changed = attrs.evolve(record, detail=(record.detail or "").replace(
                    named, DELETED_ACCOUNT))
            if changed != record:
                self._replace_audit(index, changed)
        for key in [k for k in t.throttles if forgotten.names_counter(k)]:
            self._delete(t.throttles, key)
        for pair in [k for k in t.receipts if k[0] in ids]:
            self._delete(t.receipts, pair)
        for account_id in forgotten.account_ids:
            self.index_email(account_id, None)
            self._forget_in_register(account_id)
            self._delete(t.links, account_id)
            self._delete(t.credentials, account_id)
        absorbed_first = sorted((t.accounts[i] for i in ids if i in t.accounts),
                                key=lambda a: a.merged_into is None)
        for account in absorbed_first:
            if account.merged_into is not None:
                bucket = t.absorbed.get(account.merged_into, {})
                self._set(t.absorbed, account.merged_into,
                          {k: None for k in bucket if k != account.id})
            self._delete(t.absorbed, account.id)
            key = login_key(account.login)
            if t.logins.get(key) != account.id:  # stored under another key: look for it
                key = next((k for k, v in t.logins.items() if v == account.id), key)
            self._delete(t.logins, key)
            self._delete(t.accounts, account.id)

    def _forget_in_register(self, account_id: str) -> None:
        """Tier ``register``: the account's records, its closure, its links' origin index."""
        t = self._t
        for key in list(t.register_by_account.get(account_id, {})):
            self._delete(t.register, key)
            self._drop_position(t.register_order.get(key[0], []), t.register_position, key)
        self._delete(t.register_by_account, account_id)
        self._delete(t.closures, account_id)
        for link in t.links.get(account_id, {}).values():
            self._index_origin(link, None)
            uai, child_id = link.origin_establishment_uai, link.child.id
            holders = t.origin_links.get(uai, {})
            if not holders.get(child_id, True):  # no account holds it through uai's letters
                self._delete(holders, child_id)
                self._drop_position(t.origin_order.get(uai, []), t.origin_position,
                                    (uai, child_id))

    def _drop_position(self, order: list[str | None], positions: dict[tuple[str, str], int],
                       key: tuple[str, str]) -> None:
        """Empty the slot of *key* in a paging order (later slots keep their place)."""
        index = positions.get(key)
        if index is not None:
            self._delete(positions, key)
            old = order[index]
            order[index] = None
            self._undo.append(partial(order.__setitem__, index, old))

    def _replace_audit(self, index: int, record: AuditRecord | None) -> None:
        audit = self._t.audit
        old = audit[index]
        audit[index] = record
        self._undo.append(partial(audit.__setitem__, index, old))

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        self._check_open()
        t = self._t
        ended = 0
        for index, record in enumerate(t.audit):
            if ended >= limit:
                break
            if record is None or record.at >= before:
                continue
            if not pseudonymise:
                self._replace_audit(index, None)
            elif names_someone(record):
                holder = t.accounts.get(record.account_id or "")
                self._replace_audit(index, pseudonymised(
                    record, holder.establishment_uai if holder else None))
            else:
                continue
            ended += 1
        return ended

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        self._check_open()
        out: list[OutboxEntry] = []
        for entry in self._t.outbox[max(after, 0):]:
            if len(out) >= limit:
                break
            if entry is not None and (published is None or entry.published is published):
                out.append(entry)
        return out

    def delete_outbox(self, positions: Sequence[int]) -> int:
        self._check_open()
        t = self._t
        pending = {s.position for s in t.notices.values() if s.status is NoticeStatus.PENDING}
        deleted = 0
        for position in sorted(set(positions)):
            index = position - 1
            if not 0 <= index < len(t.outbox) or t.outbox[index] is None or position in pending:
                continue
            old = t.outbox[index]
            t.outbox[index] = None
            self._undo.append(partial(t.outbox.__setitem__, index, old))
            for notice_id in [i for i, s in t.notices.items() if s.position == position]:
                self._delete(t.notices, notice_id)
            deleted += 1
        return deleted

    def delete_counters(self, before: datetime, limit: int) -> int:
        self._check_open()
        t = self._t
        keys = [k for k, state in t.throttles.items() if counter_at_rest(state, before)][:limit]
        for key in keys:
            self._delete(t.throttles, key)
        return len(keys)

    def held_about(self, forgotten: Forgotten) -> Held:
        self._check_open()
        t = self._t
        ids = set(forgotten.account_ids)
        return Held(
            audit=tuple(r for r in t.audit if r is not None and (
                forgotten.names_record(r) or forgotten.mentions(r))),
            counters=tuple(state for key, state in sorted(t.throttles.items())
                           if forgotten.names_counter(key)),
            receipts=tuple((p, k, stored.receipt) for (p, k), stored in t.receipts.items()
                           if p in ids))
