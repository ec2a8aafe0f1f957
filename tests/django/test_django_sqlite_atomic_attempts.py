"""Under ``ATOMIC_REQUESTS`` on SQLite, failed attempts outlive the request's rollback.

Defect 12.5 on SQLite: the request's transaction holds the database's
write lock (``"transaction_mode": "IMMEDIATE"``, which ``manage.py check``
requires there), so no second connection can write the failures beside
it; they rode on the request's transaction and a view that let the
library's error escape rolled them back.  Now they are kept in the
attempts journal, a SQLite file of their own beside the database
(:mod:`account_merge.storage.attempts`).  The same 13 attempts as on
PostgreSQL (``test_django_atomic_requests.py``), under the same limits:
the 13th is ``too_many_attempts`` and the audit trail holds the 12
failures.  The store without its journal fails both (the defect).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections
from django.test import Client, override_settings
from django.urls import path
from django_stores import empty_store
from test_django_atomic_requests import LIMITS, attempt, merge_view, sign_in_view

from account_merge import Child, MergeService
from account_merge.contrib.django import get_service
from account_merge.contrib.django.storage import _DjangoUnitOfWork
from account_merge.domain.audit import AuditAction
from account_merge.testing import make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"

urlpatterns = [path("merge/", merge_view), path("sign-in/", sign_in_view)]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["journal", pytest.param("no journal", marks=(
    pytest.mark.xfail(strict=True, reason="defect 12.5: the request's rollback erases them")))])
def service(request: pytest.FixtureRequest,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[MergeService]:
    """The project's service on SQLite, whose requests are atomic and begin IMMEDIATE."""
    if request.param == "no journal":
        monkeypatch.setattr(_DjangoUnitOfWork, "_uses_journal", lambda self: False)
    empty_store("default")
    database = connections.settings["default"]
    monkeypatch.setitem(database, "ATOMIC_REQUESTS", True)
    monkeypatch.setitem(database, "OPTIONS", {**database.get("OPTIONS", {}),
                                               "transaction_mode": "IMMEDIATE"})
    connections["default"].close()  # the next connection begins IMMEDIATE
    try:
        with override_settings(ROOT_URLCONF=__name__, ACCOUNT_MERGE={
                "DATABASE": "default", "VERIFIER": "fast_verifier.fast_django_verifier",
                **LIMITS}):
            yield get_service()
    finally:
        connections["default"].close()


def test_wrong_merge_guesses_are_throttled_and_audited_despite_the_rollback(
        service: MergeService) -> None:
    dylan, florian = (service.issue_account(COLLEGE, "Claire Robert",
                                            [Child(f"ine-{n}", n, "Robert", COLLEGE.uai)])
                      for n in ("Dylan", "Florian"))
    principal = service.activate(dylan.login, dylan.provisional_password, STRONG)
    client = Client()

    codes = [attempt(client, "merge", principal=principal.id, login=florian.login,
                     password=f"WRONG{n:03d}") for n in range(13)]

    assert codes == ["invalid_credentials"] * 12 + ["too_many_attempts"]
    failures = [r.outcome for r in service.audit_trail(principal.id, limit=100)
                if r.action is AuditAction.MERGE]
    assert failures == ["invalid_credentials"] * 12 + ["too_many_attempts"]
    # Even the right password waits now.
    assert attempt(client, "merge", principal=principal.id, login=florian.login,
                   password=florian.provisional_password.reveal()) == "too_many_attempts"


def test_wrong_sign_ins_are_throttled_and_audited_despite_the_rollback(
        service: MergeService) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", COLLEGE.uai)])
    principal = service.activate(letter.login, letter.provisional_password, STRONG)
    client = Client()

    codes = [attempt(client, "sign-in", login=letter.login, password=f"WRONG{n:03d}")
             for n in range(13)]

    assert codes == ["invalid_credentials"] * 12 + ["too_many_attempts"]
    failures = [r.outcome for r in service.audit_trail(None, limit=100)
                if r.action is AuditAction.AUTHENTICATE]
    assert failures == ["invalid_credentials"] * 12 + ["too_many_attempts"]
    assert principal.id  # the account exists: only the password was wrong
