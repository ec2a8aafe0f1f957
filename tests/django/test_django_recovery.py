"""The way back in a Django project: the settings, the commands, the mailer, the store's tiers."""

from __future__ import annotations

import html
import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from account_merge import Child, MergeService
from account_merge.contrib.django import get_service
from account_merge.contrib.django import models as m
from account_merge.exceptions import InvalidInput
from account_merge.testing import make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
LYCEE = make_establishment(860002, "Lycée Camille Guérin")
STRONG = "Correct-Horse-Battery-9"
NEWER = "Tournesol-Bleu-Vif-2028"
WAY_BACK = {
    "VERIFIER": "fast_verifier.fast_django_verifier",
    "SECRET_KEY": "a test secret key of the project",
    "LINKS": {"password_reset": "https://ent.example/mot-de-passe/{token}",
              "email_verification": "https://ent.example/courriel/{token}"},
}

pytestmark = pytest.mark.django_db


@pytest.fixture
def service() -> Any:
    for school in (COLLEGE, LYCEE):
        m.Establishment.objects.create(uai=school.uai, name=school.name)
    with override_settings(ACCOUNT_MERGE=WAY_BACK,
                           DEFAULT_FROM_EMAIL="ne-pas-repondre@ent.example"):
        yield get_service()


def deliver(outbox: list[Any]) -> list[Any]:
    """The messages one run of the command sends."""
    before = len(outbox)
    out = io.StringIO()
    call_command("account_merge_deliver_notices", stdout=out)
    assert f"{len(outbox) - before} message(s) envoyé(s)." in out.getvalue()
    return outbox[before:]


def token(message: Any) -> str:
    link = next(line for line in message.body.splitlines() if line.startswith("https://"))
    return str(link.rsplit("/", 1)[1])


def test_a_parent_gets_back_in_through_the_projects_settings_and_mail(
        service: MergeService, mailoutbox: list[Any]) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    service.activate(letter.login, letter.provisional_password, STRONG,
                     email="claire@example.org")
    (confirm,) = deliver(mailoutbox)
    assert confirm.to == ["claire@example.org"]
    assert service.confirm_email(token(confirm)).email == "claire@example.org"
    assert m.EmailIndexEntry.objects.get(account_id=letter.account_id).key == "claire@example.org"

    service.request_password_reset("Claire@Example.org")
    (reset,) = deliver(mailoutbox)
    assert reset.subject == "Réinitialisation de votre mot de passe"
    assert reset.from_email == "ne-pas-repondre@ent.example"
    service.reset_password(token(reset), NEWER)
    assert service.authenticate(letter.login, NEWER).id == letter.account_id
    assert [n.status for n in m.Notice.objects.order_by("id")] == ["sent", "sent"]
    assert deliver(mailoutbox)[0].subject == "Mot de passe réinitialisé"
    assert deliver(mailoutbox) == []


def test_the_reissue_command_prints_a_new_letter(service: MergeService) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    out, err = io.StringIO(), io.StringIO()
    call_command("account_merge_reissue", COLLEGE.uai, letter.login, stdout=out, stderr=err)
    assert f"Identifiant\u00a0: {letter.login}" in out.getvalue()
    assert letter.provisional_password.reveal() not in out.getvalue()
    assert f"Courrier réédité par {COLLEGE.uai}" in err.getvalue()
    with pytest.raises(CommandError, match="not_authorized"):
        call_command("account_merge_reissue", LYCEE.uai, letter.login, stdout=out, stderr=err)


def test_without_a_secret_key_the_project_is_told_what_is_missing(
        service: MergeService) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    with override_settings(ACCOUNT_MERGE={"VERIFIER": "fast_verifier.fast_django_verifier"}):
        bare = get_service()
        with pytest.raises(InvalidInput, match=r"secret_key|links"):
            bare.activate(letter.login, letter.provisional_password, STRONG,
                          email="claire@example.org")


def test_the_admin_reissues_letters_for_the_staffs_own_establishments(
        service: MergeService) -> None:
    from django.urls import reverse
    from test_django_commands_admin import staff

    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    action = {"action": "reissue_letter", "_selected_action": [letter.account_id]}
    url = reverse("admin:account_merge_account_changelist")
    response = staff("lycee", allowed_for=[LYCEE]).post(url, action, follow=True)
    assert "aucun enfant d'un de vos établissements" in html.unescape(
        response.content.decode())
    response = staff("college", allowed_for=[COLLEGE]).post(url, action)
    page = response.content.decode()
    assert response.status_code == 200 and "Courriers réédités" in page
    assert f"Identifiant\u00a0: {letter.login}" in page
    assert "no-cache" in response["Cache-Control"]
    assert m.AuditEntry.objects.filter(action="reissue_letter",
                                       actor=f"establishment:{COLLEGE.uai}").count() == 1
