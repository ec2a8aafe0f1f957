"""account_merge.contrib.flask: init_app, the configuration keys, get_service, Flask-SQLAlchemy."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
sqlalchemy = pytest.importorskip("sqlalchemy")

import jinja2  # noqa: E402
from flask import Flask  # noqa: E402
from flask_sqlalchemy import SQLAlchemy  # noqa: E402

from account_merge import (  # noqa: E402
    Child,
    Establishment,
    InMemoryStorage,
    MergeService,
    SQLiteStorage,
    ThrottlePolicy,
    exceptions,
)
from account_merge.contrib.flask import (  # noqa: E402
    CONFIG_KEYS,
    EXTENSION_KEY,
    STATUS_CODES,
    STORE_KEYS,
    AccountMerge,
    AccountMergeState,
    get_service,
    get_state,
    handle_errors,
    init_app,
    status_for,
)
from account_merge.exceptions import (  # noqa: E402
    AccountNotFound,
    InvalidCredentials,
    InvalidInput,
    TooManyAttempts,
)
from account_merge.messages import error_message  # noqa: E402
from account_merge.service import same_display_name  # noqa: E402
from account_merge.service.bootstrap import SETTINGS  # noqa: E402
from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: E402
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier  # noqa: E402

COLLEGE = Establishment("0869999B", "Collège des Trois Rivières")
DYLAN = Child("D0001", "Dylan", "Robert", COLLEGE.uai)
FLORIAN = Child("F0002", "Florian", "Robert", COLLEGE.uai)
PASSWORD = "Trois-Rivieres-2024!"
NBSP = "\u00a0"
CHEAP_ARGON2 = {"ACCOUNT_MERGE_ARGON2_PROFILE": "CHEAPEST",
                "ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK": False}

_prefixes = itertools.count()


def fresh_prefix() -> str:
    """A table prefix no other test of this run uses (one PostgreSQL database for all)."""
    return f"fl{next(_prefixes)}_"


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, **config)
    return app


# -- init_app and the state ------------------------------------------------------------


def test_init_app_keeps_the_service_and_its_store_in_app_extensions() -> None:
    app = make_app()
    storage = InMemoryStorage()
    state = init_app(app, storage, verifier=fast_verifier())
    assert app.extensions[EXTENSION_KEY] is state
    assert isinstance(state, AccountMergeState)
    assert isinstance(state.service, MergeService)
    assert state.storage is storage and state.service.storage is storage
    assert state.storage_kind == "given" and not state.in_host_transaction
    assert get_state(app) is state


def test_the_extension_object_keeps_nothing_per_application() -> None:
    """One AccountMerge object serves two applications, each with its own service."""
    ext = AccountMerge()
    first, second = make_app(), make_app()
    ext.init_app(first, InMemoryStorage(), verifier=fast_verifier())
    ext.init_app(second, InMemoryStorage(), verifier=fast_verifier())
    assert vars(ext) == {}
    with first.app_context():
        assert ext.service is get_state(first).service
    with second.app_context():
        assert ext.service is get_state(second).service
    assert get_state(first).service is not get_state(second).service


def test_the_extension_object_sets_up_the_app_it_is_given() -> None:
    app = make_app()
    AccountMerge(app, storage=InMemoryStorage(), verifier=fast_verifier())
    assert EXTENSION_KEY in app.extensions


def test_setting_up_an_application_twice_is_refused() -> None:
    app = make_app()
    init_app(app, InMemoryStorage(), verifier=fast_verifier())
    with pytest.raises(RuntimeError, match="already"):
        init_app(app, InMemoryStorage(), verifier=fast_verifier())


def test_get_service_in_a_request_finds_the_current_applications_service() -> None:
    apps = [make_app(), make_app()]
    for app in apps:
        init_app(app, InMemoryStorage(), verifier=fast_verifier())

        @app.get("/service")
        def service_id() -> str:
            return str(id(get_service()))

    for app in apps:
        response = app.test_client().get("/service")
        assert response.text == str(id(get_state(app).service))


def test_get_service_says_when_the_application_was_not_set_up() -> None:
    with make_app().test_request_context(), pytest.raises(RuntimeError, match="init_app"):
        get_service()


def test_get_service_outside_an_application_context_raises() -> None:
    with pytest.raises(RuntimeError):
        get_service()


# -- configuration keys ----------------------------------------------------------------


def test_the_configuration_keys_build_the_verifier_throttle_and_letters() -> None:
    """Values may be strings, as read from the environment."""
    app = make_app(
        ACCOUNT_MERGE_ARGON2_PROFILE="cheapest",
        ACCOUNT_MERGE_ARGON2_TIME_COST="2",
        ACCOUNT_MERGE_ARGON2_MEMORY_COST=16,
        ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK="false",
        ACCOUNT_MERGE_THROTTLE_LOCK_AFTER="4",
        ACCOUNT_MERGE_THROTTLE_LOCK_FOR="3600",
        ACCOUNT_MERGE_THROTTLE_BACKOFF_BASE=timedelta(seconds=2),
        ACCOUNT_MERGE_THROTTLE_PRINCIPAL_PER_HOUR=3,
        ACCOUNT_MERGE_PROVISIONAL_VALIDITY=7 * 24 * 3600,
        ACCOUNT_MERGE_PROVISIONAL_LENGTH="10",
    )
    service = init_app(app, InMemoryStorage()).service
    hasher = service.verifier.hasher  # type: ignore[attr-defined]
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (2, 16, 1)
    assert service.throttle == ThrottlePolicy(lock_after=4, lock_for=timedelta(hours=1),
                                              backoff_base=timedelta(seconds=2),
                                              principal_per_hour=3)
    assert service.policies.provisional_validity == timedelta(days=7)
    letter = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
    assert len(letter.provisional_password.reveal()) == 10


def test_without_argon2_keys_the_verifier_has_argon2_cffis_defaults() -> None:
    service = init_app(make_app(), InMemoryStorage()).service
    hasher = service.verifier.hasher  # type: ignore[attr-defined]
    assert (hasher.time_cost, hasher.memory_cost) == (3, 65536)


def test_objects_given_to_init_app_win_over_the_keys() -> None:
    policy = ThrottlePolicy(lock_after=7)
    verifier = fast_verifier()
    clock = FakeClock()
    app = make_app(ACCOUNT_MERGE_THROTTLE_LOCK_AFTER=2, ACCOUNT_MERGE_ARGON2_TIME_COST=5)
    service = init_app(app, InMemoryStorage(), throttle=policy, verifier=verifier,
                       clock=clock).service
    assert service.throttle is policy and service.verifier is verifier
    assert service.clock is clock


def test_every_key_read_is_listed() -> None:
    assert {"ACCOUNT_MERGE_DATABASE_URL", "ACCOUNT_MERGE_SQLITE_PATH",
            "ACCOUNT_MERGE_FLASK_SQLALCHEMY", "ACCOUNT_MERGE_ARGON2_MEMORY_COST",
            "ACCOUNT_MERGE_THROTTLE_PRINCIPAL_PER_DAY"} <= CONFIG_KEYS
    assert all(key.startswith("ACCOUNT_MERGE_") for key in CONFIG_KEYS)


def test_the_service_keys_are_the_settings_of_every_integration() -> None:
    """One vocabulary: the composition root's settings, with the prefix."""
    assert {f"ACCOUNT_MERGE_{name}" for name in SETTINGS} == CONFIG_KEYS - STORE_KEYS


