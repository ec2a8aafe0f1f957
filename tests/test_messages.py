"""The French messages of the error codes."""

from account_merge import exceptions
from account_merge.exceptions import (
    AccountNotFound,
    InvalidCredentials,
    InvalidInput,
    TooManyAttempts,
)
from account_merge.messages import FALLBACK, FRENCH, error_message, message


def test_every_error_code_of_the_library_has_a_french_message() -> None:
    codes = {getattr(exceptions, name).code for name in exceptions.__all__
             if name != "AccountMergeError"}
    assert codes <= FRENCH.keys()
    assert all(message(code) == FRENCH[code] for code in codes)


def test_error_message_fills_the_placeholders_from_the_error() -> None:
    assert error_message(TooManyAttempts(42)) == "trop de tentatives ; réessayez dans 42 s"
    assert error_message(InvalidInput("email", "bad")) == "donnée invalide : email"
    assert error_message(AccountNotFound("acc9")) == "compte introuvable : acc9"
    assert error_message(InvalidCredentials()) == "identifiant ou mot de passe incorrect"


def test_an_unknown_code_gets_a_generic_message_and_an_unknown_language_french() -> None:
    assert message("no_such_code") == FRENCH[FALLBACK]
    assert message("invalid_credentials", "en") == FRENCH["invalid_credentials"]
