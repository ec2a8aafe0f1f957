"""The app's settings: one ``ACCOUNT_MERGE`` dict in the project's settings.

The keys are the library's one vocabulary of settings, the same as
Flask's ``ACCOUNT_MERGE_*`` keys, read by
:func:`account_merge.service.bootstrap.read_settings` (its docstring lists
them all), plus eight that only a Django project has.  Every key is
optional; unknown keys are refused (``manage.py check`` reports them as
``account_merge.E001``)::

    ACCOUNT_MERGE = {
        # The library's settings (see read_settings), for example:
        "THROTTLE_BACKOFF_AFTER": 5,      # failures before each attempt waits
        "THROTTLE_LOCK_AFTER": 10,        # merge-form failures before the lock
        "THROTTLE_LOCK_FOR": 24 * 3600,   # seconds, or a timedelta
        "PROVISIONAL_VALIDITY": 90 * 24 * 3600,
        "ARGON2_TIME_COST": 3,            # and ARGON2_MEMORY_COST, _PARALLELISM...
        "IDENTITY_RULE": "account_merge.service.same_display_name",
        # Django's own:
        # The database alias of the store; None asks the project's database
        # routers (db_for_write / db_for_read of the app's models).
        "DATABASE": None,
        # Dotted path of a callable (user, uai) -> bool saying whether a
        # staff user may split merges for the establishment *uai*.
        "SPLIT_AUTHORIZATION": "account_merge.contrib.django.permissions.may_split",
        # The Django hash formats (hasher algorithms) the default verifier
        # accepts as credentials; None: the format of the first of the
        # project's PASSWORD_HASHERS; [] for none.
        "DJANGO_HASHERS": [],
        # On SQLite: where the attempts journal of the store's database is
        # (failed-attempt counters and failure audits, which must outlive a
        # request's rollback); {database} is the database file's path,
        # {name} its file name.  See docs/integrations/django.md.
        "ATTEMPTS_JOURNAL": "{database}-attempts.sqlite3",
        # The addresses of the project's reverse proxies: behind them, the
        # client is read from CLIENT_HEADER (client_address()).
        "TRUSTED_PROXIES": [],
        "CLIENT_HEADER": "X-Forwarded-For",
        # The project's address as parents reach it, the base of the LINKS
        # given as URL names or paths ("ent:lien_mot_de_passe", "/connexion/").
        "BASE_URL": None,
        # Dotted path of a callable (account) -> user making the Django user
        # of an account signing in for the first time through the
        # authentication backend; None: only linked users sign in.
        "USER_FACTORY": "account_merge.contrib.django.users.create_user",
    }

``SECRET_KEY``, when not given, is derived from the project's own
``SECRET_KEY`` (a key of its own, so that neither signs what the other
does).

Without ``VERIFIER``, the service verifies with
:class:`~account_merge.contrib.django.hashers.DjangoPasswordVerifier`,
argon2id with the ``ARGON2_*`` parameters for new hashes.  Settings are
read when the service is first built (:func:`load`), never at import time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import django
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, reverse
from django.utils.crypto import salted_hmac
from django.utils.module_loading import import_string
from django.utils.translation import gettext

from account_merge.credentials import Argon2Verifier
from account_merge.exceptions import InvalidInput
from account_merge.ports.verifier import CredentialVerifier
from account_merge.service.bootstrap import Settings, read_settings
from account_merge.storage.attempts import DEFAULT_TEMPLATE, check_template

__all__ = ["DEFAULT_CLIENT_HEADER", "DEFAULT_SPLIT_AUTHORIZATION", "DEFAULT_USER_FACTORY",
           "DJANGO_ONLY", "SETTING", "AppSettings", "check_databases", "check_settings",
           "derived_secret_key", "load", "split_authorization"]

#: The name of the settings dict.
SETTING: Final = "ACCOUNT_MERGE"

#: The default rule of who may split for an establishment.
DEFAULT_SPLIT_AUTHORIZATION: Final = "account_merge.contrib.django.permissions.may_split"

#: The default header a trusted reverse proxy names the client in.
DEFAULT_CLIENT_HEADER: Final = "X-Forwarded-For"

#: The default maker of the Django user of an account signing in for the first time.
DEFAULT_USER_FACTORY: Final = "account_merge.contrib.django.users.create_user"

#: The keys only a Django project has (the others are :func:`read_settings`'s).
DJANGO_ONLY: Final = frozenset({"DATABASE", "SPLIT_AUTHORIZATION", "DJANGO_HASHERS",
                                "ATTEMPTS_JOURNAL", "TRUSTED_PROXIES", "CLIENT_HEADER",
                                "BASE_URL", "USER_FACTORY"})

#: A token as the project's URL patterns see it while LINKS names are reversed.
_TOKEN_MARK: Final = "account-merge-token-mark"

#: What the derived secret key is for (a key of its own, from the project's SECRET_KEY).
_KEY_PURPOSE: Final = "account_merge.contrib.django: the secret key of the links"

#: Keys of earlier development versions, and what replaced them.
_RENAMED: Final[Mapping[str, str]] = {
    "THROTTLE": "THROTTLE_BACKOFF_AFTER, THROTTLE_LOCK_AFTER... (one key per limit)",
    "ARGON2": "ARGON2_TIME_COST, ARGON2_MEMORY_COST... (one key per parameter)",
    "PROVISIONAL_VALIDITY_DAYS": "PROVISIONAL_VALIDITY, in seconds or as a timedelta",
}


def _name(key: str) -> str:
    return f"{SETTING}[{key!r}]"


@attrs.frozen
class AppSettings:
    """``ACCOUNT_MERGE``, checked: the service's settings and the app's own."""

    database: str | None
    split_authorization: str
    django_hashers: tuple[str, ...] | None
    service: Settings
    #: True if ``VERIFIER`` names the project's own verifier.
    own_verifier: bool = False
    #: The template of the attempts journal's path (SQLite).
    attempts_journal: str = DEFAULT_TEMPLATE
    #: The networks of the project's reverse proxies (``TRUSTED_PROXIES``).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: The ``request.META`` key of ``CLIENT_HEADER`` (``HTTP_X_FORWARDED_FOR``).
    client_header: str = "HTTP_X_FORWARDED_FOR"
    #: ``USER_FACTORY``: the dotted path of ``(account) -> user``, or None.
    user_factory: str | None = DEFAULT_USER_FACTORY

    def verifier(self) -> CredentialVerifier:
        """The verifier the service uses: ``VERIFIER``, else a ``DjangoPasswordVerifier``."""
        from account_merge.contrib.django.hashers import DjangoPasswordVerifier

        made = self.service.verifier
        if made is not None and self.own_verifier:
            return made
        if not isinstance(made, Argon2Verifier):
            return DjangoPasswordVerifier(legacy=self.django_hashers)
        # ARGON2_* settings: the same argon2 side, and Django's formats too.
        return DjangoPasswordVerifier.from_argon2(made, legacy=self.django_hashers)

    def import_optional(self, dotted: str | None) -> Callable[..., Any] | None:
        """The callable at *dotted*, or None."""
        return None if dotted is None else _import(dotted)


def _import(dotted: str) -> Callable[..., Any]:
    try:
        found = import_string(dotted)
    except ImportError as error:
        raise ImproperlyConfigured(f"{SETTING}: cannot import {dotted!r} ({error})") from error
    if not callable(found):
        raise ImproperlyConfigured(f"{SETTING}: {dotted!r} is not callable")
    return found  # type: ignore[no-any-return]


def _optional_text(key: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value):
        raise ImproperlyConfigured(f"{_name(key)} must be a non-empty string or None")
    return value


def _hashers(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return ()  # by default, the library's own argon2id only: no extra cost
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise ImproperlyConfigured(f"{_name('DJANGO_HASHERS')} must be a list of hasher "
                                   "algorithms (\"pbkdf2_sha256\"...) or None")
    return tuple(value)


def _given() -> dict[str, Any]:
    given = getattr(settings, SETTING, {})
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict")
    return {str(key).upper(): value for key, value in given.items()}


def _journal_template(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise ImproperlyConfigured(f"{_name('ATTEMPTS_JOURNAL')} must be a path (a string) "
                                   "or None")
    try:
        return check_template(value)
    except InvalidInput as error:
        raise ImproperlyConfigured(f"{_name('ATTEMPTS_JOURNAL')} "
                                   f"{error.message.split(': ', 1)[-1]}") from None


def _split_path(value: Any) -> str:
    if value is None:
        return DEFAULT_SPLIT_AUTHORIZATION
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f"{_name('SPLIT_AUTHORIZATION')} must be a dotted path")
    return value


def split_authorization() -> Callable[..., Any]:
    """The project's rule of who may split for an establishment, ``(user, uai) -> bool``.

    Reads only ``SPLIT_AUTHORIZATION`` (the rest is read when the service is built).
    """
    return _import(_split_path(_given().get("SPLIT_AUTHORIZATION")))


def derived_secret_key() -> str:
    """The library's key when ``ACCOUNT_MERGE["SECRET_KEY"]`` is not given.

    An HMAC-SHA256 of a fixed purpose under the project's ``SECRET_KEY``
    (Django's ``salted_hmac``): the links' key changes with it, and knowing
    one key tells nothing of the other.
    """
    return salted_hmac(_KEY_PURPOSE, "links", algorithm="sha256").hexdigest()


def _proxies(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ImproperlyConfigured(f"{_name('TRUSTED_PROXIES')} must be a list of addresses "
                                   "or networks (\"10.0.0.1\", \"10.0.0.0/8\")")
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{_name('TRUSTED_PROXIES')}: {item!r} is not an address "
                                       "or a network") from None
    return tuple(networks)


def _client_header(value: Any) -> str:
    if value is None:
        value = DEFAULT_CLIENT_HEADER
    if not isinstance(value, str) or not value.strip() or any(
            not (c.isalnum() or c in "-_") for c in value.strip()):
        raise ImproperlyConfigured(f"{_name('CLIENT_HEADER')} must be the name of an HTTP "
                                   "header (\"X-Forwarded-For\", \"X-Real-IP\")")
    name = value.strip().upper().replace("-", "_")
    return name if name.startswith("HTTP_") else f"HTTP_{name}"


def _links(value: Any, base_url: Any) -> Any:
    """``LINKS`` with its URL names and paths made absolute URLs on ``BASE_URL``."""
    if not isinstance(value, Mapping):
        return value  # read_settings says what is wrong (or takes its JSON text)
    made: dict[str, Any] = {}
    for kind, target in value.items():
        if not isinstance(target, str) or "://" in target:
            made[kind] = target
            continue
        if not (isinstance(base_url, str) and base_url.startswith(("https://", "http://"))):
            raise ImproperlyConfigured(
                f"{_name('LINKS')}[{kind!r}] is a URL name or a path: give "
                f"{_name('BASE_URL')}, the project's address as parents reach it "
                "(\"https://ent.example\")")
        if target.startswith("/"):
            path = target
        else:
            try:
                path = (reverse(target) if kind == "sign_in"
                        else reverse(target, kwargs={"token": _TOKEN_MARK})
                        .replace(_TOKEN_MARK, "{token}"))
            except NoReverseMatch:
                wanted = "no argument" if kind == "sign_in" else "one argument, token"
                raise ImproperlyConfigured(
                    f"{_name('LINKS')}[{kind!r}]: no URL pattern named {target!r} with "
                    f"{wanted}") from None
        made[kind] = base_url.rstrip("/") + path
    return made


def load() -> AppSettings:
    """Read and check ``settings.ACCOUNT_MERGE``; raise ImproperlyConfigured if it is wrong."""
    upper = _given()
    for old, new in _RENAMED.items():
        if old in upper:
            raise ImproperlyConfigured(f"{_name(old)} is no longer read: use {new}")
    own = {key: upper.pop(key) for key in DJANGO_ONLY if key in upper}
    if upper.get("SECRET_KEY") is None:
        upper["SECRET_KEY"] = derived_secret_key()
    base_url = own.get("BASE_URL")
    if base_url is not None and not (isinstance(base_url, str)
                                     and base_url.startswith(("https://", "http://"))):
        raise ImproperlyConfigured(f"{_name('BASE_URL')} must be an absolute http(s) URL "
                                   "(\"https://ent.example\")")
    if "LINKS" in upper:
        upper["LINKS"] = _links(upper["LINKS"], base_url)
    try:
        service = read_settings(upper, name=_name)
    except InvalidInput as error:
        raise ImproperlyConfigured(f"{error.field}: {error.message.split(': ', 1)[-1]}") \
            from None
    return AppSettings(
        database=_optional_text("DATABASE", own.get("DATABASE")),
        split_authorization=_split_path(own.get("SPLIT_AUTHORIZATION")),
        django_hashers=_hashers(own.get("DJANGO_HASHERS")),
        service=service,
        own_verifier=upper.get("VERIFIER") is not None,
        attempts_journal=_journal_template(own.get("ATTEMPTS_JOURNAL")),
        trusted_proxies=_proxies(own.get("TRUSTED_PROXIES")),
        client_header=_client_header(own.get("CLIENT_HEADER")),
        user_factory=_user_factory(own),
    )


def _user_factory(own: Mapping[str, Any]) -> str | None:
    """``USER_FACTORY``, checked importable (None: the backend makes no user)."""
    if "USER_FACTORY" not in own:
        return DEFAULT_USER_FACTORY
    dotted = _optional_text("USER_FACTORY", own["USER_FACTORY"])
    if dotted is not None:
        try:
            _import(dotted)
        except ImproperlyConfigured as error:
            raise ImproperlyConfigured(f"{_name('USER_FACTORY')}: {error}") from None
    return dotted


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check``: ``account_merge.E001`` when ``ACCOUNT_MERGE`` is wrong."""
    try:
        loaded = load()
        loaded.import_optional(loaded.split_authorization)
        if loaded.django_hashers is not None:
            from account_merge.contrib.django.hashers import check_hashers

            check_hashers(loaded.django_hashers)
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), hint=gettext("Voir docs/integrations/django.md."),
                             id="account_merge.E001")]
    return []


