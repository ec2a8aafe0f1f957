"""The management commands, and the admin pages where only an establishment's staff split."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from account_merge import Child, Establishment, MergeService
from account_merge.contrib.django import get_service
from account_merge.contrib.django import models as m
from account_merge.testing import make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
LYCEE = make_establishment(860002, "Lycée Camille Guérin")
STRONG = "Correct-Horse-Battery-9"

pytestmark = pytest.mark.django_db


@pytest.fixture
def service() -> MergeService:
    for school in (COLLEGE, LYCEE):
        m.Establishment.objects.create(uai=school.uai, name=school.name)
    return get_service()


def merged_family(service: MergeService) -> tuple[str, str]:
    """Claire's principal (Dylan, collège) holding Florian (collège) and Léa (lycée) by merges."""
    dylan = service.issue_account(COLLEGE, "Claire Robert",
                                  [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    florian = service.issue_account(COLLEGE, "Claire Robert",
                                    [Child("ine-florian", "Florian", "Robert", COLLEGE.uai)])
    lea = service.issue_account(LYCEE, "Claire Robert",
                                [Child("ine-lea", "Léa", "Robert", LYCEE.uai)])
    principal = service.activate(dylan.login, dylan.provisional_password, STRONG)
    service.merge(principal.id, florian.login, florian.provisional_password)
    service.merge(principal.id, lea.login, lea.provisional_password)
    return principal.id, principal.login


def staff(name: str, *, allowed_for: list[Establishment], permission: bool = True) -> Client:
    user = User.objects.create_user(name, password=STRONG, is_staff=True)
    if permission:
        content_type = ContentType.objects.get_for_model(m.Account)
        user.user_permissions.add(*Permission.objects.filter(
            content_type=content_type, codename__in=["split_account", "view_account"]))
    for school in allowed_for:
        m.EstablishmentStaff.objects.create(user=user, establishment_id=school.uai)
    client = Client()
    client.force_login(user)
    return client


def split_action(client: Client, account_id: str, *, confirm: bool = True) -> object:
    """The split action on *account_id*, and its confirmation unless *confirm* is False."""
    data = {"action": "split_merge", "_selected_action": [account_id]}
    first = client.post(reverse("admin:account_merge_account_changelist"), data)
    if not confirm or first.status_code != 200 or "confirm" not in first.content.decode():
        return first
    return client.post(reverse("admin:account_merge_account_changelist"),
                       {**data, "confirm": "yes"})


# -- management commands ------------------------------------------------------------------
def test_account_merge_issue_writes_one_letter_per_family_of_the_csv(
        service: MergeService, tmp_path: Path) -> None:
    rows = [["uai", "eleve_id", "eleve_prenom", "eleve_nom", "responsable_id", "responsable_nom"],
            [COLLEGE.uai, "ine-1", "Dylan", "Robert", "r1", "Claire Robert"],
            [COLLEGE.uai, "ine-2", "Florian", "Robert", "r1", "Claire Robert"],
            [COLLEGE.uai, "ine-1", "Dylan", "Robert", "r2", "Marc Robert"]]
    source = tmp_path / "eleves.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    out, err = io.StringIO(), io.StringIO()
    call_command("account_merge_issue", str(source), "--out", str(tmp_path / "courriers"),
                 "--workers", "1", stdout=out, stderr=err)
    letters = sorted(p.name for p in (tmp_path / "courriers").glob("*.txt"))
    assert letters == ["claire.robert.txt", "marc.robert.txt"]
    assert "Mot de passe" in (tmp_path / "courriers" / "claire.robert.txt").read_text()
    assert "2 courrier(s) écrit(s)" in out.getvalue()
    assert m.Account.objects.count() == 2
    assert m.ChildLink.objects.filter(account__login="claire.robert").count() == 2


def test_account_merge_issue_names_an_unknown_establishment_in_french(
        service: MergeService, tmp_path: Path) -> None:
    source = tmp_path / "eleves.csv"
    source.write_text("uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom\n"
                      "0869999B,ine-1,Dylan,Robert,r1,Claire Robert\n", encoding="utf-8")
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"1 ligne\(s\) invalide"):
        call_command("account_merge_issue", str(source), "--out", str(tmp_path / "c"),
                     "--workers", "1", stdout=io.StringIO(), stderr=err)
    assert ("ligne 2\N{NO-BREAK SPACE}: établissement inconnu\N{NO-BREAK SPACE}: 0869999B "
            "(ajoutez-le dans l'administration, "
            "«\N{NO-BREAK SPACE}Établissements\N{NO-BREAK SPACE}»)") in err.getvalue()


def test_account_merge_split_prints_the_new_letter(service: MergeService) -> None:
    principal_id, login = merged_family(service)
    out, err = io.StringIO(), io.StringIO()
    call_command("account_merge_split", LYCEE.uai, login, stdout=out, stderr=err)
    assert "Léa Robert rattaché(s) au nouveau compte" in err.getvalue()
    assert "Mot de passe" in out.getvalue()
    assert [c.first_name for c in service.children(principal_id)] == ["Dylan", "Florian"]
    with pytest.raises(CommandError, match="opération non autorisée"):
        call_command("account_merge_split", LYCEE.uai, login, stdout=out, stderr=err)


def test_account_merge_split_writes_the_letter_to_a_new_private_file(
        service: MergeService, tmp_path: Path) -> None:
    _, login = merged_family(service)
    target = tmp_path / "courrier.txt"
    call_command("account_merge_split", COLLEGE.uai, login, "--out", str(target),
                 stdout=io.StringIO(), stderr=io.StringIO())
    assert "Florian" in target.read_text(encoding="utf-8")
    assert target.stat().st_mode & 0o777 == 0o600


# -- admin ---------------------------------------------------------------------------------
def test_the_admin_shows_accounts_letters_and_audit_without_any_password(
        service: MergeService, admin_client: Client) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    secret = letter.provisional_password.reveal()
    for name in ("account", "letter", "auditentry", "establishment"):
        page = admin_client.get(reverse(f"admin:account_merge_{name}_changelist"))
        assert page.status_code == 200
        assert secret not in page.content.decode()
    detail = admin_client.get(reverse("admin:account_merge_letter_change",
                                      args=[letter.account_id]))
    text = detail.content.decode()
    assert "en attente d&#x27;activation" in text and "Dylan Robert" in text
    assert secret not in text and "argon2" not in text


def test_accounts_letters_and_audit_cannot_be_added_changed_or_deleted_by_hand(
        service: MergeService, admin_client: Client) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    for name in ("account", "letter", "auditentry"):
        assert admin_client.get(reverse(f"admin:account_merge_{name}_add")).status_code == 403
    change = reverse("admin:account_merge_account_change", args=[letter.account_id])
    admin_client.post(change, {"display_name": "Quelqu'un d'autre"})
    assert service.get_account(letter.account_id).display_name == "Claire Robert"
    delete = reverse("admin:account_merge_account_delete", args=[letter.account_id])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403


def test_staff_split_only_for_their_own_establishment_and_get_the_letter(
        service: MergeService) -> None:
    principal_id, _ = merged_family(service)
    college_staff = staff("cpe.college", allowed_for=[COLLEGE])
    page = split_action(college_staff, principal_id)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Nouveaux courriers de notification" in text and "Florian" in text
    assert "no-cache" in page["Cache-Control"] or "no-store" in page["Cache-Control"]
    # Léa, of the lycée, stays: this staff member is not the lycée's.
    assert [c.first_name for c in service.children(principal_id)] == ["Dylan", "Léa"]
    assert service.audit_trail(None)[-1].actor == f"establishment:{COLLEGE.uai}"


def test_the_split_asks_first_showing_the_account_and_the_children_that_will_leave(
        service: MergeService) -> None:
    """Nothing changes until the staff confirm; the page names who leaves and who stays."""
    principal_id, login = merged_family(service)
    college_staff = staff("cpe.college", allowed_for=[COLLEGE])

    page = split_action(college_staff, principal_id, confirm=False)

    assert page.status_code == 200  # type: ignore[attr-defined]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.content.decode()))  # type: ignore[attr-defined]
    leaving = text.index("Enfants qui quitteront ce compte")
    staying = text.index("Enfants qui resteront sur ce compte")
    assert f"Compte {login} (Claire Robert)" in text
    assert "Florian Robert" in text[leaving:staying]
    assert "Dylan Robert" in text[staying:] and "Léa Robert" in text[staying:]
    assert 'name="confirm" value="yes"' in page.content.decode()  # type: ignore[attr-defined]
    assert [c.first_name for c in service.children(principal_id)] == ["Dylan", "Florian", "Léa"]


def test_staff_of_another_establishment_or_without_the_permission_cannot_split(
        service: MergeService) -> None:
    principal_id, _ = merged_family(service)
    other = make_establishment(860003, "École des Trois Rivières")
    m.Establishment.objects.create(uai=other.uai, name=other.name)
    for client in (staff("secretariat.ecole", allowed_for=[other]),
                   staff("sans.permission", allowed_for=[COLLEGE], permission=False)):
        split_action(client, principal_id)
    assert [c.first_name for c in service.children(principal_id)] == ["Dylan", "Florian", "Léa"]
