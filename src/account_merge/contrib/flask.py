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
error would lift the throttling of the merge form: on PostgreSQL the store
commits it on a side connection of its own before the service raises; on
SQLite (one writer at a time) it rides on the host's transaction, so there
the host commits after a call that raised, too.

The other configuration keys (every key starting ``ACCOUNT_MERGE_`` must be
one of :data:`CONFIG_KEYS`, so that a misspelt throttling limit is an
error, not a silent default):

- ``ACCOUNT_MERGE_TABLE_PREFIX``, ``ACCOUNT_MERGE_SCHEMA``,
  ``ACCOUNT_MERGE_LOCK_TIMEOUT`` (seconds): SQLAlchemy stores;
- ``ACCOUNT_MERGE_ARGON2_PROFILE`` (a name of :mod:`argon2.profiles`,
  default ``RFC_9106_LOW_MEMORY``), ``ACCOUNT_MERGE_ARGON2_TIME_COST``,
  ``..._MEMORY_COST`` (KiB), ``..._PARALLELISM``, ``..._HASH_LEN``,
  ``..._SALT_LEN``, ``..._MAX_CONCURRENT``, ``..._WARN_IF_WEAK``;
- ``ACCOUNT_MERGE_THROTTLE_BACKOFF_AFTER``, ``..._BACKOFF_BASE``,
  ``..._BACKOFF_MAX``, ``..._LOCK_AFTER``, ``..._LOCK_FOR``,
  ``..._PRINCIPAL_PER_HOUR``, ``..._PRINCIPAL_PER_DAY``: the fields of
  :class:`~account_merge.ThrottlePolicy` (durations in seconds or as
  ``timedelta``);
- ``ACCOUNT_MERGE_PROVISIONAL_VALIDITY`` (seconds or ``timedelta``) and
  ``ACCOUNT_MERGE_PROVISIONAL_LENGTH``.

Values may be strings (as read from the environment): ``"5"``,
``"true"``.  Objects given to :func:`init_app` (``verifier=``,
``throttle=``...) win over the keys that would build them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import argon2
import attrs
import click
from flask import Flask, current_app
from flask.cli import AppGroup

from account_merge.credentials import Argon2Verifier
from account_merge.domain.passwords import PasswordPolicy
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import InvalidInput
from account_merge.ports import Clock, CredentialVerifier, Storage
from account_merge.service import IdentityRule, MergeService

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "CONFIG_KEYS",
    "EXTENSION_KEY",
    "AccountMerge",
    "AccountMergeState",
    "get_service",
    "get_state",
    "init_app",
]

#: The key of the state in ``app.extensions``.
EXTENSION_KEY: Final = "account_merge"

_PREFIX: Final = "ACCOUNT_MERGE_"
_ARGON2_INTS: Final = ("time_cost", "memory_cost", "parallelism", "hash_len", "salt_len")
_ARGON2_PROFILES: Final = ("RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY", "CHEAPEST", "PRE_21_2")
_FLASK_SQLALCHEMY_MODES: Final = ("session", "engine", "off")
_THROTTLE_FIELDS: Final = tuple(f.name for f in attrs.fields(ThrottlePolicy))

#: Every configuration key this extension reads.
CONFIG_KEYS: Final[frozenset[str]] = frozenset({
    f"{_PREFIX}{name}" for name in (
        "DATABASE_URL", "ENGINE_OPTIONS", "SQLITE_PATH", "FLASK_SQLALCHEMY",
        "TABLE_PREFIX", "SCHEMA", "LOCK_TIMEOUT",
        "ARGON2_PROFILE", *(f"ARGON2_{n.upper()}" for n in _ARGON2_INTS),
        "ARGON2_MAX_CONCURRENT", "ARGON2_WARN_IF_WEAK",
        *(f"THROTTLE_{n.upper()}" for n in _THROTTLE_FIELDS),
        "PROVISIONAL_VALIDITY", "PROVISIONAL_LENGTH",
    )
})

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@attrs.frozen
class AccountMergeState:
    """What :func:`init_app` keeps in ``app.extensions["account_merge"]``.

    ``storage_kind`` says where the store came from: ``"given"``,
    ``"database_url"``, ``"sqlite_path"``, ``"flask_sqlalchemy_session"``
    or ``"flask_sqlalchemy_engine"``.  ``in_host_transaction`` is true when
    the library's work rides on the host's ``db.session`` and so becomes
    durable only when the host commits (but for the record of failed
    attempts on PostgreSQL).
    """

    service: MergeService
    storage: Storage
    storage_kind: str
    owns_storage: bool = attrs.field(repr=False)

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
) -> AccountMergeState:
    """Set account_merge up on *app* from its ``ACCOUNT_MERGE_*`` configuration.

    *storage* is a store of your own (it wins over the configuration);
    *db* a Flask-SQLAlchemy instance, when it was not initialised on *app*
    (``app.extensions["sqlalchemy"]``).  The other arguments go to
    :class:`~account_merge.MergeService` and win over the keys that would
    build them.  Raises ``invalid_input`` for a malformed or unknown key,
    ``RuntimeError`` if *app* was set up already.  Connects to nothing.
    """
    if EXTENSION_KEY in app.extensions:
        raise RuntimeError("account_merge is already set up on this application")
    config: Mapping[str, Any] = app.config
    unknown = sorted(k for k in config if k.startswith(_PREFIX) and k not in CONFIG_KEYS)
    if unknown:
        raise InvalidInput(unknown[0], "unknown configuration key; the known keys are "
                                       + ", ".join(sorted(CONFIG_KEYS)))
    policy = throttle if throttle is not None else _throttle(config)
    provisional = _provisional(config)
    store, kind, owned = _storage(app, config, storage, db)
    try:
        service = MergeService(
            store,
            verifier if verifier is not None else _verifier(config),
            clock,
            password_policy=password_policy,
            throttle=policy,
            identity_rule=identity_rule,
            **provisional,
        )
    except BaseException as error:
        if owned:
            store.close()
        if isinstance(error, InvalidInput) and error.field.startswith("provisional_"):
            raise _renamed(error, f"{_PREFIX}{error.field.upper()}") from None
        raise
    state = AccountMergeState(service=service, storage=store, storage_kind=kind,
                              owns_storage=owned)
    app.extensions[EXTENSION_KEY] = state
    if "account-merge" not in app.cli.commands:
        app.cli.add_command(_cli)
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


