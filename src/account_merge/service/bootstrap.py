"""The composition root: builds the service's defaults and reads the hosts' settings.

Use cases never build their collaborators; this module does, once:

- :func:`build_context` gives the verifier (argon2id with argon2-cffi's
  defaults), the clock (UTC now) and the :class:`~account_merge.service.policies.Policies`
  a service runs with;
- :func:`read_settings` turns one flat mapping of settings into those
  objects.  It is the one vocabulary of every integration: Django's
  ``ACCOUNT_MERGE = {"THROTTLE_LOCK_AFTER": 10, ...}``, Flask's
  ``ACCOUNT_MERGE_THROTTLE_LOCK_AFTER = 10``, a pytest plugin's options:
  the same names, in any case, as Python values or as the strings of an
  environment.

The settings (:data:`SETTINGS`), all optional:

====================================  ===============================================
``THROTTLE_BACKOFF_AFTER``            :class:`~account_merge.ThrottlePolicy` fields:
``THROTTLE_BACKOFF_BASE`` (s)         ints, or durations in seconds or as
``THROTTLE_BACKOFF_MAX`` (s)          ``timedelta``
``THROTTLE_LOCK_AFTER``
``THROTTLE_LOCK_FOR`` (s)
``THROTTLE_PRINCIPAL_PER_HOUR``
``THROTTLE_PRINCIPAL_PER_DAY``
``PROVISIONAL_VALIDITY`` (s)          how long a letter's password opens its account
``PROVISIONAL_LENGTH``                characters of a provisional password
``IDENTITY_RULE``                     rule M6: a callable or its dotted path
``PASSWORD_POLICY``                   a policy object, or the dotted path of a
                                      zero-argument callable returning one
``CLOCK``                             a zero-argument callable or its dotted path
``VERIFIER``                          a verifier, or the dotted path of a
                                      zero-argument callable returning one
``ARGON2_PROFILE``                    a name of :mod:`argon2.profiles`
``ARGON2_TIME_COST`` ...              ``MEMORY_COST`` (KiB), ``PARALLELISM``,
                                      ``HASH_LEN``, ``SALT_LEN``
``ARGON2_MAX_CONCURRENT``             hashes at once through this verifier
``ARGON2_WARN_IF_WEAK``               warn below OWASP's floor (default true)
``SECRET_KEY``                        signs the links of notices (at least 16
                                      characters; keep it secret)
``LINKS``                             the pages behind the links: a mapping, or its
                                      JSON text (``password_reset``,
                                      ``email_verification``, ``sign_in``)
``RESET_VALIDITY`` (s)                how long a password-reset link works
``EMAIL_CONFIRMATION_VALIDITY`` (s)   how long an e-mail confirmation link works
``NOTICE_ATTEMPTS``                   failed sends before a notice is given up
``REGISTER_PAGE``                     register records a sync reads per unit of work
``REGISTER_BATCH``                    accounts a register sync settles per unit of work
``RETENTION_UNACTIVATED`` (s)         :class:`~account_merge.domain.retention.RetentionPolicy`
``RETENTION_UNUSED`` (s)              fields: durations in seconds or as ``timedelta``
``RETENTION_CLOSED`` (s)              (``RETENTION_UNPUBLISHED_EVENTS`` may be
``RETENTION_AUDIT`` (s)               ``"never"``); ``RETENTION_AUDIT_END`` is
``RETENTION_AUDIT_END``               ``"delete"`` or ``"pseudonymise"``;
``RETENTION_PUBLISHED_EVENTS`` (s)    ``RETENTION_BATCH`` an int
``RETENTION_UNPUBLISHED_EVENTS`` (s)
``RETENTION_COUNTERS`` (s)
``RETENTION_BATCH``
====================================  ===============================================
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import argon2
import attrs

from account_merge.credentials import Argon2Verifier
from account_merge.domain.retention import AuditEnd, RetentionPolicy
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import InvalidInput
from account_merge.ports.clock import Clock
from account_merge.ports.storage import Storage
from account_merge.ports.verifier import CredentialVerifier
from account_merge.service.context import Context
from account_merge.service.links import RecoveryOptions
from account_merge.service.policies import Policies

__all__ = ["SETTINGS", "Settings", "build_context", "import_object", "read_settings",
           "utc_now"]

_THROTTLE_FIELDS: Final = tuple(f.name for f in attrs.fields(ThrottlePolicy))
_DURATIONS: Final = frozenset({"backoff_base", "backoff_max", "lock_for"})
_ARGON2_INTS: Final = ("time_cost", "memory_cost", "parallelism", "hash_len", "salt_len")
_ARGON2_PROFILES: Final = ("RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY", "CHEAPEST", "PRE_21_2")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: Every setting :func:`read_settings` knows, in upper case.
SETTINGS: Final[frozenset[str]] = frozenset({
    *(f"THROTTLE_{name.upper()}" for name in _THROTTLE_FIELDS),
    "PROVISIONAL_VALIDITY", "PROVISIONAL_LENGTH", "IDENTITY_RULE", "PASSWORD_POLICY",
    "CLOCK", "VERIFIER", "ARGON2_PROFILE", *(f"ARGON2_{n.upper()}" for n in _ARGON2_INTS),
    "ARGON2_MAX_CONCURRENT", "ARGON2_WARN_IF_WEAK",
    # the way back
    "SECRET_KEY", "LINKS", "RESET_VALIDITY", "EMAIL_CONFIRMATION_VALIDITY", "NOTICE_ATTEMPTS",
    "REGISTER_PAGE", "REGISTER_BATCH",
    # retention
    *(f"RETENTION_{f.name.upper()}" for f in attrs.fields(RetentionPolicy)),
})


def utc_now() -> datetime:
    """The default clock: the current time in UTC."""
    return datetime.now(UTC)


def build_context(storage: Storage, verifier: CredentialVerifier | None = None,
                  clock: Clock | None = None, policies: Policies | None = None, *,
                  recovery: RecoveryOptions | None = None) -> Context:
    """The service's collaborators, with the defaults for those not given."""
    if not callable(getattr(storage, "unit_of_work", None)):
        raise InvalidInput("storage", "must be a Storage (with a unit_of_work() method)")
    if verifier is not None and not all(
            callable(getattr(verifier, name, None)) for name in ("hash", "verify",
                                                                 "needs_rehash")):
        raise InvalidInput("verifier", "must be a CredentialVerifier")
    if clock is not None and not callable(clock):
        raise InvalidInput("clock", "must be a zero-argument callable")
    if policies is not None and not isinstance(policies, Policies):
        raise InvalidInput("policies", "must be a Policies")
    return Context(storage=storage,
                   verifier=verifier if verifier is not None else Argon2Verifier(),
                   clock=clock if clock is not None else utc_now,
                   policies=policies if policies is not None else Policies(),
                   recovery=recovery if recovery is not None else RecoveryOptions())


