"""Optional tier ``retention``, the purge on the store: :class:`PurgeContract`."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta

import attrs
import pytest

from account_merge.domain.audit import AuditAction
from account_merge.domain.events import AccountPurged
from account_merge.domain.notices import NoticeKind
from account_merge.domain.register import RegisterEntry
from account_merge.domain.retention import (
    RetentionPolicy,
)
from account_merge.exceptions import AccountMergeError, AccountNotFound
from account_merge.ports.register import Register, RegisterFetch
from account_merge.ports.storage import Storage
from account_merge.ports.tiers import require_tier, supports
from account_merge.service import MergeService
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier, race
from account_merge.testing.conformance.harness import (
    OTHER_SCHOOL,
    SCHOOL,
    STRONG,
    T0,
    StorageHarness,
    _child,
)
from account_merge.testing.conformance.recovery import _LINKS, _deliver_notices_or_skip, _token
from account_merge.testing.conformance.retention_tier import (
    _DAY,
    _KEEP_THE_REST,
    _RETENTION_KEY,
    _retention_tier,
)


class PurgeContract(StorageHarness):
    """Tier ``retention`` on the store: the purge deletes what the policy says, and no more.

    :meth:`test_a_purged_account_leaves_nothing_that_names_it` reads every
    row the store holds, through :meth:`StorageHarness.dump_storage` (it is
    skipped when the hook gives None), so that a table added later is
    looked at too.
    """

    # -- the purge on this store --------------------------------------------------------------
    def _service(self, storage: Storage, clock: FakeClock,
                 retention: RetentionPolicy | None = None) -> MergeService:
        made = MergeService(storage, fast_verifier(), clock, secret_key=_RETENTION_KEY,
                            links=_LINKS, retention=retention)
        for school in (SCHOOL, OTHER_SCHOOL):
            made.register_establishment(school)
        return made

    def test_a_purge_deletes_each_account_when_the_policy_says(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock)
        never = service.issue_account(SCHOOL, "Paul Martin", [_child(1)])
        used_once = self.family(service, "Inès Durand", kids=(2,))[0]
        principal, (letter,) = self.family(service, "Claire Robert", kids=(3, 4))
        service.merge(principal.id, letter.login, letter.provisional_password)
        clock.advance(days=89)
        service.authenticate(principal.login, STRONG)
        assert service.purge().accounts == 0
        clock.advance(days=1)  # the letters expire: 90 days after their issue
        report = service.purge()
        assert report.deleted == {"unactivated": 1}
        assert report.account_ids == (never.account_id,)
        assert report.erased_hashes == 2  # the letter never used, and the merged one's
        with pytest.raises(AccountMergeError):
            service.get_account(never.account_id)
        clock.set(T0 + 365 * _DAY - timedelta(seconds=1))
        assert service.purge().accounts == 0
        clock.set(T0 + 365 * _DAY)  # used_once signed in last at its activation
        assert service.purge().deleted == {"unused": 1}
        assert service.resolve(letter.account_id).id == principal.id  # the redirect stays
        clock.set(T0 + (89 + 365) * _DAY)
        report = service.purge()
        assert report.deleted == {"unused": 1, "absorbed": 1}
        assert set(report.account_ids) == {principal.id, letter.account_id}
        for gone in (used_once.id, principal.id, letter.account_id):
            with pytest.raises(AccountMergeError):
                service.get_account(gone)
        assert service.purge().accounts == 0

    def test_a_dry_run_reports_what_the_purge_deletes_and_changes_nothing(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock)
        letters = [service.issue_account(SCHOOL, f"Parent Numéro {n}", [_child(n)])
                   for n in range(1, 4)]
        principal = self.family(service, kids=(4,))[0]
        service.merge(principal.id, letters[0].login, letters[0].provisional_password)
        clock.advance(days=400)
        before = self.dump_storage(storage)
        dry = service.purge(dry_run=True)
        assert dry.dry_run
        if before is not None:
            assert self.dump_storage(storage) == before
        assert service.get_account(letters[1].account_id)
        done = service.purge()
        assert attrs.evolve(dry, dry_run=False) == done
        assert done.deleted == {"unactivated": 2, "unused": 1, "absorbed": 1}

    def test_two_purges_at_once_delete_each_account_once(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock, RetentionPolicy(batch=2))
        ids = [service.issue_account(SCHOOL, f"Parent Numéro {n}", [_child(n)]).account_id
               for n in range(1, 8)]
        clock.advance(days=91)
        reports = race(2, lambda _: service.purge(), catch=())
        assert sorted(i for r in reports for i in r.account_ids) == sorted(ids), reports
        assert service.purge().accounts == 0

    def test_the_parents_data_lists_everything_the_store_holds_about_the_account(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock)
        principal, (letter,) = self.family(service, kids=(1, 2))
        service.authenticate(principal.login, STRONG, client="203.0.113.7")
        with contextlib.suppress(AccountMergeError):
            service.authenticate(principal.login.upper(), "WRONG-password-1", client="x")
        service.merge(principal.id, letter.login, letter.provisional_password, "idem-1")
        data = service.export_personal_data(principal.id)
        assert json.loads(json.dumps(data)) == data
        assert data["format"] == "account_merge.personal_data/1"
        assert data["account"]["login"] == principal.login
        assert data["credential"] == {"kind": "password", "expires_at": None,
                                      "letter_issued_at": None}
        assert [c["id"] for c in data["children"]] == ["ine-1", "ine-2"]
        assert data["children"][1]["origin_account_id"] == letter.account_id
        assert [a["id"] for a in data["absorbed_accounts"]] == [letter.account_id]
        assert data["establishments"] == {SCHOOL.uai: SCHOOL.name}
        actions = [(r["action"], r["outcome"]) for r in data["audit"]]
        assert ("activate", "success") in actions
        assert ("authenticate", "invalid_credentials") in actions  # found by the login typed
        assert ("merge", "success") in actions
        assert {c["key"].split(":")[0] for c in data["counters"]} <= {"signin", "principal"}
        assert [c["consecutive"] for c in data["counters"] if c["consecutive"]] == [1]
        assert data["merge_receipts"][0]["idempotency_key"] == "idem-1"
        assert [e["name"] for e in data["events"]] == [
            "account_issued", "account_activated", "accounts_merged"]
        absorbed = service.export_personal_data(letter.account_id)
        assert absorbed["account"]["merged_into"] == principal.id
        assert absorbed["credential"]["kind"] == "provisional"

    def _register_or_skip(self, storage: Storage) -> None:
        _retention_tier(storage)
        with storage.unit_of_work(write=False) as uow:
            if not supports(uow, Register):
                pytest.skip("this store lacks the register tier")

    def test_a_closed_account_goes_three_months_after_its_closure_and_its_entry_is_new_again(
            self, storage: Storage, clock: FakeClock) -> None:
        """The export lists the register entries and the closure; the purge deletes the
        closed account with its records and closure; listed again, the responsable gets
        a new letter."""
        self._register_or_skip(storage)
        service = self._service(storage, clock)
        helene = RegisterEntry("PERSONNE-4242", "Hélène Lefèvre", [_child(1)],
                               email="helene@example.org")
        marc = RegisterEntry("PERSONNE-77", "Marc Martin", [_child(2)])
        letters = {l.display_name: l for l in service.sync_register(
            SCHOOL, [helene, marc], workers=1).letters}
        for letter in letters.values():
            service.activate(letter.login, letter.provisional_password, STRONG)
        account_id = letters["Hélène Lefèvre"].account_id
        data = service.export_personal_data(account_id)
        assert data["register"] == [{
            "establishment_uai": SCHOOL.uai, "external_id": "PERSONNE-4242",
            "account_id": account_id, "display_name": "Hélène Lefèvre",
            "email": "helene@example.org", "children": [{
                "id": "ine-1", "first_name": "Enfant1", "last_name": "Robert",
                "establishment_uai": SCHOOL.uai}]}]
        assert data["closure"] is None
        clock.advance(days=10)
        closed_at = clock()
        assert [c.account_id for c in service.sync_register(
            SCHOOL, [marc], workers=1).closed] == [account_id]
        data = service.export_personal_data(account_id)
        assert data["closure"] == {"establishment_uai": SCHOOL.uai,
                                   "closed_at": closed_at.isoformat()}
        assert data["register"][0]["children"] == []
        assert json.loads(json.dumps(data)) == data
        clock.advance(days=90, seconds=-1)
        assert service.purge().accounts == 0
        clock.advance(seconds=1)  # 90 days after the closure
        report = service.purge()
        assert report.deleted == {"closed": 1}
        assert report.account_ids == (account_id,)
        purged = [e.event for e in service.unpublished_events(1000)
                  if isinstance(e.event, AccountPurged)]
        assert [(e.reason, e.establishment_uai) for e in purged] == [("closed", SCHOOL.uai)]
        with pytest.raises(AccountNotFound):
            service.get_account(account_id)
        with storage.unit_of_work(write=False) as uow:
            found = require_tier(uow, Register).register_fetch(RegisterFetch(
                entries=[(SCHOOL.uai, "PERSONNE-4242")], accounts=[account_id],
                closures=[account_id]))
        assert found.entries == {} and found.by_account == {account_id: ()}
        assert found.closures == {}
        again = service.sync_register(SCHOOL, [helene, marc], workers=1)
        assert [(i.external_id, i.letter is not None) for i in again.issued] == [
            ("PERSONNE-4242", True)]
        assert again.letters[0].account_id != account_id
        assert service.purge().accounts == 0

    def test_a_due_account_holding_an_enrolled_childs_only_link_is_kept(
            self, storage: Storage, clock: FakeClock) -> None:
        """A never-activated letter goes when another account holds its children, and
        stays while it holds the only link of a child the register lists."""
        self._register_or_skip(storage)
        service = self._service(storage, clock)
        entries = [RegisterEntry("R1", "Claire Robert", [_child(1)]),
                   RegisterEntry("R2", "Marc Robert", [_child(1), _child(2)]),
                   RegisterEntry("R3", "Paul Martin", [_child(3)])]
        letters = {l.display_name: l for l in service.sync_register(
            SCHOOL, entries, workers=1).letters}
        marc = letters["Marc Robert"]
        service.activate(marc.login, marc.provisional_password, STRONG)
        clock.advance(days=91)
        dry = service.purge(dry_run=True)
        report = service.purge()
        assert attrs.evolve(dry, dry_run=False) == report
        assert report.deleted == {"unactivated": 1}
        assert report.account_ids == (letters["Claire Robert"].account_id,)
        assert report.kept_for_children == 1
        assert service.children(letters["Paul Martin"].account_id) == (_child(3),)
        again = service.sync_register(SCHOOL, entries, workers=1)
        assert [i.external_id for i in again.issued] == ["R1"]
        assert [c.id for c in service.children(again.letters[0].account_id)] == ["ine-1"]

    def test_a_purged_accounts_register_entries_leave_nothing_that_names_it(
            self, storage: Storage, clock: FakeClock) -> None:
        """The register's records, closures and indexes are searched too."""
        self._register_or_skip(storage)
        if self.dump_storage(storage) is None:
            pytest.skip("dump_storage() not implemented for this store")
        service = self._service(storage, clock, _KEEP_THE_REST)
        helene = RegisterEntry("PERSONNE-4242", "Hélène Lefèvre", [_child(1)],
                               email="helene@example.org")
        marc = RegisterEntry("PERSONNE-77", "Marc Martin", [_child(2)])
        letters = {l.display_name: l for l in service.sync_register(
            SCHOOL, [helene, marc], workers=1).letters}
        for letter in letters.values():
            service.activate(letter.login, letter.provisional_password, STRONG)
        gone = letters["Hélène Lefèvre"]
        service.sync_register(SCHOOL, [helene, marc], workers=1)  # nothing changes
        clock.advance(days=10)
        service.sync_register(SCHOOL, [marc], workers=1)  # closes Hélène's account
        names = [gone.account_id, gone.login, "Hélène Lefèvre", "helene@example.org",
                 "PERSONNE-4242"]
        before = self.dump_storage(storage)
        assert before is not None
        assert all(name.casefold() in before.casefold() for name in names)
        clock.advance(days=90)
        assert service.purge().deleted == {"closed": 1}
        after = self.dump_storage(storage)
        assert after is not None
        left = [name for name in names if name.casefold() in after.casefold()]
        assert not left, f"{left} still in the store:\n{after}"
        for kept in (letters["Marc Martin"].account_id, "Marc Martin", "PERSONNE-77"):
            assert kept.casefold() in after.casefold()

    def test_a_purged_account_leaves_nothing_that_names_it(
            self, storage: Storage, clock: FakeClock) -> None:
        """After a purge no row holds the deleted accounts' ids, logins, names or address.

        The parent's history touches every table: a letter given with an
        address, activation, the address confirmed, sign-ins right and
        wrong from two clients, the way back's requests, notices sent, a
        merge with an idempotency key, a failed merge, a split by another
        school (whose new account is never activated), events published or
        not.  Audit records, events and counters are kept long here, so
        that what goes is what deleting the accounts deletes.  Only
        pseudonymised audit records remain.
        """
        _retention_tier(storage)
        if self.dump_storage(storage) is None:
            pytest.skip("dump_storage() not implemented for this store")
        service = self._service(storage, clock, _KEEP_THE_REST)
        mailer = CapturingMailer()
        first = service.issue_account(SCHOOL, "Claire Robert", [_child(1, first="Dylan")],
                                      email="Claire.Robert@Example.org")
        service.activate(first.login, first.provisional_password, STRONG)
        _deliver_notices_or_skip(service, storage, mailer)
        link = _token(mailer.last(NoticeKind.EMAIL_VERIFICATION))
        service.confirm_email(link)
        second = service.issue_account(SCHOOL, "Claire Robert", [_child(2, first="Florian")])
        lycee = service.issue_account(OTHER_SCHOOL, "Claire Robert",
                                      [_child(3, OTHER_SCHOOL.uai, first="Lucie")])
        for login, client in ((first.login, None), (first.login.upper(), "198.51.100.4")):
            with contextlib.suppress(AccountMergeError):
                service.authenticate(login, "Wrong-Password-2026", client=client)
        service.authenticate(first.login, STRONG, client="198.51.100.4")
        with contextlib.suppress(AccountMergeError):
            service.merge(first.account_id, second.login, "WRONGPW9")
        service.merge(first.account_id, second.login, second.provisional_password, "idem")
        service.merge(first.account_id, lycee.login, lycee.provisional_password)
        service.request_password_reset("claire.robert@example.org", client="198.51.100.4")
        service.request_login_reminder("CLAIRE.ROBERT@EXAMPLE.ORG")
        service.deliver_notices(mailer)
        split = service.split(OTHER_SCHOOL, first.account_id)
        service.mark_published([e.position for e in service.unpublished_events(3)])
        marc = self.family(service, "Marc Martin", kids=(9,))[0]
        names = [first.account_id, second.account_id, lycee.account_id,
                 split.new_account_id, first.login, second.login, lycee.login,
                 split.letter.login, "Claire Robert", "claire.robert@example.org",
                 "Dylan", "Florian", "Lucie", "ine-1", "ine-2", "ine-3"]
        before = self.dump_storage(storage)
        assert before is not None
        assert all(name.casefold() in before.casefold() for name in names)
        # Never stored at all: the client's address (a digest only), the links' tokens.
        assert "198.51.100.4" not in before and link not in before

        clock.advance(days=91)  # the split's letter is never used
        service.authenticate(marc.login, STRONG)
        assert service.purge().deleted == {"unactivated": 1}
        clock.advance(days=365)  # the principal is not used for a year
        service.authenticate(marc.login, STRONG)
        assert service.purge().deleted == {"unused": 1, "absorbed": 2}

        after = self.dump_storage(storage)
        assert after is not None
        left = [name for name in names if name.casefold() in after.casefold()]
        assert not left, f"{left} still in the store:\n{after}"
        for kept in (marc.id, marc.login, "Marc Martin", "ine-9"):
            assert kept.casefold() in after.casefold()
        with storage.unit_of_work(write=False) as uow:
            trail = uow.audit_records(None, 1000)
        merges = [r for r in trail if r.action is AuditAction.MERGE and r.outcome == "success"]
        # Each keeps the establishment of the account it was about (the absorbed one).
        assert sorted(r.detail or "" for r in merges) == [
            f"pseudonymised; establishment {SCHOOL.uai}",
            f"pseudonymised; establishment {OTHER_SCHOOL.uai}"]
