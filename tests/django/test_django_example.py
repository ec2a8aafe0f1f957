"""The example ENT's pages, driven with Django's test client: the seed's story in French."""

from __future__ import annotations

import html
import io
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse

from account_merge import Child, MergeService, NotificationLetter
from account_merge.contrib.django import get_service
from account_merge.testing import make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
NEWER = "Tournesol-Bleu-Vif-2028"
CONFIRMATION = ("L'opération de regroupement des comptes a été effectuée avec succès. Seul le "
                "compte avec lequel vous êtes connecté reste disponible.")

pytestmark = pytest.mark.django_db


@pytest.fixture
def service() -> MergeService:
    return get_service()


@pytest.fixture
def letters(service: MergeService) -> tuple[NotificationLetter, NotificationLetter]:
    """The collège's two letters to Claire Robert, one per child."""
    return (service.issue_account(COLLEGE, "Claire Robert",
                                  [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)]),
            service.issue_account(COLLEGE, "Claire Robert",
                                  [Child("ine-florian", "Florian", "Robert", COLLEGE.uai)]))


def text(response: object) -> str:
    """The page's text as read, entities decoded, spaces (no-break ones too) as one space."""
    page = response.content.decode()  # type: ignore[attr-defined]
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    words = html.unescape(re.sub(r"<[^>]+>", "", page))
    return re.sub(r"\s+", " ", words)


def activate(client: Client, letter: NotificationLetter) -> None:
    response = client.post(reverse("ent:activation"), {
        "login": letter.login, "provisional_password": letter.provisional_password.reveal(),
        "new_password": STRONG, "new_password_again": STRONG})
    assert response.status_code == 302 and response["Location"] == reverse("ent:mon_compte")


def merge(client: Client, login: str, password: str) -> object:
    form = client.get(reverse("ent:regrouper"))
    request_id = re.search(r'name="request_id" value="(\w+)"', form.content.decode())
    assert request_id is not None
    return client.post(reverse("ent:regrouper"), {"login": login, "password": password,
                                                  "request_id": request_id.group(1)})


def test_the_pages_need_a_signed_in_parent(client: Client) -> None:
    for page in ("mon_compte", "enfants", "regrouper", "confirmation"):
        response = client.get(reverse(f"ent:{page}"))
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('ent:connexion')}?next={reverse(f'ent:{page}')}"
    assert client.get(reverse("ent:accueil"))["Location"] == reverse("ent:connexion")


