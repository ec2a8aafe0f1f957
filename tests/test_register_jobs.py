"""The jobs on a school's files (account_merge.registers): what the CLI and Django run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from account_merge import Child, Establishment, InMemoryStorage, MergeService
from account_merge.domain.register import RegisterEntry
from account_merge.exceptions import InvalidRegister
from account_merge.messages import using_language
from account_merge.registers import JobError, issue_batch, sync_file

COLLEGE = Establishment("0860001J", "Collège Jean Moulin")
DYLAN = Child("D1", "Dylan", "Robert", COLLEGE.uai)
LEA = Child("L3", "Léa", "Robert", COLLEGE.uai)
TOM = Child("T4", "Tom", "Martin", COLLEGE.uai)
REGISTER = [RegisterEntry("R1", "Claire Robert", [DYLAN]), RegisterEntry("R2", "Paul Martin",
                                                                          [TOM])]


@pytest.fixture
def service() -> MergeService:
    from account_merge.testing import fast_verifier

    service = MergeService(InMemoryStorage(), fast_verifier())
    service.register_establishment(COLLEGE)
    return service


def run(service: MergeService, register: list[RegisterEntry], folder: Path | None, *,
        answer: bool | None = None, **options: bool) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    asked: list[bool] = []

    def confirm() -> bool:
        asked.append(True)
        return bool(answer)

    report = sync_file(service, COLLEGE, register, folder=folder, workers=1,
                       confirm=confirm if answer is not None else None, out=out, err=err,
                       **options)
    return report, out.getvalue(), err.getvalue()


def test_the_preview_is_a_table_and_nothing_is_applied_without_a_yes(
        service: MergeService, tmp_path: Path) -> None:
    report, out, _ = run(service, REGISTER, tmp_path / "courriers", answer=False)

    assert report is None
    assert out.splitlines()[0] == ("Registre de 0860001J Collège Jean Moulin (complet)\xa0: "
                                   "aperçu")
    assert "Courriers (nouveaux responsables)" in out and "R1  Claire Robert  (Dylan Robert)" \
        in out
    assert out.rstrip().endswith("Rien n'a été changé.")
    assert not (tmp_path / "courriers").exists()
    assert service.sync_register(COLLEGE, REGISTER, dry_run=True).counts()["issued"] == 2


def test_a_yes_applies_and_writes_each_letter_with_its_index(
        service: MergeService, tmp_path: Path) -> None:
    folder = tmp_path / "courriers"
    report, out, err = run(service, REGISTER, folder, answer=True)

    assert report is not None and len(report.letters) == 2  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.iterdir()) == [
        "claire.robert.txt", "courriers.csv", "paul.martin.txt"]
    assert "Mot de passe *\xa0:" in (folder / "claire.robert.txt").read_text(encoding="utf-8")
    index = (folder / "courriers.csv").read_text(encoding="utf-8")
    assert "0860001J,R1,Claire Robert,claire.robert," in index
    assert ": appliqué" in out and "2 courrier(s) écrit(s)" in out
    assert "Courriers [" in err

    again, out, _ = run(service, [*REGISTER, RegisterEntry("R1", "Claire Robert", [LEA])],
                        None, yes=True)
    assert again is not None and again.attached[0].child == LEA  # type: ignore[attr-defined]
    assert "Léa Robert (L3)  → claire.robert (R1)" in out


def test_nothing_to_change_applies_nothing(service: MergeService) -> None:
    service.sync_register(COLLEGE, REGISTER, workers=1)

    report, out, _ = run(service, REGISTER, None, yes=True)

    assert report is None and "Rien à changer" in out


def test_letters_need_a_folder_before_anything_is_applied(service: MergeService) -> None:
    with pytest.raises(JobError) as raised:
        run(service, REGISTER, None, yes=True)
    assert (raised.value.code, raised.value.fields) == ("letters_folder", {"count": 2})
    assert service.sync_register(COLLEGE, REGISTER, dry_run=True).counts()["issued"] == 2


def test_a_refused_register_prints_every_bad_line(service: MergeService, tmp_path: Path) -> None:
    bad = [RegisterEntry("R1", "Claire Robert", [DYLAN], line=2),
           RegisterEntry("R1", "Claire Durand", [LEA], line=3)]
    err = io.StringIO()
    with pytest.raises(InvalidRegister), using_language("en"):
        sync_file(service, COLLEGE, bad, folder=tmp_path / "x", yes=True, err=err,
                  out=io.StringIO())
    assert "line 3 (R1): name “Claire Durand”, not the one of line 2 (“Claire Robert”)" in \
        err.getvalue()


def test_the_preview_speaks_english_when_asked(service: MergeService) -> None:
    with using_language("en"):
        _, out, _ = run(service, REGISTER, None, dry_run=True)
    assert out.splitlines()[0] == "Register of 0860001J Collège Jean Moulin (whole): preview"
    assert "Letters to issue:" in out


CSV = """\
uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom
0860001J,D1,Dylan,Robert,R1,Claire Robert
0860001J,T4,Tom,Martin,R2,Paul Martin
"""


def test_issue_batch_run_again_issues_no_second_letter(
        service: MergeService, tmp_path: Path) -> None:
    source = tmp_path / "eleves.csv"
    source.write_text(CSV, encoding="utf-8")
    out = io.StringIO()

    issue_batch(service, source, tmp_path / "first", workers=1, out=out, err=io.StringIO())
    source.write_text(CSV + "0860001J,L3,Léa,Robert,R1,Claire Robert\n", encoding="utf-8")
    issue_batch(service, source, tmp_path / "second", workers=1, out=out, err=io.StringIO())

    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == [
        "claire.robert.txt", "courriers.csv", "paul.martin.txt"]
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["courriers.csv"]
    claire = service.find_account("claire.robert")
    assert service.children(claire.id) == (DYLAN, LEA)
    assert "0 courrier(s) écrit(s)" in out.getvalue()
