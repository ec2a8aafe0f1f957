"""Throttling of failed attempts, as pure functions over a stored state.

The merge form lets a logged-in parent try someone else's login and
password, and provisional passwords carry only about 40 bits, so failures
are counted in storage (shared by every worker) and attempts slowed down:

- per target login, whether it exists or not, in one counter for every
  form that checks its password (merge, activation, sign-in, change of
  password): after ``backoff_after`` consecutive failures each further
  attempt waits twice as long as the one before (at most
  ``backoff_max``); after ``lock_after`` failures, merging with that login
  is locked for ``lock_for`` (the owner's own sign-in is only slowed,
  never locked, so nobody can lock a parent out); the owner's successful
  sign-in starts the count again;
- per principal: at most ``principal_per_hour`` failures in any hour and
  ``principal_per_day`` in any day.

An attempt is counted *before* its password is checked (the service
reserves it in one transaction), so concurrent attempts cannot run more
verifications than the limits allow; a success gives the reservation back.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import attrs

from account_merge.exceptions import InvalidInput

__all__ = ["ThrottlePolicy", "ThrottleState"]


@attrs.frozen
class ThrottleState:
    """Failures recorded under one key (``login:<login key>`` or ``principal:<account id>``).

    ``recent`` keeps the times of the failures still inside the longest
    window (bounded by the per-day limit), oldest first.
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
    """The limits; every one can be changed by the host."""

    backoff_after: int = attrs.field(default=5, validator=_positive)
    backoff_base: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive)
    backoff_max: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)
    lock_after: int = attrs.field(default=10, validator=_positive)
    lock_for: timedelta = attrs.field(default=timedelta(hours=24), validator=_positive)
    principal_per_hour: int = attrs.field(default=10, validator=_positive)
    principal_per_day: int = attrs.field(default=30, validator=_positive)

    def login_wait(self, state: ThrottleState | None, now: datetime, *, lock: bool) -> float:
        """Seconds to wait before the next attempt at a login (0: go ahead)."""
        if state is None or state.last_failure_at is None:
            return 0.0
        n = state.consecutive
        if lock and n >= self.lock_after:
            until = state.last_failure_at + self.lock_for
        elif n >= self.backoff_after:
            exponent = min(n - self.backoff_after, 40)
            delay = min(self.backoff_base * (2**exponent), self.backoff_max)
            until = state.last_failure_at + delay
        else:
            return 0.0
        return max(0.0, (until - now).total_seconds())

    def principal_wait(self, state: ThrottleState | None, now: datetime) -> float:
        """Seconds before a principal may fail again (0: go ahead)."""
        if state is None:
            return 0.0
        wait = 0.0
        for window, limit in ((timedelta(hours=1), self.principal_per_hour),
                              (timedelta(days=1), self.principal_per_day)):
            inside = [t for t in state.recent if t > now - window]
            if len(inside) >= limit:
                # The attempt may go when enough old failures leave the window.
                oldest_to_leave = inside[len(inside) - limit]
                wait = max(wait, (oldest_to_leave + window - now).total_seconds())
        return max(0.0, wait)

    def record_failure(self, state: ThrottleState | None, key: str, now: datetime) -> ThrottleState:
        """The state after one more failure (or reserved attempt) at *now*."""
        recent = () if state is None else state.recent
        keep = tuple(t for t in recent if t > now - timedelta(days=1))
        keep = ((*keep, now))[-max(self.principal_per_day, self.lock_after):]
        return ThrottleState(
            key=key,
            consecutive=(0 if state is None else state.consecutive) + 1,
            last_failure_at=now,
            recent=keep,
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
    def retry_after(seconds: float) -> int:
        """Whole seconds to announce in ``too_many_attempts``."""
        return max(1, math.ceil(seconds))
