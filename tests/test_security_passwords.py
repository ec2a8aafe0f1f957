"""Provisional passwords and the parents' own passwords.

Provisional passwords work once and expire; the policy for new passwords
is the host's to choose (CNIL 2022-100 by default); overlong passwords are
refused before any hashing; hashes follow the current argon2 parameters;
weak parameters are warned about; and hashing is bounded per process.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import multiprocessing
import string
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import argon2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_merge import Argon2Verifier, Child, MergeService, NotificationLetter, Secret
from account_merge.credentials import WeakHashParametersWarning, set_max_concurrent_hashes
from account_merge.domain.passwords import (
    MAX_PASSWORD_LENGTH,
    PROVISIONAL_ALPHABET,
    CnilPasswordPolicy,
    common_passwords,
    fold,
    provisional_entropy_bits,
)
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import AccountMergeError, InvalidInput, PasswordPolicyError
from account_merge.ports import Fetch, Storage
from account_merge.testing import CountingVerifier, FakeClock, make_establishment
from security_kit import InstrumentedStorage

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
GENERATOR = Path(__file__).resolve().parent.parent / "tools" / "build_common_passwords.py"
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
NO_THROTTLE = ThrottlePolicy(backoff_after=10**6, lock_after=10**6,
                             principal_per_hour=10**6, principal_per_day=10**6)


def issue(service: MergeService, n: int) -> NotificationLetter:
    return service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                 [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])


def code(call: Callable[[], object]) -> str:
    try:
        call()
    except AccountMergeError as error:
        return error.code
    return "ok"


# -- provisional passwords -------------------------------------------------------------
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("activate"), st.integers(0, 5)),
    st.tuples(st.just("merge"), st.integers(0, 1), st.integers(0, 5)),
    st.tuples(st.just("authenticate"), st.integers(0, 5)),
    st.tuples(st.just("change_password"), st.integers(0, 5)),
    st.tuples(st.just("split"), st.integers(0, 1)),
    st.tuples(st.just("time"), st.sampled_from([1, 30, 89])),
), max_size=25)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_a_provisional_password_opens_its_account_at_most_once(
        make_storage: Callable[[], Storage], operations: list[tuple[Any, ...]]) -> None:
    """Whatever happens, each letter's password succeeds at most once, anywhere."""
    service = MergeService(make_storage(), CountingVerifier(), FakeClock(), throttle=NO_THROTTLE)
    letters = [issue(service, n) for n in range(4)]
    principals = []
    for n in (10, 11):
        letter = issue(service, n)
        principals.append(service.activate(letter.login, letter.provisional_password, STRONG))
    successes = {letter.account_id: 0 for letter in letters}
    passwords = iter(f"Nouvelle-Clé-Verte-{n}" for n in range(1000))

    def letter_at(i: int) -> NotificationLetter:
        return letters[i % len(letters)]

    for operation in operations:
        kind = operation[0]
        if kind == "time":
            service.clock.advance(days=operation[1])  # type: ignore[attr-defined]
            continue
        if kind == "split":
            holder = principals[operation[1]]
            with_split = code(lambda holder=holder: letters.append(
                service.split(SCHOOL, holder.id).letter))
            if with_split == "ok":
                successes[letters[-1].account_id] = 0
            continue
        letter = letter_at(operation[-1])
        secret = letter.provisional_password
        calls: dict[str, Callable[[], object]] = {
            "activate": lambda: service.activate(letter.login, secret, next(passwords)),  # noqa: B023
            "merge": lambda: service.merge(principals[operation[1]].id, letter.login, secret),  # noqa: B023
            "authenticate": lambda: service.authenticate(letter.login, secret),  # noqa: B023
            "change_password": lambda: service.change_password(
                letter.account_id, secret, next(passwords)),  # noqa: B023
        }
        if code(calls[kind]) == "ok":
            successes[letter.account_id] += 1
    assert all(count <= 1 for count in successes.values()), successes


