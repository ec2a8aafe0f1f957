"""The example Flask application, driven page by page with Flask's test client.

Every HTML page read is also checked for French typography (a no-break
space before « : », « ; », « ? », « ! » and inside « »): see
:meth:`Browser._read`.
"""

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
from account_merge.exceptions import StorageError
from account_merge.messages import describe_wait
from account_merge.testing import FakeClock
from examples.flask_app import create_app
from examples.flask_app.app import close_app
from examples.flask_app.seed import add_staff, seed_letters
from examples.flask_app.store import get_store_of

PASSWORD = "Trois-Rivieres-2024!"
OTHER_PASSWORD = "Deux-Rivieres-2025?"
STAFF, STAFF_PASSWORD = "direction", "Principale-Adjointe-2024!"
CONFIRMATION = [
    "CONFIRMATION DE REGROUPEMENT DE COMPTES",
    "L'opération de regroupement des comptes a été effectuée avec succès.",
    "Seul le compte avec lequel vous êtes connecté reste disponible.",
    "Vous pourrez visualiser vos nouvelles informations d'ici quelques instants.",
]
WRONG = "Identifiant ou mot de passe incorrect."
MERGED = "regroupé avec un autre compte"
#: A breaking space where French typography wants a no-break one, in a page's text.
BROKEN_TYPOGRAPHY = re.compile(r"[ \t\r\n][:;?!»]|«[ \t\r\n]")
_prefixes = itertools.count()