def test_the_composition_roots_settings_reach_the_service() -> None:
    """Settings Flask's own parsing never had: the identity rule, the clock, by dotted path."""
    app = make_app(ACCOUNT_MERGE_IDENTITY_RULE="account_merge.service.same_display_name",
                   ACCOUNT_MERGE_CLOCK="account_merge.testing.FakeClock",
                   ACCOUNT_MERGE_VERIFIER="account_merge.testing.fast_verifier")
    service = init_app(app, InMemoryStorage()).service
    assert service.policies.identity_rule is same_display_name
    assert service.clock is FakeClock


def test_a_misspelt_key_is_an_error_not_a_silent_default() -> None:
    app = make_app(ACCOUNT_MERGE_THROTLE_LOCK_AFTER=3)
    with pytest.raises(InvalidInput) as caught:
        init_app(app, InMemoryStorage())
    assert caught.value.field == "ACCOUNT_MERGE_THROTLE_LOCK_AFTER"
    assert EXTENSION_KEY not in app.extensions


@pytest.mark.filterwarnings("ignore::account_merge.credentials.WeakHashParametersWarning")
@pytest.mark.parametrize(("key", "value"), [
    ("ACCOUNT_MERGE_THROTTLE_LOCK_AFTER", "beaucoup"),
    ("ACCOUNT_MERGE_THROTTLE_LOCK_AFTER", True),
    ("ACCOUNT_MERGE_THROTTLE_LOCK_AFTER", 0),
    ("ACCOUNT_MERGE_THROTTLE_LOCK_FOR", "une heure"),
    ("ACCOUNT_MERGE_ARGON2_PROFILE", "FASTEST"),
    ("ACCOUNT_MERGE_ARGON2_MEMORY_COST", 1),
    ("ACCOUNT_MERGE_ARGON2_WARN_IF_WEAK", "peut-être"),
    ("ACCOUNT_MERGE_FLASK_SQLALCHEMY", "both"),
    ("ACCOUNT_MERGE_PROVISIONAL_LENGTH", 3),
])
def test_a_malformed_value_is_an_error_naming_its_key(key: str, value: object) -> None:
    cheap = {} if "ARGON2" in key else CHEAP_ARGON2
    app = make_app(**{**cheap, key: value})
    with pytest.raises(InvalidInput) as caught:
        init_app(app, None if key.endswith("FLASK_SQLALCHEMY") else InMemoryStorage())
    assert caught.value.field == key