class TestProvisionalPasswords:
    def test_a_provisional_password_expires_with_the_injected_clock(
            self, instrumented: InstrumentedStorage) -> None:
        clock = FakeClock()
        service = MergeService(instrumented, CountingVerifier(), clock)
        principal_letter, early, late, merged = (issue(service, n) for n in range(4))
        principal = service.activate(principal_letter.login, principal_letter.provisional_password,
                                     STRONG)
        clock.set(early.expires_at - timedelta(microseconds=1))
        assert code(lambda: service.activate(early.login, early.provisional_password,
                                             OTHER)) == "ok"
        assert code(lambda: service.merge(principal.id, merged.login,
                                          merged.provisional_password)) == "ok"
        clock.set(late.expires_at)
        assert code(lambda: service.activate(late.login, late.provisional_password,
                                             OTHER)) == "invalid_credentials"
        assert code(lambda: service.merge(principal.id, late.login,
                                          late.provisional_password)) == "invalid_credentials"

    def test_the_validity_is_configurable(self, instrumented: InstrumentedStorage) -> None:
        clock = FakeClock()
        service = MergeService(instrumented, CountingVerifier(), clock,
                               provisional_validity=timedelta(days=7))
        letter = issue(service, 1)
        assert letter.expires_at - letter.issued_at == timedelta(days=7)
        clock.advance(days=7)
        assert code(lambda: service.activate(letter.login, letter.provisional_password,
                                             STRONG)) == "invalid_credentials"

    @pytest.mark.parametrize("length,bits", [(6, 30), (8, 40), (12, 60), (16, 80), (64, 320)])
    def test_the_length_is_configurable_and_each_character_carries_five_bits(
            self, instrumented: InstrumentedStorage, length: int, bits: int) -> None:
        service = MergeService(instrumented, CountingVerifier(), FakeClock(),
                               provisional_length=length)
        password = issue(service, 1).provisional_password.reveal()
        assert len(password) == length
        assert set(password) <= set(PROVISIONAL_ALPHABET)
        assert len(PROVISIONAL_ALPHABET) == 32
        assert provisional_entropy_bits(length) == pytest.approx(bits)

    @pytest.mark.parametrize("length", [5, 65, 0, "8", 8.0, True])
    def test_a_length_outside_six_to_sixty_four_is_refused(
            self, instrumented: InstrumentedStorage, length: Any) -> None:
        with pytest.raises(InvalidInput):
            MergeService(instrumented, CountingVerifier(), FakeClock(),
                         provisional_length=length)


# -- the parents' own passwords ------------------------------------------------------------
class OnlyHorses:
    """A host's policy: any password that mentions a horse, nothing else."""

    def check(self, password: str, *, login: str, context: Sequence[str] = ()) -> None:
        if "horse" not in password:
            raise PasswordPolicyError("say horse")


class TestPolicy:
    def test_the_default_follows_cnil_2022_100(self, instrumented: InstrumentedStorage) -> None:
        service = MergeService(instrumented, CountingVerifier(), FakeClock())
        assert isinstance(service.policies.password_policy, CnilPasswordPolicy)
        assert "2022-100" in (CnilPasswordPolicy.__doc__ or "")
        letter = issue(service, 1)
        for weak in ("horse", "Gravel-Mint5"[:11], "gravelmintsoup", "Gravelmintso1"):
            assert code(lambda w=weak: service.activate(letter.login, letter.provisional_password,
                                                        w)) == "password_policy"
        for strong in ("Gravel-Mint5", "Gravelmintsoup12", "correct horse battery staple"):
            CnilPasswordPolicy().check(strong, login=letter.login)

    def test_a_host_chooses_its_own_policy(self, instrumented: InstrumentedStorage) -> None:
        verifier = CountingVerifier()
        service = MergeService(instrumented, verifier, FakeClock(), password_policy=OnlyHorses())
        letter = issue(service, 1)
        verifier.reset()
        with pytest.raises(PasswordPolicyError) as raised:
            service.activate(letter.login, letter.provisional_password, STRONG)
        assert str(raised.value) == "say horse [password_policy]"
        assert (verifier.verifications, verifier.hashes) == (0, 0)  # checked before any work
        account = service.activate(letter.login, letter.provisional_password, "horse")
        assert code(lambda: service.change_password(account.id, "horse", STRONG)) == (
            "password_policy")
        assert code(lambda: service.change_password(account.id, "horse", "a horse")) == "ok"
        assert service.authenticate(letter.login, "a horse").id == account.id

    @pytest.mark.parametrize("policy", [object(), "cnil", 12])
    def test_a_policy_without_check_is_refused(self, instrumented: InstrumentedStorage,
                                               policy: Any) -> None:
        with pytest.raises(InvalidInput):
            MergeService(instrumented, CountingVerifier(), FakeClock(), password_policy=policy)


