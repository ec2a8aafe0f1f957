"""Django for the tests of this folder only: the rest of the suite runs without it.

Django's settings come from ``django_test_settings`` and are configured
when pytest reads this file, so Django is set up only when these tests
are collected.  The SQLite test database is always made; the PostgreSQL
one only when a test needs it and the server of ``tests/pg.py`` could be
started (otherwise those tests skip, or fail under
``ACCOUNT_MERGE_REQUIRE_POSTGRES=1``).

Django reads an app's translations only from compiled ``django.mo`` files,
which the wheel build makes (``hatch_build.py``).  A source checkout has
only the ``.po`` files (the ``.mo`` are ignored by git), so the app's
catalogues are compiled in place, by the build's own function
(``hatch_build.compile_catalogue``, Babel), before Django starts: the
tests always see the ``.po`` as it is now.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "django_app"
for folder in (EXAMPLE, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

POSTGRES = "postgres"


def compile_django_catalogues() -> list[Path]:
    """Write the app's ``django.mo`` next to each ``django.po`` where it is missing or stale."""
    import importlib.util
    import os

    from hatch_build import compile_catalogue

    spec = importlib.util.find_spec("account_merge.contrib.django")
    assert spec is not None and spec.origin is not None
    written = []
    for po in sorted(Path(spec.origin).parent.glob("locale/*/LC_MESSAGES/django.po")):
        mo = po.with_suffix(".mo")
        compiled = compile_catalogue(po)
        if mo.is_file() and mo.read_bytes() == compiled:
            continue
        partial = mo.with_name(f".{mo.name}.{os.getpid()}")
        partial.write_bytes(compiled)
        partial.replace(mo)
        written.append(mo)
    return written


def pytest_configure(config: pytest.Config) -> None:
    import django
    from django.apps import apps
    from django.conf import settings

    compile_django_catalogues()

    if not settings.configured:
        import django_test_settings

        settings.configure(**{name: getattr(django_test_settings, name)
                              for name in dir(django_test_settings) if name.isupper()})
    if not apps.ready:
        django.setup()


def _wants_postgres(items: list[pytest.Item]) -> bool:
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is not None and POSTGRES in (marker.kwargs.get("databases") or ()):
            return True
    return False


@pytest.fixture(autouse=True)
def _fresh_attempts_journal(request: pytest.FixtureRequest) -> None:
    """Each test of the database starts with an empty attempts journal.

    The journal of the SQLite test database (failed attempts, kept apart so
    that they outlive a request's rollback) outlives the flush or rollback
    that empties the database between tests too.
    """
    if request.node.get_closest_marker("django_db") is None:
        return
    from account_merge.contrib.django.storage import DjangoStorage

    DjangoStorage(using="default").forget_attempts()


@pytest.fixture(scope="session")
def django_postgres(postgres_url: str) -> str:
    """The ``postgres`` alias, pointed at the throwaway server; its name."""
    from django.db import connections

    parts = urlsplit(postgres_url)
    socket_dir = parse_qs(parts.query)["host"][0]
    settings_dict = connections.settings[POSTGRES]
    settings_dict.update({"NAME": parts.path.lstrip("/"), "USER": parts.username or "postgres",
                          "HOST": socket_dir, "PORT": ""})
    connections[POSTGRES].settings_dict.update(settings_dict)
    return POSTGRES


def terminate_other_sessions(alias: str) -> None:
    """End the server sessions left open by finished threads (so that DROP DATABASE works)."""
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(scope="session")
def django_db_setup(request: pytest.FixtureRequest, django_test_environment: None,
                    django_db_blocker: Any) -> Iterator[None]:
    """The test databases: SQLite always, PostgreSQL when wanted and available."""
    from django.test.utils import setup_databases, teardown_databases

    aliases = {"default"}
    if _wants_postgres(request.session.items):
        try:
            request.getfixturevalue("django_postgres")
        except (pytest.skip.Exception, pytest.fail.Exception):
            pass  # the PostgreSQL tests report it themselves
        else:
            aliases.add(POSTGRES)
    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases=aliases,
                                 serialized_aliases=set())
    yield
    with django_db_blocker.unblock():
        if POSTGRES in aliases:
            terminate_other_sessions(POSTGRES)
        from django.db import connections

        journal = f"{connections['default'].settings_dict['NAME']}-attempts.sqlite3"
        teardown_databases(config, verbosity=0)
    # The SQLite test database's attempts journal goes with it.
    for leftover in (journal, f"{journal}-wal", f"{journal}-shm"):
        Path(leftover).unlink(missing_ok=True)