# -- where the store comes from -----------------------------------------------------------


def test_a_database_url_makes_a_sqlalchemy_store_that_connects_to_nothing_yet(
        tmp_path: Path) -> None:
    path = tmp_path / "ent.sqlite3"
    app = make_app(ACCOUNT_MERGE_DATABASE_URL=f"sqlite:///{path}",
                   ACCOUNT_MERGE_TABLE_PREFIX="ent_", **CHEAP_ARGON2)
    state = init_app(app)
    try:
        assert isinstance(state.storage, SQLAlchemyStorage)
        assert state.storage_kind == "database_url" and state.storage.prefix == "ent_"
        assert not path.exists()
        state.create_schema()
        letter = state.service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        assert state.service.children(letter.account_id) == (DYLAN,)
    finally:
        state.close()


def test_the_attempts_journal_key_places_the_journal_of_a_sqlite_database(
        tmp_path: Path) -> None:
    folder = tmp_path / "journaux"
    folder.mkdir()
    url = f"sqlite:///{tmp_path / 'ent.sqlite3'}"
    app = make_app(ACCOUNT_MERGE_DATABASE_URL=url,
                   ACCOUNT_MERGE_ATTEMPTS_JOURNAL=f"{folder}/{{name}}.journal", **CHEAP_ARGON2)
    state = init_app(app, verifier=fast_verifier())
    try:
        state.create_schema()
        with app.app_context(), pytest.raises(InvalidCredentials):
            get_service().authenticate("personne", "WRONG-PASSWORD")
    finally:
        state.close()
    assert (folder / "ent.sqlite3.journal").is_file()
    wrong = make_app(ACCOUNT_MERGE_DATABASE_URL=url,
                     ACCOUNT_MERGE_ATTEMPTS_JOURNAL="{dossier}/attempts.sqlite3")
    with pytest.raises(InvalidInput) as caught:
        init_app(wrong, verifier=fast_verifier())
    assert caught.value.field == "ACCOUNT_MERGE_ATTEMPTS_JOURNAL"


def test_a_sqlite_path_makes_a_sqlite_store(tmp_path: Path) -> None:
    app = make_app(ACCOUNT_MERGE_SQLITE_PATH=str(tmp_path / "ent.sqlite3"), **CHEAP_ARGON2)
    state = init_app(app)
    try:
        assert isinstance(state.storage, SQLiteStorage) and state.storage_kind == "sqlite_path"
        letter = state.service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        assert state.service.children(letter.account_id) == (DYLAN,)
    finally:
        state.close()


def test_a_url_and_a_path_together_are_refused(tmp_path: Path) -> None:
    app = make_app(ACCOUNT_MERGE_DATABASE_URL=f"sqlite:///{tmp_path / 'a.sqlite3'}",
                   ACCOUNT_MERGE_SQLITE_PATH=str(tmp_path / "b.sqlite3"))
    with pytest.raises(InvalidInput, match="not both"):
        init_app(app)


def test_without_any_store_init_app_says_how_to_give_one() -> None:
    with pytest.raises(InvalidInput, match="ACCOUNT_MERGE_DATABASE_URL"):
        init_app(make_app())


def test_the_upgrade_schema_command_says_what_it_did(tmp_path: Path) -> None:
    """On tables it just made, nothing: the store's own tests upgrade real old tables."""
    path = tmp_path / "ent.sqlite3"
    app = make_app(ACCOUNT_MERGE_DATABASE_URL=f"sqlite:///{path}", **CHEAP_ARGON2)
    state = init_app(app)
    try:
        result = app.test_cli_runner().invoke(args=["account-merge", "upgrade-schema"])
        assert result.exit_code == 0, result.output
        assert "created table account_merge_accounts" in result.output
        assert "schema up to date" in result.output
        assert state.upgrade_schema() == []
    finally:
        state.close()


def test_the_create_schema_command_creates_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "ent.sqlite3"
    app = make_app(ACCOUNT_MERGE_DATABASE_URL=f"sqlite:///{path}", **CHEAP_ARGON2)
    state = init_app(app)
    try:
        result = app.test_cli_runner().invoke(args=["account-merge", "create-schema"])
        assert result.exit_code == 0, result.output
        assert "schema ready" in result.output
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
        engine.dispose()
        assert "account_merge_accounts" in tables
    finally:
        state.close()


