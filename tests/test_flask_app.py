"""The example Flask application, driven page by page with Flask's test client."""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("flask")
pytest.importorskip("sqlalchemy")

import sqlalchemy
from flask import Flask
from flask.testing import FlaskClient

from account_merge import Child, NotificationLetter
from account_merge.contrib.flask import CONFIG_KEYS, get_service, get_state
from account_merge.messages import describe_wait
from examples.flask_app import create_app
from examples.flask_app.app import close_app
from examples.flask_app.seed import seed_letters

PASSWORD = "Trois-Rivieres-2024!"
OTHER_PASSWORD = "Deux-Rivieres-2025?"
ACCESS_CODE = "code-du-college"
CONFIRMATION = [
    "CONFIRMATION DE REGROUPEMENT DE COMPTES",
    "L'opération de regroupement des comptes a été effectuée avec succès.",
    "Seul le compte avec lequel vous êtes connecté reste disponible.",
    "Vous pourrez visualiser vos nouvelles informations d'ici quelques instants.",
]
WRONG = "Identifiant ou mot de passe incorrect."
MERGED = "regroupé avec un autre compte"
_prefixes = itertools.count()


class Browser:
    """A parent (or a member of staff) at a browser: pages read as text, forms posted."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.page = ""
        self.status = 0
        self.location: str | None = None
        self.retry_after: str | None = None

    def get(self, path: str, *, follow: bool = True) -> str:
        return self._read(self.client.get(path, follow_redirects=follow))

    def post(self, path: str, *, csrf: bool = True, follow: bool = True, **form: str) -> str:
        """Submit a form of the current page, with its CSRF token unless told not to."""
        if csrf:
            found = re.search(r'name="csrf_token" value="([^"]+)"', self.page)
            assert found, "the current page has no form"
            form = {"csrf_token": html.unescape(found.group(1)), **form}
        return self._read(self.client.post(path, data=form, follow_redirects=follow))

    def _read(self, response: Any) -> str:
        self.status = response.status_code
        self.location = response.headers.get("Location")
        self.retry_after = response.headers.get("Retry-After")
        self.page = response.get_data(as_text=True)
        return self.text

    @property
    def text(self) -> str:
        """The page as a person reads it: tags removed, entities decoded, spaces folded."""
        without_tags = re.sub(r"<[^>]+>", " ", self.page)
        return re.sub(r"\s+", " ", html.unescape(without_tags)).strip()

    def sign_in(self, login: str, password: str) -> str:
        self.get("/connexion")
        return self.post("/connexion", identifiant=login, mot_de_passe=password)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads its configuration from the environment: start from none."""
    for key in [*CONFIG_KEYS, "ESTABLISHMENT_ACCESS_CODE", "FLASK_SECRET_KEY"]:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The store's configuration: the default SQLite file, or PostgreSQL by URL."""
    if request.param == "postgresql":
        return {"ACCOUNT_MERGE_DATABASE_URL": request.getfixturevalue("postgres_url"),
                "ACCOUNT_MERGE_TABLE_PREFIX": f"app{next(_prefixes)}_"}
    return {}


