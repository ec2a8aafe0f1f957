"""get_service(): the project's MergeService, built once per process from the settings.

Views call :func:`get_service` on each request; the service is built on
the first call (not at import time) from ``settings.ACCOUNT_MERGE``, read
by the library's composition root
(:func:`account_merge.service.bootstrap.read_settings`, see
:mod:`account_merge.contrib.django.conf`), and kept until those settings
change (``override_settings`` in tests).  It is stateless between calls
and safe to share between threads.

Tests replace it for a while with :func:`use_service` (the pytest
plugin's ``account_merge_service`` fixture does): views, the admin, the
commands and the authentication backend then all use the test's service.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from account_merge.contrib.django.conf import AppSettings, load
from account_merge.contrib.django.storage import DjangoStorage
from account_merge.ports.clock import Clock
from account_merge.ports.verifier import CredentialVerifier
from account_merge.service import MergeService

__all__ = ["app_settings", "build_service", "forget", "forget_on_setting_changed",
           "get_service", "get_storage", "use_service"]

#: Settings whose change makes the next get_service() build a new service.
WATCHED_SETTINGS = frozenset({"ACCOUNT_MERGE", "DATABASES", "DATABASE_ROUTERS",
                              "PASSWORD_HASHERS", "USE_TZ", "SECRET_KEY", "ROOT_URLCONF"})

_lock = threading.Lock()
_service: MergeService | None = None
_settings: AppSettings | None = None
_replaced: list[MergeService] = []


def get_storage(app_settings: AppSettings | None = None) -> DjangoStorage:
    """The store on the database named by ``ACCOUNT_MERGE["DATABASE"]`` (or the routers')."""
    loaded = app_settings or load()
    return DjangoStorage(using=loaded.database, attempts_journal=loaded.attempts_journal)


def build_service(app_settings: AppSettings | None = None, *,
                  verifier: CredentialVerifier | None = None,
                  clock: Clock | None = None) -> MergeService:
    """A new MergeService from *app_settings* (default: the project's settings).

    *verifier* and *clock*, when given, replace the ones the settings
    name (a test's fast verifier and fake clock); every other setting
    applies as in production.
    """
    s = app_settings or load()
    return MergeService(get_storage(s), verifier or s.verifier(), clock or s.service.clock,
                        policies=s.service.policies,
                        secret_key=s.service.secret_key, links=s.service.links)


def app_settings() -> AppSettings:
    """``ACCOUNT_MERGE``, read once and kept until the settings change."""
    global _settings  # noqa: PLW0603
    with _lock:
        if _settings is None:
            _settings = load()
        return _settings


def get_service() -> MergeService:
    """The project's service, built on the first call from the settings.

    Inside :func:`use_service`, the service given there.
    """
    global _service  # noqa: PLW0603 - one service per process
    with _lock:
        if _replaced:
            return _replaced[-1]
        if _service is None:
            _service = build_service()
        return _service


@contextmanager
def use_service(service: MergeService) -> Iterator[MergeService]:
    """Make :func:`get_service` return *service* inside the block, in every thread.

    For tests: the pytest plugin's ``account_merge_service`` fixture runs
    each test inside it, so that the views a test drives use the service
    the test holds.
    """
    with _lock:
        _replaced.append(service)
    try:
        yield service
    finally:
        with _lock:
            _replaced.remove(service)


def forget() -> None:
    """Build the service again on the next get_service()."""
    global _service, _settings  # noqa: PLW0603
    with _lock:
        _service = None
        _settings = None


def forget_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Receiver of ``setting_changed``: forget the service when its settings change."""
    if setting in WATCHED_SETTINGS:
        forget()