# -- Flask-SQLAlchemy -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The host's database: a SQLite file, or the throwaway PostgreSQL server."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'host.sqlite3'}"


HostApp = tuple[Flask, SQLAlchemy, "sqlalchemy.Table"]


@pytest.fixture
def make_host_app(database_url: str) -> Iterator[Callable[..., HostApp]]:
    """A factory of Flask-SQLAlchemy apps with a table of their own and account_merge."""
    made: list[tuple[Flask, SQLAlchemy]] = []

    def factory(**config: Any) -> HostApp:
        prefix = fresh_prefix()
        app = make_app(SQLALCHEMY_DATABASE_URI=database_url,
                       ACCOUNT_MERGE_TABLE_PREFIX=prefix, **config)
        db = SQLAlchemy()
        notes = db.Table(f"{prefix}host_notes",
                         db.Column("id", db.Integer, primary_key=True),
                         db.Column("text", db.Text, nullable=False))
        db.init_app(app)
        state = init_app(app, verifier=fast_verifier(), clock=FakeClock())
        with app.app_context():
            db.create_all()
            state.create_schema()
        made.append((app, db))
        return app, db, notes

    yield factory
    for app, db in made:
        with app.app_context():
            db.drop_all()
            get_state(app).storage.metadata.drop_all(db.engine)  # type: ignore[attr-defined]
            db.engine.dispose()


def _seen_by_another_connection(app: Flask, db: SQLAlchemy,
                                notes: sqlalchemy.Table) -> tuple[int, int]:
    """(the host's rows, the library's accounts) committed, read on a new engine."""
    with app.app_context():
        url = db.engine.url
    storage: SQLAlchemyStorage = get_state(app).storage  # type: ignore[assignment]
    accounts = storage.metadata.tables[f"{storage.prefix}accounts"]
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            host = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(notes))
            library = conn.execute(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(accounts))
            return host.scalar_one(), library.scalar_one()
    finally:
        engine.dispose()


def test_flask_sqlalchemy_is_found_and_its_session_reused(
        make_host_app: Callable[..., HostApp]) -> None:
    app, _, _ = make_host_app()
    state = get_state(app)
    assert state.storage_kind == "flask_sqlalchemy_session" and state.in_host_transaction
    assert isinstance(state.storage, SQLAlchemyStorage)


def test_the_library_never_commits_the_hosts_work(
        make_host_app: Callable[..., HostApp]) -> None:
    """Host row and library account ride on db.session: the host's rollback undoes both."""
    app, db, notes = make_host_app()
    with app.test_request_context():
        db.session.execute(notes.insert().values(text="écrit par l'hôte"))
        get_service().issue_account(COLLEGE, "Claire Robert", [DYLAN])
        if db.engine.dialect.name == "postgresql":  # SQLite would wait for the write lock
            assert _seen_by_another_connection(app, db, notes) == (0, 0)
        db.session.rollback()
    assert _seen_by_another_connection(app, db, notes) == (0, 0)


def test_the_hosts_commit_makes_its_work_and_the_librarys_durable_together(
        make_host_app: Callable[..., HostApp]) -> None:
    app, db, notes = make_host_app()
    with app.test_request_context():
        get_service().issue_account(COLLEGE, "Claire Robert", [DYLAN])
        db.session.execute(notes.insert().values(text="écrit par l'hôte"))
        db.session.commit()
    assert _seen_by_another_connection(app, db, notes) == (1, 1)


def test_an_uncommitted_request_leaves_nothing_behind(
        make_host_app: Callable[..., HostApp]) -> None:
    """Flask-SQLAlchemy removes the session at the end of the request: a rollback."""
    app, db, notes = make_host_app()

    @app.post("/issue")
    def issue() -> str:
        return get_service().issue_account(COLLEGE, "Claire Robert", [DYLAN]).account_id

    account_id = app.test_client().post("/issue").text
    assert _seen_by_another_connection(app, db, notes) == (0, 0)
    with app.app_context(), pytest.raises(AccountNotFound):
        get_service().get_account(account_id)


def _principal_and_letter(app: Flask, db: SQLAlchemy) -> tuple[str, str]:
    """An activated principal and another letter's login, committed."""
    with app.app_context():
        service = get_service()
        first = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        second = service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
        principal = service.activate(first.login, first.provisional_password, PASSWORD)
        db.session.commit()
    return principal.id, second.login


def _fail_twice_then_try_again(app: Flask, db: SQLAlchemy, ending: str) -> None:
    """Two wrong merges, each request ending as *ending* says; then a third attempt."""
    principal_id, login = _principal_and_letter(app, db)
    for _ in range(2):
        with app.test_request_context():
            with pytest.raises(InvalidCredentials):
                get_service().merge(principal_id, login, "WRONG-PASSWORD")
            if ending == "commit":
                db.session.commit()
            elif ending == "rollback":
                db.session.rollback()
            # "end of request": Flask-SQLAlchemy removes the session, a rollback.
    with app.test_request_context():
        get_service().merge(principal_id, login, "WRONG-PASSWORD")


