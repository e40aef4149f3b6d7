"""The live view of ``make run``: what the fleet publishes, read as any consumer reads it.

It reads the metrics topic. Every point of a series is turned into the increment since
that series' previous point (a cumulative point minus the previous one of the same
stream; a delta point as it is), filed under the point's time, that is the flush that
published it. Rates, error ratios and p50/p95/p99 are those of the increments published
in the last ``window_s`` seconds of flushes, from the merged exponential histograms:
between two published flushes nothing moves, so the numbers stay steady. The calls total
is the sum of every increment, which is what the workers counted.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from spanmetrics.aggregate.cumulative import Histogram, subtract_histograms
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.points import Attributes, MetricNames, SeriesPoint
from spanmetrics.aggregate.summary import (
    ServiceSummary,
    service_table_header,
    service_table_row,
)
from spanmetrics.decode import DecodeError, decode_metrics
from spanmetrics.export.otlp import request_to_snapshot
from spanmetrics.fleet.telemetry import PREFIX
from spanmetrics.model.enums import STATUS_CODE_ERROR, STATUS_CODE_NAMES, Temporality

_ERROR = STATUS_CODE_NAMES[STATUS_CODE_ERROR]
#: A series in the output: its resource's attributes and its own.
_StreamKey = tuple[tuple[tuple[str, str], ...], Attributes]
#: Streams with no point for this long are forgotten (they expired, or their shard moved
#: and they continue under the same key anyway).
_FORGET_NS = 600 * 10**9


@dataclass(slots=True)
class _Stream:
    start_ns: int
    time_ns: int
    calls: int
    duration: Histogram | None


@dataclass(slots=True)
class FleetView:
    """What the view knows: increments per flush time, and worker telemetry."""

    names: MetricNames
    max_size: int = 160
    window_s: float = 10.0
    streams: dict[_StreamKey, _Stream] = field(default_factory=dict)
    #: Increments per service, by the time of the flush that published them.
    steps: dict[int, dict[str, ServiceSummary]] = field(default_factory=dict)
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    total_calls: int = 0
    _seen_deltas: set[tuple[_StreamKey, int, int]] = field(default_factory=set)

    def add_record(self, key: bytes | None, value: bytes, encoding: str = "otlp_proto") -> None:
        """Take one record of the metrics topic."""
        try:
            request = decode_metrics(value, encoding)  # type: ignore[arg-type]
        except DecodeError:
            return
        if key and key.startswith(b"worker-"):
            readings: dict[str, float] = {}
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        name = m.name.removeprefix(PREFIX)
                        points = m.sum.data_points if m.HasField("sum") else m.gauge.data_points
                        total = sum(p.as_int or p.as_double for p in points)
                        readings[name] = readings.get(name, 0.0) + total
            self.workers[key.decode()[7:]] = readings
            return
        snapshot = request_to_snapshot(request, self.names, self.max_size)
        delta = snapshot.temporality is Temporality.DELTA
        for rp in snapshot.resources:
            resource = tuple(
                sorted((kv.key, kv.value.string_value) for kv in rp.resource.attributes)
            )
            for point in rp.series:
                self._add(resource, point, delta)

    def _add(self, resource: tuple[tuple[str, str], ...], point: SeriesPoint, delta: bool) -> None:
        key = (resource, point.attributes)
        calls, duration = point.calls, point.duration
        if delta:
            seen = (key, point.start_time_unix_nano, point.time_unix_nano)
            if seen in self._seen_deltas:
                return  # a record sent again
            self._seen_deltas.add(seen)
        else:
            previous = self.streams.get(key)
            same_stream = previous is not None and previous.start_ns == point.start_time_unix_nano
            if previous is not None and same_stream:
                if point.time_unix_nano <= previous.time_ns:
                    return  # older than what was read already
                calls -= previous.calls
                if duration is not None and previous.duration is not None:
                    duration = subtract_histograms(duration, previous.duration)
            self.streams[key] = _Stream(
                point.start_time_unix_nano, point.time_unix_nano, point.calls, point.duration
            )
        if calls <= 0:
            return
        self.total_calls += calls
        labels = dict(point.attributes)
        service = labels.get("service.name", "(overflow)")
        summary = self.steps.setdefault(point.time_unix_nano, {}).setdefault(
            service, ServiceSummary(service)
        )
        summary.calls += calls
        if labels.get("status.code") == _ERROR:
            summary.errors += calls
        if isinstance(duration, ExpoHistogram):
            summary.duration = (
                duration.copy() if summary.duration is None else summary.duration.merged(duration)
            )

    def window(self) -> tuple[list[ServiceSummary], float]:
        """Per service, what was published in the last window, and the window's seconds.

        The window runs between two published flush times, so it holds whole flush
        intervals; None of it is known before two flushes were read.
        """
        times = sorted(self.steps)
        if len(times) < 2:
            return [], 0.0
        end = times[-1]
        earlier = [t for t in times if t <= end - self.window_s * 1e9]
        begin = earlier[-1] if earlier else times[0]
        merged: dict[str, ServiceSummary] = {}
        for t in times:
            if begin < t <= end:
                for service, step in self.steps[t].items():
                    into = merged.setdefault(service, ServiceSummary(service))
                    into.calls += step.calls
                    into.errors += step.errors
                    if step.duration is not None:
                        into.duration = (
                            step.duration.copy()
                            if into.duration is None
                            else into.duration.merged(step.duration)
                        )
        self._prune(begin)
        ordered = sorted(merged.values(), key=lambda s: (-s.calls, s.service))
        return ordered, (end - begin) / 1e9

    def active_series(self) -> int:
        """Series published in the last window."""
        if not self.steps:
            return 0
        since = max(self.steps) - self.window_s * 1e9
        return sum(1 for s in self.streams.values() if s.time_ns > since)

    def _prune(self, begin: int) -> None:
        for t in [t for t in self.steps if t < begin]:
            del self.steps[t]
        horizon = begin - _FORGET_NS
        for key in [k for k, s in self.streams.items() if s.time_ns < horizon]:
            del self.streams[key]
        if len(self._seen_deltas) > 1_000_000:
            self._seen_deltas = {s for s in self._seen_deltas if s[2] >= begin}


def render(view: FleetView, status: str = "", top: int = 10) -> str:
    """The screen as text."""
    window, seconds = view.window()
    unit = view.names.unit
    rate = sum(s.calls for s in window) / seconds if seconds else 0.0
    lines = [
        f"spanmetrics live  {time.strftime('%H:%M:%S')}   (Ctrl-C to stop)",
        "",
        f"spans/s {rate:>12,.0f}    calls total {view.total_calls:>14,}    "
        f"series {view.active_series():>8,}",
    ]
    for worker, readings in sorted(view.workers.items()):
        lines.append(
            f"worker {worker:<16} received {int(readings.get('spans_received', 0)):>12,}  "
            f"partitions {int(readings.get('partitions_owned', 0))}  "
            f"shards {int(readings.get('shards_owned', 0))}  "
            f"lag {int(readings.get('consumer_lag', 0)):,}  "
            f"flush {readings.get('flush_duration_seconds', 0.0) * 1e3:.0f}ms  "
            f"views v{int(readings.get('views_version', 0))}"
        )
    if status:
        lines += ["", status]
    title = f"last {seconds:.0f}s" if seconds else "waiting for two flushes"
    lines += ["", service_table_header("calls/s") + f"   ({title})"]
    lines += [service_table_row(s, unit, s.calls / seconds) for s in window[:top]]
    return "\n".join(lines)


async def run_live(
    bootstrap: str,
    topic: str,
    names: MetricNames,
    stop: asyncio.Event,
    refresh_s: float = 2.0,
    out: TextIO = sys.stdout,
    status: Callable[[], str] = lambda: "",
) -> None:
    """Consume the metrics topic and redraw every ``refresh_s`` until ``stop``; ``status``
    gives a line to show (what the supervisor of the processes says)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    view = FleetView(names)
    try:
        while not stop.is_set():
            deadline = time.monotonic() + refresh_s
            while time.monotonic() < deadline and not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        view.add_record(record.key, record.value)
            out.write("\x1b[2J\x1b[H" + render(view, status()) + "\n")
            out.flush()
    finally:
        await consumer.stop()
