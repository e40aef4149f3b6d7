"""The live view of make run: increments per published flush, steady rates over whole
flushes, totals that add up to what was counted."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import MetricNames, MetricsSnapshot, ResourcePoints, SeriesPoint
from spanmetrics.dev.live import FleetView, render
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.model.enums import Temporality
from tests.builders import attrs

NAMES = MetricNames.for_namespace("traces.span.metrics", "ms")
S = 10**9
LABELS = (
    ("service.name", "checkout"),
    ("span.name", "GET"),
    ("span.kind", "SPAN_KIND_SERVER"),
    ("status.code", "STATUS_CODE_UNSET"),
)


def record(
    points: list[tuple[int, int, int]], temporality: Temporality = Temporality.CUMULATIVE
) -> bytes:
    """One output record with one series' points: (start, time, calls)."""
    resource = ResourcePoints(
        ExportMetricsServiceRequest().resource_metrics.add().resource,
    )
    resource.resource.attributes.extend(attrs({"service.name": "checkout"}))
    for start, end, calls in points:
        hist = ExpoHistogram.from_values([5.0] * calls)
        resource.series.append(SeriesPoint(LABELS, start, end, calls, hist))
    snapshot = MetricsSnapshot(NAMES, temporality, 0, [resource])
    return snapshot_to_request(snapshot).SerializeToString()


def test_rates_cover_whole_flushes_and_stay_put_between_them() -> None:
    view = FleetView(NAMES, window_s=10)
    for second in range(1, 31):  # a flush every second, 100 calls each
        view.add_record(b"shard-0", record([(0, second * S, 100 * second)]))
    window, seconds = view.window()
    assert seconds == 10 and window[0].calls / seconds == 100
    for _ in range(5):  # no new flush: the same numbers, never 0
        again, seconds_again = view.window()
        assert (again[0].calls, seconds_again) == (window[0].calls, seconds)
    assert "100" in render(view)
    assert view.total_calls == 3000


def test_totals_add_increments_through_resets_duplicates_and_stale_points() -> None:
    view = FleetView(NAMES)
    view.add_record(b"shard-0", record([(0, 1 * S, 10)]))
    view.add_record(b"shard-0", record([(0, 2 * S, 25)]))
    view.add_record(b"shard-0", record([(0, 2 * S, 25)]))  # sent again
    view.add_record(b"shard-0", record([(0, 1 * S, 10)]))  # a late, older point
    view.add_record(b"shard-0", record([(3 * S, 4 * S, 7)]))  # a new stream (expired, back)
    assert view.total_calls == 25 + 7


def test_delta_points_count_once() -> None:
    view = FleetView(NAMES)
    for start, end in [(0, 1), (1, 2), (1, 2), (2, 3)]:
        view.add_record(b"shard-0", record([(start * S, end * S, 4)], Temporality.DELTA))
    assert view.total_calls == 12


def test_each_worker_shows_the_views_version_it_runs() -> None:
    from spanmetrics.fleet.telemetry import telemetry_request

    view = FleetView(NAMES)
    telemetry = telemetry_request("w1", {"spans_received": 5}, {"views_version": 3.0}, {}, 0, 1)
    view.add_record(b"worker-w1", telemetry.SerializeToString())
    assert "views v3" in render(view)