# -- the default policy: guessable passwords (NIST SP 800-63B 5.1.1.2) -----------------------
LOGIN = "claire.robert"
GUESSABLE = {"common_password", "repetitive", "sequential"}


def refusal(password: str, login: str = LOGIN, context: Sequence[str] = ()) -> str:
    """The rule that refused *password*, or ``"accepted"``."""
    try:
        CnilPasswordPolicy().check(password, login=login, context=context)
    except PasswordPolicyError as error:
        assert error.code == "password_policy"
        return str(error.rule)
    return "accepted"


class TestGuessablePasswords:
    @pytest.mark.parametrize("password,rule", [
        ("aaaaaaaaaaaaaaaaaaaa", "repetitive"),
        ("aaaa", "repetitive"),
        ("ZZZZZZZZZZZZ!!", "repetitive"),
        ("aaaa1111bbbb2222", "repetitive"),
        ("!!!!!!!!a11111111111", "repetitive"),
        ("Aaa1!aA1!!aaa11", "repetitive"),
        ("Abababababab12!", "repetitive"),
        ("Zq8#mP2!Zq8#mP2!", "repetitive"),
        ("1234", "sequential"),
        ("abcd", "sequential"),
        ("Abcdefghijkl12", "sequential"),
        ("zyxwvutsrqponmlk", "sequential"),
        ("1234567890123456", "sequential"),
        ("9876543210-9876", "sequential"),
        ("Azertyuiop123!", "sequential"),
        ("Qwerty-123456!", "sequential"),
        ("qsdfghjklmwxcvbn", "sequential"),
        ("POIUYTREZA2026!", "sequential"),
        ("Password1234!", "common_password"),
        ("Motdepasse123!", "common_password"),
        ("!!soleil2024", "common_password"),
        ("P@ssw0rd", "common_password"),
        ("P@ssw0rd-2024!", "common_password"),
        ("M0tD3P@ss3!!!", "common_password"),
        ("soleilsoleilsoleil", "common_password"),
        ("SoleilSoleilSoleil2024!", "common_password"),
        ("Mot de passe 2024 !", "common_password"),
        ("Nouveau-Mot-de-passe-2028", "common_password"),
        ("Chérie-2024!!", "common_password"),
        ("CHERIE-2024!!", "common_password"),
        ("Ｐａｓｓｗｏｒｄ１２３４！", "common_password"),
        ("Marseille13013!", "common_password"),
        ("1q2w3e4r5t6y!", "common_password"),
        ("Qazwsx-2024!!", "common_password"),
        ("Jetaime<3<3<3", "common_password"),
        ("Doudou-2015!!", "common_password"),
        ("01/01/1990-31", "common_password"),
        ("Short1!", "too_short"),
        ("Tab\tinside-Pass1", "control_characters"),
        ("alllowercase12", "character_classes"),
        ("A" * 1025, "too_long"),
    ])
    def test_each_password_is_refused_by_the_rule_it_breaks(self, password: str,
                                                            rule: str) -> None:
        assert refusal(password) == rule

    @pytest.mark.parametrize("password,word", [
        ("P@ssw0rd-2024!", "password"),   # @ and 0
        ("L3tM31n!2024", "letmein"),      # 3, and 1 for i
        ("He11oWor1d-2024", "helloworld"),  # 1 for l
        ("F00tb4ll-2024!", "football"),   # 4
        ("5ol3il-2024!!", "soleil"),      # 5
        ("Pa$$word-2024", "password"),    # $
        ("7igrou-2024!!", "tigrou"),      # 7
        ("8onj0ur-2024!", "bonjour"),     # 8
        ("!loveyou-2024", "iloveyou"),    # !
        ("Ch€ri€-2024!!", "cherie"),      # €
    ])
    def test_leetspeak_is_read_back(self, password: str, word: str) -> None:
        assert word in common_passwords()
        assert refusal(password) == "common_password"

    def test_affixes_of_any_length_are_dropped_around_letters(self) -> None:
        assert refusal("2024!!!!!!!!!!!!Soleil2024!!!!!!!!!!!!") == "common_password"

    @pytest.mark.parametrize("password,rule", [
        ("Lea2015!Lea2015!", "contains_login"),
        ("Vacances-Roux-2026!", "contains_login"),
        ("Pleased-Autumn-2026", "accepted"),
    ])
    def test_a_three_letter_name_of_the_login_counts_as_a_whole_word(
            self, password: str, rule: str) -> None:
        assert refusal(password, login="lea.roux") == rule

    @pytest.mark.parametrize("password", [
        "Claire.Robert-2026!",
        "CLAIRE.ROBERT-2026!",
        "Mon-ｃｌａｉｒｅ．ｒｏｂｅｒｔ-2026",
        "ｃｌａｉｒｅ．ｒｏｂｅｒｔ-Bonjour-2026",
        "Cl@ire-R0bert-2026!",
        "Robert-Vacances-2026!",
        "Vacances-Claire-2026!",
        "clairerobertclairerobert",
    ])
    def test_the_login_or_a_name_in_it_is_refused_in_any_form(self, password: str) -> None:
        """NFKC and case folding first: full-width letters, capitals and leetspeak alike."""
        assert refusal(password) == "contains_login"

    @pytest.mark.parametrize("context,password", [
        (("Marie-Christine Delacroix-Fontaine",), "Fontaine-Vacances-2026!"),
        (("Marie-Christine Delacroix-Fontaine",), "DELACROIXfontaine-2026!"),
        (("Marie-Christine Delacroix-Fontaine",), "Vacances-ＦＯＮＴＡＩＮＥ-2026"),
        (("Léa Roux",), "Lea2015!Lea2015!"),
        (("Léa Roux",), "Vacances-Roux-2026!"),
        (("lapinou.rose@example.fr",), "Lapinou-Vacances-2026!"),
        (("", "lapinou.rose@example.fr"), "Rose&Lapinou-2026!"),
    ])
    def test_the_words_of_the_context_are_refused(self, context: tuple[str, ...],
                                                  password: str) -> None:
        assert refusal(password, login="x.y", context=context) == "contains_context"

    @pytest.mark.parametrize("context,password", [
        (("Léa Roux",), "Pleased-Autumn-2026"),     # 3-letter names: whole words only
        (("Léa Roux",), "Croustillant-2026!"),     # "roux" is not inside
        (("lapinou.rose@example.fr",), "Example-Vacances-2026"),   # the domain is no one's
        (("",), "Vacances-Pluvieuses-2026"),
    ])
    def test_a_context_word_must_really_be_there(self, context: tuple[str, ...],
                                                 password: str) -> None:
        assert refusal(password, login="x.y", context=context) == "accepted"

    @pytest.mark.parametrize("password", [
        "cheval correct pile agrafe",
        "Correct-Horse-Battery-9",
        "Mot-de-passe-Sûr-2026",
        "Autre-Mot-de-passe-2027",
        "Nouvelle-Clé-Verte-2028",
        "Un-Mot-De-Passe-42!",
        "Trois-Rivieres-2024!",
        "Tr0ub4dor&3xy",
        "Correcthorse2026",
        "la girafe mange des crêpes à Brest",
        "Mon chat Félix dort sur le canapé",
        "Gravel-Mint5",
        "Pluie-sur-Quimper-1987",
    ])
    def test_good_passwords_and_passphrases_are_accepted(self, password: str) -> None:
        assert refusal(password) == "accepted"

    @settings(max_examples=300, deadline=None)
    @given(word=st.sampled_from(sorted(common_passwords())),
           before=st.text(string.digits + string.punctuation + " €£§°", max_size=8),
           after=st.text(string.digits + string.punctuation + " €£§°", max_size=8))
    def test_a_listed_password_with_digits_or_symbols_stuck_on_is_refused(
            self, word: str, before: str, after: str) -> None:
        assert refusal(before + word + after, login="q.z") in GUESSABLE

    @settings(max_examples=200, deadline=None)
    @given(word=st.sampled_from(sorted(w for w in common_passwords() if w.isalpha())),
           capitals=st.lists(st.booleans(), min_size=30, max_size=30),
           times=st.integers(1, 4), after=st.text(string.digits + "!?*.", max_size=5))
    def test_a_listed_word_in_capitals_or_typed_again_and_again_is_refused(
            self, word: str, capitals: list[bool], times: int, after: str) -> None:
        typed = "".join(ch.upper() if up else ch for ch, up in zip(word, capitals, strict=False))
        typed += word[len(typed):]
        assert refusal(typed * times + after, login="q.z") in GUESSABLE

    @settings(max_examples=200, deadline=None)
    @given(password=st.text(max_size=40), login=st.text(max_size=20),
           context=st.lists(st.text(max_size=20), max_size=3))
    def test_every_refusal_names_one_of_the_documented_rules(
            self, password: str, login: str, context: list[str]) -> None:
        try:
            CnilPasswordPolicy().check(password, login=login, context=context)
        except PasswordPolicyError as error:
            assert error.rule in PasswordPolicyError.RULES

    def test_the_check_stays_cheap_on_the_longest_and_oddest_passwords(self) -> None:
        """A set lookup and a few folded forms: a few milliseconds, less than one hash.

        The worst is U+FDFA, which NFKC turns into 18 characters.
        """
        policy = CnilPasswordPolicy()
        worst = ["1" * 1024, "!" * 511 + "a" + "1" * 512, "ab" * 512, "a1!" * 341,
                 "\ufdfa" * 1024, "Ａ" * 1024, "azertyuiop" * 102]
        for password in worst:
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                with contextlib.suppress(PasswordPolicyError):
                    policy.check(password, login=LOGIN, context=("Claire Robert",))
                timings.append(time.perf_counter() - started)
            assert min(timings) < 0.1, (password[:10], min(timings))


