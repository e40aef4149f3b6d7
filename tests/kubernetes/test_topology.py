"""``topologies/kubernetes.yaml`` on realistic span sets of Kubernetes 1.29, 1.33, 1.35
(and the 1.37-dev RPC keys): golden metrics per version, joins whatever the records, the
window and the memory bound, orphans, sampling multipliers, the opt-in pod identity, and
the output names."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanmetrics.aggregate.derived import DerivedMetricsEngine
from spanmetrics.aggregate.join import EVICTED, JOINED, ORPHANED
from spanmetrics.cli import main
from spanmetrics.config.load import ConfigError, parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.decode import decode_metrics
from spanmetrics.dev.kubernetes import (
    APISERVER_RESOURCE,
    VERSIONS,
    all_spans,
    as_request,
    one_request,
    requests,
    scattered,
    traces,
)
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.export.prometheus.convert import PrometheusConverter
from tests.clock import FakeClock
from tests.kubernetes.oracle import assert_matches, expected, observed

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "kubernetes.yaml"


def topology(**derive: Any) -> Topology:
    """The shipped topology, with ``derive`` keys replaced."""
    document = yaml.safe_load(TOPOLOGY.read_text())
    document["derive"].update(derive)
    return parse_topology(document)


def engine(t: Topology | None = None, clock: FakeClock | None = None) -> DerivedMetricsEngine:
    t = t or topology()
    assert t.derive is not None
    return DerivedMetricsEngine(t.derive, t.spanmetrics, clock or FakeClock(), event_time=True)


def run(e: DerivedMetricsEngine, requests: list[Any]) -> Any:
    for r in requests:
        e.consume(r)
    e.finish()
    return observed([e.flush()])


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_metrics_per_version(version: str) -> None:
    e = engine()
    assert_matches(run(e, [one_request(version)]), expected(version))
    assert e.counters[ORPHANED] == 0 and e.counters[EVICTED] == 0
    # Every resource request joined its handler span, for both request metrics.
    resource_requests = sum(1 for _ in expected(version)["k8s.apiserver.request.calls"]) - 1
    assert e.counters[JOINED] == 2 * resource_requests


def _shuffled_records(version: str, seed: int, records: int) -> list[Any]:
    return scattered(version, records, random.Random(seed))


def counts_in(request: Any) -> dict[str, dict[Any, int]]:
    """Each metric's points in an OTLP request: labels -> count (sums and histograms)."""
    out: dict[str, dict[Any, int]] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                field = m.WhichOneof("data")
                points = getattr(m, field).data_points
                for p in points:
                    labels = tuple((kv.key, kv.value.string_value) for kv in p.attributes)
                    value = p.as_int if field == "sum" else p.count
                    out.setdefault(m.name, {})[labels] = value
    return out


