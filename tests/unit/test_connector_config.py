"""Connector configs pasted as users have them: every shape loads, and every key does what
it does in the Collector's spanmetrics connector (config.go, config.schema.yaml)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.config import defaults
from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.config.model import SpanMetricsConfig, Topology
from spanmetrics.export.otlp import snapshot_to_request
from tests.builders import ERROR, OK, SERVER, UNSET, request, resource, span
from tests.clock import FakeClock

#: Each documented shape of the connector's block, as YAML, and what it must mean here.
SHAPES: list[tuple[str, str, dict[str, Any]]] = [
    ("minimal, nothing under it", "spanmetrics:\n", {"histogram.is_exponential": True}),
    ("component type span_metrics", "span_metrics:\n  namespace: x\n", {"namespace": "x"}),
    ("empty histogram", "spanmetrics:\n  histogram:\n", {"histogram.unit": "ms"}),
    (
        "explicit with nothing under it: the connector's default buckets",
        "spanmetrics:\n  histogram:\n    explicit:\n",
        {"histogram.explicit.buckets": defaults.DEFAULT_EXPLICIT_BUCKETS_MS},
    ),
    (
        "explicit buckets with nothing under them",
        "spanmetrics:\n  histogram:\n    explicit:\n      buckets:\n",
        {"histogram.explicit.buckets": defaults.DEFAULT_EXPLICIT_BUCKETS_MS},
    ),
    (
        "exponential with nothing under it",
        "spanmetrics:\n  histogram:\n    exponential:\n",
        {"histogram.max_size": 160, "histogram.is_exponential": True},
    ),
    (
        "explicit buckets as durations, unit seconds",
        """
spanmetrics:
  histogram:
    unit: s
    explicit:
      buckets: [100us, 1ms, 2ms, 6ms, 10ms, 100ms, 250ms]
""",
        {"histogram.unit": "s", "histogram.explicit.buckets": (0.1, 1, 2, 6, 10, 100, 250)},
    ),
    (
        "every key of today's connector",
        """
spanmetrics:
  dimensions:
    - name: http.method
      default: GET
    - name: http.status_code
    - glob: "k8s.*.name"
  calls_dimensions:
    - name: http.route
  exclude_dimensions: [span.kind]
  dimensions_cache_size: 1000
  resource_metrics_cache_size: 1000
  resource_metrics_key_attributes: [service.name, telemetry.sdk.language]
  aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA
  histogram:
    disable: false
    unit: ms
    exponential:
      max_size: 100
    dimensions:
      - name: net.peer.name
  metrics_flush_interval: 15s
  metrics_expiration: 5m
  series_expiration: 10m
  metric_timestamp_cache_size: 1000
  exemplars:
    enabled: true
    max_per_data_point: 3
  events:
    enabled: true
    dimensions:
      - name: exception.type
  namespace: my.spans
  include_instrumentation_scope: [io.opentelemetry.http]
  aggregation_cardinality_limit: 2000
  add_resource_attributes: true
  enable_metrics_sampling_method: true
  feature_gates:
    - connector.spanmetrics.excludeResourceMetrics
    - spanmetrics.statusCodeConvention.useOtelPrefix
""",
        {
            "calls_only_dimensions": frozenset({"http.route"}),
            "duration_only_dimensions": frozenset({"net.peer.name"}),
            "histogram.max_size": 100,
            "is_delta": True,
            "metrics_flush_interval": 15.0,
            "series_expiration": 600.0,
            "exemplars.max_per_data_point": 3,
            "namespace": "my.spans",
            "aggregation_cardinality_limit": 2000,
            "copies_resource_attributes": True,
            "status_label": "otel.status_code",
            "enable_metrics_sampling_method": True,
            "ignored_keys": (
                "dimensions_cache_size",
                "resource_metrics_cache_size",
                "metric_timestamp_cache_size",
            ),
        },
    ),
    (
        "seconds as the default unit (feature gate)",
        """
spanmetrics:
  feature_gates: [connector.spanmetrics.useSecondAsDefaultMetricsUnit]
""",
        {"histogram.unit": "s"},
    ),
    (
        "a unit given wins over the gate",
        """
spanmetrics:
  histogram: {unit: ms}
  feature_gates: [connector.spanmetrics.useSecondAsDefaultMetricsUnit]