class TestContextFromTheService:
    def test_changing_the_password_refuses_the_accounts_names_and_email(
            self, instrumented: InstrumentedStorage) -> None:
        verifier = CountingVerifier()
        service = MergeService(instrumented, verifier, FakeClock())
        letter = service.issue_account(SCHOOL, "Marie-Christine Delacroix-Fontaine",
                                       [Child("ine-1", "Enfant", "Fontaine", SCHOOL.uai)])
        assert "fontaine" not in letter.login  # logins keep 24 characters
        account = service.activate(letter.login, letter.provisional_password, STRONG,
                                   email="lapinou.rose@example.fr")
        verifier.reset()
        for password, rule in [("Fontaine-Vacances-2026!", "contains_context"),
                               ("Lapinou-Vacances-2026!", "contains_context"),
                               ("Christine-Vacances-2026!", "contains_login"),
                               ("Password1234!", "common_password")]:
            with pytest.raises(PasswordPolicyError) as raised:
                service.change_password(account.id, STRONG, password)
            assert raised.value.rule == rule
        assert (verifier.verifications, verifier.hashes) == (0, 0)  # checked before any work
        service.change_password(account.id, STRONG, OTHER)
        assert service.authenticate(account.login, OTHER).id == account.id

    def test_activation_refuses_the_login_and_the_email_typed_with_it(
            self, instrumented: InstrumentedStorage) -> None:
        service = MergeService(instrumented, CountingVerifier(), FakeClock())
        letter = issue(service, 1)
        for password, email, rule in [
                ("Numero-Vacances-2026!", None, "contains_login"),
                ("Lapinou-Vacances-2026!", "lapinou.rose@example.fr", "contains_context"),
                ("Motdepasse123!", None, "common_password")]:
            with pytest.raises(PasswordPolicyError) as raised:
                service.activate(letter.login, letter.provisional_password, password,
                                 email=email)
            assert raised.value.rule == rule
        service.activate(letter.login, letter.provisional_password, STRONG,
                         email="lapinou.rose@example.fr")

    def test_activation_says_nothing_of_a_display_name_it_has_not_proven(
            self, instrumented: InstrumentedStorage) -> None:
        """Checked before the provisional password, the policy sees only what was typed.

        Refusing the display name there would tell whoever types a login
        the name of its holder; ``change_password`` refuses it.
        """
        service = MergeService(instrumented, CountingVerifier(), FakeClock())
        letter = service.issue_account(SCHOOL, "Marie-Christine Delacroix-Fontaine",
                                       [Child("ine-1", "Enfant", "Fontaine", SCHOOL.uai)])
        assert code(lambda: service.activate(letter.login, "WRONG234",
                                             "Fontaine-Vacances-2026!")) == "invalid_credentials"