@pytest.mark.parametrize(
    ("version", "encoding"), [("1.29", "otlp_json"), ("1.33", "otlp_proto"), ("1.35", "otlp_proto")]
)
def test_synth_then_aggregate_joins_traces_split_across_files(
    version: str, encoding: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the README tells a new user to run: spans scattered over 12 files.
    inputs, out = tmp_path / "spans", tmp_path / "metrics.json"
    assert main(["synth", "--kubernetes", version, "--records", "12", "--encoding", encoding,
                 "--output-dir", str(inputs)]) == 0  # fmt: skip
    assert len(list(inputs.iterdir())) == 12
    args = ["--input-encoding", encoding, "--output", str(out), "--output-encoding", "otlp_json"]
    assert main(["aggregate", "--topology", str(TOPOLOGY), *args, str(inputs)]) == 0
    got = counts_in(decode_metrics(out.read_bytes(), "otlp_json"))
    want = {m: {labels: s.calls for labels, s in streams.items()}
            for m, streams in expected(version).items()}  # fmt: skip
    assert got == want
    assert "spans_join_orphaned" not in capsys.readouterr().err  # printed only when not 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), records=st.integers(1, 40), version=st.sampled_from(VERSIONS))
def test_any_split_and_order_gives_the_same_metrics(seed: int, records: int, version: str) -> None:
    got = run(engine(), _shuffled_records(version, seed, records))
    assert_matches(got, expected(version))


def _without(version: str, names: set[str]) -> list[Any]:
    return [as_request([(t.resource, [s for s in t.spans if s.name not in names])])
            for t in traces(version)]  # fmt: skip


def test_orphans_are_counted_and_emitted_as_unknown() -> None:
    e = engine()
    got = run(e, _without("1.35", {"Get"}))  # the two GETs lose their handler span
    calls = got["k8s.apiserver.request.calls"]
    unknown = [(labels, s) for labels, s in calls.items() if ("verb", "unknown") in labels]
    assert len(unknown) == 2  # the node get (200) and the pod get (404): codes differ
    for labels, stream in unknown:
        assert dict(labels)["resource"] == "unknown" and dict(labels)["scope"] == "unknown"
        assert stream.calls == 1
    # Nothing is lost: every request is counted once.
    assert sum(s.calls for s in calls.values()) == len(requests("1.35"))
    assert e.counters[ORPHANED] == 4  # two spans, two metrics each


def test_a_partner_later_than_the_window_leaves_an_orphan() -> None:
    server = next(s for _, s in all_spans("1.29") if s.name == "KubernetesAPI")  # create node
    trace = [s for _, s in all_spans("1.29") if s.trace_id == server.trace_id]
    handler = [s for s in trace if s.name == "Create"]
    e = engine()
    e.consume(as_request([(APISERVER_RESOURCE, [s for s in trace if s.name != "Create"])]))
    # A span of another trace, 31 s later, moves event time past the 30 s window.
    late = Span()
    late.CopyFrom(
        next(
            s
            for _, s in all_spans("1.29")
            if s.name == "SerializeObject" and s.trace_id != server.trace_id
        )
    )
    late.end_time_unix_nano = server.end_time_unix_nano + 31 * 10**9
    e.consume(as_request([(APISERVER_RESOURCE, [late])]))
    e.flush()
    assert e.counters[ORPHANED] == 2  # the SERVER span, for both request metrics
    e.consume(as_request([(APISERVER_RESOURCE, handler)]))  # too late
    e.finish()
    got = observed([e.flush()])
    (labels,) = got["k8s.apiserver.request.calls"]
    assert dict(labels)["verb"] == "unknown" and dict(labels)["code"] == "201"
    assert e.counters[ORPHANED] == 2 and e.counters[JOINED] == 0


def test_the_memory_bound_lets_the_oldest_traces_go_first_and_loses_nothing() -> None:
    t = topology(join={"window": "30s", "max_pending_spans": 5})
    e = engine(t)
    got = run(e, _shuffled_records("1.33", seed=3, records=60))
    assert e.counters[EVICTED] > 0
    calls = got["k8s.apiserver.request.calls"]
    assert sum(s.calls for s in calls.values()) == len(requests("1.33"))
    assert len(e.join) == 0


def test_a_multiplier_of_1000_turns_one_span_into_1000_calls() -> None:
    t = topology(multipliers={"apiserver": 1000, "kubelet": 1000})
    got = run(engine(t), [one_request("1.35")])
    assert_matches(got, expected("1.35", weight=1000))
    create = (("verb", "CREATE"), ("group", ""), ("version", "v1"), ("resource", "nodes"),
              ("subresource", ""), ("scope", "cluster"), ("code", "201"))  # fmt: skip
    assert got["k8s.apiserver.request.calls"][create].calls == 1000


def test_a_fractional_multiplier_is_unbiased() -> None:
    t = topology(multipliers={"apiserver": 2.5})
    e = engine(t)
    server = next(s for _, s in all_spans("1.35") if s.kind == 2 and s.name == "GET")
    many = []
    for i in range(4000):
        copy = Span()
        copy.CopyFrom(server)
        copy.span_id = random.Random(i).randbytes(8)
        copy.trace_id = random.Random(-i).randbytes(16)
        many.append(copy)
    got = run(e, [as_request([(APISERVER_RESOURCE, many)])])
    (stream,) = got["k8s.apiserver.request.calls"].values()
    assert stream.calls == pytest.approx(10_000, rel=0.02)


def test_an_absurd_duration_is_clamped_and_counted() -> None:
    """A server span that starts at 0 (a broken clock) counts as ``max_span_duration``."""
    server = next(s for _, s in all_spans("1.35") if s.kind == 2 and s.name == "GET")
    broken = Span()
    broken.CopyFrom(server)
    broken.start_time_unix_nano = 0
    e = engine()
    got = run(e, [as_request([(APISERVER_RESOURCE, [broken])])])
    (stream,) = got["k8s.apiserver.request.duration"].values()
    assert stream.calls == 1
    assert stream.duration_sum == pytest.approx(86_400.0)
    assert e.counters["spans_duration_clamped"] >= 1


def test_pod_identity_is_one_line_to_turn_on_and_joins_across_records() -> None:
    text = TOPOLOGY.read_text()
    assert "  opt_in: []\n" in text
    document = yaml.safe_load(
        text.replace("  opt_in: []\n", "  opt_in: [k8s.namespace.name, k8s.pod.name]\n")
    )
    t = parse_topology(document)
    assert_matches(run(engine(t), [one_request("1.35")]), expected("1.35", pods=True))
    split = _shuffled_records("1.35", seed=11, records=25)
    assert_matches(run(engine(t), split), expected("1.35", pods=True))
    # Off (the default), CRI spans are never held: nothing waits for a syncPod.
    e = engine()
    e.consume(as_request([(t.resource, t.spans) for t in traces("1.35")
                          if t.resource["service.name"] == "kubelet"]))  # fmt: skip
    assert len(e.join) == 0


def test_other_services_are_skipped_and_counted() -> None:
    request = one_request("1.35")
    other = request.resource_spans.add()
    other.resource.attributes.add(key="service.name").value.string_value = "checkout"
    other.scope_spans.add().spans.add(name="GET /cart", kind=2)
    e = engine()
    got = run(e, [request])
    assert_matches(got, expected("1.35"))
    assert e.counters["spans_other_services"] == 1


def test_output_names_kinds_and_units() -> None:
    e = engine()
    e.consume(one_request("1.35"))
    e.finish()
    request = snapshot_to_request(e.flush())
    metrics = {m.name: m for rm in request.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}  # fmt: skip
    assert metrics["k8s.apiserver.request.duration"].WhichOneof("data") == "exponential_histogram"
    assert metrics["k8s.apiserver.request.duration"].unit == "s"
    assert metrics["k8s.apiserver.request.calls"].WhichOneof("data") == "sum"
    assert metrics["k8s.apiserver.request.calls"].sum.is_monotonic
    point = MessageToDict(metrics["k8s.kubelet.runtime.operations.errors"].sum.data_points[0])
    assert {a["key"] for a in point["attributes"]} == {"node", "operation_type"}  # no __name__
    names = {s.name for s in PrometheusConverter("", "s", "otel", "both").convert(request, 0)}
    assert {"k8s_apiserver_request_duration_seconds", "k8s_apiserver_request_calls_total",
            "k8s_etcd_request_duration_seconds", "k8s_kubelet_runtime_operations_errors_total",
            "k8s_apiserver_admission_webhook_duration_seconds",
            "k8s_kubelet_runtime_operations_duration_seconds",
            "k8s_kubelet_pod_sync_duration_seconds"} <= names  # fmt: skip


@pytest.mark.parametrize(
    ("derive", "message"),
    [
        (
            {"metrics": [{"name": "m", "type": "sum", "select": {"name_matches": "("}}]},
            "derive.metrics[0].select.name_matches: invalid regex",
        ),
        (
            {"opt_in": ["k8s.pod.uid"]},
            "derive.opt_in: 'k8s.pod.uid' is no metric's opt_in attribute",
        ),
        ({"multipliers": {"apiserver": 0}}, "derive.multipliers: 'apiserver': a multiplier"),
        ({"join": {"window": "0s"}}, "derive.join.window: the join window should be positive"),
    ],
)
def test_config_errors_name_the_key(derive: dict[str, Any], message: str) -> None:
    document = yaml.safe_load(TOPOLOGY.read_text())
    document["derive"].update(derive)
    with pytest.raises(ConfigError) as err:
        parse_topology(document)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("path", sorted(TOPOLOGY.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_topology_survives_the_workers_overrides(path: Path) -> None:
    # The worker re-reads the topology with its command-line overrides applied: keys
    # written under an alias (`from:`) must read back the same.
    from spanmetrics.config.load import load_topology
    from spanmetrics.fleet.run import apply_overrides

    loaded = load_topology(path)
    assert (
        apply_overrides(loaded, flush_interval="2s").model_copy(
            update={"spanmetrics": loaded.spanmetrics}
        )
        == loaded
    )


def test_a_held_span_costs_about_a_kilobyte() -> None:
    # README and the topology: "about 1 kB of memory each" (max_pending_spans' cost).
    import tracemalloc

    t = topology(join={"max_pending_spans": 1_000_000})
    e = engine(t)
    waiting = [
        as_request([(tr.resource, [s for s in tr.spans if s.kind != 2])  # no SERVER span
                    for tr in traces("1.35", round_=r) if tr.resource is APISERVER_RESOURCE])
        for r in range(100)
    ]  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for r in waiting:
            e.consume(r)
        grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert len(e.join) > 5000
    assert 300 < grown / len(e.join) < 1200