@pytest.mark.parametrize("ending", ["commit", "rollback", "end of request"])
def test_failed_merges_count_whatever_the_host_does_after_them(
        make_host_app: Callable[..., HostApp], ending: str) -> None:
    """Committed on their own: on a side connection (PostgreSQL), in the journal (SQLite)."""
    app, db, _ = make_host_app(ACCOUNT_MERGE_THROTTLE_PRINCIPAL_PER_HOUR=2)
    with pytest.raises(TooManyAttempts):
        _fail_twice_then_try_again(app, db, ending)
    with app.app_context():
        outcomes = [r.outcome for r in get_service().audit_trail()]
    assert outcomes[-3:] == ["invalid_credentials", "invalid_credentials", "too_many_attempts"]


def test_in_engine_mode_the_library_commits_on_its_own(
        make_host_app: Callable[..., HostApp]) -> None:
    app, db, notes = make_host_app(ACCOUNT_MERGE_FLASK_SQLALCHEMY="engine")
    assert get_state(app).storage_kind == "flask_sqlalchemy_engine"
    with app.test_request_context():
        db.session.execute(notes.insert().values(text="écrit par l'hôte"))
        db.session.rollback()
        get_service().issue_account(COLLEGE, "Claire Robert", [DYLAN])
        db.session.rollback()
    assert _seen_by_another_connection(app, db, notes) == (0, 1)


def test_a_database_url_wins_over_flask_sqlalchemy(tmp_path: Path) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite3'}",
                   ACCOUNT_MERGE_DATABASE_URL=f"sqlite:///{tmp_path / 'lib.sqlite3'}")
    SQLAlchemy(app)
    state = init_app(app, verifier=fast_verifier())
    assert state.storage_kind == "database_url"
    state.close()


def test_flask_sqlalchemy_can_be_ignored(tmp_path: Path) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite3'}",
                   ACCOUNT_MERGE_FLASK_SQLALCHEMY="off")
    SQLAlchemy(app)
    with pytest.raises(InvalidInput, match="no store"):
        init_app(app, verifier=fast_verifier())


# -- the host's own writes in session mode ----------------------------------------------------


def _note_model(db: SQLAlchemy, notes: sqlalchemy.Table) -> type[Any]:
    """An ORM class of the host's table, so that its rows wait in the session until a flush."""
    return type("Note", (db.Model,), {"__table__": notes})


def test_a_host_row_that_fails_to_flush_is_the_hosts_error_not_the_librarys(
        make_host_app: Callable[..., HostApp]) -> None:
    """The library's first query would flush the host's pending row: the host's error, as is.

    Before, the failed flush came out as the library's ``concurrent_update``
    (with the host's constraint in its text), and the documented
    ``except AccountMergeError: db.session.commit()`` then raised
    ``PendingRollbackError``.
    """
    app, db, notes = make_host_app()
    Note = _note_model(db, notes)
    principal_id, login = _principal_and_letter(app, db)
    with app.test_request_context():
        db.session.add(Note(text=None))  # NOT NULL: fails when flushed
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            get_service().merge(principal_id, login, "WRONG-PASSWORD")
        db.session.rollback()  # SQLAlchemy's rule after a failed flush
        assert get_service().children(principal_id) == (DYLAN,)
    with app.app_context():
        trail = get_service().audit_trail()
    assert "invalid_credentials" not in [r.outcome for r in trail]  # nothing was attempted


def test_after_a_librarys_error_the_hosts_transaction_is_as_before_the_call(
        make_host_app: Callable[..., HostApp]) -> None:
    """The documented view: flush your rows, call, commit after success or error alike."""
    app, db, notes = make_host_app()
    Note = _note_model(db, notes)
    with app.app_context():
        service = get_service()
        first = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        second = service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
        principal_id = service.activate(first.login, first.provisional_password, PASSWORD).id
        db.session.commit()
    login = second.login
    for attempt in ("WRONG-PASSWORD", second.provisional_password.reveal()):
        with app.test_request_context():
            db.session.add(Note(text=f"tentative {attempt[:5]}"))
            db.session.flush()  # your own writes first: their errors are yours
            with contextlib.suppress(InvalidCredentials):
                get_service().merge(principal_id, login, attempt)
            db.session.commit()
    assert _seen_by_another_connection(app, db, notes)[0] == 2
    with app.app_context():
        assert get_service().children(principal_id) == (DYLAN, FLORIAN)
        outcomes = [r.outcome for r in get_service().audit_trail() if r.action.value == "merge"]
    assert outcomes == ["invalid_credentials", "success"]


