"""The French and English messages: catalogues, choice of language, overrides."""

from __future__ import annotations

import gettext
import io
import re
import string
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from account_merge import Child, Establishment, NotificationLetter, Secret, exceptions, messages
from account_merge.domain.receipts import MERGE_CONFIRMATION
from account_merge.exceptions import AccountMergeError, InvalidInput
from account_merge.messages import (
    ENGLISH,
    FALLBACK,
    FRENCH,
    catalogue,
    error_message,
    message,
    override,
    render_letter,
    set_language,
    using_language,
)

SRC = Path(messages.__file__).parent


@pytest.fixture(autouse=True)
def _clean_messages() -> None:
    """Each test starts in French, with no override."""
    set_language("fr")
    messages.reset_overrides()
    yield
    set_language("fr")
    messages.reset_overrides()


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
        "le mot de passe est trop court : il faut au moins 12 caractères")


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
    for module in ("cli.py", "demo.py", "messages.py"):
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
    assert message("too_many_attempts", retry_after=30) == (
        "trop de tentatives ; réessayez dans 30 s")
    assert message("too_many_attempts") == "trop de tentatives ; réessayez dans {retry_after} s"


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
        "too many attempts; try again in 90 s")
    assert error_message(exceptions.InvalidInput("email", "must look like an address")) == (
        "donnée invalide : email")
    assert error_message(exceptions.AccountNotFound("acc9")) == "compte introuvable : acc9"


def test_error_message_never_shows_a_stores_name_to_a_parent() -> None:
    error = exceptions.StorageError("/srv/ent/secret-path.sqlite3", "corrupt")

    assert "secret-path" not in error_message(error)
    assert "secret-path" not in error_message(error, "en")


def test_an_error_code_without_message_gives_the_generic_message() -> None:
    class FutureError(AccountMergeError):
        code = "future_error"

    assert error_message(FutureError()) == "une erreur est survenue ; réessayez plus tard"


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
    letter = a_letter()

    assert render_letter(letter, "fr") == letter.render()


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
    from account_merge import _msgfmt

    po = messages.locale_dir() / language / "LC_MESSAGES" / "account_merge.po"
    compiled = _msgfmt.compile_mo(_msgfmt.parse_po(po.read_text(encoding="utf-8")))
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
        "trop de tentatives ; réessayez dans 42 s")
    assert error_message(exceptions.InvalidInput("email", "bad")) == "donnée invalide : email"
    assert error_message(exceptions.AccountNotFound("acc9")) == "compte introuvable : acc9"
    assert error_message(exceptions.InvalidCredentials()) == (
        "identifiant ou mot de passe incorrect")


def test_an_unknown_code_gets_a_generic_message_and_an_unknown_language_french() -> None:
    assert message("no_such_code") == FRENCH[FALLBACK]
    assert message("invalid_credentials", "de") == FRENCH["invalid_credentials"]
