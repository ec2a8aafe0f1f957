"""What the pytest plugin's fixtures are in a Django project (see its docstring).

:mod:`account_merge.testing.pytest_plugin` calls these when Django is set
up with the app installed: the project's store in the test database, a
fast verifier of the project's hash formats, and a service built from the
project's ``ACCOUNT_MERGE`` settings that :func:`get_service` returns
during the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from account_merge.contrib.django.conf import load
from account_merge.contrib.django.hashers import DjangoPasswordVerifier
from account_merge.contrib.django.service import get_storage, use_service
from account_merge.contrib.django.storage import DjangoStorage
from account_merge.ports.clock import Clock
from account_merge.ports.storage import Storage
from account_merge.ports.verifier import CredentialVerifier
from account_merge.service import MergeService
from account_merge.testing import fast_verifier

__all__ = ["project_service", "project_storage", "project_verifier"]


@contextmanager
def project_storage() -> Iterator[DjangoStorage]:
    """The project's store, its attempts journal emptied first; closed afterwards."""
    storage = get_storage()
    storage.forget_attempts()
    try:
        yield storage
    finally:
        storage.close()


def project_verifier() -> CredentialVerifier:
    """The project's ``VERIFIER``, else its Django hash formats with argon2's cheapest."""
    loaded = load()
    if loaded.own_verifier and loaded.service.verifier is not None:
        return loaded.service.verifier
    return DjangoPasswordVerifier.from_argon2(fast_verifier(), legacy=loaded.django_hashers)


@contextmanager
def project_service(storage: Storage, verifier: CredentialVerifier,
                    clock: Clock) -> Iterator[MergeService]:
    """A service built from the project's settings, ``get_service()`` inside the block."""
    loaded = load()
    service = MergeService(storage, verifier, clock, policies=loaded.service.policies,
                           secret_key=loaded.service.secret_key, links=loaded.service.links)
    with use_service(service):
        yield service
