"""Throttling of failed attempts, as pure functions over a stored state.

Provisional passwords carry about 40 bits and the merge form lets a
signed-in parent try someone else's login and password, so failures are
counted in storage (shared by every worker) and attempts slowed down.
Three kinds of counter, each under its own key, so that no stranger can
lock a parent out of their own account:

- **sign-in** (``signin:<login key>:<client tag>``): the failures of
  ``authenticate``, ``activate`` and ``change_password`` at one login *from
  one client* (an IP address or device the host vouches for; calls without
  a client share one bucket per login).  After ``backoff_after``
  consecutive failures each further attempt from that client waits twice
  as long as the one before, at most ``backoff_max``; never locked.  A
  success from that client starts its count again, and only its count.
- **merge** (``merge:<login key>``): the failures of the merge form aimed
  at one login, from any principal: back-off as above, and after
  ``lock_after`` failures merging with that login is locked for
  ``lock_for``.  It never slows the owner's sign-in.
- **principal** (``principal:<account id>``): the merge-form failures of
  one principal, at most ``principal_per_hour`` in any hour and
  ``principal_per_day`` in any day, whatever logins it aims at.

The way back counts *requests*, not failures (a request cannot tell
whether it found an account), under three more kinds:

- **recovery** (``recovery:<digest of the login or address typed>``):
  password-reset and login-reminder requests for one identifier, at most
  ``recovery_per_hour`` in any hour, whether an account has it or not,
  so that nobody floods a parent's mailbox;
- **recovery-client** (``recovery-client:<client tag>``): the requests of
  one client, at most ``recovery_client_per_hour`` in any hour;
- **token** (``token:<client tag>``): the failures of ``reset_password``
  from one client, slowed down like sign-in.

An attempt is counted *before* its password is checked (the store counts
it atomically as it reads, see :class:`~account_merge.ports.Fetch`), so
concurrent attempts cannot run more verifications than the limits allow;
a success gives the attempt back.
"""

from __future__ import annotations

import enum
import hashlib
import math
from datetime import datetime, timedelta
from typing import Any

import attrs

from account_merge.domain.validation import has_control_characters
from account_merge.exceptions import InvalidInput

__all__ = [
    "MAX_CLIENT_LENGTH",
    "ThrottleKind",
    "ThrottlePolicy",
    "ThrottleState",
    "check_client",
    "client_tag",
    "merge_key",
    "principal_key",
    "recovery_client_key",
    "recovery_key",
    "signin_key",
    "token_key",
]

#: Longest client identifier accepted (an IPv6 address with a zone fits).
MAX_CLIENT_LENGTH = 255


class ThrottleKind(enum.Enum):
    """What a counter counts; the first part of its key."""

    SIGN_IN = "signin"
    MERGE = "merge"
    PRINCIPAL = "principal"
    RECOVERY = "recovery"
    RECOVERY_CLIENT = "recovery-client"
    TOKEN = "token"


def check_client(client: object) -> str | None:
    """*client* if it is None or 1 to 255 printable characters; ``invalid_input`` otherwise."""
    if client is None:
        return None
    if not isinstance(client, str):
        raise InvalidInput("client", f"must be a string or None, not {type(client).__name__}")
    if not client.strip() or len(client) > MAX_CLIENT_LENGTH or has_control_characters(client):
        raise InvalidInput("client", f"must be 1 to {MAX_CLIENT_LENGTH} printable characters")
    return client


def client_tag(client: str | None) -> str:
    """The part of a sign-in key naming the client: ``-`` for none, else a digest.

    Keys never hold the client's text (an IP address is personal data);
    the digest keeps keys short and the same client in the same bucket.
    """
    if client is None:
        return "-"
    return _digest(client)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def signin_key(login_key: str, client: str | None) -> str:
    """The counter of sign-in failures at *login_key* from *client*."""
    return f"{ThrottleKind.SIGN_IN.value}:{login_key}:{client_tag(client)}"


def merge_key(login_key: str) -> str:
    """The counter of merge-form failures aimed at *login_key*."""
    return f"{ThrottleKind.MERGE.value}:{login_key}"


def principal_key(account_id: str) -> str:
    """The counter of merge-form failures of the principal *account_id*."""
    return f"{ThrottleKind.PRINCIPAL.value}:{account_id}"


def recovery_key(identifier_key: str) -> str:
    """The counter of recovery requests for one login or address (normalised).

    The key holds a digest, never the address typed (personal data, and
    perhaps nobody's).
    """
    return f"{ThrottleKind.RECOVERY.value}:{_digest(identifier_key)}"


def recovery_client_key(client: str) -> str:
    """The counter of recovery requests from *client*."""
    return f"{ThrottleKind.RECOVERY_CLIENT.value}:{client_tag(client)}"


def token_key(client: str) -> str:
    """The counter of failed ``reset_password`` calls from *client*."""
    return f"{ThrottleKind.TOKEN.value}:{client_tag(client)}"


def _kind(key: str) -> ThrottleKind:
    prefix = key.partition(":")[0]
    try:
        return ThrottleKind(prefix)
    except ValueError:
        raise InvalidInput("key", f"unknown throttle counter {prefix!r}") from None


