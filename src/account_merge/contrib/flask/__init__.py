"""account_merge in a Flask application (extra ``flask``).

::

    from flask import Flask
    from account_merge.contrib.flask import get_service, init_app

    app = Flask(__name__)
    app.config["ACCOUNT_MERGE_DATABASE_URL"] = "postgresql+psycopg://ent@db/ent"
    init_app(app)

    @app.post("/compte/regrouper")
    def regrouper():
        receipt = get_service().merge(session["account_id"], login, password)
        ...

:func:`init_app` builds one :class:`~account_merge.MergeService` per
application and keeps it, with its store, in
``app.extensions["account_merge"]`` (an :class:`AccountMergeState`);
:func:`get_service` finds it through ``current_app``.  Nothing is kept on
the :class:`AccountMerge` extension object, so one object may serve several
applications.  Nothing connects at import, nor in :func:`init_app`: the
first use case opens the first connection.

Where the store comes from, first match wins:

1. ``storage=`` given to :func:`init_app`;
2. ``ACCOUNT_MERGE_DATABASE_URL``: a
   :class:`~account_merge.storage.sqlalchemy.SQLAlchemyStorage` on an
   engine of its own (``ACCOUNT_MERGE_ENGINE_OPTIONS`` go to
   ``create_engine``); every use case commits its own transactions;
3. ``ACCOUNT_MERGE_SQLITE_PATH``: a :class:`~account_merge.SQLiteStorage`
   in that file;
4. Flask-SQLAlchemy, initialised on the application before this extension
   (or given as ``db=``): with ``ACCOUNT_MERGE_FLASK_SQLALCHEMY =
   "session"`` (the default), a ``SQLAlchemyStorage`` over ``db.session``;
   with ``"engine"``, one over ``db.engine`` with transactions of its own.

Otherwise :func:`init_app` raises ``invalid_input``.

**Session mode and commits.**  Over ``db.session``, every unit of work of
the library is a SAVEPOINT inside the request's transaction: the library
never commits the host's work, and its changes (with their events and
audit records) are durable only when the host calls
``db.session.commit()``.  Row locks taken by the library are held until
that commit.  The record of a failed sign-in or merge (attempt counters,
audit record) must outlive a rollback, or a host rolling back after an
error would lift the throttling of the merge form, so the store commits it
on its own before the service raises: on PostgreSQL on a side connection,
on SQLite (one writer at a time) in the attempts journal, a file beside
the database (``ACCOUNT_MERGE_ATTEMPTS_JOURNAL``, see
:mod:`account_merge.storage.attempts`).  On SQLite, every transaction on
the session's engine begins ``IMMEDIATE`` (taking the write lock at
once), so that a request that reads before it calls the library can
still write: requests that use the database run one at a time.

The other configuration keys: every key starting ``ACCOUNT_MERGE_`` must
be one of :data:`CONFIG_KEYS`, so that a misspelt throttling limit is an
error, not a silent default.  Besides the store's
(``ACCOUNT_MERGE_TABLE_PREFIX``, ``ACCOUNT_MERGE_SCHEMA``,
``ACCOUNT_MERGE_LOCK_TIMEOUT`` in seconds, ``ACCOUNT_MERGE_ATTEMPTS_JOURNAL``
for SQLAlchemy stores), they are
the settings of :mod:`account_merge.service.bootstrap`, the one vocabulary
of every integration, with the prefix: ``ACCOUNT_MERGE_THROTTLE_LOCK_AFTER``
is the setting ``THROTTLE_LOCK_AFTER`` (the ``THROTTLE_*`` fields of
:class:`~account_merge.ThrottlePolicy`, ``PROVISIONAL_VALIDITY``,
``PROVISIONAL_LENGTH``, ``IDENTITY_RULE``, ``PASSWORD_POLICY``, ``CLOCK``,
``VERIFIER``, ``ARGON2_*``; for the way back ``SECRET_KEY``, ``LINKS``,
``RESET_VALIDITY``, ``EMAIL_CONFIRMATION_VALIDITY``, ``NOTICE_ATTEMPTS``),
read by :func:`~account_merge.service.bootstrap.read_settings`.

Values may be strings (as read from the environment): ``"5"``,
``"true"``.  Objects given to :func:`init_app` (``verifier=``,
``throttle=``...) win over the keys that would build them.

**Errors as responses.**  :func:`handle_errors` answers the library's
errors a view lets out: the status of their code (:data:`STATUS_CODES`,
:func:`status_for`), ``Retry-After`` when throttled, and the message for
people (:func:`account_merge.messages.error_message`), as JSON, in the
host's template or as text (:func:`error_response`).

**Commands.**  :func:`init_app` registers ``flask account-merge``
(:mod:`account_merge.contrib.flask.commands`): ``create-schema``,
``upgrade-schema``, ``establishment add``, ``issue``, ``sync``,
``reissue``, ``deliver-notices``, ``purge`` and ``export`` (see
``docs/integrations/flask.md``).
In session mode they use :attr:`AccountMergeState.command_service`, whose
use cases commit their own transactions.

The error answers are in :mod:`account_merge.contrib.flask.errors`, the
commands in :mod:`account_merge.contrib.flask.commands`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs
from flask import Flask, current_app

from account_merge.contrib.flask.errors import (
    STATUS_CODES,
    Language,
    error_response,
    handle_errors,
    status_for,
)
from account_merge.domain.passwords import PasswordPolicy
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import InvalidInput
from account_merge.ports import Clock, CredentialVerifier, Mailer, Storage
from account_merge.service import IdentityRule, MergeService
from account_merge.service.bootstrap import SETTINGS, read_settings
from account_merge.storage.attempts import check_template

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


__all__ = [
    "CONFIG_KEYS",
    "EXTENSION_KEY",
    "STATUS_CODES",
    "STORE_KEYS",
    "AccountMerge",
    "AccountMergeState",
    "Language",
    "error_response",
    "get_service",
    "get_state",
    "handle_errors",
    "init_app",
    "status_for",
]

#: The key of the state in ``app.extensions``.
EXTENSION_KEY: Final = "account_merge"

_PREFIX: Final = "ACCOUNT_MERGE_"
_FLASK_SQLALCHEMY_MODES: Final = ("session", "engine", "off")

#: The keys that choose and configure the store (the rest are the service's settings).
STORE_KEYS: Final[frozenset[str]] = frozenset({
    f"{_PREFIX}{name}" for name in (
        "DATABASE_URL", "ENGINE_OPTIONS", "SQLITE_PATH", "FLASK_SQLALCHEMY",
        "TABLE_PREFIX", "SCHEMA", "LOCK_TIMEOUT", "ATTEMPTS_JOURNAL",
    )
})

#: Every configuration key this extension reads: the store's, and
#: :data:`account_merge.service.bootstrap.SETTINGS` with the prefix.
CONFIG_KEYS: Final[frozenset[str]] = STORE_KEYS | {f"{_PREFIX}{name}" for name in SETTINGS}


@attrs.frozen
class AccountMergeState:
    """What :func:`init_app` keeps in ``app.extensions["account_merge"]``.

    ``storage_kind`` says where the store came from: ``"given"``,
    ``"database_url"``, ``"sqlite_path"``, ``"flask_sqlalchemy_session"``
    or ``"flask_sqlalchemy_engine"``.  ``in_host_transaction`` is true when
    the library's work rides on the host's ``db.session`` and so becomes
    durable only when the host commits (but for the record of failed
    attempts, which the store commits on its own).
    """

    service: MergeService
    storage: Storage
    storage_kind: str
    owns_storage: bool = attrs.field(repr=False)
    #: The mailer ``flask account-merge deliver-notices`` sends with (given to :func:`init_app`).
    mailer: Mailer | None = attrs.field(default=None, repr=False)
    _command_service: MergeService | None = attrs.field(default=None, repr=False,
                                                         alias="command_service")

    @property
    def command_service(self) -> MergeService:
        """The service the ``flask account-merge`` commands use.

        :attr:`service` itself, but in session mode, where a use case is
        durable only when the host commits its session and a command has
        no request to commit: there, a service on the same engine and
        tables, with the same settings, whose use cases commit their own
        transactions (each letter of ``issue`` is stored as it is written).
        """
        return self._command_service if self._command_service is not None else self.service

    @property
    def in_host_transaction(self) -> bool:
        """True when the library's changes are durable only at ``db.session.commit()``."""
        return self.storage_kind == "flask_sqlalchemy_session"

    def create_schema(self) -> None:
        """Create the store's tables if it has any to create (idempotent).

        For applications without migrations; also ``flask account-merge
        create-schema``.  The SQLite and memory stores need nothing.
        """
        create = getattr(self.storage, "create_schema", None)
        if callable(create):
            create()

    def upgrade_schema(self) -> list[str]:
        """Create the store's missing tables and upgrade those of an earlier release.

        What it did, in words (idempotent; ``flask account-merge
        upgrade-schema``).  For applications without migrations; with
        Alembic, see the revision in ``docs/storage.md``.  Stores without
        tables of their own need nothing.
        """
        upgrade = getattr(self.storage, "upgrade_schema", None)
        if not callable(upgrade):
            self.create_schema()
            return []
        done: list[str] = upgrade()
        return done

    def close(self) -> None:
        """Close the store if this extension made it (from the configuration)."""
        if self.owns_storage:
            self.storage.close()


