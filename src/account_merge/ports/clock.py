"""The clock port: where the service reads the time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

__all__ = ["Clock"]

#: A zero-argument callable giving the current time, timezone-aware.
Clock = Callable[[], datetime]