""",
        {"histogram.unit": "ms"},
    ),
    (
        "legacy metric names (feature gate)",
        "spanmetrics:\n  feature_gates: [connector.spanmetrics.legacyMetricNames]\n",
        {"namespace": ""},
    ),
    (
        "resource metrics excluded (feature gate)",
        "spanmetrics:\n  feature_gates: [connector.spanmetrics.excludeResourceMetrics]\n",
        {"copies_resource_attributes": False},
    ),
    (
        "collector.instance.id: accepted, meaningless in a fleet",
        """
spanmetrics:
  dimensions: [{name: collector.instance.id}]
  feature_gates: [connector.spanmetrics.includeCollectorInstanceID]
""",
        {
            "feature_gates": ("connector.spanmetrics.includeCollectorInstanceID",),
            "ignored_keys": ("feature_gates[connector.spanmetrics.includeCollectorInstanceID]",),
        },
    ),
]


def _get(config: SpanMetricsConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(("name", "text", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
def test_connector_shape_loads_with_its_meaning(
    name: str, text: str, expected: dict[str, Any]
) -> None:
    topology = parse_topology(yaml.safe_load(text))
    for path, value in expected.items():
        assert _get(topology.spanmetrics, path) == value, path


def test_every_field_of_the_model_is_covered_by_a_shape() -> None:
    """The full shape sets every key the model knows, so a key added later gets a shape."""
    full = yaml.safe_load(SHAPES[7][1])["spanmetrics"]
    # Blocks are covered key by key; span_multiplier_key is Tempo's key and
    # max_span_duration ours, not the connector's.
    skip = {"histogram", "exemplars", "events", "span_multiplier_key", "max_span_duration"}
    assert set(SpanMetricsConfig.model_fields) - set(full) - skip == set()
    assert set(full["histogram"]) >= {"disable", "unit", "exponential", "dimensions"}


def test_retired_and_unknown_keys_are_explained() -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology({"spanmetrics": {"latency_histogram_buckets": ["2ms"]}})
    assert "use histogram.explicit.buckets" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_topology({"spanmetrics": {"exclude_dimension": ["span.kind"]}})
    assert "did you mean 'exclude_dimensions'?" in str(info.value)


# ----------------------------------------------------------------- semantics


def engine_for(config: dict[str, Any]) -> tuple[SpanMetricsEngine, FakeClock]:
    clock = FakeClock()
    sm = parse_topology({"spanmetrics": config}).spanmetrics
    return SpanMetricsEngine(sm, clock), clock


def output(engine: SpanMetricsEngine) -> dict[str, dict[tuple[tuple[str, str], ...], Any]]:
    """Per metric name: labels -> point, as the OTLP output carries them."""
    out: dict[str, dict[tuple[tuple[str, str], ...], Any]] = {}
    for rm in snapshot_to_request(engine.flush()).resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                data = getattr(metric, metric.WhichOneof("data"))
                for p in data.data_points:
                    labels = tuple((kv.key, kv.value.string_value) for kv in p.attributes)
                    assert labels not in out.setdefault(metric.name, {}), "duplicate point"
                    out[metric.name][labels] = p
    return out


def test_calls_and_histogram_dimensions_label_one_metric_each() -> None:
    engine, _ = engine_for(
        {
            "calls_dimensions": [{"name": "http.route"}],
            "histogram": {"dimensions": [{"name": "peer"}]},
            "exclude_dimensions": ["span.kind", "span.name", "status.code"],
        }
    )
    engine.consume(
        request(
            resource(
                {"service.name": "a"},
                span(duration_ms=1, attributes={"http.route": "/x", "peer": "p1"}),
                span(duration_ms=2, attributes={"http.route": "/x", "peer": "p2"}),
                span(duration_ms=4, attributes={"http.route": "/y", "peer": "p1"}),
            )
        )
    )
    out = output(engine)
    calls = {labels: p.as_int for labels, p in out["traces.span.metrics.calls"].items()}
    assert calls == {
        (("service.name", "a"), ("http.route", "/x")): 2,
        (("service.name", "a"), ("http.route", "/y")): 1,
    }
    durations = {
        labels: (p.count, p.sum) for labels, p in out["traces.span.metrics.duration"].items()
    }
    assert durations == {
        (("service.name", "a"), ("peer", "p1")): (2, 5.0),
        (("service.name", "a"), ("peer", "p2")): (1, 2.0),
    }


def test_glob_dimensions_take_every_matching_key_span_first() -> None:
    engine, _ = engine_for(
        {"dimensions": [{"glob": "http.*"}], "exclude_dimensions": ["span.kind", "span.name"]}
    )
    engine.consume(
        request(
            resource(
                {"service.name": "a", "http.scheme": "https", "host.name": "h"},
                span(attributes={"http.method": "GET", "http.request.method": "GET"}),
                span(attributes={"http.method": "POST", "http.scheme": "http", "db.x": 1}),
            )
        )
    )
    labels = set(output(engine)["traces.span.metrics.calls"])
    status = ("status.code", "STATUS_CODE_UNSET")
    # `*` stops at a dot: http.request.method is not `http.*`.
    assert labels == {
        (("service.name", "a"), status, ("http.method", "GET"), ("http.scheme", "https")),
        (("service.name", "a"), status, ("http.method", "POST"), ("http.scheme", "http")),
    }
    engine, _ = engine_for(
        {"dimensions": [{"glob": "http.**"}], "exclude_dimensions": ["span.kind"]}
    )
    engine.consume(
        request(resource({"service.name": "a"}, span(attributes={"http.request.method": "GET"})))
    )
    (only,) = output(engine)["traces.span.metrics.calls"]
    assert ("http.request.method", "GET") in only


def test_sampling_method_splits_counted_from_extrapolated() -> None:
    engine, _ = engine_for({"enable_metrics_sampling_method": True})
    engine.consume(
        request(
            resource(
                {"service.name": "a"},
                span(trace_state="ot=th:8"),  # kept with probability 1/2: stands for 2
                span(),
                span(trace_state="vendor=x"),
            )
        )
    )
    calls = {
        dict(labels)["sampling.method"]: p.as_int
        for labels, p in output(engine)["traces.span.metrics.calls"].items()
    }
    assert calls == {"extrapolated": 2, "counted": 2}


def test_otel_status_code_convention() -> None:
    engine, _ = engine_for({"feature_gates": ["spanmetrics.statusCodeConvention.useOtelPrefix"]})
    engine.consume(
        request(
            resource({"service.name": "a"}, span(status=ERROR), span(status=OK), span(status=UNSET))
        )
    )
    found = {
        dict(labels).get("otel.status_code")
        for labels in output(engine)["traces.span.metrics.calls"]
    }
    assert found == {"ERROR", "OK", None}
    assert not any(
        "status.code" in dict(labels) for labels in output(engine)["traces.span.metrics.calls"]
    )


@pytest.mark.parametrize(
    ("config", "copied"),
    [
        ({}, True),
        ({"feature_gates": ["connector.spanmetrics.excludeResourceMetrics"]}, False),
        (
            {
                "feature_gates": ["connector.spanmetrics.excludeResourceMetrics"],
                "add_resource_attributes": True,
            },
            True,
        ),
    ],
)
def test_resource_attributes_in_the_output(config: dict[str, Any], copied: bool) -> None:
    engine, _ = engine_for(config)
    engine.consume(request(resource({"service.name": "a", "k8s.pod.name": "p"}, span(kind=SERVER))))
    (rm,) = snapshot_to_request(engine.flush()).resource_metrics
    keys = {kv.key for kv in rm.resource.attributes}
    assert keys == ({"service.name", "k8s.pod.name"} if copied else set())


def test_collector_instance_id_is_an_ordinary_attribute_here() -> None:
    """In the connector it is the collector's own id; a fleet has none, so the dimension is
    looked up like any other and, absent from spans, adds no label."""
    engine, _ = engine_for({"dimensions": [{"name": "collector.instance.id"}]})
    engine.consume(request(resource({"service.name": "a"}, span())))
    (labels,) = output(engine)["traces.span.metrics.calls"]
    assert "collector.instance.id" not in dict(labels)


def test_topology_default_is_unchanged_by_shapes() -> None:
    assert Topology().spanmetrics == parse_topology({"spanmetrics": None}).spanmetrics