def import_object(dotted: str) -> Any:
    """The object at ``package.module.name`` (or ``package.module:name``)."""
    module, sep, name = dotted.replace(":", ".").rpartition(".")
    if not sep or not module:
        raise ImportError(f"{dotted!r} is not a dotted path")
    return getattr(importlib.import_module(module), name)


@attrs.frozen
class Settings:
    """What :func:`read_settings` built: the policies, and the verifier and clock if set.

    ``secret_key`` and ``links`` are for ``MergeService(secret_key=...,
    links=...)`` (None when not set).
    """

    policies: Policies
    verifier: CredentialVerifier | None
    clock: Clock | None
    secret_key: Secret | None = attrs.field(default=None, repr=False)
    links: Mapping[str, str] | None = None


def read_settings(values: Mapping[str, Any], *, name: Callable[[str], str] = str) -> Settings:
    """The policies, verifier and clock described by *values* (see the module docstring).

    Keys are matched case-insensitively; an unknown key is ``invalid_input``
    (a misspelt limit must not fall back to its default).  *name* turns a
    setting's upper-case name into the name the host wrote (for example
    ``"ACCOUNT_MERGE_" + key``), for the errors.
    """
    given = {str(k).upper(): v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - SETTINGS)
    if unknown:
        raise InvalidInput(name(unknown[0]), "unknown setting; the known ones are "
                           + ", ".join(name(k) for k in sorted(SETTINGS)))
    reader = _Reader(given, name)
    throttle: dict[str, Any] = {}
    for field in _THROTTLE_FIELDS:
        key = f"THROTTLE_{field.upper()}"
        if key in given:
            throttle[field] = (reader.seconds(key) if field in _DURATIONS else reader.int(key))
    policy_options: dict[str, Any] = {}
    with reader.renaming("THROTTLE_"):
        policy_options["throttle"] = ThrottlePolicy(**throttle)
    if "PROVISIONAL_VALIDITY" in given:
        policy_options["provisional_validity"] = reader.seconds("PROVISIONAL_VALIDITY")
    if "PROVISIONAL_LENGTH" in given:
        policy_options["provisional_length"] = reader.int("PROVISIONAL_LENGTH")
    if "IDENTITY_RULE" in given:
        policy_options["identity_rule"] = reader.callable("IDENTITY_RULE")
    if "PASSWORD_POLICY" in given:
        policy_options["password_policy"] = reader.made("PASSWORD_POLICY")
    for key in ("RESET_VALIDITY", "EMAIL_CONFIRMATION_VALIDITY"):
        if key in given:
            policy_options[key.lower()] = reader.seconds(key)
    if "NOTICE_ATTEMPTS" in given:
        policy_options["notice_attempts"] = reader.int("NOTICE_ATTEMPTS")
    for key in ("REGISTER_PAGE", "REGISTER_BATCH"):
        if key in given:
            policy_options[key.lower()] = reader.int(key)
    retention = reader.retention()
    with reader.renaming("RETENTION_"):
        policy_options["retention"] = RetentionPolicy(**retention)
    with reader.renaming(""):
        policies = Policies(**policy_options)
    clock = reader.callable("CLOCK") if "CLOCK" in given else None
    secret_key, links = reader.recovery()
    return Settings(policies=policies, verifier=reader.verifier(), clock=clock,
                    secret_key=secret_key, links=links)