class TestCommonPasswordList:
    def test_the_shipped_list_is_exactly_what_the_generator_writes(self) -> None:
        """Nobody edits the data file by hand: change the seed and run the generator."""
        spec = importlib.util.spec_from_file_location("build_common_passwords", GENERATOR)
        assert spec is not None and spec.loader is not None
        generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generator)

        expected = generator.build()

        shipped = resources.files("account_merge.domain") / "common_passwords.txt.gz"
        assert gzip.decompress(shipped.read_bytes()).decode("utf-8") == expected
        assert common_passwords() == frozenset(expected.split())

    def test_the_list_is_big_enough_and_holds_what_parents_type(self) -> None:
        words = common_passwords()
        assert len(words) > 40_000
        for word in ("motdepasse", "azerty", "soleil", "doudou", "loulou", "chouchou",
                     "marseille", "bonjour", "jetaime", "coucou", "nicolas", "camille",
                     "password", "qwerty", "letmein", "iloveyou", "dragon", "football",
                     "1q2w3e4r", "azertyuiop", "qazwsx", "zaq12wsx", "147258369",
                     "123456789", "1900", "2039", "01011930", "31122039", "29022000"):
            assert word in words, word
        for word in ("1899", "2040", "31121929", "01012040", "29022001", "abc"):
            assert word not in words, word

    def test_the_list_takes_under_8_mb(self) -> None:
        words = common_passwords()
        assert sys.getsizeof(words) + sum(map(sys.getsizeof, words)) < 8_000_000

    def test_the_list_is_read_on_first_use_not_on_import(self) -> None:
        script = ("import account_merge\n"
                  "from account_merge.domain import passwords\n"
                  "from account_merge.testing import make_service\n"
                  "make_service()\n"
                  "print(passwords.common_passwords.cache_info().currsize)\n"
                  "passwords.CnilPasswordPolicy().check('Mot-de-passe-Sûr-2026', login='a.b')\n"
                  "print(passwords.common_passwords.cache_info().currsize)\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", "1"]

    def test_every_entry_is_in_the_form_a_password_is_compared_in(self) -> None:
        words = common_passwords()
        assert all(len(word) >= 4 and word.isalnum() and fold(word) == word for word in words)

    def test_it_is_read_once(self) -> None:
        assert common_passwords() is common_passwords()


