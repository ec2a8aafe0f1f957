"""Django's ``authenticate()`` and ``login()`` with the library's accounts.

The backend signs a parent in through the service (throttled per login
and client), gives Django the project's user linked to the account, and
signs that user out once the account is merged away.  The client is the
connection's address, or, behind the project's trusted proxies only, the
address they name: a header a client sets itself never picks its bucket.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import authenticate, get_user_model, login
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import path

from account_merge import Child, MergeService, NotificationLetter
from account_merge.contrib.django import (
    account_merge_errors,
    account_of,
    client_address,
    end_other_sessions,
    get_service,
    import_user,
    link_user,
    user_of,
)
from account_merge.contrib.django import models as m
from account_merge.domain.audit import AuditAction
from account_merge.exceptions import ActivationRequired, InvalidInput
from account_merge.testing import make_establishment

COLLEGE = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
NEWER = "Tournesol-Bleu-Vif-2028"
BACKENDS = ["django.contrib.auth.backends.ModelBackend",
            "account_merge.contrib.django.auth.AccountMergeBackend"]
SETTINGS = {"VERIFIER": "fast_verifier.fast_django_verifier", "THROTTLE_BACKOFF_AFTER": 3,
            "THROTTLE_BACKOFF_BASE": 60, "DJANGO_HASHERS": ["pbkdf2_sha256"]}


@account_merge_errors
def sign_in(request: HttpRequest) -> HttpResponse:
    try:
        user = authenticate(request, username=request.POST["login"],
                            password=request.POST["password"])
    except ActivationRequired:
        return HttpResponse("activate", status=409)
    if user is None:
        return HttpResponse("refused", status=401)
    login(request, user)
    return HttpResponse("ok")


def whoami(request: HttpRequest) -> HttpResponse:
    account = account_of(request.user)
    return HttpResponse(account.login if account is not None else "anonymous")


def new_password(request: HttpRequest) -> HttpResponse:
    account = account_of(request.user)
    assert account is not None
    get_service().change_password(account.id, STRONG, NEWER)
    end_other_sessions(account.id, request)
    return HttpResponse("changed")


urlpatterns = [path("sign-in/", sign_in), path("whoami/", whoami),
               path("new-password/", new_password), path("admin/", admin.site.urls)]

pytestmark = pytest.mark.django_db


@pytest.fixture
def service() -> Iterator[MergeService]:
    with override_settings(ROOT_URLCONF=__name__, AUTHENTICATION_BACKENDS=BACKENDS,
                           ACCOUNT_MERGE=SETTINGS):
        yield get_service()


def activated(service: MergeService, first_name: str = "Dylan") -> NotificationLetter:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child(f"ine-{first_name}", first_name, "Robert",
                                          COLLEGE.uai)])
    service.activate(letter.login, letter.provisional_password, STRONG)
    return letter


def sign_in_as(client: Client, login: str, password: str = STRONG, **extra: Any) -> Any:
    return client.post("/sign-in/", {"login": login, "password": password}, **extra)


def test_a_parent_signs_in_with_django_s_authenticate_and_login(service: MergeService) -> None:
    letter = activated(service)
    client = Client()

    assert sign_in_as(client, letter.login).content == b"ok"

    assert client.get("/whoami/").content.decode() == letter.login
    user = user_of(letter.account_id)
    assert user is not None and user.get_username() == letter.login
    assert not user.has_usable_password() and not user.is_staff
    # A second sign-in finds the same user.
    assert sign_in_as(Client(), letter.login).content == b"ok"
    assert get_user_model().objects.filter(username=letter.login).count() == 1


def test_a_wrong_password_is_refused_and_the_throttle_answers_429(service: MergeService) -> None:
    letter = activated(service)
    client = Client()

    statuses = [sign_in_as(client, letter.login, "WRONG123").status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 429]
    response = sign_in_as(client, letter.login)
    assert response.status_code == 429 and int(response["Retry-After"]) > 0


def test_a_throttled_parent_on_a_page_without_the_decorator_gets_django_s_refusal(
        service: MergeService) -> None:
    """The admin's sign-in page: PermissionDenied inside the backend, never a 500."""
    letter = activated(service)
    client = Client()
    for _ in range(4):
        sign_in_as(client, letter.login, "WRONG123")

    response = client.post("/admin/login/", {"username": letter.login, "password": STRONG})

    assert response.status_code == 200  # the admin's form again, with its own message
    assert "_auth_user_id" not in client.session


def test_the_project_s_own_users_are_not_counted_by_the_library(service: MergeService) -> None:
    User.objects.create_user("direction", password=STRONG, is_staff=True)
    for _ in range(5):
        assert Client().post("/admin/login/", {"username": "direction",
                                                "password": STRONG}).status_code == 302
    assert Client().post("/admin/login/", {"username": "direction",
                                            "password": "WRONG123"}).status_code == 200

    assert [r for r in service.audit_trail(None, limit=100)
            if r.action is AuditAction.AUTHENTICATE] == []


def test_a_letter_s_password_lets_activation_required_out_to_the_view(
        service: MergeService) -> None:
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])

    response = sign_in_as(Client(), letter.login, letter.provisional_password.reveal())

    assert (response.status_code, response.content) == (409, b"activate")
    assert user_of(letter.account_id) is None


def test_an_account_merged_away_signs_its_user_out(service: MergeService) -> None:
    first, second = activated(service, "Dylan"), activated(service, "Florian")
    parent, other_browser = Client(), Client()
    sign_in_as(parent, first.login)
    sign_in_as(other_browser, second.login)

    service.merge(first.account_id, second.login, STRONG)

    assert parent.get("/whoami/").content.decode() == first.login
    assert other_browser.get("/whoami/").content == b"anonymous"


