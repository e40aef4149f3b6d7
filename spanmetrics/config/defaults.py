"""Every default of the topology, in one place.

The config model (``model.py``) refers to these names; so do the README and the shipped
topologies, which are checked against them by the tests.
"""

from __future__ import annotations

from typing import Final

#: Input topic of the Collector's Kafka exporter for traces.
DEFAULT_SOURCE_TOPIC: Final = "otlp_spans"
#: The Kafka exporter's default encoding.
DEFAULT_ENCODING: Final = "otlp_proto"
#: Broker used when neither the topology nor the command line names one.
DEFAULT_BROKER: Final = "kafka://127.0.0.1:9092"
#: Consumer group of the fleet; also the namespace of its state in Redis.
DEFAULT_GROUP: Final = "spanmetrics"
#: Where a partition without a checkpoint starts: "earliest" loses nothing.
DEFAULT_INITIAL_OFFSET: Final = "earliest"
#: Records that cannot be decoded go here, with headers naming the error and origin.
DEFAULT_DEAD_LETTER_TOPIC: Final = "otlp_spans_dlq"
#: Durable state: memory:// keeps it in one process only.
DEFAULT_STATE_URL: Final = "memory://"
#: Output topic that the Collector's Kafka receiver reads metrics from.
DEFAULT_METRICS_TOPIC: Final = "otlp_metrics"
#: Largest record a Kafka sink sends, as the Kafka exporter's ``producer.max_message_bytes``
#: (and Kafka's default ``message.max.bytes``, about 1 MB). The fleet's internal topic
#: uses it too.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_000_000

#: Metric name prefix, as in the connector since v0.109.
DEFAULT_NAMESPACE: Final = "traces.span.metrics"
#: Unit of the duration metric.
DEFAULT_UNIT: Final = "ms"
#: Maximum buckets of the exponential histogram (the connector's and go-expohisto's default).
DEFAULT_EXPONENTIAL_MAX_SIZE: Final = 160
#: Largest max_size go-expohisto accepts.
MAXIMUM_EXPONENTIAL_MAX_SIZE: Final = 16384
#: The connector's default explicit bounds, in milliseconds.
DEFAULT_EXPLICIT_BUCKETS_MS: Final[tuple[float, ...]] = (
    2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000, 15000,
)  # fmt: skip
DEFAULT_TEMPORALITY: Final = "AGGREGATION_TEMPORALITY_CUMULATIVE"
#: Seconds between flushes (the connector's current default).
DEFAULT_FLUSH_INTERVAL_S: Final = 60.0
#: 0 disables expiry.
DEFAULT_METRICS_EXPIRATION_S: Final = 0.0
DEFAULT_SERIES_EXPIRATION_S: Final = 0.0
#: Longest span duration counted as it is (``max_span_duration``, seconds; 0 = no bound).
#: A span with a broken clock (start 0, or an end centuries away) would otherwise stretch
#: its series' exponential histogram over decades and coarsen every quantile of it.
DEFAULT_MAX_SPAN_DURATION_S: Final = 86_400.0
#: Bytes of label values one series may hold; past it, its spans go to the resource's
#: overflow series (``spans_oversized_labels``). Every series must fit a delta record.
MAX_SERIES_LABEL_BYTES: Final = 16_384
#: Bytes of a resource beyond which its non-identifying attributes are dropped
#: (``resources_trimmed``), for the same reason.
MAX_RESOURCE_BYTES: Final = 65_536
#: 0 disables the cardinality limit.
DEFAULT_CARDINALITY_LIMIT: Final = 0
DEFAULT_EXEMPLARS_ENABLED: Final = False
DEFAULT_EXEMPLARS_MAX_PER_POINT: Final = 5
DEFAULT_EVENTS_ENABLED: Final = False

#: How long a span waits for its join partner (``derive.join.window``).
DEFAULT_JOIN_WINDOW_S: Final = 30.0
#: Spans held for joins at most (``derive.join.max_pending_spans``): about 1 kB each.
DEFAULT_JOIN_MAX_PENDING_SPANS: Final = 100_000

#: Naming profile of the Prometheus sinks.
DEFAULT_PROMETHEUS_NAMING: Final = "otel"
#: How the remote-write sink writes histograms: native and classic, so that both native
#: queries and classic ``by (le)`` queries (Jaeger SPM's) read them.
DEFAULT_PROMETHEUS_HISTOGRAMS: Final = "both"
#: Scrape port of the ``prometheus`` sink.
DEFAULT_SCRAPE_PORT: Final = 9464

#: Port of a worker's /healthz and /readyz (``--health-port``, SPANMETRICS_HEALTH_PORT):
#: 0 is any free port, logged at start, so that workers on one machine never clash; the
#: Kubernetes manifests set 8080.
DEFAULT_HEALTH_PORT: Final = 0
