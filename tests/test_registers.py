"""account_merge.registers: the school's register read from CSV and SIECLE files.

The files are made up by account_merge.testing.registers: no real data.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from account_merge import Child, Establishment, InMemoryStorage, MergeService
from account_merge.domain.register import RegisterEntry
from account_merge.exceptions import InvalidInput, InvalidRegister
from account_merge.registers import (
    detect_encoding,
    read_register_csv,
    read_siecle_responsables,
)
from account_merge.registers import siecle as siecle_reader
from account_merge.testing import fast_verifier
from account_merge.testing.registers import (
    Family,
    Person,
    Pupil,
    families,
    write_register_csv,
    write_siecle,
)

UAI = "0860001J"
COLLEGE = Establishment(UAI, "Collège Jean Moulin")

CLAIRE = Person("294435", "ROBERT", "Claire", "claire@example.org")
MARC = Person("294436", "ROBERT", "Marc")
AIDE = Person("300001", "PETIT", "Anne")
DYLAN = Pupil("1001", "ROBERT", "Dylan", ine="123456789AB")
FLORIAN = Pupil("1002", "ROBERT", "Florian")
GONE = Pupil("1003", "ROBERT", "Léa", left_on="30/06/2026")


def entries_of(register: object) -> list[tuple[str, str, str | None, str, str, str]]:
    return [(e.external_id, e.display_name, e.email, e.children[0].id,
             e.children[0].first_name, e.children[0].establishment_uai)
            for e in register]  # type: ignore[attr-defined]


# -- CSV -----------------------------------------------------------------------------------


def test_a_csv_register_reads_one_entry_per_row_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "registre.csv"
    path.write_text("Responsable_ID;responsable_nom;eleve_id;eleve_prenom;eleve_nom;"
                    "responsable_email\n"
                    "R1;Claire Robert;D1;Dylan;Robert;claire@example.org\n"
                    "\n"
                    "R1;Claire Robert;F2;Florian;Robert;\n", encoding="utf-8-sig")

    register = read_register_csv(path, uai=UAI)
    entries = list(register)

    assert [(e.external_id, e.email, e.children[0].id, e.line) for e in entries] == [
        ("R1", "claire@example.org", "D1", 2), ("R1", None, "F2", 4)]
    assert entries == list(register)  # read again, the same
    assert register.establishment_uai == UAI


def test_a_spreadsheets_windows_1252_csv_with_commas_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "registre.csv"
    path.write_bytes("uai,responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom\n"
                     f"{UAI},R1,Hélène Lefèvre,D1,Zoé,Lefèvre\n".encode("cp1252"))

    assert detect_encoding(path) == "cp1252"
    [entry] = read_register_csv(path)
    assert (entry.display_name, entry.children[0].first_name) == ("Hélène Lefèvre", "Zoé")
    assert read_register_csv(path).establishment_uai == UAI


def test_an_unknown_or_missing_column_refuses_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "registre.csv"
    path.write_text("responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom,"
                    "responsable_mail\nR1,Claire Robert,D1,Dylan,Robert,c@example.org\n",
                    encoding="utf-8")

    with pytest.raises(InvalidRegister) as raised:
        list(read_register_csv(path))
    assert [(p.line, p.kind, dict(p.fields)["column"]) for p in raised.value.problems] == [
        (1, "unknown_column", "responsable_mail"), (1, "missing_column", "uai")]


def test_bad_rows_are_all_reported_after_the_good_ones_are_read(tmp_path: Path) -> None:
    path = tmp_path / "registre.csv"
    path.write_text("uai,responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom,"
                    "responsable_email\n"
                    f"{UAI},R1,Claire Robert,D1,Dylan,Robert,\n"
                    f"{UAI},R 2,Marc Robert,D1,Dylan,Robert,\n"
                    f"{UAI},R3,,D3,Léa,Robert,\n"
                    f"{UAI},R4,Paul Martin,T4,Tom,Martin,pas-une-adresse\n"
                    f"0860002K,R5,Anne Petit,I5,Inès,Petit\n", encoding="utf-8")
    read: list[RegisterEntry] = []

    with pytest.raises(InvalidRegister) as raised:
        read.extend(read_register_csv(path))

    assert [e.external_id for e in read] == ["R1"]
    assert [(p.line, p.external_id, p.kind, dict(p.fields)["column"])
            for p in raised.value.problems] == [
        (3, "R 2", "bad_value", "responsable_id"), (4, "R3", "bad_value", "responsable_nom"),
        (5, "R4", "bad_value", "responsable_email"), (6, "R5", "bad_value", "*")]


def test_a_csv_sync_refuses_rows_of_another_establishment_naming_their_lines(
        tmp_path: Path) -> None:
    path = tmp_path / "registre.csv"
    path.write_text("uai,responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom\n"
                    f"{UAI},R1,Claire Robert,D1,Dylan,Robert\n"
                    "0860002K,R2,Marc Robert,L2,Léa,Robert\n", encoding="utf-8")
    service = MergeService(InMemoryStorage(), fast_verifier())

    with pytest.raises(InvalidRegister) as raised:
        service.sync_register(COLLEGE, read_register_csv(path), workers=1)
    assert [(p.line, p.kind) for p in raised.value.problems] == [(3, "wrong_establishment")]
    assert service.sync_register(COLLEGE, [], dry_run=True).entries == 0


# -- SIECLE -------------------------------------------------------------------------------


def siecle(folder: Path, *families: Family, **options: str) -> Path:
    responsables, _ = write_siecle(folder, UAI, families, **options)
    return responsables


def test_siecle_gives_legal_responsables_with_their_pupils_names(tmp_path: Path) -> None:
    path = siecle(tmp_path, Family(CLAIRE, [DYLAN, FLORIAN], 1), Family(MARC, [DYLAN], 2),
                  Family(AIDE, [DYLAN], 0))

    register = read_siecle_responsables(path)

    assert register.establishment_uai == UAI
    assert entries_of(register) == [
        ("294435", "Claire ROBERT", "claire@example.org", "1001", "Dylan", UAI),
        ("294435", "Claire ROBERT", "claire@example.org", "1002", "Florian", UAI),
        ("294436", "Marc ROBERT", None, "1001", "Dylan", UAI)]
    assert register.skipped == 1  # Anne Petit is not a legal responsable


def test_siecle_takes_other_responsables_and_national_ids_on_request(tmp_path: Path) -> None:
    path = siecle(tmp_path, Family(CLAIRE, [DYLAN], 1), Family(AIDE, [DYLAN], 0), nom_tag="NOM")

    register = read_siecle_responsables(path, levels=(0, 1, 2), child_ids="ine")

    assert [(e.external_id, e.display_name, e.children[0].id) for e in register] == [
        ("294435", "Claire ROBERT", "123456789AB"), ("300001", "Anne PETIT", "123456789AB")]


def test_siecle_leaves_out_pupils_who_have_left(tmp_path: Path) -> None:
    path = siecle(tmp_path, Family(CLAIRE, [DYLAN, GONE], 1))

    from datetime import date
    before = read_siecle_responsables(path, today=date(2026, 6, 1))
    after = read_siecle_responsables(path, today=date(2026, 9, 1))

    assert [e.children[0].id for e in before] == ["1001", "1003"]
    assert [e.children[0].id for e in after] == ["1001"]
    assert after.skipped == 1


def test_siecle_needs_the_pupils_file_and_reads_it_from_elsewhere_on_request(
        tmp_path: Path) -> None:
    path = siecle(tmp_path / "export", Family(CLAIRE, [DYLAN], 1))
    moved = tmp_path / "ailleurs.xml"
    (tmp_path / "export" / "ElevesSansAdresses.xml").rename(moved)

    with pytest.raises(InvalidInput) as raised:
        read_siecle_responsables(path)
    assert raised.value.field == "eleves"
    assert [e.children[0].first_name for e in read_siecle_responsables(path, eleves=moved)] == [
        "Dylan"]


def test_siecle_refuses_a_file_of_another_kind(tmp_path: Path) -> None:
    path = siecle(tmp_path, Family(CLAIRE, [DYLAN], 1))
    wrong = tmp_path / "Autre.xml"
    wrong.write_text("<?xml version='1.0'?><BEE_NOMENCLATURES/>", encoding="utf-8")

    with pytest.raises(InvalidRegister) as raised:
        list(read_siecle_responsables(wrong, eleves=tmp_path / "ElevesSansAdresses.xml"))
    assert raised.value.problems[0].kind == "unreadable"
    assert "BEE_NOMENCLATURES" in str(raised.value)
    broken = tmp_path / "Casse.xml"
    broken.write_text(path.read_text(encoding="utf-8")[:300], encoding="utf-8")
    with pytest.raises(InvalidRegister):
        list(read_siecle_responsables(broken, eleves=tmp_path / "ElevesSansAdresses.xml"))


def test_siecle_reports_links_to_unknown_persons_and_unnamed_ones(tmp_path: Path) -> None:
    nameless = Person("400000", "", "")
    path = siecle(tmp_path, Family(CLAIRE, [DYLAN], 1), Family(nameless, [DYLAN], 1))
    text = path.read_text(encoding="utf-8").replace(
        "<PERSONNE_ID>294435</PERSONNE_ID>", "<PERSONNE_ID>999999</PERSONNE_ID>")
    path.write_text(text, encoding="utf-8")

    with pytest.raises(InvalidRegister) as raised:
        list(read_siecle_responsables(path))
    assert sorted((p.external_id, p.kind) for p in raised.value.problems) == [
        ("400000", "bad_value"), ("999999", "bad_value")]


def test_a_siecle_export_in_iso_8859_15_reads_the_same(tmp_path: Path) -> None:
    path = siecle(tmp_path, Family(Person("1", "LEFÈVRE", "Hélène"), [DYLAN], 1),
                  encoding="iso-8859-15")

    assert [e.display_name for e in read_siecle_responsables(path)] == ["Hélène LEFÈVRE"]


def test_a_siecle_register_syncs_and_the_same_export_again_changes_nothing(
        tmp_path: Path) -> None:
    path = siecle(tmp_path, *families(3))
    service = MergeService(InMemoryStorage(), fast_verifier())

    first = service.sync_register(COLLEGE, read_siecle_responsables(path), workers=1)
    again = service.sync_register(COLLEGE, read_siecle_responsables(path), workers=1)

    assert len(first.issued) == 6 and all(len(i.children) == 2 for i in first.issued)
    assert again.unchanged == 6 and not again.changed
    letter = first.letters[0]
    assert service.children(letter.account_id) == tuple(
        Child(f"E0-{k}", f"Enfant{k}", "NOM0", UAI) for k in range(2))


def test_the_readers_memory_stays_flat_as_the_file_grows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file four times larger takes (about) no more memory to read: nothing loads whole.

    (Rows go to the disk by batches: both sizes are larger than a batch.)
    """
    monkeypatch.setattr(siecle_reader, "_CHUNK", 200)
    peaks = []
    for size in (200, 800):
        folder = tmp_path / str(size)
        path = siecle(folder, *families(size))
        csv_path = write_register_csv(folder / "r.csv", UAI, families(size))
        gc.collect()
        tracemalloc.start()
        count = sum(1 for _ in read_siecle_responsables(path))
        count += sum(1 for _ in read_register_csv(csv_path))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == 2 * 2 * 2 * size
    assert peaks[1] < peaks[0] * 1.5, peaks
