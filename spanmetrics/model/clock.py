"""The injected clock. Only :class:`SystemClock` reads wall time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of the current time in Unix nanoseconds."""

    def now_ns(self) -> int:
        """Current time in nanoseconds since the Unix epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ns(self) -> int:
        """Current wall time in Unix nanoseconds."""
        return time.time_ns()


class FakeClock:
    """A clock that moves only when told to; for tests and replays."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now_ns = start_ns

    def now_ns(self) -> int:
        """The time set so far."""
        return self._now_ns

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._now_ns += round(seconds * 1e9)
