"""Views, span filters and span-name rules: what each stream action does to the output, and
that every count stays exact."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.expohist import ExpoHistogram
from spanmetrics.aggregate.views import explicit_from_exponential
from spanmetrics.cli import output_plan
from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.export.prometheus.convert import PrometheusConverter
from tests.builders import CLIENT, INTERNAL, SERVER, request, resource, span
from tests.clock import FakeClock

DIMENSIONS = [{"name": "user.id"}, {"name": "http.request.method"}]


def topology(**keys: Any) -> Topology:
    return parse_topology({"spanmetrics": {"dimensions": DIMENSIONS}, **keys})


def spans(n: int = 600, seed: int = 1) -> Any:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        kind = rng.choice([SERVER, SERVER, CLIENT, INTERNAL])
        items.append(span(
            rng.choice(["GET /users/17", "GET /users/42", "GET /cart"]), kind,
            duration_ms=rng.lognormvariate(math.log(20), 0.8),
            attributes={"user.id": f"u{rng.randrange(50)}",
                        "http.request.method": rng.choice(["GET", "POST"])},
        ))  # fmt: skip
    return request(resource({"service.name": "shop"}, *items))


def output(t: Topology, req: Any | None = None) -> tuple[dict[str, list[Any]], Counter[str]]:
    engine = SpanMetricsEngine(t.spanmetrics, FakeClock())
    engine.consume(req or spans())
    plan = output_plan(t)
    counters: Counter[str] = Counter()
    snapshot = plan.apply(engine.flush(), counters)
    snapshot.names = plan.names
    metrics: dict[str, list[Any]] = {}
    for rm in snapshot_to_request(snapshot).resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points = getattr(m, m.WhichOneof("data")).data_points
                metrics.setdefault(m.name, []).extend(points)
    return metrics, counters


def labels(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


CALLS, DURATION = "traces.span.metrics.calls", "traces.span.metrics.duration"


def test_no_view_leaves_the_output_as_it_was() -> None:
    plain, _ = output(topology())
    assert set(plain) == {CALLS, DURATION}
    assert any("user.id" in labels(p) for p in plain[CALLS])


def test_denying_an_attribute_for_every_metric_sums_exactly() -> None:
    deny = [{"selector": {"instrument_name": "traces.span.metrics.*"},
             "stream": {"attribute_keys": {"excluded": ["user.id"]}}}]  # fmt: skip
    plain, _ = output(topology())
    denied, _ = output(topology(views=deny))
    assert set(denied) == {CALLS, DURATION}
    for metric in (CALLS, DURATION):
        assert all("user.id" not in labels(p) for p in denied[metric])
    want: Counter[tuple[Any, ...]] = Counter()
    for p in plain[CALLS]:
        want[tuple(sorted((k, v) for k, v in labels(p).items() if k != "user.id"))] += p.as_int
    got = Counter({tuple(sorted(labels(p).items())): p.as_int for p in denied[CALLS]})
    assert got == want
    assert sum(p.count for p in denied[DURATION]) == 600
    assert len(denied[CALLS]) < len(plain[CALLS])


def test_dual_emit_gives_both_metrics_and_their_counts_agree() -> None:
    views = [
        {"selector": {"instrument_name": DURATION},  # the exponential histogram, as is
         "stream": {"aggregation": {"default": {}}}},
        {"selector": {"instrument_name": DURATION},
         "stream": {"name": "legacy.duration", "attribute_keys": {"excluded": ["user.id"]},
                    "aggregation": {"summary": {"quantiles": [0.5, 0.95]}}}},
    ]  # fmt: skip
    got, _ = output(topology(views=views))
    assert set(got) == {CALLS, DURATION, "legacy.duration"}
    by_labels: Counter[tuple[Any, ...]] = Counter()
    for p in got[DURATION]:
        by_labels[tuple(sorted((k, v) for k, v in labels(p).items() if k != "user.id"))] += p.count
    for p in got["legacy.duration"]:
        key = tuple(sorted(labels(p).items()))
        assert p.count == by_labels[key]
        quantiles = {q.quantile: q.value for q in p.quantile_values}
        assert set(quantiles) == {0.0, 0.5, 0.95, 1.0}
        assert quantiles[0.0] <= quantiles[0.5] <= quantiles[0.95] <= quantiles[1.0]
    assert sum(p.count for p in got["legacy.duration"]) == 600


def test_a_summary_reaches_prometheus_as_quantiles_sum_and_count() -> None:
    views = [{"selector": {"instrument_name": DURATION},
              "stream": {"aggregation": {"summary": None}}}]  # fmt: skip
    t = topology(views=views)
    engine = SpanMetricsEngine(t.spanmetrics, FakeClock())
    engine.consume(spans())
    plan = output_plan(t)
    snapshot = plan.apply(engine.flush(), Counter())
    snapshot.names = plan.names
    series = PrometheusConverter("traces.span.metrics", "ms", "otel", "both").convert(
        snapshot_to_request(snapshot), 0
    )
    names = {s.name for s in series}
    base = "traces_span_metrics_duration_milliseconds"
    assert {base, f"{base}_sum", f"{base}_count"} <= names
    quantiles = {dict(s.labels).get("quantile") for s in series if s.name == base}
    assert quantiles == {"0", "0.5", "0.9", "0.99", "1"}
    count = sum(s.value or 0 for s in series if s.name == f"{base}_count")
    assert count == 600


def test_explicit_buckets_from_the_exponential_histogram() -> None:
    views = [{"selector": {"instrument_name": DURATION},
              "stream": {"attribute_keys": {"included": ["span.kind"]},
                         "aggregation": {"explicit_bucket_histogram":
                                         {"boundaries": [5, 10, 25, 50, 100]}}}}]  # fmt: skip
    got, _ = output(topology(views=views))
    assert all(list(p.explicit_bounds) == [5, 10, 25, 50, 100] for p in got[DURATION])
    assert all(set(labels(p)) == {"service.name", "span.kind"} for p in got[DURATION])
    assert sum(sum(p.bucket_counts) for p in got[DURATION]) == 600


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10_000), min_size=1, max_size=300))
def test_explicit_buckets_are_off_by_at_most_one_exponential_bucket(values: list[float]) -> None:
    hist = ExpoHistogram.from_values(values, max_size=160)
    bounds = (1.0, 10.0, 100.0, 1000.0)
    explicit = explicit_from_exponential(hist, bounds)
    assert sum(explicit.counts) == len(values) == explicit.count
    width = 2.0 ** (2.0**-hist.scale)
    for i in range(len(bounds) + 1):
        lo = bounds[i - 1] / width if i else 0.0
        hi = bounds[i] * width if i < len(bounds) else math.inf
        near = sum(1 for v in values if lo < v <= hi)
        assert explicit.counts[i] <= near


def test_drop_and_rename() -> None:
    views = [
        {"selector": {"instrument_name": CALLS}, "stream": {"aggregation": {"drop": {}}}},
        {"selector": {"instrument_name": DURATION},
         "stream": {"name": "http.server.duration",
                    "rename_attributes": {"http.request.method": "http.method"},
                    "attribute_keys": {"excluded": ["user.id"]}}},
    ]  # fmt: skip
    got, counters = output(topology(views=views))
    assert set(got) == {"http.server.duration"}
    assert all("http.method" in labels(p) and "http.request.method" not in labels(p)
               for p in got["http.server.duration"])  # fmt: skip
    assert counters["spans_dropped_by_view"] == 600


def test_views_select_by_service_kind_span_name_and_labels() -> None:
    views = [{"selector": {"instrument_name": DURATION, "span_kind": "SERVER",
                           "span_name": "GET /users",
                           "attributes": [{"key": "http.request.method", "one_of": ["GET"]}]},
              "stream": {"name": "users.get.duration",
                         "attribute_keys": {"included": []}}}]  # fmt: skip
    got, _ = output(topology(views=views))
    req = spans()
    want = sum(
        1 for s in req.resource_spans[0].scope_spans[0].spans
        if s.kind == SERVER and s.name.startswith("GET /users")
        and any(a.key == "http.request.method" and a.value.string_value == "GET"
                for a in s.attributes)
    )  # fmt: skip
    (point,) = got["users.get.duration"]
    assert labels(point) == {"service.name": "shop"}
    assert point.count == want
    # Series the view does not take have no stream at all for that metric.
    assert DURATION not in got or all(
        labels(p)["span.kind"] != "SPAN_KIND_SERVER"
        or not labels(p)["span.name"].startswith("GET /users")
        or labels(p)["http.request.method"] != "GET"
        for p in got[DURATION]
    )


def test_span_filters_and_name_rules_are_counted() -> None:
    t = topology(
        span_filters={"exclude": [{"span_kind": ["INTERNAL"]}]},
        span_names=[{"pattern": r"/users/\d+", "replacement": "/users/{id}"}],
    )
    got, counters = output(t)
    req = spans()
    all_spans = req.resource_spans[0].scope_spans[0].spans
    internal = sum(1 for s in all_spans if s.kind == INTERNAL)
    users = sum(1 for s in all_spans if s.kind != INTERNAL and "/users/" in s.name)
    assert counters["spans_filtered.excluded"] == internal
    assert counters["spans_renamed"] == users
    assert sum(p.as_int for p in got[CALLS]) == 600 - internal
    assert {labels(p)["span.name"] for p in got[CALLS]} == {"GET /users/{id}", "GET /cart"}
    assert all(labels(p)["span.kind"] != "SPAN_KIND_INTERNAL" for p in got[CALLS])


def test_include_keeps_only_what_it_takes() -> None:
    t = topology(span_filters={"include": [{"span_kind": "SERVER"}]})
    got, counters = output(t)
    assert {labels(p)["span.kind"] for p in got[CALLS]} == {"SPAN_KIND_SERVER"}
    assert counters["spans_filtered.not_included"] + sum(p.as_int for p in got[CALLS]) == 600


@pytest.mark.parametrize(
    ("views", "message"),
    [
        (
            [{"selector": {"instrument_name": "traces.span.metrics.*"}, "stream": {"name": "x"}}],
            "views[0].stream.name: the selector takes 2 metrics",
        ),
        (
            [{"selector": {}, "stream": {"aggregation": {"drop": {}, "summary": {}}}}],
            "views[0].stream.aggregation: an aggregation has exactly one of",
        ),
        ([{"selector": {"span_kind": "SERVR"}}], "views[0].selector.span_kind: unknown span kind"),
        (
            [{"selector": {}, "stream": {"aggregation": {"summary": {"quantiles": [1.5]}}}}],
            "views[0].stream.aggregation.summary.quantiles: a quantile is in [0, 1]",
        ),
        (
            [
                {"selector": {"instrument_name": CALLS}, "stream": {"name": "a"}},
                {"selector": {"instrument_name": DURATION}, "stream": {"name": "a"}},
            ],
            "views[1].stream.name: 'a' is also views[0]'s",
        ),
        (
            [{"selector": {"instrument_name": DURATION}, "stream": {"atribute_keys": {}}}],
            "views[0].stream.atribute_keys: unknown key; did you mean 'attribute_keys'?",
        ),
    ],
)
def test_an_invalid_view_names_the_field(views: list[Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_topology({"views": views})
    assert message in str(err.value), str(err.value)


def test_views_and_filters_apply_in_the_fleet() -> None:
    # Through stage 1, the internal topic and a shard: the stream's histogram (a summary's
    # exponential one, an explicit one with its own bounds) survives the codec.
    import asyncio

    from tests.simulation.harness import SimFleet

    views = [
        {"selector": {"instrument_name": DURATION},
         "stream": {"name": "legacy", "aggregation": {"summary": {}}}},
        {"selector": {"instrument_name": DURATION},
         "stream": {"attribute_keys": {"excluded": ["user.id"]}, "aggregation":
                    {"explicit_bucket_histogram": {"boundaries": [10, 100]}}}},
    ]  # fmt: skip
    t = parse_topology({"source": {"topic": "spans", "group": "views"},
                        "spanmetrics": {"dimensions": DIMENSIONS, "metrics_flush_interval": "1s"},
                        "views": views, "span_filters": {"exclude": [{"span_kind": "CLIENT"}]},
                        "sinks": [{"kafka": {"topic": "metrics"}}]})  # fmt: skip
    fleet = SimFleet(t, partitions=2, shards=2)
    fleet.start("a")
    fleet.start("b")
    req = spans()
    clients = sum(1 for s in req.resource_spans[0].scope_spans[0].spans if s.kind == CLIENT)

    async def run() -> None:
        await fleet.rebalance({"a": [("spans", 0), (fleet.deltas, 0)],
                               "b": [("spans", 1), (fleet.deltas, 1)]})  # fmt: skip
        fleet.produce(0, req)
        fleet.produce(1, spans(seed=2))
        await fleet.pump(flushes=3)

    asyncio.run(run())
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    last: dict[tuple[str, Any], Any] = {}
    for record in fleet.output():
        for rm in ExportMetricsServiceRequest.FromString(record.value).resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in getattr(m, m.WhichOneof("data")).data_points:
                        last[(m.name, tuple(sorted(labels(p).items())))] = p
    legacy = [p for (name, _), p in last.items() if name == "legacy"]
    explicit = [p for (name, _), p in last.items() if name == DURATION]
    other_clients = sum(
        1 for s in spans(seed=2).resource_spans[0].scope_spans[0].spans if s.kind == CLIENT
    )
    assert sum(p.count for p in legacy) == 1200 - clients - other_clients
    assert sum(p.count for p in explicit) == 1200 - clients - other_clients
    assert all(list(p.explicit_bounds) == [10, 100] for p in explicit)
    assert all("user.id" not in dict(k) for (name, k) in last if name == DURATION)


def test_a_changed_aggregation_under_one_name_is_a_new_stream() -> None:
    # The same stream identity, first exponential then explicit (a view changed and the
    # worker restarted from its state): a new start time, never a merge of two kinds.
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from spanmetrics.aggregate.explicit import ExplicitHistogram
    from spanmetrics.aggregate.points import MetricNames, SeriesPoint
    from spanmetrics.aggregate.registry import SeriesRegistry

    registry = SeriesRegistry(MetricNames.for_namespace("", "ms"))
    res = Resource()
    res.attributes.add(key="service.name").value.string_value = "shop"
    key = (("__name__", "d"), ("service.name", "shop"))
    expo = ExpoHistogram.from_values([1.0, 2.0])
    registry.apply(("shop",), res, [SeriesPoint(key, 0, 0, 2, expo)], (), 10, 10)
    explicit = ExplicitHistogram.from_values([5.0], bounds=(1.0, 10.0))
    registry.apply(("shop",), res, [SeriesPoint(key, 0, 0, 1, explicit)], (), 20, 20)
    (point,) = registry.cumulative(registry.stamp(30)).resources[0].series
    assert point.start_time_unix_nano >= 20 and point.calls == 1
    assert isinstance(point.duration, ExplicitHistogram)


def test_the_readme_example_does_what_it_says() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("### Views, span filters and span names")
    block = re.findall(r"```yaml\n(.*?)```", readme[start : readme.index("### Semantics")], re.S)[0]
    document = yaml.safe_load(block)
    got, counters = output(topology(**document))
    assert set(got) == {CALLS, DURATION, "legacy.http.duration"}
    assert all("user.id" not in labels(p) for m in got.values() for p in m)
    assert sum(p.count for p in got["legacy.http.duration"]) == sum(p.count for p in got[DURATION])
    quantiles = {q.quantile for q in got["legacy.http.duration"][0].quantile_values}
    assert quantiles == {0.0, 0.5, 0.95, 1.0}
    assert counters["spans_filtered.excluded"] > 0 and counters["spans_renamed"] > 0
