"""The Kafka sinks of a topology: how a flush's metrics become records of bounded size."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanmetrics.config.model import KafkaSinkConfig, Topology
from spanmetrics.export.otlp import encode_records
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

    def records(self, request: ExportMetricsServiceRequest) -> list[OutputRecord]:
        """``request`` for every sink, split into records under the sink's
        ``producer.max_message_bytes``."""
        return [
            (i, value)
            for i, sink in self.sinks.items()
            for value in encode_records(request, sink.encoding, sink.producer.max_message_bytes)
        ]
