"""get_service(): the project's MergeService, built once per process from the settings.

Views call :func:`get_service` on each request; the service is built on
the first call (not at import time) from ``settings.ACCOUNT_MERGE``, read
by the library's composition root
(:func:`account_merge.service.bootstrap.read_settings`, see
:mod:`account_merge.contrib.django.conf`), and kept until those settings
change (``override_settings`` in tests).  It is stateless between calls
and safe to share between threads.
"""

from __future__ import annotations

import threading
from typing import Any

from account_merge.contrib.django.conf import AppSettings, load
from account_merge.contrib.django.storage import DjangoStorage
from account_merge.service import MergeService

__all__ = ["build_service", "forget", "forget_on_setting_changed", "get_service", "get_storage"]

#: Settings whose change makes the next get_service() build a new service.
WATCHED_SETTINGS = frozenset({"ACCOUNT_MERGE", "DATABASES", "DATABASE_ROUTERS",
                              "PASSWORD_HASHERS", "USE_TZ"})

_lock = threading.Lock()
_service: MergeService | None = None


def get_storage(app_settings: AppSettings | None = None) -> DjangoStorage:
    """The store on the database named by ``ACCOUNT_MERGE["DATABASE"]`` (or the routers')."""
    return DjangoStorage(using=(app_settings or load()).database)


def build_service(app_settings: AppSettings | None = None) -> MergeService:
    """A new MergeService from *app_settings* (default: the project's settings)."""
    s = app_settings or load()
    return MergeService(get_storage(s), s.verifier(), s.service.clock,
                        policies=s.service.policies)


def get_service() -> MergeService:
    """The project's service, built on the first call from the settings."""
    global _service  # noqa: PLW0603 - one service per process
    with _lock:
        if _service is None:
            _service = build_service()
        return _service


def forget() -> None:
    """Build the service again on the next get_service()."""
    global _service  # noqa: PLW0603
    with _lock:
        _service = None


def forget_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Receiver of ``setting_changed``: forget the service when its settings change."""
    if setting in WATCHED_SETTINGS:
        forget()
