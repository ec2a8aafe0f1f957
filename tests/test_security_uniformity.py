"""Uniform failure (rule I7): every way a credential check fails looks the same.

For merge, activate and authenticate, each failure branch (unknown login,
wrong password, absorbed account, expired or used provisional password,
malformed stored hash, a password that cannot be encoded) must raise the
same ``invalid_credentials`` with the same message, run exactly one argon2
computation with the current parameters, and make the same storage calls
in the same order.  The time each branch takes is measured by
``benchmarks/timing_uniformity.py`` (not a test: timings are not asserted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import argon2
import attrs
import pytest
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from account_merge import Argon2Verifier, Child, MergeService
from account_merge.exceptions import AccountMergeError
from account_merge.ports import ChangeSet, Fetch
from account_merge.testing import CountingVerifier, FakeClock, make_establishment
from security_kit import InstrumentedStorage

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
NEW = "Nouvelle-Clé-Verte-2028"
WRONG = "WRONG234"
LONE_SURROGATE = "\ud800"


class CountingHasher(argon2.PasswordHasher):
    """A real PasswordHasher that notes the parameters of each argon2 computation.

    A verification computes a hash unless argon2 refuses the stored hash
    before any work (``InvalidHashError``, or a ``VerificationError``
    other than a mismatch: libargon2 decodes the hash before computing).
    """

    computations: list[argon2.Parameters]

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        try:
            result = super().verify(hash, password)
        except VerifyMismatchError:
            self._computed(hash)
            raise
        except (InvalidHashError, VerificationError):
            raise
        self._computed(hash)
        return result

    def _computed(self, hash: str | bytes) -> None:
        text = hash.decode("ascii") if isinstance(hash, bytes) else hash
        self.computations.append(argon2.extract_parameters(text))


def counting_hasher() -> CountingHasher:
    hasher = CountingHasher.from_parameters(argon2.profiles.CHEAPEST)
    assert isinstance(hasher, CountingHasher)
    hasher.computations = []
    return hasher


def break_hash(storage: InstrumentedStorage, account_id: str, garbage: str) -> None:
    """Write a malformed hash straight into the store."""
    with storage.inner.unit_of_work() as uow:
        credential = uow.fetch(Fetch(accounts=[account_id])).accounts[account_id].credential
        assert credential is not None
        uow.apply(ChangeSet(credentials=[attrs.evolve(credential, password_hash=garbage)]))
        uow.commit()


class World:
    """Accounts in every state a failed credential check can meet."""

    def __init__(self, storage: InstrumentedStorage) -> None:
        self.storage = storage
        self.hasher = counting_hasher()
        self.verifier = CountingVerifier(Argon2Verifier(self.hasher, warn_if_weak=False))
        self.clock = FakeClock()
        self.service = MergeService(storage, self.verifier, self.clock)
        issue = self.issue
        expired = issue(0)
        self.clock.advance(days=91)
        self.principal = self.activate(issue(1), STRONG)
        letter = issue(2)
        active = self.activate(issue(3), OTHER)
        merged_letter = issue(4)
        merged_active_letter = issue(5)
        merged_active = self.activate(merged_active_letter, OTHER)
        used = issue(6)
        self.activate(used, OTHER)
        garbage_letter, garbage_active = issue(7), self.activate(issue(8), OTHER)
        odd_letter, odd_active = issue(9), self.activate(issue(10), OTHER)
        self.service.merge(self.principal.id, merged_letter.login,
                           merged_letter.provisional_password)
        self.service.merge(self.principal.id, merged_active.login, OTHER)
        break_hash(storage, garbage_letter.account_id, "not an argon2 hash")
        break_hash(storage, garbage_active.id, "$argon2id$v=19$m=8,t=1,p=1$$")
        break_hash(storage, odd_letter.account_id, "$argon2id$v=19$m=8,t=1,p=1$sél$hâché")
        break_hash(storage, odd_active.id, "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi")

        def secret(letter: Any) -> str:
            return str(letter.provisional_password.reveal())

        #: For each branch: (login, password) a letter's holder or the owner would type.
        self.letter_branches: dict[str, tuple[str, str]] = {
            "wrong password": (letter.login, WRONG),
            "unknown login": ("nobody.here", secret(letter)),
            "absorbed account": (merged_letter.login, secret(merged_letter)),
            "expired provisional password": (expired.login, secret(expired)),
            "used provisional password": (used.login, secret(used)),
            "malformed stored hash": (garbage_letter.login, secret(garbage_letter)),
            "non-ASCII stored hash": (odd_letter.login, secret(odd_letter)),
            "password that cannot be encoded": (letter.login, LONE_SURROGATE),
        }
        #: For sign-in, an absorbed account's or a letter's right password is
        #: answered once proven (account_merged, activation_required): their
        #: wrong passwords are the branches that must look like any other.
        self.password_branches: dict[str, tuple[str, str]] = {
            "wrong password": (active.login, WRONG),
            "unknown login": ("nobody.here", OTHER),
            "absorbed account": (merged_active.login, WRONG),
            "absorbed letter": (merged_letter.login, WRONG),
            "provisional account": (letter.login, WRONG),
            "expired provisional password": (expired.login, secret(expired)),
            "malformed stored hash": (garbage_active.login, OTHER),
            "bcrypt stored hash": (odd_active.login, OTHER),
            "password that cannot be encoded": (active.login, LONE_SURROGATE),
        }

    def issue(self, n: int) -> Any:
        return self.service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                          [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])

    def activate(self, letter: Any, password: str) -> Any:
        return self.service.activate(letter.login, letter.provisional_password, password)

    def fail(self, call: Callable[[], object]) -> tuple[str, list[str], int, list[Any]]:
        """Run a failing call: its error, storage calls, verifications and computations."""
        self.clock.advance(hours=1)  # out of every back-off and of the principal's hour
        self.verifier.reset()
        self.hasher.computations = []
        with self.storage.recording() as calls, pytest.raises(AccountMergeError) as raised:
            call()
        return str(raised.value), calls, self.verifier.verifications, self.hasher.computations


@pytest.fixture
def world(instrumented: InstrumentedStorage) -> World:
    return World(instrumented)


def assert_uniform(world: World, results: dict[str, tuple[str, list[str], int, list[Any]]]
                   ) -> None:
    current = argon2.extract_parameters(world.hasher.hash("x"))
    reference = results["wrong password"]
    assert reference[0] == "invalid login or password [invalid_credentials]"
    assert reference[1], "no storage call was recorded"
    for branch, (message, calls, verifications, computations) in results.items():
        assert message == reference[0], branch
        assert calls == reference[1], branch
        assert verifications == 1, branch
        assert computations == [current], branch


def test_every_failed_merge_looks_the_same(world: World) -> None:
    service, principal = world.service, world.principal
    branches = {**world.letter_branches,
                **{f"{name} (activated)": value
                   for name, value in world.password_branches.items()}}
    branches["wrong password"] = world.letter_branches["wrong password"]
    results = {name: world.fail(lambda login=login, password=password: service.merge(
                   principal.id, login, password))
               for name, (login, password) in branches.items()}
    assert_uniform(world, results)


def test_every_failed_activation_looks_the_same(world: World) -> None:
    service = world.service
    results = {name: world.fail(lambda login=login, password=password: service.activate(
                   login, password, NEW))
               for name, (login, password) in world.letter_branches.items()}
    assert_uniform(world, results)


def test_every_failed_sign_in_looks_the_same(world: World) -> None:
    service = world.service
    results = {name: world.fail(lambda login=login, password=password: service.authenticate(
                   login, password))
               for name, (login, password) in world.password_branches.items()}
    assert_uniform(world, results)


def test_a_merge_with_an_idempotency_key_fails_alike_too(world: World) -> None:
    service, principal = world.service, world.principal
    results = {name: world.fail(lambda login=login, password=password: service.merge(
                   principal.id, login, password, idempotency_key="form-1"))
               for name, (login, password) in world.letter_branches.items()}
    assert_uniform(world, results)


def test_a_login_no_account_can_have_is_refused_before_any_work(world: World) -> None:
    """A login with a lone surrogate or a control character is ``invalid_input``.

    It is refused before any storage call or verification: no login can
    hold such characters, so the answer depends on the input alone and
    tells nothing about any account.
    """
    service, principal = world.service, world.principal
    for login in ("nobody\ud800", "nobody\x00", "a\nb", "a\u2028b", "x" * 65, "", None):
        for call in (lambda login=login: service.merge(principal.id, login, WRONG),
                     lambda login=login: service.activate(login, WRONG, NEW),
                     lambda login=login: service.authenticate(login, WRONG)):
            message, calls, verifications, _ = world.fail(call)
            assert message.endswith("[invalid_input]")
            assert (calls, verifications) == ([], 0)


@pytest.mark.parametrize("stored", [
    None, "real", "", "not an argon2 hash", "$argon2id$garbage", "$argon2id$v=19$m=8,t=1,p=1$$",
    "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=8,t=1,p=1$sél$hâché",
    "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi",
])
@pytest.mark.parametrize("password", [WRONG, LONE_SURROGATE, "", "\x00"])
def test_the_verifier_computes_one_hash_with_the_current_parameters_whatever_it_is_given(
        stored: str | None, password: str) -> None:
    hasher = counting_hasher()
    verifier = Argon2Verifier(hasher, warn_if_weak=False)
    current = argon2.extract_parameters(verifier.hash("x"))
    target = verifier.hash("the right one") if stored == "real" else stored
    hasher.computations = []
    assert verifier.verify(target, password) is False
    assert hasher.computations == [current]
