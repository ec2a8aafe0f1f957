"""MergeService, use case by use case, on every store of the package."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import argon2
import pytest

from account_merge import (
    AccountStatus,
    Argon2Verifier,
    Child,
    MergeReceipt,
    MergeService,
    NotificationLetter,
    Role,
    Secret,
)
from account_merge.domain.events import AccountsMerged, MergeSplit
from account_merge.domain.receipts import MERGE_CONFIRMATION
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Fetch, Storage
from account_merge.service import same_display_name
from account_merge.testing import CountingVerifier, FakeClock, capture_events, make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
LYCEE = make_establishment(860002, "Lycée Camille Guérin")
DYLAN = Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)
FLORIAN = Child("ine-florian", "Florian", "Robert", COLLEGE.uai)
LEA = Child("ine-lea", "Léa", "Robert", LYCEE.uai)
STRONG = "Mot-de-passe-Sûr-2026"
OTHER_STRONG = "Autre-Mot-de-passe-2027"


def snapshot(service: MergeService, *account_ids: str) -> Any:
    """What a failed operation must leave untouched."""
    return (
        [(service.get_account(a), service.children(a)) for a in account_ids],
        service.unpublished_events(1000),
    )


def fails_with(code: str, service: MergeService, account_ids: list[str], call: Any) -> None:
    """The call raises *code* and changes nothing."""
    before = snapshot(service, *account_ids)
    with pytest.raises(AccountMergeError) as raised:
        call()
    assert raised.value.code == code, raised.value
    assert snapshot(service, *account_ids) == before


@pytest.fixture
def letters(service: MergeService) -> tuple[NotificationLetter, NotificationLetter]:
    return (service.issue_account(COLLEGE, "Claire Robert", [DYLAN]),
            service.issue_account(COLLEGE, "Claire Robert", [FLORIAN]))


def test_the_seed_story_from_letters_to_split(service: MergeService) -> None:
    """Two letters, one principal, one merge, then the collège splits."""
    dylan_letter = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
    florian_letter = service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
    assert dylan_letter.login != florian_letter.login

    principal = service.activate(dylan_letter.login, dylan_letter.provisional_password, STRONG)
    assert principal.status is AccountStatus.ACTIVE
    assert service.children(principal.id) == (DYLAN,)

    receipt = service.merge(principal.id, florian_letter.login,
                            florian_letter.provisional_password)
    assert receipt.message == MERGE_CONFIRMATION
    assert "Seul le compte avec lequel vous êtes connecté reste disponible" in receipt.message
    assert receipt.moved == (FLORIAN,)
    assert service.children(principal.id) == (DYLAN, FLORIAN)
    listed = service.attached_children(principal.id)
    assert [(a.child.first_name, a.responsable) for a in listed] == [
        ("Dylan", "Claire Robert"), ("Florian", "Claire Robert")]

    # The absorbed letter opens nothing any more; once its password is proven,
    # the parent is told where the account went.
    with pytest.raises(AccountMergeError) as raised:
        service.authenticate(florian_letter.login, florian_letter.provisional_password)
    assert raised.value.code == "account_merged"
    with pytest.raises(AccountMergeError) as raised:
        service.authenticate(florian_letter.login, "WRONG-PASSWORD")
    assert raised.value.code == "invalid_credentials"
    assert service.resolve(florian_letter.account_id).id == principal.id

    # A parent has no way to split: split() needs an Establishment the host vouches for.
    with pytest.raises(AccountMergeError) as raised:
        service.split(principal, principal.id)  # type: ignore[arg-type]
    assert raised.value.code == "invalid_input"

    split = service.split(COLLEGE, principal.id)
    assert split.moved == (FLORIAN,)
    assert service.children(principal.id) == (DYLAN,)
    assert service.children(split.letter.account_id) == (FLORIAN,)
    new_account = service.get_account(split.letter.account_id)
    assert new_account.status is AccountStatus.PROVISIONAL
    assert new_account.role is Role.RESPONSABLE
    assert split.letter.provisional_password.reveal() in split.letter.render()
    assert service.get_account(florian_letter.account_id).status is AccountStatus.MERGED


class TestIssue:
    def test_a_letter_carries_a_provisional_password_valid_ninety_days(
            self, service: MergeService, clock: FakeClock) -> None:
        letter = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        assert isinstance(letter.provisional_password, Secret)
        assert letter.expires_at - letter.issued_at == timedelta(days=90)
        assert letter.issued_at == clock()
        text = letter.render()
        assert letter.login in text and "Mot de passe provisoire" in text
        assert "Dylan Robert" in text and COLLEGE.name in text
        assert letter.provisional_password.reveal() not in repr(letter)

    def test_logins_stay_unique_for_a_common_name(self, service: MergeService) -> None:
        logins = {service.issue_account(COLLEGE, "Claire Robert", [DYLAN]).login
                  for _ in range(30)}
        assert len(logins) == 30

    @pytest.mark.parametrize("kwargs,field", [
        ({"display_name": ""}, "display_name"),
        ({"display_name": "x" * 101}, "display_name"),
        ({"display_name": "Claire\x07"}, "display_name"),
        ({"display_name": 42}, "display_name"),
        ({"children": []}, "children"),
        ({"children": [DYLAN, DYLAN]}, "children"),
        ({"children": [LEA]}, "children"),
        ({"children": "Dylan"}, "children"),
        ({"role": "responsable"}, "role"),
        ({"establishment": "0860001J"}, "establishment"),
        ({"email": "not-an-email"}, "email"),
    ])
    def test_bad_input_is_invalid_input_and_issues_nothing(
            self, service: MergeService, kwargs: dict[str, Any], field: str) -> None:
        args: dict[str, Any] = {"establishment": COLLEGE, "display_name": "Claire Robert",
                                "children": [DYLAN], **kwargs}
        with pytest.raises(AccountMergeError) as raised:
            service.issue_account(**args)
        assert raised.value.code == "invalid_input"
        assert field in str(raised.value)
        assert service.unpublished_events() == []

    def test_a_pupil_account_names_exactly_the_pupil(self, service: MergeService) -> None:
        letter = service.issue_account(COLLEGE, "Dylan Robert", [DYLAN], Role.ELEVE)
        assert service.get_account(letter.account_id).role is Role.ELEVE
        with pytest.raises(AccountMergeError):
            service.issue_account(COLLEGE, "Dylan Robert", [DYLAN, FLORIAN], Role.ELEVE)


def with_links(service: MergeService) -> MergeService:
    """The same service, with a secret key and links to send confirmations with."""
    return MergeService(service.storage, service.verifier, service.clock,
                        secret_key="a test secret key of the host",
                        links={"password_reset": "https://ent.example/mdp/{token}",
                               "email_verification": "https://ent.example/courriel/{token}"})


class TestActivate:
    def test_activation_replaces_the_provisional_password(
            self, service: MergeService, letters: Any) -> None:
        letter = letters[0]
        with capture_events(service) as captured:
            account = with_links(service).activate(letter.login, letter.provisional_password,
                                                   STRONG, email="claire@example.org")
        assert account.email is None  # on record once confirmed
        assert [getattr(e, "email", None) for e in captured.events] == [
            None, "claire@example.org"]
        assert service.authenticate(letter.login, STRONG).id == letter.account_id
        fails_with("invalid_credentials", service, [letter.account_id],
                   lambda: service.authenticate(letter.login, letter.provisional_password))
        fails_with("invalid_credentials", service, [letter.account_id],
                   lambda: service.activate(letter.login, letter.provisional_password,
                                            OTHER_STRONG))

    def test_a_provisional_password_expires(self, service: MergeService, clock: FakeClock,
                                            letters: Any) -> None:
        clock.advance(days=90)
        fails_with("invalid_credentials", service, [letters[0].account_id],
                   lambda: service.activate(letters[0].login, letters[0].provisional_password,
                                            STRONG))

    def test_the_login_is_matched_case_insensitively(self, service: MergeService,
                                                     letters: Any) -> None:
        account = service.activate(letters[0].login.upper(), letters[0].provisional_password,
                                   STRONG)
        assert account.id == letters[0].account_id

    @pytest.mark.parametrize("new", ["short", "alllowercasepass"])
    def test_a_weak_new_password_is_password_policy(self, service: MergeService, letters: Any,
                                                    new: str) -> None:
        fails_with("password_policy", service, [letters[0].account_id],
                   lambda: service.activate(letters[0].login, letters[0].provisional_password,
                                            new))

    def test_the_provisional_password_cannot_be_kept(self, service: MergeService) -> None:
        service_long = MergeService(service.storage, service.verifier, service.clock,
                                    provisional_length=16)
        letter = service_long.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        fails_with("password_policy", service, [letter.account_id],
                   lambda: service.activate(letter.login, letter.provisional_password,
                                            letter.provisional_password))

    def test_a_wrong_provisional_password_is_invalid_credentials(
            self, service: MergeService, letters: Any, verifier: CountingVerifier) -> None:
        verifier.reset()
        fails_with("invalid_credentials", service, [letters[0].account_id],
                   lambda: service.activate(letters[0].login, "WRONG234", STRONG))
        assert verifier.verifications == 1


class TestAccountManagement:
    def test_change_password_needs_the_current_one(self, service: MergeService,
                                                   letters: Any) -> None:
        account = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        fails_with("invalid_credentials", service, [account.id],
                   lambda: service.change_password(account.id, "Wrong-Password-1", OTHER_STRONG))
        service.change_password(account.id, STRONG, OTHER_STRONG)
        assert service.authenticate(account.login, OTHER_STRONG).id == account.id

    @pytest.mark.filterwarnings("ignore:change_email:DeprecationWarning")
    def test_change_email_asks_for_a_confirmation_and_is_deprecated(
            self, service: MergeService, letters: Any) -> None:
        account = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        service = with_links(service)
        with pytest.deprecated_call(), capture_events(service) as captured:
            assert service.change_email(account.id, "c.robert@example.org").email is None
        assert captured.names == ["email_verification_requested"]
        fails_with("invalid_input", service, [account.id],
                   lambda: service.change_email(account.id, "nope"))
        fails_with("invalid_input", service, [account.id],  # no way to send the link
                   lambda: MergeService(service.storage, service.verifier).change_email(
                       account.id, "x@example.org"))
        fails_with("principal_not_active", service, [letters[1].account_id],
                   lambda: service.change_email(letters[1].account_id, "x@example.org"))
        fails_with("account_not_found", service, [account.id],
                   lambda: service.change_email("missing", "x@example.org"))

    def test_authentication_rehashes_a_hash_made_with_old_parameters(
            self, storage: Storage, clock: FakeClock) -> None:
        old = Argon2Verifier(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1,
                                                   hash_len=16, salt_len=8), warn_if_weak=False)
        new = Argon2Verifier(argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1,
                                                   hash_len=16, salt_len=8), warn_if_weak=False)
        before = MergeService(storage, old, clock)
        letter = before.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        account = before.activate(letter.login, letter.provisional_password, STRONG)
        after = MergeService(storage, new, clock)
        after.authenticate(account.login, STRONG)
        with storage.unit_of_work(write=False) as uow:
            stored = uow.fetch(Fetch(accounts=[account.id])).accounts[account.id].credential
        assert stored is not None and not new.needs_rehash(stored.password_hash)
        assert after.authenticate(account.login, STRONG).id == account.id


class TestMerge:
    def test_an_activated_account_merges_with_its_current_password(
            self, service: MergeService, letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        other = service.activate(letters[1].login, letters[1].provisional_password,
                                 OTHER_STRONG)
        fails_with("invalid_credentials", service, [principal.id, other.id],
                   lambda: service.merge(principal.id, other.login,
                                         letters[1].provisional_password))
        with capture_events(service) as captured:
            receipt = service.merge(principal.id, other.login, OTHER_STRONG)
        assert receipt.absorbed_id == other.id
        assert captured.of_type(AccountsMerged) == [AccountsMerged(
            service.clock(), principal.id, other.id, (FLORIAN.id,))]
        fails_with("account_merged", service, [principal.id, other.id],
                   lambda: service.authenticate(other.login, OTHER_STRONG))
        fails_with("invalid_credentials", service, [principal.id, other.id],
                   lambda: service.merge(principal.id, other.login, OTHER_STRONG))

    def test_a_child_already_held_stays_once(self, service: MergeService) -> None:
        first = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        second = service.issue_account(COLLEGE, "Claire Robert", [DYLAN, FLORIAN])
        principal = service.activate(first.login, first.provisional_password, STRONG)
        receipt = service.merge(principal.id, second.login, second.provisional_password)
        assert receipt.moved == (FLORIAN,)
        assert service.children(principal.id) == (DYLAN, FLORIAN)

    def test_a_chain_of_merges_resolves_in_one_hop(self, service: MergeService) -> None:
        a, b, c = (service.issue_account(COLLEGE, "Claire Robert", [kid])
                   for kid in (DYLAN, FLORIAN, Child("ine-tom", "Tom", "Robert", COLLEGE.uai)))
        pa = service.activate(a.login, a.provisional_password, STRONG)
        pc = service.activate(c.login, c.provisional_password, OTHER_STRONG)
        service.merge(pa.id, b.login, b.provisional_password)
        service.merge(pc.id, a.login, STRONG)
        assert service.get_account(b.account_id).merged_into == pc.id
        assert service.resolve(b.account_id).id == pc.id
        assert {k.id for k in service.children(pc.id)} == {"ine-dylan", "ine-florian", "ine-tom"}

    def test_every_credential_failure_is_the_same_error_with_one_verification(
            self, service: MergeService, clock: FakeClock, verifier: CountingVerifier,
            letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        merged = service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
        service.merge(principal.id, merged.login, merged.provisional_password)
        expiring = service.issue_account(COLLEGE, "Marc Robert", [FLORIAN])
        other_principal = service.issue_account(COLLEGE, "Marc Robert", [DYLAN])
        other = service.activate(other_principal.login, other_principal.provisional_password,
                                 STRONG)
        clock.advance(days=91)
        cases = {
            "unknown login": ("nobody.here", "2BUYJ9C8"),
            "wrong password": (letters[1].login, "2BUYJ9C8"),
            "merged account": (merged.login, merged.provisional_password),
            "expired provisional": (expiring.login, expiring.provisional_password),
            "used provisional": (letters[0].login, letters[0].provisional_password),
        }
        for name, (login, password) in cases.items():
            verifier.reset()
            with pytest.raises(AccountMergeError) as raised:
                service.merge(other.id, login, password)
            assert raised.value.code == "invalid_credentials", name
            assert str(raised.value) == "invalid login or password [invalid_credentials]"
            assert verifier.verifications == 1, name

    def test_merging_into_a_provisional_account_is_principal_not_active(
            self, service: MergeService, letters: Any) -> None:
        fails_with("principal_not_active", service, [a.account_id for a in letters],
                   lambda: service.merge(letters[0].account_id, letters[1].login,
                                         letters[1].provisional_password))

    def test_merging_into_an_absorbed_account_is_principal_not_active(
            self, service: MergeService, letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        other = service.activate(letters[1].login, letters[1].provisional_password,
                                 OTHER_STRONG)
        service.merge(principal.id, other.login, OTHER_STRONG)
        third = service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
        fails_with("principal_not_active", service, [principal.id, other.id, third.account_id],
                   lambda: service.merge(other.id, third.login, third.provisional_password))

    def test_a_pupil_account_is_not_responsable_either_side(self, service: MergeService,
                                                            letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        pupil = service.issue_account(COLLEGE, "Dylan Robert", [DYLAN], Role.ELEVE)
        fails_with("not_responsable", service, [principal.id, pupil.account_id],
                   lambda: service.merge(principal.id, pupil.login, pupil.provisional_password))
        pupil_account = service.activate(pupil.login, pupil.provisional_password, OTHER_STRONG)
        fails_with("not_responsable", service, [pupil_account.id, letters[1].account_id],
                   lambda: service.merge(pupil_account.id, letters[1].login,
                                         letters[1].provisional_password))

    def test_merging_an_account_into_itself_is_same_account(self, service: MergeService,
                                                            letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        fails_with("same_account", service, [principal.id],
                   lambda: service.merge(principal.id, principal.login, STRONG))

    def test_an_unknown_principal_is_account_not_found(self, service: MergeService,
                                                       letters: Any) -> None:
        fails_with("account_not_found", service, [letters[1].account_id],
                   lambda: service.merge("missing", letters[1].login,
                                         letters[1].provisional_password))

    @pytest.mark.parametrize("args", [
        (None, "login", "pw"), ("p", None, "pw"), ("p", "login", None), ("p", "", "pw"),
        ("p", "x" * 65, "pw"), ("p", "login", "x" * 1025), ("p", "lo\x00gin", "pw"),
        ("p", "login", "pw", "bad key"), ("p p", "login", "pw"),
    ])
    def test_malformed_arguments_are_invalid_input(self, service: MergeService, letters: Any,
                                                   args: tuple[Any, ...]) -> None:
        fails_with("invalid_input", service, [letters[1].account_id],
                   lambda: service.merge(*args))

    def test_an_identity_rule_can_refuse(self, storage: Storage, clock: FakeClock) -> None:
        service = MergeService(storage, CountingVerifier(), clock,
                               identity_rule=same_display_name)
        mine = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        theirs = service.issue_account(COLLEGE, "Marc Durand", [FLORIAN])
        principal = service.activate(mine.login, mine.provisional_password, STRONG)
        fails_with("not_authorized", service, [principal.id, theirs.account_id],
                   lambda: service.merge(principal.id, theirs.login,
                                         theirs.provisional_password))

    def test_a_retry_with_the_idempotency_key_returns_the_first_receipt(
            self, service: MergeService, letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        first = service.merge(principal.id, letters[1].login, letters[1].provisional_password,
                              idempotency_key="form-123")
        before = snapshot(service, principal.id, letters[1].account_id)
        again = service.merge(principal.id, letters[1].login, letters[1].provisional_password,
                              idempotency_key="form-123")
        assert isinstance(again, MergeReceipt) and again == first
        assert snapshot(service, principal.id, letters[1].account_id) == before

    def test_every_merge_is_audited_without_the_password(self, service: MergeService,
                                                         letters: Any) -> None:
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        with pytest.raises(AccountMergeError):
            service.merge(principal.id, letters[1].login, "WRONG234")
        service.merge(principal.id, letters[1].login, letters[1].provisional_password)
        trail = service.audit_trail(principal.id)
        assert [(r.action.value, r.outcome) for r in trail[-2:]] == [
            ("merge", "invalid_credentials"), ("merge", "success")]
        assert letters[1].provisional_password.reveal() not in repr(trail)


class TestSplit:
    @pytest.fixture
    def merged(self, service: MergeService) -> Any:
        dylan = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        florian = service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
        lea = service.issue_account(LYCEE, "Claire Robert", [LEA])
        principal = service.activate(dylan.login, dylan.provisional_password, STRONG)
        service.merge(principal.id, florian.login, florian.provisional_password)
        service.merge(principal.id, lea.login, lea.provisional_password)
        return principal, florian, lea

    def test_an_establishment_moves_only_its_own_merged_children(
            self, service: MergeService, merged: Any) -> None:
        principal, _, _ = merged
        with capture_events(service) as captured:
            receipt = service.split(LYCEE, principal.id)
        assert receipt.moved == (LEA,)
        assert service.children(principal.id) == (DYLAN, FLORIAN)
        assert receipt.letter.establishment == LYCEE
        assert captured.of_type(MergeSplit)[0].moved_child_ids == (LEA.id,)
        # Léa has gone: the lycée has no say over this account any more.
        fails_with("not_authorized", service, [principal.id],
                   lambda: service.split(LYCEE, principal.id))

    def test_an_establishment_with_no_child_there_is_not_authorized(
            self, service: MergeService, merged: Any) -> None:
        principal, _, _ = merged
        other = make_establishment(860003, "Collège Voisin")
        service.issue_account(other, "Quelqu'un", [Child("ine-x", "X", "Y", other.uai)])
        fails_with("not_authorized", service, [principal.id],
                   lambda: service.split(other, principal.id))
        unknown = make_establishment(860099, "Inconnu")
        fails_with("not_authorized", service, [principal.id],
                   lambda: service.split(unknown, principal.id))

    def test_children_from_the_own_letter_are_nothing_to_split(
            self, service: MergeService) -> None:
        letter = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        principal = service.activate(letter.login, letter.provisional_password, STRONG)
        fails_with("nothing_to_split", service, [principal.id],
                   lambda: service.split(COLLEGE, principal.id))

    def test_splitting_an_absorbed_id_splits_its_holder(self, service: MergeService,
                                                        merged: Any) -> None:
        principal, florian, _ = merged
        receipt = service.split(COLLEGE, florian.account_id)
        assert receipt.principal_id == principal.id
        assert service.get_account(florian.account_id).status is AccountStatus.MERGED

    def test_the_new_letter_activates_and_the_old_one_stays_dead(
            self, service: MergeService, merged: Any) -> None:
        principal, florian, _ = merged
        receipt = service.split(COLLEGE, principal.id)
        fails_with("invalid_credentials", service, [florian.account_id],
                   lambda: service.activate(florian.login, florian.provisional_password, STRONG))
        new = service.activate(receipt.letter.login, receipt.letter.provisional_password,
                               OTHER_STRONG)
        assert service.children(new.id) == (FLORIAN,)

    def test_an_unknown_account_is_account_not_found(self, service: MergeService,
                                                     merged: Any) -> None:
        fails_with("account_not_found", service, [merged[0].id],
                   lambda: service.split(COLLEGE, "missing"))


class TestReading:
    def test_unknown_ids_are_account_not_found(self, service: MergeService) -> None:
        for call in (service.get_account, service.resolve, service.children):
            with pytest.raises(AccountMergeError) as raised:
                call("missing")
            assert raised.value.code == "account_not_found"

    def test_a_host_reads_events_in_order_and_marks_them_published(
            self, service: MergeService, letters: Any) -> None:
        entries = service.unpublished_events()
        assert [e.event.name for e in entries] == ["account_issued", "account_issued"]
        service.mark_published([entries[0].position])
        assert service.unpublished_events() == entries[1:]

    def test_a_clock_giving_naive_datetimes_is_refused(self, storage: Storage) -> None:
        from datetime import datetime

        service = MergeService(storage, CountingVerifier(), lambda: datetime(2026, 9, 1))
        with pytest.raises(AccountMergeError) as raised:
            service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        assert raised.value.code == "invalid_input"


class TestFindAccount:
    def test_staff_find_an_account_by_its_login_in_any_case(self, service: MergeService,
                                                            letters: Any) -> None:
        assert service.find_account(letters[0].login.upper()).id == letters[0].account_id

    def test_an_unknown_login_is_account_not_found(self, service: MergeService) -> None:
        with pytest.raises(AccountMergeError) as raised:
            service.find_account("nobody.here")
        assert raised.value.code == "account_not_found"