class TestLength:
    def test_a_password_over_1024_characters_is_refused_before_any_hashing(
            self, instrumented: InstrumentedStorage) -> None:
        verifier = CountingVerifier()
        service = MergeService(instrumented, verifier, FakeClock(), password_policy=OnlyHorses())
        principal_letter, letter = issue(service, 1), issue(service, 2)
        principal = service.activate(principal_letter.login,
                                     principal_letter.provisional_password, "horse")
        huge = "horse" * 205  # 1025 characters
        assert len(huge) == MAX_PASSWORD_LENGTH + 1
        calls = [
            lambda: service.activate(letter.login, letter.provisional_password, huge),
            lambda: service.activate(letter.login, huge, "horse"),
            lambda: service.authenticate(principal.login, huge),
            lambda: service.authenticate(principal.login, Secret(huge)),
            lambda: service.merge(principal.id, letter.login, huge),
            lambda: service.change_password(principal.id, huge, "horse 2"),
            lambda: service.change_password(principal.id, "horse", huge),
        ]
        for call in calls:
            verifier.reset()
            assert code(call) == "invalid_input"
            assert (verifier.verifications, verifier.hashes) == (0, 0)
        # 1024 characters are a password like any other.
        verifier.reset()
        assert code(lambda: service.authenticate(principal.login, huge[:-1])) == (
            "invalid_credentials")
        assert verifier.verifications == 1


