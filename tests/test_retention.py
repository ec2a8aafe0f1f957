"""Retention: the policy's rules, the purge and the parent's data, on every store.

What each store's ``retention`` tier does is pinned by the conformance
suite (``RetentionContract``, run by every store of the package); here are
the rules themselves (``account_merge.domain.retention``), what the purge
does with them over time, and the settings.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from account_merge import AccountStatus, Child, InMemoryStorage, MergeService, SQLiteStorage
from account_merge.domain.account import Account, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import AccountPurged
from account_merge.domain.logins import login_key
from account_merge.domain.recovery import email_key
from account_merge.domain.retention import (
    MAX_AUDIT,
    MIN_AUDIT,
    AuditEnd,
    PurgeReason,
    PurgeReport,
    RetentionPolicy,
    due_reason,
    forgotten,
    names_someone,
    plan_purge,
    pseudonym,
    pseudonymised,
)
from account_merge.domain.throttle import (
    merge_key,
    principal_key,
    recovery_key,
    signin_key,
)
from account_merge.exceptions import AccountMergeError, InvalidInput, NotSupported, StorageError
from account_merge.ports import ChangeSet, Storage
from account_merge.ports.retention import DueKind
from account_merge.service.bootstrap import read_settings
from account_merge.service.policies import Policies
from account_merge.testing import (
    CapturingMailer,
    CountingVerifier,
    FakeClock,
    capture_events,
    fast_verifier,
    make_establishment,
)

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)
STRONG = "Mot-de-passe-Sûr-2026"
KEY = "a test secret key of the host"
LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
         "email_verification": "https://ent.example/courriel/{token}"}


def account(n: int = 1, **changes: Any) -> Account:
    return attrs.evolve(Account(id=f"acc{n}", login=f"claire.robert.{n}", role=Role.RESPONSABLE,
                                status=AccountStatus.PROVISIONAL, display_name="Claire Robert",
                                establishment_uai=SCHOOL.uai, created_at=T0), **changes)


def letter_credential(n: int = 1, expires: datetime = T0 + 90 * DAY) -> Credential:
    return Credential(f"acc{n}", "$argon2id$...", CredentialKind.PROVISIONAL, expires)


# -- the policy -------------------------------------------------------------------------------
def test_each_default_follows_its_rule() -> None:
    policy = RetentionPolicy()
    assert policy.unactivated == timedelta(days=90)  # Téléservices FAQ
    assert policy.unused == timedelta(days=365)  # Téléservices FAQ
    assert policy.closed == timedelta(days=90)  # within the 3 months of the ENT order, art. 6
    assert policy.audit == timedelta(days=365)  # CNIL délibération 2021-122: 6 months to 1 year
    assert policy.audit_end is AuditEnd.DELETE
    assert policy.published_events == timedelta(days=30)
    assert policy.unpublished_events == timedelta(days=365)
    assert policy.counters == timedelta(days=30)
    assert Policies().retention == policy


@pytest.mark.parametrize("audit", [MIN_AUDIT - DAY, MAX_AUDIT + DAY])
def test_the_audit_is_kept_six_months_to_three_years(audit: timedelta) -> None:
    RetentionPolicy(audit=MIN_AUDIT)
    RetentionPolicy(audit=MAX_AUDIT)
    with pytest.raises(InvalidInput, match="audit"):
        RetentionPolicy(audit=audit)


@pytest.mark.parametrize("changes", [
    {"unactivated": timedelta(0)}, {"unused": -DAY}, {"closed": 90}, {"counters": None},
    {"published_events": "30 days"}, {"unpublished_events": timedelta(0)},
    {"audit_end": "delete"}, {"batch": 0}, {"batch": 10_001}, {"batch": True},
])
def test_a_policy_refuses_what_is_not_a_duration_or_a_choice(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=next(iter(changes))):
        RetentionPolicy(**changes)


def test_the_hosts_settings_build_the_policy_and_the_service_takes_it() -> None:
    settings = read_settings({"RETENTION_AUDIT": 183 * 86400, "retention_audit_end": "Pseudonymise",
                              "RETENTION_UNPUBLISHED_EVENTS": "never", "RETENTION_BATCH": "50"})
    assert settings.policies.retention == RetentionPolicy(
        audit=MIN_AUDIT, audit_end=AuditEnd.PSEUDONYMISE, unpublished_events=None, batch=50)
    with pytest.raises(InvalidInput, match="ACCOUNT_MERGE_RETENTION_AUDIT: must be at least"):
        read_settings({"RETENTION_AUDIT": 86400}, name=lambda key: f"ACCOUNT_MERGE_{key}")
    policy = RetentionPolicy(unused=timedelta(days=400))
    service = MergeService(InMemoryStorage(), fast_verifier(), retention=policy)
    assert service.policies.retention is policy
    with pytest.raises(InvalidInput, match="retention"):
        MergeService(InMemoryStorage(), fast_verifier(), retention="1 year")  # type: ignore[arg-type]


# -- when an account is due ---------------------------------------------------------------------
def test_a_never_activated_account_is_due_90_days_after_its_letter_never_before_it_expires(
        ) -> None:
    policy = RetentionPolicy()

    def due(validity: int, at: datetime) -> PurgeReason | None:
        credential = letter_credential(expires=T0 + validity * DAY)
        return due_reason(account(), credential, policy, provisional_validity=validity * DAY,
                          now=at)

    assert due(90, T0 + 90 * DAY - timedelta(seconds=1)) is None
    assert due(90, T0 + 90 * DAY) is PurgeReason.UNACTIVATED
    assert due(30, T0 + 89 * DAY) is None  # dated by the letter's issue, not its expiry
    assert due(30, T0 + 90 * DAY) is PurgeReason.UNACTIVATED
    assert due(120, T0 + 90 * DAY) is None  # a letter still valid is never taken away
    assert due(120, T0 + 120 * DAY) is PurgeReason.UNACTIVATED


def test_an_active_account_is_due_a_year_after_its_last_sign_in_and_never_on_a_guess() -> None:
    policy = RetentionPolicy()
    active = account(status=AccountStatus.ACTIVE, last_signed_in_at=T0)
    password = Credential("acc1", "$argon2id$...", CredentialKind.PASSWORD)
    options = {"provisional_validity": 90 * DAY}
    assert due_reason(active, password, policy, now=T0 + 364 * DAY, **options) is None
    assert due_reason(active, password, policy, now=T0 + 365 * DAY,
                      **options) is PurgeReason.UNUSED
    unknown = attrs.evolve(active, last_signed_in_at=None)
    assert due_reason(unknown, password, policy, now=T0 + 3650 * DAY, **options) is None
    merged = account(status=AccountStatus.MERGED, merged_into="acc9")
    assert due_reason(merged, letter_credential(), policy, now=T0 + 3650 * DAY,
                      **options) is None  # it goes with its holder


def test_the_plan_keeps_an_account_holding_an_enrolled_childs_only_link() -> None:
    a, b, c = account(1), account(2), account(3)
    absorbed = account(4, status=AccountStatus.MERGED, merged_into="acc1")
    plan = plan_purge([(a, PurgeReason.UNUSED), (b, PurgeReason.UNACTIVATED),
                       (c, PurgeReason.UNACTIVATED)], {"acc1": [absorbed]},
                      {"acc1": ["ine-1"], "acc2": ["ine-2"], "acc3": ["ine-2", "ine-3"]},
                      enrolled={"ine-2"}, holders={"ine-2": ["acc2", "acc3"]})
    # acc2 goes (acc3 holds ine-2 too); acc3 then holds its only link, and stays.
    assert plan.deleted == ((a, PurgeReason.UNUSED), (absorbed, PurgeReason.ABSORBED),
                            (b, PurgeReason.UNACTIVATED))
    assert plan.kept == (c,)
    assert plan_purge([(c, PurgeReason.UNACTIVATED)], {}, {"acc3": ["ine-3"]}).kept == ()


def test_the_plan_takes_the_children_each_accounts_own_entries_list() -> None:
    """By account: a child only the entries of an account deleted before listed is
    listed no more (its entries went with it), and keeps nobody."""
    a, b = account(1), account(2)
    children = {"acc1": ["ine-1"], "acc2": ["ine-1"]}
    holders = {"ine-1": ["acc1", "acc2"]}
    plan = plan_purge([(a, PurgeReason.UNUSED), (b, PurgeReason.UNUSED)], {}, children,
                      enrolled={"acc1": ["ine-1"]}, holders=holders)
    assert plan.accounts == (a, b) and plan.kept == ()
    plan = plan_purge([(a, PurgeReason.UNUSED), (b, PurgeReason.UNUSED)], {}, children,
                      enrolled={"acc2": ["ine-1"]}, holders=holders)
    assert plan.accounts == (a,) and plan.kept == (b,)


# -- what deleting an account deletes --------------------------------------------------------
def test_forgetting_an_account_names_every_counter_of_its_login_and_id() -> None:
    claire = account(status=AccountStatus.ACTIVE, email="Claire@Example.org")
    gone = forgotten([claire])
    key = login_key(claire.login)
    for counter in (signin_key(key, None), signin_key(key, "203.0.113.7"), merge_key(key),
                    principal_key(claire.id), recovery_key(email_key("CLAIRE@example.ORG")),
                    recovery_key(email_key(claire.login.upper()))):
        assert gone.names_counter(counter), counter
    for other in (signin_key(key + "0", None), merge_key("marc.martin"), principal_key("acc10")):
        assert not gone.names_counter(other), other
    assert gone.logins == (claire.login, "Claire@Example.org")
    assert gone.names_record(AuditRecord(T0, AuditAction.AUTHENTICATE, "invalid_credentials",
                                         login="CLAIRE.ROBERT.1"))
    assert not gone.names_record(AuditRecord(T0, AuditAction.AUTHENTICATE,
                                             "invalid_credentials", login="claire.robert.10"))


records = st.builds(
    AuditRecord, at=st.just(T0), action=st.sampled_from(AuditAction),
    outcome=st.sampled_from(["success", "invalid_credentials"]),
    actor=st.one_of(st.none(), st.text(max_size=20),
                    st.just(f"establishment:{SCHOOL.uai}")),
    account_id=st.one_of(st.none(), st.text(max_size=20)),
    login=st.one_of(st.none(), st.text(max_size=20)),
    detail=st.one_of(st.none(), st.text(max_size=40)))


@given(records, st.one_of(st.none(), st.just("0860002K")))
def test_a_pseudonymised_record_names_nobody_and_keeps_action_time_and_establishment(
        record: AuditRecord, uai: str | None) -> None:
    done = pseudonymised(record, uai)
    assert not names_someone(done)
    assert (done.at, done.action, done.outcome) == (record.at, record.action, record.outcome)
    assert done.account_id is done.login is None
    if record.actor == f"establishment:{SCHOOL.uai}":
        assert done.actor == record.actor
        assert done.detail == f"pseudonymised; establishment {SCHOOL.uai}"
    elif uai is not None:
        assert done.detail == f"pseudonymised; establishment {uai}"
    assert pseudonymised(done, uai) == done


def test_a_deleted_account_is_named_by_a_pseudonym_that_is_not_its_id() -> None:
    name = pseudonym("5107f89855994ceeaf913c6a4c90ce8c")
    assert name == pseudonym("5107f89855994ceeaf913c6a4c90ce8c")
    assert len(name) == 32 and "5107f898" not in name
    assert name != pseudonym("5107f89855994ceeaf913c6a4c90ce8d")


def test_the_report_is_json_ready() -> None:
    report = PurgeReport(at=T0, deleted={"unused": 2}, audit_deleted=3, account_ids=("a", "b"))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["accounts"] == 2
    assert data["deleted"] == {"unactivated": 0, "unused": 2, "closed": 0, "absorbed": 0}
    assert "account_ids" not in data
    assert report.handled == 2 + 3  # the accounts and the audit lines a progress bar counts


# -- the purge, on every store -------------------------------------------------------------------
@pytest.fixture
def service(storage: Storage, verifier: CountingVerifier, clock: FakeClock) -> MergeService:
    made = MergeService(storage, verifier, clock, secret_key=KEY, links=LINKS)
    made.register_establishment(SCHOOL)
    return made


def issue(service: MergeService, n: int, name: str = "Claire Robert") -> Any:
    return service.issue_account(SCHOOL, name, [Child(f"ine-{n}", f"Enfant{n}", "Robert",
                                                      SCHOOL.uai)])


def test_each_deleted_account_is_told_by_an_event_that_names_it_by_its_pseudonym(
        service: MergeService, clock: FakeClock) -> None:
    letters = [issue(service, n) for n in (1, 2)]
    clock.advance(days=90)
    with capture_events(service) as events:
        report = service.purge()
    assert report.deleted == {"unactivated": 2}
    assert sorted(e.pseudonym for e in events.of_type(AccountPurged)) == sorted(
        pseudonym(letter.account_id) for letter in letters)
    assert {(e.reason, e.establishment_uai) for e in events.of_type(AccountPurged)} == {
        ("unactivated", SCHOOL.uai)}


def test_a_purge_is_audited_with_its_counts_and_a_dry_run_writes_nothing(
        service: MergeService, clock: FakeClock) -> None:
    issue(service, 1)
    clock.advance(days=90)
    before = service.audit_trail(limit=1000)
    with capture_events(service) as events:
        assert service.purge(dry_run=True).deleted == {"unactivated": 1}
    assert events.events == []
    assert service.audit_trail(limit=1000) == before
    service.purge()
    last = service.audit_trail(limit=1)[-1]
    assert (last.action, last.outcome, last.actor) == (AuditAction.PURGE, "success", None)
    assert last.detail is not None and last.detail.startswith("accounts 1 (unactivated 1,")
    service.purge()  # nothing to do: no record
    assert service.audit_trail(limit=1)[-1] == last


def test_a_long_purge_works_in_batches_and_says_how_far_it_got(
        storage: Storage, clock: FakeClock) -> None:
    service = MergeService(storage, fast_verifier(), clock, retention=RetentionPolicy(batch=2))
    for n in range(5):
        issue(service, n)
    clock.advance(days=91)
    seen: list[int] = []
    report = service.purge(progress=seen.append)
    assert report.deleted == {"unactivated": 5}
    assert seen == sorted(seen) and seen[-1] >= 5 and len(seen) >= 3  # one call per batch


def test_an_expired_letter_opens_nothing_and_its_hash_is_erased_at_once(
        storage: Storage, clock: FakeClock) -> None:
    service = MergeService(storage, fast_verifier(), clock,
                           provisional_validity=timedelta(days=30))
    service.register_establishment(SCHOOL)
    letter = issue(service, 1)
    clock.advance(days=30)
    assert service.purge().erased_hashes == 1
    assert service.purge().erased_hashes == 0
    with pytest.raises(AccountMergeError, match="invalid_credentials"):
        service.activate(letter.login, letter.provisional_password, STRONG)
    assert service.get_account(letter.account_id).status is AccountStatus.PROVISIONAL
    again = service.reissue_letter(SCHOOL, letter.account_id)  # the school prints a new one
    assert service.activate(again.login, again.provisional_password, STRONG)
    clock.advance(days=60)
    assert service.purge().accounts == 0  # activated in time


def test_audit_records_end_after_twelve_months_deleted_or_pseudonymised(
        storage: Storage, clock: FakeClock) -> None:
    service = MergeService(storage, fast_verifier(), clock, retention=RetentionPolicy(
        audit_end=AuditEnd.PSEUDONYMISE))
    service.register_establishment(SCHOOL)
    letter = issue(service, 1)
    principal = service.activate(letter.login, letter.provisional_password, STRONG)
    clock.advance(days=364)
    service.authenticate(principal.login, STRONG)
    assert service.purge().audit_pseudonymised == 0
    clock.advance(days=2)
    assert service.purge().audit_pseudonymised == 3  # registered, issued, activated
    trail = service.audit_trail(limit=100)
    assert [r.detail for r in trail[:3]] == ["pseudonymised", *[
        f"pseudonymised; establishment {SCHOOL.uai}"] * 2]
    assert trail[3].account_id == principal.id  # the sign-in of day 364 is kept as it was
    clock.advance(days=365)
    service.authenticate(principal.login, STRONG)
    deleting = MergeService(storage, fast_verifier(), clock)
    assert deleting.purge().audit_deleted >= 4  # the pseudonymised ones too
    assert all(r.at >= clock() - timedelta(days=365) for r in service.audit_trail(limit=100))


def test_events_end_a_month_after_publication_or_a_year_unpublished_not_while_a_notice_waits(
        storage: Storage, clock: FakeClock) -> None:
    service = MergeService(storage, fast_verifier(), clock, secret_key=KEY, links=LINKS)
    service.register_establishment(SCHOOL)
    letter = issue(service, 1)
    principal = service.activate(letter.login, letter.provisional_password, STRONG,
                                 email="claire@example.org")  # an address to confirm
    issued, _activated, confirm = service.unpublished_events(10)
    service.mark_published([issued.position])
    service.deliver_notices(CapturingMailer(fail=lambda notice: True))  # the mail server is down
    clock.advance(days=30)
    assert service.purge().events_deleted == 1
    clock.advance(days=334)
    service.authenticate(principal.login, STRONG)  # the account is in use
    clock.advance(days=1)
    assert service.purge().events_deleted == 1  # the activation; the confirmation waits
    assert [e.position for e in service.unpublished_events(10)] == [confirm.position]
    service.deliver_notices(CapturingMailer())  # dropped: the link expired long ago
    assert service.purge().events_deleted == 1
    assert service.get_account(principal.id).status is AccountStatus.ACTIVE


def test_the_parents_data_of_an_unknown_account_is_account_not_found(
        service: MergeService) -> None:
    with pytest.raises(AccountMergeError, match="account_not_found"):
        service.export_personal_data("nobody")
    with pytest.raises(InvalidInput):
        service.export_personal_data("not an id")


class _CoreOnly:
    """A store with the core tier only: the retention tier's methods are hidden."""

    def __init__(self) -> None:
        self.inner = InMemoryStorage()

    def unit_of_work(self, *, write: bool = True) -> _CoreUnitOfWork:
        return _CoreUnitOfWork(self.inner.unit_of_work(write=write))

    def write(self, changes: ChangeSet) -> None:
        self.inner.write(changes)

    def close(self) -> None:
        self.inner.close()