@pytest.fixture
def make_app(tmp_path: Path, clean_environment: None,
             database: dict[str, str]) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def factory(**config: Any) -> Flask:
        app = create_app(
            {"TESTING": True, "SECRET_KEY": "tests", "ESTABLISHMENT_ACCESS_CODE": ACCESS_CODE,
             "ACCOUNT_MERGE_ARGON2_PROFILE": "CHEAPEST",
             "ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK": False, **database, **config},
            instance_path=tmp_path / f"instance{len(made)}",
        )
        made.append(app)
        return app

    yield factory
    for app in made:
        # One PostgreSQL database serves the whole run: leave no table behind.
        storage = get_state(app).storage
        engine = sqlalchemy.create_engine(app.config["ACCOUNT_MERGE_DATABASE_URL"])
        storage.metadata.drop_all(engine)  # type: ignore[attr-defined]
        engine.dispose()
        close_app(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def letters(app: Flask) -> tuple[NotificationLetter, NotificationLetter]:
    """The seed's two letters, as the seed command issues them."""
    with app.app_context():
        return seed_letters(get_service(), app.config["ESTABLISHMENT"])


def activate(browser: Browser, letter: NotificationLetter, password: str = PASSWORD) -> str:
    browser.get("/activation")
    return browser.post("/activation", identifiant=letter.login,
                        mot_de_passe_provisoire=letter.provisional_password.reveal(),
                        nouveau_mot_de_passe=password, confirmation=password)


def children_listed(text: str) -> list[tuple[str, str]]:
    """(first name, responsable) of each child on the Enfants page."""
    return re.findall(r"(\w+) Responsable : ([\w ]+?)(?= \w+ Responsable| REGROUPER)", text)


# -- the seed's story -----------------------------------------------------------------------


def test_the_seeds_story_page_by_page(app: Flask) -> None:
    first, second = letters(app)
    parent = Browser(app.test_client())

    # Activation of Dylan's letter: the « Principal » account, and Mon compte.
    text = activate(parent, first)
    assert parent.status == 200
    assert "c'est votre compte « Principal »" in text
    assert "COMPTE DE Claire Robert" in text and "PROFIL" in text and "ENFANTS 1" in text
    assert "Modification de l'adresse mail" in text
    assert "Modification du mot de passe" in text
    assert "REGROUPER DES COMPTES" in text

    # Signing out and in again.
    parent.post("/deconnexion")
    assert "Vous êtes déconnecté." in parent.text
    parent.sign_in(first.login, PASSWORD)
    assert "COMPTE DE Claire Robert" in parent.text

    # Mon compte: the e-mail address, on record once the link sent to it is followed.
    parent.post("/compte/adresse-mail", adresse_mail="claire.robert@example.fr",
                mot_de_passe=PASSWORD)
    assert "Un lien de confirmation a été envoyé à claire.robert@example.fr" in parent.text
    assert "non renseignée" in parent.text
    follow_link(parent, mail_to(app, "claire.robert@example.fr"))
    text = parent.post("/courriel/confirmer")
    assert "L'adresse claire.robert@example.fr est confirmée" in text
    assert "claire.robert@example.fr" in parent.text

    # Enfants: one child for now.
    text = parent.get("/compte/enfants")
    assert "Enfants rattachés au compte" in text
    assert children_listed(text) == [("Dylan", "Claire Robert")]

    # Regrouper des comptes: a wrong password, then Florian's letter.
    text = parent.get("/compte/regrouper")
    assert "REGROUPER DES COMPTES" in text
    assert "saisir les informations présentes sur les autres courriers de notification" in text
    text = parent.post("/compte/regrouper", identifiant=second.login,
                       mot_de_passe="MAUVAIS123")
    assert parent.status == 400 and WRONG in text
    assert f'value="{second.login}"' in parent.page  # the login typed stays, not the password
    assert "MAUVAIS123" not in parent.page
    text = parent.post("/compte/regrouper", identifiant=second.login,
                       mot_de_passe=second.provisional_password.reveal())
    assert parent.status == 200
    for line in CONFIRMATION:
        assert line in text
    assert "Florian" in text
    parent.get("/compte/regrouper/confirmation", follow=False)  # shown once only
    assert parent.location == "/compte/enfants"

    # Enfants: both children, under the principal account.
    text = parent.get("/compte/enfants")
    assert children_listed(text) == [("Dylan", "Claire Robert"), ("Florian", "Claire Robert")]
    assert "ENFANTS 2" in text

    # The other letter opens nothing any more: it says where its account went.
    other = Browser(app.test_client())
    text = other.sign_in(second.login, second.provisional_password.reveal())
    assert other.status == 400 and MERGED in text
    assert "connectez-vous avec votre compte « Principal »" in text
    assert "adressez-vous à l'établissement" in text
    assert "COMPTE DE" not in text

    # The establishment breaks the merge up and prints the new letter.
    staff = Browser(app.test_client())
    staff.get("/etablissement/", follow=True)
    assert "ESPACE ÉTABLISSEMENT" in staff.text
    staff.post("/etablissement/connexion", code=ACCESS_CODE)
    assert "CASSER UN REGROUPEMENT DE COMPTES" in staff.text
    text = staff.post("/etablissement/", identifiant=first.login)
    assert staff.status == 200
    assert "NOUVEAU COURRIER DE NOTIFICATION" in text
    assert "rattaché(s) : Florian" in text
    letter = re.search(r'<pre class="letter">(.*?)</pre>', staff.page, re.S)
    assert letter is not None
    printed = html.unescape(letter.group(1))
    assert "Collège des Trois Rivières (0869999B)" in printed
    assert "pour Florian Robert" in printed
    new_login = re.search(r"Identifiant\s: (\S+)", printed)
    new_password = re.search(r"Mot de passe \*\s: (\S+)", printed)
    assert new_login and new_password and new_login.group(1) != first.login

    # The parent's Enfants list has Dylan again; the new letter activates.
    assert children_listed(parent.get("/compte/enfants")) == [("Dylan", "Claire Robert")]
    newcomer = Browser(app.test_client())
    newcomer.get("/activation")
    text = newcomer.post("/activation", identifiant=new_login.group(1),
                         mot_de_passe_provisoire=new_password.group(1),
                         nouveau_mot_de_passe=OTHER_PASSWORD, confirmation=OTHER_PASSWORD)
    assert "ENFANTS 1" in text
    assert children_listed(newcomer.get("/compte/enfants")) == [("Florian", "Claire Robert")]


def test_signing_in_with_a_letters_password_leads_to_the_activation_form(app: Flask) -> None:
    """``activation_required``: the provisional password is proven, the form comes next."""
    first, _ = letters(app)
    parent = Browser(app.test_client())
    parent.get("/connexion")
    parent.post("/connexion", follow=False, identifiant=first.login,
                mot_de_passe=first.provisional_password.reveal())
    assert parent.location == f"/activation?identifiant={first.login}"
    text = parent.get(parent.location)
    assert "ACTIVER VOTRE COMPTE" in text
    assert '<p class="notice">' in parent.page  # the library's message, or the example's
    assert f'value="{first.login}"' in parent.page
    assert "COMPTE DE" not in parent.get("/compte")  # not signed in


# -- the way back ---------------------------------------------------------------------------


def mail_to(app: Flask, address: str) -> str:
    """The link of the last message sent to *address*, read in the example's mailbox."""
    mailbox = Browser(app.test_client())
    mailbox.get("/courriels")
    assert mailbox.status == 200
    found = re.search(r"À : " + re.escape(address) + r".*?(https?://\S+)", mailbox.text)
    assert found, f"no message to {address}: {mailbox.text[:500]}"
    return found.group(1)


def follow_link(browser: Browser, url: str) -> str:
    """Open a link of a message: the site's path, as the browser would."""
    path = urlsplit(url).path
    text = browser.get(path)
    return text


def test_a_parent_who_forgot_the_password_gets_back_in(app: Flask) -> None:
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    parent.post("/compte/adresse-mail", adresse_mail="claire@example.fr", mot_de_passe=PASSWORD)
    follow_link(parent, mail_to(app, "claire@example.fr"))
    parent.post("/courriel/confirmer")
    parent.post("/deconnexion")

    visitor = Browser(app.test_client())
    text = visitor.get("/connexion")
    assert "identifiant oublié ?" in text and "mot de passe oublié ?" in text
    visitor.get("/mot-de-passe-oublie")
    answer = visitor.post("/mot-de-passe-oublie", identifiant="CLAIRE@example.fr")
    visitor.get("/mot-de-passe-oublie")
    unknown = visitor.post("/mot-de-passe-oublie", identifiant="personne@example.fr")
    assert answer == unknown and "Si ce compte existe" in answer

    link = mail_to(app, "claire@example.fr")
    assert link.startswith("http://127.0.0.1:5000/mot-de-passe/")
    response = visitor.client.get(urlsplit(link).path)
    assert response.status_code == 302 and response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Location"] == "/mot-de-passe/nouveau"  # the token left the URL
    visitor.get("/mot-de-passe/nouveau")
    text = visitor.post("/mot-de-passe/nouveau", nouveau_mot_de_passe=OTHER_PASSWORD,
                        confirmation=OTHER_PASSWORD)
    assert "connectez-vous avec le nouveau" in text
    assert "SE DÉCONNECTER" not in text  # not signed in by the reset
    text = visitor.sign_in(first.login, OTHER_PASSWORD)
    assert "COMPTE DE Claire Robert" in text
    again = Browser(app.test_client())
    text = follow_link(again, link)  # the link works once
    text = again.post("/mot-de-passe/nouveau", nouveau_mot_de_passe=PASSWORD,
                      confirmation=PASSWORD)
    assert "Ce lien n'est plus valable" in text


def test_a_parent_who_forgot_the_login_gets_it_by_mail(app: Flask) -> None:
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    parent.post("/compte/adresse-mail", adresse_mail="claire@example.fr", mot_de_passe=PASSWORD)
    follow_link(parent, mail_to(app, "claire@example.fr"))
    parent.post("/courriel/confirmer")
    visitor = Browser(app.test_client())
    visitor.get("/identifiant-oublie")
    text = visitor.post("/identifiant-oublie", adresse_mail="claire@example.fr")
    assert "Si cette adresse est celle d'un compte" in text
    mailbox = Browser(app.test_client())
    text = mailbox.get("/courriels")
    assert "Votre identifiant" in text and f"- {first.login}" in text


def test_the_establishment_reissues_a_lost_letter(app: Flask) -> None:
    first, _ = letters(app)
    staff = Browser(app.test_client())
    staff.get("/etablissement/connexion")
    staff.post("/etablissement/connexion", code=ACCESS_CODE)
    staff.get("/etablissement/courrier")
    text = staff.post("/etablissement/courrier", identifiant=first.login)
    assert staff.status == 200 and "l'ancien mot de passe ne fonctionne plus" in text
    (printed,) = [html.unescape(p) for p in
                  re.findall(r'<pre class="letter">(.*?)</pre>', staff.page, re.S)]
    assert f"Identifiant\u00a0: {first.login}" in printed
    new_password = re.search(r"Mot de passe \*\s: (\S+)", printed)
    assert new_password and new_password.group(1) != first.provisional_password.reveal()
    parent = Browser(app.test_client())
    text = activate(parent, first)
    assert parent.status == 400  # the old letter's password is dead
    text = staff.post("/etablissement/courrier", identifiant="personne.inconnue")
    assert staff.status == 400 and "Aucun compte n'a cet identifiant." in text


def test_the_mailbox_page_is_only_for_the_example(make_app: Callable[..., Flask]) -> None:
    app = make_app(ENT_MAILBOX="0")
    assert app.test_client().get("/courriels").status_code == 404


def test_a_split_prints_one_letter_per_origin_letter(app: Flask) -> None:
    """Two letters merged into the principal: two new accounts, two letters to print."""
    first, second = letters(app)
    with app.app_context():
        third = get_service().issue_account(app.config["ESTABLISHMENT"], "Marc Robert",
                                            [Child("M0003", "Maël", "Robert",
                                                   app.config["ESTABLISHMENT"].uai)])
    parent = Browser(app.test_client())
    activate(parent, first)
    parent.get("/compte/regrouper")
    for letter in (second, third):
        parent.post("/compte/regrouper", identifiant=letter.login,
                    mot_de_passe=letter.provisional_password.reveal())
        parent.get("/compte/regrouper")
    staff = Browser(app.test_client())
    staff.get("/etablissement/connexion")
    staff.post("/etablissement/connexion", code=ACCESS_CODE)
    text = staff.post("/etablissement/", identifiant=first.login)
    assert staff.status == 200
    assert "2 nouveaux comptes ont été créés" in text
    printed = [html.unescape(p) for p in
               re.findall(r'<pre class="letter">(.*?)</pre>', staff.page, re.S)]
    assert len(printed) == 2
    assert "pour Florian Robert" in printed[0] and "Claire Robert" in printed[0]
    assert "pour Maël Robert" in printed[1] and "Marc Robert" in printed[1]


def test_splitting_an_account_without_merged_children_says_there_is_nothing_to_break(
        app: Flask) -> None:
    first, _ = letters(app)
    activate(Browser(app.test_client()), first)
    staff = Browser(app.test_client())
    staff.get("/etablissement/connexion")
    staff.post("/etablissement/connexion", code=ACCESS_CODE)
    text = staff.post("/etablissement/", identifiant=first.login)
    assert staff.status == 400 and "il n'y a rien à casser" in text
    text = staff.post("/etablissement/", identifiant="personne.inconnue")
    assert staff.status == 400 and "Aucun compte n'a cet identifiant." in text


def test_the_establishment_page_needs_the_access_code(app: Flask) -> None:
    staff = Browser(app.test_client())
    staff.get("/etablissement/", follow=False)
    assert staff.location == "/etablissement/connexion"
    staff.get("/etablissement/connexion")
    text = staff.post("/etablissement/connexion", code="devine")
    assert staff.status == 400 and "Code d'accès incorrect." in text


# -- the merge form's defences --------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(app: Flask) -> None:
    first, second = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)

    parent.post("/compte/regrouper", csrf=False, identifiant=second.login,
                mot_de_passe=second.provisional_password.reveal())
    assert parent.status == 400 and "Formulaire expiré ou invalide" in parent.text
    parent.get("/compte/regrouper")
    parent.post("/compte/regrouper", csrf=False, csrf_token="pas-le-bon",
                identifiant=second.login, mot_de_passe=second.provisional_password.reveal())
    assert parent.status == 400

    assert children_listed(parent.get("/compte/enfants")) == [("Dylan", "Claire Robert")]
    stranger = Browser(app.test_client())
    stranger.post("/connexion", csrf=False, identifiant=first.login, mot_de_passe=PASSWORD)
    assert stranger.status == 400


