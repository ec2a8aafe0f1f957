"""The Django example in a real browser: headless Chromium over HTTP, axe-core on every page.

The example is served on 127.0.0.1 by pytest-django's ``live_server``
with the example's settings (its authentication backend, its error
pages, ``ATOMIC_REQUESTS``), the test's fast verifier and an SMTP server
started here.  The tests walk the seed's story (sign in with a letter,
activate, Mon compte, Enfants, Regrouper des comptes with the other
letter, the confirmation, both children listed), a wrong password and
the throttle's page, the school's split in the admin with its new
letter, and the way back through the messages the SMTP server receives.

On every page: axe-core finds no violation of impact serious or critical
(RGAA follows WCAG 2.1 AA), the language is French, every field has a
label, and at a phone's 390 px and at 200 % zoom (a 640 px wide window)
the page is no wider than the window.  After a
failed form the focus is on the first field to correct; the merge form
is filled and sent with the keyboard only.

With ``ACCOUNT_MERGE_SCREENSHOTS=docs/_static/screens`` the seed's screens
are saved as ``django/<name>.png`` there (the docs show them).
"""

from __future__ import annotations

import email
import email.policy
import io
import re
import socket
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.test import override_settings

from account_merge import Child, MergeService, NotificationLetter
from account_merge.contrib.django import get_service
from account_merge.contrib.django import models as m
from account_merge.testing import make_establishment
from browser_kit import PHONE, describe_violations, horizontal_overflow, resize

selenium = pytest.importorskip("selenium")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
NEWER = "Tournesol-Bleu-Vif-2028"
DESKTOP = (1280, 900)
ZOOMED = (640, 450)  # 1280x900 at 200 %
SCREEN = (1024, 720)  # the docs' pictures: small files

#: What axe-core found on each page, by page (printed at the end of the run).
AXE_RESULTS: dict[str, int] = {}

pytestmark = pytest.mark.django_db(transaction=True)


class Inbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def last_link(self, to: str) -> str:
        """The link of the last message to *to*, as a path of the site."""
        for envelope in reversed(self.envelopes):
            message = email.message_from_bytes(envelope.original_content or b"",
                                               policy=email.policy.default)
            if isinstance(message, EmailMessage) and to in envelope.rcpt_tos:
                body = message.get_body(("plain",))
                assert body is not None
                text = body.get_content()
                link = next(line for line in text.splitlines() if "://" in line)
                return urlsplit(link.strip()).path
        raise AssertionError(f"no message to {to}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                               EMAIL_HOST="127.0.0.1", EMAIL_PORT=controller.port,
                               DEFAULT_FROM_EMAIL="ne-pas-repondre@ent.example"):
            yield handler
    finally:
        controller.stop()


@pytest.fixture
def site(live_server: Any) -> Iterator[str]:
    """The example's base URL, with its settings (the test's verifier)."""
    with override_settings(ACCOUNT_MERGE={
            "VERIFIER": "fast_verifier.fast_django_verifier",
            "BASE_URL": live_server.url,
            "LINKS": {"password_reset": "ent:lien_mot_de_passe",
                      "email_verification": "ent:lien_courriel", "sign_in": "ent:connexion"},
            "THROTTLE_BACKOFF_AFTER": 3, "THROTTLE_BACKOFF_BASE": 60}):
        m.Establishment.objects.create(uai=COLLEGE.uai, name=COLLEGE.name)
        yield str(live_server.url)


@pytest.fixture
def letters(site: str) -> tuple[NotificationLetter, NotificationLetter]:
    """The collège's two letters to Claire Robert, one per child (the seed's)."""
    service = get_service()
    return (service.issue_account(COLLEGE, "Claire Robert",
                                  [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)]),
            service.issue_account(COLLEGE, "Claire Robert",
                                  [Child("ine-florian", "Florian", "Robert", COLLEGE.uai)]))


@pytest.fixture
def look(chromium: WebDriver, axe: Callable[[Any], list[dict[str, Any]]],
         screenshot: Callable[[Any, str], Any]) -> Callable[..., None]:
    """``look(name, shot=False)``: check the current page as a parent would see it.

    ``shot=True`` saves a picture of it, ``shot="phone"`` one at a phone's size too.
    """

    def check(name: str, *, shot: bool | str = False) -> None:
        assert chromium.execute_script("return document.documentElement.lang") == "fr"
        violations = axe(chromium)
        AXE_RESULTS[name] = len(violations)
        assert violations == [], f"{name}:\n{describe_violations(violations)}"
        assert chromium.find_elements(By.CSS_SELECTOR, "h1"), f"{name}: no heading"
        assert chromium.execute_script(UNLABELLED) == [], f"{name}: fields without a label"
        for size in (PHONE, ZOOMED):
            resize(chromium, size)
            assert horizontal_overflow(chromium) == 0, f"{name} is wider than {size[0]} px"
        if shot:
            resize(chromium, SCREEN)
            screenshot(chromium, f"django/{name}")
            if shot == "phone":
                resize(chromium, PHONE)
                screenshot(chromium, f"django/{name}-telephone")
        resize(chromium, DESKTOP)

    return check


