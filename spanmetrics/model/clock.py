"""The injected clock. Only :class:`SystemClock` reads wall time; tests use
``tests.clock.FakeClock``."""

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
