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
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from account_merge.ports import CredentialVerifier, Storage
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier

#: The links of ``account_merge_service``: the token is what follows the last ``/``.
TEST_LINKS = {"password_reset": "https://ent.test/mot-de-passe/{token}",
              "email_verification": "https://ent.test/courriel/{token}",
              "sign_in": "https://ent.test/connexion"}


@pytest.fixture
def account_merge_storage() -> Iterator[Storage]:
    """A fresh, empty store; override it to test on yours."""
    storage = InMemoryStorage()
    yield storage
    storage.close()


@pytest.fixture
def account_merge_verifier() -> CredentialVerifier:
    """Real argon2 with the cheapest parameters."""
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
) -> MergeService:
    """A MergeService on the storage, verifier and clock fixtures, able to send links."""
    return MergeService(account_merge_storage, account_merge_verifier, account_merge_clock,
                        secret_key="account_merge pytest plugin: a key for tests only",
                        links=TEST_LINKS)