class Browser:
    """A parent (or a member of staff) at a browser: pages read as text, forms posted."""

    def __init__(self, client: FlaskClient, *, address: str | None = None) -> None:
        self.client = client
        if address is not None:  # the address the request comes from (REMOTE_ADDR)
            client.environ_base["REMOTE_ADDR"] = address
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
        if response.mimetype == "text/html":
            visible = html.unescape(re.sub(r"<[^>]+>", "", self.page))
            broken = [visible[max(0, m.start() - 30):m.end()]
                      for m in BROKEN_TYPOGRAPHY.finditer(visible)]
            assert broken == [], f"French typography on {response.request.path}: {broken}"
        return self.text

    @property
    def text(self) -> str:
        """The page as a person reads it: tags removed, entities decoded, spaces folded."""
        without_tags = re.sub(r"<[^>]+>", " ", self.page)
        return re.sub(r"\s+", " ", html.unescape(without_tags)).strip()

    def sign_in(self, login: str, password: str) -> str:
        self.get("/connexion")
        return self.post("/connexion", identifiant=login, mot_de_passe=password)

    def staff_sign_in(self, login: str = STAFF, password: str = STAFF_PASSWORD) -> str:
        self.get("/etablissement/connexion")
        return self.post("/etablissement/connexion", identifiant=login, mot_de_passe=password)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads its configuration from the environment: start from none."""
    for key in [*CONFIG_KEYS, "FLASK_SECRET_KEY", "FLASK_DEBUG"]:
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

    def factory(options: dict[str, Any] | None = None, **config: Any) -> Flask:
        options = options or {}
        app = create_app(
            {"TESTING": True, "SECRET_KEY": "tests", "ENT_TABLE_PREFIX": f"ent{next(_prefixes)}_",
             "ACCOUNT_MERGE_ARGON2_PROFILE": "CHEAPEST",
             "ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK": False, **database, **config},
            instance_path=tmp_path / f"instance{len(made)}", **options,
        )
        with app.app_context():
            add_staff(STAFF, "Direction du collège", STAFF_PASSWORD)
        made.append(app)
        return app

    yield factory
    for app in made:
        # One PostgreSQL database serves the whole run: leave no table behind.
        storage = get_state(app).storage
        engine = sqlalchemy.create_engine(app.config["ACCOUNT_MERGE_DATABASE_URL"])
        storage.metadata.drop_all(engine)  # type: ignore[attr-defined]
        engine.dispose()
        get_store_of(app).drop_tables()
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

    # Activation of Dylan's letter, and Mon compte.
    text = activate(parent, first)
    assert parent.status == 200
    assert "Votre compte est activé." in text
    assert "Principal" not in text  # said only of the account a merge keeps
    assert "COMPTE DE Claire Robert" in text and "PROFIL" in text and "ENFANTS 1" in text
    assert "Modification de l'adresse mail" in text
    assert "Modification du mot de passe" in text
    assert "REGROUPER DES COMPTES" in text

    # Signing out and in again: the home page names the child viewed.
    parent.post("/deconnexion")
    assert "Vous êtes déconnecté." in parent.text
    text = parent.sign_in(first.login, PASSWORD)
    assert "SCOLARITÉ SERVICES DYLAN" in text and "ACCUEIL" in text
    assert "Aucun service en ligne pour cet élève." in text
    assert "COMPTE DE Claire Robert" in parent.get("/compte")

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
    assert parent.status == 401 and WRONG in text
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
    # The header switches between the children.
    text = parent.get("/?eleve=F0002")
    assert "SCOLARITÉ SERVICES FLORIAN" in text and "Enfant affiché : DYLAN FLORIAN" in text

    # The other letter opens nothing any more: it says where its account went.
    other = Browser(app.test_client())
    text = other.sign_in(second.login, second.provisional_password.reveal())
    assert other.status == 403 and MERGED in text
    assert "connectez-vous avec votre compte « Principal »" in text
    assert "adressez-vous à l'établissement" in text
    assert "COMPTE DE" not in text

    # The establishment breaks the merge up, once it saw what will happen, and prints the
    # new letter.
    staff = Browser(app.test_client())
    staff.get("/etablissement/", follow=True)
    assert "ESPACE ÉTABLISSEMENT" in staff.text
    staff.staff_sign_in()
    assert "CASSER UN REGROUPEMENT DE COMPTES" in staff.text
    text = staff.post("/etablissement/", identifiant=first.login)
    assert staff.status == 200 and "CONFIRMER LA SÉPARATION DES COMPTES" in text
    assert f"Compte {first.login} (Claire Robert)" in text
    assert "Enfants qui quitteront ce compte Florian Robert" in text
    assert "Enfants qui restent sur ce compte Dylan Robert" in text
    assert children_listed(parent.get("/compte/enfants"))[1] == ("Florian", "Claire Robert")
    text = staff.post("/etablissement/casser", compte=re.search(
        r'name="compte" value="([^"]+)"', staff.page).group(1))  # type: ignore[union-attr]
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
    assert "SCOLARITÉ SERVICES DYLAN" in text
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
    staff.staff_sign_in()
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
    assert parent.status == 401  # the old letter's password is dead
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
    staff.staff_sign_in()
    text = staff.post("/etablissement/", identifiant=first.login)
    assert "2 nouveaux comptes seront créés" in text
    assert "Florian Robert Venu(e) par le courrier de Claire Robert" in text
    assert "Maël Robert Venu(e) par le courrier de Marc Robert" in text
    account_id = re.search(r'name="compte" value="([^"]+)"', staff.page)
    assert account_id is not None
    text = staff.post("/etablissement/casser", compte=account_id.group(1))
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
    staff.staff_sign_in()
    text = staff.post("/etablissement/", identifiant=first.login)
    assert staff.status == 400 and "il n'y a rien à casser" in text
    text = staff.post("/etablissement/", identifiant="personne.inconnue")
    assert staff.status == 400 and "Aucun compte n'a cet identifiant." in text


def test_the_establishment_pages_need_a_staff_members_sign_in(app: Flask) -> None:
    staff = Browser(app.test_client())
    for path in ("/etablissement/", "/etablissement/courrier"):
        staff.get(path, follow=False)
        assert staff.location == "/etablissement/connexion"
    text = staff.staff_sign_in(password="devine-devine")
    assert staff.status == 401 and WRONG in text
    text = staff.staff_sign_in(login="inconnu", password=STAFF_PASSWORD)
    assert staff.status == 401 and WRONG in text
    text = staff.staff_sign_in()
    assert "CASSER UN REGROUPEMENT DE COMPTES" in text and STAFF in text
    staff.post("/etablissement/deconnexion")
    staff.get("/etablissement/", follow=False)
    assert staff.location == "/etablissement/connexion"


def test_a_parents_session_opens_no_establishment_page(app: Flask) -> None:
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    parent.get("/etablissement/", follow=False)
    assert parent.location == "/etablissement/connexion"


def test_staff_guesses_are_slowed_down_and_audited_as_a_parents_are(
        make_app: Callable[..., Flask]) -> None:
    """Before: a shared 40-bit code and no throttle, 2,000 wrong codes answered 400 each.

    Now each staff member's attempts are counted per login and client,
    before the password is checked: after 5 failures the next one waits
    (the library's ThrottlePolicy, on the service's clock, frozen here).
    """
    app = make_app({"clock": FakeClock()})
    staff = Browser(app.test_client())
    statuses = []
    for n in range(2000):
        staff.staff_sign_in(password=f"devine-{n:06d}")
        statuses.append(staff.status)
        if staff.status == 429:
            break
    assert statuses == [401] * 5 + [429]
    assert staff.retry_after == "1"
    assert "Trop de tentatives ; réessayez dans quelques secondes." in staff.text
    text = staff.staff_sign_in()  # even the right password waits its turn
    assert staff.status == 429 and "CASSER" not in text
    elsewhere = Browser(app.test_client(), address="203.0.113.9")  # another client is not slowed
    assert "CASSER UN REGROUPEMENT DE COMPTES" in elsewhere.staff_sign_in()
    trail = [(r.action, r.outcome, r.login, r.actor) for r in get_store_of(app).audit_trail()]
    assert trail[0] == ("connexion", "success", STAFF, STAFF)
    assert trail[1:3] == [("connexion", "too_many_attempts", STAFF, None)] * 2
    assert trail[3:8] == [("connexion", "invalid_credentials", STAFF, None)] * 5
    assert not any("devine" in str(value) for row in trail for value in row)


def test_staff_acts_are_audited_with_who_did_them(app: Flask) -> None:
    first, _ = letters(app)
    staff = Browser(app.test_client())
    staff.staff_sign_in()
    staff.get("/etablissement/courrier")
    staff.post("/etablissement/courrier", identifiant=first.login)
    record = get_store_of(app).audit_trail()[0]
    assert (record.action, record.outcome, record.actor, record.login) == (
        "reediter", "success", STAFF, first.login)


# -- the merge form's defences --------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(app: Flask) -> None:
    first, second = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)

    parent.post("/compte/regrouper", csrf=False, identifiant=second.login,
                mot_de_passe=second.provisional_password.reveal())
    assert parent.status == 400 and "Ce formulaire a expiré" in parent.text
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
    assert parent.status == 401 and WRONG in text
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
    assert visitor.location == "/"


def test_the_seed_command_prints_the_letters_and_a_staff_members_password(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "Courrier de notification pour Dylan" in result.output
    assert "Courrier de notification pour Florian" in result.output
    assert len(re.findall(r"Identifiant\s: \S+", result.output)) == 2
    password = re.search(r"l'identifiant direction et le mot de passe (\S+)", result.output)
    assert password is not None
    staff = Browser(app.test_client())
    assert "CASSER UN REGROUPEMENT" in staff.staff_sign_in("direction", password.group(1))


def test_the_staff_command_adds_a_member_held_to_the_password_policy(app: Flask) -> None:
    runner = app.test_cli_runner()
    weak = runner.invoke(args=["personnel", "add", "secretariat", "--nom", "Secrétariat"],
                         input="azerty123\nazerty123\n")
    assert weak.exit_code == 1 and "(password_policy)" in weak.output
    added = runner.invoke(args=["personnel", "add", "secretariat", "--nom", "Secrétariat"],
                          input="Trois-Rivieres-Bureau-7!\nTrois-Rivieres-Bureau-7!\n")
    assert added.exit_code == 0, added.output
    staff = Browser(app.test_client())
    assert "CASSER UN REGROUPEMENT" in staff.staff_sign_in("secretariat",
                                                           "Trois-Rivieres-Bureau-7!")


def test_the_store_and_secrets_come_from_the_environment(
        tmp_path: Path, clean_environment: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "from-env.sqlite3"
    monkeypatch.setenv("ACCOUNT_MERGE_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("ACCOUNT_MERGE_ARGON2_PROFILE", "CHEAPEST")
    monkeypatch.setenv("ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK", "false")
    monkeypatch.setenv("FLASK_SESSION_COOKIE_SECURE", "false")
    app = create_app({"TESTING": True}, instance_path=tmp_path / "instance")
    try:
        assert path.exists()  # the tables were created there
        assert app.config["SESSION_COOKIE_SECURE"] is False
        secret = (tmp_path / "instance" / "secret_key").read_text()
        assert app.config["SECRET_KEY"] == secret and len(secret) == 64
    finally:
        close_app(app)


# -- sessions -------------------------------------------------------------------------------


def test_the_session_cookie_is_secure_outside_debug(make_app: Callable[..., Flask],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: no Secure flag, so the cookie also travelled over plain HTTP."""
    cookie = make_app().test_client().get("/connexion").headers["Set-Cookie"]
    assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    monkeypatch.setenv("FLASK_DEBUG", "1")  # flask run --debug
    debugging = make_app().test_client().get("/connexion").headers["Set-Cookie"]
    assert "Secure" not in debugging


