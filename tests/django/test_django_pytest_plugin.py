"""The pytest plugin in a Django project: the service of the project's settings.

A project's suite enables the plugin and pytest-django; its tests get a
service built from its ``ACCOUNT_MERGE`` settings, which is also what
``get_service()`` gives its views.  Before, the plugin gave a bare
in-memory service: an identity rule the project's settings refuse merges
with passed in its tests.  Each test here runs a small project's suite in
a pytest of its own.
"""

from __future__ import annotations

import textwrap

import pytest

SETTINGS = """
SECRET_KEY = "a project's key, for its tests"
USE_TZ = True
ROOT_URLCONF = "project_urls"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "account_merge.contrib.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": "project.sqlite3"}}
ACCOUNT_MERGE = {
    "IDENTITY_RULE": "account_merge.service.same_display_name",
    "THROTTLE_BACKOFF_AFTER": 2,
    "BASE_URL": "https://ent.example",
    "LINKS": {"password_reset": "reset", "email_verification": "/courriel/{token}/",
              "sign_in": "/connexion/"},
}
"""

URLS = """
from django.http import HttpResponse
from django.urls import path

from account_merge.contrib.django import get_service


def reset(request, token):
    return HttpResponse(get_service().reset_password(token, "Tournesol-Bleu-Vif-2028").login)


urlpatterns = [path("mot-de-passe/<str:token>/", reset, name="reset")]
"""

TESTS = """
import pytest

from account_merge import Child
from account_merge.contrib.django import get_service
from account_merge.exceptions import NotAuthorized, TooManyAttempts
from account_merge.testing import make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"

pytestmark = pytest.mark.django_db


def letter(service, name, child):
    return service.issue_account(SCHOOL, name, [Child(child, child, "X", SCHOOL.uai)])


def test_the_views_get_the_test_s_service(account_merge_service):
    assert get_service() is account_merge_service


def test_the_identity_rule_of_the_settings_refuses_the_merge(account_merge_service):
    mine, theirs = letter(account_merge_service, "Claire Robert", "c1"), \\
        letter(account_merge_service, "Marc Dupont", "c2")
    principal = account_merge_service.activate(mine.login, mine.provisional_password, STRONG)
    with pytest.raises(NotAuthorized):
        account_merge_service.merge(principal.id, theirs.login, theirs.provisional_password)


def test_the_throttle_of_the_settings_applies(account_merge_service):
    mine = letter(account_merge_service, "Claire Robert", "c1")
    account_merge_service.activate(mine.login, mine.provisional_password, STRONG)
    for _ in range(2):
        with pytest.raises(Exception):
            account_merge_service.authenticate(mine.login, "WRONG123")
    with pytest.raises(TooManyAttempts):
        account_merge_service.authenticate(mine.login, STRONG)


def test_the_links_are_the_project_s(account_merge_service, account_merge_mailer, client):
    mine = letter(account_merge_service, "Claire Robert", "c1")
    account_merge_service.activate(mine.login, mine.provisional_password, STRONG,
                                   email="claire@example.org")
    account_merge_service.deliver_notices(account_merge_mailer)
    account_merge_service.confirm_email(account_merge_mailer.last().url.rsplit("/", 2)[-2])
    account_merge_service.request_password_reset(mine.login)
    account_merge_service.deliver_notices(account_merge_mailer)
    url = account_merge_mailer.last().url
    assert url.startswith("https://ent.example/mot-de-passe/")
    assert client.get(url.removeprefix("https://ent.example")).content.decode() == mine.login
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(project_settings=SETTINGS, project_urls=URLS,
                        test_project=textwrap.dedent(TESTS))
    pytester.makeconftest('pytest_plugins = ["account_merge.testing.pytest_plugin"]\n')
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = project_settings\n")
    return pytester


def test_a_project_s_suite_gets_the_service_of_its_settings(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "pytest_django.plugin",
                                          "-p", "no:cacheprovider")

    result.assert_outcomes(passed=4)
