"""DjangoMailer: notices through ``django.core.mail``, read back from the test outbox."""

from __future__ import annotations

from typing import Any

from account_merge import Child, InMemoryStorage, MergeService
from account_merge.contrib.django.mail import DjangoMailer
from account_merge.domain.notices import NoticeKind
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
         "email_verification": "https://ent.example/courriel/{token}"}


def test_a_reset_link_goes_through_djangos_mail_and_works(mailoutbox: list[Any],
                                                          settings: Any) -> None:
    settings.DEFAULT_FROM_EMAIL = "ne-pas-repondre@ent.example"
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

    service.request_password_reset("claire@example.org")
    assert service.deliver_notices(DjangoMailer()) == 1
    (message,) = mailoutbox
    assert message.to == ["claire@example.org"]
    assert message.from_email == "ne-pas-repondre@ent.example"
    assert message.subject == "Réinitialisation de votre mot de passe"
    assert message.message()["Message-ID"].endswith("@account-merge>")
    link = next(line for line in message.body.splitlines() if line.startswith("https://"))
    assert service.reset_password(link.rsplit("/", 1)[1], "Tournesol-Bleu-Vif-2028")
    assert "ne-pas-repondre" in repr(DjangoMailer("ne-pas-repondre@ent.example"))
