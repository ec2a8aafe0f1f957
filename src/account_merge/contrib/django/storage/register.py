"""Tier ``register`` of the unit of work: the school's register and its closures.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.rows import (
    _from_db,
    _last_by,
    _link_from_row,
    _register_from_row,
    _register_row,
    _to_db,
)
from account_merge.contrib.django.storage.unit_of_work import _DjangoUnitOfWork
from account_merge.domain.account import Role
from account_merge.domain.child import ChildLink
from account_merge.domain.register import RegisterRecord
from account_merge.ports.register import (
    Closure,
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)


class _DjangoRegister(_DjangoUnitOfWork):
    """The unit of work with tier ``register``."""

    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        found: dict[str, Any] = {}
        with self._translating():
            db = self._main()
            entries = m.RegisterEntry.objects.using(db)
            if request.entries:
                wanted = Q()
                for uai, external_id in set(request.entries):
                    wanted |= Q(establishment_uai=uai, external_id=external_id)
                with self._decoding("a register entry"):
                    found["entries"] = {(r.establishment_uai, r.external_id): r
                                        for r in map(_register_from_row, entries.filter(wanted))}
            if request.accounts:
                by_account: dict[str, list[RegisterRecord]] = {a: [] for a in request.accounts}
                rows = (entries.filter(account_id__in=sorted(set(request.accounts)))
                        .order_by("account_id", "establishment_uai", "external_id"))
                with self._decoding("a register entry"):
                    for row in rows:
                        by_account[row.account_id].append(_register_from_row(row))
                found["by_account"] = {a: tuple(v) for a, v in by_account.items()}
            if request.origin_links:
                origin: dict[str, list[ChildLink]] = {c: [] for c in request.origin_links}
                links = (m.ChildLink.objects.using(db)
                         .filter(origin_establishment_uai=request.establishment,
                                 child_id__in=sorted(set(request.origin_links)),
                                 account__role=Role.RESPONSABLE.value)
                         .order_by("account_id", "id"))
                with self._decoding("a child link"):
                    for link in links:
                        origin[link.child_id].append(_link_from_row(link))
                found["origin_links"] = {c: tuple(v) for c, v in origin.items()}
            if request.closures:
                closures = m.RegisterClosure.objects.using(db).filter(
                    account_id__in=sorted(set(request.closures)))
                with self._decoding("a closure"):
                    found["closures"] = {
                        c.account_id: Closure(c.account_id, c.establishment_uai,
                                              _from_db(c.closed_at)) for c in closures}
        return RegisterFetched(**found)

    def register_apply(self, changes: RegisterChanges) -> None:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        if not changes:
            return
        with self._translating():
            db = self._main()
            if changes.drop:
                gone = Q()
                for uai, external_id in changes.drop:
                    gone |= Q(establishment_uai=uai, external_id=external_id)
                m.RegisterEntry.objects.using(db).filter(gone).delete()
            if changes.put:
                m.RegisterEntry.objects.using(db).bulk_create(
                    [_register_row(r) for r in _last_by(changes.put, lambda r: r.key)],
                    update_conflicts=True, unique_fields=["establishment_uai", "external_id"],
                    update_fields=["account", "display_name", "email", "children"])
            if changes.close:
                m.RegisterClosure.objects.using(db).bulk_create(
                    [m.RegisterClosure(account_id=c.account_id,
                                       establishment_uai=c.establishment_uai,
                                       closed_at=_to_db(c.closed_at))
                     for c in _last_by(changes.close, lambda c: c.account_id)],
                    update_conflicts=True, unique_fields=["account"],
                    update_fields=["establishment_uai", "closed_at"])
            if changes.reopen:
                m.RegisterClosure.objects.using(db).filter(
                    account_id__in=sorted(set(changes.reopen))).delete()

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        with self._translating():
            rows = m.RegisterEntry.objects.using(self._main()).filter(
                establishment_uai=establishment_uai)
            if cursor is not None:
                rows = rows.filter(external_id__gt=cursor)
            page = list(rows.order_by("external_id")[:max(0, limit)])
        with self._decoding("a register entry"):
            items = tuple(_register_from_row(row) for row in page)
        return RegisterPage(items, items[-1].external_id if len(items) == limit else None)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        with self._translating():
            rows = m.ChildLink.objects.using(self._main()).filter(
                origin_establishment_uai=establishment_uai,
                account__role=Role.RESPONSABLE.value)
            if cursor is not None:
                rows = rows.filter(child_id__gt=cursor)
            ids = tuple(rows.order_by("child_id").values_list("child_id", flat=True)
                        .distinct()[:max(0, limit)])
        return RegisterPage(ids, ids[-1] if len(ids) == limit else None)
