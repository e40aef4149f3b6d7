"""Where series come from: per metric and service, the active series and the label that
drives their number (pure; ``spanmetrics cardinality`` feeds it the fleet's state)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from spanmetrics.aggregate.dimensions import is_overflow
from spanmetrics.aggregate.points import Attributes, metric_of

#: Labels every span-metrics series has; they are not candidates to leave out.
INTRINSIC = frozenset({"service.name", "span.name", "span.kind", "status.code",
                       "otel.status_code"})  # fmt: skip


@dataclass
class Usage:
    """The series of one metric and service."""

    metric: str
    service: str
    series: int = 0
    overflow: int = 0
    """Overflow series (``otel.metric.overflow=true``)."""
    values: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Distinct values per label."""
    _labels: list[Attributes] = field(default_factory=list)

    def driver(self) -> tuple[str, int] | None:
        """The label with the most distinct values, and how many (None without labels)."""
        candidates = {k: len(v) for k, v in self.values.items() if k not in INTRINSIC}
        if not candidates:
            return None
        key = max(sorted(candidates), key=lambda k: candidates[k])
        return key, candidates[key]

    def series_with_only(self, key: str) -> int:
        """Series there would be with ``key`` as the only configured dimension."""
        return len({
            tuple((k, v) for k, v in labels if k in INTRINSIC or k == key)
            for labels in self._labels
        })  # fmt: skip

    def series_without(self, key: str) -> int:
        """Series there would be without ``key``."""
        return len({tuple((k, v) for k, v in labels if k != key) for labels in self._labels})


def usage(series: Iterable[tuple[str, Attributes]], span_metrics: str) -> list[Usage]:
    """Per metric and service, from ``(service, labels)`` of every series, most first.

    Series without ``__name__`` are the span metrics (one series feeds calls and
    duration), reported as ``span_metrics``.
    """
    out: dict[tuple[str, str], Usage] = {}
    for service, stored in series:
        metric = metric_of(stored)
        labels = stored[1:] if metric is not None else stored
        name = metric or span_metrics
        entry = out.get((name, service))
        if entry is None:
            entry = out[(name, service)] = Usage(name, service)
        entry.series += 1
        if is_overflow(labels):
            entry.overflow += 1
            continue
        entry._labels.append(labels)
        for key, value in labels:
            entry.values[key].add(value)
    return sorted(out.values(), key=lambda u: (-u.series, u.metric, u.service))