def init_app(
    app: Flask,
    storage: Storage | None = None,
    *,
    db: Any = None,
    verifier: CredentialVerifier | None = None,
    clock: Clock | None = None,
    password_policy: PasswordPolicy | None = None,
    throttle: ThrottlePolicy | None = None,
    identity_rule: IdentityRule | None = None,
    mailer: Mailer | None = None,
) -> AccountMergeState:
    """Set account_merge up on *app* from its ``ACCOUNT_MERGE_*`` configuration.

    *storage* is a store of your own (it wins over the configuration);
    *db* a Flask-SQLAlchemy instance, when it was not initialised on *app*
    (``app.extensions["sqlalchemy"]``).  *mailer* is what ``flask
    account-merge deliver-notices`` sends notices with when it is given
    no ``--smtp`` server.  The other arguments go to
    :class:`~account_merge.MergeService` and win over the keys that would
    build them.  Raises ``invalid_input`` for a malformed or unknown key,
    ``RuntimeError`` if *app* was set up already.  Connects to nothing.
    Registers the ``flask account-merge`` commands.
    """
    if EXTENSION_KEY in app.extensions:
        raise RuntimeError("account_merge is already set up on this application")
    config: Mapping[str, Any] = app.config
    unknown = sorted(k for k in config if k.startswith(_PREFIX) and k not in CONFIG_KEYS)
    if unknown:
        raise InvalidInput(unknown[0], "unknown configuration key; the known keys are "
                                       + ", ".join(sorted(CONFIG_KEYS)))
    settings = read_settings(
        {key[len(_PREFIX):]: value for key, value in config.items()
         if key.startswith(_PREFIX) and key not in STORE_KEYS},
        name=lambda key: f"{_PREFIX}{key}")
    store, kind, owned, engine = _storage(app, config, storage, db)
    try:
        service = MergeService(
            store,
            verifier if verifier is not None else settings.verifier,
            clock if clock is not None else settings.clock,
            policies=settings.policies,
            password_policy=password_policy,
            throttle=throttle,
            identity_rule=identity_rule,
            secret_key=settings.secret_key,
            links=settings.links,
        )
        command_service = None
        if engine is not None:
            from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

            command_service = MergeService(
                SQLAlchemyStorage(engine, **_sqlalchemy_options(config)), service.verifier,
                service.clock, policies=service.policies, secret_key=settings.secret_key,
                links=settings.links)
    except BaseException:
        if owned:
            store.close()
        raise
    state = AccountMergeState(service=service, storage=store, storage_kind=kind,
                              owns_storage=owned, mailer=mailer,
                              command_service=command_service)
    app.extensions[EXTENSION_KEY] = state
    if "account-merge" not in app.cli.commands:
        from account_merge.contrib.flask.commands import cli  # noqa: PLC0415

        app.cli.add_command(cli)
    return state