@attrs.frozen
class ThrottleState:
    """Failures recorded under one key.

    ``consecutive`` counts failures since the last success (or reserved
    attempts not yet given back); ``recent`` keeps the times of the last
    failures, oldest first (a store keeps at most :attr:`ThrottlePolicy.keep`
    of them).  A key never written reads as ``ThrottleState(key)``.
    """

    key: str
    consecutive: int = 0
    last_failure_at: datetime | None = None
    recent: tuple[datetime, ...] = ()


def _positive(_: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, timedelta)):
        raise InvalidInput(attribute.name, "must be an int or a timedelta")
    if (value if isinstance(value, int) else value.total_seconds()) <= 0:
        raise InvalidInput(attribute.name, "must be positive")


@attrs.frozen
class ThrottlePolicy:
    """The limits; every one can be changed by the host (see the module docstring)."""

    backoff_after: int = attrs.field(default=5, validator=_positive)
    backoff_base: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive)
    backoff_max: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)
    lock_after: int = attrs.field(default=10, validator=_positive)
    lock_for: timedelta = attrs.field(default=timedelta(hours=24), validator=_positive)
    principal_per_hour: int = attrs.field(default=10, validator=_positive)
    principal_per_day: int = attrs.field(default=30, validator=_positive)
    recovery_per_hour: int = attrs.field(default=5, validator=_positive)
    recovery_client_per_hour: int = attrs.field(default=20, validator=_positive)

    @property
    def keep(self) -> int:
        """How many recent failure times a counter needs: enough for every window."""
        return max(self.principal_per_day, self.lock_after, self.recovery_per_hour,
                   self.recovery_client_per_hour) + 1

    def backoff(self, failures: int) -> float:
        """Seconds to wait after *failures* consecutive failures (0: none yet)."""
        if failures < self.backoff_after:
            return 0.0
        # Capped before any timedelta is built: a large base never overflows.
        exponent = min(failures - self.backoff_after, 64)
        seconds = self.backoff_base.total_seconds() * math.ldexp(1.0, exponent)
        return min(seconds, self.backoff_max.total_seconds())

    def wait(self, state: ThrottleState | None, now: datetime) -> float:
        """Seconds before the next attempt under this counter may go (0: go ahead)."""
        if state is None or state.last_failure_at is None:
            return 0.0
        kind = _kind(state.key)
        if kind is ThrottleKind.PRINCIPAL:
            return self._window_wait(state, now, ((timedelta(hours=1), self.principal_per_hour),
                                                  (timedelta(days=1), self.principal_per_day)))
        if kind is ThrottleKind.RECOVERY:
            return self._window_wait(state, now, ((timedelta(hours=1), self.recovery_per_hour),))
        if kind is ThrottleKind.RECOVERY_CLIENT:
            return self._window_wait(state, now,
                                     ((timedelta(hours=1), self.recovery_client_per_hour),))
        n = state.consecutive
        if kind is ThrottleKind.MERGE and n >= self.lock_after:
            until = state.last_failure_at + self.lock_for
        else:
            delay = self.backoff(n)
            if delay <= 0:
                return 0.0
            until = state.last_failure_at + timedelta(seconds=delay)
        return max(0.0, (until - now).total_seconds())

    @staticmethod
    def _window_wait(state: ThrottleState, now: datetime,
                     windows: tuple[tuple[timedelta, int], ...]) -> float:
        wait = 0.0
        for window, limit in windows:
            inside = [t for t in state.recent if t > now - window]
            if len(inside) >= limit:
                # The attempt may go when enough old failures leave the window.
                oldest_to_leave = inside[len(inside) - limit]
                wait = max(wait, (oldest_to_leave + window - now).total_seconds())
        return max(0.0, wait)

    def count(self, state: ThrottleState | None, key: str, at: datetime) -> ThrottleState:
        """The state after one more failure (or reserved attempt) at *at*.

        This is the reference of what a store does when a
        :class:`~account_merge.ports.Fetch` counts a key: one more
        consecutive failure, ``last_failure_at`` = *at*, and *at* appended
        to ``recent``, of which the last :attr:`keep` are kept.
        """
        recent = () if state is None else state.recent
        return ThrottleState(
            key=key,
            consecutive=(0 if state is None else state.consecutive) + 1,
            last_failure_at=at,
            recent=(*recent, at)[-self.keep:],
        )

    @staticmethod
    def release(state: ThrottleState, at: datetime) -> ThrottleState:
        """Give back an attempt reserved at *at* that turned out a success."""
        recent = list(state.recent)
        if at in recent:
            recent.remove(at)
        return attrs.evolve(state, consecutive=max(0, state.consecutive - 1),
                            recent=tuple(recent))

    @staticmethod
    def cleared(key: str) -> ThrottleState:
        """The state of a counter a success starts again."""
        return ThrottleState(key=key)

    @staticmethod
    def retry_after(seconds: float) -> int:
        """Whole seconds to announce in ``too_many_attempts``."""
        return max(1, math.ceil(seconds))
