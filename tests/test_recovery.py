"""The way back, on every store: forgotten password and login, e-mail confirmation,
re-issued letters, and the notices that tell parents what happened.

The security properties of the same flows (uniform answers, single-use
tokens, secrets, throttling) are in ``tests/test_security_recovery.py``;
sending through a real SMTP server is in ``tests/test_mailers.py``.
"""

from __future__ import annotations

import doctest
import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from account_merge import AccountStatus, Child, MergeService, NotificationLetter
from account_merge.domain import notices as notices_module
from account_merge.domain import tokens as tokens_module
from account_merge.domain.audit import AuditAction
from account_merge.domain.events import PasswordResetRequested
from account_merge.domain.notices import Notice, NoticeKind
from account_merge.exceptions import AccountMergeError, InvalidInput, NotSupported
from account_merge.ports import Storage
from account_merge.service.policies import Policies
from account_merge.testing import (
    CapturingMailer,
    CountingVerifier,
    FakeClock,
    capture_events,
    make_establishment,
)

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
LYCEE = make_establishment(860002, "Lycée Camille Guérin")
KEY = "a test secret key of the host"
LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
         "email_verification": "https://ent.example/courriel/{token}",
         "sign_in": "https://ent.example/connexion"}
STRONG = "Mot-de-passe-Sûr-2026"
OTHER = "Autre-Mot-de-passe-2027"
NEWER = "Tournesol-Bleu-Vif-2028"


@pytest.fixture
def service(storage: Storage, verifier: CountingVerifier, clock: FakeClock) -> MergeService:
    """A service that can send links (it replaces the plain one of conftest.py)."""
    made = MergeService(storage, verifier, clock, secret_key=KEY, links=LINKS)
    for school in (COLLEGE, LYCEE):
        made.register_establishment(school)
    return made


@pytest.fixture
def mailer() -> CapturingMailer:
    return CapturingMailer()


class Family:
    """Letters and accounts of one test, and the notices sent so far."""

    def __init__(self, service: MergeService, mailer: CapturingMailer) -> None:
        self.service = service
        self.mailer = mailer
        self.count = 0

    def letter(self, name: str = "Claire Robert", school: Any = COLLEGE,
               email: str | None = None) -> NotificationLetter:
        self.count += 1
        child = Child(f"ine-{self.count}", f"Enfant{self.count}", "Robert", school.uai)
        return self.service.issue_account(school, name, [child], email=email)

    def deliver(self, **options: Any) -> list[Notice]:
        """The notices a delivery sends now."""
        before = len(self.mailer.sent)
        self.service.deliver_notices(self.mailer, **options)
        return self.mailer.sent[before:]

    def active(self, name: str = "Claire Robert", email: str | None = None,
               password: str = STRONG, school: Any = COLLEGE) -> str:
        """An ACTIVE account (with *email* confirmed); its id."""
        letter = self.letter(name, school)
        account = self.service.activate(letter.login, letter.provisional_password, password,
                                        email=email)
        if email is not None:
            (notice,) = self.deliver()
            assert notice.kind is NoticeKind.EMAIL_VERIFICATION
            assert self.service.confirm_email(token_of(notice)).email == email
        return account.id


def token_of(notice: Notice) -> str:
    assert notice.url is not None
    return notice.url.rsplit("/", 1)[1]


@pytest.fixture
def family(service: MergeService, mailer: CapturingMailer) -> Family:
    return Family(service, mailer)


def fails(code: str, call: Callable[[], object]) -> AccountMergeError:
    with pytest.raises(AccountMergeError) as raised:
        call()
    assert raised.value.code == code, raised.value
    return raised.value


def refused_field(call: Callable[[], object]) -> str:
    """The field an ``invalid_input`` names."""
    error = fails("invalid_input", call)
    assert isinstance(error, InvalidInput)
    return error.field


def test_the_modules_examples_run() -> None:
    for module in (tokens_module, notices_module):
        assert doctest.testmod(module).failed == 0