def get_state(app: Flask | None = None) -> AccountMergeState:
    """The state of *app* (default: ``current_app``)."""
    target = app if app is not None else current_app
    try:
        state = target.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            "account_merge is not set up on this application; call init_app(app) first"
        ) from None
    assert isinstance(state, AccountMergeState)
    return state


def get_service() -> MergeService:
    """The :class:`~account_merge.MergeService` of the current application.

    Call it inside a request (or an application context): it reads
    ``current_app``.
    """
    return get_state().service


class AccountMerge:
    """The extension object, for ``ext = AccountMerge(); ext.init_app(app)``.

    It keeps nothing per application: everything lives in
    ``app.extensions["account_merge"]``, so one object can serve several
    applications (and tests can build as many as they like).
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        if app is not None:
            init_app(app, **options)

    def init_app(self, app: Flask, storage: Storage | None = None,
                 **options: Any) -> AccountMergeState:
        """Same as :func:`init_app`."""
        return init_app(app, storage, **options)

    @property
    def service(self) -> MergeService:
        """The current application's service (see :func:`get_service`)."""
        return get_service()


# -- building the store and the service ----------------------------------------------


def _storage(app: Flask, config: Mapping[str, Any], given: Storage | None,
             db: Any) -> tuple[Storage, str, bool, Any]:
    """The store, its kind, whether this extension owns it, and in session mode its engine."""
    if given is not None:
        return given, "given", False, None
    url = config.get(f"{_PREFIX}DATABASE_URL")
    path = config.get(f"{_PREFIX}SQLITE_PATH")
    if url and path:
        raise InvalidInput(f"{_PREFIX}SQLITE_PATH",
                           f"give {_PREFIX}DATABASE_URL or {_PREFIX}SQLITE_PATH, not both")
    if url:
        from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

        options = config.get(f"{_PREFIX}ENGINE_OPTIONS") or {}
        if not isinstance(options, Mapping):
            raise InvalidInput(f"{_PREFIX}ENGINE_OPTIONS", "must be a mapping")
        store = SQLAlchemyStorage.from_url(url, **_sqlalchemy_options(config), **options)
        return store, "database_url", True, None
    if path:
        from account_merge.storage.sqlite import SQLiteStorage  # noqa: PLC0415

        if not isinstance(path, str | os.PathLike):
            raise InvalidInput(f"{_PREFIX}SQLITE_PATH", "must be the path of a file")
        return SQLiteStorage(path), "sqlite_path", True, None
    mode = _choice(config, "FLASK_SQLALCHEMY", _FLASK_SQLALCHEMY_MODES, "session")
    if db is None and mode != "off":
        db = app.extensions.get("sqlalchemy")
    if db is None or mode == "off":
        raise InvalidInput(
            f"{_PREFIX}DATABASE_URL",
            f"no store: give storage=, set {_PREFIX}DATABASE_URL or {_PREFIX}SQLITE_PATH, "
            "or set up Flask-SQLAlchemy on the application first",
        )
    from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

    if mode == "engine":
        with app.app_context():
            engine = db.engine
        return SQLAlchemyStorage(engine, **_sqlalchemy_options(config)), \
            "flask_sqlalchemy_engine", False, None
    from account_merge.storage.sqlalchemy.connections import prepare_engine  # noqa: PLC0415

    with app.app_context():
        engine = db.engine
    # On SQLite, the session's transactions take the write lock when they begin.
    prepare_engine(engine, immediate=True)
    session: Callable[[], Session] = db.session
    return SQLAlchemyStorage(session=session, **_sqlalchemy_options(config)), \
        "flask_sqlalchemy_session", False, engine


