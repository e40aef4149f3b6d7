"""Per-service RED summary read from a snapshot: merges each service's histograms.

This is the fleet-wide question in miniature: the p95 of a service is read from the merge
of all its series' exponential histograms, never from an average of per-series p95s.
"""

from __future__ import annotations

import math
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


def format_duration(value: float | None, unit: str) -> str:
    """A duration in ``unit`` for a table: ``12.3ms`` or ``4.5s``; ``-`` when unknown."""
    if value is None or math.isnan(value):
        return "-"
    ms = value if unit == "ms" else value * 1e3
    return f"{ms:,.1f}ms" if ms < 10_000 else f"{ms / 1e3:,.1f}s"


def service_table_header(calls_title: str = "calls") -> str:
    """Header of the per-service table shown by ``demo`` and the live view."""
    return f"{'service':<22}{calls_title:>10}{'error %':>9}{'p50':>11}{'p95':>11}{'p99':>11}"


def service_table_row(summary: ServiceSummary, unit: str, calls: float) -> str:
    """One service: ``calls`` (a count or a rate), error %, and p50/p95/p99."""
    quantiles = "".join(
        f"{format_duration(summary.quantile(q), unit):>11}" for q in (0.5, 0.95, 0.99)
    )
    return f"{summary.service:<22}{calls:>10,.0f}{summary.error_ratio * 100:>8.2f}%{quantiles}"


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
