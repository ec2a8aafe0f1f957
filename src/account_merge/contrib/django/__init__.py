"""account_merge in a Django project: a reusable app (extra ``django``).

Add ``"account_merge.contrib.django"`` to ``INSTALLED_APPS`` (its label
is ``account_merge``), run ``migrate``, and call :func:`get_service` in
views.  What the app brings:

- :class:`~account_merge.contrib.django.storage.DjangoStorage`, the store
  in the project's database through the ORM (its tables are named
  ``account_merge_*``);
- :class:`~account_merge.contrib.django.hashers.DjangoPasswordVerifier`,
  which also checks Django's own password hashes, so that an ENT's stored
  passwords keep working, and rehashes them on success;
- settings in one ``ACCOUNT_MERGE`` dict
  (:mod:`account_merge.contrib.django.conf`);
- admin pages for accounts, letters, establishments and the audit trail,
  with the split as an action restricted to the establishment's staff;
- the management commands ``account_merge_issue``, ``account_merge_split``,
  ``account_merge_reissue`` and ``account_merge_deliver_notices``;
- an authentication backend,
  :class:`~account_merge.contrib.django.auth.AccountMergeBackend`, with
  the link between accounts and the project's users
  (:func:`account_of`, :func:`link_user`, :func:`import_user`);
- :func:`account_merge_errors`, a view decorator answering the library's
  errors (429 with ``Retry-After``, 403, 404...), with :data:`FORM_ERRORS`
  and :func:`add_error` for the ones a form shows;
- :func:`client_address`, the client a request's failures count for,
  behind the project's trusted reverse proxies;
- :func:`use_service`, for tests (the pytest plugin uses it).

See ``docs/integrations/django.md``.  Nothing here touches the database
or reads settings when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from account_merge.contrib.django.auth import AccountMergeBackend
    from account_merge.contrib.django.client import client_address
    from account_merge.contrib.django.hashers import DjangoPasswordVerifier
    from account_merge.contrib.django.service import get_service, get_storage, use_service
    from account_merge.contrib.django.storage import DjangoStorage
    from account_merge.contrib.django.users import (
        account_of,
        end_other_sessions,
        import_user,
        link_user,
        user_of,
    )
    from account_merge.contrib.django.views import (
        FORM_ERRORS,
        AccountMergeErrorsMixin,
        account_merge_errors,
        add_error,
    )

__all__ = [
    "FORM_ERRORS",
    "AccountMergeBackend",
    "AccountMergeErrorsMixin",
    "DjangoPasswordVerifier",
    "DjangoStorage",
    "account_merge_errors",
    "account_of",
    "add_error",
    "client_address",
    "end_other_sessions",
    "get_service",
    "get_storage",
    "import_user",
    "link_user",
    "use_service",
    "user_of",
]

_LAZY = {
    "AccountMergeBackend": "account_merge.contrib.django.auth",
    "client_address": "account_merge.contrib.django.client",
    "DjangoPasswordVerifier": "account_merge.contrib.django.hashers",
    "DjangoStorage": "account_merge.contrib.django.storage",
    "get_service": "account_merge.contrib.django.service",
    "get_storage": "account_merge.contrib.django.service",
    "use_service": "account_merge.contrib.django.service",
    **dict.fromkeys(["account_of", "end_other_sessions", "import_user", "link_user", "user_of"],
                    "account_merge.contrib.django.users"),
    **dict.fromkeys(["FORM_ERRORS", "AccountMergeErrorsMixin", "account_merge_errors",
                     "add_error"], "account_merge.contrib.django.views"),
}


def __getattr__(name: str) -> Any:
    # Imported on first use: the models need Django's app registry ready.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
