"""Hashing passwords on every core, for bulk work such as a school's letters.

The argon2 hash is the expensive step by design; issuing thousands of
letters spreads it over a pool of worker processes.  Workers only hash:
they receive a password and send back its hash; everything else (storage,
letters) stays in the calling process.

A worker hashes exactly as the caller's verifier does: an
:class:`~account_merge.credentials.Argon2Verifier` sends its
:class:`argon2.PasswordHasher` (the same parameters), which the worker
uses as the verifier would, without building a verifier of its own (that
would cost a hash per worker for a dummy it never needs); any other
verifier is sent to the workers as it is, so it must be picklable.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

import argon2

from account_merge.credentials import Argon2Verifier
from account_merge.credentials import _encode as encode_password  # the verifier's own encoding
from account_merge.ports import CredentialVerifier

__all__ = ["MAX_WORKERS", "default_workers", "hash_passwords"]

T = TypeVar("T")

#: Passwords in flight per worker: enough to keep every worker busy while
#: the caller stores, few enough that a batch never sits in memory.
_IN_FLIGHT_PER_WORKER = 4

_worker_hasher: argon2.PasswordHasher | CredentialVerifier | None = None


#: The most worker processes a batch may ask for (more is a mistake, not a machine).
MAX_WORKERS = 256


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _start_worker(spec: argon2.PasswordHasher | CredentialVerifier) -> None:
    global _worker_hasher  # noqa: PLW0603 - one hasher per worker process
    # Ctrl-C is for the calling process, which shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_hasher = spec


def _hash_in_worker(password: str) -> str:
    hasher = _worker_hasher
    assert hasher is not None, "worker not started"
    if isinstance(hasher, argon2.PasswordHasher):
        # What Argon2Verifier.hash does, one hash at a time per worker.
        return hasher.hash(encode_password(password))
    return hasher.hash(password)


def hash_passwords(
    verifier: CredentialVerifier,
    items: Iterable[tuple[T, str]],
    *,
    workers: int | None = None,
) -> Iterator[tuple[T, str, str]]:
    """Yield ``(item, password, hash)`` for each ``(item, password)``, in order.

    With *workers* greater than 1 (default: one per CPU), the hashes are
    computed by that many worker processes; with 1, here.  Only a few
    passwords per worker are in flight at once, so *items* may be a long
    generator.  If *items* raises, the items before it are still yielded,
    then the error is raised.
    """
    count = default_workers() if workers is None else workers
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"workers must be from 1 to {MAX_WORKERS}")
    if count == 1:
        for item, password in items:
            yield item, password, verifier.hash(password)
        return
    spec: argon2.PasswordHasher | CredentialVerifier = (
        verifier.hasher if isinstance(verifier, Argon2Verifier) else verifier
    )
    pool = ProcessPoolExecutor(max_workers=count, initializer=_start_worker, initargs=(spec,))
    try:
        pending: deque[tuple[T, str, Future[str]]] = deque()
        source = iter(items)
        error: Exception | None = None
        exhausted = False
        while True:
            while not exhausted and error is None and len(pending) < count * _IN_FLIGHT_PER_WORKER:
                try:
                    item, password = next(source)
                except StopIteration:
                    exhausted = True
                except Exception as exc:  # raised once the items before it are out
                    error = exc
                else:
                    pending.append((item, password, pool.submit(_hash_in_worker, password)))
            if not pending:
                break
            item, password, future = pending.popleft()
            yield item, password, future.result()
        if error is not None:
            raise error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