# -- « mot de passe oublié ? » ------------------------------------------------------------
class TestPasswordReset:
    def test_a_parent_who_forgot_the_password_gets_back_in(self, family: Family) -> None:
        service = family.service
        account_id = family.active(email="claire@example.org")
        account = service.get_account(account_id)
        service.request_password_reset(account.login)  # None, always (its type says so)
        (notice,) = family.deliver()
        assert (notice.to, notice.kind, notice.language) == (
            "claire@example.org", NoticeKind.PASSWORD_RESET, "fr")
        assert notice.url is not None and notice.url.startswith(
            "https://ent.example/mot-de-passe/")
        assert notice.url in notice.body and account.login in notice.body
        assert "valable 1\u00a0heure" in notice.body or "valable 1 heure" in notice.body
        reset = service.reset_password(token_of(notice), NEWER)
        assert reset.id == account_id
        assert reset.last_signed_in_at == account.last_signed_in_at  # not signed in
        assert service.authenticate(account.login, NEWER).id == account_id
        fails("invalid_credentials", lambda: service.authenticate(account.login, STRONG))
        (told,) = family.deliver()
        assert (told.to, told.kind) == ("claire@example.org", NoticeKind.PASSWORD_RESET_DONE)
        assert told.url == LINKS["sign_in"]

    def test_the_address_is_matched_folded_and_mail_goes_to_the_address_on_record(
            self, family: Family) -> None:
        """CVE-2019-19844: the typed address only finds the account; mail goes to the stored one."""
        family.active(email="claire.robert@example.org")
        family.service.request_password_reset("ＣＬＡＩＲＥ.Robert@EXAMPLE.org ")
        (notice,) = family.deliver()
        assert notice.to == "claire.robert@example.org"

    def test_an_address_on_several_accounts_resets_each_with_its_own_link(
            self, family: Family) -> None:
        first = family.active(email="claire@example.org")
        second = family.active(email="claire@example.org", password=OTHER)
        family.service.request_password_reset("claire@example.org")
        sent = family.deliver()
        assert [n.kind for n in sent] == [NoticeKind.PASSWORD_RESET] * 2
        logins = {family.service.get_account(i).login for i in (first, second)}
        assert {next(login for login in logins if f" {login} a été" in n.body)
                for n in sent} == logins
        assert len({n.url for n in sent}) == 2

    @pytest.mark.parametrize("case", ["unknown", "provisional", "no address", "absorbed",
                                      "address of a provisional account"])
    def test_accounts_that_cannot_reset_get_the_same_answer_and_no_mail(
            self, family: Family, case: str) -> None:
        service = family.service
        letter = family.letter(email="claire@example.org")
        typed = {"unknown": "nobody.here", "provisional": letter.login,
                 "address of a provisional account": "claire@example.org"}.get(case)
        if case == "no address":
            typed = service.get_account(family.active()).login
        if case == "absorbed":
            principal = family.active(email="paul@example.org", name="Paul Robert")
            absorbed = family.active(email="claire@example.org")
            family.deliver()
            login = service.get_account(absorbed).login
            service.merge(principal, login, STRONG)
            family.deliver()
            typed = login
        assert typed is not None
        with capture_events(service) as captured:
            service.request_password_reset(typed)
        (event,) = captured.of_type(PasswordResetRequested)
        assert event.account_ids == ()
        assert family.deliver() == []

    def test_a_merged_accounts_login_does_not_reset_the_account_holding_it(
            self, family: Family) -> None:
        """docs/recovery.md, *Merged accounts*: the absorbed login resets nothing."""
        service = family.service
        principal = family.active(email="claire@example.org")
        letter = family.letter()
        service.merge(principal, letter.login, letter.provisional_password)
        family.deliver()
        service.request_password_reset(letter.login)
        assert family.deliver() == []

    @pytest.mark.parametrize(("after", "works"), [(timedelta(minutes=59, seconds=59), True),
                                                  (timedelta(hours=1), False)])
    def test_a_reset_link_works_for_an_hour(self, family: Family, clock: FakeClock,
                                            after: timedelta, works: bool) -> None:
        service = family.service
        account_id = family.active(email="claire@example.org")
        service.request_password_reset("claire@example.org")
        (notice,) = family.deliver()
        clock.advance(after)
        if works:
            assert service.reset_password(token_of(notice), NEWER).id == account_id
        else:
            fails("invalid_token", lambda: service.reset_password(token_of(notice), NEWER))
            assert service.authenticate(service.get_account(account_id).login, STRONG)

    def test_a_link_not_sent_before_it_expired_is_dropped(
            self, family: Family, clock: FakeClock) -> None:
        family.active(email="claire@example.org")
        family.service.request_password_reset("claire@example.org")
        clock.advance(hours=2)
        assert family.deliver() == []

    def test_the_validity_is_a_policy(self, storage: Storage, clock: FakeClock,
                                      mailer: CapturingMailer) -> None:
        service = MergeService(storage, CountingVerifier(), clock, secret_key=KEY, links=LINKS,
                               policies=Policies(reset_validity=timedelta(minutes=10)))
        family = Family(service, mailer)
        family.active(email="claire@example.org")
        service.request_password_reset("claire@example.org")
        (notice,) = family.deliver()
        assert "10\u00a0minutes" in notice.body
        clock.advance(minutes=10)
        fails("invalid_token", lambda: service.reset_password(token_of(notice), NEWER))

    def test_a_refused_new_password_leaves_the_link_usable(self, family: Family) -> None:
        family.active(email="claire@example.org")
        family.service.request_password_reset("claire@example.org")
        (notice,) = family.deliver()
        fails("password_policy", lambda: family.service.reset_password(token_of(notice),
                                                                        "short"))
        assert family.service.reset_password(token_of(notice), NEWER)

    def test_a_request_says_what_the_host_must_configure(self, storage: Storage) -> None:
        bare = MergeService(storage, CountingVerifier())
        assert refused_field(lambda: bare.request_password_reset("claire.robert")) \
            == "secret_key"
        keyed = MergeService(storage, CountingVerifier(), secret_key=KEY)
        assert refused_field(lambda: keyed.request_password_reset("claire.robert")) == "links"
        assert refused_field(lambda: bare.reset_password("x.y", NEWER)) == "secret_key"
        assert refused_field(lambda: bare.confirm_email("x.y")) == "secret_key"

    @pytest.mark.parametrize("links", [
        {"password_reset": "https://ent.example/mdp"},          # no {token}
        {"password_reset": "/mdp/{token}"},                     # not absolute
        {"password_reset": "https://ent.example/{token}/{token}"},
        {"password_reset": "https://ent.example/{token}?next={page}"},
        {"sign_in": "https://ent.example/{token}"},
        {"password_forgotten": "https://ent.example/{token}"},  # unknown link
        "https://ent.example/{token}",
    ])
    def test_malformed_links_are_refused_when_the_service_is_made(
            self, storage: Storage, links: Any) -> None:
        assert refused_field(lambda: MergeService(storage, links=links)) == "links"

    @pytest.mark.parametrize("key", ["short", b"0123456789", 12345])
    def test_a_secret_key_must_be_text_of_16_characters_or_more(
            self, storage: Storage, key: Any) -> None:
        assert refused_field(lambda: MergeService(storage, secret_key=key)) == "secret_key"


