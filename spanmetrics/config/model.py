"""The topology model: ``source``, ``spanmetrics`` (the connector's keys) and ``sinks``.

Models are frozen and reject unknown keys, so a typo fails at load with its key path.
Defaults come from :mod:`spanmetrics.config.defaults`.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from spanmetrics.config import defaults
from spanmetrics.config.durations import parse_duration, parse_duration_s

#: Record encodings of the Collector's Kafka exporter that we read and write.
Encoding = Literal["otlp_proto", "otlp_json"]
#: Temporalities, spelled as the connector spells them.
TemporalityName = Literal["AGGREGATION_TEMPORALITY_CUMULATIVE", "AGGREGATION_TEMPORALITY_DELTA"]

#: A duration in seconds, written as a Go duration string ("60s") or a number of seconds.
DurationSeconds = Annotated[float, BeforeValidator(parse_duration_s)]

#: Dimension names the engine sets itself; configuring one of them would be ambiguous.
INTRINSIC_DIMENSIONS = ("service.name", "span.name", "span.kind", "status.code")
#: Intrinsic dimensions that ``exclude_dimensions`` may drop (a series needs its service).
EXCLUDABLE_DIMENSIONS = ("span.name", "span.kind", "status.code")


class _Strict(BaseModel):
    """Base: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    """One extra dimension, looked up in span attributes first, then resource attributes."""

    name: str = Field(min_length=1)
    """Attribute key, also the label name on the output."""
    default: str | None = None
    """Value used when neither the span nor its resource has the attribute. When unset,
    such a series simply has no label of that name."""


class ExponentialHistogramConfig(_Strict):
    """Base-2 exponential histogram (our default)."""

    max_size: int = Field(
        default=defaults.DEFAULT_EXPONENTIAL_MAX_SIZE,
        ge=2,
        le=defaults.MAXIMUM_EXPONENTIAL_MAX_SIZE,
    )
    """Maximum number of positive buckets. More buckets keep a finer scale for wide ranges."""


def _bucket_ms(value: object) -> object:
    """Explicit bounds may be durations ("100ms", "1s") or plain numbers in milliseconds."""
    if isinstance(value, str):
        return float(parse_duration(value) * 1000)
    return value


class ExplicitHistogramConfig(_Strict):
    """Classic histogram with fixed bounds, as the connector's default."""

    buckets: tuple[Annotated[float, BeforeValidator(_bucket_ms)], ...] = (
        defaults.DEFAULT_EXPLICIT_BUCKETS_MS
    )
    """Upper bounds, strictly increasing: durations ("100ms", "2s") or numbers of ms."""

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets:
            raise ValueError("at least one bucket bound is needed")
        if any(b <= a for a, b in itertools.pairwise(buckets)):
            raise ValueError(f"bounds must be strictly increasing, got {list(buckets)}")
        return buckets


class HistogramConfig(_Strict):
    """The duration metric. Give ``exponential`` or ``explicit``, not both."""

    disable: bool = False
    """Emit no duration metric at all."""
    unit: str = defaults.DEFAULT_UNIT
    """``ms`` or ``s``: unit of the duration values and of the metric."""
    exponential: ExponentialHistogramConfig | None = None
    """Exponential histogram settings; the default when neither kind is given."""
    explicit: ExplicitHistogramConfig | None = None
    """Explicit-bucket histogram settings."""

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in ("ms", "s"):
            raise ValueError(f"unknown unit {unit!r}, allowed units are 'ms' and 's'")
        return unit

    @model_validator(mode="after")
    def _one_kind(self) -> HistogramConfig:
        if self.exponential is not None and self.explicit is not None:
            raise ValueError("use either 'exponential' or 'explicit', not both")
        return self

    @property
    def is_exponential(self) -> bool:
        """Whether durations go to an exponential histogram."""
        return self.explicit is None

    @property
    def max_size(self) -> int:
        """Exponential max_size in force."""
        return (self.exponential or ExponentialHistogramConfig()).max_size


class ExemplarsConfig(_Strict):
    """Trace/span id exemplars on duration points."""

    enabled: bool = defaults.DEFAULT_EXEMPLARS_ENABLED
    """Attach exemplars: the first spans of each flush interval, per point."""
    max_per_data_point: int = Field(default=defaults.DEFAULT_EXEMPLARS_MAX_PER_POINT, ge=1)
    """At most this many exemplars on one point."""


class EventsConfig(_Strict):
    """The ``events`` metric: a count of span events."""

    enabled: bool = defaults.DEFAULT_EVENTS_ENABLED
    """Emit ``<namespace>.events``."""
    dimensions: tuple[Dimension, ...] = ()
    """Extra dimensions looked up in each event's attributes."""


