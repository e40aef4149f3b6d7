"""A live terminal view of what the fleet publishes: spans/s, series, top services.

It reads the metrics topic like any consumer would. Each record holds the cumulative
series of one shard, so the view keeps the latest record per shard, merges them, and
reads rates and quantiles from the difference between two refreshes: p50/p95/p99 are
those of the last window, from the merged exponential histograms.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from spanmetrics.aggregate.cumulative import CumulativeShard
from spanmetrics.aggregate.points import MetricNames
from spanmetrics.aggregate.summary import (
    ServiceSummary,
    service_table_header,
    service_table_row,
    summarize_services,
)
from spanmetrics.decode import DecodeError, decode_metrics
from spanmetrics.fleet.telemetry import PREFIX


@dataclass(slots=True)
class FleetView:
    """What the view knows: the latest state of every shard, and worker telemetry."""

    names: MetricNames
    max_size: int = 160
    shards: dict[bytes, CumulativeShard] = field(default_factory=dict)
    workers: dict[str, dict[str, float]] = field(default_factory=dict)

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
        self.shards[key or b""] = CumulativeShard.decode(
            request.SerializeToString(), self.names, self.max_size
        )

    def merged(self) -> CumulativeShard:
        """All shards as one state."""
        merged = CumulativeShard()
        for shard in self.shards.values():
            merged.merge(shard)
        return merged


def render(
    view: FleetView,
    window: list[ServiceSummary],
    window_s: float,
    total_calls: int,
    series: int,
    top: int = 10,
) -> str:
    """The screen as text; ``window`` holds the calls of the last ``window_s`` seconds."""
    unit = view.names.unit
    window_s = max(window_s, 1e-9)
    rate = sum(s.calls for s in window) / window_s
    lines = [
        f"spanmetrics live  {time.strftime('%H:%M:%S')}   (Ctrl-C to stop)",
        "",
        f"spans/s {rate:>12,.0f}    calls total {total_calls:>14,}    series {series:>8,}",
    ]
    for worker, readings in sorted(view.workers.items()):
        lines.append(
            f"worker {worker:<16} received {int(readings.get('spans_received', 0)):>12,}  "
            f"partitions {int(readings.get('partitions_owned', 0))}  "
            f"lag {int(readings.get('consumer_lag', 0)):,}  "
            f"flush {readings.get('flush_duration_seconds', 0.0) * 1e3:.0f}ms"
        )
    lines += ["", service_table_header("calls/s") + "   (last window)"]
    lines += [service_table_row(s, unit, s.calls / window_s) for s in window[:top]]
    return "\n".join(lines)


async def run_live(
    bootstrap: str,
    topic: str,
    names: MetricNames,
    stop: asyncio.Event,
    refresh_s: float = 2.0,
    out: TextIO = sys.stdout,
) -> None:
    """Consume the metrics topic and redraw every ``refresh_s`` until ``stop``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    view = FleetView(names)
    previous = CumulativeShard()
    previous_time = time.monotonic()
    sent: dict[Any, int] = {}
    try:
        while not stop.is_set():
            deadline = time.monotonic() + refresh_s
            while time.monotonic() < deadline and not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        view.add_record(record.key, record.value)
            now = time.monotonic()
            merged = view.merged()
            window = summarize_services(merged.delta_since(previous, sent, names, time.time_ns()))
            total = sum(s.calls for s in merged.series.values())
            screen = render(view, window, now - previous_time, total, len(merged))
            out.write("\x1b[2J\x1b[H" + screen + "\n")
            out.flush()
            previous, previous_time = merged, now
    finally:
        await consumer.stop()