# -- « identifiant oublié ? » ------------------------------------------------------------
class TestLoginReminder:
    def test_the_logins_of_an_address_come_in_one_message(self, family: Family) -> None:
        service = family.service
        first = family.active(email="claire@example.org")
        second = family.active(email="Claire@Example.org", password=OTHER)
        family.letter(email="claire@example.org")  # never activated: not listed
        service.request_login_reminder("claire@EXAMPLE.org")
        sent = family.deliver()
        assert [n.kind for n in sent] == [NoticeKind.LOGIN_REMINDER] * 2
        # Two addresses on record that differ in case: one message each, each its own login.
        by_address = {n.to: n for n in sent}
        assert set(by_address) == {"claire@example.org", "Claire@Example.org"}
        assert service.get_account(first).login in by_address["claire@example.org"].body
        assert service.get_account(second).login not in by_address["claire@example.org"].body

    def test_several_accounts_of_one_address_are_listed_together_with_the_merge_hint(
            self, family: Family) -> None:
        ids = [family.active(email="claire@example.org", password=p) for p in (STRONG, OTHER)]
        family.service.request_login_reminder("claire@example.org")
        (notice,) = family.deliver()
        for account_id in ids:
            assert f"- {family.service.get_account(account_id).login}" in notice.body
        assert "Regrouper des comptes" in notice.body

    def test_an_unknown_address_gets_the_same_answer_and_no_mail(self, family: Family) -> None:
        family.active(email="claire@example.org")
        with capture_events(family.service) as captured:
            family.service.request_login_reminder("nobody@example.org")
        assert captured.names == ["login_reminder_requested"]
        assert family.deliver() == []

    def test_a_reminder_needs_no_link(self, storage: Storage, mailer: CapturingMailer) -> None:
        service = MergeService(storage, CountingVerifier())
        service.request_login_reminder("claire@example.org")


