"""Who may split a merge for an establishment (rule S1, in the admin).

The default rule, :func:`may_split`, asks for an active staff user with
the permission ``account_merge.split_account`` who is listed among the
establishment's staff (the ``EstablishmentStaff`` model, edited on the
establishment's admin page); a superuser may split for any
establishment.  A project with its own notion of who works where points
``ACCOUNT_MERGE["SPLIT_AUTHORIZATION"]`` at a callable ``(user, uai) ->
bool`` instead.
"""

from __future__ import annotations

from typing import Any

from account_merge.contrib.django.conf import split_authorization

__all__ = ["SPLIT_PERMISSION", "is_allowed_to_split", "may_split"]

#: The permission a staff user needs to see the split action at all.
SPLIT_PERMISSION = "account_merge.split_account"


def may_split(user: Any, uai: str) -> bool:
    """The default rule: permission, staff, and listed for the establishment *uai*."""
    from account_merge.contrib.django.models import EstablishmentStaff

    if not (getattr(user, "is_active", False) and getattr(user, "is_staff", False)):
        return False
    if not user.has_perm(SPLIT_PERMISSION):
        return False
    if getattr(user, "is_superuser", False):
        return True
    return EstablishmentStaff.objects.filter(user_id=user.pk, establishment_id=uai).exists()


def is_allowed_to_split(user: Any, uai: str) -> bool:
    """The project's rule (``ACCOUNT_MERGE["SPLIT_AUTHORIZATION"]``) applied to *user*."""
    return bool(split_authorization()(user, uai))