def cheap(**changes: int) -> argon2.PasswordHasher:
    parameters = {"time_cost": 1, "memory_cost": 8, "parallelism": 1, "hash_len": 16,
                  "salt_len": 8, **changes}
    return argon2.PasswordHasher(**parameters)


class TestHashParameters:
    def test_signing_in_rehashes_a_hash_made_with_other_parameters(
            self, instrumented: InstrumentedStorage) -> None:
        clock = FakeClock()
        old = CountingVerifier(Argon2Verifier(cheap(), warn_if_weak=False))
        new = CountingVerifier(Argon2Verifier(cheap(time_cost=2), warn_if_weak=False))
        letter = issue(MergeService(instrumented, old, clock), 1)
        account = MergeService(instrumented, old, clock).activate(
            letter.login, letter.provisional_password, STRONG)

        def stored() -> str:
            with instrumented.inner.unit_of_work(write=False) as uow:
                credential = uow.fetch(Fetch(accounts=[account.id])).accounts[
                    account.id].credential
            assert credential is not None
            return credential.password_hash

        old.reset()
        MergeService(instrumented, old, clock).authenticate(account.login, STRONG)
        assert old.hashes == 0  # same parameters: nothing to do
        before = stored()
        MergeService(instrumented, new, clock).authenticate(account.login, STRONG)
        assert new.hashes == 1
        assert stored() != before and not new.needs_rehash(stored())
        assert argon2.extract_parameters(stored()).time_cost == 2
        new.reset()
        assert MergeService(instrumented, new, clock).authenticate(account.login, STRONG).id == (
            account.id)
        assert new.hashes == 0
        # A wrong password never rehashes.
        assert code(lambda: MergeService(instrumented, old, clock).authenticate(
            account.login, OTHER)) == "invalid_credentials"
        assert not new.needs_rehash(stored())

    @pytest.mark.parametrize("memory,passes", [
        (46 * 1024, 1), (19 * 1024, 2), (12 * 1024, 3), (9 * 1024, 4), (7 * 1024, 5)])
    def test_parameters_below_the_owasp_floor_are_warned_about(self, memory: int,
                                                                passes: int) -> None:
        def warned(hasher: argon2.PasswordHasher) -> bool:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                Argon2Verifier(hasher)
            return any(issubclass(w.category, WeakHashParametersWarning) for w in caught)

        assert not warned(cheap(memory_cost=memory, time_cost=passes))
        assert not warned(cheap(memory_cost=memory, time_cost=passes, parallelism=2))
        assert warned(cheap(memory_cost=memory - 1, time_cost=passes))
        if passes > 1:
            assert warned(cheap(memory_cost=memory, time_cost=passes - 1))
        assert warned(argon2.PasswordHasher(memory_cost=memory, time_cost=passes, parallelism=1,
                                            type=argon2.Type.I))

    def test_the_defaults_are_not_warned_about_and_the_warning_can_be_silenced(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", WeakHashParametersWarning)
            Argon2Verifier()
            Argon2Verifier(cheap(), warn_if_weak=False)
        with pytest.warns(WeakHashParametersWarning, match="below the OWASP floor"):
            Argon2Verifier(cheap())


class Gauge:
    """How many verifications are inside argon2 at once; they wait at a gate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.gate = threading.Event()

    def turnstile(self) -> argon2.PasswordHasher:
        """A real hasher whose verifications pass through this gauge."""
        gauge = self

        class Turnstile(argon2.PasswordHasher):
            def verify(self, hash: str | bytes, password: str | bytes) -> Any:
                with gauge.lock:
                    gauge.inside += 1
                    gauge.peak = max(gauge.peak, gauge.inside)
                try:
                    gauge.gate.wait(30)
                    return super().verify(hash, password)
                finally:
                    with gauge.lock:
                        gauge.inside -= 1

        return Turnstile.from_parameters(argon2.profiles.CHEAPEST)

    def burst(self, verifiers: list[Argon2Verifier], calls: int) -> int:
        """Start *calls* verifications over *verifiers*; the most ever inside at once."""
        self.peak = 0
        threads = [threading.Thread(target=verifiers[i % len(verifiers)].verify,
                                    args=(None, "x")) for i in range(calls)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # let every thread reach what it can reach (not a measure)
        self.gate.set()
        for thread in threads:
            thread.join(30)
        return self.peak


@pytest.fixture
def process_limit() -> Iterator[Callable[[int], None]]:
    yield set_max_concurrent_hashes
    set_max_concurrent_hashes(None)


class TestConcurrentHashing:
    def test_at_most_the_process_limit_run_at_once_across_every_verifier(
            self, process_limit: Callable[[int], None]) -> None:
        process_limit(2)
        gauge = Gauge()
        verifiers = [Argon2Verifier(gauge.turnstile(), warn_if_weak=False) for _ in range(3)]
        assert gauge.burst(verifiers, 8) == 2

    def test_a_verifier_can_be_bounded_further(
            self, process_limit: Callable[[int], None]) -> None:
        process_limit(4)
        gauge = Gauge()
        verifier = Argon2Verifier(gauge.turnstile(), max_concurrent=1, warn_if_weak=False)
        assert gauge.burst([verifier], 6) == 1

    def test_without_a_tight_bound_the_burst_does_run_at_once(
            self, process_limit: Callable[[int], None]) -> None:
        """The two tests above have teeth: the turnstile does see concurrency."""
        process_limit(8)
        gauge = Gauge()
        verifiers = [Argon2Verifier(gauge.turnstile(), warn_if_weak=False) for _ in range(2)]
        assert gauge.burst(verifiers, 6) == 6

    @pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                        reason="needs fork")
    def test_a_forked_child_does_not_inherit_the_slots_its_parent_holds(
            self, process_limit: Callable[[int], None]) -> None:
        """A child forked while a verification runs can still hash (no inherited slot)."""
        process_limit(1)
        gauge = Gauge()
        busy = Argon2Verifier(gauge.turnstile(), warn_if_weak=False)
        holder = threading.Thread(target=busy.verify, args=(None, "x"))
        holder.start()
        try:
            deadline = time.monotonic() + 30
            while gauge.inside == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert gauge.inside == 1  # the only slot of the process is taken
            child = multiprocessing.get_context("fork").Process(target=_hash_once)
            child.start()
            child.join(60)
            assert child.exitcode == 0
        finally:
            gauge.gate.set()
            holder.join(30)

    @pytest.mark.parametrize("limit", [0, -1, "2", 2.0, True])
    def test_a_limit_must_be_a_positive_int(self, limit: Any) -> None:
        with pytest.raises(InvalidInput):
            set_max_concurrent_hashes(limit)
        with pytest.raises(InvalidInput):
            Argon2Verifier(cheap(), max_concurrent=limit, warn_if_weak=False)


def _hash_once() -> None:
    """In a forked child: one hash, which needs a slot of the child's own."""
    Argon2Verifier(cheap(), warn_if_weak=False).hash("x")