# -- the e-mail address --------------------------------------------------------------------
class TestEmailAddress:
    def test_an_address_given_at_activation_is_on_record_once_confirmed(
            self, family: Family) -> None:
        service = family.service
        letter = family.letter()
        account = service.activate(letter.login, letter.provisional_password, STRONG,
                                   email="claire@example.org")
        assert account.email is None
        (notice,) = family.deliver()
        assert (notice.to, notice.kind) == ("claire@example.org",
                                            NoticeKind.EMAIL_VERIFICATION)
        assert "claire@example.org" in notice.body and letter.login in notice.body
        service.request_password_reset("claire@example.org")
        assert family.deliver() == []  # not confirmed: no reset goes there
        assert service.confirm_email(token_of(notice)).email == "claire@example.org"
        assert service.get_account(account.id).email == "claire@example.org"
        fails("invalid_token", lambda: service.confirm_email(token_of(notice)))
        assert family.deliver() == []  # no old address to tell

    def test_the_establishments_address_is_confirmed_at_activation(self, family: Family) -> None:
        letter = family.letter(email="claire@example.org")
        assert family.service.get_account(letter.account_id).email == "claire@example.org"
        account = family.service.activate(letter.login, letter.provisional_password, STRONG)
        assert account.email is None
        (notice,) = family.deliver()
        assert notice.to == "claire@example.org"
        assert family.service.confirm_email(token_of(notice)).email == "claire@example.org"

    def test_a_change_needs_the_password_and_the_old_address_is_told(
            self, family: Family) -> None:
        service = family.service
        account_id = family.active(email="claire@example.org")
        fails("invalid_credentials", lambda: service.request_email_change(
            account_id, "Wrong-Password-1", "c.robert@example.net"))
        fails("invalid_input", lambda: service.request_email_change(
            account_id, STRONG, "CLAIRE@example.org"))
        service.request_email_change(account_id, STRONG, "c.robert@example.net")
        assert service.get_account(account_id).email == "claire@example.org"
        (confirm,) = family.deliver()
        assert confirm.to == "c.robert@example.net"
        assert service.confirm_email(token_of(confirm)).email == "c.robert@example.net"
        (told,) = family.deliver()
        assert (told.to, told.kind) == ("claire@example.org", NoticeKind.EMAIL_CHANGED)
        assert "c.robert@example.net" in told.body
        assert "contactez votre établissement" in told.body

    def test_a_password_change_or_another_confirmation_kills_a_pending_link(
            self, family: Family) -> None:
        service = family.service
        account_id = family.active(email="claire@example.org")
        service.request_email_change(account_id, STRONG, "a@example.net")
        service.request_email_change(account_id, STRONG, "b@example.net")
        first, second = family.deliver()
        service.confirm_email(token_of(second))
        family.deliver()
        fails("invalid_token", lambda: service.confirm_email(token_of(first)))
        service.request_email_change(account_id, STRONG, "c@example.net")
        service.change_password(account_id, STRONG, OTHER)
        assert [n.kind for n in family.deliver()] == [NoticeKind.PASSWORD_CHANGED]
        # The confirmation was asked before the password changed: it is dropped, not sent.
        assert service.get_account(account_id).email == "b@example.net"

    def test_a_confirmation_link_works_for_a_day(self, family: Family, clock: FakeClock) -> None:
        account_id = family.active(email="claire@example.org")
        family.service.request_email_change(account_id, STRONG, "c@example.net")
        (notice,) = family.deliver()
        assert "1\u00a0jour" in notice.body
        clock.advance(days=1)
        fails("invalid_token", lambda: family.service.confirm_email(token_of(notice)))

    def test_an_address_change_is_for_active_accounts(self, family: Family) -> None:
        letter = family.letter()
        fails("principal_not_active", lambda: family.service.request_email_change(
            letter.account_id, letter.provisional_password, "c@example.net"))
        fails("account_not_found", lambda: family.service.request_email_change(
            "missing", STRONG, "c@example.net"))


