"""The account-merge command line, run for real on SQLite files.

Most tests call ``main(argv)`` in this process, for speed; a few run
``python -m account_merge`` as a user would.  Argon2 runs with its
cheapest parameters in this process (``make_verifier`` replaced); a process
started by a test hashes with the defaults, as a user's does.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import argon2
import attrs
import pytest

import account_merge.cli.session as cli_session
from account_merge.cli import MESSAGES, main
from account_merge.domain.receipts import MERGE_CONFIRMATION
from account_merge.testing import fast_verifier

UAI = "0869999B"
#: French typography: the no-break space before « : » (and inside « »).
NBSP = "\u00a0"
NEW_PASSWORD = "Un-Mot-De-Passe-42!"
SEED_CONFIRMATION = (
    "CONFIRMATION DE REGROUPEMENT DE COMPTES",
    "L'opération de regroupement des comptes a été effectuée avec succès.",
    "Seul le compte avec lequel vous êtes connecté reste disponible.",
    "Vous pourrez visualiser vos nouvelles informations d'ici quelques instants.",
)


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


class Run(Protocol):
    def __call__(self, *argv: str, stdin: str = "") -> Result: ...


@attrs.frozen
class Letter:
    login: str
    password: str


def letters_in(text: str) -> list[Letter]:
    """The logins and provisional passwords of the letters printed in *text*."""
    logins = re.findall(r"^Identifiant\s: (\S+)$", text, re.MULTILINE)
    passwords = re.findall(r"^Mot de passe \*\s: (\S+)$", text, re.MULTILINE)
    return [Letter(login, password) for login, password in zip(logins, passwords, strict=True)]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the command line uses, chosen by ACCOUNT_MERGE_DB."""
    path = tmp_path / "ent.sqlite3"
    monkeypatch.setenv("ACCOUNT_MERGE_DB", str(path))
    monkeypatch.setattr(cli_session, "make_verifier", fast_verifier)
    return path


