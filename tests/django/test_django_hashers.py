"""DjangoPasswordVerifier: an ENT's Django password hashes keep working, then are upgraded."""

from __future__ import annotations

from typing import Literal

import argon2
import pytest
from django.contrib.auth.hashers import make_password
from fast_verifier import fast_django_verifier

from account_merge import Account, AccountStatus, Role
from account_merge.contrib.django.hashers import DjangoPasswordVerifier
from account_merge.domain.account import Credential, CredentialKind
from account_merge.domain.logins import login_key
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.testing import FakeClock, make_establishment

PASSWORD = "Mot-de-passe-de-l-ENT-2019"


class CountingHasher(argon2.PasswordHasher):
    """Counts the argon2 verifications that did the work (a malformed hash does none)."""

    worked = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        try:
            result = super().verify(hash, password)
        except argon2.exceptions.VerifyMismatchError:
            type(self).worked += 1
            raise
        type(self).worked += 1
        return result


@pytest.fixture
def verifier() -> DjangoPasswordVerifier:
    return fast_django_verifier()


@pytest.mark.parametrize("hasher", ["pbkdf2_sha256", "argon2", "md5"])
def test_a_django_hash_is_checked_with_django_s_hasher(
        verifier: DjangoPasswordVerifier, hasher: str) -> None:
    stored = make_password(PASSWORD, hasher=hasher)
    assert stored.startswith(f"{hasher}$")
    assert verifier.verify(stored, PASSWORD)
    assert not verifier.verify(stored, PASSWORD + "x")
    assert verifier.needs_rehash(stored)


def test_the_library_s_own_hashes_work_and_need_no_rehash(
        verifier: DjangoPasswordVerifier) -> None:
    stored = verifier.hash(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert verifier.verify(stored, PASSWORD)
    assert not verifier.needs_rehash(stored)
    stronger = DjangoPasswordVerifier(argon2.PasswordHasher(time_cost=2, memory_cost=64,
                                                            parallelism=1), warn_if_weak=False)
    assert stronger.needs_rehash(stored)


@pytest.mark.parametrize("stored", [
    None,
    "!XRGaSUiCpLLTcKIfqRjQCVCIGTGcltbtYNxayBrK",  # unusable, as make_password(None) makes
    "!",
    "pbkdf2_sha256$not-a-number$salt$hash",  # malformed
    "sha1$unknown-to-this-project$x",     # a hasher PASSWORD_HASHERS does not list
    "$argon2id$v=19$m=8,t=1,p=1$garbage",  # malformed library hash
    "plain text",
])
def test_every_failure_costs_one_verification_and_returns_false(stored: str | None) -> None:
    """Rule I7: no hash, unusable or malformed ones all run the dummy verification."""
    verifier = DjangoPasswordVerifier(
        CountingHasher.from_parameters(argon2.profiles.CHEAPEST), warn_if_weak=False)
    CountingHasher.worked = 0
    assert verifier.verify(stored, PASSWORD) is False
    assert CountingHasher.worked == 1


def test_a_password_that_cannot_be_encoded_fails_like_any_other(
        verifier: DjangoPasswordVerifier) -> None:
    assert not verifier.verify(make_password(PASSWORD, hasher="md5"), "\udc80 surrogate")


def test_the_service_rehashes_a_django_hash_into_argon2id_at_sign_in() -> None:
    """An ENT's existing password signs in unchanged and is stored anew as argon2id."""
    storage = InMemoryStorage()
    clock = FakeClock()
    college = make_establishment()
    account = Account(id="ent-42", login="claire.robert", role=Role.RESPONSABLE,
                      status=AccountStatus.ACTIVE, display_name="Claire Robert",
                      establishment_uai=college.uai, created_at=clock())
    with storage.unit_of_work() as uow:
        uow.add_account(account, login_key(account.login))
        uow.put_credential(Credential(account.id, make_password(PASSWORD, hasher="pbkdf2_sha256"),
                                      CredentialKind.PASSWORD))
        uow.commit()
    service = MergeService(storage, fast_django_verifier(), clock)
    assert service.authenticate("claire.robert", PASSWORD).id == "ent-42"
    with storage.unit_of_work(write=False) as uow:
        credential = uow.get_credential("ent-42")
    assert credential is not None and credential.password_hash.startswith("$argon2id$")
    assert service.authenticate("claire.robert", PASSWORD).id == "ent-42"


def test_the_repr_names_the_class_and_never_a_hash(verifier: DjangoPasswordVerifier) -> None:
    assert repr(verifier).startswith("DjangoPasswordVerifier(time_cost=")