def _copy_of(browser: Browser, app: Flask) -> Browser:
    """Another browser holding a copy of *browser*'s session cookie."""
    copy = Browser(app.test_client())
    cookie = browser.client.get_cookie("session")
    assert cookie is not None
    copy.client.set_cookie("session", cookie.value)
    return copy


def test_signing_out_ends_the_session_in_every_copy_of_the_cookie(app: Flask) -> None:
    """Before: signing out cleared one browser's cookie; a copy of it stayed signed in."""
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    copy = _copy_of(parent, app)
    assert "COMPTE DE Claire Robert" in copy.get("/compte")
    parent.post("/deconnexion")
    copy.get("/compte", follow=False)
    assert copy.location == "/connexion?next=/compte"


def test_a_new_password_ends_the_accounts_other_sessions(app: Flask) -> None:
    """Before: a session opened elsewhere (a stolen cookie, too) outlived a new password."""
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    elsewhere = Browser(app.test_client())
    elsewhere.sign_in(first.login, PASSWORD)
    stolen = _copy_of(parent, app)
    parent.get("/compte")
    text = parent.post("/compte/mot-de-passe", mot_de_passe_actuel=PASSWORD,
                       nouveau_mot_de_passe=OTHER_PASSWORD, confirmation=OTHER_PASSWORD)
    assert "Mot de passe modifié. Vos autres sessions ouvertes (1) sont fermées." in text
    assert "COMPTE DE Claire Robert" in parent.get("/compte")  # still signed in here
    for other in (elsewhere, stolen):
        other.get("/compte", follow=False)
        assert other.location == "/connexion?next=/compte"