@pytest.fixture
def run(db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``main(argv)`` here, with *stdin* as standard input."""

    def run(*argv: str, stdin: str = "") -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_process(*argv: str, stdin: str = "", cwd: Path | None = None) -> Result:
    """Run ``python -m account_merge`` in a new process."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "account_merge", *argv], input=stdin,
                          capture_output=True, text=True, encoding="utf-8", env=env, cwd=cwd,
                          timeout=120, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def school(run: Run) -> Iterator[None]:
    assert run("establishment", "add", UAI, "Collège des Trois Rivières").code == 0
    yield


def issue(run, name: str, *children: str) -> Letter:
    args = ["issue", "--uai", UAI, "--name", name]
    for child in children:
        args += ["--child", child]
    result = run(*args)
    assert result.code == 0, result.err
    [letter] = letters_in(result.out)
    return letter


# -- the demo ----------------------------------------------------------------------------


def test_demo_plays_the_seed_story_and_leaves_the_file(tmp_path: Path) -> None:
    """The real command: letters, activation, merge, confirmation, split, all in French."""
    db = tmp_path / "demo.sqlite3"

    result = run_process("demo", "--db", str(db))

    assert result.code == 0, result.err
    for line in SEED_CONFIRMATION:
        assert line in result.out
    assert "Enfants rattachés au compte" in result.out
    assert "Dylan" in result.out and "Florian" in result.out
    assert f"Responsable{NBSP}: Claire Robert" in result.out
    assert "Mot de passe provisoire, à modifier lors de la première connexion" in result.out
    assert "Casser un regroupement" in result.out
    assert db.stat().st_size > 0
    principal, _second, new = letters_in(result.out)
    children = run_process("children", principal.login, "--db", str(db))
    assert children.code == 0, children.err
    assert "Dylan Robert" in children.out
    split_away = run_process("children", new.login, "--db", str(db))
    assert "Florian Robert" in split_away.out


def test_the_demo_file_shows_the_merge_and_the_split(run: Run, db: Path) -> None:
    result = run("demo")
    principal, second, new = letters_in(result.out)

    merged = run("children", second.login)
    assert "(regroupé," in merged.out
    assert f"Regroupé dans le compte {principal.login}" in merged.out
    assert "Florian" not in run("children", principal.login).out
    assert "Florian Robert" in run("children", new.login).out
    assert "merge  success" in run("audit").out


def test_demo_refuses_to_overwrite_a_database_unless_forced(run: Run, db: Path) -> None:
    assert run("demo").code == 0

    again = run("demo")
    assert again.code == 2
    assert "(database_exists)" in again.err
    forced = run("demo", "--force")
    assert forced.code == 0
    assert len(run("events").out.splitlines()) == 5, "only the second demo's events are left"


# -- an establishment's operator --------------------------------------------------------


def test_issue_prints_the_letter_of_a_new_account(run: Run, school: None) -> None:
    result = run("issue", "--uai", UAI, "--name", "Marc Durand", "--child", "L1:Léa:Durand",
                 "--child", "T1:Tom:Durand")

    assert result.code == 0
    assert "À l'attention de Marc Durand" in result.out
    assert "pour Léa Durand et Tom Durand" in result.out
    [letter] = letters_in(result.out)
    assert letter.login == "marc.durand"
    listed = run("children", "marc.durand").out
    assert "(provisoire, responsable," in listed
    assert "Léa Durand" in listed and "Tom Durand" in listed


def test_issue_needs_a_known_establishment(run: Run, school: None) -> None:
    result = run("issue", "--uai", "0860999U", "--name", "Marc Durand", "--child", "L1:Léa:D")

    assert result.code == 1
    assert result.err.strip().endswith("(unknown_establishment)")


def test_a_wrong_child_spec_is_a_usage_error(run: Run, school: None) -> None:
    result = run("issue", "--uai", UAI, "--name", "Marc Durand", "--child", "L1-Léa")

    assert result.code == 2
    assert "(usage)" in result.err


def test_commands_on_a_missing_database_say_so(run: Run, db: Path) -> None:
    result = run("children", "marc.durand")

    assert result.code == 1
    assert "(database_missing)" in result.err
    assert not db.exists()


# -- a parent ------------------------------------------------------------------------------


def test_activate_and_merge_read_passwords_from_stdin(run: Run, school: None) -> None:
    first = issue(run, "Marc Durand", "L1:Léa:Durand")
    second = issue(run, "Marc Durand", "T1:Tom:Durand")

    activated = run("activate", first.login, stdin=f"{first.password}\n{NEW_PASSWORD}\n")
    merged = run("merge", first.login, second.login,
                 stdin=f"{NEW_PASSWORD}\n{second.password}\n")

    assert activated.code == 0, activated.err
    assert f"Compte {first.login} activé." in activated.out
    assert merged.code == 0, merged.err
    for line in SEED_CONFIRMATION:
        assert line in merged.out
    assert "Léa Durand" in merged.out and "Tom Durand" in merged.out
    assert NEW_PASSWORD not in merged.out + merged.err + activated.out + activated.err


def test_merge_in_a_real_process_reads_passwords_from_stdin(run: Run, school: None) -> None:
    first = issue(run, "Marc Durand", "L1:Léa:Durand")
    second = issue(run, "Marc Durand", "T1:Tom:Durand")
    assert run("activate", first.login, stdin=f"{first.password}\n{NEW_PASSWORD}\n").code == 0

    result = run_process("merge", first.login, second.login,
                         stdin=f"{NEW_PASSWORD}\n{second.password}\n")

    assert result.code == 0, result.err
    assert MERGE_CONFIRMATION.split(". ")[0] in result.out
    assert "Tom Durand" in run("children", first.login).out


def test_an_error_prints_its_code_on_one_line_without_a_traceback(run: Run, db: Path,
                                                                   school: None) -> None:
    first = issue(run, "Marc Durand", "L1:Léa:Durand")
    second = issue(run, "Marc Durand", "T1:Tom:Durand")
    assert run("activate", first.login, stdin=f"{first.password}\n{NEW_PASSWORD}\n").code == 0

    result = run_process("merge", first.login, second.login,
                         stdin=f"{NEW_PASSWORD}\nNOTTHEPWD\n")

    assert result.code == 1
    assert result.err == (f"Erreur{NBSP}: identifiant ou mot de passe incorrect "
                          "(invalid_credentials)\n")
    assert "Traceback" not in result.err
    # Recorded against the principal who tried; never against the account it aimed at.
    assert "merge  invalid_credentials" in run("audit", "--account", first.login).out
    assert "invalid_credentials" not in run("audit", "--account", second.login).out


def test_a_password_missing_from_stdin_is_a_usage_error(run: Run, school: None) -> None:
    letter = issue(run, "Marc Durand", "L1:Léa:Durand")

    result = run("activate", letter.login, stdin=f"{letter.password}\n")

    assert result.code == 2
    assert "(password_missing)" in result.err


@pytest.mark.parametrize("weak,says", [
    ("azerty", f"Erreur{NBSP}: le mot de passe ne doit pas être une suite de caractères"),
    ("Motdepasse123!", f"Erreur{NBSP}: ce mot de passe est trop courant"),
    ("Durand-Vacances-2026", f"Erreur{NBSP}: le mot de passe ne doit contenir ni l'identifiant"),
])
def test_a_weak_new_password_is_refused_in_french_saying_why(
        run: Run, school: None, weak: str, says: str) -> None:
    letter = issue(run, "Marc Durand", "L1:Léa:Durand")

    result = run("activate", letter.login, stdin=f"{letter.password}\n{weak}\n")

    assert result.code == 1
    assert result.err.startswith(says)
    assert result.err.strip().endswith("(password_policy)")


# -- split, audit, events ------------------------------------------------------------------


def test_split_gives_the_establishment_a_new_letter(run: Run, school: None) -> None:
    first = issue(run, "Marc Durand", "L1:Léa:Durand")
    second = issue(run, "Marc Durand", "T1:Tom:Durand")
    run("activate", first.login, stdin=f"{first.password}\n{NEW_PASSWORD}\n")
    run("merge", first.login, second.login, stdin=f"{NEW_PASSWORD}\n{second.password}\n")

    result = run("split", UAI, first.login)

    assert result.code == 0, result.err
    assert f"Regroupement cassé par 0869999B{NBSP}: Tom Durand" in result.out
    [new] = letters_in(result.out)
    assert "Tom Durand" in run("children", new.login).out
    assert "Tom Durand" not in run("children", first.login).out
    again = run("split", UAI, first.login)
    assert again.code == 1
    assert "(nothing_to_split)" in again.err


def test_audit_lists_the_last_records_of_an_account(run: Run, school: None) -> None:
    letter = issue(run, "Marc Durand", "L1:Léa:Durand")
    run("activate", letter.login, stdin=f"WRONGPWD\n{NEW_PASSWORD}\n")
    run("activate", letter.login, stdin=f"{letter.password}\n{NEW_PASSWORD}\n")

    every = run("audit", "--account", letter.login).out.splitlines()
    last = run("audit", "--account", letter.login, "--limit", "1").out.splitlines()

    # The failed activation names no account (that would tell a guesser the login
    # exists): the account's trail holds what was done to it.
    assert [line.split("  ")[1:3] for line in every] == [
        ["issue", "success"], ["activate", "success"]]
    assert last == every[-1:]


def test_events_are_listed_in_order_and_marked_published(run: Run, school: None) -> None:
    issue(run, "Marc Durand", "L1:Léa:Durand")
    issue(run, "Anne Petit", "I1:Inès:Petit")
    letter = issue(run, "Paul Martin", "Z1:Zoé:Martin")
    run("activate", letter.login, stdin=f"{letter.password}\n{NEW_PASSWORD}\n")

    first = run("events", "--limit", "2", "--mark-published")
    rest = run("events")

    assert [line.split("  ")[:2] for line in first.out.splitlines()] == [
        ["1", "account_issued"], ["2", "account_issued"]]
    assert "2 événement(s) marqué(s) publié(s)." in first.err
    assert [line.split("  ")[:2] for line in rest.out.splitlines()] == [
        ["3", "account_issued"], ["4", "account_activated"]]


# -- issue-batch ----------------------------------------------------------------------------

CSV_WITH_A_BAD_ROW = """\
uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom
0869999B,E1,Dylan,Robert,R1,Claire Robert
0869999B,E2,Florian,Robert,R1,Claire Robert
0869999B,E3,Léa,Martin,R2,Paul Martin
0869999B,,Zoé,Martin,R2,Paul Martin
0869999B,E5,Inès,Petit,R3,Anne Petit
"""


def test_issue_batch_issues_every_family_but_those_with_a_bad_row(
        run: Run, tmp_path: Path, school: None) -> None:
    """A family with a bad row is not issued at all; the others are, one file per letter."""
    source = tmp_path / "eleves.csv"
    source.write_text(CSV_WITH_A_BAD_ROW, encoding="utf-8")
    out = tmp_path / "courriers"

    result = run("issue-batch", str(source), "--out", str(out), "--workers", "2")

    assert result.code == 1
    assert f"ligne 5{NBSP}: donnée invalide{NBSP}: eleve_id (invalid_input)" in result.err
    assert f"famille R2 (0869999B) non traitée{NBSP}: lignes 4, 5" in result.err
    assert "Courriers [" in result.err and "2/2" in result.err
    assert result.err.strip().endswith("(bad_rows)")
    assert sorted(p.name for p in out.iterdir()) == [
        "anne.petit.txt", "claire.robert.txt", "courriers.csv"]
    claire = (out / "claire.robert.txt").read_text(encoding="utf-8")
    assert "pour Dylan Robert et Florian Robert" in claire
    assert run("children", "paul.martin").code == 1
    [letter] = letters_in(claire)
    activated = run("activate", letter.login, stdin=f"{letter.password}\n{NEW_PASSWORD}\n")
    assert activated.code == 0, activated.err
    index = (out / "courriers.csv").read_text(encoding="utf-8")
    assert "R1,Claire Robert,claire.robert," in index
    assert letter.password not in index


def test_issue_batch_accepts_a_semicolon_export_and_exits_zero(
        run: Run, tmp_path: Path, school: None) -> None:
    source = tmp_path / "eleves.csv"
    source.write_text(CSV_WITH_A_BAD_ROW.replace(",", ";").replace(";;", ";E4;"),
                      encoding="utf-8-sig")

    result = run("issue-batch", str(source), "--out", str(tmp_path / "out"), "--workers", "1")

    assert result.code == 0, result.err
    assert "3 courrier(s) écrit(s)" in result.out
    assert "Zoé Martin" in run("children", "paul.martin").out


def test_issue_batch_refuses_a_folder_that_is_not_empty(
        run: Run, tmp_path: Path, school: None) -> None:
    source = tmp_path / "eleves.csv"
    source.write_text(CSV_WITH_A_BAD_ROW, encoding="utf-8")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")

    result = run("issue-batch", str(source), "--out", str(tmp_path / "out"))

    assert result.code == 2
    assert "(folder_not_empty)" in result.err


def test_issue_batch_reports_missing_columns(run: Run, tmp_path: Path, school: None) -> None:
    source = tmp_path / "eleves.csv"
    source.write_text("uai,eleve_id\n0869999B,E1\n", encoding="utf-8")

    result = run("issue-batch", str(source), "--out", str(tmp_path / "out"))

    assert result.code == 1
    assert f"colonnes manquantes{NBSP}: eleve_prenom" in result.err


# -- the way back -----------------------------------------------------------------------

LINKS = ('{"password_reset": "https://ent.example/mdp/{token}",'
         ' "email_verification": "https://ent.example/courriel/{token}"}')


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNT_MERGE_SECRET_KEY", "a test secret key of the host")
    monkeypatch.setenv("ACCOUNT_MERGE_LINKS", LINKS)


def test_reissue_prints_a_new_letter_with_the_same_login(run: Run, school: None) -> None:
    first = issue(run, "Marc Durand", "L1:Léa:Durand")

    result = run("reissue", UAI, first.login)

    assert result.code == 0, result.err
    (again,) = letters_in(result.out)
    assert again.login == first.login and again.password != first.password
    assert f"Courrier ré-édité par {UAI} pour le compte {first.login}" in result.out
    old = run("activate", first.login, stdin=f"{first.password}\n{NEW_PASSWORD}\n")
    assert old.code == 1 and "invalid_credentials" in old.err
    new = run("activate", first.login, stdin=f"{again.password}\n{NEW_PASSWORD}\n")
    assert new.code == 0, new.err
    other = run("establishment", "add", "0860002K", "Lycée Camille Guérin")
    assert other.code == 0
    refused = run("reissue", "0860002K", first.login)
    assert refused.code == 1 and "(not_authorized)" in refused.err


def test_deliver_notices_writes_the_confirmation_link_into_a_folder(
        run: Run, school: None, links: None, tmp_path: Path) -> None:
    first = issue(run, "Marc Durand", "L1:Léa:Durand")
    activated = run("activate", first.login, "--email", "marc@example.org",
                    stdin=f"{first.password}\n{NEW_PASSWORD}\n")
    assert activated.code == 0, activated.err
    out = tmp_path / "courriels"

    result = run("deliver-notices", "--folder", str(out), "--from", "ent@example.org")

    assert result.code == 0, result.err
    assert "1 message(s) envoyé(s)." in result.out
    (mail,) = out.glob("*.eml")
    text = mail.read_text(encoding="utf-8")
    assert "To: marc@example.org" in text and "https://ent.example/courriel/" in text
    assert oct(mail.stat().st_mode & 0o777) == "0o600"
    again = run("deliver-notices", "--folder", str(out), "--from", "ent@example.org")
    assert "0 message(s) envoyé(s)." in again.out


def test_deliver_notices_needs_a_destination_and_says_what_is_missing(
        run: Run, school: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("deliver-notices", "--from", "ent@example.org").code == 2
    first = issue(run, "Marc Durand", "L1:Léa:Durand")
    # No secret key: giving an address at activation is refused, naming what lacks.
    refused = run("activate", first.login, "--email", "marc@example.org",
                  stdin=f"{first.password}\n{NEW_PASSWORD}\n")
    assert refused.code == 1 and "secret_key" in refused.err
    monkeypatch.setenv("ACCOUNT_MERGE_LINKS", "not json")
    bad = run("deliver-notices", "--folder", "x", "--from", "ent@example.org")
    assert bad.code == 1 and "ACCOUNT_MERGE_LINKS" in bad.err


# -- help and usage -----------------------------------------------------------------------

SUBCOMMANDS = [
    ["demo"], ["establishment"], ["establishment", "add"], ["issue"], ["issue-batch"],
    ["activate"], ["merge"], ["children"], ["split"], ["audit"], ["events"],
    ["reissue"], ["deliver-notices"], ["purge"], ["export"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help_with_an_example(run: Run, words: list[str]) -> None:
    result = run(*words, "--help")

    assert result.code == 0
    assert f"Exemple{NBSP}:" in result.out
    assert f"account-merge {' '.join(words)}" in result.out


def test_help_in_a_real_process() -> None:
    result = run_process("--help")

    assert result.code == 0
    assert f"utilisation{NBSP}: account-merge" in result.out
    for words in SUBCOMMANDS:
        assert words[0] in result.out


def test_an_unknown_subcommand_is_a_usage_error(run: Run) -> None:
    result = run("frobnicate")

    assert result.code == 2
    assert result.err.strip().endswith("(usage)")


def test_every_error_code_of_the_library_has_a_french_message() -> None:
    from account_merge import exceptions

    codes = {cls.code for cls in vars(exceptions).values()
             if isinstance(cls, type) and issubclass(cls, exceptions.AccountMergeError)
             and cls is not exceptions.AccountMergeError}
    assert codes <= MESSAGES.keys()


# -- argon2: the command line has no cheap mode --------------------------------------


def test_the_command_line_hashes_letters_at_argon2s_defaults_whatever_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A letter's hash is made at argon2-cffi's defaults: no option nor variable lowers them."""
    db = tmp_path / "ent.sqlite3"
    monkeypatch.setenv("ACCOUNT_MERGE_DB", str(db))
    monkeypatch.setenv("ACCOUNT_MERGE_ARGON2", "cheapest")  # a switch of earlier versions
    assert main(["establishment", "add", UAI, "Collège des Trois Rivières"]) == 0
    assert main(["issue", "--uai", UAI, "--name", "Claire Robert", "--argon2", "cheapest"]) == 2
    assert "--argon2" in capsys.readouterr().err
    assert main(["issue", "--uai", UAI, "--name", "Claire Robert",
                 "--child", "D1:Dylan:Robert"]) == 0
    with sqlite3.connect(db) as connection:
        (stored,) = connection.execute("SELECT password_hash FROM credentials").fetchone()
    defaults = argon2.PasswordHasher()
    assert stored.startswith(f"$argon2id$v=19$m={defaults.memory_cost},t={defaults.time_cost},"
                             f"p={defaults.parallelism}$")
