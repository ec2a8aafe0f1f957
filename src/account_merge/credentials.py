"""Argon2Verifier: password hashing and checking with argon2-cffi."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import warnings
from collections.abc import Iterator

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from account_merge.exceptions import InvalidInput

__all__ = ["Argon2Verifier", "WeakHashParametersWarning", "set_max_concurrent_hashes"]

#: OWASP's equivalent minimum configurations for argon2id (Password Storage
#: Cheat Sheet), as (memory in KiB, passes), each with one lane: 46 MiB and
#: one pass, 19 MiB and two, 12 MiB and three, 9 MiB and four, 7 MiB and five.
_OWASP_FLOORS = ((46 * 1024, 1), (19 * 1024, 2), (12 * 1024, 3), (9 * 1024, 4), (7 * 1024, 5))


class _Gate:
    """At most ``limit`` holders at once; the limit can change while in use."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._busy = 0
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._changed:
            self._limit = limit
            self._changed.notify_all()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._busy < self._limit)
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify()

    def forget_holders(self) -> None:
        """In a forked child: the parent's threads hold nothing here."""
        self._busy = 0
        self._changed = threading.Condition()


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


#: Every Argon2Verifier of this process shares these slots.
_PROCESS_GATE = _Gate(_cpus())
if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_PROCESS_GATE.forget_holders)


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(name, "must be a positive int")
    return value


def set_max_concurrent_hashes(limit: int | None = None) -> None:
    """Allow at most *limit* argon2 hashes or verifications at once in this process.

    The bound holds across every :class:`Argon2Verifier` of the process, so
    that a burst of requests cannot exhaust memory: each verification with
    argon2-cffi's defaults takes 64 MiB, so the process never needs more
    than *limit* times that for hashing.  The default (``None``) is the
    number of CPUs the process may run on; more would not go faster.
    """
    _PROCESS_GATE.set_limit(_cpus() if limit is None else _check_limit("limit", limit))


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

    Hashes and verifications wait for a slot: at most as many run at once
    in the whole process as :func:`set_max_concurrent_hashes` allows
    (default: the number of CPUs), whatever the number of verifiers, so
    that a burst of requests cannot exhaust memory (each default
    verification takes 64 MiB).  *max_concurrent* bounds this verifier
    further.

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
        if hasher is not None and not isinstance(hasher, argon2.PasswordHasher):
            raise InvalidInput("hasher", "must be an argon2.PasswordHasher")
        self._hasher = hasher if hasher is not None else argon2.PasswordHasher()
        self._own_gate = (None if max_concurrent is None
                          else _Gate(_check_limit("max_concurrent", max_concurrent)))
        if warn_if_weak and self.below_owasp_floor():
            warnings.warn(
                "argon2 parameters are below the OWASP floor "
                f"(memory_cost={self._hasher.memory_cost} KiB, "
                f"time_cost={self._hasher.time_cost}, "
                f"parallelism={self._hasher.parallelism}, type={self._hasher.type.name})",
                WeakHashParametersWarning,
                stacklevel=2,
            )
        self._dummy = self.hash(secrets.token_urlsafe(16))

    @property
    def hasher(self) -> argon2.PasswordHasher:
        """The argon2-cffi hasher in use."""
        return self._hasher

    def below_owasp_floor(self) -> bool:
        """True if the parameters are weaker than OWASP's recommendation.

        OWASP asks for argon2id with one of five equivalent settings, from
        46 MiB and one pass to 7 MiB and five passes (19 MiB and two passes
        in the middle), one lane each; more lanes are not weaker.
        """
        m, t = self._hasher.memory_cost, self._hasher.time_cost
        return self._hasher.type is not argon2.Type.ID or not any(
            m >= floor_m and t >= floor_t for floor_m, floor_t in _OWASP_FLOORS)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self._own_gate is None:
            with _PROCESS_GATE.slot():
                yield
        else:
            with self._own_gate.slot(), _PROCESS_GATE.slot():
                yield

    def hash(self, password: str) -> str:
        """A new argon2id hash of *password*."""
        with self._slot():
            return self._hasher.hash(_encode(password))

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if *password* matches; False (after the same work) otherwise."""
        secret = _encode(password)
        target: str | None = self._dummy if password_hash is None else password_hash
        if not isinstance(target, str) or not target.isascii():
            target = None  # malformed: argon2-cffi would raise before any work
        with self._slot():
            try:
                if target is not None:
                    return self._hasher.verify(target, secret) and password_hash is not None
            except VerifyMismatchError:
                return False
            except (InvalidHashError, VerificationError):
                pass
            # A malformed stored hash fails before any work: do the work.
            with contextlib.suppress(VerificationError):
                self._hasher.verify(self._dummy, secret)
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True if the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return True

    def __repr__(self) -> str:
        h = self._hasher
        return (f"Argon2Verifier(time_cost={h.time_cost}, memory_cost={h.memory_cost}, "
                f"parallelism={h.parallelism})")
