"""Tier ``bulk_load`` of the unit of work: many accounts in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.errors import _is_account_clash
from account_merge.contrib.django.storage.rows import _optional_to_db, _to_db
from account_merge.contrib.django.storage.unit_of_work import _DjangoUnitOfWork
from account_merge.domain.account import Role
from account_merge.exceptions import LoginTaken


class _DjangoBulkLoad(_DjangoUnitOfWork):
    """The unit of work with tier ``bulk_load``."""

    def insert_bulk(self, rows: Sequence[Any]) -> None:
        """Store :class:`~account_merge.storage.bulk.BulkAccount` rows (see ``bulk_insert``)."""
        if not rows:
            return
        db = self._main()
        responsable = Role.RESPONSABLE.value
        with self._translating():
            accounts = [m.Account(id=r.account_id, login=r.login, login_key=r.login_key,
                                  role=responsable, status=r.status.value,
                                  display_name=r.display_name,
                                  establishment_uai=r.establishment_uai,
                                  created_at=_to_db(r.created_at)) for r in rows]
            try:
                m.Account.objects.using(db).bulk_create(accounts)
            except IntegrityError as error:
                if _is_account_clash(error):
                    raise LoginTaken("a login or id of the bulk") from None
                raise
            m.Credential.objects.using(db).bulk_create([
                m.Credential(account_id=r.account_id, password_hash=r.password_hash,
                             kind=r.credential_kind.value,
                             expires_at=_optional_to_db(r.credential_expires_at))
                for r in rows])
            m.Child.objects.using(db).bulk_create(
                [m.Child(id=r.child_id, first_name=r.child_first_name,
                         last_name=r.child_last_name, establishment_uai=r.establishment_uai)
                 for r in rows], ignore_conflicts=True)
            m.ChildLink.objects.using(db).bulk_create([
                m.ChildLink(account_id=r.account_id, child_id=r.child_id,
                            first_name=r.child_first_name, last_name=r.child_last_name,
                            establishment_uai=r.establishment_uai,
                            origin_account_id=r.account_id,
                            origin_establishment_uai=r.establishment_uai, via_merge=False,
                            linked_at=_to_db(r.created_at))
                for r in rows])
