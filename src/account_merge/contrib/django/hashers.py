"""DjangoPasswordVerifier: argon2id for new hashes, Django's formats accepted too.

An ENT built on Django keeps its users' passwords as Django hashes
(``argon2$argon2id$...``, ``pbkdf2_sha256$...``, ``bcrypt_sha256$...``,
or ``!...`` for an unusable password).  Stored as an account's credential,
such a hash keeps working: the verifier recognises it with
:func:`django.contrib.auth.hashers.identify_hasher` (so the formats are
those of the project's ``PASSWORD_HASHERS``) and checks it with Django's
hasher.  ``needs_rehash`` is true for every hash that is not the
library's own argon2id with the current parameters, so that the service
rehashes it on the next successful sign-in (``MergeService.authenticate``
does).

Rule I7 holds: a failure costs one verification whatever the hash was.
No hash, an unusable one (``!``), a format the project does not know or a
malformed hash are all checked against the dummy argon2 hash instead.
"""

from __future__ import annotations

import contextlib
from typing import Final

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX, identify_hasher

from account_merge.credentials import Argon2Verifier

__all__ = ["DjangoPasswordVerifier"]

#: How the library's own argon2 hashes begin (argon2-cffi's encoding).
_NATIVE_PREFIX: Final = "$argon2"


class DjangoPasswordVerifier(Argon2Verifier):
    """An :class:`~account_merge.credentials.Argon2Verifier` that also reads Django hashes.

    New hashes are argon2id with the parameters of *hasher* (see
    :class:`~account_merge.credentials.Argon2Verifier` for the arguments).
    It is an ``Argon2Verifier``, so bulk issuing hashes in worker
    processes exactly as here.
    """

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if *password* matches *password_hash*, in the library's or Django's format."""
        if password_hash is None or password_hash.startswith(_NATIVE_PREFIX):
            return super().verify(password_hash, password)
        if not self._is_django_hash(password_hash) or not _encodable(password):
            return super().verify(None, password)
        try:
            hasher = identify_hasher(password_hash)
            return bool(hasher.verify(password, password_hash))
        except (ValueError, TypeError, IndexError):
            # A hash Django cannot parse fails before any work: do the work.
            with contextlib.suppress(ValueError):
                super().verify(None, password)
            return False

    @staticmethod
    def _is_django_hash(password_hash: str) -> bool:
        if password_hash.startswith(UNUSABLE_PASSWORD_PREFIX):
            return False
        try:
            identify_hasher(password_hash)
        except ValueError:
            return False
        return True

    def needs_rehash(self, password_hash: str) -> bool:
        """True unless *password_hash* is the library's argon2id with the current parameters."""
        if not password_hash.startswith(_NATIVE_PREFIX):
            return True
        return super().needs_rehash(password_hash)

    def __repr__(self) -> str:
        return "DjangoPasswordVerifier" + super().__repr__().removeprefix("Argon2Verifier")


def _encodable(password: str) -> bool:
    """False for text Django's hashers would fail to encode (a lone surrogate)."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
