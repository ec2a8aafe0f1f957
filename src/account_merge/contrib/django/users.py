"""The library's accounts and the project's users (``AUTH_USER_MODEL``).

A parent signs in with an account of the library; Django's sessions,
``request.user`` and ``login_required`` want a user of the project.  The
link between the two is a row of :class:`~account_merge.contrib.django.models.UserLink`
(one user per account, one account per user), made:

- by the authentication backend, the first time an account signs in
  without a user: ``ACCOUNT_MERGE["USER_FACTORY"]`` makes one
  (:func:`create_user` by default: the account's login as username, no
  usable Django password);
- by :func:`link_user`, for a user the project already has, whose
  account the library issued (a letter) or already holds;
- by :func:`import_user`, for a user the project already has and whose
  password should keep working: an ACTIVE account is made from the user,
  with the user's password hash as its credential.

:func:`account_of` gives the account of a user (``request.user``), and
:func:`end_other_sessions` ends the sessions of an account's user after a
change of password.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model, update_session_auth_hash
from django.db import IntegrityError, router, transaction
from django.http import HttpRequest

from account_merge.contrib.django.service import app_settings, get_service
from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.logins import login_key
from account_merge.exceptions import AccountNotFound, InvalidInput
from account_merge.ports.storage import ChangeSet, NewAccount

__all__ = ["account_of", "create_user", "end_other_sessions", "import_user", "link_user",
           "user_of"]

logger = logging.getLogger("account_merge.contrib.django")


def _link_model() -> Any:
    from account_merge.contrib.django.models import UserLink

    return UserLink


def create_user(account: Account) -> Any:
    """The default ``USER_FACTORY``: a new user named by the account's login.

    The user has no usable Django password (the library holds the
    credential) and no staff rights.  Raises ``IntegrityError`` when a user
    has that username already: such a user is linked with
    :func:`link_user`, never taken over.
    """
    user_model = get_user_model()
    user = user_model(**{user_model.USERNAME_FIELD: account.login})
    user.set_unusable_password()
    user.save(force_insert=True)
    return user


def user_of(account_id: str) -> Any | None:
    """The user linked to the account *account_id*, or None."""
    link = _link_model().objects.select_related("user").filter(account_id=account_id).first()
    return None if link is None else link.user


def account_of(user: Any) -> Account | None:
    """The ACTIVE account linked to *user* (``request.user``), or None.

    None for an anonymous user, a user without account, and a user whose
    account is not ACTIVE (merged into another, or not activated yet).
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    link = _link_model().objects.filter(user_id=user.pk).first()
    if link is None:
        return None
    try:
        account = get_service().get_account(link.account_id)
    except AccountNotFound:
        return None
    return account if account.status is AccountStatus.ACTIVE else None


def link_user(user: Any, account_id: str) -> None:
    """Record that *user* owns the account *account_id*.

    The account must exist and be a responsable's; neither may be linked
    already (``invalid_input`` otherwise).  The user's own Django password
    is left as it is: a user who signs in through the library should
    have none (``user.set_unusable_password()``), or it keeps opening the
    project's other backends.
    """
    account = get_service().get_account(account_id)
    if account.role is not Role.RESPONSABLE:
        raise InvalidInput("account_id", "is not a responsable's account")
    link_model = _link_model()
    try:
        with transaction.atomic(using=router.db_for_write(link_model)):
            link_model.objects.create(user=user, account_id=account.id)
    except IntegrityError:
        raise InvalidInput("account_id", "the user or the account is linked already") from None