# -- re-issued letters ------------------------------------------------------------------
class TestReissuedLetter:
    def test_a_lost_letter_is_printed_again_with_the_same_login(
            self, family: Family, clock: FakeClock) -> None:
        service = family.service
        old = family.letter()
        clock.advance(days=10)
        new = service.reissue_letter(COLLEGE, old.account_id)
        assert (new.login, new.account_id) == (old.login, old.account_id)
        assert new.provisional_password.reveal() != old.provisional_password.reveal()
        assert new.issued_at == clock() and new.expires_at == clock() + timedelta(days=90)
        assert [c.id for c in new.children] == [c.id for c in old.children]
        fails("invalid_credentials", lambda: service.activate(
            old.login, old.provisional_password, STRONG))
        assert service.activate(new.login, new.provisional_password, STRONG).status \
            is AccountStatus.ACTIVE

    def test_an_active_account_without_an_address_is_provisional_again(
            self, family: Family) -> None:
        service = family.service
        account_id = family.active()
        login = service.get_account(account_id).login
        letter = service.reissue_letter(COLLEGE, account_id)
        assert service.get_account(account_id).status is AccountStatus.PROVISIONAL
        fails("invalid_credentials", lambda: service.authenticate(login, STRONG))
        fails("activation_required", lambda: service.authenticate(
            login, letter.provisional_password))
        service.activate(login, letter.provisional_password, OTHER)
        assert service.authenticate(login, OTHER).id == account_id
        assert family.deliver() == []  # no address: nobody to tell

    def test_an_account_with_an_address_can_be_reissued_and_is_told(
            self, family: Family) -> None:
        """A parent who lost access to the mailbox too still has a way back."""
        account_id = family.active(email="claire@example.org")
        family.service.reissue_letter(COLLEGE, account_id)
        (notice,) = family.deliver()
        assert (notice.to, notice.kind) == ("claire@example.org", NoticeKind.LETTER_REISSUED)
        assert COLLEGE.name in notice.body

    def test_only_an_establishment_holding_a_child_on_the_account_may(
            self, family: Family) -> None:
        service = family.service
        letter = family.letter()
        for school in (LYCEE, make_establishment(860099, "Collège Inconnu")):
            fails("not_authorized", functools.partial(service.reissue_letter, school,
                                                      letter.account_id))
        fails("account_not_found", lambda: service.reissue_letter(COLLEGE, "missing"))
        principal = family.active(school=LYCEE)
        service.merge(principal, letter.login, letter.provisional_password)
        fails("not_authorized", lambda: service.reissue_letter(COLLEGE, letter.account_id))
        # The college's child is now on the principal: the college may re-issue its letter.
        again = service.reissue_letter(COLLEGE, principal)
        assert [c.establishment_uai for c in again.children] == [COLLEGE.uai]

    def test_it_is_audited_with_the_establishment_as_actor(self, family: Family) -> None:
        letter = family.letter()
        family.service.reissue_letter(COLLEGE, letter.account_id)
        fails("not_authorized", lambda: family.service.reissue_letter(LYCEE, letter.account_id))
        records = [r for r in family.service.audit_trail(limit=100)
                   if r.action is AuditAction.REISSUE_LETTER]
        assert [(r.actor, r.outcome) for r in records] == [
            (f"establishment:{COLLEGE.uai}", "success"),
            (f"establishment:{LYCEE.uai}", "not_authorized")]


