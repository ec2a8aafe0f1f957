"""The app's settings: one ``ACCOUNT_MERGE`` dict in the project's settings.

Every key is optional; unknown keys are refused (``manage.py check``
reports them as ``account_merge.E001``)::

    ACCOUNT_MERGE = {
        # The database alias of the store; None asks the project's database
        # routers (db_for_write / db_for_read of the app's models).
        "DATABASE": None,
        # argon2id parameters of new hashes (argon2-cffi's PasswordHasher
        # arguments, in capitals); the defaults are argon2-cffi's (RFC 9106
        # low-memory profile: 64 MiB, 3 passes, 4 lanes).
        "ARGON2": {"TIME_COST": 3, "MEMORY_COST": 65536, "PARALLELISM": 4},
        # Dotted path of a zero-argument callable returning the verifier
        # (a CredentialVerifier); None: DjangoPasswordVerifier with ARGON2.
        "VERIFIER": None,
        # Dotted path of the identity rule (rule M6), a callable
        # (principal, absorbed) -> bool, for example
        # "account_merge.service.same_display_name"; None: no extra rule.
        "IDENTITY_RULE": None,
        # Throttling of failed attempts: ThrottlePolicy's fields in capitals;
        # durations in seconds or as timedelta.
        "THROTTLE": {"BACKOFF_AFTER": 5, "BACKOFF_BASE": 1, "BACKOFF_MAX": 3600,
                     "LOCK_AFTER": 10, "LOCK_FOR": 86400,
                     "PRINCIPAL_PER_HOUR": 10, "PRINCIPAL_PER_DAY": 30},
        # How long a letter's provisional password opens its account.
        "PROVISIONAL_VALIDITY_DAYS": 90,
        # Characters of a provisional password (A-Z0-9).
        "PROVISIONAL_LENGTH": 8,
        # Dotted path of the clock, a zero-argument callable returning an
        # aware datetime; None: the real time.
        "CLOCK": None,
        # Dotted path of a callable (user, uai) -> bool saying whether a
        # staff user may split merges for the establishment *uai*.
        "SPLIT_AUTHORIZATION": "account_merge.contrib.django.permissions.may_split",
    }

Settings are read when the service is first built (:func:`load`), never
at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Final

import argon2
import attrs
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django.utils.translation import gettext

from account_merge.domain.throttle import ThrottlePolicy

__all__ = ["DEFAULTS", "SETTING", "AppSettings", "check_settings", "load"]

#: The name of the settings dict.
SETTING: Final = "ACCOUNT_MERGE"

#: The default of every key.
DEFAULTS: Final[Mapping[str, Any]] = {
    "DATABASE": None,
    "ARGON2": {},
    "VERIFIER": None,
    "IDENTITY_RULE": None,
    "THROTTLE": {},
    "PROVISIONAL_VALIDITY_DAYS": 90,
    "PROVISIONAL_LENGTH": 8,
    "CLOCK": None,
    "SPLIT_AUTHORIZATION": "account_merge.contrib.django.permissions.may_split",
}

_ARGON2_KEYS: Final = frozenset({"TIME_COST", "MEMORY_COST", "PARALLELISM", "HASH_LEN",
                                 "SALT_LEN"})
_DURATIONS: Final = frozenset({"backoff_base", "backoff_max", "lock_for"})


@attrs.frozen
class AppSettings:
    """``ACCOUNT_MERGE``, checked, with the defaults filled in."""

    database: str | None
    argon2_parameters: Mapping[str, int]
    verifier: str | None
    identity_rule: str | None
    throttle: ThrottlePolicy
    provisional_validity: timedelta
    provisional_length: int
    clock: str | None
    split_authorization: str

    def password_hasher(self) -> argon2.PasswordHasher:
        """The argon2-cffi hasher for new hashes."""
        given = {k.lower(): v for k, v in self.argon2_parameters.items()}
        default = argon2.PasswordHasher()
        return argon2.PasswordHasher(
            time_cost=given.get("time_cost", default.time_cost),
            memory_cost=given.get("memory_cost", default.memory_cost),
            parallelism=given.get("parallelism", default.parallelism),
            hash_len=given.get("hash_len", default.hash_len),
            salt_len=given.get("salt_len", default.salt_len),
        )

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
        raise ImproperlyConfigured(f"{SETTING}[{key!r}] must be a non-empty string or None")
    return value


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(f"{SETTING}[{key!r}] must be a positive integer")
    return value


def _throttle(value: Any) -> ThrottlePolicy:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{SETTING}['THROTTLE'] must be a dict")
    fields = {field.name for field in attrs.fields(ThrottlePolicy)}
    arguments: dict[str, Any] = {}
    for key, given in value.items():
        name = str(key).lower()
        item = given
        if name not in fields:
            raise ImproperlyConfigured(
                f"{SETTING}['THROTTLE'] has an unknown key {key!r} "
                f"(known: {', '.join(sorted(f.upper() for f in fields))})")
        if name in _DURATIONS and not isinstance(item, timedelta):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ImproperlyConfigured(
                    f"{SETTING}['THROTTLE'][{key!r}] must be seconds or a timedelta")
            item = timedelta(seconds=item)
        arguments[name] = item
    try:
        return ThrottlePolicy(**arguments)
    except (ValueError, TypeError) as error:
        raise ImproperlyConfigured(f"{SETTING}['THROTTLE']: {error}") from error


def _argon2(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{SETTING}['ARGON2'] must be a dict")
    unknown = set(value) - _ARGON2_KEYS
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING}['ARGON2'] has unknown keys {sorted(map(str, unknown))} "
            f"(known: {', '.join(sorted(_ARGON2_KEYS))})")
    return {key: _positive_int(f"ARGON2.{key}", item) for key, item in value.items()}


def load() -> AppSettings:
    """Read and check ``settings.ACCOUNT_MERGE``; raise ImproperlyConfigured if it is wrong."""
    given = getattr(settings, SETTING, {})
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict")
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING} has unknown keys {sorted(map(str, unknown))} "
            f"(known: {', '.join(sorted(DEFAULTS))})")
    values = {**DEFAULTS, **given}
    split = values["SPLIT_AUTHORIZATION"]
    if not isinstance(split, str) or not split:
        raise ImproperlyConfigured(f"{SETTING}['SPLIT_AUTHORIZATION'] must be a dotted path")
    return AppSettings(
        database=_optional_text("DATABASE", values["DATABASE"]),
        argon2_parameters=_argon2(values["ARGON2"]),
        verifier=_optional_text("VERIFIER", values["VERIFIER"]),
        identity_rule=_optional_text("IDENTITY_RULE", values["IDENTITY_RULE"]),
        throttle=_throttle(values["THROTTLE"]),
        provisional_validity=timedelta(
            days=_positive_int("PROVISIONAL_VALIDITY_DAYS", values["PROVISIONAL_VALIDITY_DAYS"])),
        provisional_length=_positive_int("PROVISIONAL_LENGTH", values["PROVISIONAL_LENGTH"]),
        clock=_optional_text("CLOCK", values["CLOCK"]),
        split_authorization=split,
    )


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check``: ``account_merge.E001`` when ``ACCOUNT_MERGE`` is wrong."""
    try:
        loaded = load()
        for dotted in (loaded.verifier, loaded.identity_rule, loaded.clock,
                       loaded.split_authorization):
            loaded.import_optional(dotted)
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), hint=gettext("Voir docs/integrations/django.md."),
                             id="account_merge.E001")]
    return []
