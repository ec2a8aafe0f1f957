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
- the management commands ``account_merge_issue`` and ``account_merge_split``.

See ``docs/integrations/django.md``.  Nothing here touches the database
or reads settings when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from account_merge.contrib.django.hashers import DjangoPasswordVerifier
    from account_merge.contrib.django.service import get_service, get_storage
    from account_merge.contrib.django.storage import DjangoStorage

__all__ = ["DjangoPasswordVerifier", "DjangoStorage", "get_service", "get_storage"]

_LAZY = {
    "DjangoPasswordVerifier": "account_merge.contrib.django.hashers",
    "DjangoStorage": "account_merge.contrib.django.storage",
    "get_service": "account_merge.contrib.django.service",
    "get_storage": "account_merge.contrib.django.service",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: the models need Django's app registry ready.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
