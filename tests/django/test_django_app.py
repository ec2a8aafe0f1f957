"""The app itself: label, migrations, settings, checks, get_service, units of work inside Django."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.signals import request_finished
from django.db import connections, transaction
from django.test import override_settings
from django.utils.connection import ConnectionDoesNotExist
from django_stores import empty_store

import account_merge
from account_merge import Account, AccountStatus, Child, Role, Secret
from account_merge.contrib.django import get_service, get_storage
from account_merge.contrib.django.conf import check_databases, check_settings, load
from account_merge.contrib.django.hashers import DjangoPasswordVerifier
from account_merge.contrib.django.models import Account as AccountRow
from account_merge.contrib.django.models import AuditEntry as AuditRow
from account_merge.contrib.django.models import Throttle as ThrottleRow
from account_merge.contrib.django.storage import DjangoStorage
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, StorageError
from account_merge.ports import ChangeSet, Fetch, NewAccount
from account_merge.service import MergeService, same_display_name
from account_merge.storage.attempts import JournalTransaction
from account_merge.testing import FakeClock, fast_verifier, make_establishment

T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
SRC = str(Path(account_merge.__file__).resolve().parents[1])
COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"


def account(n: int) -> Account:
    return Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent {n}",
                   establishment_uai="0860001J", created_at=T0)


def new(n: int, **changes: Any) -> ChangeSet:
    return ChangeSet(new_accounts=[NewAccount(attrs.evolve(account(n), **changes),
                                              f"parent.{n}")])


class ToPostgres:
    """A router that sends the app's models to the ``postgres`` alias."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return "postgres" if model._meta.app_label == "account_merge" else None

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return "postgres" if model._meta.app_label == "account_merge" else None


def test_the_app_is_labelled_account_merge_and_so_are_its_tables() -> None:
    config = apps.get_app_config("account_merge")
    assert config.name == "account_merge.contrib.django"
    assert AccountRow._meta.db_table == "account_merge_account"


@pytest.mark.django_db
def test_every_model_change_has_its_migration() -> None:
    """Fails when a model was changed without ``makemigrations``."""
    call_command("makemigrations", "account_merge", "--check", "--dry-run", verbosity=0)


def test_importing_the_app_needs_no_settings_and_touches_no_database() -> None:
    code = ("import account_merge.contrib.django as app, sys; "
            "assert 'account_merge.contrib.django.models' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": SRC})


# -- settings ----------------------------------------------------------------------------
def test_the_settings_have_documented_defaults() -> None:
    with override_settings(ACCOUNT_MERGE={}):
        loaded = load()
        verifier = loaded.verifier()
    policies = loaded.service.policies
    assert loaded.database is None
    assert loaded.split_authorization == "account_merge.contrib.django.permissions.may_split"
    assert policies.provisional_validity == timedelta(days=90)
    assert policies.provisional_length == 8
    assert policies.throttle.backoff_after == 5 and policies.throttle.lock_after == 10
    assert policies.identity_rule is None and loaded.service.clock is None
    assert isinstance(verifier, DjangoPasswordVerifier)
    hasher = verifier.hasher
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (3, 65536, 4)
    # The format Django writes: the first of the project's PASSWORD_HASHERS.
    assert verifier.legacy_formats == ()  # by default, the library's argon2id only


def test_the_library_s_flat_settings_reach_the_service() -> None:
    """One vocabulary with Flask: THROTTLE_*, PROVISIONAL_VALIDITY in seconds, ARGON2_*..."""
    with override_settings(ACCOUNT_MERGE={
            "THROTTLE_BACKOFF_AFTER": 2, "THROTTLE_LOCK_FOR": 60,
            "ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 8, "ARGON2_PARALLELISM": 1,
            "IDENTITY_RULE": "account_merge.service.same_display_name",
            "PROVISIONAL_VALIDITY": 30 * 24 * 3600, "DJANGO_HASHERS": ["pbkdf2_sha256", "md5"]}):
        with pytest.warns(UserWarning, match="OWASP"):
            service = get_service()
        assert service.throttle.backoff_after == 2
        assert service.throttle.lock_for == timedelta(seconds=60)
        assert service.policies.identity_rule is same_display_name
        assert service.policies.provisional_validity == timedelta(days=30)
        assert isinstance(service.verifier, DjangoPasswordVerifier)
        assert "time_cost=1" in repr(service.verifier)
        assert service.verifier.legacy_formats == ("pbkdf2_sha256", "md5")


