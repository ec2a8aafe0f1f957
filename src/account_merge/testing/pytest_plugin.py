"""An opt-in pytest plugin with account_merge fixtures.

Enable it in your ``conftest.py``::

    pytest_plugins = ["account_merge.testing.pytest_plugin"]

Fixtures: ``account_merge_storage`` (a fresh :class:`InMemoryStorage`),
``account_merge_verifier`` (:func:`~account_merge.testing.fast_verifier`),
``account_merge_clock`` (a :class:`~account_merge.testing.FakeClock`),
``account_merge_mailer`` (a :class:`~account_merge.testing.CapturingMailer`)
and ``account_merge_service`` (a :class:`MergeService` built from the
first three, with a test secret key and the links of :data:`TEST_LINKS`,
so that the way back works: ``service.deliver_notices(account_merge_mailer)``).
Override ``account_merge_storage`` in your own ``conftest.py`` to run every
test on your storage.

**In a Django project** (Django configured, ``account_merge.contrib.django``
installed; pytest-django does both) the fixtures are the project's:

- ``account_merge_storage`` is the project's store
  (:func:`~account_merge.contrib.django.get_storage`) in the test
  database, its attempts journal emptied first, so the test needs the
  database (``@pytest.mark.django_db``);
- ``account_merge_verifier`` verifies the Django hash formats of
  ``DJANGO_HASHERS`` with argon2's cheapest parameters (the project's own
  ``VERIFIER`` if it names one);
- ``account_merge_service`` is built from the project's ``ACCOUNT_MERGE``
  settings (identity rule, throttle, password policy, secret key, links,
  all as in production) on those fixtures and the fake clock, and is what
  :func:`~account_merge.contrib.django.get_service` returns during the
  test: the views, the admin, the commands and the authentication backend
  the test drives use it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType

import pytest

from account_merge.ports import CredentialVerifier, Storage
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier

#: The links of ``account_merge_service``: the token is what follows the last ``/``.
TEST_LINKS = {"password_reset": "https://ent.test/mot-de-passe/{token}",
              "email_verification": "https://ent.test/courriel/{token}",
              "sign_in": "https://ent.test/connexion"}

#: The secret key of ``account_merge_service`` outside a Django project.
TEST_SECRET_KEY = "account_merge pytest plugin: a key for tests only"


def in_django_project() -> bool:
    """True when Django is set up with ``account_merge.contrib.django`` installed."""
    if importlib.util.find_spec("django") is None:
        return False
    settings = importlib.import_module("django.conf").settings
    apps = importlib.import_module("django.apps").apps
    return bool(settings.configured and apps.ready
                and apps.is_installed("account_merge.contrib.django"))


def _django() -> ModuleType:
    """:mod:`account_merge.contrib.django.testing`, imported once Django is set up."""
    return importlib.import_module("account_merge.contrib.django.testing")


@pytest.fixture
def account_merge_storage() -> Iterator[Storage]:
    """A fresh, empty store; override it to test on yours.

    In a Django project: the project's store, in the test database.
    """
    if in_django_project():
        with _django().project_storage() as django_storage:
            yield django_storage
        return
    storage = InMemoryStorage()
    yield storage
    storage.close()


@pytest.fixture
def account_merge_verifier() -> CredentialVerifier:
    """Real argon2 with the cheapest parameters (and the project's Django hash formats)."""
    if in_django_project():
        verifier: CredentialVerifier = _django().project_verifier()
        return verifier
    return fast_verifier()


@pytest.fixture
def account_merge_clock() -> FakeClock:
    """A clock the test sets and advances."""
    return FakeClock()


@pytest.fixture
def account_merge_mailer() -> CapturingMailer:
    """A mailer that keeps the notices it is given (``.sent``)."""
    return CapturingMailer()


@pytest.fixture
def account_merge_service(
    account_merge_storage: Storage,
    account_merge_verifier: CredentialVerifier,
    account_merge_clock: FakeClock,
) -> Iterator[MergeService]:
    """A MergeService on the storage, verifier and clock fixtures, able to send links.

    In a Django project: built from the project's settings, and
    ``get_service()`` during the test.
    """
    if in_django_project():
        with _django().project_service(account_merge_storage, account_merge_verifier,
                                       account_merge_clock) as service:
            yield service
        return
    yield MergeService(account_merge_storage, account_merge_verifier, account_merge_clock,
                       secret_key=TEST_SECRET_KEY, links=TEST_LINKS)
