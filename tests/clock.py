"""A test double for :class:`spanmetrics.model.clock.Clock`."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when told to; for tests, the simulation and benchmarks."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now_ns = start_ns

    def now_ns(self) -> int:
        """The time set so far."""
        return self._now_ns

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._now_ns += round(seconds * 1e9)
