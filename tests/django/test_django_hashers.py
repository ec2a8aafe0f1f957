"""DjangoPasswordVerifier: an ENT's Django password hashes keep working, then are upgraded.

Defect 12.7: a legacy hash (PBKDF2, a million iterations) took three times
the work of an unknown login, which told the logins with such a hash
apart, and Django's hashers ran outside the process-wide bound on
concurrent hashing.  Every verification now does the same work, counted
here in hasher calls and PBKDF2 iterations (never timed), and holds a
slot of the bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import argon2
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from fast_verifier import fast_django_verifier

from account_merge import Account, AccountStatus, Role
from account_merge.contrib.django.hashers import DjangoPasswordVerifier
from account_merge.credentials import Argon2Verifier, set_max_concurrent_hashes
from account_merge.domain.account import Credential, CredentialKind
from account_merge.domain.logins import login_key
from account_merge.ports import ChangeSet, Fetch, NewAccount
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.testing import FakeClock, make_establishment

PASSWORD = "Mot-de-passe-de-l-ENT-2019"
HERE = __name__


class Work:
    """What the hashers of one test did: argon2 verifications, PBKDF2 iterations, overlaps."""

    lock = threading.Lock()
    argon2_verifications = 0
    pbkdf2_iterations = 0
    running = 0
    most_at_once = 0

    @classmethod
    def reset(cls) -> None:
        cls.argon2_verifications = cls.pbkdf2_iterations = cls.running = cls.most_at_once = 0

    @classmethod
    def doing(cls, seconds: float = 0.0) -> Any:
        class _Doing:
            def __enter__(self) -> None:
                with cls.lock:
                    cls.running += 1
                    cls.most_at_once = max(cls.most_at_once, cls.running)
                time.sleep(seconds)  # widen the window two overlapping hashes would share

            def __exit__(self, *exc: object) -> None:
                with cls.lock:
                    cls.running -= 1
        return _Doing()


class CountingArgon2(argon2.PasswordHasher):
    """argon2-cffi's hasher, counting the verifications that did the work."""

    pause: ClassVar[float] = 0.0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with Work.doing(self.pause):
            try:
                result = super().verify(hash, password)
            except argon2.exceptions.VerifyMismatchError:
                Work.argon2_verifications += 1
                raise
            Work.argon2_verifications += 1
            return result


class CountingPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2, counting the iterations it runs (a legacy format of the tests)."""

    algorithm = "counting_pbkdf2"
    iterations = 1000
    pause: ClassVar[float] = 0.0

    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        with Work.doing(self.pause):
            Work.pbkdf2_iterations += iterations or self.iterations
            return super().encode(password, salt, iterations)


HASHERS = [f"{HERE}.CountingPBKDF2PasswordHasher", "fast_verifier.FastPBKDF2PasswordHasher",
           "fast_verifier.FastArgon2PasswordHasher",
           "django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def counting() -> Iterator[DjangoPasswordVerifier]:
    """A verifier accepting the counting PBKDF2 format, its work counted from zero."""
    with override_settings(PASSWORD_HASHERS=HASHERS):
        verifier = DjangoPasswordVerifier(
            CountingArgon2.from_parameters(argon2.profiles.CHEAPEST), warn_if_weak=False)
        Work.reset()
        yield verifier


@pytest.fixture
def verifier() -> DjangoPasswordVerifier:
    return DjangoPasswordVerifier(argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST),
                                  legacy=["pbkdf2_sha256", "argon2", "md5"], warn_if_weak=False)


@pytest.mark.parametrize("hasher", ["pbkdf2_sha256", "argon2", "md5"])
def test_a_django_hash_is_checked_with_django_s_hasher(
        verifier: DjangoPasswordVerifier, hasher: str) -> None:
    stored = make_password(PASSWORD, hasher=hasher)
    assert stored.startswith(f"{hasher}$")
    assert verifier.verify(stored, PASSWORD)
    assert not verifier.verify(stored, PASSWORD + "x")
    assert verifier.needs_rehash(stored)


def test_by_default_the_format_django_writes_is_accepted_and_no_other() -> None:
    verifier = fast_django_verifier()
    assert verifier.legacy_formats == ("pbkdf2_sha256",)  # the first of PASSWORD_HASHERS
    assert verifier.verify(make_password(PASSWORD, hasher="pbkdf2_sha256"), PASSWORD)
    assert not verifier.verify(make_password(PASSWORD, hasher="md5"), PASSWORD)


def test_no_legacy_format_leaves_the_library_s_own_hashes() -> None:
    verifier = DjangoPasswordVerifier(argon2.PasswordHasher.from_parameters(
        argon2.profiles.CHEAPEST), legacy=(), warn_if_weak=False)
    assert verifier.legacy_formats == ()
    assert verifier.verify(verifier.hash(PASSWORD), PASSWORD)
    assert not verifier.verify(make_password(PASSWORD, hasher="pbkdf2_sha256"), PASSWORD)


def test_a_format_the_project_does_not_list_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="sha1"):
        DjangoPasswordVerifier(legacy=["sha1"], warn_if_weak=False)


def test_the_library_s_own_hashes_work_and_need_no_rehash(
        verifier: DjangoPasswordVerifier) -> None:
    stored = verifier.hash(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert verifier.verify(stored, PASSWORD)
    assert not verifier.needs_rehash(stored)
    stronger = DjangoPasswordVerifier(argon2.PasswordHasher(time_cost=2, memory_cost=64,
                                                            parallelism=1), warn_if_weak=False)
    assert stronger.needs_rehash(stored)


def test_a_verifier_built_from_argon2_settings_keeps_their_hasher_and_makes_no_hash() -> None:
    hasher = CountingArgon2.from_parameters(argon2.profiles.CHEAPEST)
    argon2_side = Argon2Verifier(hasher, max_concurrent=2, warn_if_weak=False)
    Work.reset()
    made = DjangoPasswordVerifier.from_argon2(argon2_side, legacy=["md5"])
    assert made.hasher is hasher and made.legacy_formats == ("md5",)
    assert made.verify(argon2_side.hash(PASSWORD), PASSWORD)
    assert Work.argon2_verifications == 1


def _stored(kind: str) -> str | None:
    """A stored hash of *kind* (the verifier's password is PASSWORD, the test types another)."""
    return {
        "no hash (unknown login)": None,
        "unusable": make_password(None),
        "malformed legacy": "counting_pbkdf2$not-a-number$salt$hash",
        "format not accepted": make_password(PASSWORD, hasher="md5"),
        "plain text": "plain text",
        "malformed library hash": "$argon2id$v=19$m=8,t=1,p=1$garbage",
        "legacy": make_password(PASSWORD, hasher="counting_pbkdf2"),
        "legacy, fewer iterations": CountingPBKDF2PasswordHasher().encode(
            PASSWORD, "salt1234salt", iterations=400),
    }[kind]


@pytest.mark.parametrize("kind", ["no hash (unknown login)", "unusable", "malformed legacy",
                                  "format not accepted", "plain text", "malformed library hash",
                                  "legacy", "legacy, fewer iterations", "library hash"])
@pytest.mark.parametrize("password", ["WRONG-password-1", "\udc80 lone surrogate"])
def test_every_failure_does_the_same_work_whatever_the_stored_hash(
        counting: DjangoPasswordVerifier, kind: str, password: str) -> None:
    """Rule I7: one argon2 verification and one PBKDF2 at the current cost, every time."""
    stored = counting.hash(PASSWORD) if kind == "library hash" else _stored(kind)
    Work.reset()

    assert counting.verify(stored, password) is False

    assert (Work.argon2_verifications, Work.pbkdf2_iterations) == (
        1, CountingPBKDF2PasswordHasher.iterations)


@pytest.mark.parametrize("kind", ["legacy", "library hash"])
def test_a_success_does_the_same_work_as_a_failure(counting: DjangoPasswordVerifier,
                                                   kind: str) -> None:
    stored = counting.hash(PASSWORD) if kind == "library hash" else _stored(kind)
    Work.reset()

    assert counting.verify(stored, PASSWORD) is True

    assert (Work.argon2_verifications, Work.pbkdf2_iterations) == (
        1, CountingPBKDF2PasswordHasher.iterations)


def test_every_hash_and_verification_holds_a_slot_of_the_process_wide_bound(
        counting: DjangoPasswordVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one slot for the process, no two hashing steps ever run at once."""
    legacy = _stored("legacy")
    native = counting.hash(PASSWORD)
    monkeypatch.setattr(CountingArgon2, "pause", 0.02)
    monkeypatch.setattr(CountingPBKDF2PasswordHasher, "pause", 0.02)
    set_max_concurrent_hashes(1)
    try:
        Work.reset()
        barrier = threading.Barrier(4)

        def verify(i: int) -> None:
            barrier.wait()
            counting.verify([legacy, native, None, legacy][i], "WRONG-password-1")

        threads = [threading.Thread(target=verify, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        set_max_concurrent_hashes()
    assert Work.most_at_once == 1
    assert Work.argon2_verifications == 4


def test_the_service_rehashes_a_django_hash_into_argon2id_at_sign_in() -> None:
    """An ENT's existing password signs in unchanged and is stored anew as argon2id."""
    storage = InMemoryStorage()
    clock = FakeClock()
    college = make_establishment()
    account = Account(id="ent-42", login="claire.robert", role=Role.RESPONSABLE,
                      status=AccountStatus.ACTIVE, display_name="Claire Robert",
                      establishment_uai=college.uai, created_at=clock())
    storage.write(ChangeSet(
        new_accounts=[NewAccount(account, login_key(account.login))],
        credentials=[Credential(account.id, make_password(PASSWORD, hasher="pbkdf2_sha256"),
                                CredentialKind.PASSWORD)]))
    service = MergeService(storage, fast_django_verifier(), clock)
    assert service.authenticate("claire.robert", PASSWORD).id == "ent-42"
    with storage.unit_of_work(write=False) as uow:
        credential = uow.fetch(Fetch(accounts=["ent-42"])).accounts["ent-42"].credential
    assert credential is not None and credential.password_hash.startswith("$argon2id$")
    assert service.authenticate("claire.robert", PASSWORD).id == "ent-42"


def test_the_repr_names_the_class_and_never_a_hash(verifier: DjangoPasswordVerifier) -> None:
    text = repr(verifier)
    assert text.startswith("DjangoPasswordVerifier(time_cost=")
    assert "legacy=['pbkdf2_sha256', 'argon2', 'md5']" in text
    assert "$" not in text
