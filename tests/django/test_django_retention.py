"""Retention in Django: the nightly command, the staff's export, the parent's own data."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from test_django_commands_admin import COLLEGE, LYCEE, STRONG, merged_family, staff

from account_merge import Child, MergeService
from account_merge.contrib.django import get_service
from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage import DjangoStorage
from account_merge.testing import FakeClock, fast_verifier, make_establishment

pytestmark = pytest.mark.django_db


@pytest.fixture
def service() -> MergeService:
    for school in (COLLEGE, LYCEE):
        m.Establishment.objects.create(uai=school.uai, name=school.name)
    return get_service()


def test_the_nightly_purge_deletes_what_is_due_once_and_a_dry_run_nothing(
        service: MergeService) -> None:
    past = MergeService(DjangoStorage(), fast_verifier(),
                        FakeClock(datetime.now(UTC) - timedelta(days=100)))
    letter = past.issue_account(COLLEGE, "Paul Martin",
                                [Child("ine-tom", "Tom", "Martin", COLLEGE.uai)])
    principal_id, _ = merged_family(service)
    out = io.StringIO()
    call_command("account_merge_purge", "--dry-run", stdout=out)
    assert "Simulation, rien n'a été supprimé" in out.getvalue()
    assert "comptes\xa0: 1 (jamais activés 1," in out.getvalue()
    assert m.Account.objects.filter(id=letter.account_id).exists()
    out = io.StringIO()
    call_command("account_merge_purge", stdout=out)
    assert out.getvalue().startswith("Purge effectuée\xa0:")
    assert not m.Account.objects.filter(id=letter.account_id).exists()
    assert not m.Child.objects.filter(id="ine-tom").exists()
    assert m.Account.objects.filter(id=principal_id).exists()
    out = io.StringIO()
    call_command("account_merge_purge", stdout=out)
    assert "comptes\xa0: 0 (" in out.getvalue()


def export(client: Client, *account_ids: str) -> object:
    return client.post(reverse("admin:account_merge_account_changelist"),
                       {"action": "export_personal_data", "_selected_action": list(account_ids)})


def test_staff_export_an_accounts_data_for_their_establishments_only(
        service: MergeService) -> None:
    principal_id, login = merged_family(service)
    response = export(staff("cpe.lycee", allowed_for=[LYCEE]), principal_id)
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert response["Content-Disposition"] == f'attachment; filename="{login}.json"'  # type: ignore[index]
    data = json.loads(response.content)  # type: ignore[attr-defined]
    assert [c["first_name"] for c in data["children"]] == ["Dylan", "Florian", "Léa"]
    other = make_establishment(860003, "École des Trois Rivières")
    m.Establishment.objects.create(uai=other.uai, name=other.name)
    refused = export(staff("secretariat.ecole", allowed_for=[other]), principal_id)
    assert refused["Content-Type"].startswith("text/html")  # type: ignore[index]
    another = service.issue_account(COLLEGE, "Marc Robert",
                                    [Child("ine-tom", "Tom", "Robert", COLLEGE.uai)])
    both = export(staff("cpe.college", allowed_for=[COLLEGE]), principal_id, another.account_id)
    assert both["Content-Type"].startswith("text/html")  # type: ignore[index]


def test_a_parent_downloads_their_own_data_from_mon_compte(service: MergeService,
                                                          client: Client) -> None:
    assert client.get(reverse("ent:mes_donnees"))["Location"].startswith(reverse("ent:connexion"))
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    client.post(reverse("ent:activation"), {
        "login": letter.login, "provisional_password": letter.provisional_password.reveal(),
        "new_password": STRONG, "new_password_again": STRONG})
    assert reverse("ent:mes_donnees") in client.get(reverse("ent:mon_compte")).content.decode()
    response = client.get(reverse("ent:mes_donnees"))
    assert response["Content-Disposition"] == 'attachment; filename="mes-donnees.json"'
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    data = json.loads(response.content)
    assert data["account"]["id"] == letter.account_id
    assert [r["action"] for r in data["audit"]][:2] == ["issue", "activate"]