def _sqlalchemy_options(config: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    prefix = config.get(f"{_PREFIX}TABLE_PREFIX")
    if prefix is not None:
        options["prefix"] = _text(f"{_PREFIX}TABLE_PREFIX", prefix)
    schema = config.get(f"{_PREFIX}SCHEMA")
    if schema:
        options["schema"] = _text(f"{_PREFIX}SCHEMA", schema)
    timeout = config.get(f"{_PREFIX}LOCK_TIMEOUT")
    if timeout is not None:
        options["lock_timeout"] = _seconds(f"{_PREFIX}LOCK_TIMEOUT", timeout)
    journal = config.get(f"{_PREFIX}ATTEMPTS_JOURNAL")
    if journal is not None:
        if not isinstance(journal, str | os.PathLike):
            raise InvalidInput(f"{_PREFIX}ATTEMPTS_JOURNAL", "must be the path of a file")
        try:
            options["attempts_journal"] = check_template(journal)
        except InvalidInput as error:
            raise InvalidInput(f"{_PREFIX}ATTEMPTS_JOURNAL",
                               error.message.split(": ", 1)[-1]) from None
    return options


# -- reading the store's keys (from Python or from the environment) ------------------------


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(key, "must be a string")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if not isinstance(value, bool) and isinstance(value, str | int | float):
        try:
            return float(value)
        except ValueError:
            pass
    raise InvalidInput(key, "must be a number of seconds or a timedelta")


def _choice(config: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    key = f"{_PREFIX}{name}"
    value = config.get(key, default)
    if isinstance(value, str):
        value = value.strip().lower()
    if value not in choices:
        raise InvalidInput(key, f"must be one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value
