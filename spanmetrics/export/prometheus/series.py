"""What both Prometheus outputs render from: typed series, free of any wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Label pairs sorted by name, without ``__name__``.
Labels = tuple[tuple[str, str], ...]

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(slots=True)
class NativeHistogram:
    """A Prometheus native histogram with integer counts (positive buckets only: durations
    are never negative).

    Bucket ``i`` of schema ``s`` holds values in ``(base**(i-1), base**i]`` with
    ``base = 2**(2**-s)``; it is OpenTelemetry's bucket ``i - 1`` at scale ``s``.
    """

    schema: int
    count: int
    sum: float
    zero_count: int = 0
    zero_threshold: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)
    #: Some counts were placed by their bucket's upper bound (an OpenTelemetry scale below
    #: -4, coarser than any Prometheus schema).
    approximate: bool = False


@dataclass(frozen=True, slots=True)
class PromExemplar:
    """An exemplar: a trace that is an example of a histogram observation."""

    labels: Labels
    value: float
    timestamp_ms: int


@dataclass(slots=True)
class Series:
    """One Prometheus series (a histogram counts as one, with its buckets inside).

    ``classic`` holds cumulative ``(upper bound, count)`` pairs, ``+Inf`` last; every
    histogram has them, since the text format can only carry classic buckets.
    """

    name: str
    kind: Kind
    labels: Labels
    timestamp_ms: int
    value: float = 0.0
    native: NativeHistogram | None = None
    classic: list[tuple[float, int]] | None = None
    count: int = 0
    sum: float = 0.0
    exemplars: list[PromExemplar] = field(default_factory=list)
