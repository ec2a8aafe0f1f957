"""The way back, optional tiers ``email_index`` and ``notices``: their mixins,
:class:`EmailIndexContract` and :class:`NoticesContract`, and the helpers for
notices and their links that the retention contract uses too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest

from account_merge.domain.account import AccountStatus
from account_merge.domain.events import AccountActivated
from account_merge.domain.notices import Notice, NoticeKind, NoticeState, NoticeStatus
from account_merge.ports.storage import ChangeSet, Storage
from account_merge.ports.tiers import EmailIndex, Notices, require_tier, supports
from account_merge.service import MergeService
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier
from account_merge.testing.conformance.harness import (
    SCHOOL,
    STRONG,
    T0,
    StorageHarness,
    _account,
    _child,
    _new,
)


# -- the way back: tiers email_index and notices -------------------------------------------
class EmailIndexContract(StorageHarness):
    """Tier ``email_index``: accounts found by the key of their address, in the unit of work."""

    @staticmethod
    def _index(storage: Storage) -> Any:
        with storage.unit_of_work() as uow:
            if not supports(uow, EmailIndex):
                pytest.skip("this store lacks the email_index tier")

    def test_accounts_are_found_by_key_whatever_their_status_in_id_order(
            self, storage: Storage) -> None:
        self._index(storage)
        self.apply(storage, _new(1, 2, 3) + ChangeSet(
            accounts=[_account(2, status=AccountStatus.ACTIVE, email="c@example.org")]))
        with storage.unit_of_work() as uow:
            index: EmailIndex = require_tier(uow, EmailIndex)
            for n in (3, 1, 2):
                index.index_email(f"acc{n}", "c@example.org")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            index = require_tier(uow, EmailIndex)
            found = index.accounts_by_email("c@example.org", 10)
            assert [r.account.id for r in found] == ["acc1", "acc2", "acc3"]
            assert found[1].account.email == "c@example.org"
            assert [r.account.id for r in index.accounts_by_email("c@example.org", 2)] == [
                "acc1", "acc2"]
            assert index.accounts_by_email("nobody@example.org", 10) == []

    def test_an_entry_is_replaced_removed_and_rolled_back(self, storage: Storage) -> None:
        self._index(storage)
        self.apply(storage, _new(1, 2))
        with storage.unit_of_work() as uow:
            index: EmailIndex = require_tier(uow, EmailIndex)
            index.index_email("acc1", "old@example.org")
            index.index_email("acc2", "old@example.org")
            uow.commit()
            index.index_email("acc1", "new@example.org")
            index.index_email("acc2", None)
            uow.commit()
            index.index_email("acc1", "rolled.back@example.org")
        with storage.unit_of_work(write=False) as uow:
            index = require_tier(uow, EmailIndex)
            assert index.accounts_by_email("old@example.org", 10) == []
            assert [r.account.id for r in index.accounts_by_email("new@example.org", 10)] == [
                "acc1"]
            assert index.accounts_by_email("rolled.back@example.org", 10) == []

    def test_a_parent_recovers_a_password_by_address_on_this_store(
            self, storage: Storage, clock: FakeClock) -> None:
        self._index(storage)
        service = MergeService(storage, fast_verifier(), clock, secret_key=_KEY, links=_LINKS)
        mailer = CapturingMailer()
        letter = service.issue_account(SCHOOL, "Claire Robert", [_child(1)])
        service.activate(letter.login, letter.provisional_password, STRONG,
                         email="claire@example.org")
        _deliver_notices_or_skip(service, storage, mailer)
        service.confirm_email(_token(mailer.last(NoticeKind.EMAIL_VERIFICATION)))
        service.request_password_reset("CLAIRE@example.org")
        service.deliver_notices(mailer)
        notice = mailer.last(NoticeKind.PASSWORD_RESET)
        assert notice.to == "claire@example.org"
        service.reset_password(_token(notice), "Tournesol-Bleu-Vif-2028")
        assert service.authenticate(letter.login, "Tournesol-Bleu-Vif-2028")


_KEY = "a secret key of the conformance suite"
_LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
          "email_verification": "https://ent.example/courriel/{token}"}


def _token(notice: Notice) -> str:
    assert notice.url is not None
    return notice.url.rsplit("/", 1)[1]


def _deliver_notices_or_skip(service: MergeService, storage: Storage,
                             mailer: CapturingMailer) -> None:
    with storage.unit_of_work(write=False) as uow:
        if not supports(uow, Notices):
            pytest.skip("this store lacks the notices tier")
    service.deliver_notices(mailer)


class NoticesContract(StorageHarness):
    """Tier ``notices``: the delivery state of notices, apart from the host's outbox reading."""

    @staticmethod
    def _tier(storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            if not supports(uow, Notices):
                pytest.skip("this store lacks the notices tier")

    @staticmethod
    def _state(position: int, role: str, **changes: Any) -> NoticeState:
        return attrs.evolve(NoticeState(f"{position}.{role}", position, role), **changes)

    def test_the_outbox_reads_after_a_position_published_or_not(self, storage: Storage) -> None:
        self._tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, f"acc{n}")
                                              for n in range(1, 5)]))
        self.apply(storage, ChangeSet(published=[1, 2]))
        with storage.unit_of_work(write=False) as uow:
            notices: Notices = require_tier(uow, Notices)
            assert notices.notice_cursor() == 0
            entries = notices.outbox_after(1, 2)
            assert [(e.position, e.published) for e in entries] == [(2, True), (3, False)]
            assert [e.event for e in entries] == [AccountActivated(T0, "acc2"),
                                                  AccountActivated(T0, "acc3")]
            assert notices.outbox_after(4, 10) == []

    def test_notices_are_added_once_and_the_cursor_only_rises(self, storage: Storage) -> None:
        self._tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a"),
                                              AccountActivated(T0, "b")]))
        with storage.unit_of_work() as uow:
            notices: Notices = require_tier(uow, Notices)
            notices.add_notices([self._state(2, "owner"), self._state(1, "owner"),
                                 self._state(1, "other")], 2)
            uow.commit()
            # A second delivery adds the same notices: the stored ones are left as they are.
            notices.update_notices([self._state(1, "owner", status=NoticeStatus.SENT,
                                                attempts=1, updated_at=T0)])
            notices.add_notices([self._state(1, "owner")], 1)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            notices = require_tier(uow, Notices)
            assert notices.notice_cursor() == 2
            pending = notices.pending_notices(10)
            assert [(s.id, e.position) for s, e in pending] == [("1.other", 1), ("2.owner", 2)]
            assert pending[1][1].event == AccountActivated(T0, "b")
            assert [s.id for s, _ in notices.pending_notices(1)] == ["1.other"]

    def test_states_are_updated_unknown_ones_ignored_and_all_rolled_back(
            self, storage: Storage) -> None:
        self._tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a")]))
        with storage.unit_of_work() as uow:
            notices: Notices = require_tier(uow, Notices)
            notices.add_notices([self._state(1, "owner")], 1)
            uow.commit()
            failed = self._state(1, "owner", attempts=2, updated_at=T0 + timedelta(minutes=5))
            notices.update_notices([failed, self._state(9, "ghost")])
            uow.commit()
            notices.update_notices([self._state(1, "owner", status=NoticeStatus.DROPPED)])
            notices.add_notices([self._state(1, "late")], 5)
        with storage.unit_of_work(write=False) as uow:
            notices = require_tier(uow, Notices)
            assert [s for s, _ in notices.pending_notices(10)] == [failed]
            assert notices.notice_cursor() == 1

    def test_notices_are_delivered_from_this_store(self, storage: Storage,
                                                   clock: FakeClock) -> None:
        self._tier(storage)
        service = MergeService(storage, fast_verifier(), clock, secret_key=_KEY, links=_LINKS)
        failed: list[Notice] = []

        def fail_once(notice: Notice) -> bool:
            first = not failed
            failed.append(notice)
            return first

        mailer = CapturingMailer(fail=fail_once)
        letter = service.issue_account(SCHOOL, "Claire Robert", [_child(1)])
        service.activate(letter.login, letter.provisional_password, STRONG,
                         email="claire@example.org")
        assert service.deliver_notices(mailer) == 0
        assert service.deliver_notices(mailer) == 1
        assert service.deliver_notices(mailer) == 0
        (notice,) = mailer.sent
        assert [n.id for n in failed] == [notice.id] * 2
        assert (notice.to, notice.kind) == ("claire@example.org", NoticeKind.EMAIL_VERIFICATION)
