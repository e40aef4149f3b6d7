"""A worker's Prometheus sinks: remote write every flush, and the ``/metrics`` endpoint.

Both serve the same thing: the merged cumulative state of the shards this worker owns,
plus its own telemetry. Prometheus wants cumulative series whatever the topology's
``aggregation_temporality`` says (that one governs the OTLP output), so these sinks read
the cumulative merge the worker makes before it derives deltas.

A shard's series leave this worker's output as soon as the shard is revoked, and enter
the new owner's at its next flush; series carry no worker label, so in Prometheus the
same series simply continues.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.config.model import Topology
from spanmetrics.export.prometheus import (
    PrometheusConverter,
    RemoteWriteClient,
    RemoteWriteError,
    ScrapeServer,
    Series,
    encode_write_request,
)

log = logging.getLogger("spanmetrics.worker")


class PrometheusSinks:
    """Every ``prometheus_remote_write`` and ``prometheus`` sink of a topology."""

    def __init__(self, topology: Topology, counters: Counter[str], host: str = "0.0.0.0") -> None:
        sm = topology.spanmetrics
        self._counters = counters
        self._remote: list[tuple[PrometheusConverter, RemoteWriteClient]] = []
        self._scrape: list[tuple[PrometheusConverter, ScrapeServer]] = []
        for sink in topology.sinks:
            if (rw := sink.prometheus_remote_write) is not None:
                converter = PrometheusConverter(
                    sm.namespace, sm.histogram.unit, rw.naming, rw.histogram
                )
                self._remote.append((converter, RemoteWriteClient(rw.endpoint)))
            if (scrape := sink.prometheus) is not None:
                converter = PrometheusConverter(
                    sm.namespace, sm.histogram.unit, scrape.naming, "native"
                )
                server = ScrapeServer(host, scrape.port, self._provider(converter))
                self._scrape.append((converter, server))
        #: Per owned shard: its cumulative state and the time it was stamped with (ms).
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
        self, shard: int, requests: list[ExportMetricsServiceRequest], stamp_ms: int
    ) -> None:
        """The current cumulative state of an owned shard, and its points' time.

        Samples are written at that time, the shard's own stamp: it only ever increases,
        also from one owner to the next, so Prometheus never sees a shard's series go
        back in time when the shard moves between workers whose clocks differ.
        """
        self._shards[shard] = (requests, stamp_ms)

    def drop_shard(self, shard: int) -> None:
        """Stop publishing a shard this worker no longer owns."""
        self._shards.pop(shard, None)

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

    def _provider(self, converter: PrometheusConverter) -> Callable[[], list[Series]]:
        def series() -> list[Series]:
            return converter.convert(self._combined(), int(time.time() * 1000))

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
        for converter, client in self._remote:
            series: list[Series] = []
            for shard in sorted(self._shards):
                requests, stamp_ms = self._shards[shard]
                # One conversion per shard: a resource split over several requests must
                # give one target_info, and series with the same labels are merged.
                whole = requests[0] if len(requests) == 1 else _joined(requests)
                series += converter.convert(whole, stamp_ms)
            series += converter.convert(self._telemetry, now_ms)
            body = encode_write_request(series, native_histograms=converter.histogram == "native")
            try:
                await client.send(body)
            except RemoteWriteError as err:
                log.error("remote write to %s: %s", client.endpoint, err)
        # The clients count requests, retries and failures by reason; the totals are
        # published with the worker's telemetry.
        totals: Counter[str] = Counter()
        for _, client in self._remote:
            totals.update(client.counters)
        for key, value in totals.items():
            self._counters[key] = value


def _joined(requests: list[ExportMetricsServiceRequest]) -> ExportMetricsServiceRequest:
    joined = ExportMetricsServiceRequest()
    for request in requests:
        joined.resource_metrics.extend(request.resource_metrics)
    return joined
