"""A downstream project uses the testing kit as its own test suite would.

A throwaway project is created in a temporary folder with its own
conftest.py and its own virtual environment, into which the package's
wheel is installed: it enables the pytest plugin, uses the strategies,
subclasses the conformance suite for a storage of its own (a thin wrapper
over the in-memory store, as an adapter author would start), overrides the
storage fixture, and its pytest run passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = '''
import pytest
from my_storage import MyStorage

pytest_plugins = ["account_merge.testing.pytest_plugin"]


@pytest.fixture
def account_merge_storage():
    storage = MyStorage()
    yield storage
    storage.close()
'''

MY_STORAGE = '''
from account_merge import InMemoryStorage
from account_merge.ports import write_alone


class MyStorage:
    """The ENT's own store (here it delegates to the in-memory one)."""

    def __init__(self):
        self._inner = InMemoryStorage()
        self.units_of_work = 0

    def unit_of_work(self, *, write=True):
        self.units_of_work += 1
        return self._inner.unit_of_work(write=write)

    def write(self, changes):
        write_alone(self, changes)

    def close(self):
        self._inner.close()
'''

TEST_VIEWS = '''
from hypothesis import given, settings
from my_storage import MyStorage

from account_merge.testing import capture_events, make_establishment
from account_merge.testing.conformance import StorageContract
from account_merge.testing.strategies import children, populated_services

SCHOOL = make_establishment(860001, "Collège Jean Moulin")


def test_the_package_comes_from_this_project_s_environment():
    import account_merge, sys
    assert account_merge.__file__.startswith(sys.prefix)


def test_the_plugin_runs_the_service_on_my_storage(account_merge_service, account_merge_storage,
                                                   account_merge_clock):
    assert isinstance(account_merge_storage, MyStorage)
    kid = children(SCHOOL.uai).example()
    with capture_events(account_merge_service) as captured:
        letter = account_merge_service.issue_account(SCHOOL, "Claire Robert", [kid])
    assert captured.names == ["account_issued"]
    account_merge_clock.advance(days=91)
    assert letter.expires_at < account_merge_clock()
    assert account_merge_storage.units_of_work > 0


@settings(max_examples=5, deadline=None)
@given(populated_services(MyStorage))
def test_populated_stores_keep_every_child(population):
    service = population.service
    for letter in population.letters:
        holder = service.resolve(letter.account_id)
        assert set(letter.children) <= set(service.children(holder.id))


class TestMyStorageConforms(StorageContract):
    state_machine_examples = 5

    def make_storage(self):
        return MyStorage()
'''


@pytest.mark.slow
def test_a_downstream_project_runs_the_kit_on_its_own_storage(tmp_path: Path) -> None:
    wheels, project, env = tmp_path / "dist", tmp_path / "project", tmp_path / "venv"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True)
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", *map(str, wheels.glob("*.whl"))], check=True)
    # The dependencies (attrs, argon2-cffi, babel, pytest, hypothesis) come from this
    # environment, after the project's own site-packages, where the wheel went.
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(python), "-c", where],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    (project / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (project / "my_storage.py").write_text(MY_STORAGE, encoding="utf-8")
    (project / "test_views.py").write_text(TEST_VIEWS, encoding="utf-8")
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=project, capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    # The whole conformance suite ran on the project's store: every mixin passed but
    # the five tests whose hooks or tier (a broken store, a host transaction, bulk
    # loading, the dump of every row that two retention tests read) the project does
    # not offer.
    summary = re.search(r"(\d+) passed, 5 skipped", result.stdout)
    assert summary is not None and int(summary.group(1)) >= 40, result.stdout
