"""The Flask example in a real browser: headless Chromium, over HTTP, to the app on 127.0.0.1.

The seed's story as a parent lives it (a letter, its activation, ACCUEIL,
Mon compte, Enfants, Regrouper des comptes with the other letter, the
confirmation, both children), a wrong password and the throttle's
message, the school's split and its new letter, and the way back (a reset
link sent through an SMTP server started here).  Every page is checked as
it is reached (:meth:`Visit.check`):

- axe-core finds no violation of impact serious or critical (RGAA, WCAG
  2.1 AA);
- no horizontal scroll at a phone's 390x844 (WCAG 1.4.10), nor at 200 %
  zoom (the 1280x900 window seen as 640x450);
- the page's language is French, it has one level-one heading, and every
  field has its label.

``ACCOUNT_MERGE_SCREENSHOTS=docs/_static/screens`` saves the screenshots
of the seed's screens as ``flask/<name>.png`` there, where the docs show
them (``docs/index.md``).
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from flask import Flask

from account_merge.contrib.flask import CONFIG_KEYS, get_service
from account_merge.testing import FakeClock
from browser_kit import DESKTOP, PHONE, describe_violations, horizontal_overflow, resize
from examples.flask_app import create_app
from examples.flask_app.app import close_app
from examples.flask_app.seed import add_staff, seed_letters

PASSWORD = "Trois-Rivieres-2024!"
NEW_PASSWORD = "Tournesol-Bleu-Vif-2028"
STAFF, STAFF_PASSWORD = "direction", "Principale-Adjointe-2024!"
ADDRESS = "claire.robert@example.fr"
#: 200 % zoom of the desktop window: the page laid out in half the CSS pixels.
ZOOMED = (DESKTOP[0] // 2, DESKTOP[1] // 2)


class Inbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def links(self, to: str) -> list[str]:
        """The links of the messages sent to *to*, oldest first."""
        found = []
        for envelope in self.envelopes:
            message = email.message_from_bytes(envelope.original_content or b"",
                                               policy=email.policy.default)
            if message["To"] == to:
                body = message.get_body(("plain",))
                assert body is not None
                found += re.findall(r"https?://\S+", body.get_content())
        return found


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


class Visit:
    """The example served on 127.0.0.1, a browser on it, and the checks of every page."""

    def __init__(self, app: Flask, base: str, driver: Any,
                 screenshot: Callable[[Any, str], Path], axe: Callable[[Any], Any]) -> None:
        self.app = app
        self.base = base
        self.driver = driver
        self._screenshot = screenshot
        self._axe = axe
        #: The serious and critical violations of each page checked, by name.
        self.violations: dict[str, list[str]] = {}

    # -- moving around ---------------------------------------------------------------
    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def link(self, text: str) -> Any:
        from selenium.webdriver.common.by import By

        assert '"' not in text
        return self.driver.find_element(By.XPATH, f'//a[normalize-space()="{text}"]')

    def then(self, act: Callable[[], None]) -> None:
        """Do *act* (a click, a key) and wait for the next page to load."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        page = self.find("html")
        act()
        WebDriverWait(self.driver, 20).until(expected_conditions.staleness_of(page))

    def fill(self, **fields: str) -> None:
        """Type into the fields named so (their ``name``), replacing what they hold."""
        for name, value in fields.items():
            element = self.find(f'input[name="{name}"]')
            element.clear()
            element.send_keys(value)

    def submit(self, **fields: str) -> None:
        """Fill the fields, and press the button of the form holding the first of them."""
        from selenium.webdriver.common.by import By

        self.fill(**fields)
        first = self.find(f'input[name="{next(iter(fields))}"]')
        button = first.find_element(By.XPATH, "./ancestor::form//button[@type='submit']")
        self.then(button.click)

    @property
    def h1(self) -> str:
        return str(self.find("h1").text)

    @property
    def text(self) -> str:
        """The page's visible text, with French no-break spaces read as spaces."""
        return " ".join(str(self.find("body").text).replace("\u00a0", " ").split())

    @property
    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    # -- what every page must be ----------------------------------------------------------
    def check(self, name: str, *, shot: bool = False) -> None:
        """axe, reflow at 390 px and at 200 %, language, heading, labels; a screenshot if asked."""
        driver = self.driver
        found = self._axe(driver)
        self.violations[name] = describe_violations(found).splitlines()
        print(f"axe-core, {name}: {len(found)} violation(s) serious or critical")
        assert found == [], f"{name}: {describe_violations(found)}"
        assert self.find("html").get_attribute("lang") == "fr", name
        assert len(self.finds("h1")) == 1, name
        for field in self.finds("input:not([type=hidden])"):
            labels = driver.execute_script("return arguments[0].labels.length", field)
            assert labels == 1, (name, field.get_attribute("name"))
        if shot:
            self._screenshot(driver, f"flask/{name}")
        for size in (PHONE, ZOOMED):
            resize(driver, size)
            overflow = horizontal_overflow(driver)
            assert overflow <= 0, f"{name}: {overflow} px wider than {size[0]} px"
        resize(driver, DESKTOP)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [*CONFIG_KEYS, "FLASK_SECRET_KEY", "FLASK_DEBUG"]:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def visit(chromium: Any, axe: Any, serve_wsgi: Callable[[Any], str],
          screenshot: Callable[[Any, str], Path], tmp_path: Path,
          clean_environment: None) -> Iterator[Visit]:
    """The example on a SQLite file, its clock frozen (waits do not depend on the machine)."""
    app = create_app({"SECRET_KEY": "browser tests", "ACCOUNT_MERGE_ARGON2_PROFILE": "CHEAPEST",
                      "ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK": False},
                     instance_path=tmp_path / "instance", clock=FakeClock())
    assert app.config["SESSION_COOKIE_SECURE"] is True  # as served outside debug
    with app.app_context():
        add_staff(STAFF, "Direction du collège", STAFF_PASSWORD)
    try:
        yield Visit(app, serve_wsgi(app), chromium, screenshot, axe)
    finally:
        close_app(app)