class _Reader:
    """Reads one kind of value from the settings, naming the key on error."""

    def __init__(self, given: Mapping[str, Any], name: Callable[[str], str]) -> None:
        self.given = given
        self.name = name

    def renaming(self, prefix: str) -> _Renaming:
        return _Renaming(self, prefix)

    def int(self, key: str) -> int:
        value = self.given[key]
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(self.name(key), "must be a whole number")
        return value

    def seconds(self, key: str) -> timedelta:
        value = self.given[key]
        if isinstance(value, timedelta):
            return value
        if isinstance(value, str):
            try:
                return timedelta(seconds=float(value))
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
        raise InvalidInput(self.name(key), "must be a number of seconds or a timedelta")

    def bool(self, key: str) -> bool:
        value = self.given[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise InvalidInput(self.name(key), "must be true or false")

    def _object(self, key: str) -> Any:
        value = self.given[key]
        if isinstance(value, str):
            try:
                return import_object(value)
            except (ImportError, AttributeError) as error:
                raise InvalidInput(self.name(key), f"cannot import {value!r} ({error})") from None
        return value

    def callable(self, key: str) -> Any:
        found = self._object(key)
        if not callable(found):
            raise InvalidInput(self.name(key), "must be callable (or its dotted path)")
        return found

    def made(self, key: str) -> Any:
        """An object given as itself, or by the dotted path of a factory."""
        if isinstance(self.given[key], str):
            return self.callable(key)()
        return self.given[key]

    def recovery(self) -> tuple[Secret | None, Mapping[str, str] | None]:
        """``SECRET_KEY`` and ``LINKS``, checked as ``MergeService`` will use them."""
        secret = self.given.get("SECRET_KEY")
        if secret is not None and not isinstance(secret, (str, Secret)):
            raise InvalidInput(self.name("SECRET_KEY"), "must be a string")
        links = self.given.get("LINKS")
        if isinstance(links, str):
            try:
                links = json.loads(links)
            except ValueError:
                raise InvalidInput(self.name("LINKS"), "must be a mapping or its JSON text") \
                    from None
        try:
            options = RecoveryOptions.of(secret, links)
        except InvalidInput as error:
            raise InvalidInput(self.name(error.field.upper()),
                               error.message.split(": ", 1)[-1]) from None
        key = secret if secret is None or isinstance(secret, Secret) else Secret(secret)
        return key, (dict(options.links) if links is not None else None)

    def retention(self) -> dict[str, Any]:
        """The ``RETENTION_*`` settings given, as fields of a ``RetentionPolicy``."""
        options: dict[str, Any] = {}
        for field in attrs.fields(RetentionPolicy):
            key = f"RETENTION_{field.name.upper()}"
            if key not in self.given:
                continue
            value = self.given[key]
            if field.name == "batch":
                options[field.name] = self.int(key)
            elif field.name == "audit_end":
                text = value.value if isinstance(value, AuditEnd) else str(value).strip().lower()
                try:
                    options[field.name] = AuditEnd(text)
                except ValueError:
                    raise InvalidInput(self.name(key), "must be " + " or ".join(
                        repr(e.value) for e in AuditEnd)) from None
            elif field.name == "unpublished_events" and str(value).strip().lower() == "never":
                options[field.name] = None
            else:
                options[field.name] = self.seconds(key)
        return options

    def verifier(self) -> CredentialVerifier | None:
        if "VERIFIER" in self.given:
            if any(k.startswith("ARGON2_") for k in self.given):
                raise InvalidInput(self.name("VERIFIER"),
                                   "give a verifier or ARGON2_* parameters, not both")
            return self.made("VERIFIER")  # type: ignore[no-any-return]
        if not any(k.startswith("ARGON2_") for k in self.given):
            return None
        profile = self.given.get("ARGON2_PROFILE", "RFC_9106_LOW_MEMORY")
        if not isinstance(profile, str) or profile.strip().upper() not in _ARGON2_PROFILES:
            raise InvalidInput(self.name("ARGON2_PROFILE"),
                               f"must be one of {', '.join(_ARGON2_PROFILES)}")
        parameters: argon2.Parameters = getattr(argon2.profiles, profile.strip().upper())
        changes: dict[str, Any] = {n: self.int(f"ARGON2_{n.upper()}") for n in _ARGON2_INTS
                                   if f"ARGON2_{n.upper()}" in self.given}
        concurrent = (self.int("ARGON2_MAX_CONCURRENT")
                      if "ARGON2_MAX_CONCURRENT" in self.given else None)
        warn = self.bool("ARGON2_WARN_IF_WEAK") if "ARGON2_WARN_IF_WEAK" in self.given else True
        try:
            # The verifier hashes once at construction: parameters argon2 refuses fail here.
            return Argon2Verifier(
                argon2.PasswordHasher.from_parameters(dataclasses.replace(parameters, **changes)),
                max_concurrent=concurrent, warn_if_weak=warn)
        except (ValueError, argon2.exceptions.Argon2Error) as error:
            key = f"ARGON2_{next(iter(changes)).upper()}" if changes else "ARGON2_PROFILE"
            raise InvalidInput(self.name(key), f"argon2 refuses these parameters: {error}") \
                from None


class _Renaming:
    """Turns an ``invalid_input`` about a field into one about the setting."""

    def __init__(self, reader: _Reader, prefix: str) -> None:
        self.reader = reader
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, InvalidInput) and exc.field.isidentifier():
            key = self.reader.name(f"{self.prefix}{exc.field.upper()}")
            raise InvalidInput(key, exc.message.split(": ", 1)[-1]) from None
