"""Fakes and helpers for testing code that embeds account_merge.

Nothing here imports pytest or Hypothesis: use it from any test runner.
The Hypothesis strategies live in :mod:`account_merge.testing.strategies`,
the storage conformance suite in :mod:`account_merge.testing.conformance`,
the opt-in pytest plugin in :mod:`account_merge.testing.pytest_plugin` and
a throwaway PostgreSQL server in :mod:`account_merge.testing.postgres`.

>>> from account_merge.testing import make_service, FakeClock
>>> service = make_service()
>>> service.clock is not None
True
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2

from account_merge.credentials import Argon2Verifier
from account_merge.domain.child import Child  # noqa: F401  (used by the doctests)
from account_merge.domain.establishment import Establishment, uai_check_letter
from account_merge.domain.events import Event, OutboxEntry
from account_merge.domain.notices import Notice, NoticeKind
from account_merge.exceptions import AccountMergeError
from account_merge.ports import CredentialVerifier, Storage
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.testing.bulk import BulkAccounts, bulk_load

__all__ = [
    "BulkAccounts",
    "CapturedEvents",
    "CapturingMailer",
    "CountingVerifier",
    "FakeClock",
    "bulk_load",
    "capture_events",
    "fast_verifier",
    "make_establishment",
    "make_service",
    "race",
]


def fast_verifier() -> Argon2Verifier:
    """Real argon2id with argon2-cffi's cheapest parameters: for tests only.

    Hashes made with it are real argon2 hashes, so every code path runs as
    in production, about a thousand times faster.
    """
    return Argon2Verifier(
        argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST), warn_if_weak=False
    )


class CountingVerifier:
    """Wraps a verifier and counts what it does (thread-safe).

    ``verifications`` counts calls to ``verify``, ``hashes`` calls to
    ``hash``; ``reset()`` sets both to zero.
    """

    def __init__(self, inner: CredentialVerifier | None = None) -> None:
        self.inner = inner if inner is not None else fast_verifier()
        self._lock = threading.Lock()
        self.verifications = 0
        self.hashes = 0

    def reset(self) -> None:
        """Forget the counts."""
        with self._lock:
            self.verifications = 0
            self.hashes = 0

    def hash(self, password: str) -> str:
        with self._lock:
            self.hashes += 1
        return self.inner.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        with self._lock:
            self.verifications += 1
        return self.inner.verify(password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return self.inner.needs_rehash(password_hash)

    def __repr__(self) -> str:
        return (f"CountingVerifier(verifications={self.verifications}, "
                f"hashes={self.hashes}, inner={self.inner!r})")


class FakeClock:
    """A clock a test sets and advances; call it to read the time.

    >>> clock = FakeClock(datetime(2026, 9, 1, tzinfo=UTC))
    >>> clock.advance(days=91)
    >>> clock().date().isoformat()
    '2026-12-01'
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start if start is not None else datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, now: datetime) -> None:
        """Jump to *now* (aware)."""
        if now.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        with self._lock:
            self._now = now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> None:
        """Move forward by *delta* or by ``timedelta(**kwargs)``."""
        step = delta if delta is not None else timedelta(**kwargs)
        with self._lock:
            self._now += step

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()})"


class CapturedEvents:
    """The events emitted while a :func:`capture_events` block ran."""

    def __init__(self) -> None:
        self.entries: list[OutboxEntry] = []

    @property
    def events(self) -> list[Event]:
        """The events, in order."""
        return [e.event for e in self.entries]

    @property
    def names(self) -> list[str]:
        """The events' names, in order (``accounts_merged``, ...)."""
        return [e.event.name for e in self.entries]

    def of_type(self, kind: type[Event]) -> list[Any]:
        """The captured events of one class."""
        return [e for e in self.events if isinstance(e, kind)]

    def __len__(self) -> int:
        return len(self.entries)


def _all_unpublished(service: MergeService) -> list[OutboxEntry]:
    out: list[OutboxEntry] = []
    batch = 1000
    while True:
        with service.storage.unit_of_work(write=False) as uow:
            entries = uow.unpublished(len(out) + batch)
        if len(entries) < len(out) + batch:
            return entries
        out = entries
        batch *= 2


