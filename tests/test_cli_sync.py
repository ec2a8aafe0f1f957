"""``account-merge sync``: the school's register, run for real on SQLite files."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import attrs
import pytest

import account_merge.cli.session as cli_session
from account_merge.cli import main
from account_merge.testing import fast_verifier
from account_merge.testing.registers import Family, Person, Pupil, write_siecle

UAI = "0869999B"
OTHER = "0860001J"
NEW_PASSWORD = "Un-Mot-De-Passe-42!"

REGISTER = """\
responsable_id;responsable_nom;eleve_id;eleve_prenom;eleve_nom;responsable_email
R001;Claire Robert;D0001;Dylan;Robert;claire@example.org
R001;Claire Robert;F0002;Florian;Robert;
R002;Paul Martin;L0003;Léa;Martin;
"""


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACCOUNT_MERGE_DB", str(tmp_path / "ent.sqlite3"))
    monkeypatch.setattr(cli_session, "make_verifier", fast_verifier)

    def run(*argv: str, stdin: str = "") -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = capsys.readouterr()
        # French typography (no-break spaces) is the messages' tests' business.
        return Result(code, captured.out.replace("\xa0", " "), captured.err.replace("\xa0", " "))

    assert run("establishment", "add", UAI, "Collège des Trois Rivières").code == 0
    return run


def register(tmp_path: Path, text: str = REGISTER, name: str = "registre.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="cp1252")
    return path


def test_sync_previews_asks_then_applies_and_writes_the_letters(run, tmp_path: Path) -> None:
    source, out = register(tmp_path), tmp_path / "courriers"

    preview = run("sync", UAI, str(source), "--out", str(out), "--workers", "1", stdin="n\n")

    assert preview.code == 0, preview.err
    assert preview.out.startswith("Registre de 0869999B Collège des Trois Rivières (complet) :"
                                  " aperçu\n")
    assert re.search(r"Courriers \(nouveaux responsables\)\s+2", preview.out)
    assert "R001  Claire Robert  (Dylan Robert, Florian Robert)" in preview.out
    assert "Appliquer ces changements ? [o/N] " in preview.out
    assert preview.out.rstrip().endswith("Rien n'a été changé.")
    assert not out.exists()

    applied = run("sync", UAI, str(source), "--out", str(out), "--workers", "1", stdin="oui\n")

    assert applied.code == 0, applied.err
    assert ": appliqué" in applied.out and "2 courrier(s) écrit(s)" in applied.out
    assert sorted(p.name for p in out.iterdir()) == [
        "claire.robert.txt", "courriers.csv", "paul.martin.txt"]
    letter = (out / "claire.robert.txt").read_text(encoding="utf-8")
    password = re.search(r"^Mot de passe \*\s: (\S+)$", letter, re.MULTILINE)
    assert password is not None
    activated = run("activate", "claire.robert", stdin=f"{password[1]}\n{NEW_PASSWORD}\n")
    assert activated.code == 0, activated.err

    again = run("sync", UAI, str(source), "--yes")
    assert again.code == 0 and "Rien à changer" in again.out


def test_a_september_register_attaches_and_lets_leavers_go(run, tmp_path: Path) -> None:
    run("sync", UAI, str(register(tmp_path)), "--out", str(tmp_path / "juin"), "--yes",
        "--workers", "1")
    september = REGISTER.replace("R002;Paul Martin;L0003;Léa;Martin;\n",
                                 "R001;Claire Robert;Z0004;Zoé;Robert;\n")

    result = run("sync", UAI, str(register(tmp_path, september, "rentree.csv")), "--yes")

    assert result.code == 0, result.err
    assert "Zoé Robert (Z0004)  → claire.robert (R001)" in result.out
    assert "Léa Martin (L0003)  ← paul.martin (R002)" in result.out
    assert "paul.martin  (Paul Martin)" in result.out  # closed
    assert "fermé" in run("children", "paul.martin").out
    children = run("children", "claire.robert").out
    assert "Zoé Robert" in children and "Dylan Robert" in children


def test_a_dry_run_and_a_partial_register(run, tmp_path: Path) -> None:
    source = register(tmp_path)
    dry = run("sync", UAI, str(source), "--dry-run")
    assert dry.code == 0 and "Appliquer" not in dry.out
    assert run("children", "claire.robert").code == 1  # nothing issued

    run("sync", UAI, str(source), "--yes", "--out", str(tmp_path / "a"), "--workers", "1")
    delta = register(tmp_path, "responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom\n"
                               "R003,Anne Petit,I0005,Inès,Petit\n", "delta.csv")
    partial = run("sync", UAI, str(delta), "--partial", "--yes", "--out", str(tmp_path / "b"),
                  "--workers", "1")
    assert partial.code == 0, partial.err
    assert "(extrait)" in partial.out and "anne.petit.txt" in {
        p.name for p in (tmp_path / "b").iterdir()}
    assert "Dylan Robert" in run("children", "claire.robert").out


def test_letters_need_a_folder_and_a_bad_register_is_refused_line_by_line(
        run, tmp_path: Path) -> None:
    no_folder = run("sync", UAI, str(register(tmp_path)), "--yes")
    assert no_folder.code == 2 and no_folder.err.strip().endswith("(letters_folder)")

    bad = register(tmp_path, REGISTER + "R001;Claire Durand;X0009;Xavier;Robert;\n"
                   "R004;;Y0010;Yann;Robert;\n", "faux.csv")
    refused = run("sync", UAI, str(bad), "--yes", "--out", str(tmp_path / "x"))
    assert refused.code == 1
    lines = refused.err.splitlines()
    assert "ligne 6 (R004) : donnée invalide (responsable_nom) : must not be empty" in lines
    assert any(line.startswith("ligne 5 (R001) : nom « Claire Durand »") for line in lines)
    assert lines[-1].endswith("(invalid_input)")
    assert run("children", "claire.robert").code == 1


def test_a_siecle_export_syncs_and_one_of_another_school_is_refused(run, tmp_path: Path) -> None:
    claire = Person("294435", "ROBERT", "Claire", "claire@example.org")
    pupils = [Pupil("1001", "ROBERT", "Dylan"), Pupil("1002", "ROBERT", "Florian")]
    responsables, _ = write_siecle(tmp_path / "export", UAI, [Family(claire, pupils)])

    result = run("sync", UAI, str(responsables), "--yes", "--out", str(tmp_path / "c"),
                 "--workers", "1")

    assert result.code == 0, result.err
    assert "294435  Claire ROBERT  (Dylan ROBERT, Florian ROBERT)" in result.out
    other, _ = write_siecle(tmp_path / "autre", OTHER, [Family(claire, pupils)])
    refused = run("sync", UAI, str(other), "--yes")
    assert refused.code == 1 and refused.err.strip().endswith("(other_establishment)")


def test_sync_speaks_english_and_has_help(run, tmp_path: Path) -> None:
    english = run("--lang", "en", "sync", UAI, str(register(tmp_path)), "--dry-run")
    assert english.out.startswith("Register of 0869999B")
    assert "Letters to issue:" in english.out
    helped = run("sync", "--help")
    assert helped.code == 0 and "Exemple :" in helped.out and "--partial" in helped.out