def letters(visit: Visit) -> tuple[Any, Any]:
    with visit.app.app_context():
        return seed_letters(get_service(), visit.app.config["ESTABLISHMENT"])


def _active(visit: Visit) -> Any:
    return visit.driver.switch_to.active_element


# -- the seed's story ---------------------------------------------------------------------


def test_the_seeds_story_in_a_browser(visit: Visit) -> None:
    from selenium.webdriver.common.keys import Keys

    first, second = letters(visit)

    # « Saisir les informations du compte que vous souhaitez garder » : Dylan's letter.
    visit.open("/")
    assert visit.path == "/connexion" and visit.h1 == "CONNEXION"
    assert "identifiant oublié ?" in visit.text and "mot de passe oublié ?" in visit.text
    visit.check("01-connexion", shot=True)
    visit.submit(identifiant=first.login, mot_de_passe=first.provisional_password.reveal())

    # The letter's provisional password leads to the activation form.
    assert visit.h1 == "ACTIVER VOTRE COMPTE"
    assert visit.find('input[name="identifiant"]').get_attribute("value") == first.login
    visit.check("02-activation", shot=True)
    visit.submit(mot_de_passe_provisoire=first.provisional_password.reveal(),
                 nouveau_mot_de_passe=PASSWORD, confirmation=PASSWORD)
    assert visit.h1 == "PROFIL" and "Votre compte est activé." in visit.text

    # ACCUEIL: the header names the child viewed.
    visit.then(lambda: visit.link("ACCUEIL").click())
    assert "SCOLARITÉ SERVICES DYLAN" in visit.text
    assert "Aucun service en ligne pour cet élève." in visit.text
    visit.check("03-accueil", shot=True)

    # Mon compte: the address, the password, the button to merge.
    visit.then(lambda: visit.link("MON COMPTE").click())
    assert "COMPTE DE Claire Robert" in visit.text and "ENFANTS 1" in visit.text
    visit.check("04-mon-compte", shot=True)

    # Enfants: Dylan.
    visit.then(lambda: visit.find('a[href="/compte/enfants"]').click())
    assert "Dylan Responsable : Claire Robert" in visit.text
    visit.check("05-enfants", shot=True)

    # Regrouper des comptes: a wrong password first.
    visit.then(lambda: visit.link("REGROUPER DES COMPTES").click())
    assert visit.h1 == "REGROUPER DES COMPTES"
    visit.check("06-regrouper", shot=True)
    visit.submit(identifiant=second.login, mot_de_passe="MAUVAIS-MOT-DE-PASSE")
    assert "Identifiant ou mot de passe incorrect." in visit.find('[role="alert"]').text
    focused = _active(visit)
    assert focused.get_attribute("name") == "identifiant"  # the focus is on the first field
    assert focused.get_attribute("aria-invalid") == "true"
    assert focused.get_attribute("aria-describedby") == "erreur"
    assert visit.find("#erreur").get_attribute("role") == "alert"
    visit.check("07-regrouper-erreur", shot=True)

    # Then Florian's letter, with the keyboard only: from the top of a fresh form, the skip
    # link, the fields, and Enter.
    visit.open("/compte/regrouper")
    body = visit.find("body")
    body.send_keys(Keys.TAB)
    assert _active(visit).text == "Aller au contenu"
    _active(visit).send_keys(Keys.ENTER)
    for _ in range(10):
        if _active(visit).get_attribute("name") == "identifiant":
            break
        _active(visit).send_keys(Keys.TAB)
    assert _active(visit).get_attribute("name") == "identifiant"
    _active(visit).send_keys(second.login, Keys.TAB)
    assert _active(visit).get_attribute("name") == "mot_de_passe"
    visit.then(lambda: _active(visit).send_keys(second.provisional_password.reveal(),
                                                Keys.ENTER))

    # CONFIRMATION DE REGROUPEMENT DE COMPTES, then both children.
    assert visit.h1 == "CONFIRMATION DE REGROUPEMENT DE COMPTES"
    assert ("Seul le compte avec lequel vous êtes connecté reste disponible."
            in visit.text)
    visit.check("08-confirmation", shot=True)
    visit.then(lambda: visit.link("VALIDER").click())
    assert "Dylan Responsable : Claire Robert Florian Responsable : Claire Robert" in visit.text
    assert "ENFANTS 2" in visit.text
    visit.check("09-enfants-regroupes", shot=True)

    # The header's switcher shows Florian's home.
    visit.then(lambda: visit.find('.switch a[href*="eleve=F0002"]').click())
    assert "SCOLARITÉ SERVICES FLORIAN" in visit.text
    visit.check("10-accueil-florian")

    # The school splits: it sees the account and the child who will leave, then confirms.
    visit.driver.delete_all_cookies()
    visit.open("/etablissement/")
    assert visit.h1 == "ESPACE ÉTABLISSEMENT"
    visit.check("11-etablissement-connexion")
    visit.submit(identifiant=STAFF, mot_de_passe=STAFF_PASSWORD)
    assert visit.h1 == "CASSER UN REGROUPEMENT DE COMPTES"
    visit.check("12-casser")
    visit.submit(identifiant=first.login)
    assert visit.h1 == "CONFIRMER LA SÉPARATION DES COMPTES"
    assert "Florian Robert Venu(e) par le courrier de Claire Robert" in visit.text
    visit.check("13-confirmer-separation", shot=True)
    visit.then(lambda: visit.find("form.actions button").click())
    assert visit.h1 == "REGROUPEMENT CASSÉ"
    printed = visit.find("pre.letter").text
    assert "proposés par le Collège des Trois Rivières pour Florian Robert" in printed
    assert re.search(r"Identifiant\s: \S+", printed)
    visit.check("14-nouveau-courrier", shot=True)
    visit.then(lambda: visit.link("Ré-éditer un courrier").click())
    visit.check("15-reediter")


