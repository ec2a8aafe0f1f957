"""What a parent saw in the Django example, fixed, checked with Django's test client.

The browser test (``test_django_example_browser.py``) sees the pages as
drawn; these check what the HTML says: the seed's sign-in page, the
header naming the child with its switcher, the password asked again
before the merge form, errors tied to their fields with the focus on the
first, French error pages with a way back, « Principal » said only of the
principal, and French typography in the templates and catalogues.
"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client, override_settings
from django.urls import reverse
from test_django_example import STRONG, activate, letters, merge, service, text

from account_merge import MergeService, NotificationLetter
from account_merge.contrib import django as django_app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_app" / "ent_example"
APP = Path(django_app.__file__).resolve().parent
NBSP = "\N{NO-BREAK SPACE}"

__all__ = ["letters", "service"]  # fixtures

pytestmark = pytest.mark.django_db


def test_the_sign_in_page_is_the_seed_s(client: Client) -> None:
    page = client.get(reverse("ent:connexion")).content.decode()

    assert re.search(r"<h1>Connexion</h1>", page)
    assert f"identifiant oublié{NBSP}?" in html.unescape(page)
    assert f"mot de passe oublié{NBSP}?" in html.unescape(page)
    assert '<html lang="fr">' in page
    assert re.search(r'<label for="id_login">Identifiant</label>', page)
    assert re.search(r'<label for="id_password">Mot de passe</label>', page)


def test_a_failed_sign_in_ties_the_error_to_the_fields_and_focuses_the_first(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    page = client.post(reverse("ent:connexion"),
                       {"login": letters[0].login, "password": "WRONG123"}).content.decode()

    assert re.search(r'<div class="erreur" id="erreurs" role="alert">\s*<p>identifiant ou mot '
                     r"de passe incorrect</p>", page)
    login = re.search(r"<input [^>]*name=\"login\"[^>]*>", page)
    password = re.search(r"<input [^>]*name=\"password\"[^>]*>", page)
    assert login is not None and password is not None
    for field in (login.group(0), password.group(0)):
        assert 'aria-invalid="true"' in field and 'aria-describedby="erreurs"' in field
    assert "autofocus" in login.group(0) and "autofocus" not in password.group(0)


def test_a_field_s_own_error_is_beside_it_and_named_by_it(client: Client) -> None:
    page = client.post(reverse("ent:activation"), {
        "login": "claire", "provisional_password": "2BUYJ9C8",
        "new_password": STRONG, "new_password_again": "autre chose"}).content.decode()

    field = re.search(r'<input [^>]*name="new_password_again"[^>]*>', page)
    assert field is not None
    assert 'aria-invalid="true"' in field.group(0) and "autofocus" in field.group(0)
    assert 'aria-describedby="id_new_password_again_error"' in field.group(0)
    assert re.search(r'<p class="erreur-champ" id="id_new_password_again_error">Les deux saisies '
                     r"diffèrent.</p>", page)
    assert 'href="#id_new_password_again"' in page  # the summary leads to the field


def test_the_header_names_the_child_being_viewed_and_switches(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    first, second = letters
    activate(client, first)
    merge(client, second.login, second.provisional_password.reveal())

    home = client.get(reverse("ent:accueil")).content.decode()
    assert re.search(r'class="marque">.*<span class="enfant">Dylan</span>', home, re.S)
    assert "Aucun service en ligne pour cet élève." in home
    switch = re.search(r'href="(\?enfant=[^"]+)">Florian</a>', home)
    assert switch is not None

    assert client.get(reverse("ent:accueil") + html.unescape(switch.group(1))).status_code == 302
    home = client.get(reverse("ent:accueil")).content.decode()
    assert '<span class="enfant">Florian</span>' in home
    assert re.search(r'aria-current="page">Florian</a>', home)


def test_the_merge_form_asks_for_the_password_again_after_a_while(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter]) -> None:
    activate(client, letters[0])
    with override_settings(RECENT_LOGIN_MAX_AGE=-1):
        response = client.get(reverse("ent:regrouper"))
        confirm = reverse("ent:confirmer_identite")
        assert response["Location"] == f"{confirm}?next={reverse('ent:regrouper')}"
        wrong = client.post(confirm, {"password": "WRONG123", "next": reverse("ent:regrouper")})
        assert "mot de passe incorrect" in text(wrong)
    right = client.post(confirm, {"password": STRONG, "next": reverse("ent:regrouper")})
    assert right["Location"] == reverse("ent:regrouper")
    assert client.get(reverse("ent:regrouper")).status_code == 200


def test_the_throttle_answers_429_in_french_with_a_way_back(
        client: Client, letters: tuple[NotificationLetter, NotificationLetter],
        service: MergeService) -> None:
    first, second = letters
    activate(client, first)
    for _ in range(service.throttle.backoff_after):
        merge(client, second.login, "WRONG123")

    response = merge(client, second.login, second.provisional_password.reveal())

    assert response.status_code == 429  # type: ignore[attr-defined]
    assert int(response["Retry-After"]) >= 1  # type: ignore[index]
    page = text(response)
    assert "Trop de tentatives" in page and "réessayez dans" in page
    assert f'href="{reverse("ent:regrouper")}"' in response.content.decode()  # type: ignore[attr-defined]


def test_error_pages_are_french_with_a_way_back(client: Client) -> None:
    missing = client.get("/nulle-part/")
    assert missing.status_code == 404 and "Page introuvable" in text(missing)
    bad = client.get(reverse("ent:connexion"), headers={"host": "ailleurs.example"})
    assert bad.status_code == 400 and "Demande incorrecte" in text(bad)
    expired = Client(enforce_csrf_checks=True).post(reverse("ent:connexion"),
                                                    {"login": "a", "password": "b"})
    assert expired.status_code == 403 and "Formulaire expiré" in text(expired)
    for response in (missing, bad, expired):
        page = response.content.decode()
        assert '<html lang="fr">' in page and 'role="alert"' in page
        assert f'href="{reverse("ent:accueil")}"' in page


def test_the_500_and_403_pages_are_french(rf: object) -> None:
    from django.test import RequestFactory
    from ent_example import views

    crashed = views.server_error(RequestFactory().get("/"))
    assert crashed.status_code == 500 and "Erreur du service" in text(crashed)

    from django.views.defaults import permission_denied

    refused = permission_denied(RequestFactory().get("/"), PermissionDenied("pas pour vous"))
    assert refused.status_code == 403 and "Accès refusé" in text(refused)


def test_the_views_that_check_a_password_are_out_of_the_request_transaction() -> None:
    """On SQLite a request transaction would hold the write lock during argon2's work."""
    from ent_example import views

    for name in views.PASSWORD_VIEWS:
        assert getattr(views, name)._non_atomic_requests == {"default"}, name