def test_repeated_failures_show_the_throttling_message(make_app: Callable[..., Flask]) -> None:
    """After the principal's hourly limit, even the right password waits."""
    app = make_app(ACCOUNT_MERGE_THROTTLE_PRINCIPAL_PER_HOUR="3")
    first, second = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    parent.get("/compte/regrouper")
    for _ in range(3):
        text = parent.post("/compte/regrouper", identifiant=second.login,
                           mot_de_passe="MAUVAIS123")
        assert WRONG in text
    text = parent.post("/compte/regrouper", identifiant=second.login,
                       mot_de_passe=second.provisional_password.reveal())
    assert parent.status == 429
    waited = re.search(r"Trop de tentatives ; réessayez dans ([^.]+)\. Vérifiez l'identifiant",
                       text)
    assert waited is not None and parent.retry_after is not None
    assert waited.group(1) == " ".join(describe_wait(int(parent.retry_after)).split())
    assert waited.group(1).endswith("1 heure")  # the rest of the hour
    assert children_listed(parent.get("/compte/enfants")) == [("Dylan", "Claire Robert")]


def test_the_merge_form_asks_for_the_password_again_after_a_while(app: Flask) -> None:
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    with parent.client.session_transaction() as session:
        session["auth_at"] -= app.config["RECENT_LOGIN_MAX_AGE"] + 1
    parent.get("/compte/regrouper", follow=False)
    assert parent.location == "/compte/confirmer-identite?next=/compte/regrouper"
    text = parent.get(parent.location)
    assert "CONFIRMER VOTRE IDENTITÉ" in text
    text = parent.post("/compte/confirmer-identite", mot_de_passe="MAUVAIS123",
                       next="/compte/regrouper")
    assert parent.status == 400 and WRONG in text
    text = parent.post("/compte/confirmer-identite", mot_de_passe=PASSWORD,
                       next="/compte/regrouper")
    assert "REGROUPER DES COMPTES" in text and "Identifiant" in text


