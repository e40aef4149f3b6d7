"""The topology model: ``source``, ``spanmetrics`` (the connector's keys) and ``sinks``.

Models are frozen and reject unknown keys, so a typo fails at load with its key path.
Defaults come from :mod:`spanmetrics.config.defaults`.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from spanmetrics.config import defaults
from spanmetrics.config.base import DurationSeconds, increasing_bounds
from spanmetrics.config.base import Strict as _Strict
from spanmetrics.config.durations import parse_duration
from spanmetrics.config.rules import DeriveConfig
from spanmetrics.config.views import Budget, SpanFilters, SpanNameRule, View, check_views
from spanmetrics.net import parse_sentinel_url, redact_url

#: Record encodings of the Collector's Kafka exporter that we read and write.
Encoding = Literal["otlp_proto", "otlp_json"]
#: Temporalities, spelled as the connector spells them.
TemporalityName = Literal["AGGREGATION_TEMPORALITY_CUMULATIVE", "AGGREGATION_TEMPORALITY_DELTA"]


#: Dimension names the engine sets itself; configuring one of them would be ambiguous.
INTRINSIC_DIMENSIONS = ("service.name", "span.name", "span.kind", "status.code")
#: The dimension ``enable_metrics_sampling_method`` adds.
SAMPLING_METHOD_LABEL = "sampling.method"
#: Intrinsic dimensions that ``exclude_dimensions`` may drop (a series needs its service).
EXCLUDABLE_DIMENSIONS = ("span.name", "span.kind", "status.code")


def _empty_block(value: object) -> object:
    """For optional blocks (``explicit:``, ``exponential:``): given but empty means the
    block with its defaults, not "absent"."""
    return {} if value is None else value


class Dimension(_Strict):
    """One extra dimension, looked up in span attributes first, then resource attributes.

    Either ``name`` (one attribute) or ``glob`` (every attribute whose key matches).
    """

    name: str | None = Field(default=None, min_length=1)
    """Attribute key, also the label name on the output."""
    default: str | None = None
    """Value used when neither the span nor its resource has the attribute. When unset,
    such a series simply has no label of that name. Not allowed with ``glob``."""
    glob: str | None = Field(default=None, min_length=1)
    """A pattern of attribute keys, as in the connector: ``*`` matches within one
    ``.``-separated part of a key, ``**`` across parts, ``?`` one character. Every span
    (then resource) attribute that matches becomes a dimension under its own key."""

    @model_validator(mode="after")
    def _name_or_glob(self) -> Dimension:
        if (self.name is None) == (self.glob is None):
            raise ValueError("a dimension has either 'name' or 'glob'")
        if self.glob is not None and self.default is not None:
            raise ValueError("a 'glob' dimension cannot have a 'default'")
        return self

    @property
    def key(self) -> str:
        """The name, or the glob pattern: what identifies this entry."""
        return self.name if self.name is not None else f"glob:{self.glob}"


def _check_dimensions(dims: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
    seen: set[str] = set()
    for dim in dims:
        if dim.name in INTRINSIC_DIMENSIONS:
            raise ValueError(f"{dim.name!r} is an intrinsic dimension and is always present")
        if dim.key in seen:
            raise ValueError(f"dimension {dim.key!r} is listed twice")
        seen.add(dim.key)
    return dims


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

    buckets: tuple[Annotated[float, BeforeValidator(_bucket_ms)], ...] = Field(
        default=defaults.DEFAULT_EXPLICIT_BUCKETS_MS,
        validate_default=False,
    )
    """Upper bounds, strictly increasing: durations ("100ms", "2s") or numbers of ms.
    Empty or absent: the connector's default bounds."""

    @field_validator("buckets", mode="before")
    @classmethod
    def _default_when_empty(cls, value: object) -> object:
        # `buckets:` with nothing under it, as `explicit:` alone: the connector's bounds.
        return defaults.DEFAULT_EXPLICIT_BUCKETS_MS if value is None else value

    _increasing = field_validator("buckets")(increasing_bounds)


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
    dimensions: tuple[Dimension, ...] = ()
    """Extra dimensions on the duration metric only (after ``spanmetrics.dimensions``)."""

    _checked_dimensions = field_validator("dimensions")(_check_dimensions)
    _empty_kinds = field_validator("exponential", "explicit", mode="before")(_empty_block)

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
    """Extra dimensions looked up in each event's attributes (by ``name``)."""

    @field_validator("dimensions")
    @classmethod
    def _named(cls, dims: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
        if any(d.glob is not None for d in dims):
            raise ValueError("event dimensions need a 'name'; 'glob' is not supported here")
        return _check_dimensions(dims)


#: The connector's feature gates that change names or labels, and what each does here.
FEATURE_GATES: dict[str, str] = {
    "spanmetrics.statusCodeConvention.useOtelPrefix": (
        "the status label is otel.status_code = OK | ERROR, left out for Unset"
    ),
    "connector.spanmetrics.useSecondAsDefaultMetricsUnit": (
        "histogram.unit defaults to s instead of ms"
    ),
    "connector.spanmetrics.legacyMetricNames": "namespace defaults to empty: bare calls, duration",
    "connector.spanmetrics.excludeResourceMetrics": (
        "output resources carry no attributes, unless add_resource_attributes is true"
    ),
    "connector.spanmetrics.includeCollectorInstanceID": (
        "accepted and ignored: a fleet has no one collector instance, and a per-worker "
        "label would give every series one writer per worker"
    ),
}

#: The one gate that is accepted and has no effect.
IGNORED_GATE = "connector.spanmetrics.includeCollectorInstanceID"

#: Keys of older connector and processor versions, and what replaced them.
RETIRED_KEYS: dict[str, str] = {
    "latency_histogram_buckets": "histogram.explicit.buckets",
    "metrics_exporter": "sinks (a connector routes metrics through pipelines instead)",
    "quantiles": "histogram.exponential (quantiles are computed when queried)",
}


class SpanMetricsConfig(_Strict):
    """The Collector spanmetrics connector's keys, accepted verbatim."""

    dimensions: tuple[Dimension, ...] = ()
    """Extra dimensions from span (then resource) attributes, on every metric."""
    calls_dimensions: tuple[Dimension, ...] = ()
    """Extra dimensions on the calls metric only (after ``dimensions``)."""
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
    max_span_duration: DurationSeconds = defaults.DEFAULT_MAX_SPAN_DURATION_S
    """Durations above this are counted as this, under ``spans_duration_clamped`` (0 = no
    bound). Not a connector key: it keeps one span with a broken clock from coarsening
    its series' histogram for good."""
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
    add_resource_attributes: bool = False
    """With the ``connector.spanmetrics.excludeResourceMetrics`` gate on: copy resource
    attributes into the output anyway (the connector's old behaviour). Without the gate
    they are always copied."""
    enable_metrics_sampling_method: bool = False
    """Add the dimension ``sampling.method``: ``extrapolated`` for spans whose tracestate
    carries a sampling threshold (``ot=th:``), so that their count is an estimate, and
    ``counted`` for the others."""
    feature_gates: tuple[str, ...] = ()
    """Connector feature gates to turn on, by their Collector id (see ``FEATURE_GATES``)."""

    @model_validator(mode="before")
    @classmethod
    def _gate_defaults(cls, data: object) -> object:
        # Gates change defaults only: a key given in the topology always wins.
        if not isinstance(data, dict):
            return data
        gates = data.get("feature_gates") or ()
        if not isinstance(gates, list | tuple):
            return data
        data = dict(data)
        if "connector.spanmetrics.legacyMetricNames" in gates and "namespace" not in data:
            data["namespace"] = ""
        if "connector.spanmetrics.useSecondAsDefaultMetricsUnit" in gates:
            histogram = data.get("histogram")
            histogram = dict(histogram) if isinstance(histogram, dict) else {}
            histogram.setdefault("unit", "s")
            data["histogram"] = histogram
        return data

    @field_validator("feature_gates")
    @classmethod
    def _known_gates(cls, gates: tuple[str, ...]) -> tuple[str, ...]:
        for gate in gates:
            if gate not in FEATURE_GATES:
                close = difflib.get_close_matches(gate, FEATURE_GATES, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"unknown feature gate {gate!r}{hint} Known gates: " + ", ".join(FEATURE_GATES)
                )
        return gates

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

    @field_validator("dimensions", "calls_dimensions")
    @classmethod
    def _no_reserved(cls, dims: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
        return _check_dimensions(dims)

    @model_validator(mode="after")
    def _disjoint_dimensions(self) -> SpanMetricsConfig:
        # One name is one label: it cannot be both on every metric and on one of them.
        common = {d.key for d in self.dimensions}
        for key, dims in (
            ("calls_dimensions", self.calls_dimensions),
            ("histogram.dimensions", self.histogram.dimensions),
        ):
            for dim in dims:
                if dim.key in common:
                    raise ValueError(
                        f"{key}: {dim.key!r} is already in dimensions, which label every metric"
                    )
        if self.enable_metrics_sampling_method:
            for dim in self.all_dimensions:
                if dim.name == SAMPLING_METHOD_LABEL:
                    raise ValueError(
                        f"dimensions: {SAMPLING_METHOD_LABEL!r} is set by "
                        "enable_metrics_sampling_method"
                    )
        return self

    def gate(self, gate: str) -> bool:
        """Whether a connector feature gate is on."""
        return gate in self.feature_gates

    @property
    def all_dimensions(self) -> tuple[Dimension, ...]:
        """Every configured dimension once: common ones, then calls-only, then duration-only
        (a name in both per-metric lists is on both metrics)."""
        out = list(self.dimensions)
        seen = {d.key for d in out}
        for dim in (*self.calls_dimensions, *self.histogram.dimensions):
            if dim.key not in seen:
                seen.add(dim.key)
                out.append(dim)
        return tuple(out)

    @property
    def calls_only_dimensions(self) -> frozenset[str]:
        """Keys of dimensions that label the calls metric and not the duration metric."""
        return frozenset(d.key for d in self.calls_dimensions) - {
            d.key for d in self.histogram.dimensions
        }

    @property
    def duration_only_dimensions(self) -> frozenset[str]:
        """Keys of dimensions that label the duration metric and not the calls metric."""
        return frozenset(d.key for d in self.histogram.dimensions) - {
            d.key for d in self.calls_dimensions
        }

    @property
    def status_label(self) -> str:
        """The label of the span status: ``status.code``, or ``otel.status_code`` with the
        ``useOtelPrefix`` gate."""
        if self.gate("spanmetrics.statusCodeConvention.useOtelPrefix"):
            return "otel.status_code"
        return "status.code"

    @property
    def copies_resource_attributes(self) -> bool:
        """Whether output resources carry the spans' resource attributes."""
        excluded = self.gate("connector.spanmetrics.excludeResourceMetrics")
        return not excluded or self.add_resource_attributes

    @field_validator("metrics_flush_interval")
    @classmethod
    def _positive_interval(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("the flush interval should be positive")
        return seconds

    @property
    def max_span_duration_ns(self) -> int:
        """``max_span_duration`` in nanoseconds; 0: no bound."""
        return round(self.max_span_duration * 1e9)

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
        ignored = tuple(n for n in names if getattr(self, n) is not None)
        if self.gate(IGNORED_GATE):
            ignored += (f"feature_gates[{IGNORED_GATE}]",)
        return ignored


def _readable(path: str | None) -> str | None:
    """A file the worker will need: said at validation when it cannot be read."""
    if path is not None:
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise ValueError(f"cannot read {path!r}: {err.strerror}") from None
    return path


class TLSConfig(_Strict):
    """TLS to Kafka, with the keys of the Collector's Kafka receiver and exporter."""

    ca_file: str | None = None
    """CA certificates to verify the brokers with (default: the system's)."""
    cert_file: str | None = None
    """Client certificate, for mutual TLS (with ``key_file``)."""
    key_file: str | None = None
    """Client private key."""
    insecure: bool = False
    """True: no TLS at all (plaintext), as in Collector configs."""
    insecure_skip_verify: bool = False
    """Use TLS without verifying the brokers' certificates (testing only)."""
    server_name_override: str | None = None
    """Not supported by the Kafka client used here: give the brokers certificates for the
    names clients connect to, or ``insecure_skip_verify``."""

    _files = field_validator("ca_file", "cert_file", "key_file")(_readable)

    @model_validator(mode="after")
    def _consistent(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give 'cert_file' and 'key_file' together")
        if self.server_name_override is not None:
            raise ValueError(
                "server_name_override: not supported by the Kafka client here; use "
                "certificates for the broker names, or insecure_skip_verify"
            )
        return self


class SASLConfig(_Strict):
    """SASL to Kafka."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    """The mechanism the brokers take."""
    username: str = Field(min_length=1)
    """User name."""
    password: str = Field(min_length=1, repr=False)
    """Password: write it ``${env:NAME}`` or ``${file:PATH}`` so it never sits in the file."""


class AuthConfig(_Strict):
    """Authentication to Kafka."""

    sasl: SASLConfig | None = None
    """SASL (over TLS when ``tls`` is set)."""


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
    tls: TLSConfig | None = None
    """TLS to the brokers; also used by the Kafka sinks (the same cluster)."""
    auth: AuthConfig | None = None
    """Authentication to the brokers; also used by the Kafka sinks."""

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, url: str) -> str:
        # What the worker would die on, said at validation: a scheme other than kafka://,
        # or an address without a numeric port.
        scheme, sep, rest = url.strip().partition("://")
        if sep and scheme != "kafka":
            raise ValueError(f"expected kafka://HOST:PORT[,HOST:PORT], got scheme {scheme!r}")
        for address in (rest if sep else scheme).rstrip("/").split(","):
            host, colon, port = address.strip().rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected kafka://HOST:PORT[,HOST:PORT], got {url!r}")
        return url


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
#: How Prometheus sinks write histograms: native, classic ``_bucket`` series, or both.
PrometheusHistograms = Literal["native", "classic", "both"]


class PrometheusRemoteWriteSinkConfig(_Strict):
    """Prometheus remote write: native (or classic) histograms, cumulative, every flush."""

    endpoint: str
    """Remote-write URL, e.g. ``http://prometheus:9090/api/v1/write``."""
    naming: NamingProfile = defaults.DEFAULT_PROMETHEUS_NAMING
    """``otel`` (connector names after translation) or ``tempo``."""
    histogram: PrometheusHistograms = defaults.DEFAULT_PROMETHEUS_HISTOGRAMS
    """``both`` (native histograms and classic ``_bucket`` series: Jaeger's Monitor tab
    and ``by (le)`` queries read the classic ones), ``native`` (one series per histogram,
    for stores and dashboards that read native histograms only) or ``classic`` (stores
    without native histograms)."""


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


def _sentinel_url(url: str) -> str:
    try:
        parse_sentinel_url(url)
    except ValueError as err:
        raise ValueError(f"{err} (in {redact_url(url)!r})") from None
    return url


def _default_sinks() -> tuple[SinkConfig, ...]:
    return (SinkConfig(kafka=KafkaSinkConfig()),)


class Topology(_Strict):
    """One deployable pipeline: a source, the span-metrics settings and the sinks."""

    source: SourceConfig = SourceConfig()
    """Input topic and encoding."""
    spanmetrics: SpanMetricsConfig = Field(
        default=SpanMetricsConfig(),
        validation_alias=AliasChoices("spanmetrics", "span_metrics"),
    )
    """Aggregation settings, the connector's keys (``span_metrics``, the connector's
    current type name, is accepted too)."""
    sinks: tuple[SinkConfig, ...] = Field(default_factory=_default_sinks)
    """Where metrics go; defaults to one Kafka sink on ``otlp_metrics``."""
    state: str = defaults.DEFAULT_STATE_URL
    """Durable state: ``redis://HOST:PORT/DB`` for a fleet, ``memory://`` for one process."""
    views: tuple[View, ...] = ()
    """Views: which streams the output holds, per metric (see ``config/views.py``)."""
    span_filters: SpanFilters | None = None
    """Spans left out of every metric, by kind and labels; each is counted by reason."""
    span_names: tuple[SpanNameRule, ...] = ()
    """Span name rewrites (ids and numbers in paths to ``{id}``), in order."""
    budgets: tuple[Budget, ...] = ()
    """Series budgets per metric and per service, across the whole fleet."""
    derive: DeriveConfig | None = None
    """Metrics derived from selected spans by rules, instead of the connector's calls and
    duration metrics (``topologies/kubernetes.yaml``). The ``spanmetrics`` block still
    sets temporality, flush interval, expirations, the cardinality limit and the
    exponential histogram's ``max_size``."""

    @property
    def instrument_names(self) -> list[str]:
        """The metrics views may select: the span metrics' calls and duration (named as
        the connector names them), then the derived metrics."""
        prefix = f"{self.spanmetrics.namespace}." if self.spanmetrics.namespace else ""
        derived = [m.name for m in self.derive.metrics] if self.derive is not None else []
        return [f"{prefix}calls", f"{prefix}duration", *derived]

    @model_validator(mode="after")
    def _views_fit(self) -> Topology:
        check_views(self.views, self.instrument_names)
        return self

    @model_validator(mode="after")
    def _derive_is_exponential(self) -> Topology:
        if self.derive is not None and not self.spanmetrics.histogram.is_exponential:
            raise ValueError(
                "spanmetrics.histogram.explicit: derived metrics are exponential histograms; "
                "remove it (histogram.exponential.max_size applies)"
            )
        return self

    @model_validator(mode="after")
    def _tempo_needs_seconds(self) -> Topology:
        # Checked here because it spans two keys; the message starts with the key path.
        if self.derive is not None:
            return self  # derived metrics are in seconds, and profiles name span metrics only
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
        if scheme == "redis+sentinel":
            return _sentinel_url(url)
        if scheme not in ("memory", "redis", "rediss", "unix"):
            raise ValueError(f"expected memory:// or redis://HOST:PORT/DB, got {redact_url(url)!r}")
        if scheme in ("redis", "rediss"):
            parsed = urlparse(url)
            try:
                parsed.port  # noqa: B018 - urllib checks the port when it is read
            except ValueError:
                port = parsed.netloc.rsplit(":", 1)[-1]
                raise ValueError(
                    f"the port of {redact_url(url)!r} is not a number: {port!r}"
                ) from None
            db = parsed.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"the database of {redact_url(url)!r} is not a number: {db!r}")
        return url