def test_a_wrong_password_then_the_throttles_message(visit: Visit) -> None:
    first, _ = letters(visit)
    with visit.app.app_context():
        get_service().activate(first.login, first.provisional_password, PASSWORD)
    visit.open("/connexion")
    for _ in range(5):
        visit.submit(identifiant=first.login, mot_de_passe="MAUVAIS-MOT-DE-PASSE")
        assert "Identifiant ou mot de passe incorrect." in visit.find('[role="alert"]').text
    visit.check("16-connexion-erreur")
    visit.submit(identifiant=first.login, mot_de_passe="MAUVAIS-MOT-DE-PASSE")
    alert = " ".join(visit.find('[role="alert"]').text.replace("\u00a0", " ").split())
    assert alert.startswith("Trop de tentatives ; réessayez dans quelques secondes.")
    assert _active(visit).get_attribute("name") == "identifiant"
    visit.check("17-trop-de-tentatives", shot=True)


def test_the_way_back_through_a_real_mail_server(visit: Visit,
                                                 inbox: tuple[Inbox, int]) -> None:
    """« mot de passe oublié ? »: the link arrives by SMTP and opens the new password's page."""
    handler, port = inbox
    first, _ = letters(visit)
    with visit.app.app_context():
        service = get_service()
        service.activate(first.login, first.provisional_password, PASSWORD, email=ADDRESS)
    deliver = ["account-merge", "deliver-notices", "--smtp", "127.0.0.1", "--port", str(port),
               "--from", "ne-pas-repondre@ent.example"]
    runner = visit.app.test_cli_runner()
    assert runner.invoke(args=deliver).exit_code == 0
    (confirm,) = handler.links(ADDRESS)
    visit.open(urlsplit(confirm).path)
    assert visit.h1 == "CONFIRMER L'ADRESSE ÉLECTRONIQUE"
    assert visit.path == "/courriel/confirmer"  # the token left the address bar
    visit.check("18-confirmer-adresse")
    visit.then(lambda: visit.find("main form button").click())
    assert visit.path == "/connexion"  # confirmed, then asked to sign in

    visit.then(lambda: visit.link("mot de passe oublié\u00a0? →").click())
    assert visit.h1 == "MOT DE PASSE OUBLIÉ"
    visit.check("19-mot-de-passe-oublie", shot=True)
    visit.submit(identifiant=first.login)
    assert visit.h1 == "DEMANDE ENREGISTRÉE"
    visit.check("20-demande-enregistree")
    assert runner.invoke(args=deliver).exit_code == 0
    reset = handler.links(ADDRESS)[-1]
    visit.open(urlsplit(reset).path)
    assert visit.h1 == "NOUVEAU MOT DE PASSE" and visit.path == "/mot-de-passe/nouveau"
    visit.check("21-nouveau-mot-de-passe", shot=True)
    visit.submit(nouveau_mot_de_passe=NEW_PASSWORD, confirmation="pas le même")
    assert _active(visit).get_attribute("name") == "confirmation"
    visit.check("22-nouveau-mot-de-passe-erreur")
    visit.submit(nouveau_mot_de_passe=NEW_PASSWORD, confirmation=NEW_PASSWORD)
    assert visit.h1 == "CONNEXION" and "connectez-vous avec le nouveau" in visit.text
    visit.submit(identifiant=first.login, mot_de_passe=NEW_PASSWORD)
    assert "SCOLARITÉ SERVICES DYLAN" in visit.text

    visit.driver.delete_all_cookies()
    visit.open("/identifiant-oublie")
    visit.check("23-identifiant-oublie")


