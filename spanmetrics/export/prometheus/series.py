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
    start_ns: int = 0
    """Start time of the OTLP points behind it (the earliest, when several were merged)."""
    new: bool = False
    """Whether the series is new to the sink: it must start with a 0 sample (see
    :func:`zero_sample`)."""


def zero_sample(series: Series, timestamp_ms: int) -> Series:
    """The 0 sample that a new counter or histogram series starts with.

    ``rate()`` and ``increase()`` only count increments between samples, so a series whose
    first sample already holds its first spans would hide them; Tempo writes this 0 first
    for the same reason. A histogram's 0 keeps its schema, so Prometheus reads both samples
    as one native histogram.
    """
    native = None
    if series.native is not None:
        native = NativeHistogram(
            series.native.schema, 0, 0.0, zero_threshold=series.native.zero_threshold
        )
    classic = None if series.classic is None else [(bound, 0) for bound, _ in series.classic]
    return Series(
        series.name, series.kind, series.labels, timestamp_ms, native=native, classic=classic,
        start_ns=series.start_ns,
    )  # fmt: skip