def test_a_password_reset_ends_every_session_of_the_account(app: Flask) -> None:
    first, _ = letters(app)
    parent = Browser(app.test_client())
    activate(parent, first)
    parent.post("/compte/adresse-mail", adresse_mail="claire@example.fr", mot_de_passe=PASSWORD)
    follow_link(parent, mail_to(app, "claire@example.fr"))
    parent.post("/courriel/confirmer")
    visitor = Browser(app.test_client())
    visitor.get("/mot-de-passe-oublie")
    visitor.post("/mot-de-passe-oublie", identifiant=first.login)
    follow_link(visitor, mail_to(app, "claire@example.fr"))
    visitor.post("/mot-de-passe/nouveau", nouveau_mot_de_passe=OTHER_PASSWORD,
                 confirmation=OTHER_PASSWORD)
    parent.get("/compte", follow=False)
    assert parent.location == "/connexion?next=/compte"


# -- error pages, and errors tied to their fields ----------------------------------------------


def test_an_expired_form_is_a_french_page_with_a_way_back_to_the_form(app: Flask) -> None:
    """Before: Werkzeug's English « 400 Bad Request », and no way back."""
    visitor = Browser(app.test_client())
    visitor.get("/connexion")
    text = visitor.post("/connexion", csrf=False, identifiant="x", mot_de_passe="y")
    assert visitor.status == 400 and '<html lang="fr">' in visitor.page
    assert "FORMULAIRE EXPIRÉ" in text and "Bad Request" not in text
    assert '<a href="/connexion">Revenir au formulaire</a>' in visitor.page
    assert 'role="alert"' in visitor.page


