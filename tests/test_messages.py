"""The French and English messages: catalogues, choice of language, overrides."""

from __future__ import annotations

import gettext
import io
import math
import re
import string
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from account_merge import Child, Establishment, NotificationLetter, Secret, exceptions, messages
from account_merge.domain.receipts import MERGE_CONFIRMATION
from account_merge.exceptions import AccountMergeError, InvalidInput
from account_merge.messages import (
    ENGLISH,
    FALLBACK,
    FRENCH,
    catalogue,
    describe_wait,
    error_message,
    message,
    override,
    render_letter,
    set_language,
    using_language,
)

SRC = Path(messages.__file__).parent
NBSP = "\u00a0"
ADVICE_FR = (f"Vérifiez l'identifiant et le mot de passe, ou utilisez "
             f"«{NBSP}mot de passe oublié{NBSP}?{NBSP}»")
ADVICE_EN = "Check the login and password, or use “forgot password?”"


@pytest.fixture(autouse=True)
def _clean_messages() -> Iterator[None]:
    """Each test starts in French, with no override, following no framework's language."""
    following = messages._language_source  # Django's, when tests/django set Django up
    messages.follow_language(None)
    set_language("fr")
    messages.reset_overrides()
    yield
    set_language("fr")
    messages.reset_overrides()
    messages.follow_language(following)


def error_codes() -> set[str]:
    return {cls.code for cls in vars(exceptions).values()
            if isinstance(cls, type) and issubclass(cls, AccountMergeError)
            and cls is not AccountMergeError}


