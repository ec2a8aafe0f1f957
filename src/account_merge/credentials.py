"""Argon2Verifier: password hashing and checking with argon2-cffi."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import warnings

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["Argon2Verifier", "WeakHashParametersWarning"]

#: OWASP's floor for argon2id: 19 MiB with 2 passes, or 46 MiB with one.
_OWASP_FLOORS = ((19 * 1024, 2), (46 * 1024, 1))


class WeakHashParametersWarning(UserWarning):
    """The argon2 parameters are below OWASP's recommended floor."""


def _encode(password: str) -> bytes:
    # "surrogatepass" so that text that cannot be encoded (a lone surrogate)
    # costs the same verification as any other wrong password, and never
    # raises an exception carrying the password in its ``object``.
    return password.encode("utf-8", "surrogatepass")


class Argon2Verifier:
    """Hashes and verifies passwords with argon2id.

    *hasher* is an :class:`argon2.PasswordHasher`; by default, argon2-cffi's
    own defaults (RFC 9106 low-memory profile: 64 MiB, 3 passes, 4 lanes).
    A warning (:class:`WeakHashParametersWarning`) is issued when the
    parameters are below OWASP's floor, unless ``warn_if_weak=False`` (the
    testing kit's fast verifier does that).

    At most *max_concurrent* hashes or verifications run at once in this
    process (default: the number of CPUs), so that a burst of requests
    cannot exhaust memory (each default verification takes 64 MiB).

    Every failure, including a malformed stored hash and the absence of a
    hash (``verify(None, ...)``), costs one verification with the current
    parameters, against a dummy hash made once at construction.
    """

    def __init__(
        self,
        hasher: argon2.PasswordHasher | None = None,
        *,
        max_concurrent: int | None = None,
        warn_if_weak: bool = True,
    ) -> None:
        self._hasher = hasher if hasher is not None else argon2.PasswordHasher()
        self._slots = threading.BoundedSemaphore(max_concurrent or os.cpu_count() or 1)
        if warn_if_weak and self.below_owasp_floor():
            warnings.warn(
                "argon2 parameters are below the OWASP floor "
                f"(memory_cost={self._hasher.memory_cost} KiB, "
                f"time_cost={self._hasher.time_cost})",
                WeakHashParametersWarning,
                stacklevel=2,
            )
        self._dummy = self.hash(secrets.token_urlsafe(16))

    @property
    def hasher(self) -> argon2.PasswordHasher:
        """The argon2-cffi hasher in use."""
        return self._hasher

    def below_owasp_floor(self) -> bool:
        """True if the parameters are weaker than OWASP's recommendation."""
        m, t = self._hasher.memory_cost, self._hasher.time_cost
        return not any(m >= floor_m and t >= floor_t for floor_m, floor_t in _OWASP_FLOORS)

    def hash(self, password: str) -> str:
        """A new argon2id hash of *password*."""
        with self._slots:
            return self._hasher.hash(_encode(password))

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if *password* matches; False (after the same work) otherwise."""
        secret = _encode(password)
        with self._slots:
            target = self._dummy if password_hash is None else password_hash
            try:
                return self._hasher.verify(target, secret) and password_hash is not None
            except VerifyMismatchError:
                return False
            except (InvalidHashError, VerificationError):
                # A malformed stored hash fails before any work: do the work.
                with contextlib.suppress(VerificationError):
                    self._hasher.verify(self._dummy, secret)
                return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True if the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def __repr__(self) -> str:
        h = self._hasher
        return (f"Argon2Verifier(time_cost={h.time_cost}, memory_cost={h.memory_cost}, "
                f"parallelism={h.parallelism})")
