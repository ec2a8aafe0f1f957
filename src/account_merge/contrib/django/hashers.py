"""DjangoPasswordVerifier: argon2id for new hashes, Django's formats accepted too.

An ENT built on Django keeps its users' passwords as Django hashes
(``pbkdf2_sha256$...``, ``argon2$argon2id$...``, ``bcrypt_sha256$...``, or
``!...`` for an unusable password).  Stored as an account's credential,
such a hash keeps working, in the formats the verifier accepts (its
*legacy* formats: by default the one Django writes, the first of the
project's ``PASSWORD_HASHERS``), checked with Django's own hasher.
``needs_rehash`` is true for every hash that is not the library's own
argon2id with the current parameters, so that the service rehashes it on
the next successful sign-in (``MergeService.authenticate`` does).

Rule I7: every verification does the same work, whatever the stored hash
is.  A legacy hash costs what its hasher costs (PBKDF2 with a million
iterations, three times argon2's default here), so checking only the hash
stored would tell a login with a legacy hash from an unknown one by the
time it takes, and running the dummy at the legacy cost would tell the
library's own hashes from unknown logins instead.  So every ``verify``
runs exactly one verification with each accepted legacy format (on the
stored hash if it has that format, raised to the hasher's current work
factor with Django's ``harden_runtime`` when it fails, else on a dummy
hash made once) and exactly one argon2 verification (on the stored hash if
it is the library's own, else on the dummy): an unknown login, an unusable
or malformed hash, a format not accepted, the library's hash and a legacy
hash all cost the same.  Each accepted format adds its cost to every
verification: accept only the formats the stored credentials use, and
none (``legacy=()``) once they have all been rehashed.

Every hash and verification waits for a slot of the process-wide bound on
concurrent hashing (:func:`account_merge.credentials.set_max_concurrent_hashes`),
Django's hashers included.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Final, Self

import argon2
import attrs
from django.contrib.auth.hashers import (
    UNUSABLE_PASSWORD_PREFIX,
    BasePasswordHasher,
    get_hasher,
    identify_hasher,
)
from django.core.exceptions import ImproperlyConfigured

from account_merge.credentials import Argon2Verifier

__all__ = ["DjangoPasswordVerifier", "check_hashers"]

#: How the library's own argon2 hashes begin (argon2-cffi's encoding).
_NATIVE_PREFIX: Final = "$argon2"
#: Stands for a password Django's hashers cannot encode, in the dummy work.
_UNENCODABLE: Final = "\ufffd"


@attrs.frozen
class _Legacy:
    """An accepted Django format: its hasher and a dummy hash of it, at the current cost."""

    algorithm: str
    hasher: BasePasswordHasher
    dummy: str = attrs.field(repr=False)


def check_hashers(algorithms: Sequence[str]) -> list[BasePasswordHasher]:
    """The hashers of *algorithms* in the project's ``PASSWORD_HASHERS``.

    Raises ImproperlyConfigured naming an algorithm the project does not list.
    """
    found = []
    for algorithm in algorithms:
        try:
            found.append(get_hasher(algorithm))
        except ValueError:
            raise ImproperlyConfigured(
                f"the Django hash format {algorithm!r} is not among the project's "
                "PASSWORD_HASHERS") from None
    return found


class DjangoPasswordVerifier(Argon2Verifier):
    """An :class:`~account_merge.credentials.Argon2Verifier` that also reads Django hashes.

    New hashes are argon2id with the parameters of *hasher* (see
    :class:`~account_merge.credentials.Argon2Verifier` for the arguments).
    *legacy* names the Django formats accepted, by hasher algorithm
    (``["pbkdf2_sha256"]``); None: the format of the first of the
    project's ``PASSWORD_HASHERS``; ``()``: none.  Each costs its hasher's
    work in every verification (see the module docstring).  It is an
    ``Argon2Verifier``, so bulk issuing hashes in worker processes
    exactly as here.
    """

    def __init__(
        self,
        hasher: argon2.PasswordHasher | None = None,
        *,
        legacy: Sequence[str] | None = None,
        max_concurrent: int | None = None,
        warn_if_weak: bool = True,
    ) -> None:
        super().__init__(hasher, max_concurrent=max_concurrent, warn_if_weak=warn_if_weak)
        self._legacy = self._accept(legacy)

    @classmethod
    def from_argon2(cls, verifier: Argon2Verifier, *,
                    legacy: Sequence[str] | None = None) -> Self:
        """A verifier with *verifier*'s argon2 side (hasher, bound, dummy), made without a hash.

        For a verifier the library's settings built (``ARGON2_*``).
        """
        made = cls.__new__(cls)
        made.__dict__.update(verifier.__dict__)
        made._legacy = made._accept(legacy)
        return made

    def _accept(self, legacy: Sequence[str] | None) -> tuple[_Legacy, ...]:
        if legacy is None:
            hashers = [get_hasher("default")]
        else:
            if isinstance(legacy, str):
                raise TypeError("legacy is a sequence of hasher algorithms, not one string")
            hashers = check_hashers(list(dict.fromkeys(legacy)))
        accepted = []
        for found in hashers:
            with self._slot():
                dummy = found.encode(secrets.token_urlsafe(16), found.salt())
            accepted.append(_Legacy(str(found.algorithm), found, dummy))
        return tuple(accepted)

    @property
    def legacy_formats(self) -> tuple[str, ...]:
        """The Django formats accepted, by hasher algorithm."""
        return tuple(entry.algorithm for entry in self._legacy)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if *password* matches *password_hash*; the same work in every case."""
        native = password_hash if (password_hash is not None
                                   and password_hash.startswith(_NATIVE_PREFIX)) else None
        opened = self._verify_legacy(self._format_of(password_hash), password_hash, password)
        # One argon2 verification, on the library's hash or on the dummy (False then).
        native_opened = super().verify(native, password)
        return opened or native_opened

    def _format_of(self, password_hash: str | None) -> _Legacy | None:
        """The accepted legacy format of *password_hash*, or None."""
        if (password_hash is None or password_hash.startswith(_NATIVE_PREFIX)
                or password_hash.startswith(UNUSABLE_PASSWORD_PREFIX) or not self._legacy):
            return None
        try:
            algorithm = identify_hasher(password_hash).algorithm
        except (ValueError, TypeError, IndexError):
            return None
        return next((entry for entry in self._legacy if entry.algorithm == algorithm), None)

    def _verify_legacy(self, target: _Legacy | None, password_hash: str | None,
                       password: str) -> bool:
        """One verification per accepted legacy format; True if *password_hash* opened."""
        if not self._legacy:
            return False
        usable = password if _encodable(password) else _UNENCODABLE
        opened = False
        with self._slot():
            for entry in self._legacy:
                if entry is target and usable is password:
                    assert password_hash is not None
                    opened = self._check(entry, password_hash, password)
                else:
                    entry.hasher.verify(usable, entry.dummy)
        return opened

    @staticmethod
    def _check(entry: _Legacy, password_hash: str, password: str) -> bool:
        """*password* against a stored legacy hash; a failure costs the current work factor."""
        try:
            if entry.hasher.verify(password, password_hash):
                return True
            # A hash made with a lower work factor is raised to the current one.
            entry.hasher.harden_runtime(password, password_hash)
        except (ValueError, TypeError, IndexError):
            # A hash Django cannot parse fails before any work: do the work.
            entry.hasher.verify(password, entry.dummy)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True unless *password_hash* is the library's argon2id with the current parameters."""
        if not password_hash.startswith(_NATIVE_PREFIX):
            return True
        return super().needs_rehash(password_hash)

    def __repr__(self) -> str:
        own = super().__repr__().removeprefix("Argon2Verifier(").removesuffix(")")
        return f"DjangoPasswordVerifier({own}, legacy={list(self.legacy_formats)!r})"


def _encodable(password: str) -> bool:
    """False for text Django's hashers would fail to encode (a lone surrogate)."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
