"""Per-metric labels: the calls and duration points of series kept by all their labels.

With ``calls_dimensions`` or ``histogram.dimensions`` the two metrics carry different
labels. A series is kept by the union of them (one key, one lifecycle, one limit), and
each metric's points are summed here over the labels that metric does not carry. The sum
is exact: calls add, histograms merge. A summed point starts at the earliest start of the
series in it.
"""

from __future__ import annotations

from spanmetrics.aggregate.cumulative import Histogram, latest_exemplars, merge_histograms
from spanmetrics.aggregate.points import (
    Attributes,
    Exemplar,
    LabelSplit,
    ResourcePoints,
    SeriesPoint,
    metric_of,
)


def project(rp: ResourcePoints, split: LabelSplit) -> ResourcePoints:
    """``rp`` with calls points and duration points summed to each metric's labels (``rp``
    itself when both metrics carry the same labels)."""
    if not split.splits or not rp.series:
        return rp
    calls: dict[Attributes, list[int]] = {}
    durations: dict[Attributes, tuple[int, int, Histogram | None, tuple[Exemplar, ...]]] = {}
    named: list[SeriesPoint] = []
    for p in rp.series:
        if metric_of(p.attributes) is not None:
            named.append(p)  # a view's or a derived stream: its labels are already its own
            continue
        labels = split.calls_labels(p.attributes)
        c = calls.get(labels)
        if c is None:
            calls[labels] = [p.start_time_unix_nano, p.time_unix_nano, p.calls]
        else:
            c[0] = min(c[0], p.start_time_unix_nano)
            c[2] += p.calls
        if p.duration is None:
            continue
        labels = split.duration_labels(p.attributes)
        d = durations.get(labels)
        if d is None:
            durations[labels] = (p.start_time_unix_nano, p.time_unix_nano, p.duration, p.exemplars)
        else:
            keep = max(len(d[3]), len(p.exemplars))
            durations[labels] = (
                min(d[0], p.start_time_unix_nano),
                d[1],
                merge_histograms(d[2], p.duration),
                latest_exemplars(d[3], p.exemplars, keep),
            )
    series = named + [
        SeriesPoint(labels, start, end, count, None, (), "calls")
        for labels, (start, end, count) in calls.items()
    ]
    series += [
        SeriesPoint(labels, start, end, 0, hist, exemplars, "duration")
        for labels, (start, end, hist, exemplars) in durations.items()
    ]
    return ResourcePoints(rp.resource, series, rp.events)