# -- the library's errors as HTTP responses ---------------------------------------------------


def _merge_app(**config: Any) -> tuple[Flask, str, str]:
    """An app whose view lets the library's errors out; a principal's id, another letter's login."""
    app = make_app(**config)
    state = init_app(app, InMemoryStorage(), verifier=fast_verifier(), clock=FakeClock())
    first = state.service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
    second = state.service.issue_account(COLLEGE, "Claire Robert", [FLORIAN])
    principal = state.service.activate(first.login, first.provisional_password, PASSWORD)

    @app.post("/regrouper")
    def regrouper() -> str:
        receipt = get_service().merge(principal.id, flask.request.form["identifiant"],
                                      flask.request.form["mot_de_passe"])
        return receipt.message

    return app, principal.id, second.login


def test_every_error_code_has_an_http_status() -> None:
    codes = {cls.code for cls in vars(exceptions).values()
             if isinstance(cls, type) and issubclass(cls, exceptions.AccountMergeError)
             and cls is not exceptions.AccountMergeError}
    assert set(STATUS_CODES) == codes
    assert status_for(exceptions.AccountMergeError("?")) == 500


def test_the_error_handler_answers_429_with_retry_after_and_the_french_message() -> None:
    app, _, login = _merge_app(ACCOUNT_MERGE_THROTTLE_PRINCIPAL_PER_HOUR=2)
    handle_errors(app)
    client = app.test_client()
    wrong = {"identifiant": login, "mot_de_passe": "WRONG-PASSWORD"}
    for _ in range(2):
        response = client.post("/regrouper", data=wrong)
        assert response.status_code == 401
        assert response.text == "identifiant ou mot de passe incorrect"
    response = client.post("/regrouper", data=wrong)
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 3600
    expected = error_message(exceptions.TooManyAttempts(retry_after=retry_after), "fr")
    assert response.text == expected
    assert response.text.startswith(f"trop de tentatives{NBSP}; réessayez dans")
    assert response.mimetype == "text/plain"


def test_the_error_handler_speaks_json_to_a_client_that_asks_for_it() -> None:
    app, _, login = _merge_app(ACCOUNT_MERGE_THROTTLE_PRINCIPAL_PER_HOUR=1)
    handle_errors(app, language="en")
    client = app.test_client()
    wrong = {"identifiant": login, "mot_de_passe": "WRONG-PASSWORD"}
    client.post("/regrouper", data=wrong)
    response = client.post("/regrouper", data=wrong, headers={"Accept": "application/json"})
    assert response.status_code == 429
    body = response.get_json()
    assert body["error"] == "too_many_attempts"
    assert body["retry_after"] == int(response.headers["Retry-After"])
    assert body["message"].startswith("too many attempts; try again in")


