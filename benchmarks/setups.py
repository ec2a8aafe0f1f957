"""P5's setups: the stores, and how eight clients call the service in each.

- ``sqlite-threads``, ``sqlite-processes``: :class:`~account_merge.SQLiteStorage`
  in one file, shared by 8 threads of one process, or used by 8 processes;
- ``postgresql``: :class:`~account_merge.storage.sqlalchemy.SQLAlchemyStorage`
  on an engine of its own, 8 threads;
- ``django-sqlite``, ``django-postgresql``: the service of the Django app
  (``get_service()``: :class:`~account_merge.contrib.django.storage.DjangoStorage`
  and the app's verifier), 8 threads, each with its own connection as
  Django keeps them;
- ``flask-sqlalchemy``: the Flask extension over Flask-SQLAlchemy's
  ``db.session`` (session mode: every unit of work a SAVEPOINT of the
  request's transaction), 8 threads, each operation in an application
  context of its own and committed by the host as a request would.

A setup is built in the process that runs it (:func:`prepare`): Django's
settings and a Flask application are made once per process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import argon2

from account_merge import Argon2Verifier, MergeService
from account_merge.ports import Storage

#: The setups, in the order they run, and how they are named in the output.
SETUPS: dict[str, str] = {
    "sqlite-threads": "SQLite, 8 threads",
    "sqlite-processes": "SQLite, 8 processes",
    "postgresql": "PostgreSQL (SQLAlchemy)",
    "django-sqlite": "Django, SQLite",
    "django-postgresql": "Django, PostgreSQL",
    "flask-sqlalchemy": "Flask-SQLAlchemy (PG)",
}
#: The setups that need a PostgreSQL database (the run makes one for each).
POSTGRES_SETUPS = frozenset({"postgresql", "django-postgresql", "flask-sqlalchemy"})
#: At most this many merges into one parent.
MERGES_PER_PARENT = 3

HASHERS: dict[str, Callable[[], argon2.PasswordHasher]] = {
    "default": argon2.PasswordHasher,
    "cheapest": lambda: argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST),
}


@dataclass(frozen=True)
class Config:
    """What one setup runs (given as JSON on the command line)."""

    setup: str
    clients: int
    operations: int  # per client and phase (workload), verifications (capacity)
    rounds: int
    hasher: str
    folder: str
    database_url: str | None = None
    server_pid: int | None = None  # the PostgreSQL server's, to count its CPU time

    def merges_per_client(self) -> int:
        """Merges each client makes on its accounts at the measured parameters."""
        return (self.rounds * self.operations + WARM_UP) // 2 + 1

    def parents_per_client(self) -> int:
        return math.ceil(self.merges_per_client() / MERGES_PER_PARENT)


#: Operations of each client in the warm-up phase.
WARM_UP = 2


class Host(Protocol):
    """How a client calls the service: directly, or as a request of a framework would."""

    def call(self, step: Callable[[MergeService], object], light: bool) -> None: ...

    def done(self) -> None: ...



# -- hosts -----------------------------------------------------------------------------------
def light_twin(service: MergeService) -> MergeService:
    """The same service with argon2's cheapest parameters, for the light phase.

    With the measured verifier, a sign-in on an account whose hash has
    other parameters would hash the password again at the measured ones.
    """
    verifier = Argon2Verifier(HASHERS["cheapest"](), warn_if_weak=False)
    return MergeService(service.storage, verifier, service.clock, policies=service.policies)


class Direct:
    """The service called directly, as a program of its own would."""

    def __init__(self, service: MergeService, light: MergeService) -> None:
        self.services = {False: service, True: light}

    def call(self, step: Callable[[MergeService], object], light: bool) -> None:
        step(self.services[light])

    def done(self) -> None:
        pass


class DjangoThread(Direct):
    """The Django app's service; the thread's connections are closed at the end."""

    def done(self) -> None:
        from django.db import connections  # noqa: PLC0415

        self.services[False].storage.close()  # this thread's side connections
        connections.close_all()


class FlaskRequest:
    """Each operation in an application context, committed by the host as a request would."""

    def __init__(self, app: Any, db: Any, light: MergeService) -> None:
        self.app = app
        self.db = db
        self.light = light

    def call(self, step: Callable[[MergeService], object], light: bool) -> None:
        from account_merge.contrib.flask import get_service  # noqa: PLC0415

        with self.app.app_context():
            try:
                step(self.light if light else get_service())
            except BaseException:
                self.db.session.rollback()
                raise
            self.db.session.commit()

    def done(self) -> None:
        pass


# -- setups ------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A setup ready to run: a host per client, the store to load, what to close at the end."""

    hosts: Callable[[], Host]
    storage: Storage
    close: Callable[[], None]