@pytest.mark.parametrize(("path", "status", "title"), [
    ("/nulle-part", 404, "PAGE INTROUVABLE"),
    ("/compte/regrouper/confirmation?x=1", 405, "ACTION IMPOSSIBLE"),
])
def test_error_pages_are_french_with_a_way_back(app: Flask, path: str, status: int,
                                                title: str) -> None:
    visitor = Browser(app.test_client())
    if status == 405:
        visitor.get("/connexion")
        visitor.post(path.split("?", maxsplit=1)[0])
    else:
        visitor.get(path)
    assert visitor.status == status and '<html lang="fr">' in visitor.page
    assert title in visitor.text and "Retour à l'accueil" in visitor.text


def test_a_failure_of_the_store_is_a_french_503_and_a_bug_a_french_500(
        make_app: Callable[..., Flask]) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.get("/panne")
    def panne() -> str:
        raise StorageError("postgresql://ent@db.example/ent", "connection lost")

    @app.get("/bogue")
    def bogue() -> str:
        raise RuntimeError("a bug")

    visitor = Browser(app.test_client())
    text = visitor.get("/panne")
    assert visitor.status == 503 and "SERVICE INDISPONIBLE" in text
    assert "db.example" not in visitor.page
    text = visitor.get("/bogue")
    assert visitor.status == 500 and "ERREUR DU SERVICE" in text and "a bug" not in text


def test_a_throttled_form_says_when_to_try_again_with_retry_after(
        make_app: Callable[..., Flask]) -> None:
    app = make_app({"clock": FakeClock()})
    first, _ = letters(app)
    activate(Browser(app.test_client()), first)
    visitor = Browser(app.test_client())
    for _ in range(5):
        visitor.sign_in(first.login, "MAUVAIS-MOT-DE-PASSE")
        assert visitor.status == 401
    text = visitor.sign_in(first.login, "MAUVAIS-MOT-DE-PASSE")
    assert visitor.status == 429 and visitor.retry_after == "1"
    assert "Trop de tentatives ; réessayez dans quelques secondes." in text
    assert 'aria-invalid="true"' in visitor.page


def _input(page: str, name: str) -> str:
    found = re.search(r'<input [^>]*name="' + name + r'"[^>]*>', page)
    assert found, name
    return found.group(0)


def test_errors_are_tied_to_their_fields_and_the_focus_goes_to_the_first(app: Flask) -> None:
    """Before: the error was a paragraph of its own; fields and focus knew nothing of it."""
    first, _ = letters(app)
    visitor = Browser(app.test_client())
    visitor.sign_in(first.login, "MAUVAIS-MOT-DE-PASSE")
    alert = re.search(r'<p class="error" id="erreur" role="alert">', visitor.page)
    assert alert is not None
    login, password = _input(visitor.page, "identifiant"), _input(visitor.page, "mot_de_passe")
    for field in (login, password):
        assert 'aria-invalid="true"' in field and 'aria-describedby="erreur"' in field
    assert "autofocus" in login and "autofocus" not in password

    parent = Browser(app.test_client())
    activate(parent, first)
    parent.get("/compte")
    parent.post("/compte/mot-de-passe", mot_de_passe_actuel=PASSWORD,
                nouveau_mot_de_passe=OTHER_PASSWORD, confirmation="autre chose")
    confirmation = _input(parent.page, "confirmation")
    assert 'aria-invalid="true"' in confirmation and "autofocus" in confirmation
    assert 'aria-describedby="erreur-mot-de-passe"' in confirmation
    assert 'aria-invalid' not in _input(parent.page, "nouveau_mot_de_passe")
    assert 'aria-invalid' not in _input(parent.page, "adresse_mail")
    parent.post("/compte/mot-de-passe", mot_de_passe_actuel=PASSWORD,
                nouveau_mot_de_passe="court", confirmation="court")
    new = _input(parent.page, "nouveau_mot_de_passe")
    assert 'aria-invalid="true"' in new and "autofocus" in new
    assert "Le mot de passe est trop court" in parent.text


def test_every_field_has_its_label(app: Flask) -> None:
    parent = Browser(app.test_client())
    pages = ["/connexion", "/activation", "/mot-de-passe-oublie", "/identifiant-oublie"]
    for path in pages:
        parent.get(path)
        for field in re.findall(r'<input [^>]*type="(?!hidden)[^>]*>', parent.page):
            id_ = re.search(r'id="([^"]+)"', field)
            assert id_ and f'<label for="{id_.group(1)}">' in parent.page, (path, field)