def test_a_new_password_ends_the_account_s_other_sessions(service: MergeService) -> None:
    letter = activated(service)
    here, elsewhere = Client(), Client()
    sign_in_as(here, letter.login)
    sign_in_as(elsewhere, letter.login)

    assert here.post("/new-password/").content == b"changed"

    assert here.get("/whoami/").content.decode() == letter.login
    assert elsewhere.get("/whoami/").content == b"anonymous"


@pytest.mark.django_db(transaction=True)
def test_two_first_sign_ins_at_once_make_one_user(service: MergeService) -> None:
    letter = activated(service)
    barrier = threading.Barrier(4)
    answers: list[bytes] = []

    def parent() -> None:
        client = Client()
        barrier.wait()
        answers.append(sign_in_as(client, letter.login).content)

    threads = [threading.Thread(target=parent) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [b"ok"] * 4
    assert get_user_model().objects.filter(username=letter.login).count() == 1
    assert m.UserLink.objects.filter(account_id=letter.account_id).count() == 1


def test_a_user_the_project_has_is_linked_to_the_account_of_its_letter(
        service: MergeService) -> None:
    user = User.objects.create_user("claire")
    user.set_unusable_password()
    user.save()
    letter = service.issue_account(COLLEGE, "Claire Robert",
                                   [Child("ine-dylan", "Dylan", "Robert", COLLEGE.uai)])

    link_user(user, letter.account_id)
    service.activate(letter.login, letter.provisional_password, STRONG)

    client = Client()
    assert sign_in_as(client, letter.login).content == b"ok"
    assert client.session["_auth_user_id"] == str(user.pk)
    with pytest.raises(InvalidInput):
        link_user(User.objects.create_user("autre"), letter.account_id)


def test_a_user_the_project_has_is_imported_and_keeps_the_password(
        service: MergeService) -> None:
    user = User.objects.create_user("claire.martin", password=STRONG, first_name="Claire",
                                     last_name="Martin")
    assert user.password.startswith("pbkdf2_sha256$")

    account = import_user(user, COLLEGE, [Child("ine-lea", "Léa", "Martin", COLLEGE.uai)])

    assert (account.login, account.display_name) == ("claire.martin", "Claire Martin")
    user.refresh_from_db()
    assert not user.has_usable_password()  # only the library checks it now
    client = Client()
    assert sign_in_as(client, "claire.martin").content == b"ok"
    assert client.session["_auth_user_id"] == str(user.pk)
    assert [c.first_name for c in service.children(account.id)] == ["Léa"]
    assert service.audit_trail(account.id)[0].actor == f"establishment:{COLLEGE.uai}"


def test_importing_a_password_of_a_format_not_accepted_is_refused(
        service: MergeService) -> None:
    user = User.objects.create_user("claire.martin")
    user.password = "md5$salt$0123456789abcdef0123456789abcdef"
    user.save()

    with pytest.raises(InvalidInput, match="DJANGO_HASHERS"):
        import_user(user, COLLEGE, [Child("ine-lea", "Léa", "Martin", COLLEGE.uai)])
    assert m.UserLink.objects.count() == 0


# -- the client ---------------------------------------------------------------------------
def request_from(remote: str, forwarded: str | None = None) -> HttpRequest:
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_trusted_proxies_the_client_is_the_connection_s_address() -> None:
    with override_settings(ACCOUNT_MERGE={}):
        assert client_address(request_from("203.0.113.9", "198.51.100.7")) == "203.0.113.9"
        assert client_address(None) is None


@pytest.mark.parametrize(("remote", "forwarded", "client"), [
    ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
    # What the client wrote itself is left of what the proxies appended.
    ("10.0.0.2", "198.51.100.7, 203.0.113.9", "203.0.113.9"),
    ("10.0.0.2", "198.51.100.7, 203.0.113.9, 10.0.0.3", "203.0.113.9"),
    ("10.0.0.2", "not-an-address, 10.0.0.3", "10.0.0.3"),
    ("10.0.0.2", None, "10.0.0.2"),
    # A connection not from a proxy: its header is the client's own words.
    ("203.0.113.9", "198.51.100.7", "203.0.113.9"),
    ("::ffff:10.0.0.2", "2001:db8::7", "2001:db8::7"),
])
def test_behind_trusted_proxies_the_client_is_the_last_address_they_did_not_write(
        remote: str, forwarded: str | None, client: str) -> None:
    with override_settings(ACCOUNT_MERGE={"TRUSTED_PROXIES": ["10.0.0.0/8"]}):
        assert client_address(request_from(remote, forwarded)) == client


def test_a_stranger_behind_the_proxy_never_slows_the_owner_down(service: MergeService) -> None:
    letter = activated(service)
    stranger, owner = Client(REMOTE_ADDR="10.0.0.2"), Client(REMOTE_ADDR="10.0.0.2")
    with override_settings(ACCOUNT_MERGE={**SETTINGS, "TRUSTED_PROXIES": ["10.0.0.2"]}):
        # The stranger even claims to be the owner: the proxy appends the real address.
        statuses = [sign_in_as(stranger, letter.login, "WRONG123",
                               HTTP_X_FORWARDED_FOR="198.51.100.7, 203.0.113.9").status_code
                    for _ in range(4)]
        assert statuses == [401, 401, 401, 429]

        assert sign_in_as(owner, letter.login,
                          HTTP_X_FORWARDED_FOR="198.51.100.7").content == b"ok"