@contextmanager
def capture_events(service: MergeService) -> Iterator[CapturedEvents]:
    """Collect the events the service writes to its outbox inside the block.

    It reads the outbox, so it sees exactly what a host's publisher would
    see; events a publisher marks published during the block are missed.

    >>> service = make_service()
    >>> with capture_events(service) as captured:
    ...     _ = service.issue_account(make_establishment(), "Claire Robert",
    ...                              [Child("c1", "Dylan", "Robert", make_establishment().uai)])
    >>> captured.names
    ['account_issued']
    """
    before = _all_unpublished(service)
    last = before[-1].position if before else 0
    captured = CapturedEvents()
    try:
        yield captured
    finally:
        captured.entries = [e for e in _all_unpublished(service) if e.position > last]


class CapturingMailer:
    """A mailer that keeps what it is given: ``sent`` lists the notices, in order.

    *fail* (a callable taking the notice) makes a send fail when it returns
    True, to test what happens then.

    >>> mailer = CapturingMailer()
    >>> service = make_service(secret_key="a test secret key of the host",
    ...                        links={"password_reset": "https://ent.example/mdp/{token}"})
    >>> service.deliver_notices(mailer)
    0
    >>> mailer.sent
    []
    """

    def __init__(self, fail: Callable[[Notice], bool] | None = None) -> None:
        self.sent: list[Notice] = []
        self.fail = fail
        self._lock = threading.Lock()

    def send(self, notice: Notice) -> None:
        if self.fail is not None and self.fail(notice):
            raise ConnectionError("the capturing mailer was told to fail")
        with self._lock:
            self.sent.append(notice)

    def of_kind(self, kind: NoticeKind) -> list[Notice]:
        """The notices sent of one kind."""
        return [n for n in self.sent if n.kind is kind]

    def last(self, kind: NoticeKind | None = None) -> Notice:
        """The last notice sent (of *kind*); ``LookupError`` if there is none."""
        found = self.sent if kind is None else self.of_kind(kind)
        if not found:
            raise LookupError(f"no notice {kind.value if kind else ''} was sent")
        return found[-1]

    def __repr__(self) -> str:
        return f"CapturingMailer(sent={len(self.sent)})"


def make_establishment(number: int = 860001, name: str | None = None) -> Establishment:
    """A valid establishment whose UAI is built from *number* (7 digits)."""
    digits = f"{number:07d}"
    return Establishment(digits + uai_check_letter(digits), name or f"Collège {digits}")


def make_service(
    storage: Storage | None = None,
    *,
    verifier: CredentialVerifier | None = None,
    clock: FakeClock | None = None,
    **options: Any,
) -> MergeService:
    """A :class:`MergeService` ready for tests in one call.

    In-memory store, :func:`fast_verifier`, a :class:`FakeClock` (reachable
    as ``service.clock``) unless given; *options* go to ``MergeService``.
    """
    return MergeService(
        storage if storage is not None else InMemoryStorage(),
        verifier if verifier is not None else fast_verifier(),
        clock if clock is not None else FakeClock(),
        **options,
    )



def race(
    workers: int,
    call: Callable[[int], Any],
    *,
    catch: type[BaseException] | tuple[type[BaseException], ...] = AccountMergeError,
    after: Callable[[], None] | None = None,
) -> list[Any]:
    """Run ``call(i)`` for i in ``range(workers)`` in threads released together.

    Returns each call's result, or the exception it raised if that is one
    of *catch* (others propagate).  *after* runs in each thread once its
    call is done (to close a per-thread connection, say).  Threads switch
    very often while the race runs, so that interleavings happen.

    >>> race(3, lambda i: i * i)
    [0, 1, 4]
    """
    barrier = threading.Barrier(workers)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return call(i)
        except catch as error:
            return error
        finally:
            if after is not None:
                after()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, range(workers)))
    finally:
        sys.setswitchinterval(previous)