class SpanMetricsConfig(_Strict):
    """The Collector spanmetrics connector's keys, accepted verbatim."""

    dimensions: tuple[Dimension, ...] = ()
    """Extra dimensions from span (then resource) attributes."""
    exclude_dimensions: tuple[str, ...] = ()
    """Intrinsic dimensions to leave out: any of ``span.name``, ``span.kind``, ``status.code``."""
    histogram: HistogramConfig = HistogramConfig()
    """The duration metric."""
    aggregation_temporality: TemporalityName = defaults.DEFAULT_TEMPORALITY
    """``AGGREGATION_TEMPORALITY_CUMULATIVE`` or ``AGGREGATION_TEMPORALITY_DELTA``."""
    metrics_flush_interval: DurationSeconds = defaults.DEFAULT_FLUSH_INTERVAL_S
    """Seconds between flushes."""
    metrics_expiration: DurationSeconds = defaults.DEFAULT_METRICS_EXPIRATION_S
    """Drop a resource's series after this long without spans for it (0 = never)."""
    series_expiration: DurationSeconds = defaults.DEFAULT_SERIES_EXPIRATION_S
    """Drop a series after this long without spans (0 = never)."""
    aggregation_cardinality_limit: int = Field(default=defaults.DEFAULT_CARDINALITY_LIMIT, ge=0)
    """Series per resource before new keys go to the overflow series (0 = no limit)."""
    namespace: str = defaults.DEFAULT_NAMESPACE
    """Metric name prefix; empty gives bare ``calls`` and ``duration``."""
    exemplars: ExemplarsConfig = ExemplarsConfig()
    """Exemplars on duration points."""
    events: EventsConfig = EventsConfig()
    """The events metric."""
    resource_metrics_key_attributes: tuple[str, ...] = ()
    """Resource attributes that identify a resource; empty means all of them."""
    include_instrumentation_scope: tuple[str, ...] = ()
    """Scope names whose spans get ``span.instrumentation.scope.name`` (and ``.version``)."""
    span_multiplier_key: str | None = None
    """Span or resource attribute that multiplies each span's count (Tempo's key)."""
    dimensions_cache_size: int | None = None
    """Accepted for compatibility with connector configs; ignored (deprecated there too)."""
    resource_metrics_cache_size: int | None = None
    """Accepted for compatibility; ignored: expirations and the cardinality limit bound state."""
    metric_timestamp_cache_size: int | None = None
    """Accepted for compatibility; ignored: delta start times are kept per live series."""

    @field_validator("exclude_dimensions")
    @classmethod
    def _excludable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if name not in EXCLUDABLE_DIMENSIONS:
                raise ValueError(
                    f"cannot exclude {name!r}, excludable dimensions are "
                    + ", ".join(repr(n) for n in EXCLUDABLE_DIMENSIONS)
                )
        return names

    @field_validator("dimensions")
    @classmethod
    def _no_reserved(cls, dims: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
        seen: set[str] = set()
        for dim in dims:
            if dim.name in INTRINSIC_DIMENSIONS:
                raise ValueError(f"{dim.name!r} is an intrinsic dimension and is always present")
            if dim.name in seen:
                raise ValueError(f"dimension {dim.name!r} is listed twice")
            seen.add(dim.name)
        return dims

    @field_validator("metrics_flush_interval")
    @classmethod
    def _positive_interval(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("the flush interval should be positive")
        return seconds

    @property
    def is_delta(self) -> bool:
        """Whether points are delta rather than cumulative."""
        return self.aggregation_temporality == "AGGREGATION_TEMPORALITY_DELTA"

    @property
    def ignored_keys(self) -> tuple[str, ...]:
        """Compatibility keys that were given and have no effect here."""
        names = (
            "dimensions_cache_size",
            "resource_metrics_cache_size",
            "metric_timestamp_cache_size",
        )
        return tuple(n for n in names if getattr(self, n) is not None)


class SourceConfig(_Strict):
    """Where spans come from."""

    topic: str = defaults.DEFAULT_SOURCE_TOPIC
    """Kafka topic the Collector's Kafka exporter writes spans to."""
    encoding: Encoding = defaults.DEFAULT_ENCODING
    """Record encoding: ``otlp_proto`` or ``otlp_json``."""
    broker: str = defaults.DEFAULT_BROKER
    """Kafka bootstrap URL, ``kafka://HOST:PORT``."""
    group: str = Field(default=defaults.DEFAULT_GROUP, min_length=1)
    """Consumer group: workers with the same group form one fleet."""
    initial_offset: Literal["earliest", "latest"] = defaults.DEFAULT_INITIAL_OFFSET
    """Where a partition with no checkpoint starts reading."""
    dead_letter_topic: str = defaults.DEFAULT_DEAD_LETTER_TOPIC
    """Topic for records that cannot be decoded."""


class KafkaProducerConfig(_Strict):
    """Producer settings of a Kafka sink, as the Collector's Kafka exporter names them."""

    max_message_bytes: int = Field(default=defaults.DEFAULT_MAX_MESSAGE_BYTES, ge=4096)
    """Largest record sent: a flush's metrics are split into as many records as needed."""


class KafkaSinkConfig(_Strict):
    """OTLP metrics to a Kafka topic, as the Collector's Kafka receiver reads them."""

    topic: str = defaults.DEFAULT_METRICS_TOPIC
    """Output topic."""
    encoding: Encoding = defaults.DEFAULT_ENCODING
    """``otlp_proto`` or ``otlp_json``."""
    producer: KafkaProducerConfig = KafkaProducerConfig()
    """Producer settings (``max_message_bytes``)."""

    @field_validator("producer", mode="before")
    @classmethod
    def _empty_producer(cls, value: object) -> object:
        # `producer:` with nothing under it means "all defaults", as in Collector configs.
        return {} if value is None else value


NamingProfile = Literal["otel", "tempo"]


class PrometheusRemoteWriteSinkConfig(_Strict):
    """Prometheus remote write: native (or classic) histograms, cumulative, every flush."""

    endpoint: str
    """Remote-write URL, e.g. ``http://prometheus:9090/api/v1/write``."""
    naming: NamingProfile = defaults.DEFAULT_PROMETHEUS_NAMING
    """``otel`` (connector names after translation) or ``tempo``."""
    histogram: Literal["native", "classic"] = "native"
    """Native histograms, or classic ``_bucket`` series for older stores."""


class PrometheusScrapeSinkConfig(_Strict):
    """A ``/metrics`` endpoint on each worker, serving the shards it owns."""

    port: int = Field(default=defaults.DEFAULT_SCRAPE_PORT, ge=0, le=65535)
    """Listening port (0: any free port, for tests)."""
    naming: NamingProfile = defaults.DEFAULT_PROMETHEUS_NAMING
    """``otel`` or ``tempo``."""


class SinkConfig(_Strict):
    """One sink: exactly one of the keys below."""

    kafka: KafkaSinkConfig | None = None
    """OTLP to Kafka."""
    prometheus_remote_write: PrometheusRemoteWriteSinkConfig | None = None
    """Prometheus remote write."""
    prometheus: PrometheusScrapeSinkConfig | None = None
    """Scrape endpoint."""

    @model_validator(mode="before")
    @classmethod
    def _empty_kafka(cls, data: object) -> object:
        # `- kafka:` with nothing under it means "all defaults", not null.
        if isinstance(data, dict) and "kafka" in data and data["kafka"] is None:
            return {**data, "kafka": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SinkConfig:
        given = [n for n in ("kafka", "prometheus_remote_write", "prometheus") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "each sink has exactly one of 'kafka', 'prometheus_remote_write', 'prometheus'"
                + (f", got {given}" if given else "")
            )
        return self


def _default_sinks() -> tuple[SinkConfig, ...]:
    return (SinkConfig(kafka=KafkaSinkConfig()),)


class Topology(_Strict):
    """One deployable pipeline: a source, the span-metrics settings and the sinks."""

    source: SourceConfig = SourceConfig()
    """Input topic and encoding."""
    spanmetrics: SpanMetricsConfig = SpanMetricsConfig()
    """Aggregation settings, the connector's keys."""
    sinks: tuple[SinkConfig, ...] = Field(default_factory=_default_sinks)
    """Where metrics go; defaults to one Kafka sink on ``otlp_metrics``."""
    state: str = defaults.DEFAULT_STATE_URL
    """Durable state: ``redis://HOST:PORT/DB`` for a fleet, ``memory://`` for one process."""

    @model_validator(mode="after")
    def _tempo_needs_seconds(self) -> Topology:
        # Checked here because it spans two keys; the message starts with the key path.
        for i, sink in enumerate(self.sinks):
            for kind in ("prometheus_remote_write", "prometheus"):
                config = getattr(sink, kind)
                tempo = config is not None and config.naming == "tempo"
                if tempo and self.spanmetrics.histogram.unit != "s":
                    raise ValueError(
                        f"sinks[{i}].{kind}.naming: the tempo profile's "
                        "traces_spanmetrics_latency is in seconds; set "
                        "spanmetrics.histogram.unit: s"
                    )
        return self

    @field_validator("state")
    @classmethod
    def _state_url(cls, url: str) -> str:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("memory", "redis", "rediss", "unix"):
            raise ValueError(f"expected memory:// or redis://HOST:PORT/DB, got {url!r}")
        return url
