"""The unit of work's core tier: :meth:`fetch` (counting attempts), :meth:`apply`,
the outbox and the audit trail; each optional tier adds methods in its own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from django.db import IntegrityError
from django.db.models import Max, Q

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.errors import _is_account_clash
from account_merge.contrib.django.storage.rows import (
    _ACCOUNT_FIELDS,
    _LINK_FIELDS,
    _MERGED,
    _account_from_row,
    _account_row,
    _audit_from_row,
    _audit_row,
    _credential_row,
    _last_by,
    _link_from_row,
    _link_row,
    _outbox_entry_from_row,
    _receipt_from_row,
    _record_from_row,
    _throttle_from_row,
    _throttle_row,
    _to_db,
)
from account_merge.contrib.django.storage.transaction import _DjangoTransaction
from account_merge.domain.account import Account
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched, StoredReceipt
from account_merge.storage.attempts import Attempts, merge_trails, split_attempts

_SUCCESS: Final = "success"


class _DjangoUnitOfWork(_DjangoTransaction):
    """The core tier of a unit of work (see :class:`_DjangoTransaction`)."""

    # reading -------------------------------------------------------------------------
    def fetch(self, request: Fetch) -> Fetched:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        with self._translating():
            # Counters first, then accounts by id: the contract's lock order.
            throttles = self._fetch_throttles(request)
            db = self._main()
            by_login, accounts = self._fetch_accounts(db, request)
            links = self._fetch_links(db, request.links)
            absorbed = self._fetch_absorbed(db, request.absorbed,
                                            locked=request.lock and self._write)
            receipts = self._fetch_receipts(db, request.receipts)
            establishments = self._fetch_establishments(db, request.establishments)
        return Fetched(by_login=by_login, accounts=accounts, links=links, absorbed=absorbed,
                       throttles=throttles, receipts=receipts, establishments=establishments)

    def _fetch_throttles(self, request: Fetch) -> dict[str, ThrottleState]:
        locking = request.lock and self._write
        guarded = sorted({*request.count, *(request.throttles if locking else ())})
        plain = () if locking else request.throttles
        if not guarded and not plain:
            return {}
        if self._uses_journal():
            return self._journal().fetch(request)
        db = self._counters()
        rows = m.Throttle.objects.using(db)
        found: dict[str, m.Throttle] = {}
        if guarded:
            query = rows.filter(key__in=guarded)
            if self._postgres:
                self._advisory_locks(db, "throttle", guarded)
                query = query.select_for_update()
            found.update((row.key, row) for row in query)
        if plain:
            found.update((row.key, row) for row in rows.filter(key__in=sorted(set(plain))))
        with self._decoding("a throttle state"):
            states = {key: _throttle_from_row(row) for key, row in found.items()}
        out = {key: states.get(key, ThrottleState(key)) for key in request.throttles}
        if request.count:
            assert request.at is not None
            at, keep = request.at, request.keep
            counted = []
            for key in request.count:
                before = out[key] = states.get(key, ThrottleState(key))
                counted.append(ThrottleState(key=key, consecutive=before.consecutive + 1,
                                             last_failure_at=at,
                                             recent=(*before.recent, at)[-keep:]))
            self._put_throttles(db, counted)
        return out

    def _fetch_accounts(self, db: str, request: Fetch,
                        ) -> tuple[dict[str, AccountRecord], dict[str, AccountRecord]]:
        ids, keys = sorted(set(request.accounts)), sorted(set(request.logins))
        rows = m.Account.objects.using(db).select_related("credential")
        found: list[m.Account] = []
        if ids and request.lock and self._write and self._postgres:
            # Locked in id order; the logins (never locked) are read apart.
            found.extend(rows.filter(id__in=ids).order_by("id")
                         .select_for_update(of=("self",)))
            if keys:
                found.extend(rows.filter(login_key__in=keys))
        elif ids or keys:
            found.extend(rows.filter(Q(id__in=ids) | Q(login_key__in=keys)))
        wanted_ids, wanted_keys = set(ids), set(keys)
        by_login: dict[str, AccountRecord] = {}
        accounts: dict[str, AccountRecord] = {}
        if request.lock and self._write:
            self._locked.update((row.id, (row.merged_into_id, row.merged_seq))
                                for row in found if row.id in wanted_ids)
        with self._decoding("an account"):
            for row in found:
                record = _record_from_row(row)
                if row.id in wanted_ids:
                    accounts[row.id] = record
                if row.login_key in wanted_keys:
                    by_login[row.login_key] = record
        return by_login, accounts

    def _fetch_links(self, db: str, account_ids: Sequence[str]) -> dict[str, tuple[ChildLink, ...]]:
        if not account_ids:
            return {}
        out: dict[str, list[ChildLink]] = {i: [] for i in account_ids}
        rows = (m.ChildLink.objects.using(db).filter(account_id__in=sorted(set(account_ids)))
                .order_by("account_id", "id"))
        with self._decoding("a child link"):
            for row in rows:
                out[row.account_id].append(_link_from_row(row))
        return {i: tuple(links) for i, links in out.items()}

    def _fetch_absorbed(self, db: str, account_ids: Sequence[str], *, locked: bool,
                        ) -> dict[str, tuple[Account, ...]]:
        if not account_ids:
            return {}
        out: dict[str, list[Account]] = {i: [] for i in account_ids}
        rows = (m.Account.objects.using(db)
                .filter(merged_into_id__in=sorted(set(account_ids)), status=_MERGED)
                .order_by("merged_into_id", "merged_seq", "id"))
        with self._decoding("an account"):
            for row in rows:
                out[str(row.merged_into_id)].append(_account_from_row(row))
                if locked and row.merged_into_id in self._locked:
                    # Protected by its holder's lock (rule 2).
                    self._locked[row.id] = (row.merged_into_id, row.merged_seq)
        return {i: tuple(accounts) for i, accounts in out.items()}

    def _fetch_receipts(self, db: str, keys: Sequence[tuple[str, str]],
                        ) -> dict[tuple[str, str], StoredReceipt]:
        if not keys:
            return {}
        wanted = Q()
        for principal_id, key in set(keys):
            wanted |= Q(principal_id=principal_id, key=key)
        with self._decoding("a receipt"):
            return {(row.principal_id, row.key): _receipt_from_row(row)
                    for row in m.Receipt.objects.using(db).filter(wanted)}

    def _fetch_establishments(self, db: str, uais: Sequence[str]) -> dict[str, Establishment]:
        if not uais:
            return {}
        rows = m.Establishment.objects.using(db).filter(uai__in=sorted(set(uais)))
        with self._decoding("an establishment"):
            return {row.uai: Establishment(uai=row.uai, name=row.name) for row in rows}

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        with self._translating():
            rows = list(m.OutboxEvent.objects.using(self._main()).filter(published=False)
                        .order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in rows]

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        with self._translating():
            rows = m.AuditEntry.objects.using(self._main()).all()
            if account_id is not None:
                rows = rows.filter(Q(account_id=account_id) | Q(actor=account_id))
            newest = list(rows.order_by("-id")[:max(0, limit)])
        with self._decoding("an audit record"):
            main = [(row.id, _audit_from_row(row)) for row in reversed(newest)]
        if not self._uses_journal():
            return [record for _, record in main]
        # The journal's records of failures, in their places among the database's.
        with self._translating():
            journal = self._journal().audit_records(account_id, limit)
        return merge_trails(main, journal, limit)

    # writing -------------------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        attempts = Attempts()
        if self._uses_journal():
            changes, attempts = split_attempts(changes)
        side_audit = [r for r in changes.audit if r.outcome != _SUCCESS] \
            if self._uses_side() else []
        main_audit = [r for r in changes.audit if r not in side_audit] \
            if side_audit else list(changes.audit)
        with self._translating():
            on_main = bool(changes) and not (changes.only_attempts and self._uses_side())
            db = self._main() if on_main or attempts else ""
            if changes.expect:
                self._check_expectations(db, changes)
            if changes.establishments:
                m.Establishment.objects.using(db).bulk_create(
                    [m.Establishment(uai=e.uai, name=e.name)
                     for e in _last_by(changes.establishments, lambda e: e.uai)],
                    update_conflicts=True, unique_fields=["uai"], update_fields=["name"])
            if changes.new_accounts:
                self._insert_accounts(db, changes)
            if changes.accounts:
                self._replace_accounts(db, changes.accounts)
            for sign_in in changes.sign_ins:
                if not m.Account.objects.using(db).filter(id=sign_in.account_id).update(
                        last_signed_in_at=_to_db(sign_in.at)):
                    raise ExpectationFailed(f"no account {sign_in.account_id!r}")
            if changes.credentials:
                m.Credential.objects.using(db).bulk_create(
                    [_credential_row(c)
                     for c in _last_by(changes.credentials, lambda c: c.account_id)],
                    update_conflicts=True, unique_fields=["account"],
                    update_fields=["password_hash", "kind", "expires_at"])
            if changes.drop_credentials:
                m.Credential.objects.using(db).filter(
                    account_id__in=sorted(set(changes.drop_credentials))).delete()
            if changes.unlink:
                gone = Q()
                for link in changes.unlink:
                    gone |= Q(account_id=link.account_id, child_id=link.child.id)
                m.ChildLink.objects.using(db).filter(gone).delete()
            if changes.link:
                self._link(db, changes.link)
            if changes.throttles:
                self._put_throttles(self._counters(), changes.throttles)
            if changes.receipts:
                m.Receipt.objects.using(db).bulk_create(
                    [m.Receipt(principal_id=s.principal_id, key=s.key, login_key=s.login_key,
                               receipt=s.receipt.to_dict())
                     for s in _last_by(changes.receipts, lambda s: (s.principal_id, s.key))],
                    update_conflicts=True, unique_fields=["principal_id", "key"],
                    update_fields=["login_key", "receipt"])
            if changes.events:
                self._append_events(db, changes)
            if changes.published:
                m.OutboxEvent.objects.using(db).filter(
                    position__in=sorted(set(changes.published)), published=False,
                ).update(published=True)
            if attempts:
                self._journal_attempts(db, attempts, main_audit)
            elif main_audit:
                m.AuditEntry.objects.using(db).bulk_create([_audit_row(r) for r in main_audit])
            if side_audit:
                m.AuditEntry.objects.using(self._counters()).bulk_create(
                    [_audit_row(r) for r in side_audit])

    def _journal_attempts(self, db: str, attempts: Attempts,
                          main_audit: Sequence[AuditRecord]) -> None:
        """Counters and records of failures into the journal (SQLite, rule 6).

        The change set's other records go into the database, and each
        failure remembers which of the database's records it follows.
        """
        journal = self._journal()
        journal.put_throttles(attempts.throttles)
        rows = m.AuditEntry.objects.using(db)
        if not attempts.failures:
            rows.bulk_create([_audit_row(r) for r in main_audit])
            return
        before = int(rows.aggregate(last=Max("id"))["last"] or 0)
        after = before
        if main_audit:
            rows.bulk_create([_audit_row(r) for r in main_audit])
            after = int(rows.aggregate(last=Max("id"))["last"] or 0)
        journal.append_failures(attempts.placed(before, after, len(main_audit)))

    def _check_expectations(self, db: str, changes: ChangeSet) -> None:
        ids = sorted({e.account_id for e in changes.expect})
        rows = m.Account.objects.using(db).filter(id__in=ids).select_related("credential")
        if self._postgres and self._write:
            rows = rows.order_by("id").select_for_update(of=("self",))
        current: dict[str, tuple[str, str | None]] = {}
        for row in rows:
            credential: m.Credential | None = getattr(row, "credential", None)
            current[row.id] = (row.status,
                               None if credential is None else credential.password_hash)
        for expected in changes.expect:
            if current.get(expected.account_id) != (expected.status.value,
                                                     expected.password_hash):
                raise ExpectationFailed()

    def _insert_accounts(self, db: str, changes: ChangeSet) -> None:
        new = changes.new_accounts
        seqs = self._next_seqs(db, {n.account.merged_into for n in new} - {None})
        rows = []
        for item in new:
            target = item.account.merged_into
            seq = None
            if target is not None:
                seq = seqs[target]
                seqs[target] += 1
            rows.append(_account_row(item.account, login_key=item.login_key, merged_seq=seq))
        if len({r.id for r in rows}) != len(rows) or len({r.login_key for r in rows}) != len(rows):
            raise LoginTaken(new[0].login_key)
        try:
            m.Account.objects.using(db).bulk_create(rows)
        except IntegrityError as error:
            if _is_account_clash(error):
                raise LoginTaken(", ".join(n.login_key for n in new)) from None
            raise

    def _next_seqs(self, db: str, targets: set[str | None]) -> dict[str, int]:
        """The next ``merged_seq`` of each account in *targets*."""
        wanted = sorted(t for t in targets if t is not None)
        if not wanted:
            return {}
        last = dict(m.Account.objects.using(db).filter(merged_into_id__in=wanted)
                    .values("merged_into_id").annotate(last=Max("merged_seq"))
                    .values_list("merged_into_id", "last"))
        return {t: int(last.get(t) or 0) + 1 for t in wanted}

    def _replace_accounts(self, db: str, accounts: Sequence[Account]) -> None:
        latest = _last_by(accounts, lambda a: a.id)
        before = {a.id: self._locked[a.id] for a in latest if a.id in self._locked}
        unread = [a.id for a in latest if a.id not in before]
        if unread:
            before.update((row[0], (row[1], row[2])) for row in m.Account.objects.using(db)
                          .filter(id__in=unread).values_list("id", "merged_into_id",
                                                             "merged_seq"))
        missing = [a.id for a in latest if a.id not in before]
        if missing:
            raise ExpectationFailed(f"no account {missing[0]!r} to replace")
        moved = {a.merged_into for a in latest if a.merged_into != before[a.id][0]}
        seqs = self._next_seqs(db, moved)
        rows = []
        # Absorbed in the order the change set names them (rule 4).
        for account in latest:
            old_target, old_seq = before[account.id]
            seq = old_seq
            if account.merged_into != old_target:
                seq = None
                if account.merged_into is not None:
                    seq = seqs[account.merged_into]
                    seqs[account.merged_into] += 1
            rows.append(_account_row(account, merged_seq=seq))
        m.Account.objects.using(db).bulk_update(rows, list(_ACCOUNT_FIELDS))
        self._locked.update((row.id, (row.merged_into_id, row.merged_seq)) for row in rows
                            if row.id in self._locked)

    def _link(self, db: str, links: Sequence[ChildLink]) -> None:
        # The child as first named (the links keep each letter's naming).
        children: dict[str, Child] = {}
        for link in links:
            children.setdefault(link.child.id, link.child)
        m.Child.objects.using(db).bulk_create(
            [m.Child(id=c.id, first_name=c.first_name, last_name=c.last_name,
                     establishment_uai=c.establishment_uai) for c in children.values()],
            ignore_conflicts=True)
        # A child linked again to the same account keeps its row, so its place.
        m.ChildLink.objects.using(db).bulk_create(
            [_link_row(link)
             for link in _last_by(links, lambda link: (link.account_id, link.child.id))],
            update_conflicts=True, unique_fields=["account", "child"],
            update_fields=list(_LINK_FIELDS))

    def _put_throttles(self, db: str, states: Sequence[ThrottleState]) -> None:
        m.Throttle.objects.using(db).bulk_create(
            [_throttle_row(s) for s in _last_by(states, lambda s: s.key)],
            update_conflicts=True, unique_fields=["key"],
            update_fields=["consecutive", "last_failure_at", "recent"])

    def _append_events(self, db: str, changes: ChangeSet) -> None:
        # One writer at a time appends (the advisory lock on PostgreSQL, the
        # write lock on SQLite), so max + 1 leaves no gap, even after a rollback.
        if self._postgres:
            self._advisory_locks(db, "outbox", [""])
        rows = m.OutboxEvent.objects.using(db)
        last = self._last_position(db)
        rows.bulk_create([m.OutboxEvent(position=last + n, name=event.name,
                                        payload=event.to_payload())
                          for n, event in enumerate(changes.events, 1)])

    @staticmethod
    def _last_position(db: str) -> int:
        """The last outbox position given: in the outbox, or in its head once the
        purge deleted events (tier retention)."""
        last = m.OutboxEvent.objects.using(db).aggregate(last=Max("position"))["last"]
        head = m.OutboxHead.objects.using(db).filter(id=1).values_list(
            "last_position", flat=True).first()
        return max(int(last or 0), int(head or 0))