#: The page's fields that nothing names: no <label>, no aria-label(ledby).
UNLABELLED = """
return [...document.querySelectorAll(
    'input:not([type=hidden]):not([type=submit]):not([type=button]), select, textarea')]
  .filter(f => f.labels.length === 0 && !f.getAttribute('aria-label')
               && !f.getAttribute('aria-labelledby'))
  .map(f => f.name || f.id);
"""


def fill(driver: WebDriver, field_id: str, value: str) -> None:
    field = driver.find_element(By.ID, field_id)
    field.clear()
    field.send_keys(value)


def following(driver: WebDriver, act: Callable[[], None]) -> None:
    """Do *act*, then wait for the next page, fully loaded.

    The page being left is marked; the next one is a new document without
    the mark.  Asked while the browser swaps documents, it may answer an
    error: that is waiting too.
    """
    driver.execute_script("document.documentElement.dataset.leaving = 'yes'")
    act()
    WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return document.readyState === 'complete'"
                                   " && !document.documentElement.dataset.leaving"))


def send(driver: WebDriver, label: str) -> None:
    """Click the main content's button *label* (whatever its case) and wait for the answer."""
    buttons = [b for b in driver.find_elements(By.CSS_SELECTOR, "main button")
               if b.text.strip().lower() == label.lower()]
    assert buttons, f"no button {label!r}"
    following(driver, buttons[0].click)


def link(driver: WebDriver, text: str) -> None:
    """Click the main content's link *text* (as shown, whatever its case)."""
    wanted = text.replace("\xa0", " ").lower()  # WebDriver reads no-break spaces as spaces
    found = [a for a in driver.find_elements(By.CSS_SELECTOR, "main a")
             if a.text.strip().lower() == wanted]
    assert found, f"no link {text!r}"
    following(driver, found[0].click)


def page_text(driver: WebDriver) -> str:
    return re.sub(r"\s+", " ", driver.find_element(By.TAG_NAME, "body").text)


def sign_in(driver: WebDriver, site: str, login: str, password: str) -> None:
    driver.get(f"{site}/connexion/")
    fill(driver, "id_login", login)
    fill(driver, "id_password", password)
    send(driver, "Valider")


def test_the_seed_s_story_in_a_browser(
        chromium: WebDriver, site: str, letters: tuple[NotificationLetter, NotificationLetter],
        look: Callable[..., None]) -> None:
    first, second = letters
    chromium.get(f"{site}/connexion/")
    look("connexion", shot=True)

    # The letter's provisional password: the activation form, the login filled in.
    fill(chromium, "id_login", first.login)
    fill(chromium, "id_password", first.provisional_password.reveal())
    send(chromium, "Valider")
    assert chromium.find_element(By.ID, "id_login").get_attribute("value") == first.login
    assert "pas encore activé" in page_text(chromium)
    look("activation", shot=True)
    fill(chromium, "id_provisional_password", first.provisional_password.reveal())
    fill(chromium, "id_new_password", STRONG)
    fill(chromium, "id_new_password_again", STRONG)
    send(chromium, "Activer")

    assert chromium.find_element(By.TAG_NAME, "h1").text == "PROFIL"
    assert "COMPTE DE CLAIRE ROBERT" in page_text(chromium)
    look("mon-compte", shot=True)

    following(chromium,
              chromium.find_element(By.CSS_SELECTOR, ".menu-compte a[href$='/enfants/']").click)
    assert "Dylan Robert Responsable : Claire Robert" in page_text(chromium).replace("\xa0", " ")
    look("enfants", shot=True)

    link(chromium, "REGROUPER DES COMPTES")
    look("regrouper", shot=True)
    fill(chromium, "id_login", second.login)
    fill(chromium, "id_password", second.provisional_password.reveal())
    send(chromium, "Regrouper")

    text = page_text(chromium).replace("\xa0", " ")
    assert chromium.find_element(By.TAG_NAME, "h1").text == \
        "CONFIRMATION DE REGROUPEMENT DE COMPTES"
    assert ("L'opération de regroupement des comptes a été effectuée avec succès. Seul le compte "
            "avec lequel vous êtes connecté reste disponible.") in text
    look("confirmation", shot=True)

    link(chromium, "VALIDER")
    text = page_text(chromium).replace("\xa0", " ")
    assert "Dylan Robert Responsable : Claire Robert" in text
    assert "Florian Robert Responsable : Claire Robert" in text
    look("enfants-regroupes", shot="phone")

    # The seed's header names the child being viewed; the switcher shows the other.
    following(chromium, chromium.find_element(By.CSS_SELECTOR, "header .marque a").click)
    assert chromium.find_element(By.CSS_SELECTOR, "header .marque").text == \
        "SCOLARITÉ SERVICES DYLAN"
    assert "Aucun service en ligne pour cet élève." in page_text(chromium)
    look("accueil", shot=True)
    following(chromium, chromium.find_element(By.LINK_TEXT, "Florian").click)
    assert chromium.find_element(By.CSS_SELECTOR, "header .marque").text == \
        "SCOLARITÉ SERVICES FLORIAN"


