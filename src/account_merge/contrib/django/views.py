"""The library's errors in a Django view: a decorator, a mixin, and the form's share.

A view calls the service; what the service raises is either something to
say on the form the parent just sent (a wrong password, a refused
password, a link that expired) or an answer of its own (wait, you may
not, not found).  So:

- the view catches :data:`FORM_ERRORS` and shows them on its form with
  :func:`add_error` (the message in Django's active language, on the field
  it concerns);
- :func:`account_merge_errors` (or :class:`AccountMergeErrorsMixin` for a
  class-based view) answers the rest:

  ================================  =============================================
  ``too_many_attempts``             429, with ``Retry-After`` (seconds)
  ``not_authorized``,               403 (``PermissionDenied``: the project's
  ``principal_not_active``          ``handler403`` and ``403.html``)
  ``account_not_found``             404 (``Http404``: ``handler404``, ``404.html``)
  ``concurrent_update``             503, with ``Retry-After: 1`` (retries spent)
  a form's error the view let out   400, with its message
  ``storage_error``,                not answered: the project's 500
  ``not_supported``
  ================================  =============================================

  The 429, 400 and 503 pages are the project's ``429.html``, ``400.html``
  or ``503.html`` when it has one, else the app's
  ``account_merge/error.html``; their context has ``status``, ``title``,
  ``message`` (the French message, or the active language's), ``error``,
  ``retry_after`` (seconds, or None) and ``back`` (the page to go back
  to: the one that was asked for).

**Transactions.**  Django rolls a request's transaction back
(``ATOMIC_REQUESTS``, or ``transaction.atomic`` around the view) when the
view raises, and commits it when the view returns a response.  An error
answered here is a failed request too: the decorator runs the view in a
savepoint of every database already in a transaction, and an error
leaving the view rolls that savepoint back before it is answered, so
that what the view wrote before the error is undone as if the error had
escaped, and nothing outside the view (a test's transaction) is touched.
The failed attempt itself is not lost: the store keeps failed-attempt
counters and the audit records of failures apart, durable whether the
request commits or rolls back (rule 6 of
:mod:`account_merge.ports.storage`).  Outside a transaction, each write
of the view was committed when it was made, as Django does.

**Signing in.**  Inside a view answered here, the authentication backend
(:class:`~account_merge.contrib.django.auth.AccountMergeBackend`) lets
``too_many_attempts``, ``activation_required`` and ``account_merged`` out
of ``django.contrib.auth.authenticate()``, for the view to catch or the
decorator to answer; elsewhere (the admin's sign-in page, a view without
the decorator) it fails as Django expects a backend to (``authenticate()``
returns None).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from django.core.exceptions import PermissionDenied
from django.db import connections, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.template import loader
from django.utils.translation import gettext

from account_merge.exceptions import (
    AccountMerged,
    AccountMergeError,
    AccountNotFound,
    ActivationRequired,
    ConcurrentUpdate,
    IdentityRuleRefused,
    InvalidCredentials,
    InvalidInput,
    InvalidToken,
    NotAuthorized,
    NothingToSplit,
    NotResponsable,
    NotSupported,
    PasswordPolicyError,
    PrincipalNotActive,
    SameAccount,
    StorageError,
    TooManyAttempts,
)
from account_merge.messages import error_message

if TYPE_CHECKING:
    from django import forms

__all__ = ["FORM_ERRORS", "AccountMergeErrorsMixin", "account_merge_errors", "add_error",
           "answers_errors", "error_response"]

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponse)

#: The errors a form shows: what the parent typed was refused (catch them in the view).
FORM_ERRORS: Final[tuple[type[AccountMergeError], ...]] = (
    InvalidCredentials, NotResponsable, SameAccount, IdentityRuleRefused, NothingToSplit,
    PasswordPolicyError, InvalidInput, InvalidToken, ActivationRequired, AccountMerged,
)

#: The request attribute telling the authentication backend its errors are answered here.
ANSWERED: Final = "_account_merge_errors_answered"


def answers_errors(request: HttpRequest | None) -> bool:
    """True inside a view wrapped by :func:`account_merge_errors` (or the mixin)."""
    return request is not None and bool(getattr(request, ANSWERED, False))


def add_error(form: forms.BaseForm, error: AccountMergeError, field: str | None = None) -> None:
    """Show *error* on *form*: its message in the active language, on the field it concerns.

    The field is *field* if given, else the field ``invalid_input`` names
    when the form has it, else none (the form's own errors).  The field
    is then marked invalid, which a template shows with ``aria-invalid``
    and ``aria-describedby`` (Django 5 does both).
    """
    if field is None and isinstance(error, InvalidInput) and error.field in form.fields:
        field = error.field
    form.add_error(field, error_message(error))


def _title(status: int) -> str:
    return {
        400: gettext("Demande incorrecte"),
        429: gettext("Trop de tentatives"),
        503: gettext("Service momentanément indisponible"),
    }.get(status, gettext("Erreur"))


def _request_savepoints(stack: contextlib.ExitStack) -> None:
    """A savepoint in every database already in a transaction, rolled back by an error."""
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            stack.enter_context(transaction.atomic(using=connection.alias))


def _answered(request: HttpRequest, view: Callable[[], HttpResponse]) -> HttpResponse:
    setattr(request, ANSWERED, True)
    try:
        with contextlib.ExitStack() as stack:
            _request_savepoints(stack)
            return view()
    except AccountMergeError as error:
        return error_response(request, error)


def error_response(request: HttpRequest, error: AccountMergeError) -> HttpResponse:
    """The answer to *error* (see the module's table); raises for 403, 404 and the rest.

    It rolls nothing back: :func:`account_merge_errors` does, around the view.
    """
    if isinstance(error, StorageError | NotSupported):
        raise error
    if isinstance(error, NotAuthorized | PrincipalNotActive) \
            and not isinstance(error, IdentityRuleRefused):
        raise PermissionDenied(error_message(error)) from error
    if isinstance(error, AccountNotFound):
        raise Http404(error_message(error)) from error
    retry_after: int | None = None
    if isinstance(error, TooManyAttempts):
        status, retry_after = 429, max(1, math.ceil(error.retry_after))
    elif isinstance(error, ConcurrentUpdate):
        status, retry_after = 503, 1
    else:
        status = 400
    template = loader.select_template([f"{status}.html", "account_merge/error.html"])
    context = {"status": status, "title": _title(status), "message": error_message(error),
               "error": error, "retry_after": retry_after, "back": request.get_full_path()}
    response = HttpResponse(template.render(context, request), status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def account_merge_errors(view: Callable[P, R]) -> Callable[P, HttpResponse]:
    """Answer the library's errors that leave *view* (see the module's table).

    Put it outermost, above ``login_required`` and the like; it works the
    same under ``ATOMIC_REQUESTS`` and with ``transaction.atomic`` on
    either side of it (the answer rolls the request back; the failed
    attempt is kept).
    """

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> HttpResponse:
        request = next((a for a in args if isinstance(a, HttpRequest)), None)
        if request is None:
            raise TypeError("account_merge_errors wraps views: a request must be passed")
        return _answered(request, lambda: view(*args, **kwargs))

    return wrapper


class AccountMergeErrorsMixin:
    """:func:`account_merge_errors` for a class-based view (put it first among the bases)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        parent = super().dispatch  # type: ignore[misc]
        return _answered(request, lambda: parent(request, *args, **kwargs))