def test_a_session_of_the_absorbed_account_ends_with_the_merge(app: Flask) -> None:
    """« Seul le compte avec lequel vous êtes connecté reste disponible. »"""
    first, second = letters(app)
    parent, elsewhere = Browser(app.test_client()), Browser(app.test_client())
    activate(parent, first)
    activate(elsewhere, second, OTHER_PASSWORD)
    parent.get("/compte/regrouper")
    parent.post("/compte/regrouper", identifiant=second.login, mot_de_passe=OTHER_PASSWORD)
    assert CONFIRMATION[0] in parent.text
    text = elsewhere.get("/compte/enfants")
    assert "Ce compte a été regroupé avec un autre" in text
    assert "Bienvenu(e) sur Scolarité Services" in text


def test_signing_in_never_redirects_to_another_site(app: Flask) -> None:
    first, _ = letters(app)
    activate(Browser(app.test_client()), first)
    visitor = Browser(app.test_client())
    visitor.get("/connexion?next=//evil.example/")
    visitor.post("/connexion", follow=False, identifiant=first.login, mot_de_passe=PASSWORD,
                 next="//evil.example/")
    assert visitor.location == "/compte"


def test_the_seed_command_prints_the_letters_and_the_access_code(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "Courrier de notification pour Dylan" in result.output
    assert "Courrier de notification pour Florian" in result.output
    assert len(re.findall(r"Identifiant\s: \S+", result.output)) == 2
    assert ACCESS_CODE in result.output


def test_the_store_and_secrets_come_from_the_environment(
        tmp_path: Path, clean_environment: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "from-env.sqlite3"
    monkeypatch.setenv("ACCOUNT_MERGE_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("ACCOUNT_MERGE_ARGON2_PROFILE", "CHEAPEST")
    monkeypatch.setenv("ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK", "false")
    monkeypatch.setenv("ESTABLISHMENT_ACCESS_CODE", "venu-de-l-environnement")
    app = create_app({"TESTING": True}, instance_path=tmp_path / "instance")
    try:
        assert path.exists()  # the tables were created there
        assert app.config["ESTABLISHMENT_ACCESS_CODE"] == "venu-de-l-environnement"
        secret = (tmp_path / "instance" / "secret_key").read_text()
        assert app.config["SECRET_KEY"] == secret and len(secret) == 64
    finally:
        close_app(app)
