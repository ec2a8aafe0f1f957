"""The command line speaks French by default and English when asked."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

import account_merge.cli.session as cli_session
from account_merge import AccountStatus, Role, messages
from account_merge.cli import build_parser, describe, main
from account_merge.testing import fast_verifier

#: French typography: the no-break space before « : ».
NBSP = "\u00a0"

#: Words that only the French texts use; none may reach an English screen.
FRENCH_WORDS = re.compile(
    r"\b(Enfants|Responsable\s:|compte|courrier|Mot de passe|Identifiant|Regrouper|rattaché"
    r"|Erreur|Exemple|utilisation|établissement|démonstration|valable)\b")


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cli_session, "make_verifier", fast_verifier)
    monkeypatch.delenv("ACCOUNT_MERGE_LANG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return tmp_path / "ent.sqlite3"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_english_demo_says_nothing_in_french(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--lang", "en", "--db", str(db), "demo")

    assert code == 0, err
    assert "Children attached to the account" in out
    assert "The accounts were merged successfully." in out
    assert "Login: claire.robert" in out
    leaks = sorted({m.group(0) for m in FRENCH_WORDS.finditer(out)})
    assert leaks == []


def test_the_language_comes_from_the_environment_and_does_not_outlive_the_run(
        db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNT_MERGE_LANG", "en")

    code, _out, err = run(capsys, "--db", str(db), "children", "nobody")

    assert code == 1
    assert err.startswith("Error: database not found:")
    assert err.rstrip().endswith("(database_missing)")
    assert messages.get_language() == "fr"


def test_lang_on_the_command_line_wins_over_the_environment(
        db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNT_MERGE_LANG", "en")

    _code, _out, err = run(capsys, "--db", str(db), "children", "nobody", "--lang", "fr")

    assert err.startswith(f"Erreur{NBSP}: base introuvable{NBSP}:")


def test_an_unknown_language_is_a_usage_error_in_french(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "--lang", "de", "demo")

    assert code == 2
    assert f"choix invalide{NBSP}: 'de'" in err
    assert err.rstrip().endswith("(usage)")


def test_french_is_the_default_whatever_the_locale_of_the_machine(
        db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.setenv("LC_ALL", "en_US.UTF-8")

    _code, _out, err = run(capsys, "--db", str(db), "children", "nobody")

    assert err.startswith(f"Erreur{NBSP}: ")


@pytest.mark.parametrize("language", messages.LANGUAGES)
def test_every_text_of_the_help_exists_in_both_languages(
        language: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing key would show the generic error message: none is missing."""
    asked: list[str] = []
    real = messages.message

    def recording(key: str, *args: object, **fields: object) -> str:
        asked.append(key)
        return real(key, *args, **fields)

    monkeypatch.setattr(messages, "message", recording)
    with messages.using_language(language):
        text = build_parser().format_help()

    assert ("Example:" if language == "en" else f"Exemple{NBSP}:") in text
    assert len(asked) > 40
    assert [key for key in asked if not messages.has_message(key)] == []


def test_the_keys_built_from_statuses_and_roles_exist() -> None:
    keys = [f"status.{status.value}" for status in AccountStatus]
    keys += [f"role.{role.value}" for role in Role]
    keys += [f"cli.audit.{label}" for label in ("actor", "account_field", "login", "detail")]

    assert [key for key in keys if not messages.has_message(key)] == []


@pytest.mark.parametrize("code", [
    "usage", "unknown_establishment", "database_missing", "database_exists",
    "folder_not_empty", "password_missing", "password_mismatch", "invalid_csv",
    "bad_rows", "file_error", "interrupted", "invalid_credentials", "storage_error",
    "account_not_found",
])
@pytest.mark.parametrize("language", messages.LANGUAGES)
def test_every_error_of_the_command_line_has_its_own_line_in_both_languages(
        code: str, language: str) -> None:
    line = describe(code, {"detail": "d", "path": "p", "uai": "u", "hint": "h", "store": "s",
                           "account_id": "a", "rows": 1, "refused": 1, "issued": 0},
                    language)

    assert line.startswith("Error: " if language == "en" else f"Erreur{NBSP}: ")
    assert line.endswith(f"({code})")
    assert "{" not in line
    shipped = messages.catalogue(language)
    assert f"cli.error.{code}" in shipped or code in shipped