def test_principal_is_said_only_of_the_principal_account(client: Client) -> None:
    """A letter being activated is not the principal yet (it may be merged later)."""
    page = text(client.get(reverse("ent:activation")))

    assert "sera votre compte « Principal »" not in page
    assert "Ce compte sera" not in page


# -- French typography ---------------------------------------------------------------------
_FAULT = re.compile(r"[ \t\n]+[:;?!»]|«[ \t\n]")


def typography_faults(text_: str) -> list[str]:
    """The places of *text_* where French wants a no-break space and has an ordinary one."""
    return [text_[max(0, m.start() - 20):m.end() + 5] for m in _FAULT.finditer(text_)]


def template_text(source: str) -> str:
    """What a template shows: no tags, no template syntax, no style; entities decoded.

    Texts to translate (``blocktranslate``) are left out: the catalogue gives them.
    """
    source = re.sub(r"{% blocktranslate.*?{% endblocktranslate %}", " ", source, flags=re.S)
    source = re.sub(r"<style>.*?</style>|{#.*?#}|{%.*?%}|{{.*?}}", " ", source, flags=re.S)
    source = re.sub(r"<[^>]+>", " ", source)
    return html.unescape(source)


def python_strings(path: Path) -> Iterator[str]:
    """The string literals of a module, docstrings and comments left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)


def test_the_example_s_templates_set_french_typography() -> None:
    faults = {str(p.relative_to(EXAMPLE)): typography_faults(template_text(p.read_text()))
              for p in sorted(EXAMPLE.rglob("*.html"))}

    assert {name: found for name, found in faults.items() if found} == {}


def test_the_example_s_messages_set_french_typography() -> None:
    faults = [found for name in ("views.py", "forms.py")
              for string in python_strings(EXAMPLE / name)
              for found in typography_faults(string)]

    assert faults == []


def test_the_django_app_s_templates_and_french_catalogue_set_french_typography() -> None:
    from test_django_locale import compiled

    faults = [found for path in sorted(APP.rglob("*.html"))
              for found in typography_faults(template_text(path.read_text()))]
    faults += [found for text_ in compiled("fr").values() for found in typography_faults(text_)]

    assert faults == []


@pytest.mark.parametrize("sample", ["Mot de passe oublié ?", "« Principal »", "compte : ok",
                                    "ceci ; cela", "Attention !"])
def test_the_typography_check_catches_an_ordinary_space(sample: str) -> None:
    assert typography_faults(sample)
    fixed = re.sub(r"(?<=«) ", NBSP, re.sub(r" (?=[:;?!»])", NBSP, sample))
    assert typography_faults(fixed) == []