def test_a_wrong_password_then_the_throttle(
        chromium: WebDriver, site: str, letters: tuple[NotificationLetter, NotificationLetter],
        look: Callable[..., None]) -> None:
    first, _ = letters
    get_service().activate(first.login, first.provisional_password, STRONG)

    sign_in(chromium, site, first.login, "WRONG123")

    summary = chromium.find_element(By.CSS_SELECTOR, "[role=alert]")
    assert "identifiant ou mot de passe incorrect" in summary.text
    focused = chromium.switch_to.active_element
    assert focused.get_attribute("id") == "id_login"
    assert focused.get_attribute("aria-invalid") == "true"
    assert "erreurs" in (focused.get_attribute("aria-describedby") or "").split()
    look("connexion-erreur")

    for _ in range(3):
        sign_in(chromium, site, first.login, "WRONG123")
    assert chromium.find_element(By.TAG_NAME, "h1").text == "TROP DE TENTATIVES"
    assert "réessayez dans" in page_text(chromium)
    look("trop-de-tentatives", shot=True)
    link(chromium, "Revenir à la page demandée")
    assert chromium.current_url.endswith("/connexion/")


def test_the_merge_form_with_the_keyboard_only_after_the_password_again(
        chromium: WebDriver, site: str, letters: tuple[NotificationLetter, NotificationLetter],
        look: Callable[..., None]) -> None:
    first, second = letters
    get_service().activate(first.login, first.provisional_password, STRONG)
    sign_in(chromium, site, first.login, STRONG)

    with override_settings(RECENT_LOGIN_MAX_AGE=-1):
        chromium.get(f"{site}/mon-compte/regrouper/")
        assert chromium.find_element(By.TAG_NAME, "h1").text == "CONFIRMER VOTRE IDENTITÉ"
        look("confirmer-identite", shot=True)
    fill(chromium, "id_password", STRONG)
    send(chromium, "Valider")
    assert chromium.find_element(By.TAG_NAME, "h1").text == "REGROUPER DES COMPTES"

    # A wrong password first: the focus goes to the first field to correct.
    fill(chromium, "id_login", second.login)
    fill(chromium, "id_password", "WRONG123")
    send(chromium, "Regrouper")
    assert chromium.switch_to.active_element.get_attribute("id") == "id_login"
    look("regrouper-erreur", shot=True)

    # Then with the keyboard only, from the top of the page.
    chromium.find_element(By.TAG_NAME, "body").click()
    chromium.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
    reached = []
    for _ in range(30):
        chromium.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(chromium.switch_to.active_element.get_attribute("id")
                       or chromium.switch_to.active_element.text)
        if reached[-1] == "id_login":
            break
    assert reached[-1] == "id_login", reached
    chromium.switch_to.active_element.send_keys(Keys.CONTROL, "a")
    chromium.switch_to.active_element.send_keys(second.login, Keys.TAB)
    assert chromium.switch_to.active_element.get_attribute("id") == "id_password"
    chromium.switch_to.active_element.send_keys(second.provisional_password.reveal(), Keys.TAB)
    assert chromium.switch_to.active_element.text == "REGROUPER"
    following(chromium, lambda: chromium.switch_to.active_element.send_keys(Keys.ENTER))

    assert chromium.find_element(By.TAG_NAME, "h1").text == \
        "CONFIRMATION DE REGROUPEMENT DE COMPTES"
    assert [c.first_name for c in get_service().children(first.account_id)] == \
        ["Dylan", "Florian"]