class _CoreUnitOfWork:
    _CORE = frozenset({"commit", "rollback", "fetch", "apply", "unpublished", "audit_records"})

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __enter__(self) -> Self:
        self._inner.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._inner.__exit__(kind, error, tb)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in self._CORE:
            raise AttributeError(name)
        return getattr(self._inner, name)  # type: ignore[no-any-return]


def test_a_store_without_the_tier_is_told_before_anything_changes(clock: FakeClock) -> None:
    store = _CoreOnly()
    service = MergeService(store, fast_verifier(), clock)  # type: ignore[arg-type]
    letter = issue(service, 1)
    clock.advance(days=100)
    for call in (service.purge, lambda: service.export_personal_data(letter.account_id)):
        with pytest.raises(NotSupported, match="retention") as raised:
            call()
        assert raised.value.tier == "retention"
    assert service.get_account(letter.account_id)


# -- on SQLite, what is due is found through indexes ------------------------------------------
def test_the_sqlite_store_finds_what_is_due_through_its_indexes(tmp_path: Path) -> None:
    """Every statement of the retention tier searches an index: none scans a table."""
    path = tmp_path / "store.sqlite3"
    store = SQLiteStorage(path)
    statements: list[str] = []
    with store.unit_of_work() as uow:
        uow._connection().set_trace_callback(statements.append)
        for after in (None, (T0, "acc1")):
            for kind in DueKind:
                uow.accounts_due(kind, T0, after, 10)
        uow.erase_hashes(T0, 10)
        uow.forget(forgotten([account(status=AccountStatus.ACTIVE, email="c@example.org")]))
        uow.end_audit(T0, 10, pseudonymise=False)
        uow.end_audit(T0, 10, pseudonymise=True)
        uow.delete_counters(T0, 10)
        uow.outbox_page(0, 10)
        uow.delete_outbox([1])
        uow.held_about(forgotten([account()]))
        uow._connection().set_trace_callback(None)
    store.close()
    raw = sqlite3.connect(path)
    plans = {statement: [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}")]
             for statement in statements if statement.startswith(("SELECT", "UPDATE", "DELETE"))}
    scans = {statement: [step for step in plan if step.startswith("SCAN")
                         and "USING" not in step and "CONSTANT ROW" not in step]
             for statement, plan in plans.items()}
    assert len(plans) > 15
    assert not any(scans.values()), {s: p for s, p in scans.items() if p}


# -- a store whose outbox pages do not advance ---------------------------------------------------
class _StuckOutbox(InMemoryStorage):
    """Its outbox gives its first page whatever position is asked: a broken store."""

    def unit_of_work(self, *, write: bool = True) -> Any:
        uow = super().unit_of_work(write=write)
        first_page = uow.outbox_page

        def outbox_page(after: int, limit: int, *, published: bool | None = None) -> Any:
            return first_page(0, limit, published=published)

        uow.outbox_page = outbox_page
        return uow


def test_a_store_whose_outbox_pages_do_not_advance_stops_the_purge_instead_of_looping() -> None:
    storage = _StuckOutbox()
    clock = FakeClock(T0)
    service = MergeService(storage, fast_verifier(), clock)
    service.register_establishment(SCHOOL)
    letter = service.issue_account(SCHOOL, "Claire Robert", [Child("ine-1", "Enfant", "Robert",
                                                                   SCHOOL.uai)])
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(service.purge()), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the purge loops over the same outbox page"
    assert outcome and outcome[0].accounts == 0  # type: ignore[attr-defined]
    with pytest.raises(StorageError):
        service.export_personal_data(letter.account_id)