def test_without_its_own_secret_key_the_library_derives_one_from_the_project_s() -> None:
    """The links work out of the box, under a key of their own (never SECRET_KEY itself)."""
    from django.conf import settings

    def key() -> str:
        secret = load().service.secret_key
        return secret.reveal() if isinstance(secret, Secret) else str(secret)

    with override_settings(ACCOUNT_MERGE={}):
        derived = key()
    with override_settings(ACCOUNT_MERGE={}, SECRET_KEY="another project key"):
        other = key()
    with override_settings(ACCOUNT_MERGE={"SECRET_KEY": "the library's own key, long"}):
        given = key()

    assert isinstance(derived, str) and len(derived) == 64
    assert derived != settings.SECRET_KEY and settings.SECRET_KEY not in derived
    assert other != derived
    assert given == "the library's own key, long"


def test_links_may_name_the_project_s_url_patterns_on_its_base_url() -> None:
    with override_settings(ACCOUNT_MERGE={
            "BASE_URL": "https://ent.example/",
            "LINKS": {"password_reset": "ent:lien_mot_de_passe",
                      "email_verification": "/courriel/{token}/",
                      "sign_in": "ent:connexion"}}):
        links = dict(load().service.links or {})

    assert links == {"password_reset": "https://ent.example/mot-de-passe/{token}/",
                     "email_verification": "https://ent.example/courriel/{token}/",
                     "sign_in": "https://ent.example/connexion/"}


def test_a_verifier_setting_replaces_the_django_verifier() -> None:
    with override_settings(ACCOUNT_MERGE={"VERIFIER": "account_merge.testing.fast_verifier"}):
        verifier = get_service().verifier
    assert not isinstance(verifier, DjangoPasswordVerifier)