def test_the_school_splits_in_the_admin_after_a_confirmation(
        chromium: WebDriver, site: str, letters: tuple[NotificationLetter, NotificationLetter],
        look: Callable[..., None]) -> None:
    first, second = letters
    service: MergeService = get_service()
    principal = service.activate(first.login, first.provisional_password, STRONG)
    service.merge(principal.id, second.login, second.provisional_password)
    staff = User.objects.create_user("cpe.college", password=STRONG, is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(
        content_type=ContentType.objects.get_for_model(m.Account),
        codename__in=["split_account", "view_account"]))
    m.EstablishmentStaff.objects.create(user=staff, establishment_id=COLLEGE.uai)

    chromium.get(f"{site}/admin/login/")
    look("admin-connexion")
    fill(chromium, "id_username", "cpe.college")
    fill(chromium, "id_password", STRONG)
    following(chromium, chromium.find_element(By.CSS_SELECTOR, "input[type=submit]").click)
    chromium.get(f"{site}/admin/account_merge/account/")
    look("admin-comptes")
    chromium.find_element(By.CSS_SELECTOR,
                          f"input[name=_selected_action][value='{principal.id}']").click()
    chromium.find_element(By.CSS_SELECTOR, "select[name=action] option[value=split_merge]").click()
    following(chromium, chromium.find_element(By.CSS_SELECTOR, "button[name=index]").click)

    text = page_text(chromium)
    assert f"Compte {principal.login} (Claire Robert)" in text
    leaving = text.index("Enfants qui quitteront ce compte")
    staying = text.index("Enfants qui resteront sur ce compte")
    assert "Florian Robert" in text[leaving:staying] and "Dylan Robert" in text[staying:]
    assert [c.first_name for c in service.children(principal.id)] == ["Dylan", "Florian"]
    look("separation-confirmation", shot=True)

    following(chromium, chromium.find_element(
        By.CSS_SELECTOR, "input[value='Oui, casser le regroupement']").click)
    text = page_text(chromium)
    assert "Nouveaux courriers de notification" in text and "Florian Robert" in text
    look("separation-courrier", shot=True)
    assert [c.first_name for c in service.children(principal.id)] == ["Dylan"]


def test_the_way_back_through_the_messages_a_real_smtp_server_receives(
        chromium: WebDriver, site: str, letters: tuple[NotificationLetter, NotificationLetter],
        inbox: Inbox, look: Callable[..., None]) -> None:
    first, _ = letters
    get_service().activate(first.login, first.provisional_password, STRONG,
                           email="claire@example.org")
    call_command("account_merge_deliver_notices", stdout=io.StringIO())
    chromium.get(site + inbox.last_link("claire@example.org"))
    assert chromium.current_url.endswith("/courriel/confirmer/")  # the token left the address
    look("confirmer-courriel")
    send(chromium, "Confirmer")
    assert "est confirmée" in page_text(chromium)

    chromium.get(f"{site}/connexion/")
    link(chromium, "mot de passe oublié\xa0?")
    look("mot-de-passe-oublie", shot=True)
    fill(chromium, "id_login_or_email", "claire@example.org")
    send(chromium, "Valider")
    look("demande-envoyee")
    call_command("account_merge_deliver_notices", stdout=io.StringIO())

    chromium.get(site + inbox.last_link("claire@example.org"))
    assert chromium.current_url.endswith("/mot-de-passe/nouveau/")
    look("nouveau-mot-de-passe", shot=True)
    fill(chromium, "id_new_password", NEWER)
    fill(chromium, "id_new_password_again", "autre chose")
    send(chromium, "Valider")
    assert chromium.switch_to.active_element.get_attribute("id") == "id_new_password_again"
    look("nouveau-mot-de-passe-erreur")
    fill(chromium, "id_new_password", NEWER)
    fill(chromium, "id_new_password_again", NEWER)
    send(chromium, "Valider")
    assert "connectez-vous avec le nouveau" in page_text(chromium)

    sign_in(chromium, site, first.login, NEWER)
    assert chromium.find_element(By.TAG_NAME, "h1").text.startswith("ACCUEIL")

    chromium.get(f"{site}/connexion/")  # signed in: the page still works
    chromium.delete_all_cookies()
    chromium.get(f"{site}/connexion/")
    link(chromium, "identifiant oublié\xa0?")
    look("identifiant-oublie")


def test_the_error_pages_are_french_and_lead_back(
        chromium: WebDriver, site: str, look: Callable[..., None]) -> None:
    chromium.get(f"{site}/nulle-part/")
    assert chromium.find_element(By.TAG_NAME, "h1").text == "PAGE INTROUVABLE"
    look("404")
    link(chromium, "Aller à l'accueil")
    assert chromium.current_url.endswith("/connexion/")


def test_zz_axe_results_page_by_page(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints what axe-core found on each page (serious or critical), for the record."""
    with capsys.disabled():
        print("\naxe-core, serious or critical violations by page:")
        for name, count in sorted(AXE_RESULTS.items()):
            print(f"  {name}: {count}")
