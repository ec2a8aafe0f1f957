"""The school's register in a Django project: ``manage.py account_merge_sync`` and the admin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from account_merge import AccountStatus, MergeService
from account_merge.contrib.django import get_service
from account_merge.contrib.django import models as m
from account_merge.testing import make_establishment
from account_merge.testing.registers import Family, Person, Pupil, write_siecle

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"

pytestmark = pytest.mark.django_db

JUNE = """\
responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom
R1,Claire Robert,ine-1,Dylan,Robert
R2,Paul Martin,ine-3,Tom,Martin
"""
SEPTEMBER = """\
responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom
R1,Claire Robert,ine-1,Dylan,Robert
R1,Claire Robert,ine-2,Léa,Robert
"""


@pytest.fixture
def service() -> MergeService:
    m.Establishment.objects.create(uai=COLLEGE.uai, name=COLLEGE.name)
    return get_service()


def sync(path: Path, *options: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("account_merge_sync", COLLEGE.uai, str(path), "--workers", "1", *options,
                 stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_sync_command_issues_then_attaches_and_closes(
        service: MergeService, tmp_path: Path) -> None:
    june, september = tmp_path / "juin.csv", tmp_path / "rentree.csv"
    june.write_text(JUNE, encoding="utf-8")
    september.write_text(SEPTEMBER, encoding="utf-8")

    out, _ = sync(june, "--yes", "--out", str(tmp_path / "courriers"))
    assert "claire.robert.txt" in {p.name for p in (tmp_path / "courriers").iterdir()}
    assert ": appliqué" in out
    claire = service.find_account("claire.robert")
    service.activate("claire.robert", _password(tmp_path / "courriers" / "claire.robert.txt"),
                     STRONG)

    out, _ = sync(june, "--yes")
    assert "Rien à changer" in out

    out, _ = sync(september, "--yes")
    assert "Léa Robert (ine-2)  → claire.robert (R1)" in out
    assert [c.first_name for c in service.children(claire.id)] == ["Dylan", "Léa"]
    assert service.find_account("paul.martin").status is AccountStatus.CLOSED
    assert service.authenticate("claire.robert", STRONG).id == claire.id
    assert m.RegisterEntry.objects.get(external_id="R2").children == []
    assert m.RegisterClosure.objects.filter(account__login="paul.martin").exists()


def _password(letter: Path) -> str:
    for line in letter.read_text(encoding="utf-8").splitlines():
        if line.startswith("Mot de passe *\xa0: "):
            return line.removeprefix("Mot de passe *\xa0: ")
    raise AssertionError("no password on the letter")


def test_the_sync_command_reads_siecle_previews_and_refuses_what_does_not_hold(
        service: MergeService, tmp_path: Path) -> None:
    claire = Person("294435", "ROBERT", "Claire")
    responsables, _ = write_siecle(tmp_path / "export", COLLEGE.uai,
                                   [Family(claire, [Pupil("1001", "ROBERT", "Dylan")])])
    out, _ = sync(responsables, "--dry-run")
    assert "294435  Claire ROBERT  (Dylan ROBERT)" in out
    assert not m.RegisterEntry.objects.exists()

    with pytest.raises(CommandError, match=r"\(letters_folder\)"):
        sync(responsables, "--yes")
    bad = tmp_path / "faux.csv"
    bad.write_text(JUNE + "R1,Claire Durand,ine-9,Zoé,Robert\n", encoding="utf-8")
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"\(invalid_input\)"):
        call_command("account_merge_sync", COLLEGE.uai, str(bad), "--yes", stdout=io.StringIO(),
                     stderr=err)
    assert "ligne 4 (R1)\xa0: nom «\xa0Claire Durand\xa0»" in err.getvalue()
    with pytest.raises(CommandError, match="0869999B"):
        call_command("account_merge_sync", "0869999B", str(bad), stdout=io.StringIO())


def test_the_admin_shows_the_register_and_the_closed_accounts(
        service: MergeService, tmp_path: Path) -> None:
    june = tmp_path / "juin.csv"
    june.write_text(JUNE, encoding="utf-8")
    sync(june, "--yes", "--out", str(tmp_path / "courriers"))
    september = tmp_path / "rentree.csv"
    september.write_text(SEPTEMBER, encoding="utf-8")
    sync(september, "--yes", "--out", str(tmp_path / "rentree"))
    admin = User.objects.create_superuser("admin", password=STRONG)
    client = Client()
    client.force_login(admin)

    listing = client.get(reverse("admin:account_merge_registerentry_changelist"))
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "R1" in page and "Dylan Robert, Léa Robert" in page
    assert "ne figure plus au registre" in page  # Paul Martin, gone
    paul = service.find_account("paul.martin")
    detail = client.get(reverse("admin:account_merge_account_change", args=[paul.id]))
    assert detail.status_code == 200 and "fermé" in detail.content.decode()
    letters = client.get(reverse("admin:account_merge_letter_changelist")).content.decode()
    assert "compte fermé (plus aucun enfant)" in letters