def verifier_for_config(config: Config) -> Argon2Verifier:
    return Argon2Verifier(HASHERS[config.hasher](), warn_if_weak=False)


def _argon2_settings(config: Config) -> dict[str, Any]:
    """The service's settings for the hasher measured (none for argon2-cffi's defaults)."""
    if config.hasher == "default":
        return {}
    h = HASHERS[config.hasher]()
    return {"ARGON2_TIME_COST": h.time_cost, "ARGON2_MEMORY_COST": h.memory_cost,
            "ARGON2_PARALLELISM": h.parallelism, "ARGON2_WARN_IF_WEAK": False}


def sqlite_path(config: Config) -> Path:
    return Path(config.folder) / f"p5-{config.setup}.sqlite3"


def _fresh_sqlite_file(config: Config) -> Path:
    """The setup's SQLite file, deleted if a former run left it."""
    path = sqlite_path(config)
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    return path


def _postgres_parts(url: str) -> dict[str, str]:
    """Django's settings of a database given by a throwaway server's SQLAlchemy URL."""
    parts = urlsplit(url)
    return {"NAME": parts.path.lstrip("/"), "USER": parts.username or "postgres",
            "HOST": parse_qs(parts.query)["host"][0], "PORT": ""}


def prepare(config: Config) -> Prepared:
    """Build the setup's store and service (in this process)."""
    name = config.setup
    if name in ("sqlite-threads", "sqlite-processes"):
        from account_merge import SQLiteStorage  # noqa: PLC0415

        storage: Storage = SQLiteStorage(_fresh_sqlite_file(config))
        service = MergeService(storage, verifier_for_config(config))
        light = light_twin(service)
        return Prepared(lambda: Direct(service, light), storage, storage.close)
    if name == "postgresql":
        from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

        assert config.database_url is not None
        pg = SQLAlchemyStorage.from_url(config.database_url, pool_size=config.clients,
                                        max_overflow=config.clients)
        pg.create_schema()
        service = MergeService(pg, verifier_for_config(config))
        light = light_twin(service)
        return Prepared(lambda: Direct(service, light), pg, pg.close)
    if name.startswith("django-"):
        return _prepare_django(config)
    if name == "flask-sqlalchemy":
        return _prepare_flask(config)
    raise SystemExit(f"unknown setup {name}")


def _prepare_django(config: Config) -> Prepared:
    import django  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415

    if config.setup == "django-sqlite":
        database: dict[str, Any] = {"ENGINE": "django.db.backends.sqlite3",
                                    "NAME": str(_fresh_sqlite_file(config)),
                                    "OPTIONS": {"timeout": 30}}
    else:
        assert config.database_url is not None
        database = {"ENGINE": "django.db.backends.postgresql",
                    **_postgres_parts(config.database_url)}
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "account_merge.contrib.django"],
        DATABASES={"default": database}, USE_TZ=True, TIME_ZONE="Europe/Paris",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField", SECRET_KEY="benchmark-only",
        ACCOUNT_MERGE=_argon2_settings(config),  # nothing: the app's defaults
    )
    django.setup()
    call_command("migrate", verbosity=0)
    from django.db import connections  # noqa: PLC0415

    from account_merge.contrib.django.service import get_service  # noqa: PLC0415

    service = get_service()
    light = light_twin(service)
    connections.close_all()
    return Prepared(lambda: DjangoThread(service, light), service.storage, lambda: None)


def _prepare_flask(config: Config) -> Prepared:
    from flask import Flask  # noqa: PLC0415
    from flask_sqlalchemy import SQLAlchemy  # noqa: PLC0415

    from account_merge.contrib.flask import get_state, init_app  # noqa: PLC0415

    assert config.database_url is not None
    app = Flask("p5")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=config.database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": config.clients,
                                   "max_overflow": config.clients},
        **{f"ACCOUNT_MERGE_{k}": v for k, v in _argon2_settings(config).items()},
    )
    db = SQLAlchemy(app)
    init_app(app)  # session mode: over db.session
    with app.app_context():
        state = get_state()
        assert state.in_host_transaction, state.storage_kind
        state.create_schema()
        db.session.commit()
        light = light_twin(state.service)
    # Bulk loading through a store of its own on the same tables (it commits per chunk).
    from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

    loader = SQLAlchemyStorage.from_url(config.database_url)

    def close() -> None:
        loader.close()
        with app.app_context():
            db.engine.dispose()

    return Prepared(lambda: FlaskRequest(app, db, light), loader, close)
