"""Per-service RED summary read from a snapshot: merges each service's histograms.

This is the fleet-wide question in miniature: the p95 of a service is read from the merge
of all its series' exponential histograms, never from an average of per-series p95s.
"""

from __future__ import annotations

from dataclasses import dataclass

from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import MetricsSnapshot
from spanmetrics.model.enums import STATUS_CODE_ERROR, STATUS_CODE_NAMES

_ERROR = STATUS_CODE_NAMES[STATUS_CODE_ERROR]


@dataclass(slots=True)
class ServiceSummary:
    """Calls, errors and the merged duration histogram of one service."""

    service: str
    calls: int = 0
    errors: int = 0
    duration: ExpoHistogram | None = None

    @property
    def error_ratio(self) -> float:
        """Errors over calls (0 when there were no calls)."""
        return self.errors / self.calls if self.calls else 0.0

    def quantile(self, q: float) -> float | None:
        """Quantile of the merged histogram, or None without exponential durations."""
        if self.duration is None or self.duration.count == 0:
            return None
        return self.duration.quantile(q)


def summarize_services(snapshot: MetricsSnapshot) -> list[ServiceSummary]:
    """One summary per ``service.name``, busiest first."""
    by_service: dict[str, ServiceSummary] = {}
    for resource in snapshot.resources:
        for series in resource.series:
            labels = dict(series.attributes)
            name = labels.get("service.name", "(overflow)")
            summary = by_service.setdefault(name, ServiceSummary(name))
            summary.calls += series.calls
            if labels.get("status.code") == _ERROR:
                summary.errors += series.calls
            if isinstance(series.duration, ExpoHistogram):
                summary.duration = (
                    series.duration.copy()
                    if summary.duration is None
                    else summary.duration.merged(series.duration)
                )
    return sorted(by_service.values(), key=lambda s: (-s.calls, s.service))
