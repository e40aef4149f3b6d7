"""The Kafka sinks of a topology: how a flush's metrics become records of bounded size."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.aggregate.points import MetricsSnapshot
from spanmetrics.config.defaults import DEFAULT_MAX_MESSAGE_BYTES
from spanmetrics.config.model import KafkaSinkConfig, Topology
from spanmetrics.export.otlp import encode_records, snapshot_to_requests
from spanmetrics.state.codec import OutputRecord


class KafkaOutput:
    """Every ``kafka`` sink of a topology, by its index in ``sinks``."""

    def __init__(self, topology: Topology) -> None:
        self.sinks: dict[int, KafkaSinkConfig] = {
            i: sink.kafka for i, sink in enumerate(topology.sinks) if sink.kafka is not None
        }

    @property
    def enabled(self) -> bool:
        """Whether the topology has a Kafka sink."""
        return bool(self.sinks)

    @property
    def max_message_bytes(self) -> int:
        """The largest record any sink takes (for the producer's request limit)."""
        return max((s.producer.max_message_bytes for s in self.sinks.values()), default=0)

    def topic(self, sink: int) -> str:
        """Topic of the sink at index ``sink``."""
        return self.sinks[sink].topic

    def requests(self, snapshot: MetricsSnapshot) -> list[ExportMetricsServiceRequest]:
        """``snapshot`` as OTLP requests that each fit in a record of every sink."""
        limit = min(
            (s.producer.max_message_bytes for s in self.sinks.values()),
            default=DEFAULT_MAX_MESSAGE_BYTES,
        )
        return snapshot_to_requests(snapshot, limit)

    def records(self, requests: list[ExportMetricsServiceRequest]) -> list[OutputRecord]:
        """``requests`` for every sink, as records under the sink's
        ``producer.max_message_bytes`` (an OTLP/JSON request larger than that is split
        further)."""
        out: list[OutputRecord] = []
        for i, sink in self.sinks.items():
            limit = sink.producer.max_message_bytes
            for request in requests:
                if sink.encoding == "otlp_proto":
                    out.append((i, request.SerializeToString()))
                else:
                    out += [(i, v) for v in encode_records(request, sink.encoding, limit)]
        return out