# -- the command line --------------------------------------------------------------

_cli = AppGroup("account-merge", help="account_merge: the store of this application.")


@_cli.command("create-schema")
def _create_schema_command() -> None:
    """Create the library's tables if missing (apps without migrations)."""
    get_state().create_schema()
    click.echo("account_merge: schema ready")


# -- building the store and the service ----------------------------------------------


def _storage(app: Flask, config: Mapping[str, Any], given: Storage | None,
             db: Any) -> tuple[Storage, str, bool]:
    if given is not None:
        return given, "given", False
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
        return store, "database_url", True
    if path:
        from account_merge.storage.sqlite import SQLiteStorage  # noqa: PLC0415

        if not isinstance(path, str | os.PathLike):
            raise InvalidInput(f"{_PREFIX}SQLITE_PATH", "must be the path of a file")
        return SQLiteStorage(path), "sqlite_path", True
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
            "flask_sqlalchemy_engine", False
    session: Callable[[], Session] = db.session
    return SQLAlchemyStorage(session=session, **_sqlalchemy_options(config)), \
        "flask_sqlalchemy_session", False


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
        options["lock_timeout"] = _seconds(f"{_PREFIX}LOCK_TIMEOUT", timeout).total_seconds()
    return options


def _verifier(config: Mapping[str, Any]) -> CredentialVerifier:
    def value(name: str) -> Any:
        return config.get(f"{_PREFIX}ARGON2_{name}")

    if all(v is None for k, v in config.items() if k.startswith(f"{_PREFIX}ARGON2_")):
        return Argon2Verifier()  # argon2-cffi's defaults
    profile = _choice(config, "ARGON2_PROFILE", _ARGON2_PROFILES, "RFC_9106_LOW_MEMORY",
                      upper=True)
    parameters: argon2.Parameters = getattr(argon2.profiles, profile)
    changes: dict[str, Any] = {
        name: _int(f"{_PREFIX}ARGON2_{name.upper()}", value(name.upper()))
        for name in _ARGON2_INTS if value(name.upper()) is not None
    }
    parameters = dataclasses.replace(parameters, **changes)
    concurrent = value("MAX_CONCURRENT")
    max_concurrent = (None if concurrent is None
                      else _int(f"{_PREFIX}ARGON2_MAX_CONCURRENT", concurrent))
    warn = value("WARN_IF_WEAK")
    warn_if_weak = True if warn is None else _bool(f"{_PREFIX}ARGON2_WARN_IF_WEAK", warn)
    try:
        # The verifier hashes once at construction: parameters argon2 refuses fail here.
        return Argon2Verifier(argon2.PasswordHasher.from_parameters(parameters),
                              max_concurrent=max_concurrent, warn_if_weak=warn_if_weak)
    except (ValueError, argon2.exceptions.Argon2Error) as error:
        key = f"ARGON2_{next(iter(changes)).upper()}" if changes else "ARGON2_PROFILE"
        raise InvalidInput(f"{_PREFIX}{key}",
                           f"argon2 refuses these parameters: {error}") from None


def _throttle(config: Mapping[str, Any]) -> ThrottlePolicy:
    values: dict[str, Any] = {}
    for field in attrs.fields(ThrottlePolicy):
        key = f"{_PREFIX}THROTTLE_{field.name.upper()}"
        value = config.get(key)
        if value is None:
            continue
        values[field.name] = (_seconds(key, value) if field.type in (timedelta, "timedelta")
                              else _int(key, value))
    try:
        return ThrottlePolicy(**values)
    except InvalidInput as error:
        raise _renamed(error, f"{_PREFIX}THROTTLE_{error.field.upper()}") from None


def _provisional(config: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    validity = config.get(f"{_PREFIX}PROVISIONAL_VALIDITY")
    if validity is not None:
        options["provisional_validity"] = _seconds(f"{_PREFIX}PROVISIONAL_VALIDITY", validity)
    length = config.get(f"{_PREFIX}PROVISIONAL_LENGTH")
    if length is not None:
        options["provisional_length"] = _int(f"{_PREFIX}PROVISIONAL_LENGTH", length)
    return options


# -- reading values (from Python or from the environment) ------------------------------


def _renamed(error: InvalidInput, key: str) -> InvalidInput:
    """The same error, naming the configuration key instead of the argument."""
    return InvalidInput(key, error.message.split(": ", 1)[-1])


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(key, "must be a string")
    return value


def _int(key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(key, "must be a whole number")
    return value


def _seconds(key: str, value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise InvalidInput(key, "must be a number of seconds or a timedelta")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidInput(key, "must be true or false")


def _choice(config: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str,
            *, upper: bool = False) -> str:
    key = f"{_PREFIX}{name}"
    value = config.get(key, default)
    if isinstance(value, str):
        value = value.strip().upper() if upper else value.strip().lower()
    if value not in choices:
        raise InvalidInput(key, f"must be one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value