#: SQLite transaction modes that take the write lock when a transaction begins.
_LOCKING_MODES: Final = frozenset({"IMMEDIATE", "EXCLUSIVE"})


def _store_aliases() -> list[str]:
    """The database aliases the store uses (``DATABASE``, or the routers' answers)."""
    from account_merge.contrib.django.storage import DjangoStorage

    database = _optional_text("DATABASE", _given().get("DATABASE"))
    storage = DjangoStorage(using=database)
    return sorted({storage.alias(write=True), storage.alias(write=False)})


def check_databases(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check``: ``account_merge.E002`` for SQLite under ``ATOMIC_REQUESTS``.

    A request transaction on SQLite begins without the write lock (DEFERRED);
    once the request has read (its session, say) it cannot take the lock if
    another request wrote in between, and the library's writes fail with
    ``concurrent_update`` whatever the timeout.  Beginning every transaction
    with the lock (Django 5.1's ``transaction_mode``) serialises requests
    instead.
    """
    try:
        aliases = _store_aliases()
    except ImproperlyConfigured:
        return []  # account_merge.E001 says what is wrong
    errors: list[checks.CheckMessage] = []
    for alias in aliases:
        try:
            database: Mapping[str, Any] = settings.DATABASES[alias]
        except KeyError:
            errors.append(checks.Error(
                gettext("La base %(alias)s du regroupement de comptes n'est pas dans "
                        "DATABASES.") % {"alias": alias},
                hint=gettext("Voir docs/integrations/django.md."), id="account_merge.E001"))
            continue
        if "sqlite" not in str(database.get("ENGINE", "")) or not database.get("ATOMIC_REQUESTS"):
            continue
        options: Mapping[str, Any] = database.get("OPTIONS") or {}
        mode = str(options.get("transaction_mode") or "").upper()
        if mode in _LOCKING_MODES:
            continue
        if django.VERSION >= (5, 1):
            hint = gettext('Ajoutez "transaction_mode": "IMMEDIATE" aux OPTIONS de '
                           'DATABASES["%(alias)s"] : chaque requête prend alors le verrou '
                           "d'écriture dès son début.") % {"alias": alias}
        else:
            hint = gettext('Passez à Django 5.1 ou plus et ajoutez "transaction_mode": '
                           '"IMMEDIATE" aux OPTIONS de DATABASES["%(alias)s"] ; sinon, '
                           "retirez ATOMIC_REQUESTS de cette base, ou placez le regroupement "
                           'de comptes sur une base sans ATOMIC_REQUESTS '
                           '(ACCOUNT_MERGE["DATABASE"]).') % {"alias": alias}
        errors.append(checks.Error(
            gettext("La base SQLite %(alias)s a ATOMIC_REQUESTS sans le mode de transaction "
                    "IMMEDIATE : une requête qui a déjà lu (sa session) ne peut plus écrire "
                    "quand une autre a écrit entre-temps, et les regroupements échouent "
                    "(concurrent_update).") % {"alias": alias},
            hint=hint, id="account_merge.E002"))
    return errors