@pytest.mark.parametrize(("wrong", "named"), [
    ({"THROTLE_LOCK_AFTER": 3}, "THROTLE_LOCK_AFTER"),
    ({"THROTTLE_LOCK_FOR": "a day"}, "THROTTLE_LOCK_FOR"),
    ({"ARGON2_TIME_COST": 0}, "ARGON2_TIME_COST"),
    ({"PROVISIONAL_VALIDITY": "ninety days"}, "PROVISIONAL_VALIDITY"),
    ({"IDENTITY_RULE": "account_merge.no_such_rule"}, "IDENTITY_RULE"),
    ({"DATABASE": ""}, "DATABASE"),
    ({"DJANGO_HASHERS": ["sha1"]}, "sha1"),
    ({"ATTEMPTS_JOURNAL": "{folder}/attempts.sqlite3"}, "ATTEMPTS_JOURNAL"),
    ({"ATTEMPTS_JOURNAL": 3}, "ATTEMPTS_JOURNAL"),
    ({"TRUSTED_PROXIES": "10.0.0.1"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": ["proxy.example"]}, "TRUSTED_PROXIES"),
    ({"CLIENT_HEADER": "X Forwarded For"}, "CLIENT_HEADER"),
    ({"BASE_URL": "ent.example"}, "BASE_URL"),
    ({"LINKS": {"sign_in": "ent:connexion"}}, "BASE_URL"),
    ({"BASE_URL": "https://ent.example", "LINKS": {"password_reset": "no-such-page"}},
     "no-such-page"),
    ({"USER_FACTORY": "account_merge.no_such_factory"}, "USER_FACTORY"),
    # The keys of development versions name what replaced them.
    ({"THROTTLE": {"LOCK_AFTER": 3}}, "THROTTLE_BACKOFF_AFTER"),
    ({"ARGON2": {"TIME_COST": 3}}, "ARGON2_TIME_COST"),
    ({"PROVISIONAL_VALIDITY_DAYS": 90}, "PROVISIONAL_VALIDITY,"),
])
@pytest.mark.filterwarnings("ignore::account_merge.credentials.WeakHashParametersWarning")
def test_a_wrong_setting_is_refused_and_reported_by_check(wrong: dict[str, Any],
                                                           named: str) -> None:
    with override_settings(ACCOUNT_MERGE=wrong):
        errors = check_settings()
        assert [e.id for e in errors] == ["account_merge.E001"]
        assert named in errors[0].msg
        with pytest.raises(ImproperlyConfigured):
            get_service()


def test_get_service_is_built_once_and_again_when_the_settings_change() -> None:
    first = get_service()
    assert get_service() is first
    with override_settings(ACCOUNT_MERGE={"VERIFIER": "fast_verifier.fast_django_verifier",
                                          "PROVISIONAL_LENGTH": 10}):
        changed = get_service()
        assert changed is not first and changed.policies.provisional_length == 10
    assert get_service() is not changed


def test_the_store_asks_the_routers_unless_an_alias_is_set() -> None:
    assert get_storage().alias(write=True) == "default"
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ToPostgres"]):
        assert get_storage().alias(write=True) == "postgres"
        assert get_storage().alias(write=False) == "postgres"
        with override_settings(ACCOUNT_MERGE={"DATABASE": "default"}):
            assert get_storage().alias(write=True) == "default"


# -- SQLite under ATOMIC_REQUESTS (account_merge.E002) --------------------------------------
def _databases(**default: Any) -> dict[str, Any]:
    return {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "ent.sqlite3",
                        **default}}


@pytest.mark.parametrize(("database", "expected"), [
    ({"ATOMIC_REQUESTS": True}, ["account_merge.E002"]),
    ({"ATOMIC_REQUESTS": True, "OPTIONS": {"transaction_mode": "DEFERRED"}},
     ["account_merge.E002"]),
    ({"ATOMIC_REQUESTS": True, "OPTIONS": {"transaction_mode": "IMMEDIATE"}}, []),
    ({"ATOMIC_REQUESTS": False}, []),
    ({}, []),
])
def test_check_refuses_sqlite_request_transactions_that_begin_without_the_write_lock(
        database: dict[str, Any], expected: list[str]) -> None:
    """Defect 12.4: a request that read its session cannot take SQLite's write lock later."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overriding DATABASES: only the check reads it here
        with override_settings(DATABASES=_databases(**database)):
            errors = check_databases()
    assert [e.id for e in errors] == expected
    if errors:
        assert errors[0].hint is not None
        assert '"transaction_mode": "IMMEDIATE"' in errors[0].hint
        assert 'DATABASES["default"]' in errors[0].hint


def test_check_names_a_database_alias_that_does_not_exist() -> None:
    with override_settings(ACCOUNT_MERGE={"DATABASE": "nowhere"}):
        errors = check_databases()
    assert [e.id for e in errors] == ["account_merge.E001"]
    assert "nowhere" in errors[0].msg


def test_postgresql_under_atomic_requests_needs_nothing_more() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with override_settings(DATABASES={"default": {
                "ENGINE": "django.db.backends.postgresql", "NAME": "ent",
                "ATOMIC_REQUESTS": True}}):
            assert check_databases() == []


# -- units of work inside Django ---------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_inside_the_host_s_transaction_a_unit_of_work_is_a_savepoint() -> None:
    """Committed work is undone with the host's transaction; failures, in the journal, are not."""
    storage = empty_store("default")
    with pytest.raises(RuntimeError), transaction.atomic():
        with storage.unit_of_work() as uow:
            uow.apply(new(1))
            uow.commit()
        storage.write(ChangeSet(audit=[AuditRecord(T0, AuditAction.MERGE, "invalid_credentials")]))
        with storage.unit_of_work(write=False) as uow:
            assert set(uow.fetch(Fetch(accounts=["acc1"])).accounts) == {"acc1"}
        raise RuntimeError("the host's view fails")
    with storage.unit_of_work(write=False) as uow:
        assert uow.fetch(Fetch(accounts=["acc1"])).accounts == {}
        assert [r.outcome for r in uow.audit_records(None, 10)] == ["invalid_credentials"]


@pytest.mark.django_db(transaction=True)
def test_on_sqlite_failed_attempts_are_kept_in_the_journal_the_setting_names(
        tmp_path: Path) -> None:
    """Beside the database by default; where ATTEMPTS_JOURNAL says; never in its tables."""
    database = Path(connections["default"].settings_dict["NAME"]).resolve()
    failure = ChangeSet(throttles=[ThrottleState("merge:x", 1, T0, (T0,))],
                        audit=[AuditRecord(T0, AuditAction.MERGE, "invalid_credentials")])
    empty_store("default").write(failure)
    assert Path(f"{database}-attempts.sqlite3").is_file()
    assert not ThrottleRow.objects.exists()
    assert not AuditRow.objects.exists()
    elsewhere = tmp_path / "journaux"
    elsewhere.mkdir()
    with override_settings(ACCOUNT_MERGE={"ATTEMPTS_JOURNAL": f"{elsewhere}/{{name}}.journal"}):
        storage = get_storage()
        # The default place holds this database's journal: the disagreement is refused.
        with pytest.raises(AccountMergeError, match="same attempts journal"):
            storage.write(failure)
    assert not (elsewhere / f"{database.name}.journal").exists()


@pytest.mark.django_db(transaction=True)
def test_a_journal_that_cannot_commit_leaves_the_database_unchanged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal commits first: if it cannot, the merge does not happen either."""
    service = MergeService(empty_store("default"), fast_verifier(), FakeClock(T0))
    first = service.issue_account(COLLEGE, "Claire Robert", [Child("ine-1", "Dylan", "Robert",
                                                                   COLLEGE.uai)])
    letter = service.issue_account(COLLEGE, "Claire Robert", [Child("ine-2", "Florian",
                                                                    "Robert", COLLEGE.uai)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    real = JournalTransaction.commit
    commits: list[int] = []

    def failing_second(self: JournalTransaction) -> None:
        commits.append(1)
        if len(commits) == 2:  # step 3 of the merge: the attempt given back
            raise StorageError("journal", "the disk is full")
        real(self)

    monkeypatch.setattr(JournalTransaction, "commit", failing_second)
    with pytest.raises(AccountMergeError):
        service.merge(principal.id, letter.login, letter.provisional_password)
    monkeypatch.setattr(JournalTransaction, "commit", real)
    assert [c.first_name for c in service.children(principal.id)] == ["Dylan"]
    receipt = service.merge(principal.id, letter.login, letter.provisional_password)
    assert [c.first_name for c in receipt.children] == ["Dylan", "Florian"]


@pytest.mark.django_db(transaction=True)
def test_times_come_back_aware_in_utc_even_with_use_tz_off() -> None:
    storage = empty_store("default")
    paris = T0.astimezone(ZoneInfo("Europe/Paris"))
    with override_settings(USE_TZ=False):
        storage.write(new(1, created_at=paris, last_signed_in_at=paris))
        with storage.unit_of_work(write=False) as uow:
            found = uow.fetch(Fetch(accounts=["acc1"])).accounts["acc1"].account
    assert found.created_at == T0 and found.created_at.tzinfo is UTC
    assert found.last_signed_in_at == T0


# -- the side connection (PostgreSQL, inside a host's transaction) ------------------------
def _side_alias() -> str:
    return "postgres~account_merge_side"


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
def test_a_host_rollback_keeps_the_failures_and_undoes_the_successes() -> None:
    storage = empty_store("postgres")
    clock = FakeClock(T0)
    service = MergeService(storage, fast_verifier(), clock)
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", COLLEGE.uai)])
    principal = service.activate(letter.login, letter.provisional_password, "Correct-Horse-9x")
    with pytest.raises(RuntimeError), transaction.atomic(using="postgres"):
        other = service.issue_account(COLLEGE, "Marc Robert",
                                      [Child("ine-2", "Florian", "Robert", COLLEGE.uai)])
        with pytest.raises(AccountMergeError):
            service.merge(principal.id, other.login, "WRONG-PASSWORD")
        raise RuntimeError("the host rolls back")
    with pytest.raises(AccountMergeError) as raised:
        service.get_account(other.account_id)
    assert raised.value.code == "account_not_found"
    trail = service.audit_trail(principal.id)
    assert [(r.action, r.outcome) for r in trail][-1] == (AuditAction.MERGE,
                                                          "invalid_credentials")
    counter = ThrottleRow.objects.using("postgres").get(key=f"principal:{principal.id}")
    assert counter.consecutive == 1
    storage.close()


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
def test_the_side_connection_closes_with_the_request_and_with_the_store() -> None:
    storage = empty_store("postgres")
    with transaction.atomic(using="postgres"):
        storage.write(ChangeSet(throttles=[ThrottleState("merge:x", 1, T0, (T0,))]))
    side = connections[_side_alias()]
    assert side.connection is None or side.is_usable()
    with transaction.atomic(using="postgres"):
        storage.write(ChangeSet(throttles=[ThrottleState("merge:x", 2, T0, (T0,))]))
    assert side.connection is not None  # kept between units of work of a request
    request_finished.send(sender=None)  # CONN_MAX_AGE = 0: closed as Django closes its own
    assert side.connection is None
    with transaction.atomic(using="postgres"):
        storage.write(ChangeSet(throttles=[ThrottleState("merge:x", 3, T0, (T0,))]))
    storage.close()
    assert side.connection is None
    with pytest.raises(ConnectionDoesNotExist):
        connections[_side_alias()]
    assert ThrottleRow.objects.using("postgres").get(key="merge:x").consecutive == 3


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
def test_the_two_connections_of_a_thread_never_wait_on_each_other_forever() -> None:
    """The host's transaction holds a counter's row; the side connection gives up in time."""
    storage = DjangoStorage(using="postgres", side_lock_timeout=0.2)
    empty_store("postgres")
    ThrottleRow.objects.using("postgres").create(key="merge:x", consecutive=0, recent=[])
    started = time.monotonic()
    with transaction.atomic(using="postgres"):
        ThrottleRow.objects.using("postgres").select_for_update().get(key="merge:x")
        with pytest.raises(ConcurrentUpdate), storage.unit_of_work() as uow:
            uow.fetch(Fetch(count=["merge:x"], at=T0))
    assert time.monotonic() - started < 5
    storage.close()


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
def test_outside_a_host_transaction_there_is_no_side_connection() -> None:
    storage = empty_store("postgres")
    seen: list[bool] = []

    def in_a_thread() -> None:
        storage.write(ChangeSet(throttles=[ThrottleState("merge:y", 1, T0, (T0,))]))
        try:
            connections[_side_alias()]
        except ConnectionDoesNotExist:  # never made in this thread
            seen.append(False)
        else:
            seen.append(True)
        connections.close_all()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(30)
    assert seen == [False]


# -- queries ------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", ["default", "postgres"])
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
@pytest.mark.usefixtures("django_postgres")
def test_a_fetch_costs_one_query_per_kind_of_thing_it_reads(alias: str) -> None:
    """Accounts by id and by login in one query; counting adds a lock (PostgreSQL) and a write.

    On SQLite the counters are read and written in the attempts journal, a
    file of their own: no query of the database's.
    """
    from django.test.utils import CaptureQueriesContext

    storage = empty_store(alias)
    storage.write(new(1) + new(2))
    everything = Fetch(accounts=["acc1"], logins=["parent.2"], links=["acc1"], absorbed=["acc1"],
                       throttles=["merge:x"], receipts=[("acc1", "k")],
                       establishments=[COLLEGE.uai])
    counting = Fetch(count=["merge:y", "principal:acc1"], at=T0, accounts=["acc1"])
    with storage.unit_of_work() as uow:
        with CaptureQueriesContext(connections[alias]) as reads:
            found = uow.fetch(everything)
        with CaptureQueriesContext(connections[alias]) as counts:
            uow.fetch(counting)
        uow.commit()
    assert set(found.accounts) == {"acc1"} and set(found.by_login) == {"parent.2"}
    assert len(statements(reads)) == (6 if alias == "postgres" else 5)
    # Lock both counters at once (PostgreSQL), read them, write them, then the account.
    assert len(statements(counts)) == (4 if alias == "postgres" else 1)


def statements(captured: Any) -> list[str]:
    """The statements captured, transaction control left out."""
    return [q["sql"] for q in captured.captured_queries
            if q["sql"].split(" ", 1)[0] not in {"BEGIN", "COMMIT", "SAVEPOINT", "RELEASE"}]