def test_the_other_pages(visit: Visit) -> None:
    """The pages the stories above do not reach, and the error pages."""
    first, _ = letters(visit)
    visit.open("/activation")
    visit.submit(identifiant=first.login, mot_de_passe_provisoire="MAUVAIS1",
                 nouveau_mot_de_passe=PASSWORD, confirmation=PASSWORD)
    assert _active(visit).get_attribute("name") == "identifiant"
    visit.check("24-activation-erreur")
    visit.open("/nulle-part")
    assert visit.h1 == "PAGE INTROUVABLE" and "Retour à l'accueil" in visit.text
    visit.check("25-erreur-404")
    # An expired form: the session (and its CSRF token) is gone when it is sent.
    visit.open("/connexion")
    visit.driver.delete_all_cookies()
    visit.submit(identifiant=first.login, mot_de_passe=PASSWORD)
    assert visit.h1 == "FORMULAIRE EXPIRÉ"
    visit.check("26-erreur-400")
    visit.then(lambda: visit.link("Revenir au formulaire").click())
    assert visit.h1 == "CONNEXION"
    visit.open("/courriels")
    visit.check("27-messages-envoyes")
    with visit.app.app_context():
        get_service().activate(first.login, first.provisional_password, PASSWORD)
    visit.open("/connexion")
    visit.submit(identifiant=first.login, mot_de_passe=PASSWORD)
    visit.open("/compte")
    visit.submit(mot_de_passe_actuel="MAUVAIS-MOT-DE-PASSE", nouveau_mot_de_passe=PASSWORD,
                 confirmation=PASSWORD)
    visit.check("28-mon-compte-erreur")
    visit.open("/compte/confirmer-identite")
    visit.check("29-confirmer-identite", shot=True)
