"""The app itself: label, migrations, settings, get_service, units of work inside Django."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django_stores import empty_store

import account_merge
from account_merge import Account, AccountStatus, Role
from account_merge.contrib.django import get_service, get_storage
from account_merge.contrib.django.conf import check_settings, load
from account_merge.contrib.django.models import Account as AccountRow
from account_merge.contrib.django.storage import DjangoStorage
from account_merge.ports import LoginTaken
from account_merge.service import same_display_name

T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
SRC = str(Path(account_merge.__file__).resolve().parents[1])


def account(n: int) -> Account:
    return Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent {n}",
                   establishment_uai="0860001J", created_at=T0)


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


def test_the_settings_have_documented_defaults() -> None:
    with override_settings(ACCOUNT_MERGE={}):
        loaded = load()
    assert loaded.database is None
    assert loaded.provisional_validity == timedelta(days=90)
    assert loaded.provisional_length == 8
    assert loaded.throttle.backoff_after == 5 and loaded.throttle.lock_after == 10
    assert loaded.identity_rule is None and loaded.verifier is None
    hasher = loaded.password_hasher()
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (3, 65536, 4)


def test_throttle_argon2_and_rule_settings_reach_the_service() -> None:
    with override_settings(ACCOUNT_MERGE={
            "THROTTLE": {"BACKOFF_AFTER": 2, "LOCK_FOR": 60},
            "ARGON2": {"TIME_COST": 1, "MEMORY_COST": 8, "PARALLELISM": 1},
            "IDENTITY_RULE": "account_merge.service.same_display_name",
            "PROVISIONAL_VALIDITY_DAYS": 30}):
        with pytest.warns(UserWarning, match="OWASP"):
            service = get_service()
        assert service.throttle.backoff_after == 2
        assert service.throttle.lock_for == timedelta(seconds=60)
        assert service.identity_rule is same_display_name
        assert service.provisional_validity == timedelta(days=30)
        assert "time_cost=1" in repr(service.verifier)


@pytest.mark.parametrize("wrong", [
    {"THROTLE": {}},
    {"THROTTLE": {"BACKOF_AFTER": 2}},
    {"THROTTLE": {"LOCK_FOR": "a day"}},
    {"ARGON2": {"TIME_COST": 0}},
    {"PROVISIONAL_VALIDITY_DAYS": "90"},
    {"IDENTITY_RULE": "account_merge.no_such_rule"},
])
def test_a_wrong_setting_is_refused_and_reported_by_check(wrong: dict[str, Any]) -> None:
    with override_settings(ACCOUNT_MERGE=wrong):
        errors = check_settings()
        assert [e.id for e in errors] == ["account_merge.E001"]
        with pytest.raises(ImproperlyConfigured):
            get_service()


def test_get_service_is_built_once_and_again_when_the_settings_change() -> None:
    first = get_service()
    assert get_service() is first
    with override_settings(ACCOUNT_MERGE={"VERIFIER": "fast_verifier.fast_django_verifier",
                                          "PROVISIONAL_LENGTH": 10}):
        changed = get_service()
        assert changed is not first and changed.provisional_length == 10
    assert get_service() is not changed


def test_the_store_asks_the_routers_unless_an_alias_is_set() -> None:
    assert get_storage().alias(write=True) == "default"
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ToPostgres"]):
        assert get_storage().alias(write=True) == "postgres"
        assert get_storage().alias(write=False) == "postgres"
        with override_settings(ACCOUNT_MERGE={"DATABASE": "default"}):
            assert get_storage().alias(write=True) == "default"


@pytest.mark.django_db(transaction=True)
def test_inside_the_host_s_transaction_a_unit_of_work_is_a_savepoint() -> None:
    """Committed work is undone with the host's transaction; LoginTaken leaves it usable."""
    storage = empty_store("default")
    with pytest.raises(RuntimeError), transaction.atomic():
        with storage.unit_of_work() as uow:
            uow.add_account(account(1), "parent.1")
            with pytest.raises(LoginTaken):
                uow.add_account(account(2), "parent.1")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_account("acc1") == account(1)
        raise RuntimeError("the host's view fails")
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") is None


@pytest.mark.django_db(transaction=True)
def test_a_unit_of_work_goes_on_after_commit_in_a_new_transaction() -> None:
    storage = empty_store("default")
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.commit()
        uow.add_account(account(2), "parent.2")  # not committed: rolled back
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") == account(1)
        assert uow.get_account("acc2") is None


@pytest.mark.django_db(transaction=True)
def test_times_come_back_aware_in_utc_even_with_use_tz_off() -> None:
    storage: DjangoStorage = empty_store("default")
    paris = T0.astimezone(ZoneInfo("Europe/Paris"))
    with override_settings(USE_TZ=False):
        with storage.unit_of_work() as uow:
            uow.add_account(attrs.evolve(account(1), created_at=paris), "parent.1")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            found = uow.get_account("acc1")
    assert found is not None and found.created_at == T0 and found.created_at.tzinfo is UTC
