"""An authentication backend: Django's ``authenticate()`` and ``login()`` with the library.

In the project's settings::

    AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",       # staff, first
        "account_merge.contrib.django.auth.AccountMergeBackend",
    ]

then ``authenticate(request, username=login, password=password)`` signs a
parent in with an account of the library (the service's
``authenticate``, throttled per login and client, the client being
:func:`~account_merge.contrib.django.client.client_address` of the
request), and returns the project's user linked to that account (made on
the first sign-in, see :mod:`account_merge.contrib.django.users`);
``login(request, user)`` opens the session as for any user.  On every
request, the session's user is the account's only while the account is
ACTIVE: an account merged into another (perhaps from another browser)
signs its user out.

What the backend answers:

- a wrong login or password, a login no account can have, or the
  username of a project user linked to no account (staff, whom the
  library does not count for): None, so that another backend may try;
- ``too_many_attempts``, ``activation_required`` (the letter's provisional
  password, proven) and ``account_merged`` (an absorbed account's last
  password, proven): inside a view wrapped by
  :func:`~account_merge.contrib.django.views.account_merge_errors`, the
  error itself, out of ``authenticate()``, for the view to catch or the
  decorator to answer; elsewhere ``PermissionDenied``, which stops
  Django's ``authenticate()`` (it returns None) as a backend's refusal
  should;
- an active account without a user and without ``USER_FACTORY``: None.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import BaseBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from account_merge.contrib.django.client import client_address
from account_merge.contrib.django.service import get_service
from account_merge.contrib.django.users import linked_user
from account_merge.contrib.django.views import answers_errors
from account_merge.domain.account import AccountStatus
from account_merge.exceptions import (
    AccountMergeError,
    AccountNotFound,
    InvalidCredentials,
    InvalidInput,
    NotSupported,
    StorageError,
)
from account_merge.messages import error_message

__all__ = ["AccountMergeBackend"]


class AccountMergeBackend(BaseBackend):
    """Signs parents in with the library's accounts (see the module's docstring)."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> Any | None:
        user_model = get_user_model()
        if username is None:
            username = kwargs.get(user_model.USERNAME_FIELD)
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        if user_model._default_manager.filter(
                **{user_model.USERNAME_FIELD: username,
                   "account_merge_link__isnull": True}).exists():
            return None  # a user of the project's own (staff): not the library's to count
        try:
            account = get_service().authenticate(username, password,
                                                 client=client_address(request))
        except (InvalidCredentials, InvalidInput):
            return None  # a login no account can have is a wrong login
        except (StorageError, NotSupported):
            raise  # the project's 500
        except AccountMergeError as error:
            if answers_errors(request):
                raise
            raise PermissionDenied(error_message(error)) from error
        user = linked_user(account)
        if user is None or not self.user_can_authenticate(user):
            return None
        return user

    def get_user(self, user_id: Any) -> Any | None:
        user_model = get_user_model()
        user = (user_model._default_manager.select_related("account_merge_link")
                .filter(pk=user_id).first())
        if user is None or not self.user_can_authenticate(user):
            return None
        link = getattr(user, "account_merge_link", None)
        if link is None:
            return None
        try:
            account = get_service().get_account(link.account_id)
        except AccountNotFound:
            return None
        # Merged into another account since (perhaps from another browser): signed out.
        return user if account.status is AccountStatus.ACTIVE else None

    def user_can_authenticate(self, user: Any) -> bool:
        """Like Django's ModelBackend: an inactive user (``is_active = False``) may not."""
        return getattr(user, "is_active", True) is not False