# -- notices ------------------------------------------------------------------------------
class TestNotices:
    def test_a_merge_tells_both_addresses_and_is_recorded_for_the_school(
            self, family: Family) -> None:
        service = family.service
        principal = family.active(email="claire@example.org")
        absorbed = family.active(name="Paul Robert", email="paul@example.org", school=LYCEE)
        absorbed_login = service.get_account(absorbed).login
        service.merge(principal, absorbed_login, STRONG)
        sent = {n.kind: n for n in family.deliver()}
        assert set(sent) == {NoticeKind.ACCOUNT_MERGED, NoticeKind.ACCOUNT_ABSORBED}
        assert sent[NoticeKind.ACCOUNT_MERGED].to == "claire@example.org"
        assert absorbed_login in sent[NoticeKind.ACCOUNT_MERGED].body
        to_absorbed = sent[NoticeKind.ACCOUNT_ABSORBED]
        assert to_absorbed.to == "paul@example.org"
        assert LYCEE.name in to_absorbed.body
        assert service.get_account(principal).login not in to_absorbed.body
        records = [r for r in service.audit_trail(principal, limit=100)
                   if r.action is AuditAction.NOTICE and (r.detail or "").startswith("recorded")]
        assert len(records) == 1 and LYCEE.uai in (records[0].detail or "")

    def test_one_address_on_both_accounts_gets_one_notice(self, family: Family) -> None:
        principal = family.active(email="claire@example.org")
        absorbed = family.active(email="claire@example.org", password=OTHER)
        family.service.merge(principal, family.service.get_account(absorbed).login, OTHER)
        assert [n.kind for n in family.deliver()] == [NoticeKind.ACCOUNT_MERGED]

    def test_a_failing_send_waits_for_the_next_run_and_is_logged_without_the_link(
            self, family: Family, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="account_merge")
        family.active(email="claire@example.org")
        family.service.request_password_reset("claire@example.org")
        family.mailer.fail = lambda notice: True
        assert family.service.deliver_notices(family.mailer) == 0
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "not sent" in warning.getMessage()
        family.mailer.fail = None
        (notice,) = family.deliver()
        assert token_of(notice) not in caplog.text
        assert family.service.reset_password(token_of(notice), NEWER)

    def test_a_notice_is_given_up_after_the_policys_attempts(
            self, storage: Storage, clock: FakeClock) -> None:
        service = MergeService(storage, CountingVerifier(), clock, secret_key=KEY, links=LINKS,
                               policies=Policies(notice_attempts=2))
        mailer = CapturingMailer()
        Family(service, mailer).active(email="claire@example.org")
        service.request_password_reset("claire@example.org")
        mailer.fail = lambda notice: True
        assert [service.deliver_notices(mailer) for _ in range(2)] == [0, 0]
        mailer.fail = None
        assert service.deliver_notices(mailer) == 0
        assert [n.kind for n in mailer.sent] == [NoticeKind.EMAIL_VERIFICATION]

    def test_a_notice_keeps_its_id_from_one_attempt_to_the_next(self, family: Family) -> None:
        family.active(email="claire@example.org")
        family.service.request_password_reset("claire@example.org")
        seen: list[str | None] = []

        def fail_once(notice: Notice) -> bool:
            seen.append(notice.id)
            return len(seen) == 1

        family.mailer.fail = fail_once
        family.deliver()
        family.deliver()
        assert len(seen) == 2 and seen[0] == seen[1] and seen[0]

    def test_notices_come_from_events_the_host_published_too(self, family: Family) -> None:
        """Delivery keeps its own state: a host reading the outbox does not steal notices."""
        service = family.service
        letter = family.letter()
        service.activate(letter.login, letter.provisional_password, STRONG,
                         email="claire@example.org")
        service.mark_published([e.position for e in service.unpublished_events(1000)])
        (notice,) = family.deliver()
        assert notice.kind is NoticeKind.EMAIL_VERIFICATION
        assert service.unpublished_events() == []

    def test_the_limit_sends_the_oldest_first_and_the_rest_next_time(
            self, family: Family) -> None:
        for n in range(3):
            family.active(email=f"parent{n}@example.org", name=f"Parent Numéro {n}")
        for n in range(3):
            family.service.request_password_reset(f"parent{n}@example.org")
        assert [n.to for n in family.deliver(limit=2)] == [
            "parent0@example.org", "parent1@example.org"]
        assert [n.to for n in family.deliver()] == ["parent2@example.org"]

    def test_notices_are_in_french_by_default_and_in_english_on_demand(
            self, family: Family) -> None:
        family.active(email="claire@example.org")
        family.service.request_password_reset("claire@example.org")
        family.service.request_login_reminder("claire@example.org")
        sent = family.deliver(language="en")
        assert [n.language for n in sent] == ["en", "en"]
        assert sent[0].subject == "Resetting your password"
        assert sent[0].body.startswith("Hello Claire Robert,")
        fails("invalid_input", lambda: family.service.deliver_notices(family.mailer,
                                                                     language="de"))
        fails("invalid_input", lambda: family.service.deliver_notices(object()))  # type: ignore[arg-type]
        fails("invalid_input", lambda: family.service.deliver_notices(family.mailer, 0))

    def test_a_notices_repr_hides_its_body_and_link(self, family: Family) -> None:
        family.active(email="claire@example.org")
        family.service.request_password_reset("claire@example.org")
        (notice,) = family.deliver()
        assert token_of(notice) not in repr(notice) and "body" not in repr(notice)


