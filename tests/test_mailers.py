"""Notices through a real SMTP server, started in the test (aiosmtpd): the message that arrives.

Three servers: a plain one; one that demands STARTTLS and authentication
(with a self-signed certificate made for the test by ``openssl``); and one
that refuses every message, to see that a refused notice waits for the
next run.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from account_merge import Child, InMemoryStorage, MergeService
from account_merge.domain.notices import Notice, NoticeKind
from account_merge.exceptions import AccountMergeError
from account_merge.mailers import SmtpMailer
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
         "email_verification": "https://ent.example/courriel/{token}"}
SENDER = "ENT Jean Moulin <ne-pas-repondre@ent.example>"


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts (or refuses them all)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return "554 5.7.1 refused by the test"
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(e.original_content or b"",
                                         policy=email.policy.default)
                for e in self.envelopes]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def _service() -> tuple[MergeService, str]:
    """A service with an ACTIVE account whose address is confirmed; the account's login."""
    service = MergeService(InMemoryStorage(), fast_verifier(), FakeClock(),
                           secret_key="a test secret key of the host", links=LINKS)
    letter = service.issue_account(SCHOOL, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", SCHOOL.uai)])
    service.activate(letter.login, letter.provisional_password, "Mot-de-passe-Sûr-2026",
                     email="claire@example.org")
    captured = CapturingMailer()
    service.deliver_notices(captured)
    url = captured.last(NoticeKind.EMAIL_VERIFICATION).url
    assert url is not None
    service.confirm_email(url.rsplit("/", 1)[1])
    return service, letter.login


def test_a_reset_link_arrives_through_smtp_and_works(inbox: tuple[Inbox, int]) -> None:
    handler, port = inbox
    service, login = _service()
    service.request_password_reset(login)
    assert service.deliver_notices(SmtpMailer("127.0.0.1", port, sender=SENDER)) == 1
    (message,) = handler.messages()
    (envelope,) = handler.envelopes
    assert envelope.rcpt_tos == ["claire@example.org"]
    assert message["To"] == "claire@example.org"
    assert message["From"] == SENDER
    assert message["Subject"] == "Réinitialisation de votre mot de passe"
    assert message["Content-Language"] == "fr"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@account-merge>")
    body = message.get_content()
    assert "Bonjour Claire Robert," in body
    link = next(line for line in body.splitlines() if line.startswith("https://"))
    token = link.rsplit("/", 1)[1]
    assert service.reset_password(token, "Tournesol-Bleu-Vif-2028").login == login


def test_a_notice_sent_twice_keeps_its_message_id(inbox: tuple[Inbox, int]) -> None:
    """At least once: the same notice again carries the same Message-ID."""
    handler, port = inbox
    mailer = SmtpMailer("127.0.0.1", port, sender=SENDER)
    notice = Notice("claire@example.org", "Sujet", "Corps", NoticeKind.PASSWORD_CHANGED, "fr",
                    None, "7.owner.0123456789ab")
    mailer.send(notice)
    mailer.send(notice)
    ids = [m["Message-ID"] for m in handler.messages()]
    assert ids == ["<7.owner.0123456789ab@account-merge>"] * 2


def test_a_refused_message_waits_for_the_next_run() -> None:
    refusing = Inbox(refuse=True)
    controller = Controller(refusing, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        service, login = _service()
        service.request_password_reset(login)
        mailer = SmtpMailer("127.0.0.1", controller.port, sender=SENDER)
        assert service.deliver_notices(mailer) == 0
        refusing.refuse = False
        assert service.deliver_notices(mailer) == 1
        assert len(refusing.envelopes) == 1
    finally:
        controller.stop()


def test_an_unreachable_server_leaves_the_notice_for_later() -> None:
    service, login = _service()
    service.request_password_reset(login)
    mailer = SmtpMailer("127.0.0.1", _free_port(), sender=SENDER, timeout=2)
    assert service.deliver_notices(mailer) == 0
    captured = CapturingMailer()
    assert service.deliver_notices(captured) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test's certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class Accounts:
    """aiosmtpd's authenticator: one user."""

    def __call__(self, server: Any, session: Session, envelope: Envelope, mechanism: str,
                 data: Any) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and data.login == b"ent"
              and data.password == b"mot-de-passe-smtp")
        return AuthResult(success=ok, handled=False)


def test_starttls_and_authentication(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(),
                            server_hostname="localhost", tls_context=server_context,
                            require_starttls=True, authenticator=Accounts(),
                            auth_required=True)
    controller.start()
    try:
        client_context = ssl.create_default_context(cafile=str(cert))
        client_context.check_hostname = False  # the server listens on 127.0.0.1
        service, login = _service()
        service.request_login_reminder("claire@example.org")
        good = SmtpMailer("127.0.0.1", controller.port, sender=SENDER, starttls=True,
                          ssl_context=client_context, username="ent",
                          password="mot-de-passe-smtp")
        wrong = SmtpMailer("127.0.0.1", controller.port, sender=SENDER, starttls=True,
                           ssl_context=client_context, username="ent", password="faux")
        plain = SmtpMailer("127.0.0.1", controller.port, sender=SENDER)
        for refused in (wrong, plain):
            assert service.deliver_notices(refused) == 0
        assert handler.envelopes == []
        assert service.deliver_notices(good) == 1
        (message,) = handler.messages()
        assert message["Subject"] == "Votre identifiant"
        assert f"- {login}" in message.get_content()
        assert "mot-de-passe-smtp" not in repr(good)
    finally:
        controller.stop()


@pytest.mark.parametrize("options", [
    {"starttls": True, "implicit_tls": True},
    {"username": "ent"},
    {"username": "ent", "password": "x"},  # authentication in clear
    {"sender": "not an address"},
])
def test_a_mailer_refuses_a_risky_or_incomplete_setup(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"sender": SENDER, **options}
    with pytest.raises(AccountMergeError) as raised:
        SmtpMailer("127.0.0.1", 25, **arguments)
    assert raised.value.code == "invalid_input"