def import_user(user: Any, establishment: Establishment, children: Iterable[Child], *,
                display_name: str | None = None) -> Account:
    """An ACTIVE responsable account for an existing *user*, who keeps the password.

    The account's login is the user's username, its credential the user's
    password hash (its format must be listed in
    ``ACCOUNT_MERGE["DJANGO_HASHERS"]``; the next sign-in rehashes it in
    the library's argon2id), its children *children* (enrolled in
    *establishment*, whose letter they count as).  The user is linked to
    the account and its Django password made unusable, so that only the
    library checks it from now on.  An audit record names the
    establishment; no event is written and no notice sent.  The address
    stays off record until the parent confirms one
    (``request_email_change``).
    """
    service = get_service()
    kids = tuple(children)
    if not kids or not all(isinstance(c, Child) for c in kids):
        raise InvalidInput("children", "a responsable account needs at least one Child")
    if any(c.establishment_uai != establishment.uai for c in kids):
        raise InvalidInput("children", f"every child must be enrolled in {establishment.uai}")
    password_hash = user.password
    if not isinstance(password_hash, str) or not password_hash \
            or password_hash.startswith("!"):
        raise InvalidInput("user", "has no usable password to import")
    algorithm = password_hash.split("$", 1)[0]
    accepted = app_settings().django_hashers or ()
    if algorithm not in accepted and not password_hash.startswith("$argon2id$"):
        raise InvalidInput("user", f"its password's format {algorithm!r} is not in "
                                   "ACCOUNT_MERGE['DJANGO_HASHERS']")
    login = user.get_username()
    now = service.clock()
    account = Account(id=uuid.uuid4().hex, login=login, role=Role.RESPONSABLE,
                      status=AccountStatus.ACTIVE,
                      display_name=display_name or user.get_full_name() or login,
                      establishment_uai=establishment.uai, created_at=now)
    link_model = _link_model()
    with transaction.atomic(using=router.db_for_write(link_model)):
        link_model.objects.create(user=user, account_id=account.id)
        service.storage.write(ChangeSet(
            new_accounts=[NewAccount(account, login_key(login))],
            credentials=[Credential(account.id, password_hash, CredentialKind.PASSWORD)],
            link=[ChildLink(account_id=account.id, child=c, origin_account_id=account.id,
                            origin_establishment_uai=establishment.uai, via_merge=False,
                            linked_at=now) for c in kids],
            audit=[AuditRecord(at=now, action=AuditAction.ISSUE, outcome="success",
                               actor=f"establishment:{establishment.uai}",
                               account_id=account.id, login=login,
                               detail="imported from the project's user")],
        ))
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return account


def linked_user(account: Account) -> Any | None:
    """The user of *account* for a sign-in: linked, or made by ``USER_FACTORY`` (or None).

    Two first sign-ins of one account at once make one user: the loser of
    the race reads the winner's link.
    """
    link_model = _link_model()
    link = link_model.objects.select_related("user").filter(account_id=account.id).first()
    if link is not None:
        return link.user
    factory_path = app_settings().user_factory
    if factory_path is None:
        return None
    factory = app_settings().import_optional(factory_path)
    assert factory is not None
    try:
        with transaction.atomic(using=router.db_for_write(link_model)):
            user = factory(account)
            link_model.objects.create(user=user, account_id=account.id)
    except IntegrityError:
        link = link_model.objects.select_related("user").filter(account_id=account.id).first()
        if link is not None:
            return link.user
        logger.warning("account %s cannot sign in: its user could not be made (a user named "
                       "like its login exists and is not linked to it; see link_user)",
                       account.id)
        return None
    return user


def end_other_sessions(account_id: str, request: HttpRequest | None = None) -> None:
    """End every session of the account's user, but *request*'s own if it is that user's.

    Call it after a change or a reset of the account's password: Django's
    sessions check the user's password hash, which a new unusable one
    changes.  A user with a usable Django password (linked by
    :func:`link_user` and left so) keeps it, and its sessions.
    """
    user = user_of(account_id)
    if user is None or user.has_usable_password():
        return
    user.set_unusable_password()
    user.save(update_fields=["password"])
    if request is not None and getattr(request, "user", None) is not None \
            and request.user.pk == user.pk:
        update_session_auth_hash(request, user)
