"""Under ``ATOMIC_REQUESTS`` on PostgreSQL, failed attempts outlive the request's rollback.

Defect 12.5: a view that lets the library's error escape its atomic
request rolled back every failure counter and every failure record with
it, so that 200 wrong merge guesses and 60 wrong sign-ins were never
counted.  Here such views run 13 times under limits chosen so that the
12th failure starts the back-off (``THROTTLE_BACKOFF_AFTER = 12``, a
minute first; the merge lock and the principal's hourly window set above
13, since a merge failure counts against the target login *and* the
principal): the 13th attempt must be ``too_many_attempts`` and the audit
trail must hold the 12 failures.  The same test fails on the store
without its side connection (the defect).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django_stores import empty_store

from account_merge import Child, MergeService
from account_merge.contrib.django import get_service
from account_merge.contrib.django.storage import _DjangoUnitOfWork, close_side_connections
from account_merge.domain.audit import AuditAction
from account_merge.exceptions import AccountMergeError
from account_merge.testing import make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
LIMITS = {
    "THROTTLE_BACKOFF_AFTER": 12, "THROTTLE_BACKOFF_BASE": 60,
    "THROTTLE_LOCK_AFTER": 20,
    "THROTTLE_PRINCIPAL_PER_HOUR": 50, "THROTTLE_PRINCIPAL_PER_DAY": 100,
}


def merge_view(request: HttpRequest) -> HttpResponse:
    """A host's view that lets the library's error escape (so the request rolls back)."""
    receipt = get_service().merge(request.POST["principal"], request.POST["login"],
                                  request.POST["password"])
    return HttpResponse(receipt.message)


def sign_in_view(request: HttpRequest) -> HttpResponse:
    account = get_service().authenticate(request.POST["login"], request.POST["password"],
                                         client=request.META["REMOTE_ADDR"])
    return HttpResponse(account.id)


urlpatterns = [path("merge/", merge_view), path("sign-in/", sign_in_view)]

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "postgres"]),
              pytest.mark.usefixtures("django_postgres")]


@pytest.fixture(params=["side connection", pytest.param("no side connection", marks=(
    pytest.mark.xfail(strict=True, reason="defect 12.5: the request's rollback erases them")))])
def service(request: pytest.FixtureRequest,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[MergeService]:
    """The project's service on PostgreSQL, whose requests are atomic."""
    if request.param == "no side connection":
        monkeypatch.setattr(_DjangoUnitOfWork, "_uses_side", lambda self: False)
    empty_store("postgres")
    database = connections.settings["postgres"]
    monkeypatch.setitem(database, "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=__name__, ACCOUNT_MERGE={
            "DATABASE": "postgres", "VERIFIER": "fast_verifier.fast_django_verifier",
            **LIMITS}):
        yield get_service()
    close_side_connections()


def attempt(client: Client, page: str, **data: str) -> str:
    """The code of the library's error the view let escape ("ok" if none)."""
    try:
        client.post(f"/{page}/", data)
    except AccountMergeError as error:
        return error.code
    return "ok"


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