def test_the_seed_s_story_activate_merge_and_see_both_children(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    first, second = letters
    activate(client, first)
    page = text(client.get(reverse("ent:mon_compte")))
    assert "Mon compte" in page and "Claire Robert" in page and first.login in page
    assert "Dylan Robert" in text(client.get(reverse("ent:enfants")))

    response = merge(client, second.login, second.provisional_password.reveal())
    assert response["Location"] == reverse("ent:confirmation")  # type: ignore[index]
    page = text(client.get(reverse("ent:confirmation")))
    assert "Confirmation de regroupement de comptes" in page
    assert CONFIRMATION in page
    assert "Dylan Robert Responsable : Claire Robert" in page
    assert "Florian Robert Responsable : Claire Robert" in page
    # The confirmation is shown once; then the Enfants list stays.
    assert client.get(reverse("ent:confirmation"))["Location"] == reverse("ent:enfants")


def test_errors_are_the_library_s_french_messages(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    first, second = letters
    activate(client, first)
    page = text(merge(client, second.login, "WRONG123"))
    assert "identifiant ou mot de passe incorrect" in page
    page = text(merge(client, first.login, STRONG))
    assert "un compte ne peut pas être regroupé avec lui-même" in page
    page = text(client.post(reverse("ent:connexion"), {"login": "nobody", "password": "x"}))
    assert "identifiant ou mot de passe incorrect" in page


def test_the_merge_form_is_throttled_and_says_when_to_try_again(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter],
        service: MergeService) -> None:
    first, second = letters
    activate(client, first)
    for _ in range(service.throttle.backoff_after):
        assert "mot de passe incorrect" in text(merge(client, second.login, "WRONG123"))
    page = text(merge(client, second.login, second.provisional_password.reveal()))
    assert re.search(r"trop de tentatives ; réessayez dans quelques secondes\.\s*Vérifiez", page)


def test_a_resubmitted_merge_form_returns_the_same_confirmation(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    first, second = letters
    activate(client, first)
    form = client.get(reverse("ent:regrouper")).content.decode()
    request_id = re.search(r'name="request_id" value="(\w+)"', form)
    assert request_id is not None
    data = {"login": second.login, "password": second.provisional_password.reveal(),
            "request_id": request_id.group(1)}
    assert client.post(reverse("ent:regrouper"), data)["Location"] == reverse("ent:confirmation")
    assert client.post(reverse("ent:regrouper"), data)["Location"] == reverse("ent:confirmation")


def test_the_absorbed_account_is_signed_out_everywhere(
        letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    """Merged from another browser, the account's own session ends at its next page."""
    first, second = letters
    parent, other_browser = Client(), Client()
    activate(parent, first)
    activate(other_browser, second)
    merge(parent, second.login, STRONG)
    assert other_browser.get(reverse("ent:enfants"))["Location"].startswith(
        reverse("ent:connexion"))


def test_the_forms_are_protected_against_cross_site_requests(
        letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    first, _ = letters
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("ent:activation"), {
        "login": first.login, "provisional_password": first.provisional_password.reveal(),
        "new_password": STRONG, "new_password_again": STRONG})
    assert response.status_code == 403


def test_signing_in_with_a_letter_s_password_leads_to_the_activation_form(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    """``activation_required``, once the provisional password is proven: the activation form."""
    first, _ = letters
    response = client.post(reverse("ent:connexion"), {
        "login": first.login, "password": first.provisional_password.reveal()})
    page = text(response)
    assert response.status_code == 200 and "Activer mon compte" in page
    assert "activez-le avec le mot de passe provisoire" in page
    assert f'value="{first.login}"' in response.content.decode()
    # A wrong password says nothing of the kind.
    page = text(client.post(reverse("ent:connexion"), {"login": first.login,
                                                      "password": "WRONG123"}))
    assert "identifiant ou mot de passe incorrect" in page and "Activer mon compte" not in page


def test_signing_in_to_a_merged_account_says_where_it_went(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    """``account_merged``: sign in with the principal; the school can split if it was not you."""
    first, second = letters
    other_browser = Client()
    activate(other_browser, second)  # the second letter's account, with its own password
    activate(client, first)
    merge(client, second.login, STRONG)
    page = text(Client().post(reverse("ent:connexion"), {"login": second.login,
                                                         "password": STRONG}))
    assert "regroupé avec un autre compte" in page
    assert "regroupé avec un autre compte" in page and "l'établissement" in page


# -- the way back ------------------------------------------------------------------------
WAY_BACK = {
    "VERIFIER": "fast_verifier.fast_django_verifier",
    "SECRET_KEY": "a test secret key of the project",
    "LINKS": {"password_reset": "http://testserver/mot-de-passe/{token}/",
              "email_verification": "http://testserver/courriel/{token}/"},
}


def delivered(outbox: list[Any], to: str) -> str:
    """The link of the message the periodic command sends to *to*."""
    call_command("account_merge_deliver_notices", stdout=io.StringIO())
    message = next(m for m in reversed(outbox) if m.to == [to])
    link = next(line for line in message.body.splitlines() if line.startswith("http://"))
    return str(urlsplit(link).path)


@override_settings(ACCOUNT_MERGE=WAY_BACK)
def test_a_parent_confirms_an_address_then_resets_a_forgotten_password(
        client: Client, mailoutbox: list[Any]) -> None:
    service = get_service()
    first = service.issue_account(COLLEGE, "Claire Robert",
                                  [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])
    activate(client, first)
    response = client.post(reverse("ent:mon_compte"),
                           {"courriel-email": "claire@example.org",
                            "courriel-password": STRONG})
    assert response.status_code == 302
    assert "Un lien de confirmation a été envoyé" in text(client.get(reverse("ent:mon_compte")))
    link = delivered(mailoutbox, "claire@example.org")
    response = client.get(link)
    assert response["Location"] == reverse("ent:confirmer_courriel")
    assert response["Referrer-Policy"] == "no-referrer"
    client.post(reverse("ent:confirmer_courriel"))
    assert "L'adresse claire@example.org est confirmée" in text(
        client.get(reverse("ent:mon_compte")))

    visitor = Client()
    page = text(visitor.get(reverse("ent:connexion")))
    assert "identifiant oublié ?" in page and "mot de passe oublié ?" in page
    for typed in ("CLAIRE@example.org", "personne@example.org"):
        response = visitor.post(reverse("ent:mot_de_passe_oublie"), {"login_or_email": typed})
        assert response["Location"] == reverse("ent:demande_envoyee")
    link = delivered(mailoutbox, "claire@example.org")
    assert visitor.get(link)["Location"] == reverse("ent:nouveau_mot_de_passe")
    page = text(visitor.post(reverse("ent:nouveau_mot_de_passe"), {
        "new_password": NEWER, "new_password_again": NEWER}, follow=True))
    assert "Connexion" in page and "connectez-vous avec le nouveau" in page
    assert service.authenticate(first.login, NEWER).id == first.account_id
    again = Client()
    again.get(link)
    page = text(again.post(reverse("ent:nouveau_mot_de_passe"), {
        "new_password": STRONG, "new_password_again": STRONG}))
    assert "Ce lien n'est plus valable" in page

    visitor.post(reverse("ent:identifiant_oublie"), {"email": "claire@example.org"})
    call_command("account_merge_deliver_notices", stdout=io.StringIO())
    assert f"- {first.login}" in mailoutbox[-1].body
