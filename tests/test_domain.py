"""The domain values: validation, secrets, logins, letters, policies."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from account_merge import Account, AccountStatus, Child, Establishment, Role, Secret
from account_merge.domain.establishment import uai_check_letter, validate_uai
from account_merge.domain.logins import derive_login, login_key
from account_merge.domain.passwords import (
    PROVISIONAL_ALPHABET,
    CnilPasswordPolicy,
    fold,
    generate_provisional_password,
    provisional_entropy_bits,
)
from account_merge.domain.throttle import (
    ThrottlePolicy,
    ThrottleState,
    check_client,
    merge_key,
    principal_key,
    signin_key,
)
from account_merge.domain.validation import escape_for_log
from account_merge.exceptions import InvalidInput, PasswordPolicyError
from account_merge.testing.strategies import establishments, uais

T0 = datetime(2026, 9, 1, tzinfo=UTC)


class TestEstablishment:
    def test_a_uai_with_its_check_letter_is_accepted(self) -> None:
        assert uai_check_letter("0860001") == "J"
        assert Establishment("0860001J", "Collège").uai == "0860001J"

    def test_a_lower_case_check_letter_is_normalised(self) -> None:
        assert Establishment(" 0860001j ", "Collège").uai == "0860001J"

    @pytest.mark.parametrize(
        "bad", ["0860001A", "086001J", "08600011", "ABCDEFGH", "", "0860001JJ"])
    def test_a_bad_uai_is_invalid_input_saying_why(self, bad: str) -> None:
        with pytest.raises(InvalidInput) as raised:
            Establishment(bad, "Collège")
        assert raised.value.field == "uai"
        assert "uai" in str(raised.value)

    def test_a_uai_that_is_not_a_string_is_invalid_input(self) -> None:
        with pytest.raises(InvalidInput, match="must be a string"):
            validate_uai(860001)

    @given(uais())
    def test_every_generated_uai_validates(self, uai: str) -> None:
        assert validate_uai(uai) == uai

    @given(establishments())
    def test_generated_establishments_are_valid_values(self, school: Establishment) -> None:
        assert Establishment(school.uai, school.name) == school

    @pytest.mark.parametrize("name", ["", "   ", "x" * 201, "Collège\x00", "Lycée\nBis"])
    def test_a_bad_name_is_invalid_input(self, name: str) -> None:
        with pytest.raises(InvalidInput):
            Establishment("0860001J", name)


class TestChild:
    def test_a_child_is_a_value(self) -> None:
        assert Child("c1", "Dylan", "Robert", "0860001J") == Child("c1", "Dylan", "Robert",
                                                                   "0860001j")

    @pytest.mark.parametrize("field,kwargs", [
        ("id", {"id": ""}),
        ("id", {"id": "has space"}),
        ("first_name", {"first_name": ""}),
        ("last_name", {"last_name": "x" * 101}),
        ("first_name", {"first_name": "Dy\tlan"}),
        ("uai", {"establishment_uai": "0860001A"}),
        ("id", {"id": 12}),
    ])
    def test_bad_fields_are_invalid_input(self, field: str, kwargs: dict[str, object]) -> None:
        values: dict[str, object] = {"id": "c1", "first_name": "Dylan", "last_name": "Robert",
                                     "establishment_uai": "0860001J", **kwargs}
        with pytest.raises(InvalidInput) as raised:
            Child(**values)  # type: ignore[arg-type]
        assert field in str(raised.value)


class TestAccount:
    def test_merged_into_is_set_exactly_when_merged(self) -> None:
        base = dict(id="a1", login="claire", role=Role.RESPONSABLE, display_name="Claire",
                    establishment_uai="0860001J", created_at=T0)
        Account(status=AccountStatus.MERGED, merged_into="a2", **base)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            Account(status=AccountStatus.MERGED, **base)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            Account(status=AccountStatus.ACTIVE, merged_into="a2", **base)  # type: ignore[arg-type]

    def test_a_naive_datetime_is_refused(self) -> None:
        with pytest.raises(InvalidInput, match="timezone"):
            Account(id="a1", login="claire", role=Role.RESPONSABLE,
                    status=AccountStatus.ACTIVE, display_name="Claire",
                    establishment_uai="0860001J", created_at=datetime(2026, 9, 1))


class TestSecret:
    def test_repr_str_and_format_mask_the_text(self) -> None:
        secret = Secret("2BUYJ9C8")
        assert "2BUYJ9C8" not in repr(secret)
        assert "2BUYJ9C8" not in str(secret)
        assert "2BUYJ9C8" not in f"{secret} {secret!r} {secret:>20}"
        assert secret.reveal() == "2BUYJ9C8"

    def test_a_secret_cannot_be_pickled_or_changed(self) -> None:
        secret = Secret("2BUYJ9C8")
        with pytest.raises(TypeError):
            pickle.dumps(secret)
        with pytest.raises(AttributeError):
            secret._value = "x"  # type: ignore[misc]

    def test_a_secret_of_a_non_string_is_invalid_input(self) -> None:
        with pytest.raises(InvalidInput):
            Secret(b"bytes")  # type: ignore[arg-type]


class TestLogins:
    def test_a_login_is_derived_from_the_name_without_accents(self) -> None:
        assert derive_login("Hélène Lefèvre-Dupré") == "helene.lefevre.dupre"

    def test_later_attempts_add_digits(self) -> None:
        assert derive_login("Claire Robert", 1).startswith("claire.robert.")

    def test_a_name_without_latin_letters_gets_a_generic_login(self) -> None:
        assert derive_login("李 王") == "responsable"

    def test_logins_are_unique_after_nfkc_and_case_folding(self) -> None:
        assert login_key("ＣＬＡＩＲＥ.Robert") == login_key("claire.robert")

    @given(st.text(min_size=1, max_size=100))
    def test_a_derived_login_is_always_short_and_plain(self, name: str) -> None:
        login = derive_login(name)
        assert 1 <= len(login) <= 24
        assert all(ch.isascii() and (ch.isalnum() or ch == ".") for ch in login)


class TestProvisionalPasswords:
    def test_they_use_the_unambiguous_alphabet(self) -> None:
        for _ in range(50):
            password = generate_provisional_password()
            assert len(password) == 8
            assert set(password) <= set(PROVISIONAL_ALPHABET)
        assert not set("IO01") & set(PROVISIONAL_ALPHABET)

    def test_their_entropy_is_five_bits_a_character(self) -> None:
        assert provisional_entropy_bits(8) == pytest.approx(40.0)
        assert provisional_entropy_bits(12) == pytest.approx(60.0)


class TestPasswordPolicy:
    @pytest.mark.parametrize("password", [
        "Tr0ub4dor&3xy",         # 12+ with four kinds
        "Correcthorse2026",      # 14+ with upper, lower, digits
        "cheval correct pile agrafe",  # 20+ passphrase
    ])
    def test_passwords_following_the_cnil_examples_are_accepted(self, password: str) -> None:
        CnilPasswordPolicy().check(password, login="claire.robert")

    @pytest.mark.parametrize("password,reason,rule", [
        ("Short1!", "at least 12", "too_short"),
        ("alllowercase12", "needs", "character_classes"),
        ("Claire.Robert-2026!", "login", "contains_login"),
        ("Tab\tinside-Pass1", "control", "control_characters"),
        ("A" * 1025, "at most", "too_long"),
        ("Vacances-Dupont-2026", "name or e-mail", "contains_context"),
        ("Motdepasse123!", "too common", "common_password"),
        ("aaaaaaaaaaaaaaaaaaaa", "repeats", "repetitive"),
        ("Abcdefghijkl12", "sequence", "sequential"),
    ])
    def test_weak_passwords_are_refused_saying_why(self, password: str, reason: str,
                                                   rule: str) -> None:
        with pytest.raises(PasswordPolicyError, match=reason) as raised:
            CnilPasswordPolicy().check(password, login="claire.robert",
                                       context=("Jean Dupont", "jean.dupont@example.fr"))
        assert raised.value.rule == rule
        assert raised.value.code == "password_policy"

    def test_every_rule_is_listed_on_the_error(self) -> None:
        assert PasswordPolicyError.RULES == (
            "too_short", "too_long", "control_characters", "contains_login",
            "contains_context", "common_password", "repetitive", "sequential",
            "character_classes", "unchanged")
        assert PasswordPolicyError().rule is None  # a host's policy need not say
        assert PasswordPolicyError("x", rule="too_short", limit=12).limit == 12

    def test_folding_makes_look_alike_texts_equal(self) -> None:
        assert fold("ｃｌａｉｒｅ．ＲＯＢＥＲＴ") == "claire.robert"
        assert fold("Chérie Œuvre Straße") == "cherie oeuvre strasse"


class TestThrottlePolicy:
    def test_a_counter_waits_exponentially_after_five_failures(self) -> None:
        policy = ThrottlePolicy()
        state = None
        for _ in range(5):
            assert policy.wait(state, T0) == 0
            state = policy.count(state, "merge:x", T0)
        assert policy.wait(state, T0) == 1
        state = policy.count(state, "merge:x", T0)
        assert policy.wait(state, T0) == 2
        assert policy.wait(state, T0 + timedelta(seconds=2)) == 0

    def test_after_ten_failures_merging_is_locked_for_a_day_but_sign_in_is_not(self) -> None:
        policy = ThrottlePolicy()
        merge = ThrottleState(merge_key("x"), 10, T0)
        signin = ThrottleState(signin_key("x", None), 10, T0)
        assert policy.wait(merge, T0 + timedelta(hours=23)) == 3600
        assert policy.wait(signin, T0 + timedelta(hours=2)) == 0
        assert policy.wait(signin, T0 + timedelta(seconds=31)) == 1  # 2 ** (10 - 5) s

    def test_a_principal_gets_ten_failures_an_hour_and_thirty_a_day(self) -> None:
        policy = ThrottlePolicy()
        state = None
        key = principal_key("p")
        for minute in range(10):
            state = policy.count(state, key, T0 + timedelta(minutes=minute))
        now = T0 + timedelta(minutes=30)
        assert policy.wait(state, now) == 30 * 60
        assert policy.wait(state, T0 + timedelta(hours=1, seconds=1)) == 0
        for hour in range(1, 3):
            for minute in range(10):
                state = policy.count(state, key, T0 + timedelta(hours=hour, minutes=minute))
        assert policy.wait(state, T0 + timedelta(hours=5)) == 19 * 3600

    def test_a_count_keeps_only_the_recent_failures_every_window_needs(self) -> None:
        policy = ThrottlePolicy()
        state = None
        for n in range(100):
            state = policy.count(state, "merge:x", T0 + timedelta(seconds=n))
        assert state is not None and state.consecutive == 100
        assert len(state.recent) == policy.keep
        assert state.recent[-1] == T0 + timedelta(seconds=99)

    def test_a_release_gives_back_one_attempt(self) -> None:
        policy = ThrottlePolicy()
        state = policy.count(policy.count(None, "principal:p", T0), "principal:p",
                             T0 + timedelta(1))
        assert policy.release(state, T0) == ThrottleState("principal:p", 1, T0 + timedelta(1),
                                                          (T0 + timedelta(1),))

    def test_the_back_off_is_capped_before_any_overflow(self) -> None:
        policy = ThrottlePolicy(backoff_base=timedelta(seconds=79),
                                backoff_max=timedelta(days=10**5))
        assert policy.backoff(10**6) == timedelta(days=10**5).total_seconds()
        assert policy.wait(ThrottleState(merge_key("x"), 45, T0), T0) > 0

    def test_keys_name_their_kind_and_never_hold_the_clients_text(self) -> None:
        assert signin_key("claire", None) == "signin:claire:-"
        key = signin_key("claire", "203.0.113.9")
        assert key.startswith("signin:claire:") and "203.0.113.9" not in key
        assert key == signin_key("claire", "203.0.113.9") != signin_key("claire", "203.0.113.8")
        with pytest.raises(InvalidInput):
            ThrottlePolicy().wait(ThrottleState("login:x", 10, T0), T0)

    @pytest.mark.parametrize("client", ["", " ", "x" * 256, "a\nb", 42])
    def test_a_bad_client_is_refused(self, client: object) -> None:
        with pytest.raises(InvalidInput):
            check_client(client)

    def test_limits_must_be_positive(self) -> None:
        with pytest.raises(InvalidInput):
            ThrottlePolicy(backoff_after=0)


def test_logged_text_has_control_characters_escaped_and_is_cut() -> None:
    assert escape_for_log("claire\nrobert\x1b[31m") == "claire\\nrobert\\x1b[31m"
    assert escape_for_log("x" * 100).endswith("…")