def fields_of(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


# -- coverage of the catalogues ------------------------------------------------------------


@pytest.mark.parametrize("language", messages.LANGUAGES)
def test_every_error_code_has_a_message_in_every_language(language: str) -> None:
    shipped = catalogue(language)

    missing = sorted(code for code in error_codes() if not shipped.get(code, "").strip())

    assert missing == []


@pytest.mark.parametrize("language", messages.LANGUAGES)
@pytest.mark.parametrize("rule", exceptions.PasswordPolicyError.RULES)
def test_every_password_rule_has_its_own_message_in_every_language(
        rule: str, language: str) -> None:
    shipped = catalogue(language)

    text = shipped.get(f"password_policy.{rule}", "")

    assert text.strip()
    assert text != shipped["password_policy"]
    assert text[0].islower() and not text.endswith(".")


def test_error_message_says_which_password_rule_refused() -> None:
    error = exceptions.PasswordPolicyError("too common", rule="common_password")

    assert error_message(error).startswith("ce mot de passe est trop courant")
    assert error_message(error, "en").startswith("this password is too common")
    assert error_message(exceptions.PasswordPolicyError("short", rule="too_short", limit=12)) == (
        f"le mot de passe est trop court{NBSP}: il faut au moins 12 caractères")


def test_a_password_error_without_a_known_rule_gets_the_policys_message() -> None:
    """A host's own policy may raise the error without a rule, or with one of its own."""
    for error in (exceptions.PasswordPolicyError("say horse"),
                  exceptions.PasswordPolicyError("say horse", rule="no_horse")):
        assert error_message(error) == FRENCH["password_policy"]
        assert error_message(error, "en") == ENGLISH["password_policy"]


def test_both_languages_have_the_same_messages_with_the_same_fields() -> None:
    french, english = catalogue("fr"), catalogue("en")

    assert sorted(french) == sorted(english)
    different = [key for key in french if fields_of(french[key]) != fields_of(english[key])]
    assert different == []


def test_the_french_confirmation_is_the_seeds_and_the_receipts() -> None:
    assert message("merge_confirmation", "fr") == MERGE_CONFIRMATION
    assert message("merge_confirmation", "en") != MERGE_CONFIRMATION


def test_every_key_the_demo_and_the_command_line_name_exists() -> None:
    """Literal keys in the sources; the keys built at run time are exercised by the CLI tests."""
    used: set[str] = set()
    for module in ("demo.py", "messages.py", *(
            f"{package}/{p.name}" for package in ("cli", "registers")
            for p in (SRC / package).glob("*.py"))):
        source = (SRC / module).read_text(encoding="utf-8")
        used |= set(re.findall(r"""\b(?:_|message)\(\s*["']([a-z_.]+)["']\s*[,)]""", source))

    assert len(used) > 50
    assert sorted(used - set(catalogue("fr"))) == []


# -- choosing the language -------------------------------------------------------------------


def test_french_is_the_default() -> None:
    assert message("invalid_credentials") == "identifiant ou mot de passe incorrect"


def test_a_call_can_ask_for_english_and_tags_are_understood() -> None:
    assert message("invalid_credentials", "en") == "incorrect login or password"
    assert message("invalid_credentials", "en_GB.UTF-8") == "incorrect login or password"
    assert message("invalid_credentials", "EN-us") == "incorrect login or password"


def test_a_language_without_catalogue_falls_back_to_french() -> None:
    assert message("invalid_credentials", "de") == "identifiant ou mot de passe incorrect"


def test_set_language_changes_the_default_and_refuses_unknown_languages() -> None:
    set_language("en")
    assert message("same_account") == "an account cannot be merged with itself"

    with pytest.raises(InvalidInput) as raised:
        set_language("klingon")
    assert raised.value.field == "language"
    assert messages.get_language() == "en"


def test_using_language_applies_to_its_block_and_thread_only() -> None:
    seen: list[str] = []

    def other_thread() -> None:
        seen.append(message("screen.children_title"))

    with using_language("en") as language:
        assert language == "en"
        assert message("screen.children_title") == "Children attached to the account"
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()

    assert seen == ["Enfants rattachés au compte"]
    assert message("screen.children_title") == "Enfants rattachés au compte"


# -- fields, overrides, errors ---------------------------------------------------------------


def test_fields_are_filled_and_a_missing_field_stays_as_written() -> None:
    filled = message("screen.responsable", name="Claire Robert")
    assert filled == f"Responsable{NBSP}: Claire Robert"
    assert message("screen.responsable") == f"Responsable{NBSP}: {{name}}"
    assert message("too_many_attempts", wait="2 minutes").startswith(
        f"trop de tentatives{NBSP}; réessayez dans 2 minutes.\n")


def test_an_unknown_key_gets_the_generic_message_in_the_language_asked() -> None:
    assert message("no.such.message") == FRENCH[FALLBACK]
    assert message("no_such_code", "en") == ENGLISH[FALLBACK]
    assert AccountMergeError.code == FALLBACK


def test_a_host_overrides_a_message_in_one_language() -> None:
    override("invalid_credentials", "ces identifiants ne conviennent pas")

    assert message("invalid_credentials") == "ces identifiants ne conviennent pas"
    assert message("invalid_credentials", "en") == "incorrect login or password"
    assert catalogue("fr")["invalid_credentials"] == "identifiant ou mot de passe incorrect"

    override("invalid_credentials", None)
    assert message("invalid_credentials") == "identifiant ou mot de passe incorrect"


def test_an_override_keeps_its_fields_and_must_name_a_known_message() -> None:
    override("too_many_attempts", "Wait {retry_after} s.", "en")
    assert message("too_many_attempts", "en", retry_after=5) == "Wait 5 s."

    with pytest.raises(InvalidInput):
        override("invalid_credentails", "typo")


def test_error_message_fills_the_fields_from_the_error() -> None:
    assert error_message(exceptions.TooManyAttempts(retry_after=90), "en") == (
        "too many attempts; try again in 2 minutes.\n" + ADVICE_EN)
    assert error_message(exceptions.InvalidInput("email", "must look like an address")) == (
        f"donnée invalide{NBSP}: email")
    assert error_message(exceptions.AccountNotFound("acc9")) == f"compte introuvable{NBSP}: acc9"


def test_error_message_never_shows_a_stores_name_to_a_parent() -> None:
    error = exceptions.StorageError("/srv/ent/secret-path.sqlite3", "corrupt")

    assert "secret-path" not in error_message(error)
    assert "secret-path" not in error_message(error, "en")


def test_an_error_code_without_message_gives_the_generic_message() -> None:
    class FutureError(AccountMergeError):
        code = "future_error"

    assert error_message(FutureError()) == f"une erreur est survenue{NBSP}; réessayez plus tard"


def test_french_and_english_list_every_error_code_with_its_unfilled_message() -> None:
    assert set(FRENCH) == error_codes() | {FALLBACK}
    assert set(ENGLISH) == set(FRENCH)
    assert all(message(code) == FRENCH[code] for code in FRENCH)
    assert all(message(code, "en") == ENGLISH[code] for code in ENGLISH)


def test_error_messages_are_clauses_that_a_host_can_build_on() -> None:
    """No capital to start, no period to end: ``f"Erreur : {error_message(e)}."`` reads well."""
    for shipped in (FRENCH, ENGLISH):
        for code, text in shipped.items():
            assert text[0].islower() and not text.endswith("."), code


# -- waits, as a person says them ------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "french", "english"), [
    (0, "quelques secondes", "a few seconds"),
    (1, "quelques secondes", "a few seconds"),
    (10, "quelques secondes", "a few seconds"),
    (11, f"11{NBSP}secondes", "11 seconds"),
    (42, f"42{NBSP}secondes", "42 seconds"),
    (59, f"1{NBSP}minute", "1 minute"),
    (61, f"1{NBSP}minute", "1 minute"),
    (90, f"2{NBSP}minutes", "2 minutes"),
    (119, f"2{NBSP}minutes", "2 minutes"),
    (600, f"10{NBSP}minutes", "10 minutes"),
    (3574, f"environ 1{NBSP}heure", "about 1 hour"),
    (3600, f"1{NBSP}heure", "1 hour"),
    (3601, f"environ 1{NBSP}heure", "about 1 hour"),
    (5400, f"environ 2{NBSP}heures", "about 2 hours"),
    (86399, f"environ 1{NBSP}jour", "about 1 day"),
    (86400, f"1{NBSP}jour", "1 day"),
    (2 * 86400, f"2{NBSP}jours", "2 days"),
    (14 * 86400, f"2{NBSP}semaines", "2 weeks"),
])
def test_a_wait_reads_as_a_person_would_say_it(seconds: int, french: str, english: str) -> None:
    assert describe_wait(seconds, "fr") == french
    assert describe_wait(seconds, "en") == english