def test_the_error_handler_renders_the_hosts_template_in_the_requests_language() -> None:
    app, _, login = _merge_app()
    app.jinja_loader = jinja2.DictLoader({"erreur.html": (
        "<p role=alert>{{ message }}</p><p>{{ code }} {{ status }} {{ retry_after }} "
        "{{ page }}</p>")})
    handle_errors(app, template="erreur.html",
                  language=lambda: flask.request.accept_languages.best_match(["fr", "en"]))
    response = app.test_client().post(
        "/regrouper", data={"identifiant": login, "mot_de_passe": "WRONG-PASSWORD"},
        headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert response.status_code == 401
    assert response.text == ("<p role=alert>incorrect login or password</p>"
                             "<p>invalid_credentials 401 None </p>")


def test_a_storage_error_is_logged_and_never_shown_with_the_stores_name(
        caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    init_app(app, InMemoryStorage(), verifier=fast_verifier())
    handle_errors(app)

    @app.get("/panne")
    def panne() -> str:
        raise exceptions.StorageError("postgresql://ent@db.example/ent", "connection lost")

    with caplog.at_level("WARNING"):
        response = app.test_client().get("/panne")
    assert response.status_code == 503
    assert "db.example" not in response.text
    assert response.text == error_message(exceptions.StorageError("x", "y"), "fr")
    assert "storage_error answered 503" in caplog.text


def test_a_view_that_handles_the_error_itself_keeps_doing_so() -> None:
    app, _, login = _merge_app()
    handle_errors(app)

    @app.post("/formulaire")
    def formulaire() -> tuple[str, int]:
        try:
            get_service().merge("nobody", login, "WRONG-PASSWORD")
        except exceptions.AccountMergeError as error:
            return f"le formulaire, avec : {error.code}", 400
        return "", 200

    response = app.test_client().post("/formulaire")
    assert (response.status_code, response.text) == (400, "le formulaire, avec : account_not_found")


# -- the commands ---------------------------------------------------------------------------


def _command_app(**options: Any) -> Flask:
    app = make_app(ACCOUNT_MERGE_SECRET_KEY="a secret key for the links of this app",
                   ACCOUNT_MERGE_LINKS={"password_reset": "https://ent.example/mdp/{token}",
                                        "email_verification": "https://ent.example/c/{token}"})
    init_app(app, InMemoryStorage(), verifier=fast_verifier(), clock=FakeClock(), **options)
    return app


def test_init_app_registers_the_commands() -> None:
    app = _command_app()
    group = app.cli.commands["account-merge"]
    assert {"create-schema", "upgrade-schema", "establishment", "issue", "sync", "reissue",
            "deliver-notices", "purge", "export"} <= set(group.commands)  # type: ignore[attr-defined]


def test_the_issue_command_writes_a_letter_per_family(tmp_path: Path) -> None:
    app = _command_app()
    runner = app.test_cli_runner()
    source = tmp_path / "eleves.csv"
    source.write_text("uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom\n"
                      "0869999B,D0001,Dylan,Robert,R1,Claire Robert\n"
                      "0869999B,F0002,Florian,Robert,R1,Claire Robert\n"
                      "0869999B,L0003,Léa,Martin,R2,Paul Martin\n", encoding="utf-8")
    refused = runner.invoke(args=["account-merge", "issue", str(source), "--out",
                                  str(tmp_path / "avant"), "--workers", "1"])
    assert refused.exit_code == 1
    assert (f"établissement inconnu{NBSP}: 0869999B (ajoutez-le avec «{NBSP}flask "
            f"account-merge establishment add{NBSP}»)") in refused.output
    added = runner.invoke(args=["account-merge", "establishment", "add", "0869999B",
                                "Collège des Trois Rivières"])
    assert added.exit_code == 0, added.output
    assert f"Établissement enregistré{NBSP}: 0869999B" in added.output
    done = runner.invoke(args=["account-merge", "issue", str(source), "--out",
                               str(tmp_path / "courriers"), "--workers", "1"])
    assert done.exit_code == 0, done.output
    letters = sorted(p.name for p in (tmp_path / "courriers").iterdir())
    assert len(letters) == 3 and "courriers.csv" in letters
    claire = next(p for p in (tmp_path / "courriers").iterdir() if p.name.startswith("claire"))
    text = claire.read_text(encoding="utf-8")
    assert "proposés par le Collège des Trois Rivières pour Dylan Robert et Florian Robert" \
        in text


def test_the_reissue_command_prints_a_new_letter_once(tmp_path: Path) -> None:
    app = _command_app()
    with app.app_context():
        service = get_service()
        service.register_establishment(COLLEGE)
        letter = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
    runner = app.test_cli_runner()
    printed = runner.invoke(args=["account-merge", "reissue", COLLEGE.uai, letter.login])
    assert printed.exit_code == 0, printed.output
    assert f"Identifiant{NBSP}: {letter.login}" in printed.stdout
    assert letter.provisional_password.reveal() not in printed.stdout
    target = tmp_path / "courrier.txt"
    written = runner.invoke(args=["account-merge", "reissue", "--lang", "en", COLLEGE.uai,
                                  letter.account_id, "--out", str(target)])
    assert written.exit_code == 0, written.output
    assert f"Login: {letter.login}" in target.read_text(encoding="utf-8")
    assert target.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(args=["account-merge", "reissue", COLLEGE.uai, letter.login,
                                "--out", str(target)])
    assert again.exit_code == 1 and "Erreur" in again.output  # never overwrites a letter
    unknown = runner.invoke(args=["account-merge", "reissue", COLLEGE.uai, "personne"])
    assert unknown.exit_code == 1
    assert unknown.output.strip().endswith("(account_not_found)")


def test_the_deliver_notices_command_sends_with_the_apps_mailer() -> None:
    mailer = CapturingMailer()
    app = _command_app(mailer=mailer)
    with app.app_context():
        service = get_service()
        letter = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        service.activate(letter.login, letter.provisional_password, PASSWORD,
                         email="claire@example.org")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["account-merge", "deliver-notices", "--limit", "10"])
    assert result.exit_code == 0, result.output
    assert result.output == "1 message(s) envoyé(s).\n"
    assert [n.to for n in mailer.sent] == ["claire@example.org"]
    assert mailer.sent[0].url.startswith("https://ent.example/c/")


def test_the_deliver_notices_command_needs_a_mailer() -> None:
    result = _command_app().test_cli_runner().invoke(args=["account-merge", "deliver-notices"])
    assert result.exit_code == 2
    assert "--smtp HOST --from ADDRESS" in result.output


def test_the_commands_keep_their_work_in_session_mode(
        make_host_app: Callable[..., HostApp], tmp_path: Path) -> None:
    """A command has no request to commit: before, everything it did in db.session was lost.

    (« Établissement enregistré », then « établissement inconnu » at the
    next command; letters printed for accounts that did not exist.)
    """
    app, db, notes = make_host_app()
    assert get_state(app).in_host_transaction
    runner = app.test_cli_runner()
    added = runner.invoke(args=["account-merge", "establishment", "add", COLLEGE.uai,
                                COLLEGE.name])
    assert added.exit_code == 0, added.output
    source = tmp_path / "eleves.csv"
    source.write_text("uai,eleve_id,eleve_prenom,eleve_nom,responsable_id,responsable_nom\n"
                      "0869999B,D0001,Dylan,Robert,R1,Claire Robert\n", encoding="utf-8")
    issued = runner.invoke(args=["account-merge", "issue", str(source), "--out",
                                 str(tmp_path / "courriers"), "--workers", "1"])
    assert issued.exit_code == 0, issued.output
    assert _seen_by_another_connection(app, db, notes) == (0, 1)
    reissued = runner.invoke(args=["account-merge", "reissue", COLLEGE.uai, "claire.robert"])
    assert reissued.exit_code == 0, reissued.output
    assert "Identifiant\u00a0: claire.robert" in reissued.stdout


def test_the_sync_command_previews_then_applies_a_register(tmp_path: Path) -> None:
    app = _command_app()
    with app.app_context():
        get_service().register_establishment(COLLEGE)
    source = tmp_path / "registre.csv"
    source.write_text("responsable_id,responsable_nom,eleve_id,eleve_prenom,eleve_nom\n"
                      "R1,Claire Robert,D0001,Dylan,Robert\n"
                      "R1,Claire Robert,F0002,Florian,Robert\n", encoding="utf-8")
    runner = app.test_cli_runner()
    preview = runner.invoke(args=["account-merge", "sync", COLLEGE.uai, str(source),
                                  "--dry-run"])
    assert preview.exit_code == 0, preview.output
    assert "R1" in preview.output and "Claire Robert" in preview.output
    with app.app_context(), pytest.raises(AccountNotFound):
        get_service().find_account("claire.robert")
    out = tmp_path / "courriers"
    applied = runner.invoke(args=["account-merge", "sync", COLLEGE.uai, str(source), "--yes",
                                  "--out", str(out), "--workers", "1"])
    assert applied.exit_code == 0, applied.output
    assert sorted(p.name for p in out.iterdir()) == ["claire.robert.txt", "courriers.csv"]
    again = runner.invoke(args=["account-merge", "sync", COLLEGE.uai, str(source), "--yes",
                                "--out", str(tmp_path / "encore"), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "encore").exists() or not any((tmp_path / "encore").iterdir())


def test_the_purge_and_export_commands(tmp_path: Path) -> None:
    clock = FakeClock()
    app = make_app()
    init_app(app, InMemoryStorage(), verifier=fast_verifier(), clock=clock)
    with app.app_context():
        service = get_service()
        service.register_establishment(COLLEGE)
        kept = service.issue_account(COLLEGE, "Claire Robert", [DYLAN])
        service.activate(kept.login, kept.provisional_password, PASSWORD)
        service.issue_account(COLLEGE, "Paul Martin", [Child("L0003", "Léa", "Martin",
                                                             COLLEGE.uai)])
        clock.advance(timedelta(days=200))
        service.authenticate(kept.login, PASSWORD)  # used: kept
    runner = app.test_cli_runner()
    dry = runner.invoke(args=["account-merge", "purge", "--dry-run", "--lang", "en"])
    assert dry.exit_code == 0, dry.output
    assert "would" in dry.output.lower()
    with app.app_context():
        assert get_service().find_account("paul.martin").display_name == "Paul Martin"
    done = runner.invoke(args=["account-merge", "purge"])
    assert done.exit_code == 0, done.output
    with app.app_context():
        assert get_service().find_account(kept.login).id == kept.account_id
        with pytest.raises(AccountNotFound):  # never activated, its letter's 90 days past
            get_service().find_account("paul.martin")
    target = tmp_path / "claire.json"
    exported = runner.invoke(args=["account-merge", "export", kept.login, "--out", str(target)])
    assert exported.exit_code == 0, exported.output
    assert json.loads(target.read_text(encoding="utf-8"))["account"]["login"] == kept.login
    assert target.stat().st_mode & 0o777 == 0o600
    twice = runner.invoke(args=["account-merge", "export", kept.login, "--out", str(target)])
    assert twice.exit_code == 1  # never overwrites a file, and says so in French
    assert twice.output.startswith("Erreur\xa0: le fichier existe déjà")
