"""The Kubernetes dashboard against a real Prometheus: the topology's metrics remote-written
as the worker writes them (native and classic histograms), and every panel's PromQL must
return data, as the other dashboards' panels do in the fleet test."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from spanmetrics.aggregate.derived import DERIVED_UNIT, DerivedMetricsEngine
from spanmetrics.config.load import parse_topology
from spanmetrics.dev.kubernetes import as_request, requests, traces
from spanmetrics.export.otlp import snapshot_to_request
from spanmetrics.export.prometheus import PrometheusConverter
from spanmetrics.export.prometheus.remote_write import encode_write_request
from spanmetrics.fleet.telemetry import telemetry_request
from tests.clock import FakeClock
from tests.dashboards import KUBERNETES_DASHBOARD, load_dashboards, panel_queries
from tests.integration.prometheus import Prometheus
from tests.integration.test_prometheus_remote_write import write

# The derived path reads spans in Python whatever the reader: once is enough.
pytestmark = [pytest.mark.integration, pytest.mark.once]

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "kubernetes.yaml"


def test_every_kubernetes_panel_has_data(prometheus_factory: Any) -> None:
    prom: Prometheus = prometheus_factory()
    topology = parse_topology(yaml.safe_load(TOPOLOGY.read_text()))
    assert topology.derive is not None
    engine = DerivedMetricsEngine(topology.derive, topology.spanmetrics, FakeClock())
    converter = PrometheusConverter("", DERIVED_UNIT, "otel", "both")
    now_ms = int(time.time() * 1000)
    counters: Counter[str] = Counter({"spans_joined": 0, "spans_join_orphaned": 0,
                                      "spans_join_evicted": 0})  # fmt: skip
    for round_, (version, at_ms) in enumerate([("1.35", now_ms - 60_000), ("1.29", now_ms)]):
        start_ns = at_ms * 1_000_000 - 200 * 10**9
        engine.consume(as_request([(t.resource, t.spans)
                                   for t in traces(version, start_ns, round_)]))  # fmt: skip
        engine.finish()
        snapshot = engine.flush()
        counters.update(engine.counters)
        engine.counters.clear()
        telemetry = telemetry_request("w0", counters, {}, {}, (now_ms - 120_000) * 10**6,
                                      at_ms * 10**6)  # fmt: skip
        series = converter.convert(snapshot_to_request(snapshot), at_ms)
        series += converter.convert(telemetry, at_ms)
        write(prom, encode_write_request(series, "both"))
    at = now_ms / 1000
    # The second sample counts both rounds.
    (total,) = prom.query("sum(k8s_apiserver_request_calls_total)", at)
    assert float(total["value"][1]) == 2 * len(requests("1.35"))
    variables = {"resource": ".*", "node": ".*", "__rate_interval": "2m", "__interval": "15s",
                 "__range": "10m"}  # fmt: skip
    empty = [
        f"{title}: {expr}"
        for title, expr in panel_queries(load_dashboards()[KUBERNETES_DASHBOARD], variables)
        if not prom.query(expr, at)
    ]
    assert not empty, "panels without data:\n" + "\n".join(empty)