def test_a_wait_rounds_up_rather_than_promise_much_less() -> None:
    """80 s rounded to the nearest would be 1 minute: the parent would come back 20 s too early."""
    assert describe_wait(80, "en") == "2 minutes"
    assert describe_wait(70 * 60, "en") == "about 1 hour"
    assert describe_wait(80 * 60, "en") == "about 2 hours"
    assert describe_wait(1.2, "en") == describe_wait(2, "en") == "a few seconds"
    assert describe_wait(10.5, "en") == "11 seconds"


def test_a_wait_is_in_the_language_of_the_call_or_of_the_request() -> None:
    assert describe_wait(119) == f"2{NBSP}minutes"
    assert describe_wait(119, "en-GB") == "2 minutes"
    assert describe_wait(119, "de") == f"2{NBSP}minutes"
    with using_language("en"):
        assert describe_wait(3574) == "about 1 hour"


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), "60", None, True])
def test_a_wait_must_be_a_finite_number_of_seconds(seconds: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        describe_wait(seconds)  # type: ignore[arg-type]
    assert raised.value.field == "seconds"


def test_a_host_can_reword_the_rounded_wait() -> None:
    override("wait.about", "à peu près {duration}")

    assert describe_wait(3574) == f"à peu près 1{NBSP}heure"


UNITS = {
    "seconde": 1, "minute": 60, "heure": 3600, "jour": 86400, "semaine": 7 * 86400,
    "mois": 30 * 86400, "an": 365 * 86400,
    "second": 1, "hour": 3600, "day": 86400, "week": 7 * 86400, "month": 30 * 86400,
    "year": 365 * 86400,
}
FEW = {"quelques secondes", "a few seconds"}


def promised(phrase: str) -> int:
    """The seconds a phrase of describe_wait promises, read as a parent would read it."""
    found = re.fullmatch(r"(?:environ |about )?(\d+)[ \u00a0](\w+)", phrase)
    assert found is not None, phrase
    count, unit = int(found.group(1)), found.group(2)
    return count * UNITS[unit if unit in UNITS else unit.removesuffix("s")]


@given(seconds=st.integers(min_value=0, max_value=3 * 365 * 86400)
       | st.floats(min_value=0, max_value=3 * 365 * 86400),
       language=st.sampled_from(messages.LANGUAGES))
def test_a_wait_never_promises_much_less_than_the_real_one(seconds: float,
                                                           language: str) -> None:
    """At least 85 % of the wait (80 % is the limit a parent would still call "about")."""
    phrase = describe_wait(seconds, language)

    if phrase in FEW:
        assert seconds <= 10
    else:
        wait = math.ceil(seconds)
        assert 0.85 * wait <= promised(phrase) <= 2 * wait
        assert phrase.startswith(("environ ", "about ")) == (
            promised(phrase) != wait and promised(phrase) >= 3600)


def test_the_throttling_message_says_the_wait_then_gives_one_line_of_advice() -> None:
    error = exceptions.TooManyAttempts(retry_after=3574)

    assert error_message(error).split("\n") == [
        f"trop de tentatives{NBSP}; réessayez dans environ 1{NBSP}heure.", ADVICE_FR]
    assert error_message(error, "en").split("\n") == [
        "too many attempts; try again in about 1 hour.", ADVICE_EN]


def test_the_throttling_message_keeps_the_seconds_for_a_hosts_own_wording() -> None:
    override("too_many_attempts", "patientez {retry_after} s ({wait})")

    assert error_message(exceptions.TooManyAttempts(119)) == f"patientez 119 s (2{NBSP}minutes)"


def test_every_french_message_keeps_french_typography() -> None:
    """No-break spaces before : ; ? ! and inside « », in every French message.

    So that no line of a screen, a letter or a notice starts with « : » or
    « » », and « Principal » never breaks inside its guillemets.
    """
    broken = re.compile(r" [;:?!»]|« |«(?!\u00a0)|(?<!\u00a0)»")
    wrong = sorted(key for key, text in catalogue("fr").items() if broken.search(text))
    assert wrong == []


def test_french_messages_of_waits_keep_french_typography() -> None:
    """No-break spaces before ; : ? ! and inside « », so that none starts a line alone."""
    french = catalogue("fr")
    for key in ("too_many_attempts", "wait.about", "wait.few_seconds"):
        text = french[key]
        assert re.search(r" [;:?!»]|« ", text) is None, key
    assert f"{NBSP};" in french["too_many_attempts"]


# -- the letter ------------------------------------------------------------------------------


def a_letter() -> NotificationLetter:
    school = Establishment("0869999B", "Collège des Trois Rivières")
    return NotificationLetter(
        account_id="acc1", login="claire.robert", provisional_password=Secret("2BUYJ9C8"),
        establishment=school, display_name="Claire Robert",
        children=(Child("D0001", "Dylan", "Robert", school.uai),
                  Child("F0002", "Florian", "Robert", school.uai)),
        issued_at=datetime(2026, 9, 1, tzinfo=UTC), expires_at=datetime(2026, 11, 30, tzinfo=UTC))


def test_the_french_letter_is_exactly_the_domains_rendering() -> None:
    """Dates stay day/month/year in figures: the domain formats them without Babel."""
    letter = a_letter()

    assert render_letter(letter, "fr") == letter.render()
    assert "valable jusqu'au 30/11/2026.\n" in letter.render()


@pytest.mark.parametrize(("name", "said"), [
    ("Collège des Trois Rivières", "le Collège des Trois Rivières"),
    ("Lycée Camille Guérin", "le Lycée Camille Guérin"),
    ("École élémentaire Jules Ferry", "l'École élémentaire Jules Ferry"),
    ("ECOLE PRIMAIRE PUBLIQUE", "l'ECOLE PRIMAIRE PUBLIQUE"),
    ("Cité scolaire Jean Moulin", "la Cité scolaire Jean Moulin"),
    ("Établissement régional adapté", "l'Établissement régional adapté"),
    ("EREA Jean Jaurès", "l'EREA Jean Jaurès"),
    ("Lycée-collège Saint-Paul", "le Lycée-collège Saint-Paul"),
    ("La Providence", "La Providence"),
    ("L'Immaculée Conception", "L'Immaculée Conception"),
    ("Saint-Joseph", "l'établissement Saint-Joseph"),
])
def test_the_french_letter_names_the_establishment_with_its_article(name: str,
                                                                    said: str) -> None:
    """« proposés par le Collège des Trois Rivières », never « par Collège ... »."""
    letter = attrs.evolve(a_letter(), establishment=Establishment("0869999B", name))

    assert f"services proposés par {said} pour Dylan Robert" in letter.render()
    assert render_letter(letter, "fr") == letter.render()
    assert f"online services of {name} for" in render_letter(letter, "en")


def test_the_english_letter_carries_the_same_login_password_and_date() -> None:
    text = render_letter(a_letter(), "en")

    assert "Login: claire.robert" in text
    assert "Password *: 2BUYJ9C8" in text
    assert "for Dylan Robert and Florian Robert:" in text
    assert "30/11/2026" in text
    assert "Identifiant" not in text


# -- the catalogue files ------------------------------------------------------------------------


@pytest.mark.parametrize("language", messages.LANGUAGES)
def test_the_compiled_catalogue_reads_the_same_through_the_standard_gettext(
        language: str) -> None:
    """The .mo the build writes is the format Python's gettext (and GNU tools) read."""
    from hatch_build import compile_catalogue

    po = messages.locale_dir() / language / "LC_MESSAGES" / "account_merge.po"
    compiled = compile_catalogue(po)
    translations = gettext.GNUTranslations(io.BytesIO(compiled))

    assert translations.info()["language"] == language
    for key, text in catalogue(language).items():
        assert translations.gettext(key) == text


# -- the error messages a host shows ------------------------------------------------------


def test_every_error_code_of_the_library_has_a_french_message() -> None:
    codes = {getattr(exceptions, name).code for name in exceptions.__all__
             if name != "AccountMergeError"}
    assert codes <= FRENCH.keys()
    assert all(message(code) == FRENCH[code] for code in codes)


def test_error_message_fills_the_placeholders_from_the_error() -> None:
    assert error_message(exceptions.TooManyAttempts(42)) == (
        f"trop de tentatives{NBSP}; réessayez dans 42{NBSP}secondes.\n" + ADVICE_FR)
    assert error_message(exceptions.InvalidInput("email", "bad")) == f"donnée invalide{NBSP}: email"
    assert error_message(exceptions.AccountNotFound("acc9")) == f"compte introuvable{NBSP}: acc9"
    assert error_message(exceptions.InvalidCredentials()) == (
        "identifiant ou mot de passe incorrect")


def test_an_unknown_code_gets_a_generic_message_and_an_unknown_language_french() -> None:
    assert message("no_such_code") == FRENCH[FALLBACK]
    assert message("invalid_credentials", "de") == FRENCH["invalid_credentials"]


# -- a host framework's language ------------------------------------------------------------
def test_messages_follow_the_language_a_host_framework_says_is_active() -> None:
    active = ["en"]
    messages.follow_language(lambda: active[0])

    assert message("same_account") == "an account cannot be merged with itself"
    active[0] = "fr-FR"
    assert message("same_account") == FRENCH["same_account"]
    with using_language("en"):  # a block of the library's own still wins
        active[0] = "fr"
        assert message("same_account") == "an account cannot be merged with itself"


def test_a_framework_language_without_catalogue_falls_back_to_the_process_s() -> None:
    set_language("en")
    for said in ("de", None, ""):
        messages.follow_language(lambda said=said: said)
        assert messages.get_language() == "en"
    messages.follow_language(None)
    assert messages.get_language() == "en"
    with pytest.raises(InvalidInput):
        messages.follow_language("en")  # type: ignore[arg-type]
