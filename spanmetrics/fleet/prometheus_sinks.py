"""A worker's Prometheus sinks: remote write every flush, and the ``/metrics`` endpoint.

Both serve the same thing: the merged cumulative state of the shards this worker owns,
plus its own telemetry. Prometheus wants cumulative series whatever the topology's
``aggregation_temporality`` says (that one governs the OTLP output), so these sinks read
the cumulative merge the worker makes before it derives deltas.

A shard's series leave this worker's output as soon as the shard is revoked, and enter
the new owner's at its next flush; series carry no worker label, so in Prometheus the
same series simply continues.

Every new counter and histogram series starts with a 0 sample, so that ``rate()`` and
``increase()`` see its first spans. "New" means: created after everything the sink has
written of the shard. Each sink keeps, per shard, the stamp of the shard's state it last
wrote; a worker that takes a shard over starts from the stamp of the checkpoint it
restored, which no written state of the previous owner is newer than. So a series that
existed before the shard moved never gets a 0 (that would be a counter reset); a series
created in the previous owner's last unpublished flush gets none either, and its first
spans are in its first sample.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.aggregate.derived import DERIVED_UNIT
from spanmetrics.config.model import Topology
from spanmetrics.export.prometheus import (
    PrometheusConverter,
    RemoteWriteClient,
    RemoteWriteError,
    ScrapeServer,
    Series,
    encode_write_request,
    merge_series,
    zero_sample,
)
from spanmetrics.net import redact_url

log = logging.getLogger("spanmetrics.worker")


class PrometheusSinks:
    """Every ``prometheus_remote_write`` and ``prometheus`` sink of a topology."""

    def __init__(self, topology: Topology, counters: Counter[str], host: str = "0.0.0.0") -> None:
        sm = topology.spanmetrics
        self._counters = counters
        self._remote: list[tuple[PrometheusConverter, RemoteWriteClient]] = []
        self._scrape: list[tuple[PrometheusConverter, ScrapeServer]] = []
        #: Per sink, per shard: the stamp (ns) of the last state of the shard the sink
        #: wrote; series created after it are new to the sink. ``_remote_written`` in the
        #: order of ``_remote``; ``_written`` all of them.
        self._remote_written: list[dict[int, int]] = []
        self._written: list[dict[int, int]] = []
        # Derived metrics are in seconds whatever the span metrics' unit: the classic
        # bounds of their histograms must be too.
        unit = DERIVED_UNIT if topology.derive is not None else sm.histogram.unit
        for sink in topology.sinks:
            if (rw := sink.prometheus_remote_write) is not None:
                converter = PrometheusConverter(sm.namespace, unit, rw.naming, rw.histogram)
                self._remote.append((converter, RemoteWriteClient(rw.endpoint)))
                self._remote_written.append({})
            if (scrape := sink.prometheus) is not None:
                converter = PrometheusConverter(sm.namespace, unit, scrape.naming, "both")
                written: dict[int, int] = {}
                server = ScrapeServer(host, scrape.port, self._provider(converter, written))
                self._scrape.append((converter, server))
                self._written.append(written)
        self._written += self._remote_written
        #: Per owned shard: its cumulative state and the time it was stamped with (ns).
        self._shards: dict[int, tuple[list[ExportMetricsServiceRequest], int]] = {}
        self._telemetry = ExportMetricsServiceRequest()
        self._last_push_ms = 0

    @property
    def enabled(self) -> bool:
        """Whether the topology has any Prometheus sink."""
        return bool(self._remote or self._scrape)

    @property
    def scrape_ports(self) -> list[int]:
        """Ports the ``/metrics`` endpoints listen on (known after :meth:`start`)."""
        return [server.port for _, server in self._scrape]

    async def start(self) -> None:
        """Open the scrape endpoints."""
        for _, server in self._scrape:
            await server.start()
            log.info("serving /metrics on port %d", server.port)

    async def stop(self) -> None:
        """Close the scrape endpoints and the remote-write connections."""
        for _, server in self._scrape:
            await server.stop()
        for _, client in self._remote:
            await client.close()

    def set_shard(
        self,
        shard: int,
        requests: list[ExportMetricsServiceRequest],
        stamp_ns: int,
        written_before_ns: int,
    ) -> None:
        """The current cumulative state of an owned shard, and its points' time.

        Samples are written at that time, the shard's own stamp: it only ever increases,
        also from one owner to the next, so Prometheus never sees a shard's series go
        back in time when the shard moves between workers whose clocks differ.
        ``written_before_ns`` is the stamp of the checkpoint this worker took the shard
        over from: no sink holds a newer state of it (see the module docstring).
        """
        self._shards[shard] = (requests, stamp_ns)
        for written in self._written:
            written.setdefault(shard, written_before_ns)

    def drop_shard(self, shard: int) -> None:
        """Stop publishing a shard this worker no longer owns."""
        self._shards.pop(shard, None)
        for written in self._written:
            written.pop(shard, None)

    def set_telemetry(self, request: ExportMetricsServiceRequest) -> None:
        """The worker's latest self-telemetry."""
        self._telemetry = request

    def _combined(self) -> ExportMetricsServiceRequest:
        combined = ExportMetricsServiceRequest()
        for shard in sorted(self._shards):
            for request in self._shards[shard][0]:
                combined.resource_metrics.extend(request.resource_metrics)
        combined.resource_metrics.extend(self._telemetry.resource_metrics)
        return combined

    def _provider(
        self, converter: PrometheusConverter, written: dict[int, int]
    ) -> Callable[[], list[Series]]:
        def series() -> list[Series]:
            now_ms = int(time.time() * 1000)
            parts = []
            for shard in sorted(self._shards):
                requests, stamp_ns = self._shards[shard]
                converted = converter.convert(_joined(requests), now_ms, written.get(shard, 0))
                # A scrape carries one sample per series: a new one is served as 0 once,
                # and with its value from the next scrape on.
                parts.append([zero_sample(s, now_ms) if s.new else s for s in converted])
                written[shard] = stamp_ns
            parts.append(converter.convert(self._telemetry, now_ms))
            return merge_series(parts)

        return series

    async def push(self, timestamp_ms: int) -> None:
        """One remote write per sink of everything this worker publishes: each shard at
        its stamp, the worker's telemetry at ``timestamp_ms`` (made strictly increasing).

        A failure (after the client's retries) is counted and logged, never raised: the
        next flush sends the newer cumulative state, so counts stay exact and only one
        sample of resolution is lost.
        """
        if not self._remote:
            return
        now_ms = self._last_push_ms = max(timestamp_ms, self._last_push_ms + 1)
        for (converter, client), written in zip(self._remote, self._remote_written, strict=True):
            series: list[Series] = []
            for shard in sorted(self._shards):
                requests, stamp_ns = self._shards[shard]
                stamp_ms = stamp_ns // 1_000_000
                after_ns = written.get(shard, 0)
                # One conversion per shard: a resource split over several requests must
                # give one target_info, and series with the same labels are merged.
                converted = converter.convert(_joined(requests), stamp_ms, after_ns)
                # The 0 goes at the series' start, after the last sample written of the
                # shard (a series that expired and came back has older samples) and
                # before this one.
                floor_ms = after_ns // 1_000_000 + 1
                for s in converted:
                    zero_ms = max(s.start_ns // 1_000_000, floor_ms)
                    if s.new and zero_ms < stamp_ms:
                        series.append(zero_sample(s, zero_ms))
                series += converted
            series += converter.convert(self._telemetry, now_ms)
            body = encode_write_request(series, converter.histogram)
            try:
                await client.send(body)
            except RemoteWriteError as err:
                log.error("remote write to %s: %s", redact_url(client.endpoint), err)
                if err.status is None or err.status >= 500:
                    continue  # nothing was taken: the same series are still new next time
            # Taken, or refused by an answer (4xx) that a resend would get again.
            for shard, (_, stamp_ns) in self._shards.items():
                written[shard] = stamp_ns
        # The clients count requests, retries and failures by reason; the totals are
        # published with the worker's telemetry.
        totals: Counter[str] = Counter()
        for _, client in self._remote:
            totals.update(client.counters)
        for key, value in totals.items():
            self._counters[key] = value


def _joined(requests: list[ExportMetricsServiceRequest]) -> ExportMetricsServiceRequest:
    if len(requests) == 1:
        return requests[0]
    joined = ExportMetricsServiceRequest()
    for request in requests:
        joined.resource_metrics.extend(request.resource_metrics)
    return joined