class CoreOnly:
    """A store with the core tier only: its units of work lack the way back's tiers."""

    class Unit:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __enter__(self) -> CoreOnly.Unit:
            self._inner.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self._inner.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:
            if name in ("commit", "rollback", "fetch", "apply", "unpublished",
                        "audit_records"):
                return getattr(self._inner, name)
            raise AttributeError(name)

    def __init__(self) -> None:
        from account_merge import InMemoryStorage

        self.inner = InMemoryStorage()

    def unit_of_work(self, *, write: bool = True) -> CoreOnly.Unit:
        return CoreOnly.Unit(self.inner.unit_of_work(write=write))

    def write(self, changes: Any) -> None:
        from account_merge.ports import write_alone

        write_alone(self, changes)

    def close(self) -> None:
        pass


def test_a_store_without_a_tier_says_which_before_changing_anything() -> None:
    store = CoreOnly()
    service = MergeService(store, CountingVerifier(), FakeClock(), secret_key=KEY, links=LINKS)
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", COLLEGE.uai)])
    service.activate(letter.login, letter.provisional_password, STRONG)  # needs no tier
    before = service.unpublished_events(100)
    for call, tier in ((lambda: service.request_password_reset("claire.robert"), "email_index"),
                       (lambda: service.request_login_reminder("c@example.org"), "email_index"),
                       (lambda: service.deliver_notices(CapturingMailer()), "notices")):
        error = fails("not_supported", call)
        assert isinstance(error, NotSupported) and error.tier == tier
    assert service.unpublished_events(100) == before
    assert service.reissue_letter(COLLEGE, letter.account_id).login == letter.login
