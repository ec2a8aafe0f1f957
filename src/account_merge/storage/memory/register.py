"""The school's register in memory: tier ``register``.

Records by establishment and external id, paged in the order they were
first stored; the links indexed by the establishment whose letter gave
them.
"""

from __future__ import annotations

from account_merge.domain.account import Role
from account_merge.domain.child import ChildLink
from account_merge.domain.register import RegisterRecord
from account_merge.ports.register import (
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.storage.memory.unit_of_work import _CoreUnitOfWork


class _RegisterTier(_CoreUnitOfWork):
    """Tier ``register`` of the unit of work."""

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
